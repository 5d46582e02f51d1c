/* outbox: one simulated gateway's store-and-forward log on disk, DIR/<gw>.outbox, so that nothing
 * taken (a data batch that got a sequence number) and nothing unacknowledged is ever lost.
 *
 * Contract: the gateway appends every legitimate data batch it takes (outbox_append) — its DATA
 * envelope exactly as it is first published, and a signed BACKFILL copy with the same boot epoch,
 * seq, timestamp and readings — and makes the group durable (outbox_sync: fdatasync of the file,
 * whose directory entry was made durable when the file was created) BEFORE any of it is
 * published. A record leaves the outbox only when an end-to-end ack of the platform covers it
 * (outbox_ack: same boot epoch, seq <= the ack's). The log also keeps, across restarts, every
 * (boot epoch, seq) ever stored in it (outbox_ranges: the report's sent_ranges).
 *
 * Format (little-endian; README.md "Outbox" has the table): a sequence of records, each framed
 * as u32 length, u32 CRC-32 (the zlib/IEEE polynomial) of the `length` bytes that follow, then a
 * one-byte type and its fields: 'H' header (version, gateway id; always first), 'B' batch
 * (epoch, seq, timestamp, both envelopes), 'A' ack (epoch, seq: the batches of that epoch up to
 * seq are gone), 'R' ranges (written by compaction). Loading stops at nothing: a record whose
 * frame or checksum is wrong is skipped when a valid record follows it (counted as corrupt,
 * logged) and is a torn last record otherwise (ignored, the file is cut before it). A torn record
 * was never published: publishing waits for the sync.
 *
 * Bounded: records, acks and ranges never take more than max_bytes on disk (compaction rewrites
 * the live records into a new file, then renames it over the old one; the temporary copy is not
 * counted). Acks are appended without a sync: losing one after a crash only resends a batch that
 * the platform deduplicates.
 *
 * Ownership: one outbox per gateway, used by the simulator's main thread only. Entries returned
 * by outbox_entry are borrowed and valid until the next call that changes the outbox. */
#ifndef GW_OUTBOX_H
#define GW_OUTBOX_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"

typedef struct outbox outbox;

#define OB_MAX_ENVELOPE (1u << 20) /* larger envelopes are refused on append and at load */
#define OB_MIN_BYTES (64u * 1024)  /* smallest bound outbox_open accepts */

/* One stored batch. rec_off is where its record starts in the file. */
typedef struct ob_entry {
    uint64_t epoch, seq, ts_ms;
    uint64_t rec_off;
    uint32_t data_len, bf_len;
} ob_entry;

/* Sequences seq first..last of boot epoch `epoch` were stored (taken) at some time. */
typedef struct ob_range {
    uint64_t epoch, first, last;
} ob_range;

typedef struct ob_stats {
    uint64_t loaded;        /* unacked batches found when opened */
    uint64_t stored;        /* batches made durable since opened */
    uint64_t acked_removed; /* batches removed by acks since opened */
    uint64_t corrupt;       /* records skipped at load (bad frame or checksum, valid data after) */
    uint64_t torn_tail;     /* 1 when a torn last record was ignored at load */
    uint64_t write_errors;  /* appends, syncs, ack records or compactions that failed */
    uint64_t compactions;
} ob_stats;

typedef enum ob_room {
    OB_ROOM = 0, /* one more record of the given bound fits */
    OB_LATER,    /* not now: sync (or ack) first, compaction may then make room */
    OB_FULL      /* the unacked records fill the bound: only acks make room */
} ob_room;

/* Opens DIR/<gw>.outbox (creating it durably if absent) and loads it: unacked batches, ranges.
 * The file stays locked (flock) while open. CM_ERR_DECODE when the file is not an outbox of this
 * gateway (its header is wrong), CM_ERR_DENIED when another process has it open, CM_ERR_IO on
 * I/O errors, CM_ERR_INVAL for max_bytes < OB_MIN_BYTES. */
cm_err outbox_open(const char *dir, const char *gw, uint64_t max_bytes, outbox **out);
/* Syncs the acks written since the last sync (best effort), closes and frees; NULLs *ob. */
void outbox_destroy(outbox **ob);

/* Bytes a batch record with envelopes of these lengths takes on disk. */
size_t outbox_record_size(size_t data_len, size_t bf_len);
/* Whether a record of at most rec_bound bytes fits now; may compact (when nothing is pending a
 * sync) to make room. */
ob_room outbox_room(outbox *ob, size_t rec_bound);
/* Writes a batch record (not yet durable). Batches are appended in increasing (epoch, seq).
 * CM_ERR_TOO_BIG when it does not fit the bound, CM_ERR_INVAL for an envelope out of limits or
 * a (epoch, seq) not above the last one, CM_ERR_IO when the write failed (nothing of it is
 * left in the file). */
cm_err outbox_append(outbox *ob, uint64_t epoch, uint64_t seq, uint64_t ts_ms,
                     const uint8_t *data, size_t data_len, const uint8_t *bf, size_t bf_len);
/* Makes every appended record durable (fdatasync). Only then are they entries, in the ranges
 * and counted as stored. On failure the pending records are cut off (as by outbox_abort) and
 * CM_ERR_IO is returned. */
cm_err outbox_sync(outbox *ob);
/* Cuts off the records appended since the last sync; returns how many. */
size_t outbox_abort(outbox *ob);
/* The platform stored every seq <= seq of boot epoch `epoch`: removes those batches, appends an
 * ack record (no sync) and compacts when the dead records outweigh the live ones. Returns the
 * number of batches removed. */
size_t outbox_ack(outbox *ob, uint64_t epoch, uint64_t seq);

/* Durable, unacked batches, in increasing (epoch, seq). */
size_t outbox_count(const outbox *ob);
const ob_entry *outbox_entry(const outbox *ob, size_t i);
/* Index of the first entry >= (epoch, seq); outbox_count when none. */
size_t outbox_find(const outbox *ob, uint64_t epoch, uint64_t seq);
/* Copies the entry's DATA envelope (backfill = 0) or BACKFILL copy (1) into dst (cap bytes);
 * *len gets its length. Checks the record's checksum again: CM_ERR_DECODE if the disk changed
 * under us, CM_ERR_TOO_BIG if cap is short. */
cm_err outbox_read(outbox *ob, const ob_entry *e, int backfill, uint8_t *dst, size_t cap,
                   size_t *len);

/* Every (epoch, seq) ever durably stored, as sorted maximal ranges. */
size_t outbox_ranges(const outbox *ob, const ob_range **out);
/* Highest boot epoch in the outbox or its ranges (0: none). */
uint64_t outbox_max_epoch(const outbox *ob);
uint64_t outbox_bytes(const outbox *ob); /* size of the file */
uint64_t outbox_max_bytes(const outbox *ob);
const ob_stats *outbox_stats(const outbox *ob);
const char *outbox_path(const outbox *ob);

#endif
