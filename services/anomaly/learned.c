/* learned: training, the model file and the detection step of the learned checker (learned.h). */
#include "learned.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_errno.h>
#include <gsl/gsl_linalg.h>

#define MAGIC "suido-anomaly-model"
#define MIN_ROWS_PER_FEATURE 4 /* fewer usable rows than 4 per coefficient is not a model */

typedef struct lchan {
    char id[96];
    char unit[16];
    int reg;       /* index among the regressed channels, or -1: expected constant */
    double value;  /* constant channels: the expected value; regressed: the normal mean */
} lchan;

struct learned_model {
    char profile[128];
    long profile_version;
    learned_params par;
    double period_s;
    size_t n;       /* channels */
    lchan *ch;
    size_t m;       /* regressed channels */
    size_t *reg_ch; /* regressed index -> channel index */
    double *spread; /* per regressed: out-of-fold residual RMS */
    double *thresh; /* per regressed: worst normal EWMA of |z| */
    double *coef;   /* m rows of 1 + 2m: intercept, weights on x(t) of the regressed channels
                       (own weight 0), weights on x(t-1) of the regressed channels */
};

struct learned_state {
    size_t n, m;
    int has_prev;
    int flag;
    int top;
    double *prev;  /* previous row as judged (rounded, missing values held) */
    double *cur;   /* scratch for the current row */
    unsigned char *missing;
    double *e;     /* per regressed: EWMA of capped |z| */
};

__attribute__((format(printf, 2, 3))) static cm_err failf(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, LEARNED_ERRLEN, fmt, ap);
    va_end(ap);
    return CM_ERR_INVAL;
}

void learned_params_default(learned_params *p)
{
    p->resolution = 0.01;
    p->alpha = 0.25;
    p->cap = 12;
    p->on = 1.1;
    p->off = 0.6;
    p->ridge = 1e-6;
    p->folds = 5;
}

static int params_valid(const learned_params *p, char *err)
{
    if (!(p->resolution >= 0 && isfinite(p->resolution)) || !(p->alpha > 0 && p->alpha <= 1) ||
        !(p->cap > 0 && isfinite(p->cap)) || !(p->off > 0 && p->off <= p->on && isfinite(p->on)) ||
        !(p->ridge >= 0 && isfinite(p->ridge)) || p->folds < 2 || p->folds > 100) {
        failf(err, "invalid parameters: need resolution >= 0, 0 < alpha <= 1, cap > 0, "
                   "0 < off <= on, ridge >= 0, 2 <= folds <= 100");
        return 0;
    }
    return 1;
}

static double quantise(double x, double res)
{
    return res > 0 && isfinite(x) ? round(x / res) * res : x;
}

void learned_destroy(learned_model **mp)
{
    if (!mp || !*mp)
        return;
    learned_model *m = *mp;
    free(m->ch);
    free(m->reg_ch);
    free(m->spread);
    free(m->thresh);
    free(m->coef);
    free(m);
    *mp = NULL;
}

/* Allocates the per-regressed arrays once n, ch[].reg and m are known. */
static int alloc_regressed(learned_model *m)
{
    size_t k = m->m ? m->m : 1;
    m->reg_ch = calloc(k, sizeof *m->reg_ch);
    m->spread = calloc(k, sizeof *m->spread);
    m->thresh = calloc(k, sizeof *m->thresh);
    m->coef = calloc(k * (1 + 2 * m->m), sizeof *m->coef);
    if (!m->reg_ch || !m->spread || !m->thresh || !m->coef)
        return -1;
    for (size_t i = 0; i < m->n; i++)
        if (m->ch[i].reg >= 0)
            m->reg_ch[m->ch[i].reg] = i;
    return 0;
}

/* ---- training ---- */

/* Solves (A + shift I) x = b for a symmetric positive semi-definite A (dimension k) by Cholesky,
 * growing the shift until the factorisation succeeds (a predictor that never varies in a fold
 * makes A singular; the shift then gives it weight ~0). */
static int solve_spd(const double *A, const double *b, size_t k, double shift, double *x)
{
    if (k == 0)
        return 0;
    gsl_matrix *M = gsl_matrix_alloc(k, k);
    gsl_vector *vb = gsl_vector_alloc(k), *vx = gsl_vector_alloc(k);
    int rc = -1;
    if (!M || !vb || !vx)
        goto done;
    for (int attempt = 0; attempt < 8; attempt++, shift *= 100) {
        for (size_t i = 0; i < k; i++) {
            for (size_t j = 0; j < k; j++)
                gsl_matrix_set(M, i, j, A[i * k + j]);
            gsl_matrix_set(M, i, i, A[i * k + i] + shift);
            gsl_vector_set(vb, i, b[i]);
        }
        if (gsl_linalg_cholesky_decomp1(M) == GSL_SUCCESS &&
            gsl_linalg_cholesky_solve(M, vb, vx) == GSL_SUCCESS) {
            for (size_t i = 0; i < k; i++)
                x[i] = gsl_vector_get(vx, i);
            rc = 0;
            break;
        }
    }
done:
    gsl_matrix_free(M);
    gsl_vector_free(vb);
    gsl_vector_free(vx);
    return rc;
}

/* Features of sample row t: x(t) then x(t-1) of the regressed channels (rounded values). */
static void features(const learned_model *m, const double *q, size_t n_ch, size_t t, double *f)
{
    for (size_t r = 0; r < m->m; r++) {
        f[r] = q[t * n_ch + m->reg_ch[r]];
        f[m->m + r] = q[(t - 1) * n_ch + m->reg_ch[r]];
    }
}

/* Fits every regressed channel from the moments of the folds other than `skip` (skip = -1: all
 * folds) and writes m->m coefficient rows into coef. cnt/sum/gram are per fold, centred on ref. */
static int fit_all(const learned_model *m, int folds, int skip, const double *cnt,
                   const double *sum, const double *gram, const double *ref, double *coef)
{
    size_t P = 2 * m->m, K = P - 1;
    double n = 0;
    double *mu = calloc(P, sizeof *mu), *C = calloc(P * P, sizeof *C);
    double *A = calloc(K > 0 ? K * K : 1, sizeof *A), *b = calloc(P, sizeof *b);
    double *w = calloc(P, sizeof *w);
    size_t *idx = calloc(P, sizeof *idx);
    int rc = -1;
    if (!mu || !C || !A || !b || !w || !idx)
        goto done;
    for (int f = 0; f < folds; f++) {
        if (f == skip)
            continue;
        n += cnt[f];
        for (size_t i = 0; i < P; i++)
            mu[i] += sum[(size_t)f * P + i];
        for (size_t i = 0; i < P * P; i++)
            C[i] += gram[(size_t)f * P * P + i];
    }
    if (n < 2)
        goto done;
    for (size_t i = 0; i < P; i++)
        mu[i] /= n;
    for (size_t i = 0; i < P; i++)
        for (size_t j = 0; j < P; j++)
            C[i * P + j] = C[i * P + j] / n - mu[i] * mu[j];
    double trace = 0;
    for (size_t i = 0; i < P; i++)
        trace += C[i * P + i];
    double shift = 1e-12 * (trace / (double)P) + 1e-12;
    for (size_t j = 0; j < m->m; j++) {
        size_t k = 0;
        for (size_t i = 0; i < P; i++)
            if (i != j) /* a channel is never predicted from its own current reading */
                idx[k++] = i;
        for (size_t a = 0; a < K; a++) {
            for (size_t c = 0; c < K; c++)
                A[a * K + c] = C[idx[a] * P + idx[c]];
            A[a * K + a] += m->par.ridge * C[idx[a] * P + idx[a]];
            b[a] = C[idx[a] * P + j];
        }
        if (solve_spd(A, b, K, shift, w) != 0)
            goto done;
        double *row = coef + j * (1 + P);
        memset(row, 0, (1 + P) * sizeof *row);
        /* prediction = ref_j + mu_j + sum w (f - ref - mu) = intercept + sum w f */
        double icpt = ref[j] + mu[j];
        for (size_t a = 0; a < K; a++) {
            row[1 + idx[a]] = w[a];
            icpt -= w[a] * (ref[idx[a]] + mu[idx[a]]);
        }
        row[0] = icpt;
    }
    rc = 0;
done:
    free(mu);
    free(C);
    free(A);
    free(b);
    free(w);
    free(idx);
    return rc;
}

static double predict(const double *row, const double *f, size_t P)
{
    double y = row[0];
    for (size_t i = 0; i < P; i++)
        y += row[1 + i] * f[i];
    return y;
}

cm_err learned_train(const cm_profile *p, const char *const *ids, size_t n_ch, double period_s,
                     const learned_data *d, const learned_params *par, learned_model **out,
                     char err[LEARNED_ERRLEN])
{
    *out = NULL;
    if (!params_valid(par, err))
        return CM_ERR_INVAL;
    if (d->n_ch != n_ch || n_ch == 0)
        return failf(err, "training data has %zu columns for %zu channels", d->n_ch, n_ch);
    if (!(period_s > 0))
        return failf(err, "sampling period must be > 0");
    gsl_set_error_handler_off(); /* GSL reports through return codes, never abort() */
    cm_err rc = CM_ERR_NOMEM;
    learned_model *m = calloc(1, sizeof *m);
    double *q = NULL, *cnt = NULL, *sum = NULL, *gram = NULL, *ref = NULL, *f = NULL;
    double *foldcoef = NULL, *res = NULL;
    size_t *sample = NULL;
    if (!m || !(m->ch = calloc(n_ch, sizeof *m->ch)))
        goto fail;
    snprintf(m->profile, sizeof m->profile, "%s", cm_profile_name(p));
    m->profile_version = cm_profile_version(p);
    m->par = *par;
    m->period_s = period_s;
    m->n = n_ch;
    for (size_t i = 0; i < n_ch; i++) {
        const char *dot = strchr(ids[i], '.');
        char kind[32];
        snprintf(kind, sizeof kind, "%.*s", dot ? (int)(dot - ids[i]) : 0, ids[i]);
        const cm_channel *c = dot ? cm_profile_channel(p, kind, dot + 1) : NULL;
        if (!c) {
            rc = failf(err, "channel '%s' is not in the profile", ids[i]);
            goto fail;
        }
        if (strpbrk(c->unit, " \t")) { /* the model file separates fields by spaces */
            rc = failf(err, "unit '%s' of channel '%s' contains a space", c->unit, c->id);
            goto fail;
        }
        snprintf(m->ch[i].id, sizeof m->ch[i].id, "%s", c->id);
        snprintf(m->ch[i].unit, sizeof m->ch[i].unit, "%s", c->unit);
    }

    /* Rounded copy of the data, and the rows that are samples: normal, with a normal,
     * complete predecessor one period earlier. */
    size_t R = d->n_rows, N = 0;
    q = malloc((R ? R : 1) * n_ch * sizeof *q);
    sample = malloc((R ? R : 1) * sizeof *sample);
    if (!q || !sample)
        goto fail;
    for (size_t i = 0; i < R * n_ch; i++)
        q[i] = quantise(d->v[i], par->resolution);
    for (size_t t = 1; t < R; t++) {
        if (!d->use[t] || !d->use[t - 1] || d->brk[t])
            continue;
        int ok = 1;
        for (size_t c = 0; c < n_ch && ok; c++)
            ok = !isnan(q[t * n_ch + c]) && !isnan(q[(t - 1) * n_ch + c]);
        if (ok)
            sample[N++] = t;
    }
    if (N < 2) {
        rc = failf(err, "only %zu usable training rows (normal, complete, following a normal "
                        "row one period earlier)", N);
        goto fail;
    }

    /* Channels that never moved are expected to stay; the others are regressed. */
    for (size_t c = 0; c < n_ch; c++) {
        double lo = INFINITY, hi = -INFINITY, s = 0;
        for (size_t k = 0; k < N; k++) {
            double v = q[sample[k] * n_ch + c];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            s += v;
        }
        int constant = hi - lo <= 0.5 * par->resolution;
        m->ch[c].reg = constant ? -1 : (int)m->m++;
        m->ch[c].value = constant ? q[sample[0] * n_ch + c] : s / (double)N;
    }
    if (alloc_regressed(m) != 0)
        goto fail;
    size_t P = 2 * m->m, F = (size_t)par->folds;
    if (m->m > 0 && N < MIN_ROWS_PER_FEATURE * (P + 1) * F / (F - 1)) {
        rc = failf(err, "%zu usable training rows for %zu varying channels: need at least %zu",
                   N, m->m, (size_t)MIN_ROWS_PER_FEATURE * (P + 1) * F / (F - 1));
        goto fail;
    }

    if (m->m > 0) {
        /* Moments per contiguous fold, centred on the overall mean for accuracy. */
        cnt = calloc(F, sizeof *cnt);
        sum = calloc(F * P, sizeof *sum);
        gram = calloc(F * P * P, sizeof *gram);
        ref = calloc(P, sizeof *ref);
        f = calloc(P, sizeof *f);
        foldcoef = calloc((F + 1) * m->m * (1 + P), sizeof *foldcoef);
        res = calloc(N * m->m, sizeof *res);
        if (!cnt || !sum || !gram || !ref || !f || !foldcoef || !res)
            goto fail;
        for (size_t k = 0; k < N; k++) {
            features(m, q, n_ch, sample[k], f);
            for (size_t i = 0; i < P; i++)
                ref[i] += f[i] / (double)N;
        }
        for (size_t k = 0; k < N; k++) {
            size_t fo = k * F / N;
            features(m, q, n_ch, sample[k], f);
            for (size_t i = 0; i < P; i++)
                f[i] -= ref[i];
            cnt[fo] += 1;
            double *S = sum + fo * P, *G = gram + fo * P * P;
            for (size_t i = 0; i < P; i++) {
                S[i] += f[i];
                for (size_t j = i; j < P; j++)
                    G[i * P + j] += f[i] * f[j];
            }
        }
        for (size_t fo = 0; fo < F; fo++) /* mirror the upper triangle */
            for (size_t i = 0; i < P; i++)
                for (size_t j = 0; j < i; j++)
                    gram[fo * P * P + i * P + j] = gram[fo * P * P + j * P + i];
        for (size_t fo = 0; fo <= F; fo++) {
            int skip = fo == F ? -1 : (int)fo;
            if (fit_all(m, (int)F, skip, cnt, sum, gram, ref,
                        foldcoef + fo * m->m * (1 + P)) != 0) {
                rc = failf(err, "least-squares fit failed (fold %zu)", fo);
                goto fail;
            }
        }
        memcpy(m->coef, foldcoef + F * m->m * (1 + P), m->m * (1 + P) * sizeof *m->coef);

        /* Out-of-fold residuals give the spread and, through the same EWMA as learned_step,
         * the worst normal score of each channel. */
        for (size_t k = 0; k < N; k++) {
            size_t fo = k * F / N;
            features(m, q, n_ch, sample[k], f);
            for (size_t j = 0; j < m->m; j++) {
                const double *row = foldcoef + (fo * m->m + j) * (1 + P);
                res[k * m->m + j] = f[j] - predict(row, f, P);
            }
        }
        double floor_s = par->resolution > 0 ? par->resolution / sqrt(12.0) : 1e-9;
        for (size_t j = 0; j < m->m; j++) {
            double ss = 0, e = 0, worst = 0;
            for (size_t k = 0; k < N; k++)
                ss += res[k * m->m + j] * res[k * m->m + j];
            double s = sqrt(ss / (double)N);
            m->spread[j] = s > floor_s ? s : floor_s;
            for (size_t k = 0; k < N; k++) {
                double a = fabs(res[k * m->m + j]) / m->spread[j];
                e = (1 - par->alpha) * e + par->alpha * (a < par->cap ? a : par->cap);
                worst = e > worst ? e : worst;
            }
            m->thresh[j] = worst > 1.0 ? worst : 1.0; /* never below "typical error" */
        }
    }
    *out = m;
    m = NULL;
    rc = CM_OK;
fail:
    if (rc == CM_ERR_NOMEM)
        snprintf(err, LEARNED_ERRLEN, "out of memory");
    learned_destroy(&m);
    free(q);
    free(sample);
    free(cnt);
    free(sum);
    free(gram);
    free(ref);
    free(f);
    free(foldcoef);
    free(res);
    return rc;
}

/* ---- accessors ---- */

size_t learned_channel_count(const learned_model *m) { return m->n; }
const char *learned_channel_id(const learned_model *m, size_t i)
{
    return i < m->n ? m->ch[i].id : NULL;
}
double learned_period(const learned_model *m) { return m->period_s; }
const learned_params *learned_model_params(const learned_model *m) { return &m->par; }
size_t learned_regressed_count(const learned_model *m) { return m->m; }

/* ---- the model file ----
 *
 *   suido-anomaly-model 1
 *   profile <profile name, rest of the line>
 *   profile_version <n>
 *   period_s <s>
 *   params <resolution> <alpha> <cap> <on> <off> <ridge> <folds>
 *   channels <n>
 *   c <id> <unit> const|reg <value>            n lines, in the model's channel order
 *   regressed <m>
 *   r <id> <spread> <threshold> <intercept> <2m weights>   m lines, in regressed order
 *   end
 *
 * Numbers are written with 17 significant digits so a reloaded model scores bit-identically. */

cm_err learned_save(const learned_model *m, const char *path, char err[LEARNED_ERRLEN])
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp) {
        snprintf(err, LEARNED_ERRLEN, "%s: %s", tmp, strerror(errno));
        return CM_ERR_IO;
    }
    const learned_params *p = &m->par;
    fprintf(fp, "%s %d\nprofile %s\nprofile_version %ld\nperiod_s %.17g\n", MAGIC,
            LEARNED_FORMAT, m->profile, m->profile_version, m->period_s);
    fprintf(fp, "params %.17g %.17g %.17g %.17g %.17g %.17g %d\n", p->resolution, p->alpha,
            p->cap, p->on, p->off, p->ridge, p->folds);
    fprintf(fp, "channels %zu\n", m->n);
    for (size_t i = 0; i < m->n; i++)
        fprintf(fp, "c %s %s %s %.17g\n", m->ch[i].id, m->ch[i].unit[0] ? m->ch[i].unit : "-",
                m->ch[i].reg >= 0 ? "reg" : "const", m->ch[i].value);
    fprintf(fp, "regressed %zu\n", m->m);
    size_t P = 2 * m->m;
    for (size_t j = 0; j < m->m; j++) {
        fprintf(fp, "r %s %.17g %.17g", m->ch[m->reg_ch[j]].id, m->spread[j], m->thresh[j]);
        for (size_t i = 0; i <= P; i++)
            fprintf(fp, " %.17g", m->coef[j * (1 + P) + i]);
        fputc('\n', fp);
    }
    fprintf(fp, "end\n");
    int bad = ferror(fp);
    if (fclose(fp) != 0 || bad || rename(tmp, path) != 0) {
        snprintf(err, LEARNED_ERRLEN, "%s: write failed: %s", path, strerror(errno));
        remove(tmp);
        return CM_ERR_IO;
    }
    return CM_OK;
}

typedef struct reader {
    FILE *fp;
    const char *path;
    char *line;
    size_t cap;
    int lineno;
    char *err;
} reader;

/* Next line without its end, or NULL at end of file. */
static char *next_line(reader *r)
{
    ssize_t n = getline(&r->line, &r->cap, r->fp);
    if (n < 0)
        return NULL;
    r->lineno++;
    while (n > 0 && (r->line[n - 1] == '\n' || r->line[n - 1] == '\r'))
        r->line[--n] = '\0';
    return r->line;
}

__attribute__((format(printf, 2, 3))) static cm_err bad(reader *r, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(r->err, LEARNED_ERRLEN, "%s:%d: %s", r->path, r->lineno, why);
    return CM_ERR_CONFIG;
}

/* Parses the next finite number at *s, advancing it. */
static int num(char **s, double *out)
{
    char *e;
    errno = 0;
    *out = strtod(*s, &e);
    if (e == *s || errno == ERANGE || !isfinite(*out))
        return -1;
    *s = e;
    return 0;
}

static int only_space(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return *s == '\0';
}

/* Checks the model against profile p (see learned_load). */
static cm_err check_profile(const learned_model *m, const cm_profile *p, const char *path,
                            char *err)
{
    if (strcmp(m->profile, cm_profile_name(p)) != 0) {
        snprintf(err, LEARNED_ERRLEN,
                 "%s: model was trained on profile '%s', not on '%s': train it again", path,
                 m->profile, cm_profile_name(p));
        return CM_ERR_CONFIG;
    }
    for (size_t i = 0; i < m->n; i++) {
        const char *id = m->ch[i].id, *dot = strchr(id, '.');
        char kind[32];
        snprintf(kind, sizeof kind, "%.*s", dot ? (int)(dot - id) : 0, id);
        const cm_channel *c = dot ? cm_profile_channel(p, kind, dot + 1) : NULL;
        if (!c) {
            snprintf(err, LEARNED_ERRLEN,
                     "%s: model channel '%s' is not in profile '%s': train it again", path, id,
                     cm_profile_name(p));
            return CM_ERR_CONFIG;
        }
        if (strcmp(c->unit, m->ch[i].unit) != 0) {
            snprintf(err, LEARNED_ERRLEN,
                     "%s: channel '%s' was trained in unit '%s', the profile says '%s'", path, id,
                     m->ch[i].unit, c->unit);
            return CM_ERR_CONFIG;
        }
    }
    for (size_t k = 0; k < cm_profile_channel_count(p); k++) {
        const cm_channel *c = cm_profile_channel_at(p, k);
        int kind_used = 0, known = 0;
        for (size_t i = 0; i < m->n && !known; i++) {
            size_t kl = strlen(c->kind);
            kind_used |= strncmp(m->ch[i].id, c->kind, kl) == 0 && m->ch[i].id[kl] == '.';
            known = strcmp(m->ch[i].id, c->id) == 0;
        }
        if (kind_used && !known) {
            snprintf(err, LEARNED_ERRLEN,
                     "%s: profile channel '%s' is not in the model (channel set changed): "
                     "train it again", path, c->id);
            return CM_ERR_CONFIG;
        }
    }
    return CM_OK;
}

cm_err learned_load(const char *path, const cm_profile *p, learned_model **out,
                    char err[LEARNED_ERRLEN])
{
    *out = NULL;
    reader r = {.path = path, .err = err};
    r.fp = fopen(path, "r");
    if (!r.fp) {
        snprintf(err, LEARNED_ERRLEN, "%s: %s", path, strerror(errno));
        return CM_ERR_IO;
    }
    cm_err rc = CM_ERR_NOMEM;
    learned_model *m = calloc(1, sizeof *m);
    if (!m)
        goto done;
    char *s = next_line(&r);
    int version;
    char tail;
    if (!s || strncmp(s, MAGIC " ", sizeof MAGIC) != 0 ||
        sscanf(s + sizeof MAGIC, "%d%c", &version, &tail) != 1) {
        rc = bad(&r, "not a suido-anomaly model file");
        goto done;
    }
    if (version != LEARNED_FORMAT) {
        rc = bad(&r, "model format version %d; this build reads version %d: train it again",
                 version, LEARNED_FORMAT);
        goto done;
    }
    if (!(s = next_line(&r)) || strncmp(s, "profile ", 8) != 0) {
        rc = bad(&r, "expected 'profile <name>'");
        goto done;
    }
    snprintf(m->profile, sizeof m->profile, "%s", s + 8);
    if (!(s = next_line(&r)) || sscanf(s, "profile_version %ld%c", &m->profile_version, &tail) != 1) {
        rc = bad(&r, "expected 'profile_version <n>'");
        goto done;
    }
    if (!(s = next_line(&r)) || sscanf(s, "period_s %lf%c", &m->period_s, &tail) != 1 ||
        !(m->period_s > 0) || !isfinite(m->period_s)) {
        rc = bad(&r, "expected 'period_s <seconds>'");
        goto done;
    }
    learned_params *pa = &m->par;
    if (!(s = next_line(&r)) ||
        sscanf(s, "params %lf %lf %lf %lf %lf %lf %d%c", &pa->resolution, &pa->alpha, &pa->cap,
               &pa->on, &pa->off, &pa->ridge, &pa->folds, &tail) != 7 ||
        !params_valid(pa, err)) {
        rc = bad(&r, "expected valid 'params <resolution> <alpha> <cap> <on> <off> <ridge> "
                     "<folds>'");
        goto done;
    }
    size_t n;
    if (!(s = next_line(&r)) || sscanf(s, "channels %zu%c", &n, &tail) != 1 || n == 0 ||
        n > 4096) {
        rc = bad(&r, "expected 'channels <n>' with 1 <= n <= 4096");
        goto done;
    }
    if (!(m->ch = calloc(n, sizeof *m->ch)))
        goto done;
    m->n = n;
    for (size_t i = 0; i < n; i++) {
        char id[96], unit[16], kind[8];
        double v;
        if (!(s = next_line(&r)) ||
            sscanf(s, "c %95s %15s %7s %lf%c", id, unit, kind, &v, &tail) != 4 || !isfinite(v) ||
            (strcmp(kind, "reg") != 0 && strcmp(kind, "const") != 0)) {
            rc = bad(&r, "expected 'c <id> <unit> const|reg <value>'");
            goto done;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(m->ch[k].id, id) == 0) {
                rc = bad(&r, "channel '%s' repeated", id);
                goto done;
            }
        snprintf(m->ch[i].id, sizeof m->ch[i].id, "%s", id);
        snprintf(m->ch[i].unit, sizeof m->ch[i].unit, "%s", strcmp(unit, "-") ? unit : "");
        m->ch[i].value = v;
        m->ch[i].reg = strcmp(kind, "reg") == 0 ? (int)m->m++ : -1;
    }
    size_t mm;
    if (!(s = next_line(&r)) || sscanf(s, "regressed %zu%c", &mm, &tail) != 1 || mm != m->m) {
        rc = bad(&r, "expected 'regressed %zu'", m->m);
        goto done;
    }
    if (alloc_regressed(m) != 0)
        goto done;
    size_t P = 2 * m->m;
    for (size_t j = 0; j < m->m; j++) {
        char id[96];
        int used;
        if (!(s = next_line(&r)) || sscanf(s, "r %95s%n", id, &used) != 1 ||
            strcmp(id, m->ch[m->reg_ch[j]].id) != 0) {
            rc = bad(&r, "expected 'r %s ...'", m->ch[m->reg_ch[j]].id);
            goto done;
        }
        s += used;
        if (num(&s, &m->spread[j]) || num(&s, &m->thresh[j]) || !(m->spread[j] > 0) ||
            !(m->thresh[j] > 0)) {
            rc = bad(&r, "spread and threshold must be positive numbers");
            goto done;
        }
        for (size_t i = 0; i <= P; i++)
            if (num(&s, &m->coef[j * (1 + P) + i])) {
                rc = bad(&r, "expected %zu coefficients", P + 1);
                goto done;
            }
        if (!only_space(s)) {
            rc = bad(&r, "more than %zu coefficients", P + 1);
            goto done;
        }
    }
    if (!(s = next_line(&r)) || strcmp(s, "end") != 0) {
        rc = bad(&r, "expected 'end' (truncated file?)");
        goto done;
    }
    rc = check_profile(m, p, path, err);
    if (rc == CM_OK) {
        *out = m;
        m = NULL;
    }
done:
    if (rc == CM_ERR_NOMEM)
        snprintf(err, LEARNED_ERRLEN, "%s: out of memory", path);
    learned_destroy(&m);
    free(r.line);
    fclose(r.fp);
    return rc;
}

/* ---- detection ---- */

cm_err learned_state_new(const learned_model *m, learned_state **out)
{
    learned_state *st = calloc(1, sizeof *st);
    if (!st)
        return CM_ERR_NOMEM;
    st->n = m->n;
    st->m = m->m;
    st->top = -1;
    st->prev = calloc(m->n, sizeof *st->prev);
    st->cur = calloc(m->n, sizeof *st->cur);
    st->missing = calloc(m->n, 1);
    st->e = calloc(m->m ? m->m : 1, sizeof *st->e);
    if (!st->prev || !st->cur || !st->missing || !st->e) {
        learned_state_destroy(&st);
        return CM_ERR_NOMEM;
    }
    *out = st;
    return CM_OK;
}

void learned_state_destroy(learned_state **sp)
{
    if (!sp || !*sp)
        return;
    learned_state *st = *sp;
    free(st->prev);
    free(st->cur);
    free(st->missing);
    free(st->e);
    free(st);
    *sp = NULL;
}

void learned_state_break(learned_state *st) { st->has_prev = 0; }

int learned_state_top(const learned_state *st) { return st->top; }

void learned_step(const learned_model *m, learned_state *st, const double *row, int *flag,
                  double *score)
{
    const learned_params *p = &m->par;
    double best = 0;
    int top = -1;
    for (size_t i = 0; i < m->n; i++) {
        double v = quantise(row[i], p->resolution);
        st->missing[i] = !isfinite(v);
        if (st->missing[i]) /* hold the last reading; with none, the normal value */
            v = st->has_prev ? st->prev[i] : m->ch[i].value;
        st->cur[i] = v;
        if (m->ch[i].reg < 0 && !st->missing[i]) {
            double unit = p->resolution > 0 ? 1.5 * p->resolution : 1e-9;
            double ratio = fabs(v - m->ch[i].value) / unit;
            if (ratio > best) {
                best = ratio;
                top = (int)i;
            }
        }
    }
    size_t P = 2 * m->m;
    for (size_t j = 0; j < m->m; j++) {
        size_t c = m->reg_ch[j];
        if (st->has_prev && !st->missing[c]) {
            const double *w = m->coef + j * (1 + P);
            double pred = w[0];
            for (size_t r = 0; r < m->m; r++)
                pred += w[1 + r] * st->cur[m->reg_ch[r]] + w[1 + m->m + r] * st->prev[m->reg_ch[r]];
            double a = fabs(st->cur[c] - pred) / m->spread[j];
            st->e[j] = (1 - p->alpha) * st->e[j] + p->alpha * (a < p->cap ? a : p->cap);
        }
        double ratio = st->e[j] / m->thresh[j];
        if (ratio > best) {
            best = ratio;
            top = (int)c;
        }
    }
    if (!st->flag && best > p->on)
        st->flag = 1;
    else if (st->flag && best < p->off)
        st->flag = 0;
    memcpy(st->prev, st->cur, m->n * sizeof *st->prev);
    st->has_prev = 1;
    st->top = top;
    *flag = st->flag;
    *score = best;
}
