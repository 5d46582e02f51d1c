/* cm_metrics: fixed table of counters, gauges and histograms, rendered as Prometheus text. */
#include "cm_metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_time.h"

#define MAX_METRICS 512

/* A histogram is HIST_BUCKETS consecutive bucket entries (the last is +Inf), then its sum and
 * its count; its handle is the first bucket. */
enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_BUCKET, KIND_SUM, KIND_COUNT };
static const double HIST_BOUNDS[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 10};
#define HIST_BUCKETS (sizeof HIST_BOUNDS / sizeof HIST_BOUNDS[0] + 1)

struct cm_metric {
    char name[160];
    char help[120];
    int kind;
    size_t family;          /* index of the family's first entry: samples render together */
    uint64_t bound_us;      /* buckets: upper bound in microseconds (UINT64_MAX: +Inf) */
    _Atomic uint64_t value; /* gauges store an int64 bit pattern; sums are microseconds */
};

struct cm_metrics {
    char service[32];
    char *path;
    uint64_t last_flush_ms;
    pthread_mutex_t lock; /* registration and rendering; values are atomics */
    size_t n;
    cm_metric table[MAX_METRICS];
};

cm_metrics *cm_metrics_new(const char *service, const char *path)
{
    cm_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    snprintf(m->service, sizeof m->service, "%s", service);
    if (path && *path && !(m->path = strdup(path))) {
        free(m);
        return NULL;
    }
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

void cm_metrics_destroy(cm_metrics **mp)
{
    if (!mp || !*mp)
        return;
    pthread_mutex_destroy(&(*mp)->lock);
    free((*mp)->path);
    free(*mp);
    *mp = NULL;
}

/* Family name of an entry: its name without labels and, for histogram samples, without the
 * _bucket/_sum/_count suffix. */
static void family_name(const char *name, int kind, char *out, size_t len)
{
    size_t n = strcspn(name, "{");
    static const char *const suffix[] = {[KIND_BUCKET] = "_bucket", [KIND_SUM] = "_sum",
                                         [KIND_COUNT] = "_count"};
    if (kind >= KIND_BUCKET) {
        size_t sl = strlen(suffix[kind]);
        if (n >= sl && strncmp(name + n - sl, suffix[kind], sl) == 0)
            n -= sl;
    }
    snprintf(out, len, "%.*s", (int)n, name);
}

static cm_metric *find_locked(cm_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->table[i].name, name) == 0)
            return &m->table[i];
    return NULL;
}

/* Appends one entry (lock held, room checked by the caller). */
static cm_metric *add_locked(cm_metrics *m, const char *name, const char *help, int kind)
{
    cm_metric *c = &m->table[m->n];
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->help, sizeof c->help, "%s", help ? help : "");
    c->kind = kind;
    c->bound_us = UINT64_MAX;
    atomic_store(&c->value, 0);
    char fam[160], other[160];
    family_name(name, kind, fam, sizeof fam);
    c->family = m->n;
    for (size_t i = 0; i < m->n; i++) {
        family_name(m->table[i].name, m->table[i].kind, other, sizeof other);
        if (strcmp(fam, other) == 0) {
            c->family = m->table[i].family;
            break;
        }
    }
    m->n++;
    return c;
}

/* Lookups by name are not on a hot path: handles are kept by their users. */
static cm_metric *metric_get(cm_metrics *m, const char *name, const char *help, int kind)
{
    pthread_mutex_lock(&m->lock);
    cm_metric *c = find_locked(m, name);
    if (!c && m->n < MAX_METRICS)
        c = add_locked(m, name, help, kind);
    pthread_mutex_unlock(&m->lock);
    return c;
}

cm_metric *cm_metric_counter(cm_metrics *m, const char *name, const char *help)
{
    return metric_get(m, name, help, KIND_COUNTER);
}

cm_metric *cm_metric_gauge(cm_metrics *m, const char *name, const char *help)
{
    return metric_get(m, name, help, KIND_GAUGE);
}

/* "base{labels}" -> "base<suffix>{labels[,]<extra>}" */
static void sample_name(const char *name, const char *suffix, const char *extra, char *out,
                        size_t len)
{
    size_t n = strcspn(name, "{");
    const char *labels = name[n] == '{' ? name + n + 1 : "";
    size_t ll = strcspn(labels, "}");
    if (!ll && !*extra)
        snprintf(out, len, "%.*s%s", (int)n, name, suffix);
    else
        snprintf(out, len, "%.*s%s{%.*s%s%s}", (int)n, name, suffix, (int)ll, labels,
                 ll && *extra ? "," : "", extra);
}

cm_metric *cm_metric_histogram(cm_metrics *m, const char *name, const char *help)
{
    char bucket[160];
    sample_name(name, "_bucket", "le=\"+Inf\"", bucket, sizeof bucket);
    pthread_mutex_lock(&m->lock);
    cm_metric *h = find_locked(m, bucket);
    if (h) {
        h -= HIST_BUCKETS - 1; /* the +Inf bucket is the last of the run */
    } else if (m->n + HIST_BUCKETS + 2 <= MAX_METRICS) {
        for (size_t i = 0; i < HIST_BUCKETS; i++) {
            char le[32];
            if (i + 1 < HIST_BUCKETS)
                snprintf(le, sizeof le, "le=\"%g\"", HIST_BOUNDS[i]);
            else
                snprintf(le, sizeof le, "le=\"+Inf\"");
            sample_name(name, "_bucket", le, bucket, sizeof bucket);
            cm_metric *b = add_locked(m, bucket, help, KIND_BUCKET);
            if (i + 1 < HIST_BUCKETS)
                b->bound_us = (uint64_t)(HIST_BOUNDS[i] * 1e6 + 0.5);
            if (i == 0)
                h = b;
        }
        sample_name(name, "_sum", "", bucket, sizeof bucket);
        add_locked(m, bucket, help, KIND_SUM);
        sample_name(name, "_count", "", bucket, sizeof bucket);
        add_locked(m, bucket, help, KIND_COUNT);
    }
    pthread_mutex_unlock(&m->lock);
    return h;
}

void cm_metric_observe_us(cm_metric *h, uint64_t us)
{
    if (!h)
        return;
    size_t i = 0;
    while (i + 1 < HIST_BUCKETS && us > h[i].bound_us)
        i++;
    for (; i < HIST_BUCKETS; i++) /* buckets are cumulative */
        atomic_fetch_add(&h[i].value, 1);
    atomic_fetch_add(&h[HIST_BUCKETS].value, us);
    atomic_fetch_add(&h[HIST_BUCKETS + 1].value, 1);
}

void cm_metric_add(cm_metric *c, uint64_t n)
{
    if (c)
        atomic_fetch_add(&c->value, n);
}

void cm_metric_set(cm_metric *g, int64_t v)
{
    if (g)
        atomic_store(&g->value, (uint64_t)v);
}

uint64_t cm_metric_value(const cm_metric *c) { return c ? atomic_load(&((cm_metric *)c)->value) : 0; }

/* Every family once, its HELP and TYPE first and then all its samples, whatever the order in
 * which they were registered (the text format wants a family's samples together). */
static void render(cm_metrics *m, FILE *f)
{
    static const char *const type[] = {[KIND_COUNTER] = "counter", [KIND_GAUGE] = "gauge",
                                       [KIND_BUCKET] = "histogram", [KIND_SUM] = "histogram",
                                       [KIND_COUNT] = "histogram"};
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n; i++) {
        const cm_metric *first = &m->table[i];
        if (first->family != i)
            continue;
        char fam[160];
        family_name(first->name, first->kind, fam, sizeof fam);
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", fam, first->help, fam, type[first->kind]);
        for (size_t j = i; j < m->n; j++) {
            cm_metric *c = &m->table[j];
            if (c->family != i)
                continue;
            uint64_t v = atomic_load(&c->value);
            if (c->kind == KIND_GAUGE)
                fprintf(f, "%s %lld\n", c->name, (long long)(int64_t)v);
            else if (c->kind == KIND_SUM)
                fprintf(f, "%s %llu.%06llu\n", c->name, (unsigned long long)(v / 1000000u),
                        (unsigned long long)(v % 1000000u));
            else
                fprintf(f, "%s %llu\n", c->name, (unsigned long long)v);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

cm_err cm_metrics_render(cm_metrics *m, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    FILE *f = open_memstream(text, len);
    if (!f)
        return CM_ERR_NOMEM;
    render(m, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(*text);
        *text = NULL;
        *len = 0;
        return CM_ERR_NOMEM;
    }
    return CM_OK;
}

cm_err cm_metrics_flush(cm_metrics *m, int force)
{
    uint64_t now = cm_mono_ms();
    if (!m->path || (!force && now - m->last_flush_ms < 1000))
        return CM_OK;
    m->last_flush_ms = now;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", m->path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return CM_ERR_IO;
    render(m, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, m->path) != 0) {
        unlink(tmp);
        return CM_ERR_IO;
    }
    return CM_OK;
}
