/* anomaly_rules: limit, range and rate checks with hysteresis. */
#include "anomaly_rules.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "suido.pb-c.h"

const char *anomaly_level_name(anomaly_level l)
{
    static const char *const names[] = {"normal", "limit_l", "limit_ll", "limit_h", "limit_hh",
                                        "physical_range"};
    return (unsigned)l < 6 ? names[l] : "unknown";
}

static int severity_of(anomaly_level l)
{
    switch (l) {
    case LEVEL_L:
    case LEVEL_H:
        return SUIDO__SEVERITY__SEVERITY_WARNING;
    case LEVEL_LL:
    case LEVEL_HH:
        return SUIDO__SEVERITY__SEVERITY_ALARM;
    case LEVEL_RANGE:
        return SUIDO__SEVERITY__SEVERITY_CRITICAL;
    default:
        return SUIDO__SEVERITY__SEVERITY_INFO;
    }
}

static double limit_of(const cm_channel *c, anomaly_level l)
{
    switch (l) {
    case LEVEL_L:
        return c->l;
    case LEVEL_LL:
        return c->ll;
    case LEVEL_H:
        return c->h;
    case LEVEL_HH:
        return c->hh;
    default:
        return NAN;
    }
}

/* Level of v ignoring history. */
static anomaly_level raw_level(const cm_channel *c, double v)
{
    if (v < c->range_min || v > c->range_max)
        return LEVEL_RANGE;
    if (!c->has_limits)
        return LEVEL_NORMAL;
    if (v <= c->ll)
        return LEVEL_LL;
    if (v <= c->l)
        return LEVEL_L;
    if (v >= c->hh)
        return LEVEL_HH;
    if (v >= c->h)
        return LEVEL_H;
    return LEVEL_NORMAL;
}

/* With hysteresis: a move towards normal on the same side happens only once v is deadband
 * inside the limit being left; anything more severe, or the other side, is taken at once. */
static anomaly_level next_level(const cm_channel *c, anomaly_level cur, double v)
{
    anomaly_level raw = raw_level(c, v);
    double db = c->deadband;
    if (raw == LEVEL_RANGE || cur == LEVEL_RANGE || cur == LEVEL_NORMAL)
        return raw;
    int low_side = cur == LEVEL_L || cur == LEVEL_LL;
    if (low_side) {
        if (raw == LEVEL_H || raw == LEVEL_HH || raw == LEVEL_LL)
            return raw;
        if (cur == LEVEL_LL)
            return v > c->ll + db ? (v > c->l + db ? LEVEL_NORMAL : LEVEL_L) : LEVEL_LL;
        return v > c->l + db ? LEVEL_NORMAL : LEVEL_L;
    }
    if (raw == LEVEL_L || raw == LEVEL_LL || raw == LEVEL_HH)
        return raw;
    if (cur == LEVEL_HH)
        return v < c->hh - db ? (v < c->h - db ? LEVEL_NORMAL : LEVEL_H) : LEVEL_HH;
    return v < c->h - db ? LEVEL_NORMAL : LEVEL_H;
}

int anomaly_eval(anomaly_state *s, const cm_channel *c, double value, uint64_t ts_ms,
                 anomaly_event ev[3])
{
    int n = 0;
    anomaly_level nl = next_level(c, s->level, value);
    if (nl != s->level) {
        anomaly_event *e = &ev[n++];
        memset(e, 0, sizeof *e);
        e->family = "limit";
        if (nl == LEVEL_NORMAL) {
            e->rule = anomaly_level_name(s->level);
            e->cleared = 1;
            e->severity = SUIDO__SEVERITY__SEVERITY_INFO;
            e->limit = limit_of(c, s->level);
            snprintf(e->evidence, sizeof e->evidence, "value %.4g %s back within limits", value,
                     c->unit);
        } else {
            e->rule = anomaly_level_name(nl);
            e->severity = severity_of(nl);
            e->limit = nl == LEVEL_RANGE ? (value < c->range_min ? c->range_min : c->range_max)
                                         : limit_of(c, nl);
            snprintf(e->evidence, sizeof e->evidence, "value %.4g %s, %s %.4g (was %s)", value,
                     c->unit, nl == LEVEL_RANGE ? "physical range limit" : "limit", e->limit,
                     anomaly_level_name(s->level));
        }
        s->level = nl;
    }
    if (c->max_rate > 0 && s->has_last && ts_ms > s->last_ms) {
        double rate = fabs(value - s->last_value) / ((double)(ts_ms - s->last_ms) / 1000.0);
        int alarm = rate > c->max_rate;
        if (alarm != s->rate_alarm) {
            anomaly_event *e = &ev[n++];
            memset(e, 0, sizeof *e);
            e->family = "rate";
            e->rule = "rate";
            e->cleared = !alarm;
            e->severity = alarm ? SUIDO__SEVERITY__SEVERITY_WARNING : SUIDO__SEVERITY__SEVERITY_INFO;
            e->limit = c->max_rate;
            snprintf(e->evidence, sizeof e->evidence, "rate %.4g %s/s, limit %.4g", rate, c->unit,
                     c->max_rate);
            s->rate_alarm = alarm;
        }
    }
    if (!s->has_last || ts_ms >= s->last_ms) {
        s->has_last = 1;
        s->last_value = value;
        s->last_ms = ts_ms;
    }
    return n;
}
