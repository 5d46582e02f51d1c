/* Unit tests of live_rows: a model trained by `suido-anomaly train` on BATADAL dataset03 (C-Town,
 * examples/ctown/profile.conf), then dataset04 streamed as live readings — one reading per
 * channel per row, in order, timestamps from the CSV — must give, row by row, exactly the flags
 * `suido-anomaly replay` writes for the same CSV, and the scores of learned_step driven the way
 * replay drives it; through a whole shard, one "learned" alert per flag change. Also: a skipped
 * hour is a break, a channel without a reading in a bucket is NAN, gateways of another site kind
 * are ignored, the gateway table is bounded, a model over two site kinds is refused.
 *
 * The data are read from tests/data/batadal (tests run from the repository root; the files and
 * their licence are in the repository); a missing file fails the tests. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cli.h"
#include "history.h"
#include "learned.h"
#include "live_rows.h"
#include "shard.h"

#define DATA "tests/data/batadal/"
#define D03 DATA "BATADAL_dataset03.csv"
#define D04 DATA "BATADAL_dataset04.csv"
#define PROFILE "examples/ctown/profile.conf"

/* Shared by the tests: built once by setup. */
static struct {
    int have_data;
    char dir[64];
    cm_profile *p;
    learned_model *m;
    history *h;      /* dataset04 */
    int *col;        /* model channel i -> column of h */
    int *replay;     /* flags of `suido-anomaly replay` on dataset04 */
    double *rscore;  /* scores it wrote (4 decimals) */
} G;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *path(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", G.dir, name);
    return buf[k];
}

static int cli(const char *const *args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "suido-anomaly";
    for (; args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;
    return anomaly_cli(argc, argv);
}

/* Reads FLAGS.csv (timestamp,flag,score) into G.replay / G.rscore; returns the row count. */
static size_t read_flags(const char *p, size_t max)
{
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "timestamp,flag,score\n");
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ',');
        assert_non_null(c1);
        if (n < max) {
            G.replay[n] = atoi(c1 + 1);
            G.rscore[n] = atof(strchr(c1 + 1, ',') + 1);
        }
        n++;
    }
    fclose(f);
    return n;
}

static int setup(void **state)
{
    (void)state;
    if (access(D03, R_OK) != 0 || access(D04, R_OK) != 0) {
        print_message("BATADAL data not found under " DATA " (run from the repository root)\n");
        return -1;
    }
    G.have_data = 1;
    snprintf(G.dir, sizeof G.dir, "/tmp/suido-live-rows-test-XXXXXX");
    assert_non_null(mkdtemp(G.dir));
    double t0 = now_s();
    const char *train[] = {"train", "--profile", PROFILE, "--history", D03, "--model",
                           path("ctown.model"), NULL};
    assert_int_equal(cli(train), 0);
    double t1 = now_s();
    const char *replay[] = {"replay", "--profile", PROFILE, "--model", path("ctown.model"),
                            "--csv", D04, "--out", path("flags.csv"), NULL};
    assert_int_equal(cli(replay), 0);
    char err[512];
    if (cm_profile_load(PROFILE, &G.p, err) != CM_OK)
        fail_msg("%s", err);
    if (learned_load(path("ctown.model"), G.p, &G.m, err) != CM_OK)
        fail_msg("%s", err);
    if (history_load(D04, &G.h, err) != CM_OK)
        fail_msg("%s", err);
    size_t n = learned_channel_count(G.m);
    G.col = calloc(n, sizeof *G.col);
    G.replay = calloc(G.h->n_rows, sizeof *G.replay);
    G.rscore = calloc(G.h->n_rows, sizeof *G.rscore);
    assert_true(G.col && G.replay && G.rscore);
    for (size_t i = 0; i < n; i++) { /* "ctown.l_t1" is column "L_T1" */
        G.col[i] = history_column(G.h, strchr(learned_channel_id(G.m, i), '.') + 1);
        assert_true(G.col[i] >= 0);
    }
    assert_int_equal(read_flags(path("flags.csv"), G.h->n_rows), G.h->n_rows);
    print_message("trained on dataset03 in %.2f s, replayed dataset04 (%zu rows) in %.2f s\n",
                  t1 - t0, G.h->n_rows, now_s() - t1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (G.have_data) {
        unlink(path("ctown.model"));
        unlink(path("flags.csv"));
        rmdir(G.dir);
    }
    learned_destroy(&G.m);
    history_destroy(&G.h);
    cm_profile_destroy(&G.p);
    free(G.col);
    free(G.replay);
    free(G.rscore);
    return 0;
}

static void need_data(void)
{
    if (!G.have_data)
        skip();
}

/* What the callback saw, row by row. */
typedef struct seen {
    size_t n, cap;
    int *flag, *brk, *changed;
    double *score;
    uint64_t *start_ms;
    double *values; /* of the row `keep_row` (index in seen order), if any */
    size_t keep_row;
} seen;

static void seen_init(seen *s, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    s->flag = calloc(cap, sizeof *s->flag);
    s->brk = calloc(cap, sizeof *s->brk);
    s->changed = calloc(cap, sizeof *s->changed);
    s->score = calloc(cap, sizeof *s->score);
    s->start_ms = calloc(cap, sizeof *s->start_ms);
    s->values = calloc(learned_channel_count(G.m), sizeof *s->values);
    s->keep_row = (size_t)-1;
    assert_true(s->flag && s->brk && s->changed && s->score && s->start_ms && s->values);
}

static void seen_free(seen *s)
{
    free(s->flag);
    free(s->brk);
    free(s->changed);
    free(s->score);
    free(s->start_ms);
    free(s->values);
}

static void on_row(void *ctx, const live_rows_row *r)
{
    seen *s = ctx;
    assert_true(s->n < s->cap);
    s->flag[s->n] = r->flag;
    s->brk[s->n] = r->brk;
    s->changed[s->n] = r->changed;
    s->score[s->n] = r->score;
    s->start_ms[s->n] = r->start_ms;
    if (s->n == s->keep_row)
        memcpy(s->values, r->values, learned_channel_count(G.m) * sizeof *r->values);
    s->n++;
}

static double cell(size_t t, size_t i)
{
    return G.h->v[t * G.h->n_cols + (size_t)G.col[i]];
}

/* Streams dataset04 row t as readings of gateway gw (every model channel but `omit`, -1: none). */
static void stream_row(live_rows *lr, const char *gw, size_t t, long omit)
{
    uint64_t ts = (uint64_t)G.h->ts[t] * 1000u;
    for (size_t i = 0; i < learned_channel_count(G.m); i++)
        if ((long)i != omit)
            assert_int_equal(live_rows_add(lr, gw, "ctown", learned_channel_id(G.m, i),
                                           cell(t, i), ts),
                             LIVE_ROWS_TAKEN);
}

/* One reading of the bucket after row `last`, which closes it. */
static void close_after(live_rows *lr, const char *gw, size_t last)
{
    uint64_t ts = (uint64_t)(G.h->ts[last] + (int64_t)learned_period(G.m)) * 1000u;
    assert_int_equal(live_rows_add(lr, gw, "ctown", learned_channel_id(G.m, 0), 1.0, ts),
                     LIVE_ROWS_TAKEN);
}

/* Replay's loop (cli.c, replay_rows) over the rows rows[0..n) of dataset04, with cell
 * (nan_row, nan_ch) set to NAN: flags and scores. */
static void reference(const size_t *rows, size_t n, size_t nan_row, long nan_ch, int *flags,
                      double *scores)
{
    size_t nc = learned_channel_count(G.m);
    double *row = malloc(nc * sizeof *row);
    learned_state *st = NULL;
    assert_int_equal(learned_state_new(G.m, &st), CM_OK);
    for (size_t k = 0; k < n; k++) {
        size_t t = rows[k];
        if (k > 0 && (double)(G.h->ts[t] - G.h->ts[rows[k - 1]]) != learned_period(G.m))
            learned_state_break(st);
        for (size_t i = 0; i < nc; i++)
            row[i] = t == nan_row && (long)i == nan_ch ? NAN : cell(t, i);
        learned_step(G.m, st, row, &flags[k], &scores[k]);
    }
    learned_state_destroy(&st);
    free(row);
}

static void test_same_flags_as_replay(void **state)
{
    (void)state;
    need_data();
    size_t n = G.h->n_rows;
    seen s;
    seen_init(&s, n);
    live_rows *lr = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_equal(live_rows_new(G.m, 4, on_row, &s, &lr, err), CM_OK);
    assert_string_equal(live_rows_site_kind(lr), "ctown");
    double t0 = now_s();
    for (size_t t = 0; t < n; t++)
        stream_row(lr, "gw-ctown", t, -1);
    assert_int_equal(s.n, n - 1); /* the last row is still open */
    close_after(lr, "gw-ctown", n - 1);
    double dt = now_s() - t0;
    assert_int_equal(s.n, n);

    size_t *rows = calloc(n, sizeof *rows);
    int *rf = calloc(n, sizeof *rf);
    double *rs = calloc(n, sizeof *rs);
    for (size_t t = 0; t < n; t++)
        rows[t] = t;
    reference(rows, n, (size_t)-1, -1, rf, rs);
    size_t same = 0, flagged = 0, changes = 0;
    for (size_t t = 0; t < n; t++) {
        same += s.flag[t] == G.replay[t];
        flagged += s.flag[t] != 0;
        changes += (size_t)s.changed[t];
        assert_int_equal(s.brk[t], 0);
        assert_true(s.start_ms[t] == (uint64_t)G.h->ts[t] * 1000u);
        assert_true(s.score[t] == rs[t] && s.flag[t] == rf[t]); /* bit-identical */
        assert_true(fabs(s.score[t] - G.rscore[t]) <= 0.5e-4 + 1e-9);
    }
    print_message("dataset04: %zu of %zu rows with the same flag as replay (%zu flagged, %zu "
                  "changes), streamed in %.3f s\n",
                  same, n, flagged, changes, dt);
    assert_int_equal(same, n);
    assert_true(flagged > 0); /* the comparison would be vacuous otherwise */
    live_rows_destroy(&lr);
    assert_null(lr);
    free(rows);
    free(rf);
    free(rs);
    seen_free(&s);
}

/* An hour with no reading at all: the row after it follows a break, as replay's gap does. */
static void test_skipped_hour_is_a_break(void **state)
{
    (void)state;
    need_data();
    const size_t n = 300, skipped = 150;
    seen s;
    seen_init(&s, n);
    live_rows *lr = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_equal(live_rows_new(G.m, 4, on_row, &s, &lr, err), CM_OK);
    size_t rows[300] = {0}, k = 0;
    for (size_t t = 0; t < n; t++) {
        if (t == skipped)
            continue;
        stream_row(lr, "gw-1", t, -1);
        rows[k++] = t;
    }
    close_after(lr, "gw-1", n - 1);
    assert_int_equal(s.n, k);
    int rf[300];
    double rs[300];
    reference(rows, k, (size_t)-1, -1, rf, rs);
    for (size_t j = 0; j < k; j++) {
        assert_int_equal(s.brk[j], rows[j] == skipped + 1);
        assert_true(s.flag[j] == rf[j] && s.score[j] == rs[j]);
    }
    live_rows_destroy(&lr);
    seen_free(&s);
}

/* A channel without a reading in a bucket is NAN in that row (held, not judged). */
static void test_missing_channel_is_nan(void **state)
{
    (void)state;
    need_data();
    const size_t n = 60, at = 20;
    const long ch = 2;
    seen s;
    seen_init(&s, n);
    s.keep_row = at;
    live_rows *lr = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_equal(live_rows_new(G.m, 4, on_row, &s, &lr, err), CM_OK);
    for (size_t t = 0; t < n; t++)
        stream_row(lr, "gw-1", t, t == at ? ch : -1);
    close_after(lr, "gw-1", n - 1);
    assert_int_equal(s.n, n);
    for (size_t i = 0; i < learned_channel_count(G.m); i++)
        if ((long)i == ch)
            assert_true(isnan(s.values[i]));
        else
            assert_true(s.values[i] == cell(at, i));
    size_t rows[60] = {0};
    for (size_t t = 0; t < n; t++)
        rows[t] = t;
    int rf[60];
    double rs[60];
    reference(rows, n, at, ch, rf, rs);
    for (size_t t = 0; t < n; t++)
        assert_true(s.flag[t] == rf[t] && s.score[t] == rs[t]);
    /* the latest reading of a bucket wins, whatever the order of arrival */
    live_rows *lr2 = NULL;
    seen s2;
    seen_init(&s2, 4);
    s2.keep_row = 0;
    assert_int_equal(live_rows_new(G.m, 4, on_row, &s2, &lr2, err), CM_OK);
    const char *c0 = learned_channel_id(G.m, 0);
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, 2.0, 7200100), LIVE_ROWS_TAKEN);
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, 3.0, 7200500), LIVE_ROWS_TAKEN);
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, NAN, 7200900), LIVE_ROWS_IGNORED);
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, 1.0, 7200000), LIVE_ROWS_TAKEN);
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, 4.0, 10800000), LIVE_ROWS_TAKEN);
    assert_int_equal(s2.n, 1);
    assert_true(s2.values[0] == 3.0 && isnan(s2.values[1]));
    assert_true(s2.start_ms[0] == 7200000);
    /* a reading of a bucket already judged is dropped */
    assert_int_equal(live_rows_add(lr2, "gw", "ctown", c0, 5.0, 7300000), LIVE_ROWS_LATE);
    live_rows_destroy(&lr2);
    seen_free(&s2);
    live_rows_destroy(&lr);
    seen_free(&s);
}

/* Gateways of another site kind, and channels outside the model, are not judged. */
static void test_other_kind_ignored(void **state)
{
    (void)state;
    need_data();
    seen s;
    seen_init(&s, 8);
    live_rows *lr = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_equal(live_rows_new(G.m, 4, on_row, &s, &lr, err), CM_OK);
    for (uint64_t h = 0; h < 5; h++) {
        assert_int_equal(live_rows_add(lr, "gw-r", "reservoir", "ctown.l_t1", 1, h * 3600000),
                         LIVE_ROWS_IGNORED);
        assert_int_equal(live_rows_add(lr, "gw-r", NULL, "ctown.l_t1", 1, h * 3600000),
                         LIVE_ROWS_IGNORED);
        assert_int_equal(live_rows_add(lr, "gw-c", "ctown", "ctown.nope", 1, h * 3600000),
                         LIVE_ROWS_IGNORED);
        assert_int_equal(live_rows_add(lr, "gw-c", "ctown", "reservoir.level", 1, h * 3600000),
                         LIVE_ROWS_IGNORED);
    }
    assert_int_equal(live_rows_gateway_count(lr), 0);
    assert_int_equal(s.n, 0);
    live_rows_destroy(&lr);
    seen_free(&s);
}

static void test_bounded_gateways(void **state)
{
    (void)state;
    need_data();
    seen s;
    seen_init(&s, 64);
    live_rows *lr = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_equal(live_rows_new(G.m, 3, on_row, &s, &lr, err), CM_OK);
    for (uint64_t h = 0; h < 3; h++)
        for (int g = 0; g < 5; g++) {
            char gw[16];
            snprintf(gw, sizeof gw, "gw-%d", g);
            assert_int_equal(live_rows_add(lr, gw, "ctown", "ctown.l_t1", 2.0, h * 3600000),
                             g < 3 ? LIVE_ROWS_TAKEN : LIVE_ROWS_FULL);
        }
    assert_int_equal(live_rows_gateway_count(lr), 3);
    assert_int_equal(s.n, 2 * 3); /* hours 0 and 1 closed, for three gateways */
    char longid[80];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    assert_int_equal(live_rows_add(lr, longid, "ctown", "ctown.l_t1", 2.0, 0), LIVE_ROWS_IGNORED);
    live_rows_destroy(&lr);
    assert_int_equal(live_rows_new(G.m, 0, on_row, &s, &lr, err), CM_ERR_INVAL);
    seen_free(&s);
}

/* A model over two site kinds cannot be fed by one gateway: refused. */
static void test_two_kinds_refused(void **state)
{
    (void)state;
    static const char TEXT[] = "[profile]\nname = two\nversion = 1\n"
                               "[channel a.x]\nquantity = q\nunit = m\nrange = 0, 100\n"
                               "[channel b.y]\nquantity = q\nunit = m\nrange = 0, 100\n";
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    assert_int_equal(cm_profile_load_text("two.conf", TEXT, strlen(TEXT), &p, err), CM_OK);
    enum { N = 200 };
    double v[N * 2];
    unsigned char use[N], brk[N] = {1};
    memset(use, 1, sizeof use);
    for (int t = 0; t < N; t++) {
        v[2 * t] = 50 + 10 * sin(t / 5.0);
        v[2 * t + 1] = 30 + 5 * cos(t / 7.0);
    }
    const char *ids[2] = {"a.x", "b.y"};
    learned_data d = {.n_rows = N, .n_ch = 2, .v = v, .use = use, .brk = brk};
    learned_params par;
    learned_params_default(&par);
    learned_model *m = NULL;
    char lerr[LEARNED_ERRLEN];
    if (learned_train(p, ids, 2, 60, &d, &par, &m, lerr) != CM_OK)
        fail_msg("%s", lerr);
    live_rows *lr = NULL;
    assert_int_equal(live_rows_new(m, 4, NULL, NULL, &lr, lerr), CM_ERR_INVAL);
    assert_null(lr);
    assert_non_null(strstr(lerr, "different site kinds"));
    learned_destroy(&m);
    cm_profile_destroy(&p);
}

/* Through a whole shard: one "learned" alert per flag change, ALARM when it rises. */
typedef struct alerts {
    size_t raised, cleared;
    int bad;
    char first_evidence[160];
} alerts;

static void on_alert(void *ctx, const shard_alert *a)
{
    alerts *al = ctx;
    if (strcmp(a->ev->family, "learned") != 0)
        return;
    if (strcmp(a->id, "gw-ctown/ctown/learned") != 0 || strcmp(a->subject, "ctown") != 0 ||
        strcmp(a->ev->rule, "learned") != 0 || strcmp(a->site, "c-town") != 0)
        al->bad++;
    if (a->ev->cleared) {
        al->cleared++;
        al->bad += a->ev->severity != SUIDO__SEVERITY__SEVERITY_INFO;
    } else {
        if (!al->raised++)
            snprintf(al->first_evidence, sizeof al->first_evidence, "%s", a->ev->evidence);
        al->bad += a->ev->severity != SUIDO__SEVERITY__SEVERITY_ALARM;
    }
}

static void test_shard_raises_learned_alerts(void **state)
{
    (void)state;
    need_data();
    alerts al = {0};
    cm_metrics *mx = cm_metrics_new("anomaly-test", NULL);
    shard *sh = NULL;
    char err[SHARD_ERRLEN];
    assert_int_equal(shard_new(G.p, G.m, NULL, mx, on_alert, &al, &sh, err), CM_OK);
    size_t nc = learned_channel_count(G.m), n = G.h->n_rows;
    Suido__MappedReading *mr = calloc(nc, sizeof *mr), **ptr = calloc(nc, sizeof *ptr);
    assert_true(mr && ptr);
    size_t want_raised = 0, want_cleared = 0;
    for (size_t t = 0; t <= n; t++) {
        /* row t; then one more batch, an hour later, to close the last row */
        size_t src = t < n ? t : n - 1;
        uint64_t ts = (uint64_t)(G.h->ts[src] + (t < n ? 0 : 3600)) * 1000u;
        for (size_t i = 0; i < nc; i++) {
            suido__mapped_reading__init(&mr[i]);
            mr[i].channel = (char *)learned_channel_id(G.m, i);
            mr[i].value = cell(src, i);
            mr[i].timestamp_ms = ts;
            ptr[i] = &mr[i];
        }
        shard_batch b = {.gateway_id = "gw-ctown", .site = "c-town", .site_kind = "ctown",
                         .readings = ptr, .n_readings = nc, .received_ms = ts};
        shard_feed(sh, &b, ts);
        if (t < n) {
            int prev = t ? G.replay[t - 1] : 0;
            want_raised += !prev && G.replay[t];
            want_cleared += prev && !G.replay[t];
        }
    }
    print_message("shard: %zu learned alerts raised, %zu cleared; first: %s\n", al.raised,
                  al.cleared, al.first_evidence);
    assert_int_equal(al.bad, 0);
    assert_int_equal(al.raised, want_raised);
    assert_int_equal(al.cleared, want_cleared);
    assert_non_null(strstr(al.first_evidence, "top channel ctown."));
    assert_int_equal(cm_metric_value(cm_metric_counter(
                         mx, "suido_anomaly_alerts_total{family=\"learned\"}", NULL)),
                     want_raised);
    assert_int_equal(cm_metric_value(cm_metric_counter(mx, "suido_anomaly_learned_rows_total",
                                                       NULL)),
                     n);
    free(mr);
    free(ptr);
    shard_destroy(&sh);
    assert_null(sh);
    cm_metrics_destroy(&mx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_flags_as_replay),
        cmocka_unit_test(test_skipped_hour_is_a_break),
        cmocka_unit_test(test_missing_channel_is_nan),
        cmocka_unit_test(test_other_kind_ignored),
        cmocka_unit_test(test_bounded_gateways),
        cmocka_unit_test(test_two_kinds_refused),
        cmocka_unit_test(test_shard_raises_learned_alerts),
    };
    return cmocka_run_group_tests_name("live_rows", tests, setup, teardown);
}
