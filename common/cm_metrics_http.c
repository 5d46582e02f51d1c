/* cm_metrics_http: the metrics endpoint, libmicrohttpd over GnuTLS with client certificates.
 *
 * Who checks what: GnuTLS is told to require a client certificate on every session, and our
 * verify function (run inside the handshake) checks it against the CA and CRL held in one trust
 * list, for the client-authentication purpose; a session without one, or with one that does not
 * check out, never completes the handshake, so libmicrohttpd's HTTP parser only ever sees
 * authenticated peers. The request handler then checks the CN against the allow-list and the
 * request against the one thing served. Everything runs on libmicrohttpd's single internal
 * thread, which also owns the trust list (and re-reads the CRL when the file changes); the
 * metrics table and the refusal queue are the only state shared with the daemon's threads. */
#include "cm_metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_net.h"
#include "cm_time.h"

#define MAX_ALLOW 32
#define QUEUE_MAX 64            /* refusals waiting for the daemon's thread */
#define MAX_CHAIN 8             /* certificates of a client chain looked at */
#define CRL_RECHECK_MS 5000     /* how often the CRL file's mtime is looked at */
#define CONN_LIMIT 32u          /* connections at once, and from one address */
#define CONN_PER_IP 8u
#define CONN_TIMEOUT_S 10u      /* idle connections (and stalled handshakes) are closed */
#define CONN_MEMORY 16384       /* request line and headers; beyond: refused by libmicrohttpd */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

typedef struct refusal {
    char detail[384];
} refusal;

struct cm_metrics_http {
    char service[64];
    char subject[96]; /* "<service>:metrics", the audit subject */
    char host[CM_NET_HOSTLEN], port[CM_NET_PORTLEN];
    char *cert_pem, *key_pem, *ca_pem;
    size_t key_len;
    char crl_path[4096];
    struct timespec crl_mtime;
    uint64_t crl_checked_ms;
    gnutls_x509_trust_list_t trust;
    char allow[MAX_ALLOW][65];
    int n_allow;
    cm_metrics *m;
    cm_metric *served, *serve_us;
    struct MHD_Daemon *daemon;
    pthread_mutex_t qlock;
    refusal queue[QUEUE_MAX];
    size_t qhead, qlen, qlost;
};

/* One TCP connection (libmicrohttpd's socket context). */
typedef struct conn_state {
    cm_metrics_http *h;
    int verified; /* the handshake's client certificate checked out */
    int refused;  /* a refusal was recorded for it already */
    char peer[64];
    char cn[65];
} conn_state;

/* ---------------------------------------------------------------- refusals */

/* Keeps s printable and free of quotes and spaces (it comes from the network), at most 64. */
static void clean(const char *s, char *out, size_t len)
{
    size_t k = 0;
    for (; s && *s && k + 1 < len && k < 64; s++)
        out[k++] = (*s > 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '?';
    out[k] = '\0';
}

static void refuse(cm_metrics_http *h, conn_state *st, const char *reason, const char *extra)
{
    char name[128];
    snprintf(name, sizeof name, "suido_metrics_http_refused_total{reason=\"%s\"}", reason);
    cm_metric_inc(cm_metric_counter(h->m, name, "requests and connections refused, by reason"));
    if (st)
        st->refused = 1;
    char detail[384];
    snprintf(detail, sizeof detail, "reason=%s peer=%s cn=%s%s%s", reason,
             st && *st->peer ? st->peer : "-", st && *st->cn ? st->cn : "-", extra ? " " : "",
             extra ? extra : "");
    cm_warn("event=metrics_access_refused %s", detail);
    pthread_mutex_lock(&h->qlock);
    if (h->qlen < QUEUE_MAX) {
        snprintf(h->queue[(h->qhead + h->qlen) % QUEUE_MAX].detail, sizeof h->queue[0].detail,
                 "%s", detail);
        h->qlen++;
    } else {
        h->qlost++;
    }
    pthread_mutex_unlock(&h->qlock);
}

size_t cm_metrics_http_drain(cm_metrics_http *h,
                             void (*fn)(void *ctx, const char *subject, const char *detail),
                             void *ctx)
{
    if (!h)
        return 0;
    for (;;) {
        refusal r;
        pthread_mutex_lock(&h->qlock);
        int have = h->qlen > 0;
        if (have) {
            r = h->queue[h->qhead];
            h->qhead = (h->qhead + 1) % QUEUE_MAX;
            h->qlen--;
        }
        pthread_mutex_unlock(&h->qlock);
        if (!have)
            break;
        fn(ctx, h->subject, r.detail);
    }
    pthread_mutex_lock(&h->qlock);
    size_t lost = h->qlost;
    h->qlost = 0;
    pthread_mutex_unlock(&h->qlock);
    return lost;
}

/* ---------------------------------------------------------------- trust */

/* A trust list of the CA and, if configured, the CRL (checked against the CA). */
static cm_err trust_build(cm_metrics_http *h, gnutls_x509_trust_list_t *out, char *why,
                          size_t whylen)
{
    gnutls_x509_trust_list_t t = NULL;
    gnutls_datum_t ca = {(unsigned char *)h->ca_pem, (unsigned)strlen(h->ca_pem)};
    char *crl_text = NULL;
    size_t crl_len = 0;
    cm_err rc = CM_ERR_CONFIG;
    if (gnutls_x509_trust_list_init(&t, 0) < 0) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    if (gnutls_x509_trust_list_add_trust_mem(t, &ca, NULL, GNUTLS_X509_FMT_PEM, 0, 0) <= 0) {
        snprintf(why, whylen, "ca: no usable CA certificate");
        goto out;
    }
    if (*h->crl_path) {
        char err[CM_CONF_ERRLEN];
        if (cm_conf_read_file(h->crl_path, &crl_text, &crl_len, err) != CM_OK) {
            snprintf(why, whylen, "%s", err);
            goto out;
        }
        gnutls_datum_t crl = {(unsigned char *)crl_text, (unsigned)crl_len};
        if (gnutls_x509_trust_list_add_trust_mem(t, NULL, &crl, GNUTLS_X509_FMT_PEM,
                                                 GNUTLS_TL_VERIFY_CRL, 0) <= 0) {
            snprintf(why, whylen, "%s: not a CRL of this CA", h->crl_path);
            goto out;
        }
    }
    *out = t;
    t = NULL;
    rc = CM_OK;
out:
    if (t)
        gnutls_x509_trust_list_deinit(t, 1);
    free(crl_text);
    return rc;
}

/* Re-reads the CRL when its file changed (at most every CRL_RECHECK_MS). A CRL that no longer
 * loads keeps the list in force, with an error in the log. Server thread only. */
static void crl_refresh(cm_metrics_http *h)
{
    if (!*h->crl_path)
        return;
    uint64_t now = cm_mono_ms();
    if (now - h->crl_checked_ms < CRL_RECHECK_MS)
        return;
    h->crl_checked_ms = now;
    struct stat st;
    if (stat(h->crl_path, &st) != 0 || (st.st_mtim.tv_sec == h->crl_mtime.tv_sec &&
                                        st.st_mtim.tv_nsec == h->crl_mtime.tv_nsec))
        return;
    gnutls_x509_trust_list_t t = NULL;
    char why[CM_CONF_ERRLEN];
    if (trust_build(h, &t, why, sizeof why) != CM_OK) {
        cm_error("crl=%s error=\"%s\" (the previous CRL stays in force)", h->crl_path, why);
        return;
    }
    gnutls_x509_trust_list_deinit(h->trust, 1);
    h->trust = t;
    h->crl_mtime = st.st_mtim;
    cm_info("crl=%s event=crl_reloaded", h->crl_path);
}

/* GnuTLS verify function, inside the handshake: 0 lets it go on. libmicrohttpd keeps the
 * connection as the session's pointer. */
static int verify_client(gnutls_session_t session)
{
    struct MHD_Connection *c = gnutls_session_get_ptr(session);
    const union MHD_ConnectionInfo *ci =
        c ? MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT) : NULL;
    conn_state *st = ci ? ci->socket_context : NULL;
    if (!st)
        return GNUTLS_E_CERTIFICATE_ERROR;
    cm_metrics_http *h = st->h;
    unsigned n = 0;
    const gnutls_datum_t *der = gnutls_certificate_get_peers(session, &n);
    if (!der || n == 0) {
        refuse(h, st, "no_certificate", NULL);
        return GNUTLS_E_CERTIFICATE_ERROR;
    }
    if (n > MAX_CHAIN)
        n = MAX_CHAIN;
    gnutls_x509_crt_t crt[MAX_CHAIN];
    unsigned have = 0;
    int ok = 1;
    for (; have < n; have++)
        if (gnutls_x509_crt_init(&crt[have]) < 0)
            break;
        else if (gnutls_x509_crt_import(crt[have], &der[have], GNUTLS_X509_FMT_DER) < 0) {
            gnutls_x509_crt_deinit(crt[have]);
            ok = 0;
            break;
        }
    const char *reason = NULL;
    if (!ok || have != n) {
        reason = "bad_certificate";
    } else {
        char cn[256] = "";
        size_t cnlen = sizeof cn - 1;
        if (gnutls_x509_crt_get_dn_by_oid(crt[0], GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn,
                                          &cnlen) == 0)
            clean(cn, st->cn, sizeof st->cn);
        crl_refresh(h);
        gnutls_typed_vdata_st purpose = {.type = GNUTLS_DT_KEY_PURPOSE_OID,
                                         .data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT};
        unsigned status = 0;
        if (gnutls_x509_trust_list_verify_crt2(h->trust, crt, n, &purpose, 1, 0, &status,
                                               NULL) < 0 ||
            status != 0)
            reason = status & GNUTLS_CERT_REVOKED                 ? "revoked_certificate"
                     : status & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_NOT_ACTIVATED)
                         ? "expired_certificate"
                     : status & GNUTLS_CERT_PURPOSE_MISMATCH ? "wrong_key_purpose"
                                                             : "untrusted_certificate";
    }
    for (unsigned i = 0; i < have; i++)
        gnutls_x509_crt_deinit(crt[i]);
    if (reason) {
        refuse(h, st, reason, NULL);
        return GNUTLS_E_CERTIFICATE_ERROR;
    }
    st->verified = 1;
    return 0;
}

/* ---------------------------------------------------------------- connections and requests */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    cm_metrics_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_state *st = calloc(1, sizeof *st);
        const union MHD_ConnectionInfo *tls =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        *socket_context = st;
        if (!st || !tls || !tls->tls_session)
            return; /* no state or no session: the handshake cannot verify, so it fails */
        st->h = h;
        if (addr && addr->client_addr) {
            const struct sockaddr *sa = addr->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
                          st->peer, sizeof st->peer);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                          st->peer, sizeof st->peer);
        }
        gnutls_session_t s = tls->tls_session;
        gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_function(s, verify_client);
        return;
    }
    conn_state *st = *socket_context;
    /* closed before an authenticated handshake: no certificate, plain HTTP, an old protocol,
     * or nothing at all */
    if (st && !st->verified && !st->refused)
        refuse(h, st, "tls_handshake", NULL);
    free(st);
    *socket_context = NULL;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *body,
                              int close_after, const char *allow)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (close_after)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static int cn_allowed(const cm_metrics_http *h, const char *cn)
{
    for (int i = 0; i < h->n_allow; i++)
        if (strcmp(h->allow[i], cn) == 0)
            return 1;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    (void)upload_data;
    cm_metrics_http *h = cls;
    static int seen;
    if (*req_cls) { /* a body the answer below already refused: swallowed, never looked at */
        *upload_data_size = 0;
        return MHD_YES;
    }
    *req_cls = &seen;
    uint64_t t0 = cm_mono_us();
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_state *st = ci ? ci->socket_context : NULL;
    char m[72], p[72], extra[200];
    clean(method, m, sizeof m);
    clean(url, p, sizeof p);
    snprintf(extra, sizeof extra, "method=%s path=%s", m, p);
    if (!st || !st->verified) {
        refuse(h, st, "not_authenticated", extra);
        return answer(c, MHD_HTTP_FORBIDDEN, "forbidden\n", 1, NULL);
    }
    if (!cn_allowed(h, st->cn)) {
        refuse(h, st, "cn_not_allowed", extra);
        return answer(c, MHD_HTTP_FORBIDDEN, "forbidden\n", 1, NULL);
    }
    const char *clen = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_CONTENT_LENGTH);
    if ((clen && strcmp(clen, "0") != 0) ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
        *upload_data_size) {
        refuse(h, st, "body", extra);
        return answer(c, MHD_HTTP_CONTENT_TOO_LARGE, "request bodies are refused\n", 1, NULL);
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0) {
        refuse(h, st, "method_not_allowed", extra);
        return answer(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n", 1, MHD_HTTP_METHOD_GET);
    }
    if (strcmp(url, "/metrics") != 0) {
        refuse(h, st, "not_found", extra);
        return answer(c, MHD_HTTP_NOT_FOUND, "only /metrics\n", 1, NULL);
    }
    char *text = NULL;
    size_t len = 0;
    if (cm_metrics_render(h->m, &text, &len) != CM_OK)
        return answer(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", 1, NULL);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    cm_metric_inc(h->served);
    cm_metric_observe_us(h->serve_us, cm_mono_us() - t0);
    return rc;
}

/* libmicrohttpd's own messages (failed handshakes among them: their rate is the network's). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\r\n")] = '\0';
    cm_debug("mhd=\"%s\"", line);
}

/* ---------------------------------------------------------------- set-up */

static cm_err config_error(const cm_conf *conf, const char *key, char err[CM_CONF_ERRLEN],
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static cm_err config_error(const cm_conf *conf, const char *key, char err[CM_CONF_ERRLEN],
                           const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(err, CM_CONF_ERRLEN, "%s:%d: [metrics] %s: %s", cm_conf_name(conf),
             cm_conf_line(conf, "metrics", key), key, msg);
    return CM_ERR_CONFIG;
}

cm_err cm_metrics_http_new(const cm_conf *conf, const char *service, cm_metrics *m,
                           cm_metrics_http **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    static const char *const required[] = {"listen", "cert", "key", "ca", "allow"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        const char *v = cm_conf_get(conf, "metrics", required[i]);
        if (!v || !*v) {
            snprintf(err, CM_CONF_ERRLEN, "%s: [metrics] needs %s (and listen, cert, key, ca, "
                     "allow)", cm_conf_name(conf), required[i]);
            return CM_ERR_CONFIG;
        }
    }
    cm_metrics_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, CM_CONF_ERRLEN, "out of memory");
        return CM_ERR_NOMEM;
    }
    pthread_mutex_init(&h->qlock, NULL);
    h->m = m;
    snprintf(h->service, sizeof h->service, "%s", service);
    snprintf(h->subject, sizeof h->subject, "%s:metrics", service);
    cm_err rc = CM_ERR_CONFIG;
    const char *listen = cm_conf_get(conf, "metrics", "listen");
    const char *keyf = cm_conf_get(conf, "metrics", "key");
    char ferr[CM_CONF_ERRLEN], why[CM_CONF_ERRLEN];
    size_t len;
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (cm_net_split(listen, h->host, h->port) != 0) {
        rc = config_error(conf, "listen", err, "'%s' is not HOST:PORT", listen);
        goto fail;
    }
    if (getaddrinfo(*h->host ? h->host : NULL, h->port, &hints, &ai) != 0) {
        rc = config_error(conf, "listen", err, "cannot resolve '%s'", h->host);
        goto fail;
    }
    freeaddrinfo(ai);
    if (cm_conf_read_file(cm_conf_get(conf, "metrics", "cert"), &h->cert_pem, &len, ferr)) {
        rc = config_error(conf, "cert", err, "%s", ferr);
        goto fail;
    }
    if (cm_key_file_check(keyf) != CM_OK) {
        rc = config_error(conf, "key", err, "%s must be a regular file of mode 0600", keyf);
        goto fail;
    }
    if (cm_conf_read_file(keyf, &h->key_pem, &h->key_len, ferr)) {
        rc = config_error(conf, "key", err, "%s", ferr);
        goto fail;
    }
    if (cm_conf_read_file(cm_conf_get(conf, "metrics", "ca"), &h->ca_pem, &len, ferr)) {
        rc = config_error(conf, "ca", err, "%s", ferr);
        goto fail;
    }
    /* the pair must make a credential, as libmicrohttpd will make it */
    gnutls_certificate_credentials_t cred = NULL;
    gnutls_datum_t cd = {(unsigned char *)h->cert_pem, (unsigned)strlen(h->cert_pem)};
    gnutls_datum_t kd = {(unsigned char *)h->key_pem, (unsigned)h->key_len};
    int g = gnutls_certificate_allocate_credentials(&cred);
    if (g >= 0)
        g = gnutls_certificate_set_x509_key_mem(cred, &cd, &kd, GNUTLS_X509_FMT_PEM);
    if (cred)
        gnutls_certificate_free_credentials(cred);
    if (g < 0) {
        rc = config_error(conf, "cert", err, "certificate and key do not make a TLS credential "
                          "(%s)", gnutls_strerror(g));
        goto fail;
    }
    const char *crl = cm_conf_get(conf, "metrics", "crl");
    if (crl && *crl) {
        struct stat st;
        snprintf(h->crl_path, sizeof h->crl_path, "%s", crl);
        if (stat(crl, &st) == 0)
            h->crl_mtime = st.st_mtim;
    }
    if (trust_build(h, &h->trust, why, sizeof why) != CM_OK) {
        rc = config_error(conf, crl && strstr(why, crl) ? "crl" : "ca", err, "%s", why);
        goto fail;
    }
    h->crl_checked_ms = cm_mono_ms();
    char buf[4096];
    const char *items[MAX_ALLOW];
    int n = cm_conf_split(cm_conf_get(conf, "metrics", "allow"), buf, sizeof buf, items,
                          MAX_ALLOW);
    if (n <= 0) {
        rc = config_error(conf, "allow", err, "1 to %d certificate CNs", MAX_ALLOW);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        if (!*items[i] || strlen(items[i]) > 64) {
            rc = config_error(conf, "allow", err, "'%s' is not a CN (1 to 64 characters)",
                              items[i]);
            goto fail;
        }
        snprintf(h->allow[h->n_allow++], sizeof h->allow[0], "%s", items[i]);
    }
    h->served = cm_metric_counter(m, "suido_metrics_http_requests_total",
                                  "scrapes answered on the metrics endpoint");
    h->serve_us = cm_metric_histogram(m, "suido_metrics_http_render_seconds",
                                      "time to render one scrape");
    static const char *const reasons[] = {"tls_handshake", "untrusted_certificate",
                                          "cn_not_allowed", "not_found", "method_not_allowed",
                                          "body"};
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "suido_metrics_http_refused_total{reason=\"%s\"}",
                 reasons[i]);
        cm_metric_counter(m, name, "requests and connections refused, by reason");
    }
    *out = h;
    return CM_OK;
fail:
    cm_metrics_http_destroy(&h);
    return rc;
}

cm_err cm_metrics_http_start(cm_metrics_http *h, char err[CM_CONF_ERRLEN])
{
    char why[CM_CONF_ERRLEN - 32];
    int fd = cm_net_listen(h->host, h->port, 16, why, sizeof why);
    if (fd < 0) {
        snprintf(err, CM_CONF_ERRLEN, "metrics endpoint %s", why);
        return CM_ERR_IO;
    }
    /* the server thread takes no signals: SIGTERM must reach the threads that stop the daemon
     * (a blocked send returns on EINTR only in the thread the signal interrupts) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    h->daemon = MHD_start_daemon(
        MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_TLS | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request,
        h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_HTTPS_MEM_CERT, h->cert_pem, MHD_OPTION_HTTPS_MEM_KEY, h->key_pem,
        MHD_OPTION_HTTPS_MEM_TRUST, h->ca_pem, MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_CONNECTION_LIMIT, CONN_LIMIT,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, CONN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
        CONN_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!h->daemon) {
        close(fd);
        snprintf(err, CM_CONF_ERRLEN, "metrics endpoint %s:%s: libmicrohttpd did not start",
                 *h->host ? h->host : "*", h->port);
        return CM_ERR_IO;
    }
    /* the key stays in libmicrohttpd's credential only */
    explicit_bzero(h->key_pem, h->key_len);
    cm_info("metrics=https://%s:%s/metrics allow=%d event=listening", *h->host ? h->host : "*",
            h->port, h->n_allow);
    return CM_OK;
}

void cm_metrics_http_destroy(cm_metrics_http **hp)
{
    if (!hp || !*hp)
        return;
    cm_metrics_http *h = *hp;
    if (h->daemon)
        MHD_stop_daemon(h->daemon); /* joins the thread and closes the listening socket */
    if (h->trust)
        gnutls_x509_trust_list_deinit(h->trust, 1);
    if (h->key_pem)
        explicit_bzero(h->key_pem, h->key_len);
    free(h->key_pem);
    free(h->cert_pem);
    free(h->ca_pem);
    pthread_mutex_destroy(&h->qlock);
    free(h);
    *hp = NULL;
}
