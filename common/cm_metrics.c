/* cm_metrics: fixed table of counters and gauges, flushed to a Prometheus text file. */
#include "cm_metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_time.h"

#define MAX_METRICS 256

struct cm_metric {
    char name[160];
    char help[120];
    int gauge;
    _Atomic uint64_t value; /* gauges store an int64 bit pattern */
};

struct cm_metrics {
    char service[32];
    char *path;
    uint64_t last_flush_ms;
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
    return m;
}

void cm_metrics_destroy(cm_metrics **mp)
{
    if (!mp || !*mp)
        return;
    free((*mp)->path);
    free(*mp);
    *mp = NULL;
}

/* Registration happens at start-up on one thread; lookups by name are not on a hot path. */
static cm_metric *metric_get(cm_metrics *m, const char *name, const char *help, int gauge)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->table[i].name, name) == 0)
            return &m->table[i];
    if (m->n >= MAX_METRICS)
        return NULL;
    cm_metric *c = &m->table[m->n];
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->help, sizeof c->help, "%s", help ? help : "");
    c->gauge = gauge;
    atomic_store(&c->value, 0);
    m->n++;
    return c;
}

cm_metric *cm_metric_counter(cm_metrics *m, const char *name, const char *help)
{
    return metric_get(m, name, help, 0);
}

cm_metric *cm_metric_gauge(cm_metrics *m, const char *name, const char *help)
{
    return metric_get(m, name, help, 1);
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

/* Base name of "name{labels}", for HELP/TYPE lines. */
static void base_name(const char *name, char *out, size_t len)
{
    size_t n = strcspn(name, "{");
    snprintf(out, len, "%.*s", (int)n, name);
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
    char last[160] = "";
    for (size_t i = 0; i < m->n; i++) {
        cm_metric *c = &m->table[i];
        char base[160];
        base_name(c->name, base, sizeof base);
        if (strcmp(base, last) != 0) {
            fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", base, c->help, base,
                    c->gauge ? "gauge" : "counter");
            snprintf(last, sizeof last, "%s", base);
        }
        uint64_t v = atomic_load(&c->value);
        if (c->gauge)
            fprintf(f, "%s %lld\n", c->name, (long long)(int64_t)v);
        else
            fprintf(f, "%s %llu\n", c->name, (unsigned long long)v);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, m->path) != 0) {
        unlink(tmp);
        return CM_ERR_IO;
    }
    return CM_OK;
}
