/* broker_log: turns the broker's own log lines (Mosquitto publishes them on $SYS/broker/log/<level>
 * with `log_dest topic`) into security events for the audit log: TLS handshakes refused
 * (certificate missing, expired, revoked, from another CA), MQTT protocol errors and malformed
 * packets, session take-overs, clients timed out, and what the suido broker plugin refused,
 * denied or cut. Everything else the broker logs (connections, disconnections) is ignored.
 *
 * The broker logs refusals from anyone on the network, so an attacker controls their rate: the
 * caller passes them through a cm_ratelimit. Pure: no I/O, no clock. */
#ifndef BROKER_LOG_H
#define BROKER_LOG_H
#include <stddef.h>
#include <stdint.h>

typedef struct broker_event {
    const char *event; /* "broker_tls_refused", ... (static) */
    char subject[65];  /* the client's identity when the line names one, else "" */
    char detail[256];  /* the line, control characters and quotes replaced, cut to fit */
} broker_event;

/* Classifies one log line (not NUL-terminated, len bytes). Returns 1 and fills *ev for a security
 * event, 0 for a line that is not one. */
int broker_log_classify(const char *line, size_t len, broker_event *ev);

#endif
