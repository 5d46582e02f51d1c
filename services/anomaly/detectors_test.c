/* Unit tests of detectors: for each detector, raise once, no repeat, clear with hysteresis, no
 * chatter at the boundary, no false alarm on a noisy normal signal (deterministic xorshift +
 * Box-Muller), NaN/Inf and backwards time ignored, gaps restart windows; plus the status
 * exemption (stuck), no alarm before the first reading (missing), warm-up and an unpolluted
 * baseline (deviation). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <string.h>
#include <cmocka.h>

#include "detectors.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t seed)
{
    rng_state = seed ? seed : 0x9e3779b97f4a7c15u;
}

/* xorshift64*: uniform in (0, 1). */
static double uniform(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1du;
    return ((double)(r >> 11) + 0.5) / 9007199254740992.0;
}

/* Standard normal (Box-Muller). */
static double gauss(void)
{
    double u1 = uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static uint64_t ms(double t_s)
{
    return (uint64_t)llround(t_s * 1000.0);
}

/* Events seen by a scenario: count, raises, clears, the last one and when. */
typedef struct tally {
    int n, raised, cleared;
    double last_t;
    anomaly_event last;
} tally;

static void take(tally *t, int n, const anomaly_event *ev, double at)
{
    assert_true(n == 0 || n == 1);
    if (!n)
        return;
    t->n++;
    if (ev->cleared) {
        t->cleared++;
        assert_int_equal(ev->severity, 0); /* INFO */
    } else {
        t->raised++;
        assert_int_equal(ev->severity, 1); /* WARNING */
    }
    assert_true(strlen(ev->evidence) < sizeof ev->evidence - 1);
    t->last = *ev;
    t->last_t = at;
}

static cm_channel channel(const char *quantity, const char *unit, double lo, double hi,
                          double period_s)
{
    cm_channel c;
    memset(&c, 0, sizeof c);
    strcpy(c.quantity, quantity);
    strcpy(c.unit, unit);
    c.range_min = lo;
    c.range_max = hi;
    c.period_s = period_s;
    return c;
}

static cm_channel level_channel(void)
{
    return channel("level", "m", 0, 10, 1);
}

/* ---- status classification ------------------------------------------------------------------- */

static void test_status_channels(void **state)
{
    (void)state;
    cm_channel c = channel("run_status", "1", 0, 1, 1);
    assert_true(det_channel_is_status(&c));
    c = channel("status", "1", 0, 1, 3600);
    assert_true(det_channel_is_status(&c));
    c = channel("valve_status", "%", 0, 100, 1); /* by quantity */
    assert_true(det_channel_is_status(&c));
    c = channel("switch", "1", 0, 1, 1); /* by range */
    assert_true(det_channel_is_status(&c));
    c = channel("level", "m", 0, 10, 1);
    assert_false(det_channel_is_status(&c));
    c = channel("statusword", "1", 0, 65535, 1); /* "status" only as a whole word or suffix */
    assert_false(det_channel_is_status(&c));
    c = channel("flow", "L/s", 0, 1.5, 1);
    assert_false(det_channel_is_status(&c));
}

/* ---- stuck ----------------------------------------------------------------------------------- */

static void test_stuck_defaults(void **state)
{
    (void)state;
    det_stuck_params p;
    cm_channel c = level_channel();
    det_stuck_params_default(&p, &c);
    assert_true(p.window_s == 60);
    assert_true(fabs(p.band - 1e-5) < 1e-18);
    c.period_s = 3600;
    det_stuck_params_default(&p, &c);
    assert_true(p.window_s == 216000);
    c.period_s = NAN;
    det_stuck_params_default(&p, &c);
    assert_true(p.window_s == 60);
}

static void test_stuck_raises_once_and_clears(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_stuck_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(1);
    for (int i = 0; i < 200; i++) /* noisy, live */
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), 5.0 + 0.01 * gauss(), &ev), &ev, i);
    assert_int_equal(t.n, 0);
    for (int i = 200; i < 600; i++) /* flat-lined from t=200 */
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), 5.0, &ev), &ev, i);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.raised, 1);
    assert_true(t.last_t == 260);
    assert_string_equal(t.last.rule, "stuck");
    assert_string_equal(t.last.family, "stuck");
    assert_non_null(strstr(t.last.evidence, "unchanged for 60 s"));
    assert_non_null(strstr(t.last.evidence, "over 61 readings"));
    /* Moves of up to 2 x band (1e-5) do not clear. */
    for (int i = 600; i < 700; i++)
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), 5.0 + (i % 2 ? 1.9e-5 : 0.0), &ev), &ev,
             i);
    assert_int_equal(t.n, 1);
    take(&t, det_stuck_update(&s, &c, NULL, ms(700), 5.02, &ev), &ev, 700);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
    assert_true(t.last.cleared);
    assert_string_equal(t.last.rule, "stuck");
    for (int i = 701; i < 2000; i++)
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), 5.0 + 0.01 * gauss(), &ev), &ev, i);
    assert_int_equal(t.n, 2);
}

static void test_stuck_no_chatter_at_boundary(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_stuck_params p;
    det_stuck_params_default(&p, &c);
    det_stuck_state s = {0};
    anomaly_event ev;
    tally t = {0};
    /* Spread just above band: never a run, never raised. */
    for (int i = 0; i < 1000; i++)
        take(&t, det_stuck_update(&s, &c, &p, ms(i), 5.0 + (i % 2 ? 1.01 * p.band : 0), &ev), &ev,
             i);
    assert_int_equal(t.n, 0);
    /* Raised, then hovering between band and 2 x band: stays raised, no clear, no repeat. */
    for (int i = 1000; i < 1100; i++)
        take(&t, det_stuck_update(&s, &c, &p, ms(i), 5.0, &ev), &ev, i);
    assert_int_equal(t.raised, 1);
    for (int i = 1100; i < 3000; i++)
        take(&t, det_stuck_update(&s, &c, &p, ms(i), 5.0 + (i % 3 ? 1.5 * p.band : 0), &ev), &ev,
             i);
    assert_int_equal(t.n, 1);
    /* Cleared; a glitch then flat again raises only after a whole new window. */
    take(&t, det_stuck_update(&s, &c, &p, ms(3000), 5.0 + 3 * p.band, &ev), &ev, 3000);
    assert_int_equal(t.cleared, 1);
    for (int i = 3001; i < 3060; i++)
        take(&t, det_stuck_update(&s, &c, &p, ms(i), 5.0 + 3 * p.band, &ev), &ev, i);
    assert_int_equal(t.n, 2);
    take(&t, det_stuck_update(&s, &c, &p, ms(3060), 5.0 + 3 * p.band, &ev), &ev, 3060);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.raised, 2);
}

static void test_stuck_status_channel_exempt(void **state)
{
    (void)state;
    cm_channel pump = channel("run_status", "1", 0, 1, 1);
    cm_channel level = level_channel();
    det_stuck_state sp = {0}, sl = {0};
    anomaly_event ev;
    tally tp = {0}, tl = {0};
    for (int i = 0; i < 36000; i++) { /* ten hours on */
        take(&tp, det_stuck_update(&sp, &pump, NULL, ms(i), 1.0, &ev), &ev, i);
        take(&tl, det_stuck_update(&sl, &level, NULL, ms(i), 1.0, &ev), &ev, i);
    }
    assert_int_equal(tp.n, 0);
    assert_int_equal(tl.n, 1); /* the same data on an analog channel is stuck */
    cm_channel sw = channel("position", "1", 0, 1, 1); /* exempt by its 0..1 range */
    det_stuck_state ss = {0};
    tally ts = {0};
    for (int i = 0; i < 1000; i++)
        take(&ts, det_stuck_update(&ss, &sw, NULL, ms(i), 0.0, &ev), &ev, i);
    assert_int_equal(ts.n, 0);
    /* an analog channel resting at the bottom of its range (no flow) is not stuck either, but
     * one held anywhere above it is */
    cm_channel flow = channel("flow", "L/s", 0, 500, 1);
    det_stuck_state sf = {0}, sf2 = {0};
    tally tf = {0}, tf2 = {0};
    for (int i = 0; i < 36000; i++) {
        take(&tf, det_stuck_update(&sf, &flow, NULL, ms(i), 0.0, &ev), &ev, i);
        take(&tf2, det_stuck_update(&sf2, &flow, NULL, ms(i), 0.5, &ev), &ev, i);
    }
    assert_int_equal(tf.n, 0);
    assert_int_equal(tf2.n, 1);
}

static void test_stuck_noisy_normal_no_alarm(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_stuck_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(42);
    /* A day of a reservoir cycling slowly, 3 mm of sensor noise. */
    for (int i = 0; i < 86400; i++) {
        double v = 5.0 + 2.0 * sin(6.283185307179586 * i / 86400.0) + 0.003 * gauss();
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), v, &ev), &ev, i);
    }
    assert_int_equal(t.n, 0);
}

static void test_stuck_ignores_nan_backwards_and_gaps(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_stuck_state s = {0};
    anomaly_event ev;
    tally t = {0};
    for (int i = 0; i < 60; i++) {
        take(&t, det_stuck_update(&s, &c, NULL, ms(i), 5.0, &ev), &ev, i);
        take(&t, det_stuck_update(&s, &c, NULL, ms(i + 0.5), NAN, &ev), &ev, i);
        take(&t, det_stuck_update(&s, &c, NULL, ms(i + 0.5), INFINITY, &ev), &ev, i);
        take(&t, det_stuck_update(&s, &c, NULL, ms(i + 0.5), -INFINITY, &ev), &ev, i);
        if (i > 10) /* a late reading with another value: ignored */
            take(&t, det_stuck_update(&s, &c, NULL, ms(i - 10), 7.0, &ev), &ev, i);
    }
    assert_int_equal(t.n, 0);
    take(&t, det_stuck_update(&s, &c, NULL, ms(60), 5.0, &ev), &ev, 60);
    assert_int_equal(t.raised, 1);
    take(&t, det_stuck_update(&s, &c, NULL, ms(61), NAN, &ev), &ev, 61); /* does not clear */
    take(&t, det_stuck_update(&s, &c, NULL, ms(30), 9.0, &ev), &ev, 61);  /* backwards */
    assert_int_equal(t.n, 1);

    /* A gap longer than the window restarts the run: two readings 1000 s apart are no run. */
    det_stuck_state g = {0};
    tally tg = {0};
    take(&tg, det_stuck_update(&g, &c, NULL, ms(0), 3.0, &ev), &ev, 0);
    take(&tg, det_stuck_update(&g, &c, NULL, ms(30), 3.0, &ev), &ev, 30);
    for (int i = 1000; i < 1060; i++)
        take(&tg, det_stuck_update(&g, &c, NULL, ms(i), 3.0, &ev), &ev, i);
    assert_int_equal(tg.n, 0);
    take(&tg, det_stuck_update(&g, &c, NULL, ms(1060), 3.0, &ev), &ev, 1060);
    assert_int_equal(tg.raised, 1);

    /* Two equal readings a window apart are not yet a run; a third makes one. */
    det_stuck_state two = {0};
    tally tt = {0};
    take(&tt, det_stuck_update(&two, &c, NULL, ms(0), 3.0, &ev), &ev, 0);
    take(&tt, det_stuck_update(&two, &c, NULL, ms(60), 3.0, &ev), &ev, 60);
    assert_int_equal(tt.n, 0);
    take(&tt, det_stuck_update(&two, &c, NULL, ms(61), 3.0, &ev), &ev, 61);
    assert_int_equal(tt.raised, 1);
}

/* ---- missing data ---------------------------------------------------------------------------- */

static void test_missing_limit(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    assert_true(det_missing_limit_s(&c) == 6); /* 1 s + 5 s grace */
    c.period_s = 10;
    assert_true(det_missing_limit_s(&c) == 30); /* 3 periods */
    c.period_s = 3600;
    assert_true(det_missing_limit_s(&c) == 10800);
    c.period_s = 0;
    assert_true(det_missing_limit_s(&c) == 0);
}

static void test_missing_not_before_first_reading(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_missing_state s = {0};
    anomaly_event ev;
    tally t = {0};
    for (int i = 0; i < 100000; i += 7)
        take(&t, det_missing_check(&s, &c, ms(i), &ev), &ev, i);
    assert_int_equal(t.n, 0);
    take(&t, det_missing_seen(&s, ms(100000), &ev), &ev, 100000);
    take(&t, det_missing_check(&s, &c, ms(100006), &ev), &ev, 100006);
    assert_int_equal(t.n, 0);
    take(&t, det_missing_check(&s, &c, ms(100007), &ev), &ev, 100007);
    assert_int_equal(t.raised, 1);
}

static void test_missing_after_an_announced_stop(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_missing_state s = {0};
    anomaly_event ev;
    tally t = {0};
    take(&t, det_missing_seen(&s, ms(0), &ev), &ev, 0);
    take(&t, det_missing_check(&s, &c, ms(60), &ev), &ev, 60);
    assert_int_equal(t.raised, 1);
    /* the death arrives: the raised alert clears, and a day of silence raises nothing */
    assert_int_equal(det_missing_stopped(&s, &ev), 1);
    assert_int_equal(ev.cleared, 1);
    assert_string_equal(ev.family, "missing");
    assert_int_equal(det_missing_stopped(&s, &ev), 0);
    for (int i = 61; i < 86400; i += 10)
        assert_int_equal(det_missing_check(&s, &c, ms(i), &ev), 0);
    /* it reports again: silence counts once more */
    take(&t, det_missing_seen(&s, ms(86400), &ev), &ev, 86400);
    take(&t, det_missing_check(&s, &c, ms(86460), &ev), &ev, 86460);
    assert_int_equal(t.raised, 2);
}

static void test_missing_raises_once_and_clears(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_missing_state s = {0};
    anomaly_event ev;
    tally t = {0};
    for (int i = 0; i <= 10; i++) {
        take(&t, det_missing_seen(&s, ms(i), &ev), &ev, i);
        take(&t, det_missing_check(&s, &c, ms(i + 0.5), &ev), &ev, i);
    }
    for (int i = 11; i < 100; i++) /* silence from t=10 */
        take(&t, det_missing_check(&s, &c, ms(i), &ev), &ev, i);
    assert_int_equal(t.n, 1);
    assert_true(t.last_t == 17); /* 7 s > 6 s; 6 s is not yet */
    assert_string_equal(t.last.rule, "missing_data");
    assert_string_equal(t.last.family, "missing");
    assert_true(t.last.limit == 6);
    assert_non_null(strstr(t.last.evidence, "no data for 7 s"));
    /* A first reading after the silence does not clear on its own ... */
    take(&t, det_missing_seen(&s, ms(100), &ev), &ev, 100);
    take(&t, det_missing_check(&s, &c, ms(100.5), &ev), &ev, 100.5);
    assert_int_equal(t.n, 1);
    /* ... the next, within limit/2, does. */
    take(&t, det_missing_seen(&s, ms(101), &ev), &ev, 101);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
    assert_string_equal(t.last.rule, "missing_data");
    for (int i = 102; i < 200; i++) {
        take(&t, det_missing_seen(&s, ms(i), &ev), &ev, i);
        take(&t, det_missing_check(&s, &c, ms(i + 0.5), &ev), &ev, i);
    }
    assert_int_equal(t.n, 2);
}

static void test_missing_no_chatter_at_boundary(void **state)
{
    (void)state;
    cm_channel c = level_channel(); /* limit 6 s */
    det_missing_state s = {0};
    anomaly_event ev;
    tally t = {0};
    /* Readings every 7 s, checked every second: raised once, never cleared by stragglers. */
    for (int i = 0; i < 700; i++) {
        if (i % 7 == 0)
            take(&t, det_missing_seen(&s, ms(i), &ev), &ev, i);
        take(&t, det_missing_check(&s, &c, ms(i + 0.5), &ev), &ev, i);
    }
    assert_int_equal(t.n, 1);
    assert_int_equal(t.raised, 1);
    /* Every 5 s (within the limit, above limit/2): stays raised, no repeat. */
    for (int i = 700; i < 1400; i++) {
        if (i % 5 == 0)
            take(&t, det_missing_seen(&s, ms(i), &ev), &ev, i);
        take(&t, det_missing_check(&s, &c, ms(i + 0.5), &ev), &ev, i);
    }
    assert_int_equal(t.n, 1);
    /* Nominal rate: cleared once. */
    for (int i = 1400; i < 1500; i++) {
        take(&t, det_missing_seen(&s, ms(i), &ev), &ev, i);
        take(&t, det_missing_check(&s, &c, ms(i + 0.5), &ev), &ev, i);
    }
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
    /* Every 5 s from a clear state: never raised. */
    det_missing_state f = {0};
    tally tf = {0};
    for (int i = 0; i < 1000; i++) {
        if (i % 5 == 0)
            take(&tf, det_missing_seen(&f, ms(i), &ev), &ev, i);
        take(&tf, det_missing_check(&f, &c, ms(i + 0.5), &ev), &ev, i);
    }
    assert_int_equal(tf.n, 0);
}

static void test_missing_jittery_normal_and_backwards(void **state)
{
    (void)state;
    cm_channel c = level_channel();
    det_missing_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(7);
    /* An hour at 1 s with 300 ms of jitter and an occasional 4 s stall. */
    double next = 0;
    for (int tick = 0; tick < 3600 * 10; tick++) { /* checks every 100 ms */
        double now = tick / 10.0;
        while (next <= now) {
            take(&t, det_missing_seen(&s, ms(next), &ev), &ev, now);
            double d = 1.0 + 0.3 * gauss();
            next += (d < 0.05 ? 0.05 : d) + (uniform() < 0.002 ? 4.0 : 0.0);
        }
        take(&t, det_missing_check(&s, &c, ms(now), &ev), &ev, now);
    }
    assert_int_equal(t.n, 0);

    /* A late reading does not refresh; a check from an earlier clock is ignored. */
    det_missing_state b = {0};
    tally tb = {0};
    take(&tb, det_missing_seen(&b, ms(10), &ev), &ev, 10);
    take(&tb, det_missing_seen(&b, ms(5), &ev), &ev, 10);
    take(&tb, det_missing_check(&b, &c, ms(3), &ev), &ev, 10);
    take(&tb, det_missing_check(&b, &c, ms(16), &ev), &ev, 16);
    assert_int_equal(tb.n, 0);
    take(&tb, det_missing_check(&b, &c, ms(16.1), &ev), &ev, 16.1);
    assert_int_equal(tb.raised, 1);
    take(&tb, det_missing_seen(&b, ms(9), &ev), &ev, 17); /* backwards: ignored */
    take(&tb, det_missing_seen(&b, ms(20), &ev), &ev, 20); /* 10 s after the last: no clear */
    take(&tb, det_missing_seen(&b, ms(19), &ev), &ev, 20); /* backwards: ignored */
    assert_int_equal(tb.n, 1);
    take(&tb, det_missing_seen(&b, ms(21), &ev), &ev, 21);
    assert_int_equal(tb.n, 2);
    assert_int_equal(tb.cleared, 1);

    /* No usable period: never raised. */
    cm_channel np = level_channel();
    np.period_s = NAN;
    det_missing_state z = {0};
    tally tz = {0};
    take(&tz, det_missing_seen(&z, ms(0), &ev), &ev, 0);
    take(&tz, det_missing_check(&z, &np, ms(1e6), &ev), &ev, 1e6);
    assert_int_equal(tz.n, 0);
}

/* ---- deviation ------------------------------------------------------------------------------- */

static cm_channel chlorine(void)
{
    return channel("residual_chlorine", "mg/L", 0, 5, 1);
}

/* Feeds n readings of N(mean, sd) from t0 (1 Hz); returns the next time. */
static int dev_noise(det_deviation_state *s, const cm_channel *c, tally *t, int t0, int n,
                     double mean, double sd)
{
    anomaly_event ev;
    for (int i = t0; i < t0 + n; i++)
        take(t, det_deviation_update(s, c, NULL, ms(i), mean + sd * gauss(), &ev), &ev, i);
    return t0 + n;
}

/* A value at z standard deviations from the state's current baseline. */
static double at_z(const det_deviation_state *s, double z)
{
    return s->mean + z * sqrt(s->var);
}

static void test_deviation_raises_once_and_clears_with_hysteresis(void **state)
{
    (void)state;
    cm_channel c = chlorine();
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(3);
    int now = dev_noise(&s, &c, &t, 0, 2000, 0.5, 0.02);
    assert_int_equal(t.n, 0);
    double sigma = sqrt(s.var);
    assert_true(fabs(sigma - 0.02) < 0.004);
    /* A 10-sigma fault: raised at its third reading, then silent. */
    for (int i = 0; i < 300; i++, now++) {
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), 0.5 + 10 * 0.02, &ev), &ev, i);
        if (i < 2)
            assert_int_equal(t.n, 0);
    }
    assert_int_equal(t.n, 1);
    assert_true(t.last_t == 2);
    assert_string_equal(t.last.rule, "deviation");
    assert_string_equal(t.last.family, "deviation");
    assert_non_null(strstr(t.last.evidence, "for 3 readings"));
    assert_true(t.last.limit > 0.5);
    /* Between z_off and z_on: still raised, no clear. */
    for (int i = 0; i < 200; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), at_z(&s, i % 2 ? 3.2 : -4.5), &ev),
             &ev, now);
    assert_int_equal(t.n, 1);
    take(&t, det_deviation_update(&s, &c, NULL, ms(now), at_z(&s, 2.9), &ev), &ev, now);
    now++;
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
    assert_string_equal(t.last.rule, "deviation");
    dev_noise(&s, &c, &t, now, 2000, 0.5, 0.02);
    assert_int_equal(t.n, 2);
}

static void test_deviation_no_chatter_at_boundary(void **state)
{
    (void)state;
    cm_channel c = chlorine();
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(4);
    int now = dev_noise(&s, &c, &t, 0, 1000, 0.5, 0.02);
    /* Around z_on, never three in a row above it: no raise. */
    for (int i = 0; i < 600; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), at_z(&s, i % 3 == 2 ? 5.9 : 6.1),
                                      &ev),
             &ev, now);
    assert_int_equal(t.n, 0);
    for (int i = 0; i < 3; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), at_z(&s, 6.1), &ev), &ev, now);
    assert_int_equal(t.raised, 1);
    /* Around z_off: one clear, and hovering there raises nothing new. */
    for (int i = 0; i < 600; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), at_z(&s, i % 2 ? 3.1 : 2.9), &ev),
             &ev, now);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
}

static void test_deviation_warmup(void **state)
{
    (void)state;
    cm_channel c = chlorine();
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(5);
    int now = dev_noise(&s, &c, &t, 0, 96, 0.5, 0.02);
    for (int i = 0; i < 4; i++, now++) /* readings 97..100, still warming up */
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), 2.0, &ev), &ev, now);
    assert_int_equal(t.n, 0);
    assert_int_equal(s.n, 100);

    /* The same after warm-up raises. */
    det_deviation_state w = {0};
    tally tw = {0};
    rng_seed(5);
    now = dev_noise(&w, &c, &tw, 0, 100, 0.5, 0.02);
    for (int i = 0; i < 3; i++, now++)
        take(&tw, det_deviation_update(&w, &c, NULL, ms(now), 2.0, &ev), &ev, now);
    assert_int_equal(tw.n, 1);
    assert_int_equal(tw.raised, 1);
}

static void test_deviation_baseline_not_polluted(void **state)
{
    (void)state;
    cm_channel c = chlorine();
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(6);
    int now = dev_noise(&s, &c, &t, 0, 1000, 0.5, 0.02);
    double mean = s.mean, var = s.var;
    uint32_t n = s.n;
    /* Two isolated spikes: not absorbed, not raised. */
    for (int i = 0; i < 2; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), 3.0, &ev), &ev, now);
    assert_true(s.mean == mean && s.var == var && s.n == n);
    dev_noise(&s, &c, &t, now, 1, 0.5, 0.0);
    now++;
    mean = s.mean;
    var = s.var;
    n = s.n;
    /* A long fault: the baseline stays where it was and the fault is still raised. */
    for (int i = 0; i < 20000; i++, now++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(now), 1.5 + 0.02 * gauss(), &ev), &ev,
             now);
    assert_int_equal(t.n, 1);
    assert_true(s.mean == mean && s.var == var && s.n == n);
    /* Back to normal: cleared at once. */
    take(&t, det_deviation_update(&s, &c, NULL, ms(now), 0.5, &ev), &ev, now);
    now++;
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
}

static void test_deviation_noisy_normal_no_alarm(void **state)
{
    (void)state;
    cm_channel c = chlorine();
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(8);
    /* Two days at 1 Hz: a diurnal swing of 0.1 mg/L, noise 0.02, rounded to 0.001. */
    for (int i = 0; i < 2 * 86400; i++) {
        double v = 0.6 + 0.1 * sin(6.283185307179586 * i / 86400.0) + 0.02 * gauss();
        take(&t, det_deviation_update(&s, &c, NULL, ms(i), round(v * 1000) / 1000, &ev), &ev, i);
    }
    assert_int_equal(t.n, 0);
}

static void test_deviation_zero_variance_floor_and_garbage(void **state)
{
    (void)state;
    cm_channel c = chlorine(); /* floor 1e-3 x 5 = 0.005 mg/L */
    det_deviation_state s = {0};
    anomaly_event ev;
    tally t = {0};
    for (int i = 0; i < 200; i++)
        take(&t, det_deviation_update(&s, &c, NULL, ms(i), 0.5, &ev), &ev, i);
    assert_true(s.var == 0);
    for (int i = 200; i < 300; i++) /* the last digit of a constant channel: z = 0.2 */
        take(&t, det_deviation_update(&s, &c, NULL, ms(i), i % 2 ? 0.501 : 0.5, &ev), &ev, i);
    assert_int_equal(t.n, 0);
    /* Garbage leaves the state byte for byte as it was. */
    det_deviation_state before;
    memcpy(&before, &s, sizeof s);
    take(&t, det_deviation_update(&s, &c, NULL, ms(300), NAN, &ev), &ev, 300);
    take(&t, det_deviation_update(&s, &c, NULL, ms(300), INFINITY, &ev), &ev, 300);
    take(&t, det_deviation_update(&s, &c, NULL, ms(300), -INFINITY, &ev), &ev, 300);
    take(&t, det_deviation_update(&s, &c, NULL, ms(100), 4.0, &ev), &ev, 300); /* backwards */
    assert_memory_equal(&before, &s, sizeof s);
    for (int i = 300; i < 303; i++) {
        take(&t, det_deviation_update(&s, &c, NULL, ms(i), 0.6, &ev), &ev, i);
        take(&t, det_deviation_update(&s, &c, NULL, ms(i), NAN, &ev), &ev, i);
    }
    assert_int_equal(t.n, 1);
    assert_int_equal(t.raised, 1);
    memcpy(&before, &s, sizeof s);
    take(&t, det_deviation_update(&s, &c, NULL, ms(200), 0.5, &ev), &ev, 303); /* no clear */
    take(&t, det_deviation_update(&s, &c, NULL, ms(303), NAN, &ev), &ev, 303);
    assert_memory_equal(&before, &s, sizeof s);
    assert_int_equal(t.n, 1);

    /* Status channels are not judged. */
    cm_channel pump = channel("run_status", "1", 0, 1, 1);
    det_deviation_state p = {0};
    tally tp = {0};
    for (int i = 0; i < 5000; i++)
        take(&tp, det_deviation_update(&p, &pump, NULL, ms(i), i < 4000 ? 0.0 : 1.0, &ev), &ev,
             i);
    assert_int_equal(tp.n, 0);
}

/* ---- tank balance ---------------------------------------------------------------------------- */

/* A tank of 100 m2 at 1 Hz: the pump fills at 80 L/s for 20 min of every 40, demand is 30 L/s
 * +- 10 over a 30-minute cycle, plus an unmetered leak (L/s) when told. The level integrates the
 * true flows exactly; meters add noise when sd > 0. */
typedef struct tank {
    double level;
    double t;
} tank;

static void tank_flows(double t, double *in, double *out)
{
    *in = fmod(t, 2400.0) < 1200.0 ? 80.0 : 0.0;
    *out = 30.0 + 10.0 * sin(6.283185307179586 * t / 1800.0);
}

/* Advances one second (fine substeps) and feeds the detector; returns the events written. */
static int tank_step(tank *k, det_balance_state *s, const det_balance_params *p, double leak_ls,
                     double sd, anomaly_event *ev)
{
    for (int j = 0; j < 10; j++) {
        double in, out;
        tank_flows(k->t + 0.05 + j * 0.1, &in, &out);
        k->level += (in - out - leak_ls) / 1000.0 / p->area_m2 * 0.1;
    }
    k->t += 1.0;
    double in, out;
    tank_flows(k->t, &in, &out);
    return det_balance_update(s, p, ms(k->t), k->level + sd * 0.005 * gauss(),
                              in + sd * 0.5 * gauss(), out + sd * 0.5 * gauss(), ev);
}

static void test_balance_noisy_normal_and_leak(void **state)
{
    (void)state;
    det_balance_params p;
    det_balance_params_default(&p, 100.0);
    det_balance_state s = {0};
    tank k = {3.0, 0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(9);
    for (int i = 0; i < 4 * 3600; i++) /* four hours of normal cycling */
        take(&t, tank_step(&k, &s, &p, 0, 1.0, &ev), &ev, k.t);
    assert_int_equal(t.n, 0);
    for (int i = 0; i < 1800; i++) /* a 25 L/s leak: 0.075 m per horizon */
        take(&t, tank_step(&k, &s, &p, 25.0, 1.0, &ev), &ev, k.t);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.raised, 1);
    assert_string_equal(t.last.rule, "tank_balance");
    assert_string_equal(t.last.family, "balance");
    assert_true(t.last_t > 4 * 3600 && t.last_t <= 4 * 3600 + 330);
    assert_non_null(strstr(t.last.evidence, "mismatch"));
    for (int i = 0; i < 1800; i++) /* repaired */
        take(&t, tank_step(&k, &s, &p, 0, 1.0, &ev), &ev, k.t);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cleared, 1);
    assert_true(t.last_t > 4 * 3600 + 1800 && t.last_t <= 4 * 3600 + 1800 + 330);
}

static void test_balance_hysteresis_no_chatter(void **state)
{
    (void)state;
    det_balance_params p;
    det_balance_params_default(&p, 100.0);
    det_balance_state s = {0};
    anomaly_event ev;
    tally t = {0};
    /* No flows, the level drifts: the mismatch over 300 s is drift x 300 (tol 0.05 m). */
    double level = 2.0;
    int now = 0;
    const double drift[] = {0.04, 0.06, 0.04, 0.06, 0.03, 0.06, 0.02, 0.045, 0.06};
    const int expect_n[] = {0, 1, 1, 1, 1, 1, 2, 2, 3};
    for (size_t seg = 0; seg < sizeof drift / sizeof drift[0]; seg++) {
        for (int i = 0; i < 1200; i++, now++) {
            level -= drift[seg] / 300.0;
            take(&t, det_balance_update(&s, &p, ms(now), level, 0, 0, &ev), &ev, now);
        }
        assert_int_equal(t.n, expect_n[seg]);
    }
    assert_int_equal(t.raised, 2);
    assert_int_equal(t.cleared, 1);
}

static void test_balance_garbage_backwards_and_gaps(void **state)
{
    (void)state;
    det_balance_params p;
    det_balance_params_default(&p, 100.0);
    anomaly_event ev;
    /* The same scenario with and without garbage interleaved ends in the same state. */
    det_balance_state clean = {0}, dirty = {0};
    tank kc = {3.0, 0}, kd = {3.0, 0};
    tally tc = {0}, td = {0};
    for (int i = 0; i < 3600; i++) {
        double leak = i > 1800 ? 40.0 : 0.0;
        take(&tc, tank_step(&kc, &clean, &p, leak, 0, &ev), &ev, kc.t);
        take(&td, tank_step(&kd, &dirty, &p, leak, 0, &ev), &ev, kd.t);
        uint64_t at = ms(kd.t + 0.5);
        take(&td, det_balance_update(&dirty, &p, at, NAN, 10, 10, &ev), &ev, kd.t);
        take(&td, det_balance_update(&dirty, &p, at, 3.0, INFINITY, 10, &ev), &ev, kd.t);
        take(&td, det_balance_update(&dirty, &p, at, 3.0, 10, -INFINITY, &ev), &ev, kd.t);
        take(&td, det_balance_update(&dirty, &p, ms(kd.t > 100 ? kd.t - 100 : 0), 9.0, 0, 500, &ev),
             &ev, kd.t);
    }
    assert_int_equal(tc.n, 1);
    assert_int_equal(td.n, tc.n);
    assert_memory_equal(&clean, &dirty, sizeof clean);

    /* Across a gap longer than the horizon nothing is integrated: a refill seen only as a level
     * jump is no mismatch. Across a shorter gap the jump is judged. */
    for (int gap = 200; gap <= 400; gap += 200) {
        det_balance_state s = {0};
        tally t = {0};
        int now = 0;
        for (; now < 1000; now++)
            take(&t, det_balance_update(&s, &p, ms(now), 2.0, 0, 0, &ev), &ev, now);
        now += gap;
        for (int i = 0; i < 1000; i++, now++)
            take(&t, det_balance_update(&s, &p, ms(now), 3.0, 0, 0, &ev), &ev, now);
        assert_int_equal(t.n, gap < 300 ? 2 : 0); /* raised, then cleared a horizon later */
    }
}

/* ---- pumps vs flow --------------------------------------------------------------------------- */

static void test_pumps_running(void **state)
{
    (void)state;
    const double st[] = {1.0, 0.0, 0.5, 0.49, NAN, INFINITY, 1.0};
    assert_int_equal(det_pumps_running(st, 7), 3);
    assert_int_equal(det_pumps_running(st, 0), 0);
}

/* Two pumps alternating in 10-minute runs with 10-minute pauses; flow ramps over 10 s. */
static double station_flow(int t, int *running)
{
    int phase = t % 1200;
    int on = phase < 600;
    *running = on;
    double ramp = on ? (phase < 10 ? phase / 10.0 : 1.0) : (phase < 610 ? (610 - phase) / 10.0 : 0);
    return 60.0 * ramp;
}

static void test_pumpflow_noisy_normal_and_faults(void **state)
{
    (void)state;
    det_pumpflow_params p;
    det_pumpflow_params_default(&p, 250.0); /* min_flow 5 L/s, grace 30 s */
    assert_true(p.min_flow == 5.0 && p.grace_s == 30);
    det_pumpflow_state s = {0};
    anomaly_event ev;
    tally t = {0};
    rng_seed(10);
    int now = 0;
    for (; now < 4 * 3600; now++) {
        int r;
        double f = station_flow(now, &r) + 0.8 * gauss();
        take(&t, det_pumpflow_update(&s, &p, ms(now), r, f, &ev), &ev, now);
    }
    assert_int_equal(t.n, 0);
    /* Pump on, no flow (dry run, closed valve): raised after more than 30 s, once. */
    int start = now;
    for (; now < start + 300; now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 1, 0.8 * gauss(), &ev), &ev, now);
    assert_int_equal(t.n, 1);
    assert_true(t.last_t == start + 31);
    assert_string_equal(t.last.rule, "pump_flow");
    assert_string_equal(t.last.family, "pump_flow");
    assert_non_null(strstr(t.last.evidence, "running but flow"));
    /* The pump stops, flow appears (a meter or status fault): a new raise, not a clear. */
    start = now;
    for (; now < start + 300; now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 0, 40 + 0.8 * gauss(), &ev), &ev, now);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.raised, 2);
    assert_true(t.last_t == start + 31);
    assert_non_null(strstr(t.last.evidence, "no pump running"));
    /* Agreement for more than 30 s clears. */
    start = now;
    for (; now < start + 300; now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 2, 90 + 0.8 * gauss(), &ev), &ev, now);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.cleared, 1);
    assert_true(t.last_t == start + 31);
}

static void test_pumpflow_no_chatter_at_boundary(void **state)
{
    (void)state;
    det_pumpflow_params p = {5.0, 30.0};
    det_pumpflow_state s = {0};
    anomaly_event ev;
    tally t = {0};
    int now = 0;
    /* Pump on, flow hovering at min_flow: the mismatch never lasts 30 s. */
    for (; now < 3600; now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 1, now % 20 == 0 ? 5.1 : 4.9, &ev), &ev,
             now);
    assert_int_equal(t.n, 0);
    for (int i = 0; i < 60; i++, now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 1, 0.0, &ev), &ev, now);
    assert_int_equal(t.raised, 1);
    /* Raised, hovering: agreement never lasts 30 s either, so no clear. */
    for (int i = 0; i < 3600; i++, now++)
        take(&t, det_pumpflow_update(&s, &p, ms(now), 1, i % 20 == 0 ? 4.9 : 5.1, &ev), &ev,
             now);
    assert_int_equal(t.n, 1);
}

static void test_pumpflow_garbage_backwards_and_gaps(void **state)
{
    (void)state;
    det_pumpflow_params p = {5.0, 30.0};
    det_pumpflow_state s = {0};
    anomaly_event ev;
    tally t = {0};
    for (int now = 0; now < 31; now++) {
        take(&t, det_pumpflow_update(&s, &p, ms(now), 1, 0.0, &ev), &ev, now);
        det_pumpflow_state before;
        memcpy(&before, &s, sizeof s);
        take(&t, det_pumpflow_update(&s, &p, ms(now + 0.5), 1, NAN, &ev), &ev, now);
        take(&t, det_pumpflow_update(&s, &p, ms(now + 0.5), 1, INFINITY, &ev), &ev, now);
        take(&t, det_pumpflow_update(&s, &p, ms(now + 0.5), -1, 50, &ev), &ev, now);
        if (now > 5)
            take(&t, det_pumpflow_update(&s, &p, ms(now - 5), 1, 50, &ev), &ev, now);
        assert_memory_equal(&before, &s, sizeof s);
    }
    assert_int_equal(t.n, 0);
    take(&t, det_pumpflow_update(&s, &p, ms(31), 1, 0.0, &ev), &ev, 31);
    assert_int_equal(t.raised, 1);

    /* A gap longer than grace restarts the timer: no persistence is assumed across it. */
    det_pumpflow_state g = {0};
    tally tg = {0};
    take(&tg, det_pumpflow_update(&g, &p, ms(0), 1, 0.0, &ev), &ev, 0);
    for (int now = 100; now <= 130; now++)
        take(&tg, det_pumpflow_update(&g, &p, ms(now), 1, 0.0, &ev), &ev, now);
    assert_int_equal(tg.n, 0);
    take(&tg, det_pumpflow_update(&g, &p, ms(131), 1, 0.0, &ev), &ev, 131);
    assert_int_equal(tg.raised, 1);

    /* Unusable parameters: inert. */
    det_pumpflow_params bad = {NAN, 30.0};
    det_pumpflow_state b = {0};
    tally tb = {0};
    for (int now = 0; now < 100; now++)
        take(&tb, det_pumpflow_update(&b, &bad, ms(now), 1, 0.0, &ev), &ev, now);
    assert_int_equal(tb.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_channels),
        cmocka_unit_test(test_stuck_defaults),
        cmocka_unit_test(test_stuck_raises_once_and_clears),
        cmocka_unit_test(test_stuck_no_chatter_at_boundary),
        cmocka_unit_test(test_stuck_status_channel_exempt),
        cmocka_unit_test(test_stuck_noisy_normal_no_alarm),
        cmocka_unit_test(test_stuck_ignores_nan_backwards_and_gaps),
        cmocka_unit_test(test_missing_limit),
        cmocka_unit_test(test_missing_not_before_first_reading),
        cmocka_unit_test(test_missing_after_an_announced_stop),
        cmocka_unit_test(test_missing_raises_once_and_clears),
        cmocka_unit_test(test_missing_no_chatter_at_boundary),
        cmocka_unit_test(test_missing_jittery_normal_and_backwards),
        cmocka_unit_test(test_deviation_raises_once_and_clears_with_hysteresis),
        cmocka_unit_test(test_deviation_no_chatter_at_boundary),
        cmocka_unit_test(test_deviation_warmup),
        cmocka_unit_test(test_deviation_baseline_not_polluted),
        cmocka_unit_test(test_deviation_noisy_normal_no_alarm),
        cmocka_unit_test(test_deviation_zero_variance_floor_and_garbage),
        cmocka_unit_test(test_balance_noisy_normal_and_leak),
        cmocka_unit_test(test_balance_hysteresis_no_chatter),
        cmocka_unit_test(test_balance_garbage_backwards_and_gaps),
        cmocka_unit_test(test_pumps_running),
        cmocka_unit_test(test_pumpflow_noisy_normal_and_faults),
        cmocka_unit_test(test_pumpflow_no_chatter_at_boundary),
        cmocka_unit_test(test_pumpflow_garbage_backwards_and_gaps),
    };
    return cmocka_run_group_tests_name("detectors", tests, NULL, NULL);
}
