/* archive_acked: see archive_acked.h. */
#include "archive_acked.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_log.h"

#define SLOTS 32768 /* power of two: (gateway, epoch) points waiting at once */

typedef struct point {
    char gw[65];
    uint64_t epoch, seq;
    uint64_t taken_seq; /* the seq handed over by the last take (0: none) */
    int used, waiting;
    Suido__Ack msg;     /* the point as handed over (gateway_id points at gw) */
} point;

struct archive_acked {
    point *p;
    size_t waiting;
    int full_logged;
};

archive_acked *archive_acked_new(void)
{
    archive_acked *k = calloc(1, sizeof *k);
    if (k && !(k->p = calloc(SLOTS, sizeof *k->p))) {
        free(k);
        return NULL;
    }
    return k;
}

void archive_acked_destroy(archive_acked **kp)
{
    if (!kp || !*kp)
        return;
    free((*kp)->p);
    free(*kp);
    *kp = NULL;
}

static uint32_t hash(const char *gw, uint64_t epoch)
{
    uint32_t h = 2166136261u;
    for (const char *c = gw; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    for (int i = 0; i < 8; i++)
        h = (h ^ (uint8_t)(epoch >> (8 * i))) * 16777619u;
    return h;
}

static point *slot(point *table, const char *gw, uint64_t epoch)
{
    uint32_t h = hash(gw, epoch);
    for (uint32_t i = 0; i < SLOTS; i++) {
        point *p = &table[(h + i) & (SLOTS - 1)];
        if (!p->used || (p->epoch == epoch && strcmp(p->gw, gw) == 0))
            return p;
    }
    return NULL;
}

void archive_acked_note(archive_acked *k, const char *gw, uint64_t epoch, uint64_t seq)
{
    if (strlen(gw) >= sizeof k->p->gw)
        return;
    point *p = slot(k->p, gw, epoch);
    if (!p) {
        if (!k->full_logged)
            cm_error("gateway=%s error=\"too many ack points waiting for the registry; this one "
                     "is not recorded\"", gw);
        k->full_logged = 1;
        return;
    }
    if (!p->used) {
        p->used = 1;
        snprintf(p->gw, sizeof p->gw, "%s", gw);
        p->epoch = epoch;
    } else if (seq <= p->seq) {
        return;
    }
    p->seq = seq;
    if (!p->waiting)
        k->waiting++;
    p->waiting = 1;
}

size_t archive_acked_waiting(const archive_acked *k) { return k->waiting; }

size_t archive_acked_take(archive_acked *k, Suido__Ack **pts, size_t max)
{
    size_t n = 0;
    for (uint32_t i = 0; i < SLOTS && n < max; i++) {
        point *p = &k->p[i];
        if (!p->waiting)
            continue;
        suido__ack__init(&p->msg);
        p->msg.gateway_id = p->gw;
        p->msg.boot_epoch = p->epoch;
        p->msg.seq = p->seq;
        p->taken_seq = p->seq;
        pts[n++] = &p->msg;
    }
    return n;
}

void archive_acked_taken(archive_acked *k)
{
    /* the handed-over points wait no more; the table is made again with the waiting ones only,
     * so points of gateways and epochs long quiet do not fill it */
    point *fresh = calloc(SLOTS, sizeof *fresh);
    if (!fresh)
        return; /* they are handed over again next time: the registry keeps the highest */
    size_t waiting = 0;
    for (uint32_t i = 0; i < SLOTS; i++) {
        point *p = &k->p[i];
        if (!p->waiting || p->taken_seq == p->seq)
            continue;
        point *q = slot(fresh, p->gw, p->epoch);
        *q = *p;
        q->taken_seq = 0;
        waiting++;
    }
    free(k->p);
    k->p = fresh;
    k->waiting = waiting;
    k->full_logged = 0;
}

/* ------------------------------------------------------------------ what a restore lost */

typedef struct lost_run {
    uint64_t first, last;
} lost_run;

/* The runs recorded lost for (gw, epoch), ordered, into *out (malloc'd). */
static cm_err recorded_runs(cm_sql *db, const char *gw, uint64_t epoch, lost_run **out, size_t *n)
{
    cm_sql_stmt *st = NULL;
    *out = NULL;
    *n = 0;
    if (cm_sql_prepare(db, "SELECT first_seq, last_seq FROM acked_lost WHERE gateway = ?"
                           " AND boot_epoch = ? ORDER BY first_seq", &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, gw);
    cm_sql_bind_int64(st, 2, (int64_t)epoch);
    size_t cap = 0;
    int r;
    cm_err rc = CM_OK;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            lost_run *nv = realloc(*out, cap * sizeof *nv);
            if (!nv) {
                rc = CM_ERR_NOMEM;
                break;
            }
            *out = nv;
        }
        (*out)[(*n)++] = (lost_run){(uint64_t)cm_sql_column_int64(st, 0),
                               (uint64_t)cm_sql_column_int64(st, 1)};
    }
    if (rc == CM_OK && r != CM_SQL_DONE)
        rc = CM_ERR_DB;
    cm_sql_finalize(&st);
    if (rc != CM_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

/* Calls fn for the parts of [first, last] that no recorded run covers. */
static void report_uncovered(uint64_t first, uint64_t last, const lost_run *rec, size_t n,
                             void (*fn)(void *ctx, uint64_t first, uint64_t last), void *ctx)
{
    uint64_t at = first;
    for (size_t i = 0; i < n && at <= last; i++) {
        if (rec[i].last < at || rec[i].first > last)
            continue;
        if (rec[i].first > at)
            fn(ctx, at, rec[i].first - 1);
        at = rec[i].last + 1;
    }
    if (at <= last && at >= first)
        fn(ctx, at, last);
}

cm_err archive_acked_find_lost(cm_sql *db, const char *gw, uint64_t epoch, uint64_t seq,
                               void (*fn)(void *ctx, uint64_t first, uint64_t last), void *ctx)
{
    /* the tail first: one index look-up; an epoch that reaches the point has lost nothing
     * that is not a hole already reported by `archive gaps` */
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, "SELECT coalesce(max(seq), 0) FROM batches WHERE gateway = ?"
                           " AND boot_epoch = ?", &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, gw);
    cm_sql_bind_int64(st, 2, (int64_t)epoch);
    int r = cm_sql_step(st);
    uint64_t highest = r == CM_SQL_ROW ? (uint64_t)cm_sql_column_int64(st, 0) : 0;
    cm_sql_finalize(&st);
    if (r != CM_SQL_ROW)
        return CM_ERR_DB;
    lost_run *rec = NULL;
    size_t n_rec = 0;
    if (recorded_runs(db, gw, epoch, &rec, &n_rec) != CM_OK)
        return CM_ERR_DB;
    uint64_t covered = highest;
    for (size_t i = 0; i < n_rec; i++)
        if (rec[i].last > covered)
            covered = rec[i].last;
    cm_err rc = CM_OK;
    if (covered >= seq)
        goto out;
    /* short of the point: every hole up to it is lost (the gateway let everything <= seq go) */
    if (cm_sql_prepare(db,
                       "SELECT prev + 1, seq - 1 FROM ("
                       " SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), 0) AS prev"
                       " FROM batches WHERE gateway = ? AND boot_epoch = ? AND seq <= ?) AS runs"
                       " WHERE seq > prev + 1 ORDER BY prev",
                       &st) != CM_OK) {
        rc = CM_ERR_DB;
        goto out;
    }
    cm_sql_bind_text(st, 1, gw);
    cm_sql_bind_int64(st, 2, (int64_t)epoch);
    cm_sql_bind_int64(st, 3, (int64_t)seq);
    while ((r = cm_sql_step(st)) == CM_SQL_ROW)
        report_uncovered((uint64_t)cm_sql_column_int64(st, 0),
                         (uint64_t)cm_sql_column_int64(st, 1), rec, n_rec, fn, ctx);
    cm_sql_finalize(&st);
    if (r != CM_SQL_DONE) {
        rc = CM_ERR_DB;
        goto out;
    }
    if (highest < seq)
        report_uncovered(highest + 1, seq, rec, n_rec, fn, ctx);
out:
    free(rec);
    return rc;
}

cm_err archive_acked_record_lost(cm_sql *db, const Suido__AckedLost *run, uint64_t detected_ms)
{
    size_t len = run->gateway_id ? strlen(run->gateway_id) : 0;
    if (len == 0 || len > 64 || run->first_seq == 0 || run->last_seq < run->first_seq ||
        run->last_seq > INT64_MAX || run->boot_epoch > INT64_MAX)
        return CM_ERR_INVAL;
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, "INSERT INTO acked_lost(gateway, boot_epoch, first_seq, last_seq,"
                           " detected_ms) VALUES(?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, run->gateway_id);
    cm_sql_bind_int64(st, 2, (int64_t)run->boot_epoch);
    cm_sql_bind_int64(st, 3, (int64_t)run->first_seq);
    cm_sql_bind_int64(st, 4, (int64_t)run->last_seq);
    cm_sql_bind_int64(st, 5, (int64_t)detected_ms);
    int r = cm_sql_step(st);
    cm_sql_finalize(&st);
    return r == CM_SQL_DONE ? CM_OK : CM_ERR_DB;
}
