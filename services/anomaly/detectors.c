/* detectors: stuck, missing data, deviation, tank balance and pumps-vs-flow detectors (see
 * detectors.h for the contracts). Pure computation on caller-owned state. */
#include "detectors.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "suido.pb-c.h"

/* Writes one event: raise (WARNING) or clear (INFO). */
__attribute__((format(printf, 6, 7))) static void set_event(anomaly_event *e, const char *rule,
                                                            const char *family, int cleared,
                                                            double limit, const char *fmt, ...)
{
    memset(e, 0, sizeof *e);
    e->rule = rule;
    e->family = family;
    e->cleared = cleared;
    e->severity = cleared ? SUIDO__SEVERITY__SEVERITY_INFO : SUIDO__SEVERITY__SEVERITY_WARNING;
    e->limit = limit;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->evidence, sizeof e->evidence, fmt, ap);
    va_end(ap);
}

static int positive(double x)
{
    return isfinite(x) && x > 0;
}

/* Seconds to milliseconds for a validated positive duration (capped far beyond any use). */
static uint64_t to_ms(double s)
{
    double ms = s * 1000.0;
    return ms >= 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
}

static double span_of(const cm_channel *c)
{
    double span = c->range_max - c->range_min;
    return positive(span) ? span : 0;
}

int det_channel_is_status(const cm_channel *c)
{
    size_t n = strnlen(c->quantity, sizeof c->quantity);
    static const char suffix[] = "_status";
    size_t ns = sizeof suffix - 1;
    if (strcmp(c->quantity, "status") == 0)
        return 1;
    if (n >= ns && memcmp(c->quantity + n - ns, suffix, ns) == 0)
        return 1;
    return c->range_min == 0 && c->range_max == 1;
}

/* ---- stuck ----------------------------------------------------------------------------------- */

void det_stuck_params_default(det_stuck_params *p, const cm_channel *c)
{
    double w = 60.0;
    if (positive(c->period_s) && 60.0 * c->period_s > w)
        w = 60.0 * c->period_s;
    p->window_s = w;
    p->band = 1e-6 * span_of(c);
}

static void stuck_restart(det_stuck_state *s, uint64_t ts_ms, double v)
{
    s->lo = s->hi = v;
    s->start_ms = ts_ms;
    s->n = 1;
    s->has_run = 1;
}

int det_stuck_update(det_stuck_state *s, const cm_channel *c, const det_stuck_params *p,
                     uint64_t ts_ms, double value, anomaly_event *ev)
{
    det_stuck_params def;
    if (!p) {
        det_stuck_params_default(&def, c);
        p = &def;
    }
    if (!positive(p->window_s) || !isfinite(p->band) || p->band < 0)
        return 0;
    if (det_channel_is_status(c) || !isfinite(value))
        return 0;
    if (s->has_run && ts_ms < s->last_ms)
        return 0;
    if (value <= c->range_min && !s->raised) {
        s->has_run = 0; /* resting at the bottom of the range: no run (see the header) */
        return 0;
    }
    if (!s->has_run) {
        stuck_restart(s, ts_ms, value);
        s->last_ms = ts_ms;
        return 0;
    }
    uint64_t window_ms = to_ms(p->window_s);
    uint64_t gap_ms = ts_ms - s->last_ms;
    double lo = value < s->lo ? value : s->lo;
    double hi = value > s->hi ? value : s->hi;
    double spread = hi - lo;
    s->last_ms = ts_ms;
    if (s->raised) {
        if (spread > 2.0 * p->band) {
            double held_s = (double)(s->last_ms - s->start_ms) / 1000.0;
            set_event(ev, "stuck", "stuck", 1, p->band,
                      "value %.6g %s moved by %.3g after %.0f s unchanged", value, c->unit,
                      value < s->lo ? s->lo - value : value - s->hi, held_s);
            s->raised = 0;
            stuck_restart(s, ts_ms, value);
            return 1;
        }
        s->lo = lo;
        s->hi = hi;
        if (s->n < UINT32_MAX)
            s->n++;
        return 0;
    }
    if (spread > p->band || gap_ms > window_ms) {
        stuck_restart(s, ts_ms, value);
        return 0;
    }
    s->lo = lo;
    s->hi = hi;
    if (s->n < UINT32_MAX)
        s->n++;
    if (ts_ms - s->start_ms >= window_ms && s->n >= 3) {
        s->raised = 1;
        set_event(ev, "stuck", "stuck", 0, p->band,
                  "unchanged for %.0f s (spread %.3g %s over %u readings, band %.3g)",
                  (double)(ts_ms - s->start_ms) / 1000.0, s->hi - s->lo, c->unit, (unsigned)s->n,
                  p->band);
        return 1;
    }
    return 0;
}

/* ---- missing data ---------------------------------------------------------------------------- */

double det_missing_limit_s(const cm_channel *c)
{
    if (!positive(c->period_s))
        return 0;
    double a = 3.0 * c->period_s, b = c->period_s + 5.0;
    return a > b ? a : b;
}

int det_missing_seen(det_missing_state *s, uint64_t ts_ms, anomaly_event *ev)
{
    if (s->has_seen && ts_ms < s->last_ms)
        return 0;
    int n = 0;
    if (s->raised && s->has_seen) {
        double gap_s = (double)(ts_ms - s->last_ms) / 1000.0;
        if (gap_s <= (double)s->limit_s / 2.0) {
            set_event(ev, "missing_data", "missing", 1, s->limit_s,
                      "data flowing again (reading %.1f s after the previous, limit %.0f s)",
                      gap_s, (double)s->limit_s);
            s->raised = 0;
            n = 1;
        }
    }
    s->last_ms = ts_ms;
    s->has_seen = 1;
    return n;
}

int det_missing_stopped(det_missing_state *s, anomaly_event *ev)
{
    int raised = s->raised;
    s->has_seen = 0;
    s->raised = 0;
    if (!raised)
        return 0;
    set_event(ev, "missing_data", "missing", 1, s->limit_s,
              "the gateway announced its shutdown: silence expected");
    return 1;
}

int det_missing_check(det_missing_state *s, const cm_channel *c, uint64_t now_ms,
                      anomaly_event *ev)
{
    double limit_s = det_missing_limit_s(c);
    if (!s->has_seen || s->raised || limit_s <= 0 || now_ms < s->last_ms)
        return 0;
    double silent_s = (double)(now_ms - s->last_ms) / 1000.0;
    if (silent_s <= limit_s)
        return 0;
    s->raised = 1;
    s->limit_s = (float)limit_s;
    set_event(ev, "missing_data", "missing", 0, limit_s,
              "no data for %.0f s (expected every %.3g s, limit %.0f s)", silent_s, c->period_s,
              limit_s);
    return 1;
}

/* ---- deviation ------------------------------------------------------------------------------- */

void det_deviation_params_default(det_deviation_params *p, const cm_channel *c)
{
    double span = span_of(c);
    p->half_life = 500;
    p->warmup = 100;
    p->z_on = 6;
    p->k = 3;
    p->z_off = 3;
    p->sigma_floor = span > 0 ? 1e-3 * span : 1e-9;
}

/* Absorbs v into the baseline (West's incremental EWMA variance) with weight max(alpha, 1/n):
 * an exact running mean and variance until the EWMA's own memory is the shorter one. A finite
 * but absurd reading (1e300) that would overflow the baseline is dropped instead. */
static void deviation_absorb(det_deviation_state *s, double v, double alpha)
{
    double a = 1.0 / ((double)s->n + 1.0);
    if (a < alpha)
        a = alpha;
    double d = v - s->mean;
    double inc = a * d;
    double mean = s->mean + inc;
    double var = (1.0 - a) * (s->var + d * inc);
    if (!isfinite(mean) || !isfinite(var))
        return;
    s->mean = mean;
    s->var = var;
    if (s->n < UINT32_MAX)
        s->n++;
}

int det_deviation_update(det_deviation_state *s, const cm_channel *c,
                         const det_deviation_params *p, uint64_t ts_ms, double value,
                         anomaly_event *ev)
{
    det_deviation_params def;
    if (!p) {
        det_deviation_params_default(&def, c);
        p = &def;
    }
    if (!positive(p->half_life) || !positive(p->z_on) || !positive(p->z_off) ||
        p->z_off > p->z_on || p->k < 1 || p->k > 255 || !positive(p->sigma_floor))
        return 0;
    if (det_channel_is_status(c) || !isfinite(value))
        return 0;
    if (s->n > 0 && ts_ms < s->last_ms)
        return 0;
    s->last_ms = ts_ms;
    double alpha = 1.0 - pow(2.0, -1.0 / p->half_life);
    if (s->n < p->warmup || s->n == 0) {
        deviation_absorb(s, value, alpha);
        return 0;
    }
    double sigma = sqrt(s->var);
    if (!(sigma >= p->sigma_floor))
        sigma = p->sigma_floor;
    double z = (value - s->mean) / sigma;
    double az = fabs(z);
    if (!isfinite(z))
        return 0;
    if (s->raised) {
        if (az < p->z_off) {
            s->raised = 0;
            s->over = 0;
            set_event(ev, "deviation", "deviation", 1,
                      s->mean + (z < 0 ? -1 : 1) * p->z_off * sigma,
                      "z=%+.1f back within %.0f sigma (value %.4g %s, mean %.4g, sigma %.3g)", z,
                      p->z_off, value, c->unit, s->mean, sigma);
            deviation_absorb(s, value, alpha);
            return 1;
        }
        return 0;
    }
    if (az <= p->z_on) {
        s->over = 0;
        deviation_absorb(s, value, alpha);
        return 0;
    }
    if (++s->over < p->k)
        return 0;
    s->raised = 1;
    set_event(ev, "deviation", "deviation", 0, s->mean + (z < 0 ? -1 : 1) * p->z_on * sigma,
              "z=%+.1f for %u readings (value %.4g %s, mean %.4g, sigma %.3g)", z,
              (unsigned)s->over, value, c->unit, s->mean, sigma);
    return 1;
}

/* ---- tank balance ---------------------------------------------------------------------------- */

void det_balance_params_default(det_balance_params *p, double area_m2)
{
    p->area_m2 = area_m2;
    p->horizon_s = 300;
    p->tol_m = 0.05;
    p->tol_frac = 0.2;
}

static void balance_restart(det_balance_state *s, uint64_t ts_ms)
{
    int raised = s->raised;
    memset(s, 0, sizeof *s);
    s->raised = (uint8_t)raised;
    s->base_ms = s->last_ms = s->open_ms = ts_ms;
    s->has_last = 1;
}

/* Closes the open bucket into the ring; returns its index. */
static int balance_close(det_balance_state *s)
{
    const int size = DET_BALANCE_BUCKETS + 1;
    int i = s->count < size ? (s->head + s->count) % size : s->head;
    if (s->count < size)
        s->count++;
    else
        s->head = (uint8_t)((s->head + 1) % size);
    double n = (double)s->n_open;
    s->ring[i].t_s = s->sum_t / n;
    s->ring[i].level = s->sum_level / n;
    s->ring[i].cum = s->sum_cum / n;
    s->sum_t = s->sum_level = s->sum_cum = 0;
    s->n_open = 0;
    return i;
}

/* Judges the newest bucket against the newest one at least ~one horizon older. */
static int balance_judge(det_balance_state *s, const det_balance_params *p, int newest,
                         anomaly_event *ev)
{
    const int size = DET_BALANCE_BUCKETS + 1;
    const det_balance_bucket *b = &s->ring[newest];
    const det_balance_bucket *ref = NULL;
    double need = p->horizon_s - p->horizon_s / DET_BALANCE_BUCKETS / 2.0;
    for (int k = s->count - 2; k >= 0; k--) {
        const det_balance_bucket *r = &s->ring[(s->head + k) % size];
        if (b->t_s - r->t_s >= need) {
            ref = r;
            break;
        }
    }
    if (!ref)
        return 0;
    double dt = b->t_s - ref->t_s;
    double obs = b->level - ref->level;
    double expect = b->cum - ref->cum;
    double mis = obs - expect;
    double tol = p->tol_frac * fabs(expect);
    if (tol < p->tol_m)
        tol = p->tol_m;
    if (!s->raised && fabs(mis) > tol) {
        s->raised = 1;
        set_event(ev, "tank_balance", "balance", 0, tol,
                  "level %+.3f m in %.0f s, flows imply %+.3f m (mismatch %.3f, tol %.3f)", obs,
                  dt, expect, fabs(mis), tol);
        return 1;
    }
    if (s->raised && fabs(mis) < tol / 2.0) {
        s->raised = 0;
        set_event(ev, "tank_balance", "balance", 1, tol / 2.0,
                  "level %+.3f m in %.0f s, flows imply %+.3f m (mismatch %.3f < %.3f)", obs, dt,
                  expect, fabs(mis), tol / 2.0);
        return 1;
    }
    return 0;
}

int det_balance_update(det_balance_state *s, const det_balance_params *p, uint64_t ts_ms,
                       double level, double inflow_ls, double outflow_ls, anomaly_event *ev)
{
    if (!positive(p->area_m2) || !positive(p->horizon_s) || !isfinite(p->tol_m) ||
        p->tol_m < 0 || !isfinite(p->tol_frac) || p->tol_frac < 0)
        return 0;
    if (!isfinite(level) || !isfinite(inflow_ls) || !isfinite(outflow_ls))
        return 0;
    if (s->has_last && ts_ms < s->last_ms)
        return 0;
    double net = inflow_ls - outflow_ls;
    uint64_t horizon_ms = to_ms(p->horizon_s);
    if (!s->has_last || ts_ms - s->last_ms > horizon_ms) {
        balance_restart(s, ts_ms);
    } else {
        double dt_s = (double)(ts_ms - s->last_ms) / 1000.0;
        s->cum += 0.5 * (s->last_net + net) * dt_s / 1000.0 / p->area_m2;
    }
    int n = 0;
    if (s->n_open > 0 && ts_ms - s->open_ms >= horizon_ms / DET_BALANCE_BUCKETS) {
        n = balance_judge(s, p, balance_close(s), ev);
        s->open_ms = ts_ms;
    }
    s->sum_t += (double)(ts_ms - s->base_ms) / 1000.0;
    s->sum_level += level;
    s->sum_cum += s->cum;
    s->n_open++;
    s->last_net = net;
    s->last_ms = ts_ms;
    return n;
}

/* ---- pumps vs flow --------------------------------------------------------------------------- */

void det_pumpflow_params_default(det_pumpflow_params *p, double flow_span)
{
    p->min_flow = 0.02 * flow_span;
    p->grace_s = 30;
}

int det_pumps_running(const double *status, size_t n)
{
    int r = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(status[i]) && status[i] >= 0.5)
            r++;
    return r;
}

int det_pumpflow_update(det_pumpflow_state *s, const det_pumpflow_params *p, uint64_t ts_ms,
                        int running_pumps, double flow, anomaly_event *ev)
{
    if (!positive(p->min_flow) || !positive(p->grace_s))
        return 0;
    if (running_pumps < 0 || !isfinite(flow))
        return 0;
    if (s->has_last && ts_ms < s->last_ms)
        return 0;
    uint8_t k = running_pumps > 0 ? (flow < p->min_flow ? 1 : 0) : (flow > p->min_flow ? 2 : 0);
    uint64_t grace_ms = to_ms(p->grace_s);
    if (!s->has_last || k != s->cand || ts_ms - s->last_ms > grace_ms) {
        s->cand = k;
        s->since_ms = ts_ms;
    }
    s->has_last = 1;
    s->last_ms = ts_ms;
    if (k == s->cur || ts_ms - s->since_ms <= grace_ms)
        return 0;
    double held_s = (double)(ts_ms - s->since_ms) / 1000.0;
    s->cur = k;
    if (k == 0)
        set_event(ev, "pump_flow", "pump_flow", 1, p->min_flow,
                  "pumps and flow agree for %.0f s (%d running, flow %.4g)", held_s, running_pumps,
                  flow);
    else if (k == 1)
        set_event(ev, "pump_flow", "pump_flow", 0, p->min_flow,
                  "%d pump(s) running but flow %.4g < %.4g for %.0f s", running_pumps, flow,
                  p->min_flow, held_s);
    else
        set_event(ev, "pump_flow", "pump_flow", 0, p->min_flow,
                  "no pump running but flow %.4g > %.4g for %.0f s", flow, p->min_flow, held_s);
    return 1;
}
