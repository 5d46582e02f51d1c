/* archive_store: the archive's database, through cm_sql: SQLite (the embedded default: WAL,
 * synchronous=FULL) or PostgreSQL, with one schema and the same SQL on both.
 *
 * Every signed batch is kept as the exact envelope bytes the gateway signed, so any reading can
 * be re-verified years later; (gateway, boot_epoch, seq) is the primary key, so storing is
 * idempotent and a replay can never create a second row. Writes are grouped: the caller opens a
 * transaction, adds records, and commits; only after a successful commit may anything be
 * acknowledged. */
#ifndef ARCHIVE_STORE_H
#define ARCHIVE_STORE_H
#include <stdint.h>

#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

typedef struct archive_store archive_store;

/* Opens (creating if needed) the SQLite archive at path. */
cm_err archive_store_open(const char *path, archive_store **out);
/* Takes over an open database (*db is NULLed, and closed on failure): creates or completes the
 * schema, checks its version. name identifies the database in logs (a path, never a connection
 * string). */
cm_err archive_store_open_db(cm_sql **db, const char *name, archive_store **out);
/* Creates the archive's tables that are missing (every module's: archive_cases too) and records
 * the schema version, in one transaction; refuses a database of a newer or unknown version. */
cm_err archive_store_create_schema(cm_sql *db, const char *name);
void archive_store_close(archive_store **s);
/* The database handle, for the modules that keep their own tables in it (archive_cases). */
cm_sql *archive_store_db(archive_store *s);
/* 1 while the database connection is usable (always, on SQLite). */
int archive_store_connected(archive_store *s);
/* Makes a lost connection again and reloads the audit chain's head; CM_ERR_UNAVAILABLE while the
 * server cannot be reached. */
cm_err archive_store_reconnect(archive_store *s);

cm_err archive_store_begin(archive_store *s);
/* Fails (nothing may be acknowledged) also when PostgreSQL rolled the transaction back because a
 * statement in it failed. */
cm_err archive_store_commit(archive_store *s);
void archive_store_rollback(archive_store *s);

/* What the archive can prove of an accepted record, kept in its status column: "verified" for a
 * suido gateway's signed envelope (re-verifiable for ever), "transport" for a Sparkplug node's
 * payload (authenticated by its TLS identity at the broker, not signed). */
const char *archive_status_verified(const Suido__StageMessage *m);
/* Adds a verified data/backfill batch. CM_ERR_DUPLICATE if (gateway, epoch, seq) is stored. */
cm_err archive_store_batch(archive_store *s, const Suido__StageMessage *m);
/* Adds a birth, death or command result. */
/* One step of a command (m->command, m->decision, m->reason as detail), from the gate. The
 * strings must be set (the caller checks). now_ms: the input's time, kept when m carries no
 * receive time (never the clock: a standby applying the same input stores the same row). */
cm_err archive_store_command(archive_store *s, const Suido__StageMessage *m, uint64_t now_ms);
cm_err archive_store_event(archive_store *s, const Suido__StageMessage *m);
/* Adds a refused message with its reason (the audit trail of refusals). */
cm_err archive_store_reject(archive_store *s, const Suido__StageMessage *m, const char *reason);
cm_err archive_store_alert(archive_store *s, const Suido__StageMessage *m);

/* Appends a security event to the hash-chained audit log (cm_audit), as told by `source` (the
 * authenticated peer, whatever the event claims). The chain head moves only with the
 * transaction: a rollback puts it back. */
cm_err archive_store_audit(archive_store *s, const char *source, const Suido__AuditEvent *e);

/* Stored sequences of (gateway, epoch) in ascending order, from `after` on, then those of the
 * runs recorded lost (archive_acked.h: held for the acks' sake, at most 16384 past `after`:
 * ask again from further on); calls fn for each. */
cm_err archive_store_seqs(archive_store *s, const char *gateway, uint64_t epoch, uint64_t after,
                          void (*fn)(void *ctx, uint64_t seq), void *ctx);

#endif
