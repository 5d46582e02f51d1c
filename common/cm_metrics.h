/* cm_metrics: a daemon's counters and gauges, written every second as Prometheus text to a file
 * in its state directory (tmp + rename, so readers never see half a file). The run script's
 * status line and the monitor read these files. Increments are atomic: any thread may count. */
#ifndef CM_METRICS_H
#define CM_METRICS_H
#include <stdint.h>
#include "cm_err.h"

typedef struct cm_metrics cm_metrics;
typedef struct cm_metric cm_metric;

/* path may be NULL (no file). Caller frees with cm_metrics_destroy. */
cm_metrics *cm_metrics_new(const char *service, const char *path);
void cm_metrics_destroy(cm_metrics **m);
/* Registers (or finds) a metric. name is a Prometheus name, optionally with labels:
 * "suido_rejected_total{reason=\"signature\"}". The handle lives as long as m; returns NULL
 * only when the table (256 entries) is full. */
cm_metric *cm_metric_counter(cm_metrics *m, const char *name, const char *help);
cm_metric *cm_metric_gauge(cm_metrics *m, const char *name, const char *help);
void cm_metric_add(cm_metric *c, uint64_t n);
static inline void cm_metric_inc(cm_metric *c) { cm_metric_add(c, 1); }
void cm_metric_set(cm_metric *g, int64_t v);
uint64_t cm_metric_value(const cm_metric *c);
/* Writes the file if at least 1 s has passed since the last write (or force). */
cm_err cm_metrics_flush(cm_metrics *m, int force);

#endif
