/* mon_http: see mon_http.h. libmicrohttpd in "external select" mode: the caller's loop calls
 * mon_http_run, which runs the library for up to timeout_ms; requests are handled right there. */
#include "mon_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_net.h"
#include "mon_body.h"

/* TLS 1.2 and 1.3 with AEAD ciphers only, forward secrecy, the server's preference first. */
#define TLS_PRIORITIES                                                                             \
    "SECURE128:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"         \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

/* Every response: no framing, no sniffing, no referrer, scripts and styles only from here, and
 * the browser remembers to use HTTPS. */
static const char *const SECURITY_HEADERS[][2] = {
    {"Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    {"X-Frame-Options", "DENY"},
    {"Referrer-Policy", "no-referrer"},
    {"Strict-Transport-Security", "max-age=31536000"},
    {"Cross-Origin-Opener-Policy", "same-origin"},
    {"Cross-Origin-Resource-Policy", "same-origin"},
    {"Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"},
};

struct mon_http {
    struct MHD_Daemon *d;
    mon_http_opts o;
    char *cert, *key; /* PEM text; the key is wiped on stop */
    unsigned port;
};

typedef struct conn_state {
    char *body;
    size_t len;
    int too_big;
    int answered;
} conn_state;

const char *mon_request_header(const mon_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *mon_request_cookie(const mon_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_COOKIE_KIND, name);
}

const char *mon_request_arg(const mon_request *r, const char *key)
{
    for (size_t i = 0; i < r->n_args; i++)
        if (strcmp(r->args[i].key, key) == 0)
            return r->args[i].value;
    return NULL;
}

static void response_clear(mon_response *rs)
{
    if (rs->body && !rs->body_static)
        free(rs->body);
    rs->body = NULL;
    rs->len = 0;
    rs->body_static = 0;
}

void mon_response_text(mon_response *rs, unsigned status, const char *type, const char *text)
{
    response_clear(rs);
    rs->status = status;
    rs->content_type = type;
    rs->body = strdup(text ? text : "");
    rs->len = rs->body ? strlen(rs->body) : 0;
}

void mon_response_take(mon_response *rs, unsigned status, const char *type, char *body,
                       size_t len)
{
    response_clear(rs);
    rs->status = status;
    rs->content_type = type;
    rs->body = body;
    rs->len = body ? len : 0;
}

void mon_response_static(mon_response *rs, unsigned status, const char *type, const char *body,
                         size_t len)
{
    response_clear(rs);
    rs->status = status;
    rs->content_type = type;
    rs->body = (char *)body;
    rs->len = len;
    rs->body_static = 1;
}

typedef struct arg_walk {
    mon_request *rq;
} arg_walk;

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t klen, const char *value, size_t vlen)
{
    (void)kind;
    mon_request *rq = ((arg_walk *)cls)->rq;
    return mon_query_add(rq, key, klen, value, vlen) ? MHD_YES : MHD_NO;
}

static enum MHD_Result send_response(struct MHD_Connection *c, mon_response *rs)
{
    struct MHD_Response *r;
    if (rs->body && !rs->body_static) {
        r = MHD_create_response_from_buffer(rs->len, rs->body, MHD_RESPMEM_MUST_FREE);
        if (r)
            rs->body = NULL; /* the library frees it now */
    } else {
        r = MHD_create_response_from_buffer(rs->len, rs->body ? rs->body : (char *)"",
                                            MHD_RESPMEM_PERSISTENT);
    }
    if (!r) {
        response_clear(rs);
        return MHD_NO;
    }
    for (size_t i = 0; i < sizeof SECURITY_HEADERS / sizeof SECURITY_HEADERS[0]; i++)
        MHD_add_response_header(r, SECURITY_HEADERS[i][0], SECURITY_HEADERS[i][1]);
    MHD_add_response_header(r, "Content-Type",
                            rs->content_type ? rs->content_type : "text/plain; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control",
                            rs->cacheable ? "private, max-age=300" : "no-store");
    for (int i = 0; i < 2; i++)
        if (rs->cookies[i][0])
            MHD_add_response_header(r, "Set-Cookie", rs->cookies[i]);
    if (rs->location[0])
        MHD_add_response_header(r, "Location", rs->location);
    if (rs->disposition[0])
        MHD_add_response_header(r, "Content-Disposition", rs->disposition);
    enum MHD_Result ok = MHD_queue_response(c, rs->status ? rs->status : 500, r);
    MHD_destroy_response(r);
    response_clear(rs);
    return ok;
}

static void client_address(struct MHD_Connection *c, char out[64])
{
    snprintf(out, 64, "unknown");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, 64);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, 64);
}

/* Wipes and frees the body collected so far (it may hold a password); st->len is kept. */
static void drop_body(conn_state *st)
{
    if (st->body) {
        OPENSSL_cleanse(st->body, st->len);
        free(st->body);
        st->body = NULL;
    }
}

/* Builds the request and asks the handler; queues its response. */
static enum MHD_Result answer(mon_http *h, struct MHD_Connection *c, const char *url,
                              const char *method, conn_state *st)
{
    mon_request rq = {.method = method, .path = url, .conn = c};
    rq.body = st->body && !st->too_big ? st->body : "";
    rq.body_len = st->too_big ? 0 : st->len;
    rq.body_too_big = st->too_big;
    client_address(c, rq.client);
    arg_walk w = {&rq};
    MHD_get_connection_values_n(c, MHD_GET_ARGUMENT_KIND, collect_arg, &w);
    mon_response rs = {0};
    h->o.handler(h->o.ctx, &rq, &rs);
    st->answered = 1;
    return send_response(c, &rs);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    mon_http *h = cls;
    conn_state *st = *con_cls;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st)
            return MHD_NO;
        *con_cls = st;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            unsigned long long n = strtoull(cl, &end, 10);
            if (*end || end == cl || n > h->o.max_body)
                st->too_big = 1;
        }
        /* a body that cannot be taken is refused before it is read */
        return st->too_big ? answer(h, c, url, method, st) : MHD_YES;
    }
    if (st->answered) {
        *upload_size = 0; /* refused already: the rest of the body is discarded */
        return MHD_YES;
    }
    if (*upload_size) {
        if (st->too_big || st->len + *upload_size > h->o.max_body) {
            /* past the limit without a length announced: the rest is read and dropped (the
             * library answers only once a body is complete), then refused */
            st->too_big = 1;
            drop_body(st);
            st->len = 0;
            *upload_size = 0;
            return MHD_YES;
        }
        /* not realloc: a body may carry a password, and no copy of it may be left behind */
        char *nb = malloc(st->len + *upload_size + 1);
        if (!nb)
            return MHD_NO;
        if (st->body)
            memcpy(nb, st->body, st->len);
        memcpy(nb + st->len, upload_data, *upload_size);
        drop_body(st);
        st->len += *upload_size;
        nb[st->len] = '\0';
        st->body = nb;
        *upload_size = 0;
        return MHD_YES;
    }
    return answer(h, c, url, method, st);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)c;
    mon_http *h = cls;
    conn_state *st = *con_cls;
    if (st && !st->answered && code != MHD_REQUEST_TERMINATED_COMPLETED_OK && h->o.refusal)
        h->o.refusal(h->o.ctx, code == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED
                                   ? "request timed out"
                                   : "request ended before it was complete");
    if (st) {
        drop_body(st);
        free(st);
    }
    *con_cls = NULL;
}

static void on_library_log(void *cls, const char *fmt, va_list ap)
{
    mon_http *h = cls;
    char line[256];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (h->o.refusal)
        h->o.refusal(h->o.ctx, line);
}

/* No percent-decoding: the raw text reaches the handler (see mon_http.h). */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

cm_err mon_http_start(const mon_http_opts *o, mon_http **out, char err[512])
{
    *out = NULL;
    char host[CM_NET_HOSTLEN], port[CM_NET_PORTLEN];
    if (!o->bind || cm_net_split(o->bind, host, port) != 0) {
        snprintf(err, 512, "[http] bind: '%s' is not HOST:PORT (a name, an IPv4 address or "
                 "[IPv6])", o->bind ? o->bind : "");
        return CM_ERR_CONFIG;
    }
    mon_http *h = calloc(1, sizeof *h);
    if (!h)
        return CM_ERR_NOMEM;
    h->o = *o;
    char why[CM_CONF_ERRLEN];
    size_t len;
    if (cm_key_file_check(o->key_file) != CM_OK ||
        cm_conf_read_file(o->cert_file, &h->cert, &len, why) != CM_OK ||
        cm_conf_read_file(o->key_file, &h->key, &len, why) != CM_OK) {
        snprintf(err, 512, "[http] cert %s / key %s: unreadable, or the key is not 0600",
                 o->cert_file, o->key_file);
        mon_http_stop(&h);
        return CM_ERR_KEY;
    }
    /* bound here, on the first address of the name that is this host's (cm_net.h): a name that
     * resolves on one network only keeps the console off the others */
    char lerr[400];
    int fd = cm_net_listen(host, port, 64, lerr, sizeof lerr);
    if (fd < 0) {
        snprintf(err, 512, "[http] bind %s", lerr);
        mon_http_stop(&h);
        return CM_ERR_IO;
    }
    unsigned flags = MHD_USE_TLS | MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, h, MHD_OPTION_EXTERNAL_LOGGER, on_library_log, h,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_HTTPS_MEM_CERT, h->cert, MHD_OPTION_HTTPS_MEM_KEY, h->key,
        MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)o->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->max_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(64 * 1024), MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, h, MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, h, MHD_OPTION_END);
    if (!h->d) {
        close(fd);
        snprintf(err, 512, "[http] cannot serve HTTPS on %s (the certificate and key do not "
                 "match)", o->bind);
        mon_http_stop(&h);
        return CM_ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : 0;
    *out = h;
    return CM_OK;
}

void mon_http_run(mon_http *h, int timeout_ms)
{
    MHD_run_wait(h->d, timeout_ms);
}

unsigned mon_http_port(const mon_http *h) { return h->port; }

void mon_http_stop(mon_http **hp)
{
    if (!hp || !*hp)
        return;
    mon_http *h = *hp;
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->key) {
        OPENSSL_cleanse(h->key, strlen(h->key));
        free(h->key);
    }
    free(h->cert);
    free(h);
    *hp = NULL;
}
