/* cm_metrics_http: a daemon's metrics (cm_metrics_render) on an HTTPS endpoint for Prometheus,
 * served by libmicrohttpd from one thread of its own. Started by cm_svc when the configuration
 * has a [metrics] section:
 *
 *   [metrics]
 *   listen = 127.0.0.1:8923        HOST:PORT ("*" or 0.0.0.0 for every address, [v6]:PORT)
 *   cert = .../metrics.crt         the endpoint's TLS certificate (PEM) and key (PEM, 0600)
 *   key = .../metrics.key
 *   ca = .../ca.crt                the deployment CA: scrapers' certificates must chain to it
 *   crl = .../crl.pem              optional: revoked scrapers are refused (re-read when changed)
 *   allow = prometheus             CNs that may scrape (comma-separated)
 *
 * Contract: TLS 1.2 or 1.3 only; the client must present a certificate issued by the CA for
 * client authentication, not revoked, valid now, or the handshake fails; a certificate whose CN
 * is not on the allow-list gets 403. Only GET /metrics is answered (other paths 404, other
 * methods 405, requests with a body 413); requests are bounded in size and time. Every refusal
 * is counted (suido_metrics_http_refused_total{reason}) and queued for the daemon's audit log,
 * which the daemon's own thread drains (cm_metrics_http_drain); the queue is bounded and what it
 * cannot hold is counted as lost. Served scrapes: suido_metrics_http_requests_total. */
#ifndef CM_METRICS_HTTP_H
#define CM_METRICS_HTTP_H
#include <stddef.h>
#include "cm_conf.h"
#include "cm_err.h"
#include "cm_metrics.h"

typedef struct cm_metrics_http cm_metrics_http;

/* Config rows of [metrics], accepted by every daemon (CM_DAEMON_SPEC_ROWS). */
#define CM_METRICS_HTTP_SPEC_ROWS                                                                  \
    {"metrics", "listen", 0, "HTTPS endpoint for Prometheus, HOST:PORT (no section: none)"},       \
        {"metrics", "cert", 0, "the endpoint's TLS certificate (PEM)"},                            \
        {"metrics", "key", 0, "the endpoint's TLS private key (PEM, 0600)"},                       \
        {"metrics", "ca", 0, "CA that issues the scrapers' client certificates"},                  \
        {"metrics", "crl", 0, "CRL of that CA (optional)"},                                        \
        {"metrics", "allow", 0, "client certificate CNs that may scrape, comma-separated"}

/* Reads and checks [metrics] of conf (listen address, certificate, key, CA, CRL, allow-list);
 * binds nothing. On error returns CM_ERR_CONFIG with "file:line: reason" in err. *out is the
 * caller's (cm_metrics_http_destroy); m must outlive it. */
cm_err cm_metrics_http_new(const cm_conf *conf, const char *service, cm_metrics *m,
                           cm_metrics_http **out, char err[CM_CONF_ERRLEN]);
/* Binds the listen address and starts serving. CM_ERR_IO with the reason in err. */
cm_err cm_metrics_http_start(cm_metrics_http *h, char err[CM_CONF_ERRLEN]);
/* The endpoint's refusals since the last call, oldest first, for the audit log: fn(ctx, subject,
 * detail) each. Returns how many were lost because the queue was full. Any thread. */
size_t cm_metrics_http_drain(cm_metrics_http *h,
                             void (*fn)(void *ctx, const char *subject, const char *detail),
                             void *ctx);
/* Stops serving (waits for the thread) and frees everything. */
void cm_metrics_http_destroy(cm_metrics_http **h);

#endif
