/* gate_check: the command gate's decisions (gate_check.h) — plant state per gateway, the checks
 * of one command against the profile's actuators and interlocks, and the comparison of what was
 * commanded with what the plant did. Pure: no I/O, no clock (the caller passes now_ms). */
#include "gate_check.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cm_time.h"

void gate_plant_init(gate_plant *pl) { memset(pl, 0, sizeof *pl); }

const gate_reading *gate_plant_get_reading(const gate_plant *pl, const char *channel)
{
    for (size_t i = 0; i < pl->n_readings; i++)
        if (strcmp(pl->readings[i].channel, channel) == 0)
            return &pl->readings[i];
    return NULL;
}

const gate_sent *gate_plant_get_sent(const gate_plant *pl, const char *actuator)
{
    for (size_t i = 0; i < pl->n_sent; i++)
        if (strcmp(pl->sent[i].actuator, actuator) == 0)
            return &pl->sent[i];
    return NULL;
}

cm_err gate_plant_reading(gate_plant *pl, const char *channel, double value, uint64_t ts_ms)
{
    if (!isfinite(value) || !*channel || strlen(channel) >= sizeof pl->readings[0].channel)
        return CM_ERR_INVAL;
    gate_reading *r = (gate_reading *)gate_plant_get_reading(pl, channel);
    if (!r) {
        if (pl->n_readings >= GATE_MAX_CHANNELS)
            return CM_ERR_TOO_BIG;
        r = &pl->readings[pl->n_readings++];
        snprintf(r->channel, sizeof r->channel, "%s", channel);
    } else if (ts_ms < r->ts_ms) {
        return CM_OK;
    }
    r->value = value;
    r->ts_ms = ts_ms;
    return CM_OK;
}

cm_err gate_plant_bad_at(gate_plant *pl, const char *channel, uint64_t ts_ms, uint64_t now_ms)
{
    if (!*channel || strlen(channel) >= sizeof pl->readings[0].channel)
        return CM_ERR_INVAL;
    if (ts_ms > now_ms && ts_ms - now_ms > CM_MAX_AHEAD_MS)
        return CM_ERR_STALE;
    gate_reading *r = (gate_reading *)gate_plant_get_reading(pl, channel);
    if (r && ts_ms > r->bad_ms)
        r->bad_ms = ts_ms;
    return CM_OK;
}

cm_err gate_plant_reading_at(gate_plant *pl, const char *channel, double value, uint64_t ts_ms,
                             uint64_t now_ms)
{
    if (ts_ms > now_ms && ts_ms - now_ms > CM_MAX_AHEAD_MS)
        return CM_ERR_STALE;
    return gate_plant_reading(pl, channel, value, ts_ms);
}

cm_err gate_plant_commanded(gate_plant *pl, const char *actuator, double value, uint64_t ts_ms)
{
    if (!isfinite(value) || !*actuator || strlen(actuator) >= sizeof pl->sent[0].actuator)
        return CM_ERR_INVAL;
    gate_sent *s = (gate_sent *)gate_plant_get_sent(pl, actuator);
    if (!s) {
        if (pl->n_sent >= GATE_MAX_ACTUATORS)
            return CM_ERR_TOO_BIG;
        s = &pl->sent[pl->n_sent++];
        snprintf(s->actuator, sizeof s->actuator, "%s", actuator);
    } else if (ts_ms < s->ts_ms) {
        return CM_OK;
    }
    s->value = value;
    s->ts_ms = ts_ms;
    return CM_OK;
}

/* How long a reading of c stays fresh, in ms. */
static double fresh_window_ms(const cm_channel *c)
{
    return fmax(3.0 * c->period_s * 1000.0, GATE_FRESH_MIN_MS);
}

/* Age of a reading in ms; a reading from the future (gateway clock ahead, within the skew
 * gate_plant_reading_at lets through) counts as new. */
static double age_ms(const gate_reading *r, uint64_t now_ms)
{
    return r->ts_ms >= now_ms ? 0.0 : (double)(now_ms - r->ts_ms);
}

/* 1 when the device did not answer after r was taken: r is not the channel's current value. */
static int superseded_by_bad(const gate_reading *r) { return r->bad_ms > r->ts_ms; }

/* The fresh reading of channel id, or NULL; *c gets the channel (NULL if not in the profile). */
static const gate_reading *fresh_reading(const cm_profile *p, const gate_plant *plant,
                                         const char *id, uint64_t now_ms, const cm_channel **c)
{
    *c = cm_profile_channel_by_id(p, id);
    const gate_reading *r = gate_plant_get_reading(plant, id);
    if (!*c || !r || superseded_by_bad(r) || age_ms(r, now_ms) > fresh_window_ms(*c))
        return NULL;
    return r;
}

/* The fresh feedback of a in a's unit. */
static int fresh_feedback(const cm_profile *p, const cm_actuator *a, const gate_plant *plant,
                          uint64_t now_ms, double *out)
{
    const cm_channel *c;
    const gate_reading *r = a->feedback[0] ? fresh_reading(p, plant, a->feedback, now_ms, &c)
                                           : NULL;
    return r && cm_unit_convert(c->unit, a->unit, r->value, out) == CM_OK;
}

typedef enum tri { TRI_FALSE, TRI_TRUE, TRI_UNKNOWN } tri;

static int compare(double l, cm_cmp op, double r)
{
    switch (op) {
    case CM_CMP_LT:
        return l < r;
    case CM_CMP_LE:
        return l <= r;
    case CM_CMP_GT:
        return l > r;
    case CM_CMP_GE:
        return l >= r;
    case CM_CMP_EQ:
        return l == r;
    case CM_CMP_NE:
        return l != r;
    }
    return 0;
}

/* Value of an operand; 0 and the channel id in *missing when it needs a reading that is absent
 * or stale. */
static int operand(const cm_profile *p, const gate_plant *plant, uint64_t now_ms,
                   const cm_operand *o, double value, double *out, const char **missing)
{
    const cm_channel *c;
    const gate_reading *r;
    switch (o->kind) {
    case CM_OPERAND_VALUE:
        *out = value;
        return 1;
    case CM_OPERAND_CHANNEL:
        if (!(r = fresh_reading(p, plant, o->channel, now_ms, &c))) {
            if (!*missing)
                *missing = o->channel;
            return 0;
        }
        *out = r->value;
        return 1;
    case CM_OPERAND_NUMBER:
    case CM_OPERAND_LIMIT:
        *out = o->number;
        return 1;
    }
    return 0;
}

/* Whether all conditions of il hold for value: TRUE, FALSE (one is false on fresh data), or
 * UNKNOWN (none is false, but one needs a missing reading, named in *missing). */
static tri interlock_holds(const cm_profile *p, const gate_plant *plant, uint64_t now_ms,
                           const cm_interlock *il, double value, const char **missing)
{
    tri t = TRI_TRUE;
    for (size_t i = 0; i < il->n_conds; i++) {
        const cm_condition *c = &il->conds[i];
        double l, r;
        const char *miss = NULL;
        int have_l = operand(p, plant, now_ms, &c->left, value, &l, &miss);
        int have_r = operand(p, plant, now_ms, &c->right, value, &r, &miss);
        if (!have_l || !have_r) {
            if (t == TRI_TRUE)
                *missing = miss;
            t = TRI_UNKNOWN;
        } else if (!compare(l, c->op, r)) {
            return TRI_FALSE;
        }
    }
    return t;
}

__attribute__((format(printf, 3, 4))) static gate_verdict
refuse(gate_decision *out, const char *reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->detail, sizeof out->detail, fmt, ap);
    va_end(ap);
    snprintf(out->reason, sizeof out->reason, "%s", reason);
    out->verdict = GATE_REFUSE;
    return GATE_REFUSE;
}

gate_verdict gate_decide(const cm_profile *p, const char *site_kind, const gate_plant *plant,
                         const gate_request *req, uint64_t now_ms, gate_decision *out)
{
    memset(out, 0, sizeof *out);
    out->value = NAN;
    const char *role = req->role ? req->role : "";
    if (strcmp(role, "operator") != 0 && strcmp(role, "admin") != 0)
        return refuse(out, "role", "role '%s' may not command (operator or admin only)", role);

    const char *name = req->actuator ? req->actuator : "";
    const cm_actuator *a = site_kind ? cm_profile_actuator(p, site_kind, name) : NULL;
    if (!a)
        return refuse(out, "unknown_actuator", "no actuator '%s' at a site of kind '%s'", name,
                      site_kind ? site_kind : "");
    out->actuator = a;

    if (!isfinite(req->value))
        return refuse(out, "not_finite", "value for %s is not a finite number", a->id);

    const char *unit = req->unit ? req->unit : "";
    double v;
    if (cm_unit_convert(unit, a->unit, req->value, &v) != CM_OK)
        return refuse(out, "wrong_unit", "unit '%s' does not convert to %s's unit '%s'", unit,
                      a->id, a->unit);
    out->value = v;

    if (!(v >= a->range_min && v <= a->range_max))
        return refuse(out, "out_of_range", "%.6g %s is outside the range %.6g to %.6g %s of %s",
                      v, a->unit, a->range_min, a->range_max, a->unit, a->id);

    const gate_sent *last = gate_plant_get_sent(plant, a->id);
    if (a->max_step > 0) {
        double cur;
        const char *from = NULL;
        if (fresh_feedback(p, a, plant, now_ms, &cur))
            from = a->feedback;
        else if (last) {
            cur = last->value;
            from = "the last command";
        }
        /* a relative margin so that a step of exactly max_step is not refused by rounding */
        if (from && fabs(v - cur) > a->max_step * (1 + 1e-9))
            return refuse(out, "max_step",
                          "%s from %.6g (%s) to %.6g %s is a step of %.6g, more than max_step "
                          "%.6g",
                          a->id, cur, from, v, a->unit, fabs(v - cur), a->max_step);
    }

    if (a->min_interval_s > 0 && last) {
        double since = now_ms > last->ts_ms ? (double)(now_ms - last->ts_ms) : 0.0;
        if (since < a->min_interval_s * 1000.0)
            return refuse(out, "min_interval",
                          "%.3f s since the last command to %s; at least %.6g s between commands",
                          since / 1000.0, a->id, a->min_interval_s);
    }

    const cm_interlock *unknown = NULL;
    const char *missing = NULL;
    for (const cm_interlock *il = NULL; (il = cm_profile_interlock_next(p, a, il));) {
        const char *miss = NULL;
        tri t = interlock_holds(p, plant, now_ms, il, v, &miss);
        if (t == TRI_TRUE) {
            char reason[sizeof out->reason];
            snprintf(reason, sizeof reason, "interlock:%s", il->id);
            return refuse(out, reason, "%s", il->reason);
        }
        if (t == TRI_UNKNOWN && !unknown) {
            unknown = il;
            missing = miss;
        }
    }
    if (unknown) {
        const gate_reading *r = gate_plant_get_reading(plant, missing);
        const cm_channel *c = cm_profile_channel_by_id(p, missing);
        if (!r || !c)
            return refuse(out, "interlock_data_missing",
                          "interlock %s needs %s, which has no reading", unknown->id, missing);
        if (superseded_by_bad(r))
            return refuse(out, "interlock_data_missing",
                          "interlock %s needs %s, whose device is not answering (reading of "
                          "quality BAD %.1f s ago; last valid reading %.1f s old)",
                          unknown->id, missing,
                          r->bad_ms >= now_ms ? 0.0 : (double)(now_ms - r->bad_ms) / 1000.0,
                          age_ms(r, now_ms) / 1000.0);
        return refuse(out, "interlock_data_missing",
                      "interlock %s needs %s, whose last reading is %.1f s old (fresh for %.1f s)",
                      unknown->id, missing, age_ms(r, now_ms) / 1000.0,
                      fresh_window_ms(c) / 1000.0);
    }

    out->verdict = GATE_ALLOW;
    snprintf(out->reason, sizeof out->reason, "ok");
    snprintf(out->detail, sizeof out->detail, "%s to %.6g %s", a->id, v, a->unit);
    return GATE_ALLOW;
}

const char *gate_follow_state_name(gate_follow_state s)
{
    switch (s) {
    case GATE_FOLLOW_NONE:
        return "none";
    case GATE_FOLLOW_PENDING:
        return "pending";
    case GATE_FOLLOW_OK:
        return "ok";
    case GATE_FOLLOW_MISMATCH:
        return "mismatch";
    }
    return "?";
}

gate_follow_state gate_follow_check(const cm_profile *p, const cm_actuator *a, double commanded,
                                    uint64_t sent_ms, const gate_plant *plant, uint64_t now_ms,
                                    gate_follow *out)
{
    memset(out, 0, sizeof *out);
    out->commanded = commanded;
    out->actual = NAN;
    out->tolerance = a->tolerance;
    out->settle_s = a->settle_s;
    const cm_channel *c = a->feedback[0] ? cm_profile_channel_by_id(p, a->feedback) : NULL;
    if (!c) {
        snprintf(out->detail, sizeof out->detail, "%s has no feedback channel", a->id);
        return out->state = GATE_FOLLOW_NONE;
    }
    const gate_reading *r = gate_plant_get_reading(plant, a->feedback);
    double actual;
    int have = r && r->ts_ms >= sent_ms &&
               cm_unit_convert(c->unit, a->unit, r->value, &actual) == CM_OK;
    if (have) {
        out->actual = actual;
        out->actual_ts_ms = r->ts_ms;
        if (fabs(actual - commanded) <= a->tolerance) {
            snprintf(out->detail, sizeof out->detail,
                     "%s reads %.6g %s, commanded %.6g (tolerance %.6g)", a->feedback, actual,
                     a->unit, commanded, a->tolerance);
            return out->state = GATE_FOLLOW_OK;
        }
    }
    double since = now_ms > sent_ms ? (double)(now_ms - sent_ms) : 0.0;
    double settle = a->settle_s * 1000.0;
    if (since < settle) {
        snprintf(out->detail, sizeof out->detail, "%.1f s of %.6g s to settle", since / 1000.0,
                 a->settle_s);
        return out->state = GATE_FOLLOW_PENDING;
    }
    if (have && (double)(r->ts_ms - sent_ms) >= settle) {
        snprintf(out->detail, sizeof out->detail,
                 "%s reads %.6g %s %.1f s after the command, commanded %.6g (tolerance %.6g)",
                 a->feedback, actual, a->unit, (double)(r->ts_ms - sent_ms) / 1000.0, commanded,
                 a->tolerance);
        return out->state = GATE_FOLLOW_MISMATCH;
    }
    if (since <= settle + fresh_window_ms(c)) {
        snprintf(out->detail, sizeof out->detail, "settled; waiting for a reading of %s",
                 a->feedback);
        return out->state = GATE_FOLLOW_PENDING;
    }
    snprintf(out->detail, sizeof out->detail,
             "no reading of %s in the %.1f s after settling (commanded %.6g)", a->feedback,
             fresh_window_ms(c) / 1000.0, commanded);
    return out->state = GATE_FOLLOW_MISMATCH;
}
