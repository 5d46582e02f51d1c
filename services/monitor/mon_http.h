/* mon_http: the monitor's HTTPS server on libmicrohttpd (GnuTLS): TLS 1.2+ only with the
 * certificate the deployment CA issued for the monitor, bounded connections, headers and bodies,
 * and one handler that sees each whole request. Served from the caller's thread (mon_http_run),
 * so the handler may use the caller's ZeroMQ sockets.
 *
 * What reaches the handler: the method and the raw path (no percent-decoding anywhere: every
 * identifier the monitor accepts is plain, so '%' only ever fails validation), the query
 * arguments with their lengths (a repeated name, too many or too long arguments set args_bad),
 * and the body (at most max_body bytes; larger sets body_too_big and the handler is called at
 * once, without the body). Every response carries the security headers (mon_http.c). */
#ifndef MON_HTTP_H
#define MON_HTTP_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"

#define MON_HTTP_MAX_ARGS 8
#define MON_HTTP_MAX_ARG_LEN 256

struct MHD_Connection;

typedef struct mon_request {
    const char *method;
    const char *path;
    char client[64];          /* peer address */
    const char *body;         /* NUL-terminated copy ("" when none) */
    size_t body_len;
    int body_too_big;
    int args_bad;
    size_t n_args;
    struct {
        const char *key, *value;
    } args[MON_HTTP_MAX_ARGS];
    struct MHD_Connection *conn;
} mon_request;

typedef struct mon_response {
    unsigned status;
    const char *content_type;
    char *body;               /* freed after sending unless body_static */
    size_t len;
    int body_static;
    int cacheable;            /* static assets: may be cached briefly */
    char cookies[2][256];     /* Set-Cookie values */
    char location[256];       /* redirect target */
    char disposition[160];    /* Content-Disposition (downloads) */
} mon_response;

/* A request header, or NULL. */
const char *mon_request_header(const mon_request *r, const char *name);
/* A cookie's value, or NULL. */
const char *mon_request_cookie(const mon_request *r, const char *name);
/* A query argument's value, or NULL. */
const char *mon_request_arg(const mon_request *r, const char *key);

/* Sets the response to a copy of text. */
void mon_response_text(mon_response *rs, unsigned status, const char *type, const char *text);
/* Sets the response to body (len bytes), taking ownership (freed with free()). */
void mon_response_take(mon_response *rs, unsigned status, const char *type, char *body,
                       size_t len);
/* Sets the response to bytes that outlive the server (not copied, not freed). */
void mon_response_static(mon_response *rs, unsigned status, const char *type, const char *body,
                         size_t len);

typedef void (*mon_http_handler)(void *ctx, const mon_request *rq, mon_response *rs);
/* Refusals made inside the HTTP library (malformed requests, failed TLS handshakes, limits):
 * one line each, for the log, counters and the audit log. */
typedef void (*mon_http_refusal)(void *ctx, const char *what);

typedef struct mon_http_opts {
    const char *bind;         /* "127.0.0.1:8892" or "[::1]:8892" */
    const char *cert_file;    /* PEM certificate chain */
    const char *key_file;     /* PEM private key (0600) */
    size_t max_body;          /* bytes */
    unsigned max_connections, max_per_ip, timeout_s;
    mon_http_handler handler;
    mon_http_refusal refusal;
    void *ctx;
} mon_http_opts;

typedef struct mon_http mon_http;

/* Binds and starts serving (CM_ERR_CONFIG with err for a bad address, CM_ERR_KEY for unusable
 * certificate or key files, CM_ERR_IO when the address cannot be bound). */
cm_err mon_http_start(const mon_http_opts *o, mon_http **out, char err[512]);
/* Serves what is ready, waiting up to timeout_ms for activity. */
void mon_http_run(mon_http *h, int timeout_ms);
/* The port bound (useful with port 0). */
unsigned mon_http_port(const mon_http *h);
void mon_http_stop(mon_http **h);

#endif
