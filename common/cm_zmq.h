/* cm_zmq: ZeroMQ sockets with CURVE on every internal hop, and the ZAP handler that gives each
 * server socket its own allow-list.
 *
 * Every server socket (bind side) is a CURVE server with a ZAP domain; the process's ZAP handler
 * (one thread, inproc://zeromq.zap.01) admits a client only if its CURVE public key is on the
 * allow-list of that domain, and names the peer in the message's "User-Id" property so that a
 * service's dispatch table can check which peer sent a message. A domain with an empty list
 * admits nobody. NULL and PLAIN mechanisms never reach a CURVE socket.
 *
 * Key files hold one Z85 key (40 characters) and an optional newline; secret key files must be
 * mode 0600 or stricter. */
#ifndef CM_ZMQ_H
#define CM_ZMQ_H
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include "cm_conf.h"
#include "cm_err.h"

#define CM_Z85_LEN 40
#define CM_ZMQ_MAX_MSG (1 << 20)  /* no internal frame may exceed 1 MiB */

typedef struct cm_curve_keypair {
    char public_z85[CM_Z85_LEN + 1];
    char secret_z85[CM_Z85_LEN + 1];
} cm_curve_keypair;

cm_err cm_curve_load_public(const char *path, char out[CM_Z85_LEN + 1]);
cm_err cm_curve_load_keypair(const char *public_path, const char *secret_path,
                             cm_curve_keypair *out);

typedef struct cm_zap cm_zap;
/* Starts the ZAP handler thread on ctx. One per process. */
cm_err cm_zap_start(void *ctx, cm_zap **out);
/* Adds public_z85 to domain's allow-list under peer name `peer` (reported as User-Id). */
cm_err cm_zap_allow(cm_zap *z, const char *domain, const char *peer, const char *public_z85);
/* Marks a key revoked (no handshake with it succeeds on any socket of this process) or, with
 * revoked = 0, admitted again where its allow-lists name it. */
cm_err cm_zap_set_revoked(cm_zap *z, const char *public_z85, int revoked);
/* Handshake failures on the server sockets made by cm_zsock_server_conf (which watches each):
 * what = "auth_refused" (ZAP said no: unknown or revoked key), "protocol_error" (for example a
 * NULL or PLAIN client on a CURVE socket; value is libzmq's ZMQ_PROTOCOL_ERROR_* code) or
 * "handshake_failed"; endpoint as libzmq reports it. Call from the thread that owns the sockets;
 * never blocks. */
typedef void (*cm_zap_event_fn)(void *ctx, const char *domain, const char *what,
                                const char *endpoint, unsigned value);
void cm_zap_drain_events(cm_zap *z, cm_zap_event_fn fn, void *ctx);
uint64_t cm_zap_denied(const cm_zap *z);
uint64_t cm_zap_allowed(const cm_zap *z);
void cm_zap_stop(cm_zap **z);

/* Server socket of `type` bound to endpoint with CURVE server role and ZAP domain `domain`.
 * Sets the maximum message size and high-water marks. */
cm_err cm_zsock_server(void *ctx, int type, const char *endpoint, const char *domain,
                       const cm_curve_keypair *own, void **out);
/* Client socket of `type` connected to endpoint (NULL: not connected yet), authenticating with
 * own keys and expecting the server's public key. */
cm_err cm_zsock_client(void *ctx, int type, const char *endpoint, const char *server_public,
                       const cm_curve_keypair *own, void **out);

/* Config table rows of a server socket section and of a client socket section. */
#define CM_ZSOCK_SERVER_ROWS(section)                                                              \
    {section, "bind", 1, "endpoint to bind"},                                                      \
        {section, "allow", 1, "NAME:curve.pub of every peer that may connect (the ACL)"}
#define CM_ZSOCK_CLIENT_ROWS(section)                                                              \
    {section, "connect", 1, "endpoints of every replica"},                                         \
        {section, "server_key", 1, "CURVE public key of the service connected to"}

/* From a config section:
 *   bind  = tcp://127.0.0.1:7101
 *   allow = NAME:/path/NAME.curve.pub, ...   (at least one; the list is the socket's ACL)
 * Registers the allow-list under the section's name as ZAP domain. */
cm_err cm_zsock_server_conf(void *ctx, cm_zap *zap, const cm_conf *conf, const char *section,
                            int type, const cm_curve_keypair *own, void **out,
                            char err[CM_CONF_ERRLEN]);
/* From a config section:
 *   connect    = tcp://127.0.0.1:7101, tcp://127.0.0.1:7111   (one or more replicas)
 *   server_key = /path/verify.curve.pub                      (the replicas share one identity)
 *   server_key = /path/archive.curve.pub, /path/archive-standby.curve.pub   (or one per endpoint)
 * A PUSH to several endpoints sends only on established connections (ZMQ_IMMEDIATE).
 */
cm_err cm_zsock_client_conf(void *ctx, const cm_conf *conf, const char *section, int type,
                            const cm_curve_keypair *own, void **out, char err[CM_CONF_ERRLEN]);
/* As cm_zsock_client_conf for a PUSH that hands frames only to established connections
 * (ZMQ_IMMEDIATE) however many endpoints it names: while no receiver is connected a send with
 * ZMQ_DONTWAIT fails (CM_ERR_UNAVAILABLE) instead of leaving the frame in memory, for a sender
 * that keeps what it could not send itself (cm_audit_out). */
cm_err cm_zsock_push_conf_immediate(void *ctx, const cm_conf *conf, const char *section,
                                    const cm_curve_keypair *own, void **out,
                                    char err[CM_CONF_ERRLEN]);

/* Endpoints that name a host (compose deployments: one DNS name per socket, one address per
 * replica). A PUSH socket made by cm_zsock_client(_conf) with "tcp://NAME:PORT" is connected to
 * every address NAME resolves to (ZMQ_IMMEDIATE: frames go only to established connections) and
 * follows NAME: it is looked up again every 2 s by a thread of its own and the socket's own
 * thread connects new addresses and disconnects vanished ones at its next cm_zsend_pb. A server
 * socket with "tcp://NAME:PORT" binds the address of NAME that belongs to this host. IP
 * addresses, "*" and interface names behave as in libzmq. */
#define CM_ZADDR_LEN 46 /* INET6_ADDRSTRLEN */
/* A resolver: at most max addresses of host as text, sorted, no repeats; returns how many (0:
 * the name does not exist) or -1 when the look-up failed without an answer (kept as before). */
typedef int (*cm_zresolve_fn)(const char *host, char addrs[][CM_ZADDR_LEN], int max);
/* Replaces the resolver (NULL: getaddrinfo) and the look-up period (0: no background thread,
 * look-ups only through cm_zfollow_refresh). For tests; call before making sockets. */
void cm_zfollow_setup(cm_zresolve_fn fn, unsigned period_ms);
/* Looks every followed name up now (what the thread does every period). Any thread. */
void cm_zfollow_refresh(void);
/* Brings sock's connections in line with the last look-up; for the thread that uses sock
 * (cm_zsend_pb does it). Returns how many addresses sock is connected to, or -1 when sock
 * follows no name. */
int cm_zfollow_apply(void *sock);
/* Closes a socket made by cm_zsock_* and stops following its name; sets *sock to NULL. */
void cm_zsock_close(void **sock);

/* Packs m and sends it as one frame. flags as for zmq_send (ZMQ_DONTWAIT ...). */
cm_err cm_zsend_pb(void *sock, const ProtobufCMessage *m, int flags);
/* Receives one frame into msg (initialised by the caller, closed by the caller); copies the
 * authenticated peer name (ZAP User-Id) into peer (may be NULL). */
cm_err cm_zrecv(void *sock, void *zmq_msg, char *peer, size_t peerlen, int flags);
/* Answers a request received on a ROUTER socket: route (the routing frame the request came
 * with, kept by the caller) then m. Never blocks; a reply that cannot be queued is dropped and
 * logged (the client times out and asks again). */
void cm_zreply(void *router, void *route, const ProtobufCMessage *m);

#endif
