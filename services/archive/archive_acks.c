/* archive_acks: contiguous-sequence tracking with a sliding bitmap window per gateway. */
#include "archive_acks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 16384          /* power of two: gateways tracked at once */
#define WINDOW 4096          /* sequences tracked above the contiguous point */
#define OLD_MAX 256          /* older boot epochs touched in one transaction, acked after it */

typedef struct track {
    char gw[65];
    uint64_t epoch;
    uint64_t contig;          /* every seq <= contig is stored */
    uint64_t reported;        /* last contig handed to each_changed */
    int beyond;               /* a seq beyond the window was stored: reload when reached */
    uint8_t bits[WINDOW / 8]; /* bit i: contig + 1 + i is stored */
} track;

typedef struct old_epoch {
    char gw[65];
    uint64_t epoch;
} old_epoch;

struct archive_acks {
    archive_store *store;
    track *t;
    old_epoch old[OLD_MAX]; /* back-fill of earlier boot epochs stored in this transaction */
    size_t n_old;
};

archive_acks *archive_acks_new(archive_store *store)
{
    archive_acks *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->store = store;
    a->t = calloc(SLOTS, sizeof *a->t);
    if (!a->t) {
        free(a);
        return NULL;
    }
    return a;
}

void archive_acks_destroy(archive_acks **ap)
{
    if (!ap || !*ap)
        return;
    free((*ap)->t);
    free(*ap);
    *ap = NULL;
}

void archive_acks_reset(archive_acks *a)
{
    memset(a->t, 0, SLOTS * sizeof *a->t);
    a->n_old = 0;
}

/* An earlier epoch of gw got a batch: its ack is worked out from the database after the commit
 * (rare: back-fill after a gateway restart). Beyond OLD_MAX per transaction the epoch is acked
 * when the gateway resends (the resend is stored as a duplicate and marks it again). */
static void note_old(archive_acks *a, const char *gw, uint64_t epoch)
{
    for (size_t i = 0; i < a->n_old; i++)
        if (a->old[i].epoch == epoch && strcmp(a->old[i].gw, gw) == 0)
            return;
    if (a->n_old == OLD_MAX)
        return;
    snprintf(a->old[a->n_old].gw, sizeof a->old[0].gw, "%s", gw);
    a->old[a->n_old++].epoch = epoch;
}

static track *slot_for(archive_acks *a, const char *gw)
{
    uint32_t h = 2166136261u;
    for (const char *p = gw; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    for (uint32_t i = 0; i < SLOTS; i++) {
        track *t = &a->t[(h + i) & (SLOTS - 1)];
        if (t->gw[0] == '\0' || strcmp(t->gw, gw) == 0)
            return t;
    }
    return NULL;
}

static void set_bit(track *t, uint64_t seq)
{
    if (seq <= t->contig)
        return;
    uint64_t off = seq - t->contig - 1;
    if (off >= WINDOW) {
        t->beyond = 1;
        return;
    }
    t->bits[off / 8] |= (uint8_t)(1u << (off % 8));
}

/* Moves contig forward over stored sequences, shifting the window. */
static void advance(track *t)
{
    uint64_t n = 0;
    while (n < WINDOW && (t->bits[n / 8] & (1u << (n % 8))))
        n++;
    if (n == 0)
        return;
    t->contig += n;
    uint8_t nb[WINDOW / 8] = {0};
    for (uint64_t i = n; i < WINDOW; i++)
        if (t->bits[i / 8] & (1u << (i % 8)))
            nb[(i - n) / 8] |= (uint8_t)(1u << ((i - n) % 8));
    memcpy(t->bits, nb, sizeof nb);
}

static void load_cb(void *ctx, uint64_t seq) { set_bit(ctx, seq); }

/* Rebuilds t for epoch from the database (after a restart or when the window was exceeded). */
static cm_err reload(archive_acks *a, track *t, uint64_t epoch)
{
    uint64_t keep_reported = t->epoch == epoch ? t->reported : 0;
    uint64_t from = t->epoch == epoch ? t->contig : 0;
    if (t->epoch != epoch) {
        t->contig = 0;
        memset(t->bits, 0, sizeof t->bits);
    }
    t->epoch = epoch;
    t->beyond = 0;
    for (;;) {
        cm_err rc = archive_store_seqs(a->store, t->gw, epoch, from, load_cb, t);
        if (rc != CM_OK)
            return rc;
        uint64_t before = t->contig;
        advance(t);
        if (!t->beyond || t->contig == before)
            break;
        t->beyond = 0;
        from = t->contig;
    }
    t->reported = keep_reported;
    return CM_OK;
}

cm_err archive_acks_mark(archive_acks *a, const char *gw, uint64_t epoch, uint64_t seq)
{
    track *t = slot_for(a, gw);
    if (!t)
        return CM_ERR_TOO_BIG;
    if (t->gw[0] == '\0' || epoch > t->epoch) {
        snprintf(t->gw, sizeof t->gw, "%s", gw);
        t->epoch = 0;
        t->reported = 0;
        cm_err rc = reload(a, t, epoch); /* includes seq if it is already in the transaction */
        if (rc != CM_OK)
            return rc;
    }
    if (epoch < t->epoch) {
        note_old(a, gw, epoch);
        return CM_OK;
    }
    set_bit(t, seq);
    advance(t);
    if (t->beyond && seq > t->contig + WINDOW)
        return CM_OK;
    if (t->beyond)
        return reload(a, t, epoch);
    return CM_OK;
}

void archive_acks_each_changed(archive_acks *a,
                               void (*fn)(void *ctx, const char *gw, uint64_t epoch,
                                          uint64_t seq),
                               void *ctx)
{
    for (uint32_t i = 0; i < SLOTS; i++) {
        track *t = &a->t[i];
        if (t->gw[0] && t->contig > t->reported) {
            fn(ctx, t->gw, t->epoch, t->contig);
            t->reported = t->contig;
        }
    }
    for (size_t i = 0; i < a->n_old; i++) {
        static track tmp; /* large; only ever used here, on the archive's one thread */
        memset(&tmp, 0, sizeof tmp);
        snprintf(tmp.gw, sizeof tmp.gw, "%s", a->old[i].gw);
        if (reload(a, &tmp, a->old[i].epoch) == CM_OK && tmp.contig > 0)
            fn(ctx, tmp.gw, tmp.epoch, tmp.contig);
    }
    a->n_old = 0;
}

uint64_t archive_acks_get(archive_acks *a, const char *gw, uint64_t *epoch)
{
    track *t = slot_for(a, gw);
    if (!t || t->gw[0] == '\0') {
        *epoch = 0;
        return 0;
    }
    *epoch = t->epoch;
    return t->contig;
}

void archive_acks_rereport(archive_acks *a, const char *gw)
{
    track *t = slot_for(a, gw);
    if (t && t->gw[0])
        t->reported = 0;
}
