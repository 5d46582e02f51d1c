/* archive_acked: what the archive acknowledged, kept apart from it, and what a restore lost.
 *
 * A gateway drops a batch from its outbox once an end-to-end ack covers it. The archive's
 * database is then the only copy: restored from an older backup, everything acknowledged after
 * that backup is gone, and nothing in the archive shows it (loss at the tail is not a hole).
 * So every published ack point is handed to the registry (REG_ACKED_POINTS, registry_acked.h),
 * within ACKED_FLUSH_MS of publishing, and at start the archive compares the registry's points
 * with what it holds: each run of sequences acknowledged but not held is recorded in the
 * table acked_lost (an input of kind "acked_lost", so a standby records it too), logged as an
 * alarm, audited, and from then on counted as held by the acks (archive_store_seqs), so that
 * the gateway's later batches are acknowledged again instead of waiting on a hole for ever.
 *
 * Limits (stated in the README, "Restore"): points acknowledged in the last ACKED_FLUSH_MS
 * before the registry recorded them are not known; a registry restored from the same backup
 * knows no more than the archive (suidoctl backup restore carries the live registry's points
 * over into the restored one); the comparison at start looks at each epoch's tail first
 * (its highest sequence, one index look-up) and looks for holes only in an epoch whose tail is
 * short of the registry's point. One thread (the archive's). */
#ifndef ARCHIVE_ACKED_H
#define ARCHIVE_ACKED_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

#define ACKED_FLUSH_MS 2000

typedef struct archive_acked archive_acked;

archive_acked *archive_acked_new(void);
void archive_acked_destroy(archive_acked **k);

/* Notes a published ack point; the latest per (gateway, epoch) waits for the next take. */
void archive_acked_note(archive_acked *k, const char *gw, uint64_t epoch, uint64_t seq);
/* Points waiting to be handed over. */
size_t archive_acked_waiting(const archive_acked *k);
/* Up to max waiting points into pts (borrowed from k until archive_acked_taken or the next
 * note); returns how many. */
size_t archive_acked_take(archive_acked *k, Suido__Ack **pts, size_t max);
/* The points of the last take reached the registry: they wait no more (unless noted again
 * since, with a higher seq). */
void archive_acked_taken(archive_acked *k);

/* The runs of (gw, epoch) up to seq that the database holds neither as batches nor as runs
 * recorded in acked_lost; fn is called for each, in order. CM_ERR_DB on a database error. */
cm_err archive_acked_find_lost(cm_sql *db, const char *gw, uint64_t epoch, uint64_t seq,
                               void (*fn)(void *ctx, uint64_t first, uint64_t last), void *ctx);
/* Records a lost run (ON CONFLICT DO NOTHING: recording it again changes nothing); detected_ms
 * is the input's time. CM_ERR_INVAL for a malformed run. */
cm_err archive_acked_record_lost(cm_sql *db, const Suido__AckedLost *run, uint64_t detected_ms);

#endif
