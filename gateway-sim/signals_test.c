/* signals_test: unit tests of the simulated process values (gateway-sim/signals.c): ranges over
 * simulated days, the shape of the demand curve, the tank mass balance, pump duty cycling,
 * determinism for a seed, the actuators (pump overrides, dosing setpoint, inlet valve) and the
 * pumping station's tank level. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "signals.h"

#define T0_MS 1700006400000ull /* 2023-11-15 00:00:00 UTC */
#define STEP_MS 10000ull
#define DAY_STEPS (86400000ull / STEP_MS)
#define PMP_TEST_LOW_M 1.0 /* well below where the automatic control would start a pump */

static int channel_index(sig_kind k, const char *name)
{
    const sig_channel *ch;
    size_t n = sig_channels(k, &ch);
    for (size_t i = 0; i < n; i++)
        if (strcmp(ch[i].name, name) == 0)
            return (int)i;
    return -1;
}

typedef struct range {
    const char *name;
    double lo, hi;
} range;

static void check_ranges(sig_kind k, const range *r, size_t nr, const char *gw)
{
    sig_state s;
    sig_init(&s, k, sig_site_seed(1, gw));
    int idx[SIG_MAX_CHANNELS];
    for (size_t j = 0; j < nr; j++) {
        idx[j] = channel_index(k, r[j].name);
        assert_true(idx[j] >= 0);
    }
    for (uint64_t i = 0; i <= 3 * DAY_STEPS; i++) {
        sig_step(&s, T0_MS + i * STEP_MS);
        for (size_t j = 0; j < nr; j++) {
            double v = s.v[idx[j]];
            if (!(v >= r[j].lo && v <= r[j].hi)) {
                print_error("%s %s step %llu: %s = %f outside [%f, %f]\n", sig_kind_name(k), gw,
                            (unsigned long long)i, r[j].name, v, r[j].lo, r[j].hi);
                fail();
            }
        }
    }
}

static void test_channels(void **state)
{
    (void)state;
    const sig_channel *ch;
    assert_int_equal(sig_channels(SIG_TREATMENT, &ch), 8);
    assert_string_equal(ch[0].name, "raw_flow");
    assert_string_equal(ch[7].name, "dosing_rate");
    assert_string_equal(ch[7].unit, "L/h");
    assert_int_equal(sig_channels(SIG_RESERVOIR, &ch), 4);
    assert_string_equal(ch[0].name, "level");
    assert_string_equal(ch[0].unit, "m");
    assert_int_equal(sig_channels(SIG_PUMPING, &ch), 7);
    assert_string_equal(ch[4].name, "discharge_pressure");
    assert_string_equal(ch[4].unit, "bar");
    assert_string_equal(ch[6].name, "tank_level");
    assert_string_equal(ch[6].unit, "m");
    sig_kind k;
    assert_int_equal(sig_kind_parse("pumping", &k), 0);
    assert_int_equal(k, SIG_PUMPING);
    assert_int_equal(sig_kind_parse("Pumping", &k), -1);
    assert_int_equal(sig_kind_parse(NULL, &k), -1);
    assert_string_equal(sig_kind_name(SIG_RESERVOIR), "reservoir");
}

static void test_ranges(void **state)
{
    (void)state;
    static const range trt[] = {
        {"raw_flow", 0, 250},        {"treated_flow", 0, 250}, {"raw_turbidity", 1, 20},
        {"treated_turbidity", 0.05, 0.5}, {"chlorine", 0.4, 1.2}, {"ph", 6.5, 8.5},
        {"clearwell_level", 0.3, SIG_CLEARWELL_HEIGHT_M}, {"dosing_rate", 0, 20},
    };
    static const range res[] = {
        {"level", 0.5, 9.5}, {"inflow", 0, 250}, {"outflow", 0, 250}, {"chlorine", 0.2, 2.0},
    };
    static const range pmp[] = {
        {"pump1_status", 0, 1},       {"pump2_status", 0, 1}, {"flow", 0, 250},
        {"suction_pressure", 0.5, 6}, {"discharge_pressure", 0.5, 6}, {"power", 0, 200},
        {"tank_level", 0, SIG_PUMPING_TANK_HEIGHT_M},
    };
    /* several sites each: phase and size differ per gateway id */
    const char *gws[] = {"gw-0001", "gw-0002", "gw-0417", "x"};
    for (size_t g = 0; g < 4; g++) {
        check_ranges(SIG_TREATMENT, trt, sizeof trt / sizeof trt[0], gws[g]);
        check_ranges(SIG_RESERVOIR, res, sizeof res / sizeof res[0], gws[g]);
        check_ranges(SIG_PUMPING, pmp, sizeof pmp / sizeof pmp[0], gws[g]);
    }
}

static void test_demand_peaks(void **state)
{
    (void)state;
    double best_am = 0, best_pm = 0, h_am = -1, h_pm = -1, night = 1e9;
    for (int i = 0; i < 24 * 60; i++) {
        double h = i / 60.0, d = sig_demand(h);
        if (h < 12 && d > best_am)
            best_am = d, h_am = h;
        if (h >= 12 && d > best_pm)
            best_pm = d, h_pm = h;
        if (h >= 1 && h <= 4 && d < night)
            night = d;
    }
    assert_true(h_am >= 6.0 && h_am <= 8.5);
    assert_true(h_pm >= 18.0 && h_pm <= 20.5);
    assert_true(night < 0.45);
    assert_true(best_am > 2.0 * night && best_pm > 2.0 * night);
    /* midday is a valley between the two peaks */
    assert_true(sig_demand(13.0) < best_am && sig_demand(13.0) < best_pm);
    /* periodic */
    assert_true(fabs(sig_demand(7.0) - sig_demand(31.0)) < 1e-12);
    assert_true(fabs(sig_demand(-5.0) - sig_demand(19.0)) < 1e-12);
}

/* The flows the site reports follow demand: the outflow of a reservoir is higher at the peaks. */
static void test_flows_follow_demand(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_RESERVOIR, sig_site_seed(7, "gw-0003"));
    int out = channel_index(SIG_RESERVOIR, "outflow");
    double sum[24] = {0};
    int cnt[24] = {0};
    for (uint64_t i = 0; i < 2 * DAY_STEPS; i++) {
        uint64_t t = T0_MS + i * STEP_MS;
        sig_step(&s, t);
        int h = (int)sig_local_hour(&s, t);
        sum[h] += s.v[out];
        cnt[h]++;
    }
    double night = sum[3] / cnt[3], morning = sum[7] / cnt[7], evening = sum[19] / cnt[19];
    assert_true(morning > 2.0 * night);
    assert_true(evening > 2.0 * night);
}

/* Level change equals the integral of the reported inflow minus outflow over the tank area. */
static void test_reservoir_mass_balance(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_RESERVOIR, sig_site_seed(1, "gw-0002"));
    int lv = channel_index(SIG_RESERVOIR, "level"), in = channel_index(SIG_RESERVOIR, "inflow"),
        out = channel_index(SIG_RESERVOIR, "outflow");
    sig_step(&s, T0_MS);
    double level0 = s.level_m, prev_net = s.v[in] - s.v[out], vol_m3 = 0;
    double min_level = 1e9, max_level = -1e9;
    for (uint64_t i = 1; i <= DAY_STEPS; i++) {
        sig_step(&s, T0_MS + i * STEP_MS);
        double net = s.v[in] - s.v[out];
        vol_m3 += 0.5 * (net + prev_net) / 1000.0 * (double)STEP_MS / 1000.0;
        prev_net = net;
        if (s.v[lv] < min_level)
            min_level = s.v[lv];
        if (s.v[lv] > max_level)
            max_level = s.v[lv];
    }
    double predicted = level0 + vol_m3 / SIG_RESERVOIR_AREA_M2;
    assert_true(fabs(predicted - s.level_m) < 0.05);
    assert_true(fabs(s.v[lv] - s.level_m) < 0.05); /* reported level is the true one plus noise */
    /* the feed pump's hysteresis keeps the tank cycling inside its band */
    assert_true(s.starts >= 1);
    assert_true(max_level - min_level > 2.0);
    assert_true(min_level > 3.5 && max_level < 9.0);
}

/* The clearwell of a treatment plant also integrates production minus distribution. */
static void test_clearwell_integrates(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_TREATMENT, sig_site_seed(3, "gw-0009"));
    sig_step(&s, T0_MS);
    double level0 = s.level_m, vol = 0;
    for (uint64_t i = 1; i <= DAY_STEPS / 2; i++) {
        double before_in = s.inflow_ls, before_out = s.outflow_ls;
        sig_step(&s, T0_MS + i * STEP_MS);
        vol += 0.5 * ((before_in - before_out) + (s.inflow_ls - s.outflow_ls)) / 1000.0 *
               (double)STEP_MS / 1000.0;
    }
    assert_true(fabs(level0 + vol / SIG_CLEARWELL_AREA_M2 - s.level_m) < 0.02);
}

/* Pumps cycle with hysteresis, take turns leading, pressures and power follow the pump state. */
static void test_pumping_duty_cycle(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_PUMPING, sig_site_seed(1, "gw-0005"));
    int p1 = channel_index(SIG_PUMPING, "pump1_status"),
        p2 = channel_index(SIG_PUMPING, "pump2_status"), flow = channel_index(SIG_PUMPING, "flow"),
        dis = channel_index(SIG_PUMPING, "discharge_pressure"),
        pw = channel_index(SIG_PUMPING, "power");
    uint64_t on1 = 0, on2 = 0, both = 0, off = 0;
    double dis_off = 0, dis_on = 0, pw_off = 0, pw_on = 0;
    int n_off = 0, n_on = 0;
    for (uint64_t i = 0; i < 2 * DAY_STEPS; i++) {
        sig_step(&s, T0_MS + i * STEP_MS);
        int a = s.v[p1] > 0.5, b = s.v[p2] > 0.5;
        assert_true(s.v[p1] == 0.0 || s.v[p1] == 1.0);
        on1 += a;
        on2 += b;
        both += a && b;
        if (!a && !b) {
            off++;
            if (s.v[flow] < 0.5) { /* settled: flow has run down */
                dis_off += s.v[dis];
                pw_off += s.v[pw];
                n_off++;
            }
        } else if (s.v[flow] > 50) {
            dis_on += s.v[dis];
            pw_on += s.v[pw];
            n_on++;
        }
    }
    assert_true(s.starts >= 4);
    assert_true(on1 > 0 && on2 > 0);  /* duty rotation: both pumps run */
    assert_true(both > 0);             /* the assist pump helps at peak demand */
    assert_true(off > 0);              /* and the station rests when the tank is full */
    assert_true(n_off > 0 && n_on > 0);
    assert_true(dis_on / n_on > dis_off / n_off + 0.5);
    assert_true(pw_on / n_on > 10.0 * (pw_off / n_off));
}

static void run_site(sig_kind k, uint64_t seed, double *out, size_t n_steps)
{
    sig_state s;
    sig_init(&s, k, seed);
    const sig_channel *ch;
    size_t nch = sig_channels(k, &ch);
    for (size_t i = 0; i < n_steps; i++) {
        sig_step(&s, T0_MS + i * 1234);
        memcpy(out + i * nch, s.v, nch * sizeof(double));
    }
}

static void test_determinism(void **state)
{
    (void)state;
    enum { N = 5000 };
    static double a[N * SIG_MAX_CHANNELS], b[N * SIG_MAX_CHANNELS];
    for (int k = 0; k < SIG__KINDS; k++) {
        const sig_channel *ch;
        size_t nch = sig_channels((sig_kind)k, &ch);
        run_site((sig_kind)k, sig_site_seed(42, "gw-0007"), a, N);
        run_site((sig_kind)k, sig_site_seed(42, "gw-0007"), b, N);
        assert_memory_equal(a, b, N * nch * sizeof(double));
        run_site((sig_kind)k, sig_site_seed(43, "gw-0007"), b, N);
        assert_memory_not_equal(a, b, N * nch * sizeof(double));
        run_site((sig_kind)k, sig_site_seed(42, "gw-0008"), b, N);
        assert_memory_not_equal(a, b, N * nch * sizeof(double));
    }
    /* the site seed depends on both the run seed and the gateway id */
    assert_true(sig_site_seed(1, "gw-0001") != sig_site_seed(2, "gw-0001"));
    assert_true(sig_site_seed(1, "gw-0001") != sig_site_seed(1, "gw-0002"));
}

/* Time going backwards or standing still only re-samples noise; a long gap does not hang. */
static void test_time_edges(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_RESERVOIR, 5);
    sig_step(&s, T0_MS);
    double level = s.level_m;
    sig_step(&s, T0_MS - 60000);
    sig_step(&s, T0_MS);
    assert_true(s.level_m == level);
    assert_true(s.t_ms == T0_MS);
    sig_step(&s, T0_MS + 30ull * 86400000ull); /* a month later: restarts there */
    assert_true(s.t_ms == T0_MS + 30ull * 86400000ull);
    assert_true(s.v[0] >= 0.5 && s.v[0] <= 9.5);
}

/* Measurement noise is correlated: readings 10 ms apart differ far less than readings minutes
 * apart, so a burst of batches never suggests an impossible rate of change. */
static void test_noise_correlated(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_RESERVOIR, sig_site_seed(1, "gw-0011"));
    int lv = channel_index(SIG_RESERVOIR, "level");
    double close = 0, far = 0;
    const int n = 2000;
    uint64_t t = T0_MS;
    for (int i = 0; i < n; i++) {
        sig_step(&s, t);
        double a = s.v[lv];
        sig_step(&s, t + 10);
        close += fabs(s.v[lv] - a);
        t += 10;
        double b = s.v[lv] - s.level_m;
        t += 300000; /* five minutes later the error is a fresh one */
        sig_step(&s, t);
        far += fabs((s.v[lv] - s.level_m) - b);
    }
    close /= n;
    far /= n;
    assert_true(close < 0.001);           /* 10 ms: well under a millimetre */
    assert_true(far > 0.002 && far < 0.02); /* minutes: about the 5 mm noise */
    assert_true(far > 10.0 * close);
}

static void test_random(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_PUMPING, 99);
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double u = sig_uniform(&s);
        assert_true(u >= 0.0 && u < 1.0);
        double g = sig_gauss(&s);
        sum += g;
        sq += g * g;
    }
    assert_true(fabs(sum / n) < 0.02);
    assert_true(fabs(sq / n - 1.0) < 0.02);
}

/* ------------------------------------------------------------------ actuators */

/* Index of channel name of the state's kind (asserted to exist). */
static int ch(const sig_state *s, const char *name)
{
    int i = channel_index(s->kind, name);
    assert_true(i >= 0);
    return i;
}

/* Commands actuator name of s's kind to value; returns the value in force. */
static double actuate(sig_state *s, const char *name, double value)
{
    int a = sig_actuator_find(s->kind, name);
    assert_true(a >= 0);
    return sig_actuate(s, (size_t)a, value);
}

static void test_actuator_table(void **state)
{
    (void)state;
    const sig_actuator *a;
    assert_int_equal(sig_actuators(SIG_PUMPING, &a), 2);
    assert_string_equal(a[0].name, "pump1");
    assert_string_equal(a[1].name, "pump2");
    for (int i = 0; i < 2; i++) {
        assert_string_equal(a[i].unit, "1");
        assert_true(a[i].lo == 0.0 && a[i].hi == 1.0);
    }
    assert_int_equal(sig_actuators(SIG_TREATMENT, &a), 1);
    assert_string_equal(a[0].name, "dosing");
    assert_string_equal(a[0].unit, "mg/L");
    assert_true(a[0].lo == 0.0 && a[0].hi == 4.0);
    assert_int_equal(sig_actuators(SIG_RESERVOIR, &a), 1);
    assert_string_equal(a[0].name, "inlet_valve");
    assert_string_equal(a[0].unit, "%");
    assert_true(a[0].lo == 0.0 && a[0].hi == 100.0);
    assert_int_equal(sig_actuator_find(SIG_PUMPING, "pump2"), 1);
    assert_int_equal(sig_actuator_find(SIG_PUMPING, "dosing"), -1);
    assert_int_equal(sig_actuator_find(SIG_RESERVOIR, NULL), -1);
}

/* Both pumps commanded off stay off whatever the tank does; flow, pressure and power follow. */
static void test_pumps_commanded_off(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_PUMPING, sig_site_seed(1, "gw-0005"));
    int p1 = ch(&s, "pump1_status"), p2 = ch(&s, "pump2_status"), flow = ch(&s, "flow"),
        dis = ch(&s, "discharge_pressure"), pw = ch(&s, "power"), tank = ch(&s, "tank_level");
    uint64_t t = T0_MS;
    for (int i = 0; i < 720; i++, t += STEP_MS) /* two hours of automatic control */
        sig_step(&s, t);
    assert_true(actuate(&s, "pump1", 0.0) == 0.0);
    assert_true(actuate(&s, "pump2", 0.2) == 0.0); /* below 0.5 means stop */
    uint32_t starts = s.starts;
    double min_tank = 1e9;
    for (uint64_t i = 0; i < DAY_STEPS; i++, t += STEP_MS) {
        sig_step(&s, t);
        assert_true(s.v[p1] == 0.0 && s.v[p2] == 0.0);
        assert_true(s.v[tank] >= 0.0 && s.v[tank] <= SIG_PUMPING_TANK_HEIGHT_M);
        if (i > 30) { /* the flow has run down after five minutes */
            assert_true(s.v[flow] == 0.0);
            assert_true(fabs(s.v[pw] - 0.3) < 0.1); /* standby draw, measured with noise */
            assert_true(s.v[dis] < 3.0);
        }
        if (s.v[tank] < min_tank)
            min_tank = s.v[tank];
    }
    assert_int_equal(s.starts, starts);   /* the automatic control started nothing */
    assert_true(min_tank < PMP_TEST_LOW_M); /* the tank ran down without a pump */
}

/* A pump commanded on keeps running past the level where the automatic control stops; the tank
 * fills to its overflow and no higher; pump2 commanded off never starts. Then pump1 commanded
 * off stops for good. */
static void test_pump_commanded_on(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_PUMPING, sig_site_seed(2, "gw-0006"));
    int p1 = ch(&s, "pump1_status"), p2 = ch(&s, "pump2_status"), flow = ch(&s, "flow"),
        pw = ch(&s, "power"), tank = ch(&s, "tank_level");
    uint64_t t = T0_MS;
    sig_step(&s, t);
    assert_true(actuate(&s, "pump1", 1.0) == 1.0);
    assert_true(actuate(&s, "pump2", 0.0) == 0.0);
    double max_tank = 0.0;
    for (uint64_t i = 0; i < DAY_STEPS; i++) {
        t += STEP_MS;
        sig_step(&s, t);
        assert_true(s.v[p1] == 1.0 && s.v[p2] == 0.0);
        assert_true(s.v[tank] >= 0.0 && s.v[tank] <= SIG_PUMPING_TANK_HEIGHT_M);
        assert_true(s.level_m <= SIG_PUMPING_TANK_HEIGHT_M);
        if (i > 30) {
            assert_true(s.v[flow] > 50.0 && s.v[flow] < 150.0); /* one pump's flow */
            assert_true(s.v[pw] > 5.0);
        }
        if (s.v[tank] > max_tank)
            max_tank = s.v[tank];
    }
    assert_true(max_tank > SIG_PUMPING_TANK_HEIGHT_M - 0.1); /* it ran on to the overflow */
    assert_true(actuate(&s, "pump1", 0.0) == 0.0);
    for (uint64_t i = 0; i < DAY_STEPS / 2; i++) {
        t += STEP_MS;
        sig_step(&s, t);
        assert_true(s.v[p1] == 0.0 && s.v[p2] == 0.0);
    }
    assert_true(s.v[flow] == 0.0);
}

/* With one pump commanded off, the other still runs under automatic control and cycles. */
static void test_other_pump_stays_automatic(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_PUMPING, sig_site_seed(1, "gw-0005"));
    int p1 = ch(&s, "pump1_status"), p2 = ch(&s, "pump2_status"), tank = ch(&s, "tank_level");
    uint64_t t = T0_MS;
    sig_step(&s, t);
    actuate(&s, "pump1", 0.0);
    uint64_t on2 = 0, off2 = 0;
    uint32_t starts = s.starts;
    for (uint64_t i = 0; i < 2 * DAY_STEPS; i++) {
        t += STEP_MS;
        sig_step(&s, t);
        assert_true(s.v[p1] == 0.0);
        assert_true(s.v[tank] >= 0.0 && s.v[tank] <= SIG_PUMPING_TANK_HEIGHT_M);
        on2 += s.v[p2] == 1.0;
        off2 += s.v[p2] == 0.0;
    }
    assert_true(on2 > 0 && off2 > 0);
    assert_true(s.starts >= starts + 2);
}

/* The reported tank level is the modelled one plus small noise, cycles under automatic control,
 * and stays within 0..6 m. */
static void test_tank_level(void **state)
{
    (void)state;
    const char *gws[] = {"gw-0001", "gw-0005", "gw-0417", "x"};
    for (size_t g = 0; g < 4; g++) {
        sig_state s;
        sig_init(&s, SIG_PUMPING, sig_site_seed(3, gws[g]));
        int tank = ch(&s, "tank_level");
        double lo = 1e9, hi = -1e9;
        for (uint64_t i = 0; i < 2 * DAY_STEPS; i++) {
            sig_step(&s, T0_MS + i * STEP_MS);
            double v = s.v[tank];
            assert_true(v >= 0.0 && v <= SIG_PUMPING_TANK_HEIGHT_M);
            assert_true(fabs(v - s.level_m) < 0.05);
            lo = fmin(lo, v);
            hi = fmax(hi, v);
        }
        assert_true(hi - lo > 1.5);
        assert_true(hi < SIG_PUMPING_TANK_HEIGHT_M - 0.5); /* automatic control stops in time */
    }
}

/* The dosing setpoint drives the hypochlorite flow (dosing_rate, L/h, proportional to the
 * production flow) and, through the contact tank, the residual chlorine. */
static void test_dosing_setpoint(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_TREATMENT, sig_site_seed(1, "gw-0009"));
    int dos = ch(&s, "dosing_rate"), cl = ch(&s, "chlorine"), q = ch(&s, "treated_flow");
    uint64_t t = T0_MS;
    for (int i = 0; i < 720; i++, t += STEP_MS)
        sig_step(&s, t);
    /* automatic: about 1 mg/L residual, dose = residual + demand */
    double auto_dose = sig_actuator_value(&s, 0);
    assert_true(auto_dose > 1.4 && auto_dose < 1.8);
    assert_true(s.v[cl] > 0.8 && s.v[cl] < 1.2);

    assert_true(actuate(&s, "dosing", 3.0) == 3.0);
    assert_true(sig_actuator_value(&s, 0) == 3.0);
    double prev_cl = s.v[cl];
    for (int i = 0; i < 540; i++, t += STEP_MS) { /* 90 min: six contact-tank time constants */
        sig_step(&s, t);
        assert_true(fabs(s.v[cl] - prev_cl) < 0.1); /* no step change: the residual ramps */
        prev_cl = s.v[cl];
    }
    double ratio = s.v[dos] / s.v[q]; /* L/h per L/s of production */
    assert_true(fabs(ratio - 3600.0 * 3.0 / 125000.0) < 0.005);
    assert_true(fabs(s.v[cl] - 2.4) < 0.1);
    assert_true(sig_actuator_value(&s, 0) == 3.0); /* stays in force */

    /* the highest safe dose stays inside the analyser's span */
    actuate(&s, "dosing", 4.0);
    for (int i = 0; i < 540; i++, t += STEP_MS) {
        sig_step(&s, t);
        assert_true(s.v[cl] >= 0.0 && s.v[cl] <= 5.0);
        assert_true(s.v[dos] >= 0.0 && s.v[dos] <= 50.0);
    }
    assert_true(fabs(s.v[cl] - 3.4) < 0.1);

    /* dosing stopped: nothing pumped, the residual decays to nothing */
    actuate(&s, "dosing", 0.0);
    for (int i = 0; i < 1080; i++, t += STEP_MS)
        sig_step(&s, t);
    assert_true(s.v[dos] == 0.0);
    assert_true(s.v[cl] < 0.1);
}

/* The inlet valve scales the feed into the reservoir; closed, the tank only drains. */
static void test_inlet_valve(void **state)
{
    (void)state;
    sig_state s;
    sig_init(&s, SIG_RESERVOIR, sig_site_seed(1, "gw-0002"));
    int in = ch(&s, "inflow"), lv = ch(&s, "level");
    assert_true(sig_actuator_value(&s, 0) == 100.0); /* fully open until commanded */
    uint64_t t = T0_MS;
    sig_step(&s, t);
    assert_true(actuate(&s, "inlet_valve", 50.0) == 50.0);
    double full = 150.0 * s.scale; /* the feed pump's flow at this site */
    int n_on = 0;
    for (uint64_t i = 0; i < DAY_STEPS; i++) {
        t += STEP_MS;
        sig_step(&s, t);
        if (i > 30) /* the feed has settled at its throttled flow */
            assert_true(s.v[in] < 0.5 * full + 5.0);
        if (s.pump_on[0] && i > 30 && s.v[in] > 0.4 * full)
            n_on++;
    }
    assert_true(n_on > 100); /* the feed ran, at about half its flow */
    assert_true(sig_actuator_value(&s, 0) == 50.0);

    actuate(&s, "inlet_valve", 0.0);
    for (int i = 0; i < 30; i++, t += STEP_MS)
        sig_step(&s, t);
    double level = s.level_m;
    for (uint64_t i = 0; i < DAY_STEPS / 4; i++, t += STEP_MS) {
        sig_step(&s, t);
        assert_true(s.v[in] == 0.0);
        assert_true(s.level_m <= level + 1e-9); /* nothing comes in */
        assert_true(s.v[lv] >= 0.5 && s.v[lv] <= 9.5);
        level = s.level_m;
    }
}

/* Commands keep the determinism contract: the same seed, steps and commands at the same points
 * give the same values; a command changes what follows. */
static void run_commanded(uint64_t seed, int with_cmd, double *out, size_t n_steps)
{
    sig_state s;
    sig_init(&s, SIG_PUMPING, seed);
    for (size_t i = 0; i < n_steps; i++) {
        if (with_cmd && i == n_steps / 3)
            actuate(&s, "pump2", 1.0);
        if (with_cmd && i == n_steps / 2)
            actuate(&s, "pump1", 0.0);
        sig_step(&s, T0_MS + i * 4321);
        memcpy(out + i * SIG_MAX_CHANNELS, s.v, SIG_MAX_CHANNELS * sizeof(double));
    }
}

static void test_determinism_with_commands(void **state)
{
    (void)state;
    enum { N = 20000 };
    static double a[N * SIG_MAX_CHANNELS], b[N * SIG_MAX_CHANNELS];
    run_commanded(sig_site_seed(42, "gw-0007"), 1, a, N);
    run_commanded(sig_site_seed(42, "gw-0007"), 1, b, N);
    assert_memory_equal(a, b, sizeof a);
    run_commanded(sig_site_seed(42, "gw-0007"), 0, b, N);
    assert_memory_equal(a, b, N / 3 * SIG_MAX_CHANNELS * sizeof(double)); /* same until then */
    assert_memory_not_equal(a, b, sizeof a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_demand_peaks),
        cmocka_unit_test(test_flows_follow_demand),
        cmocka_unit_test(test_reservoir_mass_balance),
        cmocka_unit_test(test_clearwell_integrates),
        cmocka_unit_test(test_pumping_duty_cycle),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_time_edges),
        cmocka_unit_test(test_noise_correlated),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_actuator_table),
        cmocka_unit_test(test_pumps_commanded_off),
        cmocka_unit_test(test_pump_commanded_on),
        cmocka_unit_test(test_other_pump_stays_automatic),
        cmocka_unit_test(test_tank_level),
        cmocka_unit_test(test_dosing_setpoint),
        cmocka_unit_test(test_inlet_valve),
        cmocka_unit_test(test_determinism_with_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
