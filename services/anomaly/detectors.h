/* detectors: streaming fault detectors that complement anomaly_rules — a stuck (flat-lined)
 * sensor, missing data, a statistical deviation from a channel's own recent behaviour, and two
 * cross-sensor relations from plain physics (tank mass balance, pumps vs flow). Pure functions on
 * small caller-owned state structs: no I/O, no allocation, no clock; the live service (one state
 * per channel per gateway, up to 65536) and the tests drive them with the same calls.
 *
 * Contracts shared by every detector:
 * - A zeroed state ({0}) is a valid fresh state; nothing needs freeing.
 * - An event is written on entering an abnormal state (cleared = 0, severity WARNING) and on
 *   leaving it (cleared = 1, severity INFO); staying in either state writes nothing
 *   (de-duplication). Functions return the number of events written to *ev: 0 or 1.
 * - Hysteresis: the condition that clears is stricter than the negation of the one that raises
 *   (twice the band, a lower |z|, half the tolerance, readings at half the silence limit, or the
 *   opposite condition held for the same grace time), so a signal hovering at a boundary does
 *   not chatter.
 * - Events reuse anomaly_event: rule and family name the alert (family is part of its id), limit
 *   is the threshold crossed in the channel's unit unless stated, evidence (< 160 bytes) carries
 *   the numbers that decided.
 * - NaN/Inf values are ignored (the state is untouched); a sample whose time is earlier than the
 *   last accepted one is ignored; a gap longer than a detector's window restarts that window
 *   rather than being integrated or counted across (a gap alone neither raises nor clears).
 * - Invalid parameters (non-finite, zero or negative where a positive number is needed) make the
 *   detector inert: it returns 0 and changes nothing. */
#ifndef DETECTORS_H
#define DETECTORS_H
#include <stddef.h>
#include <stdint.h>
#include "anomaly_rules.h"
#include "cm_profile.h"

/* 1 if c is a status-like channel (on/off, open/closed): quantity "status" or ending in "_status"
 * (e.g. "run_status"), or a physical range of exactly 0..1. Such a channel legitimately holds
 * one value for hours and jumps between its two values, so neither the stuck nor the deviation
 * detector judges it (an analog fraction should be profiled as 0..100 %, not 0..1). */
int det_channel_is_status(const cm_channel *c);

/* ---- 1. stuck / flat-lined sensor: rule "stuck", family "stuck" ------------------------------ */

typedef struct det_stuck_params {
    double window_s; /* raise once the value stayed within band this long */
    double band;     /* largest spread (max - min) still counted as "unchanged"; clears above 2x */
} det_stuck_params;

/* window_s = max(60 s, 60 x period_s): long enough that an idle but live process (a full
 * reservoir at night) still shows noise; band = 1e-6 x (range_max - range_min), i.e. constant to
 * the resolution of a float reading (0 if the range is unusable: bit-identical only). */
void det_stuck_params_default(det_stuck_params *p, const cm_channel *c);

typedef struct det_stuck_state {
    double lo, hi;     /* envelope of the current run of readings */
    uint64_t start_ms; /* first reading of the run */
    uint64_t last_ms;  /* last accepted reading */
    uint32_t n;        /* readings in the run */
    uint8_t has_run, raised;
} det_stuck_state;

/* Feeds one reading of channel c. p NULL = det_stuck_params_default(c). Raises when the run of
 * readings whose spread stays <= band covers window_s with at least 3 readings; clears when a
 * reading takes the spread above 2 x band (the run then restarts, so raising again needs a whole
 * new window). Never raises on a status channel (det_channel_is_status), nor on a value resting
 * at the bottom of the physical range: a flow meter below its low-flow cut-off reads exactly 0
 * and so does a stopped machine, for hours, and that is the plant, not the sensor. A gap longer
 * than window_s restarts the run unless raised. */
int det_stuck_update(det_stuck_state *s, const cm_channel *c, const det_stuck_params *p,
                     uint64_t ts_ms, double value, anomaly_event *ev);

/* ---- 2. missing data: rule "missing_data", family "missing" ---------------------------------- */

typedef struct det_missing_state {
    uint64_t last_ms; /* last reading seen */
    float limit_s;    /* silence limit in force when raised (for the cleared event) */
    uint8_t has_seen, raised;
} det_missing_state;

/* Silence that raises for channel c: max(3 x period_s, period_s + 5 s) — three missed readings
 * for slow channels, and for fast ones (1 s) 5 s of grace for network and broker jitter, which
 * is absolute rather than proportional. 0 when period_s is unusable (no check). */
double det_missing_limit_s(const cm_channel *c);

/* Call on every reading of the channel, with ts_ms on the same clock as det_missing_check's
 * now_ms (the live service passes its own receive time, not the gateway's timestamp, so gateway
 * clock skew is not mistaken for silence). If raised, clears once data flows again: a reading at
 * most limit/2 after the previous one (a lone straggler every ~limit does not clear, so a channel
 * reporting at about the limit does not chatter). Earlier-than-last times are ignored. */
int det_missing_seen(det_missing_state *s, uint64_t ts_ms, anomaly_event *ev);

/* Call periodically (e.g. every second). Raises once when now_ms - last reading exceeds
 * det_missing_limit_s(c). Never raises before the first reading was seen: a gateway that never
 * reported is the registry's concern, not a channel fault. */
int det_missing_check(det_missing_state *s, const cm_channel *c, uint64_t now_ms,
                      anomaly_event *ev);

/* The gateway announced an orderly stop (its death message): silence is expected from now on,
 * until its next reading. Clears a raised alert (returns 1 with the event), else returns 0. */
int det_missing_stopped(det_missing_state *s, anomaly_event *ev);

/* ---- 3. statistical deviation: rule "deviation", family "deviation" -------------------------- */

typedef struct det_deviation_params {
    double half_life;   /* samples for a reading's weight in the baseline to halve */
    uint32_t warmup;    /* samples absorbed before any alarm */
    double z_on;        /* raise when |z| > z_on ... */
    uint32_t k;         /* ... for k consecutive readings (1..255) */
    double z_off;       /* clear when |z| < z_off (<= z_on) */
    double sigma_floor; /* smallest sigma used for z, channel unit */
} det_deviation_params;

/* half_life 500 samples (~8 min at 1 s: slow enough that a fault is not absorbed, fast enough to
 * follow a diurnal cycle), warmup 100, z_on 6, k 3, z_off 3, sigma_floor 1e-3 x range span (so a
 * quantised or constant channel does not turn its last digit into a 6-sigma event; 1e-9 if the
 * range is unusable). */
void det_deviation_params_default(det_deviation_params *p, const cm_channel *c);

typedef struct det_deviation_state {
    double mean, var; /* exponentially weighted baseline */
    uint32_t n;       /* samples absorbed into the baseline (saturates) */
    uint8_t over;     /* consecutive readings with |z| > z_on */
    uint8_t raised;
    uint64_t last_ms;
} det_deviation_state;

/* Feeds one reading. z = (value - mean) / max(sqrt(var), sigma_floor), against the baseline
 * before this reading. A reading absorbed into the baseline weighs max(alpha, 1/(n+1)), alpha =
 * 1 - 2^(-1/half_life): an exact running mean and variance until the EWMA's memory is the
 * shorter. During warm-up every reading is absorbed and nothing is raised. Afterwards one is
 * absorbed only if |z| <= z_on and not raised, or if it clears: outliers, including the first
 * k-1 of a burst and everything while raised, are kept out of the baseline, otherwise a
 * persistent fault would become the new normal and clear itself. The price: a genuine lasting
 * change of regime (a setpoint moved, a pump switched in on a flow channel) stays raised until the
 * value returns within z_off of the old baseline or the caller zeroes the state; so enable this
 * detector on channels with one regime (quality, pressure), not on switched flows. The half-life
 * counts samples, so a gap in time neither ages nor restarts the baseline. p NULL = defaults
 * from c. Never raises on a status channel. */
int det_deviation_update(det_deviation_state *s, const cm_channel *c,
                         const det_deviation_params *p, uint64_t ts_ms, double value,
                         anomaly_event *ev);

/* ---- 4a. tank balance: rule "tank_balance", family "balance" --------------------------------- */

typedef struct det_balance_params {
    double area_m2;   /* tank's horizontal section */
    double horizon_s; /* window of the comparison; must span several readings */
    double tol_m;     /* absolute tolerance, m ... */
    double tol_frac;  /* ... or this fraction of the expected change, whichever is larger */
} det_balance_params;

/* horizon 300 s, tol_m 0.05 m, tol_frac 0.2; area_m2 must be set by the caller. */
void det_balance_params_default(det_balance_params *p, double area_m2);

#define DET_BALANCE_BUCKETS 10 /* the horizon is compared in tenths */

typedef struct det_balance_bucket {
    double t_s, level, cum; /* means over the bucket: time since restart, level, integral */
} det_balance_bucket;

typedef struct det_balance_state {
    uint64_t base_ms, last_ms, open_ms;
    double last_net;  /* inflow - outflow at the last sample, L/s */
    double cum;       /* integral of (in - out) / 1000 / area since restart, m */
    double sum_t, sum_level, sum_cum; /* open bucket */
    uint32_t n_open;
    uint8_t head, count, has_last, raised;
    det_balance_bucket ring[DET_BALANCE_BUCKETS + 1];
} det_balance_state;

/* Feeds the three latest values at one instant: level (m), inflow and outflow (L/s). The
 * expected level change is the trapezoidal integral of (in - out) / 1000 / area. Readings are
 * averaged in buckets of horizon/10, so level noise does not decide; when a bucket closes, its
 * mean is compared with the bucket about one horizon earlier: mismatch = observed change -
 * expected change. Raises when |mismatch| > max(tol_m, tol_frac x |expected|), clears when it is
 * below half that. A gap longer than the horizon restarts integration and buckets (a raised alert
 * stays until a full new horizon decides). A sample with any non-finite value is ignored. */
int det_balance_update(det_balance_state *s, const det_balance_params *p, uint64_t ts_ms,
                       double level, double inflow_ls, double outflow_ls, anomaly_event *ev);

/* ---- 4b. pumps vs flow: rule "pump_flow", family "pump_flow" --------------------------------- */

typedef struct det_pumpflow_params {
    double min_flow; /* flow below this is "no flow", same unit as the flow reading */
    double grace_s;  /* a mismatch (or agreement) must persist this long to raise (or clear) */
} det_pumpflow_params;

/* grace_s 30 s (a pump's start-up and a check valve's closing take seconds, not half a minute);
 * min_flow = 2 % of the flow meter's span, above its zero noise and below any pump's duty. */
void det_pumpflow_params_default(det_pumpflow_params *p, double flow_span);

/* Pumps running among n statuses: status >= 0.5; non-finite statuses are not counted. */
int det_pumps_running(const double *status, size_t n);

typedef struct det_pumpflow_state {
    uint64_t last_ms, since_ms; /* last sample; first sample of the candidate condition */
    uint8_t cur;                /* condition in force: 0 agree, 1 running without flow,
                                   2 flow without a running pump */
    uint8_t cand;               /* condition seen at the last sample */
    uint8_t has_last;
} det_pumpflow_state;

/* Feeds one instant: running_pumps (< 0 is ignored) and the flow. Raises when "pump(s) running
 * but flow < min_flow" or "no pump running but flow > min_flow" held over more than grace_s of
 * consecutive samples; clears when agreement held as long. Switching from one mismatch to the
 * other after grace_s writes a new raise (same family: it updates the alert). A gap longer than
 * grace_s restarts the timer. */
int det_pumpflow_update(det_pumpflow_state *s, const det_pumpflow_params *p, uint64_t ts_ms,
                        int running_pumps, double flow, anomaly_event *ev);

#endif
