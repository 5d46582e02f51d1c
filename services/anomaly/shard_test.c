/* Unit tests of shard: synthetic batches of an embedded profile go through shard_feed and
 * shard_tick, and every detector must raise (and clear) through the shard with the right alert id,
 * rule, severity and subject: limits and rate, stuck, deviation only where the profile says
 * `deviation = yes`, pumps vs flow and tank balance (units converted) from the latest readings of
 * several batches, missing data raised by the tick and cleared when data flows again; the tables
 * are bounded and what does not fit is counted. Readings of quality BAD reach no detector, no
 * relation and no learned row, and raise one bad_quality alert per episode, ended by a GOOD
 * reading. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "shard.h"

static const char PROFILE[] = "[profile]\nname = shard test\nversion = 1\n"
                              "[channel plant.level]\nquantity = level\nunit = m\n"
                              "range = 0, 10\nlimits = 0.5, 1.0, 9.0, 9.5\ndeadband = 0.1\n"
                              "max_rate = 0.5\nperiod_s = 1\n"
                              "[channel plant.chlorine]\nquantity = residual_chlorine\n"
                              "unit = mg/L\nrange = 0, 5\nperiod_s = 1\ndeviation = yes\n"
                              "[channel plant.turbidity]\nquantity = turbidity\nunit = NTU\n"
                              "range = 0, 100\nperiod_s = 1\n"
                              "[channel plant.inflow]\nquantity = flow\nunit = L/s\n"
                              "range = 0, 400\nperiod_s = 1\n"
                              "[channel plant.outflow]\nquantity = flow\nunit = m3/h\n"
                              "range = 0, 1440\nperiod_s = 1\n"
                              "[channel plant.pump1_status]\nquantity = run_status\nunit = 1\n"
                              "range = 0, 1\nperiod_s = 1\n"
                              "[channel plant.pump2_status]\nquantity = run_status\nunit = 1\n"
                              "range = 0, 1\nperiod_s = 1\n"
                              "[channel plant.flow]\nquantity = flow\nunit = L/s\n"
                              "range = 0, 500\nperiod_s = 1\n"
                              "[relation plant.balance]\ntype = tank_balance\n"
                              "level = plant.level\ninflow = plant.inflow\n"
                              "outflow = plant.outflow\narea_m2 = 400\n"
                              "[relation plant.pumps_flow]\ntype = pump_flow\n"
                              "status = plant.pump1_status, plant.pump2_status\n"
                              "flow = plant.flow\nmin_flow = 10\n";

#define T0 1700000000000ull /* ms */

static cm_profile *P;

/* Alerts the shard reported, copied. */
typedef struct rec {
    char id[160], subject[96], site[64], rule[32], family[32], evidence[160];
    int severity, cleared;
    double value;
    uint64_t ts, received;
} rec;

static rec R[8192];
static size_t NR;

static void on_alert(void *ctx, const shard_alert *a)
{
    (void)ctx;
    assert_true(NR < sizeof R / sizeof R[0]);
    rec *r = &R[NR++];
    snprintf(r->id, sizeof r->id, "%s", a->id);
    snprintf(r->subject, sizeof r->subject, "%s", a->subject);
    snprintf(r->site, sizeof r->site, "%s", a->site);
    snprintf(r->rule, sizeof r->rule, "%s", a->ev->rule);
    snprintf(r->family, sizeof r->family, "%s", a->ev->family);
    snprintf(r->evidence, sizeof r->evidence, "%s", a->ev->evidence);
    r->severity = a->ev->severity;
    r->cleared = a->ev->cleared;
    r->value = a->value;
    r->ts = a->timestamp_ms;
    r->received = a->received_ms;
}

/* Alerts of family (any if NULL) and gateway id prefix gw (any if NULL), raised (cleared 0) or
 * cleared (1) or both (-1). */
static size_t count(const char *gw, const char *family, int cleared)
{
    size_t n = 0, gl = gw ? strlen(gw) : 0;
    for (size_t i = 0; i < NR; i++)
        n += (!family || strcmp(R[i].family, family) == 0) &&
             (!gw || (strncmp(R[i].id, gw, gl) == 0 && R[i].id[gl] == '/')) &&
             (cleared < 0 || R[i].cleared == cleared);
    return n;
}

/* The first alert of family for gw with that cleared state; fails if none. */
static const rec *first(const char *gw, const char *family, int cleared)
{
    size_t gl = strlen(gw);
    for (size_t i = 0; i < NR; i++)
        if (strcmp(R[i].family, family) == 0 && R[i].cleared == cleared &&
            strncmp(R[i].id, gw, gl) == 0 && R[i].id[gl] == '/')
            return &R[i];
    fail_msg("no %s %s alert for %s", cleared ? "cleared" : "raised", family, gw);
    return NULL;
}

static uint64_t metric(cm_metrics *mx, const char *name)
{
    return cm_metric_value(cm_metric_counter(mx, name, NULL));
}

static uint64_t at(double t_s)
{
    return T0 + (uint64_t)llround(t_s * 1000.0);
}

/* One batch of gateway gw (site kind kind) with n readings of quality q at t_s, received at the
 * same time. */
static void feedq(shard *sh, const char *gw, const char *site, const char *kind, double t_s,
                  size_t n, const char *const *channels, const double *values, Suido__Quality q)
{
    Suido__MappedReading mr[16], *ptr[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) {
        suido__mapped_reading__init(&mr[i]);
        mr[i].channel = (char *)channels[i];
        mr[i].value = values[i];
        mr[i].timestamp_ms = at(t_s);
        mr[i].quality = q;
        ptr[i] = &mr[i];
    }
    shard_batch b = {.gateway_id = gw, .site = site, .site_kind = kind, .readings = ptr,
                     .n_readings = n, .received_ms = at(t_s) + 7};
    shard_feed(sh, &b, at(t_s));
}

static void feed(shard *sh, const char *gw, const char *site, const char *kind, double t_s,
                 size_t n, const char *const *channels, const double *values)
{
    feedq(sh, gw, site, kind, t_s, n, channels, values, SUIDO__QUALITY__QUALITY_GOOD);
}

static void feed1q(shard *sh, const char *gw, double t_s, const char *channel, double v,
                   Suido__Quality q)
{
    feedq(sh, gw, "plant-01", "plant", t_s, 1, &channel, &v, q);
}

static void feed1(shard *sh, const char *gw, double t_s, const char *channel, double v)
{
    feed(sh, gw, "plant-01", "plant", t_s, 1, &channel, &v);
}

static shard *new_shard(const shard_limits *lim, cm_metrics *mx)
{
    shard *sh = NULL;
    char err[SHARD_ERRLEN];
    if (shard_new(P, NULL, lim, mx, on_alert, NULL, &sh, err) != CM_OK)
        fail_msg("%s", err);
    return sh;
}

static int setup(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    if (cm_profile_load_text("shard-test.conf", PROFILE, strlen(PROFILE), &P, err) != CM_OK)
        fail_msg("%s", err);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cm_profile_destroy(&P);
    return 0;
}

static int reset(void **state)
{
    (void)state;
    NR = 0;
    return 0;
}

/* anomaly_rules through the shard: the limit and rate families, with today's ids. */
static void test_limits_and_rate(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    feed1(sh, "gw-1", 0, "plant.level", 5.0);
    feed1(sh, "gw-1", 1, "plant.level", 9.8);
    assert_int_equal(NR, 2);
    const rec *l = first("gw-1", "limit", 0);
    assert_string_equal(l->id, "gw-1/plant.level/limit");
    assert_string_equal(l->rule, "limit_hh");
    assert_int_equal(l->severity, SUIDO__SEVERITY__SEVERITY_ALARM);
    assert_string_equal(l->subject, "plant.level");
    assert_string_equal(l->site, "plant-01");
    assert_true(l->value == 9.8 && l->ts == at(1) && l->received == at(1) + 7);
    const rec *r = first("gw-1", "rate", 0);
    assert_string_equal(r->id, "gw-1/plant.level/rate");
    assert_int_equal(r->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    feed1(sh, "gw-1", 2, "plant.level", 9.8); /* still HH: no new limit alert; rate clears */
    assert_int_equal(count("gw-1", "limit", -1), 1);
    assert_int_equal(first("gw-1", "rate", 1)->severity, SUIDO__SEVERITY__SEVERITY_INFO);
    feed1(sh, "gw-1", 3, "plant.nope", 1.0); /* not a profile channel: skipped */
    assert_int_equal(metric(mx, "suido_anomaly_checked_total"), 3);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_raised_total"), 2);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_cleared_total"), 1);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"limit\"}"), 1);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"rate\"}"), 1);
    shard_destroy(&sh);
    assert_null(sh);
    cm_metrics_destroy(&mx);
}

static void test_stuck(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    for (int t = 0; t <= 70; t++)
        feed1(sh, "gw-2", t, "plant.level", 5.0);
    assert_int_equal(NR, 1);
    const rec *s = first("gw-2", "stuck", 0);
    assert_string_equal(s->id, "gw-2/plant.level/stuck");
    assert_string_equal(s->rule, "stuck");
    assert_int_equal(s->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    assert_true(s->ts == at(60)); /* the 60 s window of a 1 s channel */
    feed1(sh, "gw-2", 71, "plant.level", 5.3);
    assert_int_equal(first("gw-2", "stuck", 1)->severity, SUIDO__SEVERITY__SEVERITY_INFO);
    assert_int_equal(NR, 2);
    /* a status channel never is */
    for (int t = 0; t <= 200; t++)
        feed1(sh, "gw-2", 100 + t, "plant.pump1_status", 1.0);
    assert_int_equal(count("gw-2", "stuck", 0), 1);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"stuck\"}"), 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* The same signal and outlier on two channels: only the one marked `deviation = yes` raises. */
static void test_deviation_only_where_marked(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    const char *ch[2] = {"plant.chlorine", "plant.turbidity"};
    for (int t = 0; t < 300; t++) {
        double v = t >= 200 && t < 205 ? 4.0 : 1.0 + 0.02 * sin(1.7 * t) + 0.01 * cos(0.3 * t);
        double vals[2] = {v, v};
        feed(sh, "gw-3", "plant-03", "plant", t, 2, ch, vals);
    }
    assert_int_equal(count("gw-3", "deviation", 0), 1);
    assert_int_equal(count("gw-3", "deviation", 1), 1);
    const rec *d = first("gw-3", "deviation", 0);
    assert_string_equal(d->id, "gw-3/plant.chlorine/deviation");
    assert_string_equal(d->rule, "deviation");
    assert_int_equal(d->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    assert_true(d->ts == at(202)); /* the third reading over z_on */
    assert_string_equal(first("gw-3", "deviation", 1)->id, "gw-3/plant.chlorine/deviation");
    assert_int_equal(count(NULL, NULL, -1), 2); /* nothing else: not stuck, no limits */
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"deviation\"}"), 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* Pumps report running, the flow meter reads zero, in separate batches: one pump_flow alert
 * once the mismatch held over 30 s, cleared once flow held as long. */
static void test_pump_flow(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    const char *st[2] = {"plant.pump1_status", "plant.pump2_status"};
    const double on_off[2] = {1, 0};
    for (int t = 0; t < 100; t++) {
        feed(sh, "gw-4", "plant-04", "plant", t, 2, st, on_off);
        feed1(sh, "gw-4", t + 0.5, "plant.flow", t < 45 ? 0.0 : 80 + 0.5 * (t % 2));
        /* gw-5 never reports a flow; gw-6 reported one once, long ago: never judged */
        feed(sh, "gw-5", "plant-05", "plant", t, 2, st, on_off);
        if (t == 0)
            feed1(sh, "gw-6", 0, "plant.flow", 0.0);
        feed(sh, "gw-6", "plant-06", "plant", t, 2, st, on_off);
    }
    assert_int_equal(count("gw-4", "pump_flow", 0), 1);
    assert_int_equal(count("gw-4", "pump_flow", 1), 1);
    const rec *p = first("gw-4", "pump_flow", 0);
    assert_string_equal(p->id, "gw-4/plant.pumps_flow/pump_flow");
    assert_string_equal(p->subject, "plant.pumps_flow");
    assert_string_equal(p->rule, "pump_flow");
    assert_string_equal(p->site, "plant-04");
    assert_int_equal(p->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    assert_true(p->value == 0.0);
    assert_true(p->ts > at(30) && p->ts <= at(32));
    assert_non_null(strstr(p->evidence, "1 pump(s) running"));
    const rec *c = first("gw-4", "pump_flow", 1);
    assert_int_equal(c->severity, SUIDO__SEVERITY__SEVERITY_INFO);
    assert_true(c->ts > at(75) && c->ts <= at(77));
    assert_int_equal(count("gw-5", NULL, -1), 0);
    assert_int_equal(count("gw-6", "pump_flow", -1), 0);
    assert_int_equal(count(NULL, "stuck", 0), 0);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"pump_flow\"}"), 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* Inflow in L/s and outflow in m3/h balance for 10 minutes (no alert: the units were converted);
 * then the outflow stops and the level does not rise: one balance alert. */
static void test_tank_balance(void **state)
{
    (void)state;
    shard *sh = new_shard(NULL, NULL);
    const char *ch[3] = {"plant.level", "plant.inflow", "plant.outflow"};
    for (int t = 0; t < 1200; t++) {
        double wiggle = t % 2;
        double v[3] = {5.0 + 0.001 * wiggle, 100 + 0.01 * wiggle,
                       t < 600 ? 360 + 0.036 * wiggle : 0.01 * wiggle};
        feed(sh, "gw-8", "plant-08", "plant", t, 3, ch, v);
        if (t == 599)
            assert_int_equal(count("gw-8", "balance", -1), 0);
    }
    assert_int_equal(count("gw-8", "balance", 0), 1);
    const rec *b = first("gw-8", "balance", 0);
    assert_string_equal(b->id, "gw-8/plant.balance/balance");
    assert_string_equal(b->rule, "tank_balance");
    assert_string_equal(b->subject, "plant.balance");
    assert_int_equal(b->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    assert_true(b->ts > at(600) && b->ts < at(1000));
    assert_int_equal(count(NULL, NULL, -1), 1); /* nothing stuck, no limits, no rate */
    shard_destroy(&sh);
}

/* Silence raised by the tick (once), cleared when readings flow again. */
static void test_missing_data(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    for (int t = 0; t < 5; t++) {
        feed(sh, "gw-9", "plant-09", "plant", t, 1, (const char *[]){"plant.level"},
             (const double[]){5.0 + 0.01 * t});
        shard_tick(sh, at(t + 0.5));
    }
    for (int t = 5; t <= 10; t++)
        shard_tick(sh, at(t));
    assert_int_equal(NR, 0); /* 6 s of silence is the limit of a 1 s channel */
    for (int t = 11; t <= 19; t++)
        shard_tick(sh, at(t));
    assert_int_equal(NR, 1);
    const rec *m = first("gw-9", "missing", 0);
    assert_string_equal(m->id, "gw-9/plant.level/missing");
    assert_string_equal(m->rule, "missing_data");
    assert_string_equal(m->site, "plant-09"); /* remembered from its readings */
    assert_int_equal(m->severity, SUIDO__SEVERITY__SEVERITY_WARNING);
    assert_true(m->ts == at(11) && m->received == at(11));
    assert_true(fabs(m->value - 5.04) < 1e-12);
    feed1(sh, "gw-9", 20, "plant.level", 5.0); /* a lone straggler does not clear */
    assert_int_equal(count("gw-9", "missing", 1), 0);
    feed1(sh, "gw-9", 21, "plant.level", 5.01);
    assert_int_equal(count("gw-9", "missing", 1), 1);
    assert_int_equal(first("gw-9", "missing", 1)->severity, SUIDO__SEVERITY__SEVERITY_INFO);
    for (int t = 22; t < 25; t++) {
        feed1(sh, "gw-9", t, "plant.level", 5.0 + 0.01 * t);
        shard_tick(sh, at(t + 0.5));
    }
    assert_int_equal(count("gw-9", "missing", -1), 2);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"missing\"}"), 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* Receive time, not the gateway's clock, decides silence: a gateway whose clock is an hour
 * behind but whose readings arrive every second is not silent. */
static void test_missing_uses_receive_time(void **state)
{
    (void)state;
    shard *sh = new_shard(NULL, NULL);
    for (int t = 0; t < 30; t++) {
        Suido__MappedReading r = SUIDO__MAPPED_READING__INIT, *ptr = &r;
        r.channel = "plant.level";
        r.value = 5.0 + 0.01 * (t % 3);
        r.timestamp_ms = at(t) - 3600000;
        shard_batch b = {.gateway_id = "gw-10", .site_kind = "plant", .readings = &ptr,
                         .n_readings = 1, .received_ms = at(t)};
        shard_feed(sh, &b, at(t));
        shard_tick(sh, at(t + 0.5));
    }
    assert_int_equal(count("gw-10", "missing", -1), 0);
    shard_destroy(&sh);
}

/* A reading stamped an hour ahead (a gateway clock gone wrong) is ignored and counted: it does
 * not become the flow's latest reading, so the relation keeps being fed by the readings that
 * follow and raises its alert, and silence afterwards is still reported as missing data. */
static void test_future_reading_does_not_pin_the_latest(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    const char *st[2] = {"plant.pump1_status", "plant.pump2_status"};
    const double on_off[2] = {1, 0};
    for (int t = 0; t < 100; t++) {
        feed(sh, "gw-11", "plant-11", "plant", t, 2, st, on_off);
        feed1(sh, "gw-11", t + 0.5, "plant.flow", t < 10 ? 80.0 : 0.0);
        if (t == 9) {
            Suido__MappedReading r = SUIDO__MAPPED_READING__INIT, *ptr = &r;
            r.channel = "plant.flow";
            r.value = 80.0;
            r.timestamp_ms = at(9.6) + 3600000;
            shard_batch b = {.gateway_id = "gw-11", .site = "plant-11", .site_kind = "plant",
                             .readings = &ptr, .n_readings = 1, .received_ms = at(9.6)};
            shard_feed(sh, &b, at(9.6));
        }
    }
    /* the pumps run without flow from t = 10 on: the relation sees it */
    assert_int_equal(count("gw-11", "pump_flow", 0), 1);
    const rec *p = first("gw-11", "pump_flow", 0);
    assert_true(p->ts > at(10) && p->ts < at(100));
    assert_true(p->value == 0.0);
    assert_int_equal(metric(mx, "suido_anomaly_future_readings_total"), 1);
    /* then silence: reported, the ignored reading does not keep the channel alive */
    for (int t = 100; t <= 120; t++)
        shard_tick(sh, at(t));
    int flow_missing = 0;
    for (size_t i = 0; i < NR; i++)
        flow_missing += strcmp(R[i].id, "gw-11/plant.flow/missing") == 0 && !R[i].cleared;
    assert_int_equal(flow_missing, 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

static void test_tables_bounded(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard_limits lim = {.channel_slots = 8, .relation_slots = 4, .learned_gateways = 1};
    shard *sh = new_shard(&lim, mx);
    for (int round = 0; round < 2; round++)
        for (int g = 0; g < 10; g++) {
            char gw[16];
            snprintf(gw, sizeof gw, "gw-%02d", g);
            feed1(sh, gw, round, "plant.level", round ? 9.8 : 5.0);
        }
    assert_int_equal(metric(mx, "suido_anomaly_checked_total"), 12); /* 3/4 of 8, twice */
    assert_int_equal(metric(mx, "suido_anomaly_untracked_total"), 8);
    assert_int_equal(count(NULL, "limit", 0), 6); /* the tracked ones are still checked */
    char longid[80];
    memset(longid, 'g', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    feed1(sh, longid, 3, "plant.level", 5.0);
    assert_int_equal(metric(mx, "suido_anomaly_untracked_total"), 9);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);

    /* relations: room for 3 (gateway, relation) states */
    mx = cm_metrics_new("anomaly-test", NULL);
    lim.channel_slots = 64;
    sh = new_shard(&lim, mx);
    const char *ch[3] = {"plant.pump1_status", "plant.pump2_status", "plant.flow"};
    const double v[3] = {1, 0, 0};
    for (int t = 0; t < 40; t++)
        for (int g = 0; g < 5; g++) {
            char gw[16];
            snprintf(gw, sizeof gw, "gw-%02d", g);
            feed(sh, gw, "plant-x", "plant", t, 3, ch, v);
        }
    assert_int_equal(count(NULL, "pump_flow", 0), 3);
    assert_int_equal(metric(mx, "suido_anomaly_relations_untracked_total"), 2 * 40);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);

    shard_limits bad = {.channel_slots = 6, .relation_slots = 4, .learned_gateways = 1};
    char err[SHARD_ERRLEN];
    assert_int_equal(shard_new(P, NULL, &bad, NULL, on_alert, NULL, &sh, err), CM_ERR_INVAL);
    assert_null(sh);
    assert_non_null(strstr(err, "powers of two"));
}

#define GOOD SUIDO__QUALITY__QUALITY_GOOD
#define UNCERTAIN SUIDO__QUALITY__QUALITY_UNCERTAIN
#define BAD SUIDO__QUALITY__QUALITY_BAD

/* A device that stops answering: its first BAD reading raises bad_quality (ALARM) and nothing
 * else, whatever the value (9.8 would be HH and a rate alarm); more BAD readings and UNCERTAIN
 * ones do not end the episode, a GOOD one does; the next BAD reading opens a new one. */
static void test_bad_quality_episode(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    feed1q(sh, "gw-20", 0, "plant.level", 5.0, GOOD);
    feed1q(sh, "gw-20", 1, "plant.level", 9.8, BAD);
    assert_int_equal(NR, 1);
    const rec *b = first("gw-20", "bad_quality", 0);
    assert_string_equal(b->id, "gw-20/plant.level/bad_quality");
    assert_string_equal(b->rule, "bad_quality");
    assert_string_equal(b->subject, "plant.level");
    assert_string_equal(b->site, "plant-01");
    assert_int_equal(b->severity, SUIDO__SEVERITY__SEVERITY_ALARM);
    assert_string_equal(b->evidence, "no valid measurement: the gateway reports the device as "
                                     "not answering (channel plant.level, gateway gw-20)");
    /* the BAD value is passed on nowhere: the alert carries the last valid reading */
    assert_true(b->value == 5.0 && b->ts == at(1) && b->received == at(1) + 7);
    feed1q(sh, "gw-20", 2, "plant.level", 0.1, BAD); /* same episode: nothing (not LL either) */
    feed1q(sh, "gw-20", 3, "plant.level", 5.01, UNCERTAIN); /* checked, ends nothing */
    assert_int_equal(NR, 1);
    feed1q(sh, "gw-20", 4, "plant.level", 5.02, GOOD);
    assert_int_equal(NR, 2);
    const rec *c = first("gw-20", "bad_quality", 1);
    assert_string_equal(c->id, "gw-20/plant.level/bad_quality");
    assert_int_equal(c->severity, SUIDO__SEVERITY__SEVERITY_INFO);
    assert_true(c->value == 5.02 && c->ts == at(4));
    assert_non_null(strstr(c->evidence, "plant.level"));
    assert_non_null(strstr(c->evidence, "gw-20"));
    feed1q(sh, "gw-20", 5, "plant.level", 5.03, GOOD); /* nothing to end */
    assert_int_equal(NR, 2);
    feed1q(sh, "gw-20", 6, "plant.level", 5.03, BAD); /* a new episode */
    assert_int_equal(count("gw-20", "bad_quality", 0), 2);
    /* per (gateway, channel): another channel, another gateway, each its own episode */
    feed1q(sh, "gw-20", 7, "plant.turbidity", 1.0, BAD);
    feed1q(sh, "gw-21", 7, "plant.level", 5.0, BAD);
    feed1q(sh, "gw-20", 8, "plant.level", 5.03, BAD);
    assert_int_equal(count("gw-20", "bad_quality", 0), 3);
    assert_int_equal(count("gw-21", "bad_quality", 0), 1);
    assert_string_equal(first("gw-21", "bad_quality", 0)->id, "gw-21/plant.level/bad_quality");
    assert_true(first("gw-21", "bad_quality", 0)->value == 0); /* no valid reading ever */
    assert_int_equal(count(NULL, NULL, -1), 5); /* no limit, rate or other alert at all */
    assert_int_equal(metric(mx, "suido_anomaly_bad_quality_readings_total"), 6);
    assert_int_equal(metric(mx, "suido_anomaly_checked_total"), 4);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_total{family=\"bad_quality\"}"), 4);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_raised_total"), 4);
    assert_int_equal(metric(mx, "suido_anomaly_alerts_cleared_total"), 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* BAD readings feed no detector: a repeated value does not look stuck, an outlier is no
 * deviation, a zero flow does not contradict running pumps (the relation keeps the last valid
 * flow, which goes stale), and a channel with only BAD readings is silent for the missing-data
 * check. */
static void test_bad_quality_feeds_no_detector(void **state)
{
    (void)state;
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = new_shard(NULL, mx);
    for (int t = 0; t <= 70; t++)
        feed1q(sh, "gw-22", t, "plant.level", 5.0, BAD);
    assert_int_equal(count("gw-22", "stuck", -1), 0);
    const char *ch[2] = {"plant.chlorine", "plant.turbidity"};
    for (int t = 0; t < 300; t++) {
        int outlier = t >= 200 && t < 205;
        double v = outlier ? 4.0 : 1.0 + 0.02 * sin(1.7 * t) + 0.01 * cos(0.3 * t);
        double vals[2] = {v, v};
        feedq(sh, "gw-22", "plant-22", "plant", t, 2, ch, vals, outlier ? BAD : GOOD);
    }
    assert_int_equal(count("gw-22", "deviation", -1), 0);
    const char *st[2] = {"plant.pump1_status", "plant.pump2_status"};
    const double on_off[2] = {1, 0};
    feed1q(sh, "gw-23", 0, "plant.flow", 80.0, GOOD);
    for (int t = 0; t < 100; t++) {
        feed(sh, "gw-23", "plant-23", "plant", t, 2, st, on_off);
        feed1q(sh, "gw-23", t + 0.5, "plant.flow", 0.0, BAD);
    }
    assert_int_equal(count("gw-23", "pump_flow", -1), 0);
    assert_int_equal(count("gw-23", "bad_quality", 0), 1);
    /* BAD only since t = 0.5: after the 6 s limit the flow is missing data */
    shard_tick(sh, at(100));
    int flow_missing = 0;
    for (size_t i = 0; i < NR; i++)
        flow_missing += strcmp(R[i].id, "gw-23/plant.flow/missing") == 0 && !R[i].cleared;
    assert_int_equal(flow_missing, 1);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
}

/* With a learned model, BAD readings make no row: the model never judges a made-up value. */
static void test_bad_quality_makes_no_learned_row(void **state)
{
    (void)state;
    static const char TEXT[] = "[profile]\nname = k\nversion = 1\n"
                               "[channel k.a]\nquantity = q\nunit = m\nrange = 0, 100\n"
                               "period_s = 60\n"
                               "[channel k.b]\nquantity = q\nunit = m\nrange = 0, 100\n"
                               "period_s = 60\n";
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    assert_int_equal(cm_profile_load_text("k.conf", TEXT, strlen(TEXT), &p, err), CM_OK);
    enum { N = 200 };
    double v[N * 2];
    unsigned char use[N], brk[N] = {1};
    memset(use, 1, sizeof use);
    for (int t = 0; t < N; t++) {
        v[2 * t] = 50 + 10 * sin(t / 5.0);
        v[2 * t + 1] = 30 + 5 * cos(t / 7.0);
    }
    const char *ids[2] = {"k.a", "k.b"};
    learned_data d = {.n_rows = N, .n_ch = 2, .v = v, .use = use, .brk = brk};
    learned_params par;
    learned_params_default(&par);
    learned_model *m = NULL;
    char lerr[LEARNED_ERRLEN];
    if (learned_train(p, ids, 2, 60, &d, &par, &m, lerr) != CM_OK)
        fail_msg("%s", lerr);
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = NULL;
    char serr[SHARD_ERRLEN];
    assert_int_equal(shard_new(p, m, NULL, mx, on_alert, NULL, &sh, serr), CM_OK);
    for (int t = 0; t < 10; t++)
        feedq(sh, "gw-24", "k-24", "k", 60.0 * t, 2, ids, &v[2 * t], BAD);
    assert_int_equal(metric(mx, "suido_anomaly_learned_rows_total"), 0);
    assert_int_equal(count("gw-24", "bad_quality", 0), 2);
    for (int t = 10; t < 20; t++) /* the control: valid readings make rows */
        feedq(sh, "gw-24", "k-24", "k", 60.0 * t, 2, ids, &v[2 * t], GOOD);
    assert_true(metric(mx, "suido_anomaly_learned_rows_total") > 0);
    assert_int_equal(count("gw-24", "bad_quality", 1), 2);
    shard_destroy(&sh);
    cm_metrics_destroy(&mx);
    learned_destroy(&m);
    cm_profile_destroy(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_limits_and_rate, reset),
        cmocka_unit_test_setup(test_stuck, reset),
        cmocka_unit_test_setup(test_deviation_only_where_marked, reset),
        cmocka_unit_test_setup(test_pump_flow, reset),
        cmocka_unit_test_setup(test_tank_balance, reset),
        cmocka_unit_test_setup(test_missing_data, reset),
        cmocka_unit_test_setup(test_missing_uses_receive_time, reset),
        cmocka_unit_test_setup(test_future_reading_does_not_pin_the_latest, reset),
        cmocka_unit_test_setup(test_tables_bounded, reset),
        cmocka_unit_test_setup(test_bad_quality_episode, reset),
        cmocka_unit_test_setup(test_bad_quality_feeds_no_detector, reset),
        cmocka_unit_test_setup(test_bad_quality_makes_no_learned_row, reset),
    };
    return cmocka_run_group_tests_name("shard", tests, setup, teardown);
}
