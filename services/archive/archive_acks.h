/* archive_acks: per gateway, the highest contiguous sequence stored for its current boot epoch
 * — the end-to-end acknowledgement. A gateway may drop a batch from its outbox only when an ack
 * covers it, so this number must never run ahead of what is committed: the archive marks
 * sequences inside a transaction and publishes only after the commit; a failed commit resets the
 * tracker, which then reloads from the database. */
#ifndef ARCHIVE_ACKS_H
#define ARCHIVE_ACKS_H
#include <stdint.h>
#include "archive_store.h"

typedef struct archive_acks archive_acks;

archive_acks *archive_acks_new(archive_store *store);
void archive_acks_destroy(archive_acks **a);
/* Records that (gw, epoch, seq) is stored (in the open transaction). A newer boot epoch
 * replaces the older one as the tracked one; a batch of an older epoch (back-fill after a
 * gateway restart) makes that epoch's contiguous point be worked out from the database and
 * reported by the next archive_acks_each_changed. */
cm_err archive_acks_mark(archive_acks *a, const char *gw, uint64_t epoch, uint64_t seq);
/* Forgets everything (after a failed commit). */
void archive_acks_reset(archive_acks *a);
/* Calls fn for each gateway whose contiguous sequence advanced since it was last reported, and
 * for each older epoch that got a batch since the last call (its point, from the database). */
void archive_acks_each_changed(archive_acks *a,
                               void (*fn)(void *ctx, const char *gw, uint64_t epoch,
                                          uint64_t seq),
                               void *ctx);
/* Makes gw's current point be reported again (a gateway resent something already stored, so
 * it probably missed the ack). */
void archive_acks_rereport(archive_acks *a, const char *gw);
/* Contiguous sequence of gw's current epoch (0 if none). */
uint64_t archive_acks_get(archive_acks *a, const char *gw, uint64_t *epoch);

#endif
