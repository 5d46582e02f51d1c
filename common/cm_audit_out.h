/* cm_audit_out: the audit output of one process. Every audit event a service makes (its own
 * security events included) goes to the archive's audit log through here, and none is lost
 * because the archive is not up yet, restarting, or unreachable.
 *
 * It owns a PUSH socket to the archive ([output archive], with ZMQ_IMMEDIATE: a send succeeds
 * only on an established connection, nothing waits in memory) and a durable FIFO spool, a SQLite
 * file (state_dir/audit-spool.db, or [audit] spool = PATH) that this process locks while it has
 * it open. The archive writes its own entries directly and has no audit output.
 *
 * Contract:
 *   - cm_audit_out_record sends an event at once only when the spool is empty and the send
 *     succeeds; otherwise the event, with its original time and every field, is appended to the
 *     spool and is durable (fsync) when the call returns. So the archive receives one process's
 *     events in the order they were made, whatever the archive did meanwhile.
 *   - cm_audit_out_flush (cm_svc_tick calls it, at least every 100 ms) sends spooled events
 *     oldest first while sends succeed, and deletes each one after its send. A crash between a
 *     send and its deletion delivers that one event again; after a power failure the deletions
 *     of the last moments may be undone too (they are not fsynced: only appends are), and those
 *     events are delivered again. An event may arrive twice, never not at all.
 *   - Delivered means handed to ZeroMQ on an established connection to the archive. What the
 *     archive had received but not yet stored when it died is lost there, as any frame is.
 *   - Bounded: at most max_events wait (CM_AUDIT_OUT_MAX_EVENTS for a service). A full spool
 *     keeps the oldest events and refuses new ones: each refusal is counted
 *     (suido_audit_spool_dropped_total) and logged as an ERROR line with alarm=1 and the event's
 *     fields, so an event lost this way is visible, never silent. The same holds for an event
 *     the spool cannot store (a write error) or one too big to send.
 *   - Metrics: suido_audit_spooled (gauge, events waiting), suido_audit_spool_dropped_total,
 *     suido_audit_delivered_late_total (spooled events sent later). One log line when the spool
 *     starts holding events (event=audit_spool_holding) and one when it is empty again
 *     (event=audit_spool_drained delivered=N).
 *   - Per process: replicas of a service each have their own state_dir, so their own spool. A
 *     second process that opens a spool in use is refused (CM_ERR_DENIED).
 *
 * Threads: any thread may record; the socket and the spool are used under the output's lock. */
#ifndef CM_AUDIT_OUT_H
#define CM_AUDIT_OUT_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "cm_metrics.h"
#include "cm_svc.h"

#define CM_AUDIT_OUT_MAX_EVENTS 100000 /* a service's spool bound, in events */

/* The config row of the key this module reads ([output archive] is the service's own). */
#define CM_AUDIT_OUT_SPEC_ROWS                                                                     \
    {"audit", "spool", 0,                                                                          \
     "SQLite file keeping audit events until the archive takes them (state_dir/audit-spool.db)"}

typedef struct cm_audit_out cm_audit_out;

/* The service's audit output, kept in s->audit_out: s owns it (cm_svc_tick flushes it,
 * cm_svc_destroy flushes it one last time and closes it) and its security events
 * (cm_svc_on_security) go to it. Without an [output archive] section the service audits
 * nothing and s->audit_out stays NULL. Call once, after cm_svc_ready (the spool is made by the
 * service's own user). Exits 1 with one line when the socket cannot be made or the spool cannot
 * be opened. */
void cm_audit_out_start(cm_svc *s);

/* Opens (or creates, mode 0600) the spool at path, takes over *sock (a PUSH socket with
 * ZMQ_IMMEDIATE; *sock is NULLed, and closed by cm_audit_out_destroy, or here on failure) and
 * registers the metrics on mx. max_events >= 1. Events left in the spool by an earlier run are
 * sent first. CM_ERR_IO when the file cannot be opened or created, CM_ERR_DENIED when another
 * process has it open, CM_ERR_DB when it is not a spool (not a database, or a newer format);
 * the reason, on one line, in why (len bytes, may be NULL). */
cm_err cm_audit_out_open(void **sock, const char *path, uint64_t max_events, cm_metrics *mx,
                         cm_audit_out **out, char *why, size_t len);
/* One last flush, then closes socket and spool (what is left stays for the next start, and is
 * logged); NULLs *a. */
void cm_audit_out_destroy(cm_audit_out **a);

/* One audit event, made now: sent, or spooled (see the contract). Strings are copied; NULL
 * subject or detail are "", a NULL actor is the source. CM_OK when sent or spooled; CM_ERR_DB
 * (the spool is full or cannot store it) or CM_ERR_TOO_BIG when it is refused (counted,
 * logged). A NULL output (no [output archive]) takes nothing and returns CM_OK. Any thread. */
cm_err cm_audit_out_record(cm_audit_out *a, const char *source, const char *event,
                           const char *subject, const char *actor, const char *detail);
/* Sends spooled events, oldest first, while sends succeed (at most ~50 ms of work per call);
 * returns how many were delivered. NULL-safe. */
size_t cm_audit_out_flush(cm_audit_out *a);
/* Events waiting in the spool. */
uint64_t cm_audit_out_spooled(cm_audit_out *a);
const char *cm_audit_out_path(const cm_audit_out *a);

#endif
