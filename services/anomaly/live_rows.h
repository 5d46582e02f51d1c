/* live_rows: the learned checker (learned.h) on streaming readings. Assembles, per gateway, the
 * rows that `suido-anomaly replay` reads from a CSV, and runs each through learned_step — the one
 * detection step both share — so that the same rows give the same flags live as in replay.
 * Owned by the anomaly shard (shard.h), one per shard when its config names a model; tests drive
 * it directly. No I/O, no clock: time is the readings' own timestamps.
 *
 * Rows. Time is cut into buckets of the model's period (learned_period): bucket =
 * floor(timestamp / period). A gateway has one open row, its latest bucket; a reading of a model
 * channel sets that channel's value in the row (the reading with the latest timestamp wins, and
 * among equal timestamps the last one received). When a reading of a later bucket arrives, the
 * open row is closed and stepped — its channels without a reading are NAN (learned_step holds
 * the previous value and does not judge them, as replay does with an empty CSV cell) — and the
 * later bucket opens. If buckets were skipped between the row and the previous stepped one,
 * learned_state_break is called first, exactly as replay does when two rows are not one period
 * apart. A reading of an earlier bucket than the open row is dropped (a row is judged once).
 *
 * Consequences. A row is judged when the first reading of a later bucket arrives, so a live flag
 * lags the end of its bucket by the gateway's batch interval; a gateway that falls silent leaves
 * its last row unjudged until it reports again (silence is the missing-data detector's concern).
 *
 * Scope. The model's channels must all be of one site kind (a gateway reports one); readings of
 * gateways of another site kind are ignored. At most max_gateways gateways are tracked, each with
 * its own learned_state; readings of further gateways are refused with LIVE_ROWS_FULL (the caller
 * counts them). Non-finite values are ignored like a missing reading. */
#ifndef LIVE_ROWS_H
#define LIVE_ROWS_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"
#include "learned.h"

#define LIVE_ROWS_GW_MAX 64 /* longest gateway id (the topic's limit); longer ones are ignored */

typedef struct live_rows live_rows;

/* One stepped row, passed to the callback; the pointers live until the callback returns. */
typedef struct live_rows_row {
    const char *gateway_id;
    uint64_t start_ms;    /* bucket x period: the row's time, as replay stamps it */
    int brk;              /* 1: buckets were skipped before it, learned_state_break was called */
    const double *values; /* learned_channel_count values, model channel order; NAN: no reading */
    int flag;             /* learned_step's flag after this row */
    int changed;          /* flag differs from the gateway's previous row (a new gateway: 0) */
    double score;
    const char *top;      /* channel id that drove the score, "" before any */
} live_rows_row;

typedef void (*live_rows_fn)(void *ctx, const live_rows_row *row);

typedef enum live_rows_result {
    LIVE_ROWS_TAKEN = 0, /* in the gateway's open row (an earlier row may have been stepped) */
    LIVE_ROWS_IGNORED,   /* another site kind, not a model channel, non-finite, or bad id */
    LIVE_ROWS_LATE,      /* a bucket earlier than the open row: dropped */
    LIVE_ROWS_FULL,      /* a new gateway beyond max_gateways: not judged */
    LIVE_ROWS_NOMEM,     /* a new gateway's state could not be allocated: not judged */
} live_rows_result;

/* m is borrowed and must outlive the result. fn is called for every stepped row (ctx passed
 * back). Fails with a reason if the model's channels span several site kinds, its period is below
 * 1 ms, or max_gateways is 0. Caller frees with live_rows_destroy. */
cm_err live_rows_new(const learned_model *m, size_t max_gateways, live_rows_fn fn, void *ctx,
                     live_rows **out, char err[LEARNED_ERRLEN]);
void live_rows_destroy(live_rows **lr);

/* The site kind of the model's channels ("ctown" for ctown.l_t1, ...). */
const char *live_rows_site_kind(const live_rows *lr);
/* Gateways tracked so far (never more than max_gateways). */
size_t live_rows_gateway_count(const live_rows *lr);

/* Feeds one reading: channel is a profile channel id ("ctown.l_t1"), value in the profile's unit,
 * ts_ms the reading's timestamp. May step the gateway's open row first (see above), calling fn. */
live_rows_result live_rows_add(live_rows *lr, const char *gateway_id, const char *site_kind,
                               const char *channel, double value, uint64_t ts_ms);

#endif
