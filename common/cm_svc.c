/* cm_svc: shared service runtime and dispatch helpers. */
#include "cm_svc.h"
#include "cm_time.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_crypto.h"
#include "cm_daemon.h"
#include "cm_log.h"
#include "suido.pb-c.h"

/* Label value text: backslash, quote and newline escaped as the text format wants. */
static void label_escape(const char *in, char *out, size_t len)
{
    size_t k = 0;
    for (; *in && k + 3 < len; in++) {
        if (*in == '\\' || *in == '"' || *in == '\n')
            out[k++] = '\\';
        out[k++] = *in == '\n' ? 'n' : *in;
    }
    out[k] = '\0';
}

/* Every certificate the configuration names (any section's cert and ca) gets a days-left gauge;
 * the services themselves load and check them. */
static void certs_load(cm_svc *s)
{
    static const char *const keys[] = {"cert", "ca"};
    for (size_t i = 0; i < cm_conf_section_count(s->conf); i++) {
        const char *sec = cm_conf_section(s->conf, i);
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            const char *path = cm_conf_get(s->conf, sec, keys[k]);
            cm_cert_info ci;
            if (!path || s->n_certs >= (int)(sizeof s->certs / sizeof s->certs[0]))
                continue;
            if (cm_cert_info_load(path, &ci) != CM_OK) {
                cm_warn("cert=%s error=\"not a readable certificate; no days-left gauge\"", path);
                continue;
            }
            char name[320], what[160], cn[160];
            snprintf(what, sizeof what, "%s.%s", sec, keys[k]);
            label_escape(what, name, sizeof name);
            snprintf(what, sizeof what, "%s", name);
            label_escape(ci.subject_cn, cn, sizeof cn);
            snprintf(name, sizeof name, "suido_certificate_days_left{cert=\"%s\",cn=\"%s\"}",
                     what, cn);
            s->certs[s->n_certs].not_after_ms = ci.not_after_ms;
            s->certs[s->n_certs++].days_left = cm_metric_gauge(
                s->metrics, name, "whole days until the certificate expires (negative: expired)");
        }
    }
}

static void certs_update(cm_svc *s)
{
    int64_t now = (int64_t)cm_now_ms();
    for (int i = 0; i < s->n_certs; i++) {
        int64_t left = (int64_t)s->certs[i].not_after_ms - now;
        /* whole days, rounded down: expired an hour ago is -1 */
        int64_t days = left >= 0 ? left / 86400000 : -((-left + 86399999) / 86400000);
        cm_metric_set(s->certs[i].days_left, days);
    }
}

static int has_section(const cm_conf *c, const char *name)
{
    for (size_t i = 0; i < cm_conf_section_count(c); i++)
        if (strcmp(cm_conf_section(c, i), name) == 0)
            return 1;
    return 0;
}

cm_svc *cm_svc_start(const char *service, int argc, char **argv, const cm_conf_spec *spec)
{
    cm_daemon_args args;
    cm_daemon_parse_args(argc, argv, service, &args);
    cm_svc *s = calloc(1, sizeof *s);
    if (!s)
        cm_daemon_die(service, "out of memory");
    s->check_only = args.check_only;
    s->state_lock_fd = -1;
    s->conf = cm_daemon_load_config(service, &args, spec);
    snprintf(s->name, sizeof s->name, "%s", cm_conf_get(s->conf, "service", "name"));
    s->state_dir = cm_conf_get(s->conf, "service", "state_dir");
    if (!s->check_only && mkdir(s->state_dir, 0700) != 0 && errno != EEXIST)
        cm_daemon_die(service, "%s: cannot create state_dir: %s", s->state_dir, strerror(errno));
    const char *pub = cm_conf_get(s->conf, "service", "curve_public");
    const char *sec = cm_conf_get(s->conf, "service", "curve_secret");
    if ((pub && !sec) || (!pub && sec))
        cm_daemon_die(service, "%s: curve_public and curve_secret go together",
                      args.config_path);
    if (pub && cm_curve_load_keypair(pub, sec, &s->keys) != CM_OK)
        cm_daemon_die(service, "%s: CURVE keypair %s / %s unusable (see log line above)",
                      args.config_path, pub, sec);
    s->metrics = cm_metrics_new(s->name, cm_conf_get(s->conf, "service", "metrics_file"));
    s->zctx = zmq_ctx_new();
    if (!s->metrics || !s->zctx)
        cm_daemon_die(service, "out of memory");
    if (cm_zap_start(s->zctx, &s->zap) != CM_OK)
        cm_daemon_die(service, "cannot start the ZAP handler");
    s->zap_denied = cm_metric_gauge(s->metrics, "suido_zap_denied_total",
                                    "CURVE handshakes refused by this process's allow-lists");
    s->zap_allowed = cm_metric_gauge(s->metrics, "suido_zap_allowed_total",
                                     "CURVE handshakes admitted");
    s->handshakes_refused = cm_metric_counter(s->metrics, "suido_zmq_handshakes_refused_total",
                                              "handshakes refused on this process's sockets");
    s->security_suppressed = cm_metric_counter(s->metrics, "suido_security_events_suppressed_total",
                                               "security events over the audit budget");
    cm_ratelimit_init(&s->security_limit, 10000, 30);
    char err[CM_CONF_ERRLEN];
    if (has_section(s->conf, "metrics") &&
        cm_metrics_http_new(s->conf, s->name, s->metrics, &s->metrics_http, err) != CM_OK)
        cm_daemon_die(service, "%s", err);
    certs_load(s);
    certs_update(s);
    cm_daemon_signals();
    return s;
}

void cm_svc_claim_state(cm_svc *s)
{
    if (s->check_only)
        return;
    char path[4200];
    snprintf(path, sizeof path, "%s/instance.lock", s->state_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        cm_daemon_die(s->name, "%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            cm_daemon_die(s->name,
                          "%s is in use by another running suido-%s (pid %s): this service runs "
                          "as one instance only; stop the other one first",
                          s->state_dir, s->name, holder[0] ? holder : "unknown");
        cm_daemon_die(s->name, "%s: cannot lock: %s", path, strerror(e));
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        cm_daemon_die(s->name, "%s: cannot write: %s", path, strerror(errno));
    s->state_lock_fd = fd;
}

void cm_svc_ready(cm_svc *s)
{
    if (s->check_only) {
        printf("suido-%s: configuration ok\n", s->name);
        cm_svc_destroy(&s);
        exit(0);
    }
    if (cm_daemon_drop_privileges(cm_conf_get(s->conf, "service", "user")) != CM_OK)
        cm_svc_die(s, "cannot drop privileges");
    char err[CM_CONF_ERRLEN];
    if (s->metrics_http && cm_metrics_http_start(s->metrics_http, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_info("service=%s state_dir=%s event=ready", s->name, s->state_dir);
}

void cm_svc_path(const cm_svc *s, const char *section, const char *key, const char *dflt_name,
                 char *out, size_t outlen)
{
    const char *v = cm_conf_get(s->conf, section, key);
    if (v && *v)
        snprintf(out, outlen, "%s", v);
    else
        snprintf(out, outlen, "%s/%s", s->state_dir, dflt_name);
}

void cm_svc_set_peer_revoked(cm_svc *s, const char *peer, int revoked)
{
    for (int i = 0; i < s->n_revoked_peers; i++)
        if (strcmp(s->revoked_peers[i], peer) == 0) {
            if (!revoked)
                memcpy(s->revoked_peers[i], s->revoked_peers[--s->n_revoked_peers], 64);
            return;
        }
    if (revoked && s->n_revoked_peers < 32)
        snprintf(s->revoked_peers[s->n_revoked_peers++], 64, "%s", peer);
}

int cm_svc_peer_revoked(const cm_svc *s, const char *peer)
{
    for (int i = 0; i < s->n_revoked_peers; i++)
        if (strcmp(s->revoked_peers[i], peer) == 0)
            return 1;
    return 0;
}

void cm_svc_on_security(cm_svc *s,
                        void (*fn)(void *ctx, const char *event, const char *subject,
                                   const char *detail),
                        void *ctx)
{
    s->on_security = fn;
    s->security_ctx = ctx;
}

/* A security event whose rate an outsider controls: to on_security within the audit budget. */
static void security_event(cm_svc *s, const char *event, const char *subject, const char *detail)
{
    if (!s->on_security)
        return;
    uint64_t closed = 0;
    int pass = cm_ratelimit_take(&s->security_limit, cm_now_ms(), &closed);
    if (closed) {
        char sum[96];
        snprintf(sum, sizeof sum, "events=%llu window_s=10 (over the audit budget)",
                 (unsigned long long)closed);
        s->on_security(s->security_ctx, "security_events_suppressed", s->name, sum);
    }
    if (pass)
        s->on_security(s->security_ctx, event, subject, detail);
    else
        cm_metric_inc(s->security_suppressed);
}

/* cm_zap_event_fn: a refused handshake on one of this process's sockets. */
static void handshake_refused(void *ctx, const char *domain, const char *what,
                              const char *endpoint, unsigned value)
{
    cm_svc *s = ctx;
    cm_metric_inc(s->handshakes_refused);
    char subject[160], detail[256];
    snprintf(subject, sizeof subject, "%s:%s", s->name, domain);
    snprintf(detail, sizeof detail, "socket=%s reason=%s endpoint=%s code=0x%x", subject, what,
             endpoint, value);
    cm_warn("event=handshake_refused %s", detail);
    security_event(s, "zmq_handshake_refused", subject, detail);
}

/* A refusal of the metrics endpoint (counted and logged by it already). */
static void metrics_refused(void *ctx, const char *subject, const char *detail)
{
    security_event(ctx, "metrics_access_refused", subject, detail);
}

void cm_svc_reject(cm_svc *s, const char *reason)
{
    const char *r = reason && *reason && strlen(reason) <= 48 ? reason : "other";
    for (const char *p = r; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            r = "other";
    char name[96];
    snprintf(name, sizeof name, "suido_rejected_total{reason=\"%s\"}", r);
    cm_metric_inc(cm_metric_counter(s->metrics, name, "messages this process refused, by reason"));
}

void cm_svc_tick(cm_svc *s)
{
    cm_zap_drain_events(s->zap, handshake_refused, s);
    if (s->metrics_http) {
        size_t lost = cm_metrics_http_drain(s->metrics_http, metrics_refused, s);
        cm_metric_add(s->security_suppressed, lost);
    }
    cm_audit_out_flush(s->audit_out);
    certs_update(s);
    cm_metric_set(s->zap_denied, (int64_t)cm_zap_denied(s->zap));
    cm_metric_set(s->zap_allowed, (int64_t)cm_zap_allowed(s->zap));
    cm_metrics_flush(s->metrics, 0);
}

void cm_svc_die(const cm_svc *s, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cm_error("error=\"%s\"", msg);
    cm_daemon_die(s->name, "%s", msg);
}

void cm_svc_destroy(cm_svc **sp)
{
    if (!sp || !*sp)
        return;
    cm_svc *s = *sp;
    cm_audit_out_destroy(&s->audit_out); /* a last flush; the rest stays for the next start */
    cm_metrics_http_destroy(&s->metrics_http);
    if (s->metrics)
        cm_metrics_flush(s->metrics, 1);
    cm_zap_stop(&s->zap);
    if (s->zctx)
        zmq_ctx_term(s->zctx);
    cm_metrics_destroy(&s->metrics);
    cm_conf_destroy(&s->conf);
    memset(&s->keys, 0, sizeof s->keys);
    if (s->state_lock_fd >= 0)
        close(s->state_lock_fd);
    free(s);
    *sp = NULL;
}

const cm_dispatch *cm_dispatch_find(const cm_dispatch *table, const char *kind)
{
    for (const cm_dispatch *r = table; r->kind; r++)
        if (strcmp(r->kind, kind) == 0)
            return r;
    return NULL;
}

int cm_dispatch_peer_ok(const cm_dispatch *row, const char *peer)
{
    size_t pl = strlen(peer);
    if (pl == 0)
        return 0;
    for (const char *p = row->peers; p && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == pl && strncmp(p, peer, n) == 0)
            return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

cm_err cm_topic_parse(const char *topic, char gw[65], char kind[16])
{
    static const char prefix[] = "suido/v1/";
    if (strncmp(topic, prefix, sizeof prefix - 1) != 0)
        return CM_ERR_INVAL;
    const char *g = topic + sizeof prefix - 1;
    const char *slash = strchr(g, '/');
    if (!slash)
        return CM_ERR_INVAL;
    size_t gl = (size_t)(slash - g);
    if (gl == 0 || gl > 64)
        return CM_ERR_INVAL;
    for (size_t i = 0; i < gl; i++) {
        char c = g[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return CM_ERR_INVAL;
    }
    const char *k = slash + 1;
    size_t kl = strlen(k);
    if (kl == 0 || kl > 15 || strchr(k, '/'))
        return CM_ERR_INVAL;
    for (size_t i = 0; i < kl; i++)
        if (k[i] < 'a' || k[i] > 'z')
            return CM_ERR_INVAL;
    memcpy(gw, g, gl);
    gw[gl] = '\0';
    memcpy(kind, k, kl + 1);
    return CM_OK;
}

size_t cm_cipher_key_len(int cipher)
{
    switch (cipher) {
    case SUIDO__CIPHER__CIPHER_AES_128_GCM:
        return 16;
    case SUIDO__CIPHER__CIPHER_AES_192_GCM:
        return 24;
    case SUIDO__CIPHER__CIPHER_AES_256_GCM:
        return 32;
    default:
        return 0;
    }
}

const char *cm_svc_security_via(const char *event)
{
    return strncmp(event, "metrics_", 8) == 0 ? "https" : "zmq";
}
