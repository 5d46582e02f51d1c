/* archive_store: the archive's SQLite database (WAL, synchronous=FULL).
 *
 * Every signed batch is kept as the exact envelope bytes the gateway signed, so any reading can
 * be re-verified years later; (gateway, boot_epoch, seq) is the primary key, so storing is
 * idempotent and a replay can never create a second row. Writes are grouped: the caller opens a
 * transaction, adds records, and commits; only after a successful commit may anything be
 * acknowledged. */
#ifndef ARCHIVE_STORE_H
#define ARCHIVE_STORE_H
#include <stdint.h>
#include <sqlite3.h>

#include "cm_err.h"
#include "suido.pb-c.h"

typedef struct archive_store archive_store;

cm_err archive_store_open(const char *path, archive_store **out);
void archive_store_close(archive_store **s);
/* The database handle, for the modules that keep their own tables in it (archive_cases). */
sqlite3 *archive_store_db(archive_store *s);

cm_err archive_store_begin(archive_store *s);
cm_err archive_store_commit(archive_store *s);
void archive_store_rollback(archive_store *s);

/* Adds a verified data/backfill batch. CM_ERR_DUPLICATE if (gateway, epoch, seq) is stored. */
cm_err archive_store_batch(archive_store *s, const Suido__StageMessage *m);
/* Adds a birth, death or command result. */
/* One step of a command (m->command, m->decision, m->reason as detail), from the gate. The
 * strings must be set (the caller checks). */
cm_err archive_store_command(archive_store *s, const Suido__StageMessage *m);
cm_err archive_store_event(archive_store *s, const Suido__StageMessage *m);
/* Adds a refused message with its reason (the audit trail of refusals). */
cm_err archive_store_reject(archive_store *s, const Suido__StageMessage *m, const char *reason);
cm_err archive_store_alert(archive_store *s, const Suido__StageMessage *m);

/* Appends a security event to the hash-chained audit log (cm_audit), as told by `source` (the
 * authenticated peer, whatever the event claims). The chain head moves only with the
 * transaction: a rollback puts it back. */
cm_err archive_store_audit(archive_store *s, const char *source, const Suido__AuditEvent *e);

/* Stored sequences of (gateway, epoch) in ascending order, from `after` on; calls fn for each. */
cm_err archive_store_seqs(archive_store *s, const char *gateway, uint64_t epoch, uint64_t after,
                          void (*fn)(void *ctx, uint64_t seq), void *ctx);

#endif
