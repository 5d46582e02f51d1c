/* archive_replica: the archive's replication to a standby archive, both ends.
 *
 * Statement-based, with deterministic inputs. Storing in the archive is a function of the input
 * (its bytes, its authenticated sender, one timestamp) and of what is stored already, so a
 * standby that applies the same inputs in the same order holds the same rows and the same audit
 * chain head. Inputs are of four kinds: "stage" (a StageMessage from the pipeline), "audit" (an
 * AuditEvent the archive records itself), "alert_ack" and "alert_close" (an operator's change of
 * an alert case: the ArchiveRequest without its token, the operator as sender).
 *
 * Primary ([replication] role = primary, bind, allow = the standbys, retain_s): every input is
 * appended to the table replog(id, ts_ms, peer, kind, body) in the transaction that stores it
 * (archive_replica_log); after the commit (archive_replica_committed) it is visible to the
 * standbys. A standby asks on the [replication] ROUTER for "the inputs after N, at most K"; the
 * request is its acknowledgement of 1..N (it has committed them). When nothing is new the request
 * is held up to 1 s and answered right after the next commit (long poll). Per standby the primary
 * keeps the position acknowledged and when; records behind and lag (age of the oldest
 * unacknowledged input) are metrics and part of the status. While a standby applies (it asked
 * for inputs within standby_timeout_s), the gateways' end-to-end acks are held until a standby
 * has acknowledged the commit that stored what they cover (archive_replica_hold_ack), so whatever
 * a promoted standby lacks is still in the gateways' outboxes; a standby silent for longer, or
 * one that stopped applying, holds nothing back (acks flow on commit,
 * suido_archive_repl_standbys_live = 0). A request naming a position this primary does not
 * have, or an input there that is not its own (by its time), is refused: that standby follows
 * another history and must be seeded again from a backup of this primary. replog rows are
 * kept until every standby seen has acknowledged them and they are older than retain_s (the
 * newest row is always kept: it numbers the next input). Without role = primary nothing is
 * written.
 *
 * Standby ([replication] role = standby, primary = endpoint, primary_key = the primary's CURVE
 * public key): a DEALER client of the primary. Each answer is checked (decodes, status 0, the
 * request it answers, contiguous ids from the applied position on); its inputs are applied
 * through the caller's apply hook and the position is stored (repl_state) in one transaction,
 * then it asks again. An answer that fails a check or an input the hook refuses is rolled back,
 * audited (hook), counted, and applying stops (no input is ever skipped); the standby still asks
 * with the same position, applying nothing, so the primary sees it and it sees the primary.
 *
 * Promotion (archive_replica_promote): refused while the primary answered within the last 10 s
 * unless forced; records promoted in repl_state together with the audit entry (hook), stops
 * following. A promoted standby restarts as a primary (without standbys until configured so).
 *
 * Configured role = primary clears that mark.
 *
 * SQLite archives only: PostgreSQL does not give back the ids of rolled-back inserts, so a
 * standby would number events and cases differently (a PostgreSQL archive is replicated by
 * PostgreSQL). One thread (the archive's). The SQL runs on the archive's connection, inside its
 * transactions: the caller's begin/commit/rollback hooks keep its own state (audit chain head)
 * right. */
#ifndef ARCHIVE_REPLICA_H
#define ARCHIVE_REPLICA_H
#include <stddef.h>
#include <stdint.h>

#include "cm_sql.h"
#include "cm_svc.h"
#include "suido.pb-c.h"

#define ARCHIVE_REPL_SPEC_ROWS                                                                     \
    {"replication", "role", 0, "none (default), primary or standby"},                              \
        {"replication", "bind", 0, "primary: endpoint the standbys connect to"},                   \
        {"replication", "allow", 0, "primary: NAME:curve.pub of every standby"},                   \
        {"replication", "retain_s", 0, "primary: keep acknowledged inputs this long (3600)"},      \
        {"replication", "standby_timeout_s", 0,                                                    \
         "primary: a standby silent this long is gone; acks no longer wait for it (10)"},          \
        {"replication", "primary", 0, "standby: the primary's [replication] endpoint"},            \
        {"replication", "primary_key", 0, "standby: the primary's CURVE public key file"},         \
        {"replication", "batch", 0, "standby: most inputs per request (500)"}

typedef struct archive_replica archive_replica;

/* One logged input, as the standby receives it (strings and body borrowed for the call). */
typedef struct archive_repl_input {
    uint64_t id, ts_ms;
    const char *peer, *kind;
    const uint8_t *body;
    size_t len;
} archive_repl_input;

typedef struct archive_repl_hooks {
    void *ctx;
    /* the archive's transaction (begin joins one already open) */
    cm_err (*begin)(void *ctx);
    cm_err (*commit)(void *ctx);
    void (*rollback)(void *ctx);
    /* standby: applies one input inside the open transaction; an error refuses the answer */
    cm_err (*apply)(void *ctx, const archive_repl_input *in);
    /* an audit entry the archive makes itself (refusals; promotion, inside its transaction) */
    void (*audit)(void *ctx, const char *event, const char *subject, const char *detail);
    /* primary: a gateway ack held until a standby had what it covers, now to be published */
    void (*release_ack)(void *ctx, const char *gw, uint64_t epoch, uint64_t seq);
} archive_repl_hooks;

/* Reads [replication], creates replog and repl_state (roles primary and standby), binds or
 * connects. db and hooks are borrowed for the replica's lifetime. CM_ERR_CONFIG etc. with err. */
cm_err archive_replica_new(cm_svc *svc, cm_sql *db, const archive_repl_hooks *hooks,
                           archive_replica **out, char err[CM_CONF_ERRLEN]);
void archive_replica_destroy(archive_replica **r);

/* 1 while this archive is a standby that follows its primary (not promoted). */
int archive_replica_following(const archive_replica *r);
/* "none", "primary", "standby" or "promoted". */
const char *archive_replica_role(const archive_replica *r);

/* ---- primary ---- */
/* 1 when inputs must be logged (role primary). */
int archive_replica_logging(const archive_replica *r);
/* Appends an input to replog inside the open transaction. An error means the transaction must
 * not be committed (a record stored without its log entry would never reach the standby). */
cm_err archive_replica_log(archive_replica *r, const char *kind, const char *peer, uint64_t ts_ms,
                           const uint8_t *body, size_t len);
/* After a successful commit: the logged inputs become visible; held requests are answered. */
void archive_replica_committed(archive_replica *r);
/* After a rollback: the inputs logged since the last commit are forgotten. */
void archive_replica_rolled_back(archive_replica *r);
/* A gateway ack the caller is about to publish after a commit: returns 1 if it is held until a
 * standby acknowledges that commit (then release_ack publishes it), 0 to publish it now. */
int archive_replica_hold_ack(archive_replica *r, const char *gw, uint64_t epoch, uint64_t seq);
/* Answers the standbys' requests waiting on the socket (never blocks). */
void archive_replica_serve(archive_replica *r);

/* ---- standby ---- */
/* The socket to poll for input (the DEALER to the primary), NULL when not following. */
void *archive_replica_socket(const archive_replica *r);
/* Receives and applies the primary's answers, asks again (never blocks). */
void archive_replica_follow(archive_replica *r);
/* Becomes the primary: see above. ts_ms: the time recorded. CM_ERR_DENIED with why when the
 * primary answered within the guard time (and not forced), CM_ERR_INVAL when not following,
 * CM_ERR_DB when the change could not be committed (nothing changed). */
cm_err archive_replica_promote(archive_replica *r, int force, uint64_t ts_ms, char *why,
                               size_t whylen);

/* ---- both ---- */
/* Timers (held requests, liveness, retention) and metrics; call at least every 100 ms. */
void archive_replica_tick(archive_replica *r);
/* The status; *st and what it points to belong to r and stay valid until the next call. */
void archive_replica_status(archive_replica *r, Suido__ReplicationStatus **st);

#endif
