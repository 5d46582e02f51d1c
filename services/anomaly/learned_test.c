/* Unit tests of learned on a small synthetic plant (a tank filled by a pump under level control,
 * drained by a daily demand): training, detection of a falsified level and of a standby pump
 * that starts, causality of learned_step, save/load round trip, and refusal of a wrong format
 * version or a model trained on another profile or channel set. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "learned.h"

#define NCH 5
static const char *const IDS[NCH] = {"plant.level", "plant.flow", "plant.status",
                                     "plant.pressure", "plant.standby"};

static const char *PROFILE =
    "[profile]\nname = Synthetic plant\nversion = 1\n"
    "[channel plant.level]\nquantity = level\nunit = m\nrange = 0, 6\n"
    "[channel plant.flow]\nquantity = flow\nunit = L/s\nrange = 0, 100\n"
    "[channel plant.status]\nquantity = status\nunit = 1\nrange = 0, 1\n"
    "[channel plant.pressure]\nquantity = pressure\nunit = m\nrange = 0, 100\n"
    "[channel plant.standby]\nquantity = flow\nunit = L/s\nrange = 0, 100\n"
    "[channel other.x]\nquantity = level\nunit = m\nrange = 0, 1\n";

static cm_profile *profile_from(const char *text)
{
    char err[CM_CONF_ERRLEN];
    cm_conf *c = NULL;
    cm_profile *p = NULL;
    if (cm_conf_parse("plant.conf", text, strlen(text), &c, err) != CM_OK ||
        cm_profile_parse(c, &p, err) != CM_OK)
        fail_msg("profile: %s", err);
    cm_conf_destroy(&c);
    return p;
}

static uint64_t rng = 88172645463325252ull;
static double uniform(void) /* xorshift64: deterministic, in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

/* n hourly rows of the plant; from row `attack` on, the level reading is offset by +0.8 m
 * (the plant itself runs on; the control uses the true level). */
static double *simulate(size_t n, uint64_t seed, size_t attack)
{
    rng = seed;
    double *v = malloc(n * NCH * sizeof *v);
    double level = 3, status = 1;
    for (size_t t = 0; t < n; t++) {
        double hour = (double)(t % 24);
        double demand = 1.0 + 0.5 * sin(2 * M_PI * hour / 24) + 0.05 * uniform();
        if (level < 2)
            status = 1;
        if (level > 4)
            status = 0;
        double flow = status * (40 + 0.5 * uniform());
        level += 0.02 * flow - 0.4 * demand;
        double *r = v + t * NCH;
        r[0] = level + 0.005 * uniform() + (t >= attack ? 0.8 : 0);
        r[1] = flow;
        r[2] = status;
        r[3] = 20 + 3 * level + 5 * status + 0.1 * uniform();
        r[4] = 0;
    }
    return v;
}

static learned_model *train(const cm_profile *p, const double *v, size_t n)
{
    unsigned char *use = malloc(n), *brk = calloc(n, 1);
    memset(use, 1, n);
    brk[0] = 1;
    learned_data d = {.n_rows = n, .n_ch = NCH, .v = v, .use = use, .brk = brk};
    learned_params par;
    learned_params_default(&par);
    learned_model *m = NULL;
    char err[LEARNED_ERRLEN];
    if (learned_train(p, IDS, NCH, 3600, &d, &par, &m, err) != CM_OK)
        fail_msg("train: %s", err);
    free(use);
    free(brk);
    return m;
}

/* Runs rows [0, n) through a fresh state; writes flags and scores. */
static void run(const learned_model *m, const double *v, size_t n, int *flags, double *scores)
{
    learned_state *st = NULL;
    assert_int_equal(learned_state_new(m, &st), CM_OK);
    for (size_t t = 0; t < n; t++)
        learned_step(m, st, v + t * NCH, &flags[t], &scores[t]);
    learned_state_destroy(&st);
    assert_null(st);
}

static void test_learns_and_detects(void **state)
{
    (void)state;
    cm_profile *p = profile_from(PROFILE);
    double *tr = simulate(3000, 1, (size_t)-1);
    learned_model *m = train(p, tr, 3000);
    assert_int_equal(learned_channel_count(m), NCH);
    assert_int_equal(learned_regressed_count(m), 4); /* standby never moved */

    size_t n = 1000, attack = 600;
    double *te = simulate(n, 7, attack), *sc = malloc(n * sizeof *sc);
    int *fl = malloc(n * sizeof *fl);
    run(m, te, n, fl, sc);
    size_t false_alarms = 0, first = n;
    for (size_t t = 0; t < attack; t++)
        false_alarms += (size_t)fl[t];
    for (size_t t = attack; t < n && first == n; t++)
        if (fl[t])
            first = t;
    print_message("synthetic plant: %zu false alarms in %zu normal rows, attack flagged after "
                  "%zu rows\n", false_alarms, attack, first - attack);
    assert_true(false_alarms <= 6); /* thresholds sit above the worst normal hour */
    assert_true(first <= attack + 2);

    /* A standby pump that starts: at once, explained by that channel. */
    learned_state *st = NULL;
    assert_int_equal(learned_state_new(m, &st), CM_OK);
    int f;
    double s;
    for (size_t t = 0; t < 50; t++)
        learned_step(m, st, te + t * NCH, &f, &s);
    double row[NCH];
    memcpy(row, te + 50 * NCH, sizeof row);
    row[4] = 30;
    learned_step(m, st, row, &f, &s);
    assert_int_equal(f, 1);
    assert_string_equal(learned_channel_id(m, (size_t)learned_state_top(st)), "plant.standby");
    learned_state_destroy(&st);

    free(tr);
    free(te);
    free(sc);
    free(fl);
    learned_destroy(&m);
    assert_null(m);
    cm_profile_destroy(&p);
}

/* The flags and scores of the first k rows do not change when later rows are changed or cut. */
static void test_step_is_causal(void **state)
{
    (void)state;
    cm_profile *p = profile_from(PROFILE);
    double *tr = simulate(3000, 1, (size_t)-1);
    learned_model *m = train(p, tr, 3000);
    size_t n = 800, k = 400;
    double *a = simulate(n, 11, 700), *b = malloc(n * NCH * sizeof *b);
    memcpy(b, a, n * NCH * sizeof *b);
    for (size_t i = k * NCH; i < n * NCH; i++) /* the future: garbage, missing values, attacks */
        b[i] = (i % 7 == 0) ? NAN : 50 * uniform();
    int *fa = malloc(n * sizeof *fa), *fb = malloc(n * sizeof *fb), *fc = malloc(k * sizeof *fc);
    double *sa = malloc(n * sizeof *sa), *sb = malloc(n * sizeof *sb), *sc = malloc(k * sizeof *sc);
    run(m, a, n, fa, sa);
    run(m, b, n, fb, sb);
    run(m, a, k, fc, sc); /* the truncated series */
    for (size_t t = 0; t < k; t++) {
        assert_int_equal(fa[t], fb[t]);
        assert_int_equal(fa[t], fc[t]);
        assert_true(sa[t] == sb[t] && sa[t] == sc[t]);
    }
    size_t differ = 0;
    for (size_t t = k; t < n; t++)
        differ += sa[t] != sb[t];
    assert_true(differ > 0); /* the test would be vacuous otherwise */
    free(tr);
    free(a);
    free(b);
    free(fa);
    free(fb);
    free(fc);
    free(sa);
    free(sb);
    free(sc);
    learned_destroy(&m);
    cm_profile_destroy(&p);
}

static char *tmp_path(const char *name)
{
    static char path[256];
    snprintf(path, sizeof path, "/tmp/suido-learned-test-%d-%s", (int)getpid(), name);
    return path;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc((size_t)n + 1, 1);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return s;
}

/* Replaces the first occurrence of from by to in s (a fresh string). */
static char *replace(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    assert_non_null(at);
    char *out = malloc(strlen(s) + strlen(to) + 1);
    sprintf(out, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return out;
}

static void expect_refused(const char *model_text, const cm_profile *p, const char *needle)
{
    char *path = tmp_path("bad.model"), err[LEARNED_ERRLEN] = "";
    write_text(path, model_text);
    learned_model *m = NULL;
    cm_err rc = learned_load(path, p, &m, err);
    unlink(path);
    if (rc == CM_OK || m || !strstr(err, needle))
        fail_msg("expected refusal with '%s', got '%s'", needle, err);
}

static void test_save_load_and_refusals(void **state)
{
    (void)state;
    cm_profile *p = profile_from(PROFILE);
    double *tr = simulate(3000, 1, (size_t)-1);
    learned_model *m = train(p, tr, 3000);
    char *path = tmp_path("m.model"), err[LEARNED_ERRLEN];
    assert_int_equal(learned_save(m, path, err), CM_OK);
    learned_model *back = NULL;
    assert_int_equal(learned_load(path, p, &back, err), CM_OK);
    size_t n = 500;
    double *te = simulate(n, 5, 300), *s1 = malloc(n * sizeof *s1), *s2 = malloc(n * sizeof *s2);
    int *f1 = malloc(n * sizeof *f1), *f2 = malloc(n * sizeof *f2);
    run(m, te, n, f1, s1);
    run(back, te, n, f2, s2);
    for (size_t t = 0; t < n; t++) /* 17 significant digits: bit-identical */
        assert_true(f1[t] == f2[t] && s1[t] == s2[t]);

    char *text = read_text(path);
    unlink(path);
    char *t1 = replace(text, "suido-anomaly-model 1", "suido-anomaly-model 2");
    expect_refused(t1, p, "model format version 2; this build reads version 1");
    char *t2 = replace(text, "suido-anomaly-model 1", "something else");
    expect_refused(t2, p, "not a suido-anomaly model file");
    char *t3 = malloc(strlen(text) + 1);
    strcpy(t3, text);
    t3[strlen(t3) - 4] = '\0'; /* "end\n" cut off */
    expect_refused(t3, p, "truncated");
    char *t4 = replace(text, "r plant.level ", "r plant.level x");
    expect_refused(t4, p, "spread and threshold");

    /* Another profile name; a channel set that changed; a unit that changed. */
    cm_profile *renamed = profile_from("[profile]\nname = Other\nversion = 1\n"
                                       "[channel plant.level]\nquantity = l\nunit = m\n"
                                       "range = 0, 6\n");
    expect_refused(text, renamed, "trained on profile 'Synthetic plant', not on 'Other'");
    char *more = replace(PROFILE, "[channel other.x]",
                         "[channel plant.extra]\nquantity = l\nunit = m\nrange = 0, 1\n"
                         "[channel other.x]");
    cm_profile *added = profile_from(more);
    expect_refused(text, added, "profile channel 'plant.extra' is not in the model");
    char *fewer = replace(PROFILE, "[channel plant.standby]", "[channel plant.standby2]");
    cm_profile *removed = profile_from(fewer);
    expect_refused(text, removed, "model channel 'plant.standby' is not in profile");
    char *bar = replace(PROFILE, "unit = m\nrange = 0, 100", "unit = bar\nrange = 0, 100");
    cm_profile *unit = profile_from(bar);
    expect_refused(text, unit, "channel 'plant.pressure' was trained in unit 'm'");

    free(text);
    free(t1);
    free(t2);
    free(t3);
    free(t4);
    free(more);
    free(fewer);
    free(bar);
    cm_profile_destroy(&renamed);
    cm_profile_destroy(&added);
    cm_profile_destroy(&removed);
    cm_profile_destroy(&unit);
    free(tr);
    free(te);
    free(s1);
    free(s2);
    free(f1);
    free(f2);
    learned_destroy(&m);
    learned_destroy(&back);
    cm_profile_destroy(&p);
}

static void test_training_refusals(void **state)
{
    (void)state;
    cm_profile *p = profile_from(PROFILE);
    double *tr = simulate(30, 1, (size_t)-1); /* 29 samples for 4 x 9 coefficients: too few */
    unsigned char use[30], brk[30] = {1};
    memset(use, 1, sizeof use);
    learned_data d = {.n_rows = 30, .n_ch = NCH, .v = tr, .use = use, .brk = brk};
    learned_params par;
    learned_params_default(&par);
    learned_model *m = NULL;
    char err[LEARNED_ERRLEN];
    assert_int_not_equal(learned_train(p, IDS, NCH, 3600, &d, &par, &m, err), CM_OK);
    assert_non_null(strstr(err, "usable training rows"));
    memset(use, 0, sizeof use); /* nothing known to be normal */
    assert_int_not_equal(learned_train(p, IDS, NCH, 3600, &d, &par, &m, err), CM_OK);
    assert_non_null(strstr(err, "only 0 usable"));
    memset(use, 1, sizeof use);
    par.on = 0.5; /* off above on */
    assert_int_not_equal(learned_train(p, IDS, NCH, 3600, &d, &par, &m, err), CM_OK);
    assert_non_null(strstr(err, "invalid parameters"));
    learned_params_default(&par);
    const char *ids[NCH] = {"plant.level", "plant.flow", "plant.nope", "plant.pressure",
                            "plant.standby"};
    assert_int_not_equal(learned_train(p, ids, NCH, 3600, &d, &par, &m, err), CM_OK);
    assert_non_null(strstr(err, "'plant.nope' is not in the profile"));
    assert_null(m);
    free(tr);
    cm_profile_destroy(&p);
}

/* The shipped C-Town profile loads: one channel per BATADAL column. */
static void test_ctown_profile_loads(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    if (cm_profile_load("examples/ctown/profile.conf", &p, err) != CM_OK)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_channel_count(p), 43);
    const cm_channel *c = cm_profile_channel(p, "ctown", "l_t1");
    assert_non_null(c);
    assert_string_equal(c->unit, "m");
    assert_true(c->range_min == 0 && c->range_max == 6.5);
    assert_true(cm_profile_channel(p, "ctown", "l_t3")->range_max == 6.75);
    assert_string_equal(cm_profile_channel(p, "ctown", "f_pu1")->unit, "L/s");
    assert_string_equal(cm_profile_channel(p, "ctown", "s_v2")->unit, "1");
    assert_true(cm_profile_channel(p, "ctown", "p_j422")->period_s == 3600);
    cm_profile_destroy(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learns_and_detects),
        cmocka_unit_test(test_step_is_causal),
        cmocka_unit_test(test_save_load_and_refusals),
        cmocka_unit_test(test_training_refusals),
        cmocka_unit_test(test_ctown_profile_loads),
    };
    return cmocka_run_group_tests_name("learned", tests, NULL, NULL);
}
