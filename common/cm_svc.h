/* cm_svc: the runtime every suido service daemon shares — config, CURVE identity, ZeroMQ
 * context, ZAP handler and metrics — created in one call so a service's main() shows only what
 * is its own.
 *
 * Start-up order (house style): cm_svc_start() parses arguments, loads and checks the whole
 * config and this service's keys (one clear line and exit 1 on any problem); the service then
 * loads its own files; cm_svc_ready() exits 0 when only checking (-n), else drops to the
 * configured user and sets no_new_privs; only then are sockets bound and databases opened. */
#ifndef CM_SVC_H
#define CM_SVC_H
#include "cm_conf.h"
#include "cm_metrics.h"
#include "cm_metrics_http.h"
#include "cm_ratelimit.h"
#include "cm_daemon.h"
#include "cm_zmq.h"

struct cm_audit_out;

typedef struct cm_svc {
    char name[64];           /* [service] name: unique service id = certificate CN */
    const char *state_dir;   /* [service] state_dir, created if missing */
    cm_conf *conf;
    void *zctx;
    cm_zap *zap;
    cm_curve_keypair keys;   /* zeroed if the service has no CURVE identity */
    cm_metrics *metrics;
    cm_metric *zap_denied, *zap_allowed;
    char revoked_peers[32][64]; /* service ids revoked since start (see cm_events) */
    /* security events of the process's own sockets (refused handshakes, refusals of the metrics
     * endpoint), for the audit log; called on the thread that calls cm_svc_tick */
    void (*on_security)(void *ctx, const char *event, const char *subject, const char *detail);
    void *security_ctx;
    cm_ratelimit security_limit;
    cm_metric *handshakes_refused, *security_suppressed;
    int n_revoked_peers;
    int check_only;
    cm_metrics_http *metrics_http; /* [metrics] endpoint; NULL without one */
    struct {
        cm_metric *days_left;
        uint64_t not_after_ms;
    } certs[16]; /* certificates named in the config (any section's cert and ca) */
    int n_certs;
    int state_lock_fd; /* held by cm_svc_claim_state for the process's life; -1 if not */
    /* this process's audit events to the archive (cm_audit_out_start); owned: flushed by
     * cm_svc_tick, closed by cm_svc_destroy; NULL when the process audits nothing */
    struct cm_audit_out *audit_out;
} cm_svc;

/* Also checks [metrics] (cm_metrics_http) and reads every certificate the config names (any
 * section's cert and ca keys) for suido_certificate_days_left{cert="<section>.<key>",cn=...}. */
cm_svc *cm_svc_start(const char *service, int argc, char **argv, const cm_conf_spec *spec);
/* For a service that must run as one instance (it owns a database or a broker identity, or
 * keeps state that a second copy would contradict): takes an exclusive lock on
 * state_dir/instance.lock, held until the process exits, and writes its pid there. Exits 1 with
 * one line naming the state folder and the holder's pid when another process holds it (a second
 * copy started by mistake, or a scaled replica on the same volume). Call it right after
 * cm_svc_start, before opening any database; nothing is locked when only checking (-n). */
void cm_svc_claim_state(cm_svc *s);
/* After dropping privileges, starts the [metrics] endpoint (exit 1 if it cannot listen). */
void cm_svc_ready(cm_svc *s);
/* Housekeeping of an event loop, at least every 100 ms: refreshes the ZAP counters
 * (suido_zap_denied_total, suido_zap_allowed_total), reports refused handshakes on the server
 * sockets and refusals of the metrics endpoint (counted, logged, and handed to on_security at
 * most 30 per 10 s, the rest summed up in one "security_events_suppressed" event), sends the
 * audit events waiting in the spool (cm_audit_out_flush), updates the certificates' days left
 * and writes the metrics file each second. */
void cm_svc_tick(cm_svc *s);
/* Counts one refusal of this process as suido_rejected_total{reason="<reason>"} (any thread;
 * reason: [a-z0-9_], anything else is counted as "other"). */
void cm_svc_reject(cm_svc *s, const char *reason);
/* The channel a security event of cm_svc_on_security came through, its audit source and actor:
 * "https" for the metrics endpoint's refusals (events "metrics_..."), "zmq" for the others. */
const char *cm_svc_security_via(const char *event);
/* Where security events of this process go (typically an audit socket to the archive). */
void cm_svc_on_security(cm_svc *s,
                        void (*fn)(void *ctx, const char *event, const char *subject,
                                   const char *detail),
                        void *ctx);
/* Revoked service identities: their established connections are ignored as well (ZAP only
 * sees new handshakes). */
void cm_svc_set_peer_revoked(cm_svc *s, const char *peer, int revoked);
int cm_svc_peer_revoked(const cm_svc *s, const char *peer);

/* The path configured as [section] key, or state_dir/dflt_name when absent. */
void cm_svc_path(const cm_svc *s, const char *section, const char *key, const char *dflt_name,
                 char *out, size_t outlen);
/* Logs and exits 1 with "suido-<svc>: <message>". */
void cm_svc_die(const cm_svc *s, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void cm_svc_destroy(cm_svc **s);

/* A service's message dispatch table row: what may arrive, from which peers (ZAP names,
 * comma-separated), and who handles it. The table is the service's attack surface in one place. */
typedef struct cm_dispatch {
    const char *kind;
    const char *peers;
    void (*handler)(void *ctx, void *msg, const char *peer); /* peer: authenticated name */
} cm_dispatch;

/* Row for kind, or NULL. */
const cm_dispatch *cm_dispatch_find(const cm_dispatch *table, const char *kind);
/* 1 if peer is on the row's peer list. */
int cm_dispatch_peer_ok(const cm_dispatch *row, const char *peer);

/* Splits "suido/v1/<gw>/<kind>" into gw (1..64 chars of [a-z0-9-]) and kind. Returns CM_OK or
 * CM_ERR_INVAL for anything else (wildcards, extra levels, bad characters). */
cm_err cm_topic_parse(const char *topic, char gw[65], char kind[16]);
/* The AES key length (16, 24, 32) a header's Suido__Cipher names; 0 for CIPHER_NONE and for
 * anything this suite does not accept. One mapping for every sealer and opener. */
size_t cm_cipher_key_len(int cipher);

#endif
