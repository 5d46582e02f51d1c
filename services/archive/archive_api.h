/* archive_api: the archive's operator API ([api] ROUTER) in one table.
 *
 * Every operation the API answers has one row: its ArchiveOp, which peers (ZAP names) may ask it,
 * the least operator role it needs (viewer < operator < admin, as in the registry and the
 * monitor), whether a standby answers it, and its handler. archive_api_dispatch checks a request
 * against its row (peer, then the operator's session and role, then standby) before the handler
 * runs; a request that fails a check never reaches a handler, and every refusal goes to the
 * caller's `denied` hook (the archive counts it and writes an audit entry). The table is the
 * API's attack surface on one screen (in the manner of OpenSSH's monitor table):
 *
 *   op              peers              role      standby
 *   alert_list      suidoctl,monitor   viewer    no
 *   alert_show      suidoctl,monitor   viewer    no
 *   alert_ack       suidoctl,monitor   operator  no
 *   alert_close     suidoctl,monitor   operator  no
 *   repl_status     suidoctl           viewer    yes
 *   repl_promote    suidoctl           admin     yes
 *   trend           monitor            viewer    no
 *   gateway_stats   monitor            viewer    no
 *   planning        monitor            viewer    no
 *   command_log     monitor            operator  no
 *   audit_list      monitor            admin     no
 *   audit_verify    monitor            admin     no
 *
 * What the archive does beyond its database (an operator's change of a case, replication, the
 * session check) is reached through archive_api_hooks, so the table and its checks can be
 * tested without a running archive. */
#ifndef ARCHIVE_API_H
#define ARCHIVE_API_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

typedef enum archive_role {
    ARCHIVE_ROLE_NONE = 0,
    ARCHIVE_ROLE_VIEWER,
    ARCHIVE_ROLE_OPERATOR,
    ARCHIVE_ROLE_ADMIN,
} archive_role;

/* "viewer", "operator", "admin"; anything else is ARCHIVE_ROLE_NONE. */
archive_role archive_role_parse(const char *s);
const char *archive_role_name(archive_role r);

typedef struct archive_api_hooks {
    void *ctx;
    /* The operator and role of a session token (the registry). CM_OK, CM_ERR_DENIED (no such
     * live session) or CM_ERR_UNAVAILABLE. */
    cm_err (*session)(void *ctx, const char *token, char who[65], char role[16]);
    /* An operator's acknowledgement or closing of a case (q->op), stored with its audit entry
     * and committed before it returns; the outcome. */
    cm_err (*change_case)(void *ctx, Suido__ArchiveRequest *q, const char *who);
    /* The replication status (owned by the replica). */
    void (*repl_status)(void *ctx, Suido__ReplicationStatus **st);
    /* Promotes a following standby; why gets the reason of a refusal. */
    cm_err (*repl_promote)(void *ctx, int force, const char *who, char *why, size_t len);
    /* A refused request: op is the row's name (or "unknown"), reason one of malformed,
     * unknown_op, peer, no_session, role. Counted and audited by the archive. */
    void (*denied)(void *ctx, const char *op, const char *peer, const char *who,
                   const char *reason);
    /* Optional: the registry's latest audit checkpoint, its signature verified, for
     * audit_verify: CM_OK and *cp (the caller frees it with
     * suido__audit_checkpoint__free_unpacked), CM_ERR_UNKNOWN (none signed yet),
     * CM_ERR_UNAVAILABLE (no answer), CM_ERR_SIGNATURE (not the registry's), CM_ERR_CONFIG (no
     * key to check it with). NULL: the chain is checked without it. */
    cm_err (*checkpoint)(void *ctx, Suido__AuditCheckpoint **cp);
} archive_api_hooks;

/* What a handler gets: the request, the operator, and where its answer goes. */
typedef struct archive_api_call {
    const archive_api_hooks *hooks;
    cm_sql *db;
    Suido__ArchiveRequest *q;
    const char *who;
    uint64_t now_ms;
    Suido__ArchiveReply *rep;
    char *why;   /* a message for the operator besides the code ("" when none) */
    size_t why_len;
} archive_api_call;

typedef struct archive_api_op {
    int op;                     /* Suido__ArchiveOp */
    const char *name;
    const char *peers;          /* ZAP names, comma-separated */
    archive_role min_role;
    int on_standby;             /* 1: a following standby answers it too */
    cm_err (*handler)(archive_api_call *c);
} archive_api_op;

/* The table (n rows). */
const archive_api_op *archive_api_table(size_t *n);

/* Checks q from peer against its row and, if every check passes, runs its handler. rep gets the
 * answer's fields (free them with archive_api_free), why a message for the operator. Returns the
 * handler's code, or CM_ERR_DENIED (peer, session or role), CM_ERR_INVAL (unknown op),
 * CM_ERR_UNAVAILABLE (a standby asked for what only a primary answers). */
cm_err archive_api_dispatch(const archive_api_hooks *h, cm_sql *db, const char *peer,
                            int standby, Suido__ArchiveRequest *q, uint64_t now_ms,
                            Suido__ArchiveReply *rep, char *why, size_t why_len);

/* Frees what archive_api_dispatch put into rep (not rep itself, nor rep->replication, which the
 * replica owns). */
void archive_api_free(Suido__ArchiveReply *rep);

#endif
