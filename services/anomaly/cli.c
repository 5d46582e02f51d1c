/* cli: suido-anomaly train and replay (see cli.h). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cm_profile.h"
#include "history.h"
#include "learned.h"

#define MAX_FILES 64
#define ERRLEN 1024

static void usage(void)
{
    fprintf(stderr,
            "usage: suido-anomaly train --profile PROFILE --history CSV [--history CSV ...]\n"
            "                           [--labels CSV] --model MODEL [--resolution R]\n"
            "                           [--alpha A] [--cap C] [--on X] [--off Y] [--folds K]\n"
            "       suido-anomaly replay --profile PROFILE --model MODEL --csv CSV\n"
            "                            --out FLAGS.csv [--explain EXPLAIN.csv]\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The profile channel a CSV header names (see cli.h), or NULL with the reason in err. */
static const cm_channel *channel_of(const cm_profile *p, const char *header, char *err)
{
    char low[128];
    size_t n = strlen(header);
    if (n >= sizeof low) {
        snprintf(err, ERRLEN, "column name '%.40s...' too long", header);
        return NULL;
    }
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)tolower((unsigned char)header[i]);
    const cm_channel *found = NULL;
    for (size_t i = 0; i < cm_profile_channel_count(p); i++) {
        const cm_channel *c = cm_profile_channel_at(p, i);
        if (strcmp(c->id, low) == 0)
            return c;
        if (strcmp(c->name, low) == 0) {
            if (found) {
                snprintf(err, ERRLEN, "column '%s' is ambiguous: both %s and %s; name it "
                         "<kind>.<name>", header, found->id, c->id);
                return NULL;
            }
            found = c;
        }
    }
    if (!found)
        snprintf(err, ERRLEN, "column '%s' is not a channel of profile '%s'", header,
                 cm_profile_name(p));
    return found;
}

/* Maps every model channel to its column of h (col[i]); refuses unknown or missing columns. */
static int map_columns(const cm_profile *p, const history *h, const char *const *ids, size_t n,
                       int *col, char *err)
{
    for (size_t i = 0; i < n; i++)
        col[i] = -1;
    for (size_t c = 0; c < h->n_cols; c++) {
        char why[ERRLEN];
        const cm_channel *ch = channel_of(p, h->cols[c], why);
        if (!ch) {
            snprintf(err, ERRLEN, "%s:1: %s", h->name, why);
            return -1;
        }
        size_t i = 0;
        while (i < n && strcmp(ids[i], ch->id) != 0)
            i++;
        if (i == n) {
            snprintf(err, ERRLEN, "%s:1: column '%s' (%s) is not a channel of the model",
                     h->name, h->cols[c], ch->id);
            return -1;
        }
        if (col[i] >= 0) {
            snprintf(err, ERRLEN, "%s:1: columns '%s' and '%s' are both %s", h->name,
                     h->cols[col[i]], h->cols[c], ch->id);
            return -1;
        }
        col[i] = (int)c;
    }
    for (size_t i = 0; i < n; i++)
        if (col[i] < 0) {
            snprintf(err, ERRLEN, "%s:1: no column for channel %s", h->name, ids[i]);
            return -1;
        }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The sampling period: the median step between consecutive rows of all files. */
static double median_step(history *const *hs, size_t nh)
{
    size_t total = 0, k = 0;
    for (size_t f = 0; f < nh; f++)
        total += hs[f]->n_rows ? hs[f]->n_rows - 1 : 0;
    if (total == 0)
        return 0;
    int64_t *d = malloc(total * sizeof *d);
    if (!d)
        return 0;
    for (size_t f = 0; f < nh; f++)
        for (size_t t = 1; t < hs[f]->n_rows; t++)
            d[k++] = hs[f]->ts[t] - hs[f]->ts[t - 1];
    qsort(d, k, sizeof *d, cmp_i64);
    double med = (double)d[k / 2];
    free(d);
    return med;
}

/* Replays h through model m from a fresh state; flags[] (n_rows) receives the flags. out/explain
 * may be NULL. Returns the number of gaps seen, or -1 on failure. */
static long replay_rows(const learned_model *m, const history *h, const int *col, int *flags,
                        FILE *out, FILE *explain, char *err)
{
    size_t n = learned_channel_count(m);
    double *row = malloc(n * sizeof *row);
    learned_state *st = NULL;
    if (!row || learned_state_new(m, &st) != CM_OK) {
        free(row);
        snprintf(err, ERRLEN, "out of memory");
        return -1;
    }
    long gaps = 0;
    int prev_flag = 0;
    for (size_t t = 0; t < h->n_rows; t++) {
        if (t > 0 && (double)(h->ts[t] - h->ts[t - 1]) != learned_period(m)) {
            learned_state_break(st);
            gaps++;
        }
        for (size_t i = 0; i < n; i++)
            row[i] = h->v[t * h->n_cols + (size_t)col[i]];
        int flag;
        double score;
        learned_step(m, st, row, &flag, &score);
        flags[t] = flag;
        char stamp[20];
        history_format_time(h->ts[t], stamp);
        int top = learned_state_top(st);
        const char *why = top >= 0 ? learned_channel_id(m, (size_t)top) : "";
        if (out)
            fprintf(out, "%s,%d,%.4f\n", stamp, flag, score);
        if (explain)
            fprintf(explain, "%s,%d,%.4f,%s\n", stamp, flag, score, why);
        if (out && flag != prev_flag)
            fprintf(stderr, "suido-anomaly replay: %s %s score=%.2f channel=%s\n", stamp,
                    flag ? "raised" : "cleared", score, why);
        prev_flag = flag;
    }
    free(row);
    learned_state_destroy(&st);
    return gaps;
}

typedef struct opts {
    const char *profile, *model, *csv, *out, *explain;
    const char *history[MAX_FILES];
    size_t n_history;
    const char *labels[MAX_FILES];
    size_t n_labels;
    learned_params par;
} opts;

static int parse_double(const char *flag, const char *s, double *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (e == s || *e || errno || !isfinite(v)) {
        fprintf(stderr, "suido-anomaly: %s needs a number, not '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, int train, opts *o)
{
    memset(o, 0, sizeof *o);
    learned_params_default(&o->par);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "suido-anomaly: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double d;
        if (strcmp(a, "--profile") == 0)
            o->profile = v;
        else if (strcmp(a, "--model") == 0)
            o->model = v;
        else if (train && strcmp(a, "--history") == 0) {
            if (o->n_history >= MAX_FILES)
                return fprintf(stderr, "suido-anomaly: at most %d --history\n", MAX_FILES), -1;
            o->history[o->n_history++] = v;
        } else if (train && strcmp(a, "--labels") == 0) {
            if (o->n_labels >= MAX_FILES)
                return fprintf(stderr, "suido-anomaly: at most %d --labels\n", MAX_FILES), -1;
            o->labels[o->n_labels++] = v;
        } else if (train && strcmp(a, "--resolution") == 0) {
            if (parse_double(a, v, &o->par.resolution))
                return -1;
        } else if (train && strcmp(a, "--alpha") == 0) {
            if (parse_double(a, v, &o->par.alpha))
                return -1;
        } else if (train && strcmp(a, "--cap") == 0) {
            if (parse_double(a, v, &o->par.cap))
                return -1;
        } else if (train && strcmp(a, "--on") == 0) {
            if (parse_double(a, v, &o->par.on))
                return -1;
        } else if (train && strcmp(a, "--off") == 0) {
            if (parse_double(a, v, &o->par.off))
                return -1;
        } else if (train && strcmp(a, "--folds") == 0) {
            if (parse_double(a, v, &d) || d != floor(d) || d < 2 || d > 100)
                return fprintf(stderr, "suido-anomaly: --folds must be 2..100\n"), -1;
            o->par.folds = (int)d;
        } else if (!train && strcmp(a, "--csv") == 0)
            o->csv = v;
        else if (!train && strcmp(a, "--out") == 0)
            o->out = v;
        else if (!train && strcmp(a, "--explain") == 0)
            o->explain = v;
        else {
            fprintf(stderr, "suido-anomaly: unknown option %s\n", a);
            return -1;
        }
    }
    if (!o->profile || !o->model || (train && o->n_history == 0) ||
        (!train && (!o->csv || !o->out))) {
        fprintf(stderr, "suido-anomaly: missing a required option\n");
        return -1;
    }
    return 0;
}

typedef struct stamp_label {
    int64_t ts;
    signed char label;
} stamp_label;

static int cmp_stamp(const void *a, const void *b)
{
    return cmp_i64(&((const stamp_label *)a)->ts, &((const stamp_label *)b)->ts);
}

static int cmd_train(const opts *o)
{
    double t0 = now_s();
    char err[ERRLEN], cerr[CM_CONF_ERRLEN], herr[HISTORY_ERRLEN], lerr[LEARNED_ERRLEN];
    int rc = 1;
    cm_profile *p = NULL;
    history *hs[MAX_FILES] = {0};
    history *lab = NULL;
    stamp_label *sl = NULL;
    size_t n_sl = 0;
    const char **ids = NULL;
    int *cols = NULL, *flags = NULL;
    double *v = NULL;
    unsigned char *use = NULL, *brk = NULL;
    learned_model *m = NULL;

    if (cm_profile_load(o->profile, &p, cerr) != CM_OK) {
        fprintf(stderr, "suido-anomaly train: %s\n", cerr);
        goto done;
    }
    for (size_t f = 0; f < o->n_history; f++)
        if (history_load(o->history[f], &hs[f], herr) != CM_OK) {
            fprintf(stderr, "suido-anomaly train: %s\n", herr);
            goto done;
        }
    /* --labels files: (timestamp, label) pairs that override the history's own labels. */
    for (size_t f = 0; f < o->n_labels; f++) {
        if (history_load(o->labels[f], &lab, herr) != CM_OK) {
            fprintf(stderr, "suido-anomaly train: %s\n", herr);
            goto done;
        }
        if (!lab->has_label) {
            fprintf(stderr, "suido-anomaly train: %s: no ATT_FLAG or label column\n",
                    o->labels[f]);
            goto done;
        }
        stamp_label *ns = realloc(sl, (n_sl + lab->n_rows + 1) * sizeof *sl);
        if (!ns)
            goto nomem;
        sl = ns;
        for (size_t t = 0; t < lab->n_rows; t++)
            sl[n_sl++] = (stamp_label){lab->ts[t], lab->label[t]};
        history_destroy(&lab);
    }
    if (n_sl)
        qsort(sl, n_sl, sizeof *sl, cmp_stamp);

    /* The model's channels: the profile channels the first file has, in profile order. */
    size_t np = cm_profile_channel_count(p), n = 0;
    ids = calloc(np, sizeof *ids);
    cols = calloc(np, sizeof *cols);
    if (!ids || !cols)
        goto nomem;
    for (size_t c = 0; c < hs[0]->n_cols; c++) {
        const cm_channel *ch = channel_of(p, hs[0]->cols[c], err);
        if (!ch) {
            fprintf(stderr, "suido-anomaly train: %s:1: %s\n", hs[0]->name, err);
            goto done;
        }
    }
    for (size_t k = 0; k < np; k++) {
        const cm_channel *ch = cm_profile_channel_at(p, k);
        for (size_t c = 0; c < hs[0]->n_cols; c++)
            if (channel_of(p, hs[0]->cols[c], err) == ch) {
                ids[n++] = ch->id;
                break;
            }
    }
    for (size_t k = 0; k < np; k++) { /* every channel of the kinds used must have a column */
        const cm_channel *ch = cm_profile_channel_at(p, k);
        int used = 0, have = 0;
        for (size_t i = 0; i < n; i++) {
            size_t kl = strlen(ch->kind);
            used |= strncmp(ids[i], ch->kind, kl) == 0 && ids[i][kl] == '.';
            have |= ids[i] == ch->id;
        }
        if (used && !have) {
            fprintf(stderr, "suido-anomaly train: %s:1: no column for profile channel %s\n",
                    hs[0]->name, ch->id);
            goto done;
        }
    }

    size_t rows = 0;
    for (size_t f = 0; f < o->n_history; f++)
        rows += hs[f]->n_rows;
    double period = median_step(hs, o->n_history);
    if (!(period > 0)) {
        fprintf(stderr, "suido-anomaly train: cannot tell the sampling period (need two rows "
                        "with increasing timestamps)\n");
        goto done;
    }
    v = malloc((rows ? rows : 1) * n * sizeof *v);
    use = calloc(rows ? rows : 1, 1);
    brk = calloc(rows ? rows : 1, 1);
    if (!v || !use || !brk)
        goto nomem;
    size_t r = 0, normal = 0, attack = 0, unknown = 0;
    for (size_t f = 0; f < o->n_history; f++) {
        history *h = hs[f];
        if (map_columns(p, h, ids, n, cols, err) != 0) {
            fprintf(stderr, "suido-anomaly train: %s\n", err);
            goto done;
        }
        for (size_t t = 0; t < h->n_rows; t++, r++) {
            for (size_t i = 0; i < n; i++)
                v[r * n + i] = h->v[t * h->n_cols + (size_t)cols[i]];
            stamp_label key = {h->ts[t], 0};
            const stamp_label *hit =
                n_sl ? bsearch(&key, sl, n_sl, sizeof *sl, cmp_stamp) : NULL;
            if (hit)
                h->label[t] = hit->label; /* so the report below sees the joined label */
            use[r] = h->label[t] == HISTORY_NORMAL;
            brk[r] = t == 0 || (double)(h->ts[t] - h->ts[t - 1]) != period;
            normal += h->label[t] == HISTORY_NORMAL;
            attack += h->label[t] == HISTORY_ATTACK;
            unknown += h->label[t] == HISTORY_UNKNOWN;
        }
    }
    printf("train: %zu rows from %zu file(s): %zu normal, %zu attack, %zu unknown; "
           "%zu channels; period %.0f s\n",
           rows, o->n_history, normal, attack, unknown, n, period);
    learned_data d = {.n_rows = rows, .n_ch = n, .v = v, .use = use, .brk = brk};
    if (learned_train(p, ids, n, period, &d, &o->par, &m, lerr) != CM_OK) {
        fprintf(stderr, "suido-anomaly train: %s\n", lerr);
        goto done;
    }
    if (learned_save(m, o->model, lerr) != CM_OK) {
        fprintf(stderr, "suido-anomaly train: %s\n", lerr);
        goto done;
    }
    printf("train: model %s: %zu regressed and %zu constant channels (%.2f s)\n", o->model,
           learned_regressed_count(m), n - learned_regressed_count(m), now_s() - t0);

    /* Sanity report: the training files replayed causally, flags counted on labelled rows
     * (in-sample for the normal rows, so an optimistic false-alarm rate). */
    for (size_t f = 0; f < o->n_history; f++) {
        history *h = hs[f];
        free(flags);
        if (!(flags = calloc(h->n_rows ? h->n_rows : 1, sizeof *flags)))
            goto nomem;
        if (map_columns(p, h, ids, n, cols, err) != 0 ||
            replay_rows(m, h, cols, flags, NULL, NULL, err) < 0) {
            fprintf(stderr, "suido-anomaly train: %s\n", err);
            goto done;
        }
        size_t fn = 0, nn = 0, fa = 0, na = 0;
        for (size_t t = 0; t < h->n_rows; t++) {
            nn += h->label[t] == HISTORY_NORMAL;
            fn += h->label[t] == HISTORY_NORMAL && flags[t];
            na += h->label[t] == HISTORY_ATTACK;
            fa += h->label[t] == HISTORY_ATTACK && flags[t];
        }
        printf("train: %s: flagged %zu of %zu normal rows, %zu of %zu attack rows\n", h->name,
               fn, nn, fa, na);
    }
    rc = 0;
    goto done;
nomem:
    fprintf(stderr, "suido-anomaly train: out of memory\n");
done:
    learned_destroy(&m);
    for (size_t f = 0; f < MAX_FILES; f++)
        history_destroy(&hs[f]);
    history_destroy(&lab);
    cm_profile_destroy(&p);
    free(sl);
    free(ids);
    free(cols);
    free(flags);
    free(v);
    free(use);
    free(brk);
    return rc;
}

static int cmd_replay(const opts *o)
{
    double t0 = now_s();
    char err[ERRLEN], cerr[CM_CONF_ERRLEN], herr[HISTORY_ERRLEN], lerr[LEARNED_ERRLEN];
    char tmp[4096];
    int rc = 1;
    cm_profile *p = NULL;
    learned_model *m = NULL;
    history *h = NULL;
    const char **ids = NULL;
    int *cols = NULL, *flags = NULL;
    FILE *out = NULL, *explain = NULL;
    snprintf(tmp, sizeof tmp, "%s.tmp", o->out);

    if (cm_profile_load(o->profile, &p, cerr) != CM_OK) {
        fprintf(stderr, "suido-anomaly replay: %s\n", cerr);
        goto done;
    }
    if (learned_load(o->model, p, &m, lerr) != CM_OK) {
        fprintf(stderr, "suido-anomaly replay: %s\n", lerr);
        goto done;
    }
    if (history_load(o->csv, &h, herr) != CM_OK) {
        fprintf(stderr, "suido-anomaly replay: %s\n", herr);
        goto done;
    }
    size_t n = learned_channel_count(m);
    ids = calloc(n, sizeof *ids);
    cols = calloc(n, sizeof *cols);
    flags = calloc(h->n_rows ? h->n_rows : 1, sizeof *flags);
    if (!ids || !cols || !flags) {
        fprintf(stderr, "suido-anomaly replay: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = learned_channel_id(m, i);
    if (map_columns(p, h, ids, n, cols, err) != 0) {
        fprintf(stderr, "suido-anomaly replay: %s\n", err);
        goto done;
    }
    if (!(out = fopen(tmp, "w"))) {
        fprintf(stderr, "suido-anomaly replay: %s: %s\n", tmp, strerror(errno));
        goto done;
    }
    if (o->explain && !(explain = fopen(o->explain, "w"))) {
        fprintf(stderr, "suido-anomaly replay: %s: %s\n", o->explain, strerror(errno));
        goto done;
    }
    fprintf(out, "timestamp,flag,score\n");
    if (explain)
        fprintf(explain, "timestamp,flag,score,channel\n");
    long gaps = replay_rows(m, h, cols, flags, out, explain, err);
    if (gaps < 0) {
        fprintf(stderr, "suido-anomaly replay: %s\n", err);
        goto done;
    }
    int bad = ferror(out) != 0;
    bad |= fclose(out) != 0;
    out = NULL;
    if (explain) {
        bad |= ferror(explain) != 0;
        bad |= fclose(explain) != 0;
        explain = NULL;
    }
    if (bad || rename(tmp, o->out) != 0) {
        fprintf(stderr, "suido-anomaly replay: %s: write failed\n", o->out);
        goto done;
    }
    size_t flagged = 0;
    for (size_t t = 0; t < h->n_rows; t++)
        flagged += flags[t] != 0;
    fprintf(stderr, "suido-anomaly replay: %zu rows, %zu flagged, %ld gaps (%.2f s)\n",
            h->n_rows, flagged, gaps, now_s() - t0);
    rc = 0;
done:
    if (out) {
        fclose(out);
        remove(tmp);
    }
    if (explain)
        fclose(explain);
    cm_profile_destroy(&p);
    learned_destroy(&m);
    history_destroy(&h);
    free(ids);
    free(cols);
    free(flags);
    return rc;
}

int anomaly_cli(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    int train = strcmp(argv[1], "train") == 0;
    if (!train && strcmp(argv[1], "replay") != 0) {
        usage();
        return 2;
    }
    opts o;
    if (parse_opts(argc, argv, train, &o) != 0) {
        usage();
        return 2;
    }
    return train ? cmd_train(&o) : cmd_replay(&o);
}
