/* cm_metrics: a daemon's counters, gauges and histograms, written every second as Prometheus text
 * to a file in its state directory (tmp + rename, so readers never see half a file) and served on
 * the daemon's authenticated HTTPS endpoint (cm_metrics_http). The run script's status line and
 * the monitor read the files. Increments are atomic and registration and rendering are locked:
 * any thread may register, count or render.
 *
 * Names every daemon shares (the daemon is told apart by Prometheus' job/instance labels):
 *   suido_rejected_total{reason="..."}       what this process refused, by reason (cm_svc_reject)
 *   suido_stage_received_total, suido_stage_sent_total   frames in and out of a pipeline stage
 *   suido_stage_handle_seconds (histogram)   time to handle one input frame
 *   suido_stage_pipeline_seconds (histogram) age of a frame (since ingest received it) on arrival
 *   suido_certificate_days_left{cert="<section>.<key>",cn="..."}   each certificate it loads
 *   suido_metrics_http_*                     the endpoint itself (served, refused by reason)
 *   suido_replication_lag_seconds            a standby archive's distance behind the primary */
#ifndef CM_METRICS_H
#define CM_METRICS_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"

typedef struct cm_metrics cm_metrics;
typedef struct cm_metric cm_metric;

/* path may be NULL (no file). Caller frees with cm_metrics_destroy. */
cm_metrics *cm_metrics_new(const char *service, const char *path);
void cm_metrics_destroy(cm_metrics **m);
/* Registers (or finds) a metric. name is a Prometheus name, optionally with labels:
 * "suido_rejected_total{reason=\"signature\"}". The handle lives as long as m; returns NULL
 * only when the table (512 entries) is full. */
cm_metric *cm_metric_counter(cm_metrics *m, const char *name, const char *help);
cm_metric *cm_metric_gauge(cm_metrics *m, const char *name, const char *help);
void cm_metric_add(cm_metric *c, uint64_t n);
static inline void cm_metric_inc(cm_metric *c) { cm_metric_add(c, 1); }
void cm_metric_set(cm_metric *g, int64_t v);
uint64_t cm_metric_value(const cm_metric *c);
/* A latency histogram (buckets from 100 us to 10 s and +Inf, with _sum in seconds and _count);
 * name may carry labels. Takes 18 table entries; NULL when they do not fit. */
cm_metric *cm_metric_histogram(cm_metrics *m, const char *name, const char *help);
void cm_metric_observe_us(cm_metric *h, uint64_t us);
/* The whole text, every family once (HELP, TYPE, then its samples). *text is the caller's to
 * free. */
cm_err cm_metrics_render(cm_metrics *m, char **text, size_t *len);
/* Writes the file if at least 1 s has passed since the last write (or force). */
cm_err cm_metrics_flush(cm_metrics *m, int force);

#endif
