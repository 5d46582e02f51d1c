/* archive_query: see archive_query.h. */
#include "archive_query.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_audit.h"
#include "cm_audit_check.h"
#include "cm_log.h"

#define MINUTE_MS 60000ll
#define HOUR_MS 3600000ll
#define TEN_YEARS_MS (3660ll * 24 * HOUR_MS)
#define AGG_SLOTS 8192      /* pending minute and hour rows; a power of two */
#define AGG_FLUSH_AT 6144   /* flushed early beyond this, so probing stays short */
#define MAX_SERIES 20000    /* series in one planning answer */
#define MAX_GATEWAY_STATS 10000

/* Through cm_sql_exec_ddl: WITHOUT ROWID (the key is the storage order) is SQLite's alone. */
static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS readings_minute("
    " gateway TEXT NOT NULL, channel TEXT NOT NULL, minute_ms INTEGER NOT NULL,"
    " readings INTEGER NOT NULL, min_value REAL NOT NULL, max_value REAL NOT NULL,"
    " sum_value REAL NOT NULL, last_value REAL NOT NULL, last_ms INTEGER NOT NULL,"
    " PRIMARY KEY(gateway, channel, minute_ms)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS readings_hour("
    " gateway TEXT NOT NULL, channel TEXT NOT NULL, hour_ms INTEGER NOT NULL,"
    " readings INTEGER NOT NULL, min_value REAL NOT NULL, max_value REAL NOT NULL,"
    " sum_value REAL NOT NULL, last_value REAL NOT NULL, last_ms INTEGER NOT NULL,"
    " minutes INTEGER NOT NULL," /* minutes of the hour with readings */
    " PRIMARY KEY(gateway, channel, hour_ms)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS readings_series("
    " gateway TEXT NOT NULL, channel TEXT NOT NULL, first_ms INTEGER NOT NULL,"
    " last_ms INTEGER NOT NULL, last_value REAL NOT NULL,"
    " PRIMARY KEY(gateway, channel)) WITHOUT ROWID;"
    /* the monitor's reads: refusals and alerts of a period, per gateway */
    "CREATE INDEX IF NOT EXISTS rejects_by_time ON rejects(received_ms);"
    "CREATE INDEX IF NOT EXISTS rejects_by_gateway ON rejects(gateway, received_ms);"
    "CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts(ts_ms);";

/* One upsert per bucket row: counts add up, extremes widen, the newest reading wins (a
 * back-filled older batch does not replace the last value), exactly whatever the order. The sum
 * is written whole: floating-point addition depends on its order, so it is folded in C from the
 * row's stored sum and each batch's part in batch order (see archive_agg_flush). */
#define UPSERT_BUCKET(table, col, extra_cols, extra_vals, extra_set)                              \
    "INSERT INTO " table "(gateway,channel," col ",readings,min_value,max_value,sum_value,"         \
    "last_value,last_ms" extra_cols ") VALUES(?,?,?,?,?,?,?,?,?" extra_vals ") "                   \
    "ON CONFLICT(gateway,channel," col ") DO UPDATE "                                              \
    "SET " extra_set "readings = " table ".readings + excluded.readings,"                          \
    " min_value = CASE WHEN excluded.min_value < " table ".min_value THEN excluded.min_value"       \
    " ELSE " table ".min_value END,"                                                               \
    " max_value = CASE WHEN excluded.max_value > " table ".max_value THEN excluded.max_value"       \
    " ELSE " table ".max_value END,"                                                               \
    " sum_value = excluded.sum_value,"                                                             \
    " last_value = CASE WHEN excluded.last_ms >= " table ".last_ms THEN excluded.last_value"       \
    " ELSE " table ".last_value END,"                                                              \
    " last_ms = CASE WHEN excluded.last_ms >= " table ".last_ms THEN excluded.last_ms"             \
    " ELSE " table ".last_ms END"

static const char UPSERT_MINUTE[] = UPSERT_BUCKET("readings_minute", "minute_ms", "", "", "");
static const char UPSERT_HOUR[] =
    UPSERT_BUCKET("readings_hour", "hour_ms", ",minutes", ",?",
                  "minutes = readings_hour.minutes + excluded.minutes, ");
static const char SUM_MINUTE[] =
    "SELECT sum_value FROM readings_minute WHERE gateway=? AND channel=? AND minute_ms=?";
static const char SUM_HOUR[] =
    "SELECT sum_value FROM readings_hour WHERE gateway=? AND channel=? AND hour_ms=?";
static const char UPSERT_SERIES[] =
    "INSERT INTO readings_series(gateway,channel,first_ms,last_ms,last_value) VALUES(?,?,?,?,?) "
    "ON CONFLICT(gateway,channel) DO UPDATE SET"
    " first_ms = CASE WHEN excluded.first_ms < readings_series.first_ms THEN excluded.first_ms"
    " ELSE readings_series.first_ms END,"
    " last_value = CASE WHEN excluded.last_ms >= readings_series.last_ms THEN excluded.last_value"
    " ELSE readings_series.last_value END,"
    " last_ms = CASE WHEN excluded.last_ms >= readings_series.last_ms THEN excluded.last_ms"
    " ELSE readings_series.last_ms END";

cm_err archive_query_init(cm_sql *db)
{
    if (cm_sql_exec_ddl(db, SCHEMA) != CM_OK) {
        cm_error("error=\"%s\"", cm_sql_error(db));
        return CM_ERR_DB;
    }
    return CM_OK;
}

/* ------------------------------------------------------------------ pending aggregates */

/* One bucket row pending: a minute or an hour of one gateway's channel. The stored rows must not
 * depend on how batches were grouped into transactions (a standby archive applies the same
 * batches in other groups): count, extremes and the newest reading merge exactly, and the sum
 * keeps one part per batch, in batch order, folded onto the stored sum at the flush. */
typedef struct agg_entry {
    char gateway[65];
    char channel[96];
    int64_t bucket_ms;
    int hour;                /* 0: minute row, 1: hour row */
    int64_t first_ms, last_ms;
    uint64_t count;          /* 0 marks a free slot */
    double min, max, last;
    uint64_t batch;          /* the batch of the last part */
    double *parts;
    size_t n_parts, cap_parts;
    int64_t new_minutes;     /* hour rows: minutes of this hour that are new with this flush */
} agg_entry;

struct archive_agg {
    agg_entry *slot;         /* AGG_SLOTS */
    uint32_t used[AGG_SLOTS];
    size_t n;
    uint64_t batch;          /* batches added so far */
};

archive_agg *archive_agg_new(void)
{
    archive_agg *a = calloc(1, sizeof *a);
    if (a && !(a->slot = calloc(AGG_SLOTS, sizeof *a->slot))) {
        free(a);
        return NULL;
    }
    return a;
}

void archive_agg_discard(archive_agg *a)
{
    for (size_t i = 0; i < a->n; i++) {
        agg_entry *e = &a->slot[a->used[i]];
        e->count = 0;
        e->n_parts = 0;
    }
    a->n = 0;
}

void archive_agg_destroy(archive_agg **ap)
{
    if (!ap || !*ap)
        return;
    for (size_t i = 0; i < AGG_SLOTS; i++)
        free((*ap)->slot[i].parts);
    free((*ap)->slot);
    free(*ap);
    *ap = NULL;
}

size_t archive_agg_pending(const archive_agg *a) { return a->n; }

static uint32_t key_hash(const char *gw, const char *ch, int64_t bucket, int hour)
{
    uint32_t h = 2166136261u;
    for (const char *p = gw; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const char *p = ch; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    uint64_t m = (uint64_t)bucket;
    for (int i = 0; i < 8; i++)
        h = (h ^ (uint8_t)(m >> (8 * i))) * 16777619u;
    return (h ^ (uint32_t)hour) * 16777619u;
}

/* A profile channel id as the profile stage sends it: "<kind>.<name>", [a-z0-9_.-]. */
static int channel_ok(const char *c)
{
    size_t n = c ? strlen(c) : 0;
    if (n < 3 || n > 95 || !strchr(c, '.'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((c[i] >= 'a' && c[i] <= 'z') || (c[i] >= '0' && c[i] <= '9') || c[i] == '_' ||
              c[i] == '.' || c[i] == '-'))
            return 0;
    return 1;
}

/* The entry of that row, made if missing (count 0), or NULL when the table is full. */
static agg_entry *slot_for(archive_agg *a, const char *gw, const char *ch, int64_t bucket,
                           int hour, int create)
{
    uint32_t h = key_hash(gw, ch, bucket, hour);
    for (uint32_t i = 0; i < AGG_SLOTS; i++) {
        uint32_t k = (h + i) & (AGG_SLOTS - 1);
        agg_entry *e = &a->slot[k];
        if (!e->count) {
            if (!create)
                return NULL;
            snprintf(e->gateway, sizeof e->gateway, "%s", gw);
            snprintf(e->channel, sizeof e->channel, "%s", ch);
            e->bucket_ms = bucket;
            e->hour = hour;
            e->n_parts = 0;
            e->new_minutes = 0;
            a->used[a->n++] = k;
            return e;
        }
        if (e->bucket_ms == bucket && e->hour == hour && strcmp(e->channel, ch) == 0 &&
            strcmp(e->gateway, gw) == 0)
            return e;
    }
    return NULL;
}

/* Adds one reading of the current batch to e. */
static cm_err add_reading(archive_agg *a, agg_entry *e, double v, int64_t ts)
{
    if (!e->count) {
        e->min = e->max = e->last = v;
        e->first_ms = e->last_ms = ts;
        e->batch = 0;
    }
    if (!e->n_parts || e->batch != a->batch) {
        if (e->n_parts == e->cap_parts) {
            size_t cap = e->cap_parts ? e->cap_parts * 2 : 4;
            double *np = realloc(e->parts, cap * sizeof *np);
            if (!np)
                return CM_ERR_NOMEM;
            e->parts = np;
            e->cap_parts = cap;
        }
        e->parts[e->n_parts++] = 0;
        e->batch = a->batch;
    }
    e->parts[e->n_parts - 1] += v;
    e->count++;
    if (v < e->min)
        e->min = v;
    if (v > e->max)
        e->max = v;
    if (ts >= e->last_ms) {
        e->last_ms = ts;
        e->last = v;
    }
    if (ts < e->first_ms)
        e->first_ms = ts;
    return CM_OK;
}

cm_err archive_agg_add(archive_agg *a, cm_sql *db, const Suido__StageMessage *m)
{
    const char *gw = m->header ? m->header->gateway_id : NULL;
    if (!gw || !*gw || strlen(gw) > 64)
        return CM_ERR_INVAL;
    /* flushed between batches, so that each batch's part of a row stays whole */
    if (a->n + 2 * m->n_mapped > AGG_FLUSH_AT) {
        cm_err rc = archive_agg_flush(a, db);
        if (rc != CM_OK)
            return rc;
    }
    a->batch++;
    for (size_t i = 0; i < m->n_mapped; i++) {
        const Suido__MappedReading *r = m->mapped[i];
        if (!r || !channel_ok(r->channel) || !isfinite(r->value) || r->timestamp_ms > INT64_MAX)
            continue;
        /* BAD: the device did not answer and the value is no measurement; counted, it would
         * show in trends and reports (and as the channel's latest value) as if measured */
        if (r->quality == SUIDO__QUALITY__QUALITY_BAD)
            continue;
        if (a->n + 2 > AGG_SLOTS - 1) {
            /* a batch with thousands of channel-minutes: written in pieces (its sums may then
             * differ in their last bits from a copy that grouped it otherwise) */
            cm_err rc = archive_agg_flush(a, db);
            if (rc != CM_OK)
                return rc;
            a->batch++;
        }
        int64_t ts = (int64_t)r->timestamp_ms;
        agg_entry *mn = slot_for(a, gw, r->channel, ts - ts % MINUTE_MS, 0, 1);
        agg_entry *hr = mn ? slot_for(a, gw, r->channel, ts - ts % HOUR_MS, 1, 1) : NULL;
        if (!mn || !hr)
            return CM_ERR_NOMEM; /* not reached: flushed well before the table fills */
        cm_err rc = add_reading(a, mn, r->value, ts);
        if (rc == CM_OK)
            rc = add_reading(a, hr, r->value, ts);
        if (rc != CM_OK)
            return rc;
    }
    return CM_OK;
}

/* The row's stored sum with e's parts added in order; *existed says whether the row was there. */
static int fold_sum(cm_sql_stmt *sel, const agg_entry *e, double *sum, int *existed)
{
    cm_sql_reset(sel);
    cm_sql_bind_text(sel, 1, e->gateway);
    cm_sql_bind_text(sel, 2, e->channel);
    cm_sql_bind_int64(sel, 3, e->bucket_ms);
    int r = cm_sql_step(sel);
    if (r == CM_SQL_FAIL)
        return 0;
    *existed = r == CM_SQL_ROW;
    double s = *existed ? cm_sql_column_double(sel, 0) : 0;
    for (size_t i = 0; i < e->n_parts; i++)
        s = (*existed || i) ? s + e->parts[i] : e->parts[i];
    cm_sql_reset(sel);
    *sum = s;
    return 1;
}

static void bind_bucket(cm_sql_stmt *st, const agg_entry *e, double sum)
{
    cm_sql_reset(st);
    cm_sql_bind_text(st, 1, e->gateway);
    cm_sql_bind_text(st, 2, e->channel);
    cm_sql_bind_int64(st, 3, e->bucket_ms);
    cm_sql_bind_int64(st, 4, (int64_t)e->count);
    cm_sql_bind_double(st, 5, e->min);
    cm_sql_bind_double(st, 6, e->max);
    cm_sql_bind_double(st, 7, sum);
    cm_sql_bind_double(st, 8, e->last);
    cm_sql_bind_int64(st, 9, e->last_ms);
    if (e->hour)
        cm_sql_bind_int64(st, 10, e->new_minutes);
}

cm_err archive_agg_flush(archive_agg *a, cm_sql *db)
{
    if (a->n == 0)
        return CM_OK;
    cm_err rc = CM_OK;
    cm_sql_stmt *st[5] = {NULL};
    enum { MINUTE, HOUR, SEL_MINUTE, SEL_HOUR, SERIES };
    const char *sql[5] = {UPSERT_MINUTE, UPSERT_HOUR, SUM_MINUTE, SUM_HOUR, UPSERT_SERIES};
    for (int i = 0; i < 5 && rc == CM_OK; i++)
        if (cm_sql_prepare(db, sql[i], &st[i]) != CM_OK)
            rc = CM_ERR_DB;
    /* minutes first: which are new tells their hours how many minutes they gain */
    for (int pass = 0; pass < 2 && rc == CM_OK; pass++) {
        for (size_t i = 0; i < a->n && rc == CM_OK; i++) {
            agg_entry *e = &a->slot[a->used[i]];
            if (e->hour != pass)
                continue;
            double sum;
            int existed = 0;
            if (!fold_sum(st[pass ? SEL_HOUR : SEL_MINUTE], e, &sum, &existed)) {
                rc = CM_ERR_DB;
                break;
            }
            if (!pass && !existed) {
                agg_entry *h = slot_for(a, e->gateway, e->channel,
                                        e->bucket_ms - e->bucket_ms % HOUR_MS, 1, 0);
                if (h)
                    h->new_minutes++;
            }
            bind_bucket(st[pass ? HOUR : MINUTE], e, sum);
            if (cm_sql_step(st[pass ? HOUR : MINUTE]) != CM_SQL_DONE) {
                rc = CM_ERR_DB;
                break;
            }
            if (pass)
                continue;
            cm_sql_stmt *ser = st[SERIES];
            cm_sql_reset(ser);
            cm_sql_bind_text(ser, 1, e->gateway);
            cm_sql_bind_text(ser, 2, e->channel);
            cm_sql_bind_int64(ser, 3, e->first_ms);
            cm_sql_bind_int64(ser, 4, e->last_ms);
            cm_sql_bind_double(ser, 5, e->last);
            if (cm_sql_step(ser) != CM_SQL_DONE)
                rc = CM_ERR_DB;
        }
    }
    if (rc != CM_OK)
        cm_error("pending=%zu error=\"aggregates not written: %s\"", a->n, cm_sql_error(db));
    for (int i = 0; i < 5; i++)
        cm_sql_finalize(&st[i]);
    archive_agg_discard(a);
    return rc;
}

/* ------------------------------------------------------------------ reads */

static char *dup_col(cm_sql_stmt *st, int col) { return strdup(cm_sql_column_text(st, col)); }

/* A growable array of message pointers. */
typedef struct vec {
    void **p;
    size_t n, cap;
} vec;

static void *vec_push(vec *v, size_t size, size_t max)
{
    if (v->n >= max)
        return NULL;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        void **np = realloc(v->p, cap * sizeof *np);
        if (!np)
            return NULL;
        v->p = np;
        v->cap = cap;
    }
    void *x = calloc(1, size);
    if (x)
        v->p[v->n++] = x;
    return x;
}

static cm_err step_fail(cm_sql *db, const char *what)
{
    cm_error("query=%s error=\"%s\"", what, cm_sql_error(db));
    return CM_ERR_DB;
}

static int ident_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

/* [from, to) of the request: to defaults to now, from to an hour before; at most ten years. */
static int period(const Suido__ArchiveRequest *q, uint64_t now_ms, int64_t *from, int64_t *to)
{
    uint64_t t = q->to_ms ? q->to_ms : now_ms;
    uint64_t f = q->from_ms ? q->from_ms : (t > (uint64_t)HOUR_MS ? t - HOUR_MS : 0);
    if (t > (uint64_t)INT64_MAX / 2 || f >= t || t - f > (uint64_t)TEN_YEARS_MS)
        return 0;
    *from = (int64_t)f;
    *to = (int64_t)t;
    return 1;
}

static cm_err trend(cm_sql *db, const Suido__ArchiveRequest *q, uint64_t now_ms,
                    Suido__ArchiveReply *rep)
{
    int64_t from, to;
    if (!ident_ok(q->gateway_id, 64) || !channel_ok(q->channel) || !period(q, now_ms, &from, &to))
        return CM_ERR_INVAL;
    unsigned max_points = q->limit ? (q->limit < 2000 ? q->limit : 2000) : 300;
    int hours = to - from > 2 * 24 * HOUR_MS;
    int64_t bucket = hours ? HOUR_MS : MINUTE_MS;
    int64_t step = (to - from + max_points - 1) / max_points;
    step = step <= bucket ? bucket : (step + bucket - 1) / bucket * bucket;
    const char *sql =
        hours ? "SELECT hour_ms, readings, min_value, max_value, sum_value, last_value, last_ms "
                "FROM readings_hour WHERE gateway=? AND channel=? AND hour_ms>=? AND hour_ms<? "
                "ORDER BY hour_ms"
              : "SELECT minute_ms, readings, min_value, max_value, sum_value, last_value, "
                "last_ms FROM readings_minute WHERE gateway=? AND channel=? AND minute_ms>=? AND "
                "minute_ms<? ORDER BY minute_ms";
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, sql, &st) != CM_OK)
        return step_fail(db, "trend");
    cm_sql_bind_text(st, 1, q->gateway_id);
    cm_sql_bind_text(st, 2, q->channel);
    cm_sql_bind_int64(st, 3, from - from % bucket);
    cm_sql_bind_int64(st, 4, to);
    vec v = {0};
    Suido__TrendPoint *p = NULL;
    double sum = 0;
    int r;
    cm_err rc = CM_OK;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        int64_t t = cm_sql_column_int64(st, 0);
        int64_t n = cm_sql_column_int64(st, 1);
        if (n <= 0)
            continue;
        int64_t b = t - t % step;
        if (!p || (int64_t)p->t_ms != b) {
            if (p)
                p->mean = sum / (double)p->count;
            p = vec_push(&v, sizeof *p, max_points + 1);
            if (!p) {
                rc = CM_ERR_NOMEM;
                break;
            }
            suido__trend_point__init(p);
            p->t_ms = (uint64_t)b;
            p->min = cm_sql_column_double(st, 2);
            p->max = cm_sql_column_double(st, 3);
            sum = 0;
        }
        p->count += (uint64_t)n;
        sum += cm_sql_column_double(st, 4);
        p->min = fmin(p->min, cm_sql_column_double(st, 2));
        p->max = fmax(p->max, cm_sql_column_double(st, 3));
        int64_t lt = cm_sql_column_int64(st, 6);
        if ((uint64_t)lt >= p->last_ms) {
            p->last_ms = (uint64_t)lt;
            p->last = cm_sql_column_double(st, 5);
        }
    }
    if (p)
        p->mean = sum / (double)p->count;
    if (r == CM_SQL_FAIL)
        rc = step_fail(db, "trend");
    cm_sql_finalize(&st);
    rep->points = (Suido__TrendPoint **)v.p;
    rep->n_points = v.n;
    rep->step_s = (uint32_t)(step / 1000);
    return rc;
}

static cm_err gateway_stats(cm_sql *db, const Suido__ArchiveRequest *q, uint64_t now_ms,
                            Suido__ArchiveReply *rep)
{
    int64_t since = q->from_ms && q->from_ms < now_ms ? (int64_t)q->from_ms
                                                      : (int64_t)now_ms - 24 * HOUR_MS;
    vec v = {0};
    cm_err rc = CM_OK;
    cm_sql_stmt *st = NULL, *why = NULL;
    /* every gateway with readings, then the refusals of the period (duplicates are
     * retransmissions, not failures) */
    if (cm_sql_prepare(db, "SELECT gateway, max(last_ms) FROM readings_series GROUP BY gateway "
                           "ORDER BY gateway", &st) != CM_OK)
        return step_fail(db, "gateway_stats");
    int r;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        Suido__GatewayStats *g = vec_push(&v, sizeof *g, MAX_GATEWAY_STATS);
        if (!g)
            break;
        suido__gateway_stats__init(g);
        g->gateway_id = dup_col(st, 0);
        g->last_reason = strdup("");
        g->last_reading_ms = (uint64_t)cm_sql_column_int64(st, 1);
    }
    if (r == CM_SQL_FAIL)
        rc = step_fail(db, "gateway_stats");
    cm_sql_finalize(&st);
    if (rc == CM_OK &&
        (cm_sql_prepare(db, "SELECT gateway, count(*), max(received_ms) FROM rejects WHERE "
                            "received_ms>=? AND reason<>'duplicate' GROUP BY gateway",
                        &st) != CM_OK ||
         cm_sql_prepare(db, "SELECT reason FROM rejects WHERE gateway=? AND received_ms=? AND "
                            "reason<>'duplicate' LIMIT 1",
                        &why) != CM_OK))
        rc = step_fail(db, "gateway_stats");
    if (rc == CM_OK) {
        cm_sql_bind_int64(st, 1, since);
        while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
            const char *gw = cm_sql_column_text(st, 0);
            Suido__GatewayStats *g = NULL;
            for (size_t i = 0; i < v.n && !g; i++)
                if (strcmp(((Suido__GatewayStats *)v.p[i])->gateway_id, gw) == 0)
                    g = v.p[i];
            if (!g && (g = vec_push(&v, sizeof *g, MAX_GATEWAY_STATS))) {
                suido__gateway_stats__init(g);
                g->gateway_id = strdup(gw);
                g->last_reason = strdup("");
            }
            if (!g)
                continue;
            g->refusals = (uint64_t)cm_sql_column_int64(st, 1);
            g->last_refusal_ms = (uint64_t)cm_sql_column_int64(st, 2);
            cm_sql_reset(why);
            cm_sql_bind_text(why, 1, gw);
            cm_sql_bind_int64(why, 2, (int64_t)g->last_refusal_ms);
            if (cm_sql_step(why) == CM_SQL_ROW) {
                free(g->last_reason);
                g->last_reason = dup_col(why, 0);
            }
        }
        if (r == CM_SQL_FAIL)
            rc = step_fail(db, "gateway_stats");
    }
    cm_sql_finalize(&st);
    cm_sql_finalize(&why);
    rep->gateway_stats = (Suido__GatewayStats **)v.p;
    rep->n_gateway_stats = v.n;
    return rc;
}

static cm_err command_log(cm_sql *db, const Suido__ArchiveRequest *q, Suido__ArchiveReply *rep)
{
    int by_gw = q->gateway_id && *q->gateway_id;
    if (by_gw && !ident_ok(q->gateway_id, 64))
        return CM_ERR_INVAL;
    unsigned limit = q->limit ? (q->limit < 1000 ? q->limit : 1000) : 100;
    const char *cols = "SELECT id, command_id, gateway, actuator, value, unit, requested_by, "
                       "issued_ms, expires_ms, decision, detail, ts_ms FROM command_log ";
    char sql[512];
    snprintf(sql, sizeof sql, "%s WHERE id<? %s ORDER BY id DESC LIMIT ?", cols,
             by_gw ? "AND gateway=?" : "");
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, sql, &st) != CM_OK)
        return step_fail(db, "command_log");
    cm_sql_bind_int64(st, 1, q->before && q->before < INT64_MAX ? (int64_t)q->before : INT64_MAX);
    if (by_gw)
        cm_sql_bind_text(st, 2, q->gateway_id);
    cm_sql_bind_int64(st, by_gw ? 3 : 2, limit);
    vec v = {0};
    int r;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        Suido__CommandRecord *c = vec_push(&v, sizeof *c, limit);
        if (!c)
            break;
        suido__command_record__init(c);
        c->id = (uint64_t)cm_sql_column_int64(st, 0);
        c->command_id = dup_col(st, 1);
        c->gateway_id = dup_col(st, 2);
        c->actuator = dup_col(st, 3);
        c->value = cm_sql_column_double(st, 4);
        c->unit = dup_col(st, 5);
        c->requested_by = dup_col(st, 6);
        c->issued_ms = (uint64_t)cm_sql_column_int64(st, 7);
        c->expires_ms = (uint64_t)cm_sql_column_int64(st, 8);
        c->decision = dup_col(st, 9);
        c->detail = dup_col(st, 10);
        c->ts_ms = (uint64_t)cm_sql_column_int64(st, 11);
    }
    cm_err rc = r == CM_SQL_FAIL ? step_fail(db, "command_log") : CM_OK;
    cm_sql_finalize(&st);
    rep->commands = (Suido__CommandRecord **)v.p;
    rep->n_commands = v.n;
    return rc;
}

static cm_err audit_list(cm_sql *db, const Suido__ArchiveRequest *q, Suido__ArchiveReply *rep)
{
    unsigned limit = q->limit ? (q->limit < 1000 ? q->limit : 1000) : 100;
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, "SELECT seq, ts_ms, source, event, subject, actor, detail FROM audit "
                           "WHERE seq<? ORDER BY seq DESC LIMIT ?", &st) != CM_OK)
        return step_fail(db, "audit_list");
    cm_sql_bind_int64(st, 1, q->before && q->before < INT64_MAX ? (int64_t)q->before : INT64_MAX);
    cm_sql_bind_int64(st, 2, limit);
    vec v = {0};
    int r;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        Suido__AuditRecord *e = vec_push(&v, sizeof *e, limit);
        if (!e)
            break;
        suido__audit_record__init(e);
        e->seq = (uint64_t)cm_sql_column_int64(st, 0);
        e->ts_ms = (uint64_t)cm_sql_column_int64(st, 1);
        e->source = dup_col(st, 2);
        e->event = dup_col(st, 3);
        e->subject = dup_col(st, 4);
        e->actor = dup_col(st, 5);
        e->detail = dup_col(st, 6);
    }
    cm_err rc = r == CM_SQL_FAIL ? step_fail(db, "audit_list") : CM_OK;
    cm_sql_finalize(&st);
    rep->audit = (Suido__AuditRecord **)v.p;
    rep->n_audit = v.n;
    return rc;
}

/* Recomputes the chain (cm_audit.h) from the first entry: the first entry whose number, content
 * or link does not match is reported, with the head hash of what checked good. */
static cm_err audit_verify(cm_sql *db, Suido__ArchiveReply *rep)
{
    cm_audit_check_result r;
    if (cm_audit_check_db(db, &r) != CM_OK)
        return step_fail(db, "audit_verify");
    cm_err rc = r.read_error ? step_fail(db, "audit_verify") : CM_OK;
    Suido__AuditCheck *c = calloc(1, sizeof *c);
    if (!c)
        return CM_ERR_NOMEM;
    suido__audit_check__init(c);
    c->intact = !r.why && rc == CM_OK;
    c->entries = r.entries;
    c->first_bad_seq = r.bad_seq;
    c->problem = strdup(r.why ? r.why : rc != CM_OK ? "read error" : "");
    c->head_sha256 = strdup(r.head_hex);
    c->checkpoint = strdup("not_checked"); /* the chain alone; archive_api compares the head */
    rep->audit_check = c;
    return rc;
}

static cm_err planning(cm_sql *db, const Suido__ArchiveRequest *q, uint64_t now_ms,
                       Suido__ArchiveReply *rep)
{
    int64_t from, to;
    if (!q->from_ms || !period(q, now_ms, &from, &to))
        return CM_ERR_INVAL;
    from -= from % HOUR_MS;
    to += (HOUR_MS - to % HOUR_MS) % HOUR_MS;
    vec series = {0}, alarms = {0};
    cm_sql_stmt *list = NULL, *sum = NULL, *al = NULL;
    cm_err rc = CM_OK;
    if (cm_sql_prepare(db, "SELECT gateway, channel FROM readings_series WHERE first_ms<? AND "
                           "last_ms>=? ORDER BY gateway, channel", &list) != CM_OK ||
        cm_sql_prepare(db, "SELECT sum(minutes), sum(readings), min(min_value), max(max_value), "
                           "sum(sum_value / readings * minutes) FROM readings_hour WHERE "
                           "gateway=? AND channel=? AND hour_ms>=? AND hour_ms<?",
                       &sum) != CM_OK ||
        cm_sql_prepare(db, "SELECT gateway, count(*), sum(CASE WHEN severity>=2 THEN 1 ELSE 0 "
                           "END) FROM alerts WHERE cleared=0 AND ts_ms>=? AND ts_ms<? "
                           "GROUP BY gateway ORDER BY gateway", &al) != CM_OK) {
        rc = step_fail(db, "planning");
        goto out;
    }
    cm_sql_bind_int64(list, 1, to);
    cm_sql_bind_int64(list, 2, from);
    int r;
    while ((r = cm_sql_step(list)) == CM_SQL_ROW) {
        cm_sql_reset(sum);
        cm_sql_bind_text(sum, 1, cm_sql_column_text(list, 0));
        cm_sql_bind_text(sum, 2, cm_sql_column_text(list, 1));
        cm_sql_bind_int64(sum, 3, from);
        cm_sql_bind_int64(sum, 4, to);
        int s = cm_sql_step(sum);
        if (s == CM_SQL_FAIL) {
            r = CM_SQL_FAIL;
            break;
        }
        if (s != CM_SQL_ROW || cm_sql_column_int64(sum, 0) == 0)
            continue;
        Suido__ChannelSummary *c = vec_push(&series, sizeof *c, MAX_SERIES);
        if (!c)
            break;
        suido__channel_summary__init(c);
        c->gateway_id = dup_col(list, 0);
        c->channel = dup_col(list, 1);
        c->minutes = (uint64_t)cm_sql_column_int64(sum, 0);
        c->count = (uint64_t)cm_sql_column_int64(sum, 1);
        c->min = cm_sql_column_double(sum, 2);
        c->max = cm_sql_column_double(sum, 3);
        c->integral = cm_sql_column_double(sum, 4);
    }
    if (r == CM_SQL_FAIL) {
        rc = step_fail(db, "planning");
        goto out;
    }
    cm_sql_bind_int64(al, 1, from);
    cm_sql_bind_int64(al, 2, to);
    while ((r = cm_sql_step(al)) == CM_SQL_ROW) {
        Suido__GatewayAlarms *g = vec_push(&alarms, sizeof *g, MAX_SERIES);
        if (!g)
            break;
        suido__gateway_alarms__init(g);
        g->gateway_id = dup_col(al, 0);
        g->raised = (uint64_t)cm_sql_column_int64(al, 1);
        g->critical = (uint64_t)cm_sql_column_int64(al, 2);
    }
    if (r == CM_SQL_FAIL)
        rc = step_fail(db, "planning");
out:
    cm_sql_finalize(&list);
    cm_sql_finalize(&sum);
    cm_sql_finalize(&al);
    rep->summaries = (Suido__ChannelSummary **)series.p;
    rep->n_summaries = series.n;
    rep->alarms = (Suido__GatewayAlarms **)alarms.p;
    rep->n_alarms = alarms.n;
    return rc;
}

cm_err archive_query_answer(cm_sql *db, const Suido__ArchiveRequest *q, uint64_t now_ms,
                            Suido__ArchiveReply *rep)
{
    switch (q->op) {
    case SUIDO__ARCHIVE_OP__TREND:
        return trend(db, q, now_ms, rep);
    case SUIDO__ARCHIVE_OP__GATEWAY_STATS:
        return gateway_stats(db, q, now_ms, rep);
    case SUIDO__ARCHIVE_OP__COMMAND_LOG:
        return command_log(db, q, rep);
    case SUIDO__ARCHIVE_OP__AUDIT_LIST:
        return audit_list(db, q, rep);
    case SUIDO__ARCHIVE_OP__AUDIT_VERIFY:
        return audit_verify(db, rep);
    case SUIDO__ARCHIVE_OP__PLANNING:
        return planning(db, q, now_ms, rep);
    default:
        return CM_ERR_INVAL;
    }
}

void archive_query_free(Suido__ArchiveReply *rep)
{
    for (size_t i = 0; i < rep->n_points; i++)
        free(rep->points[i]);
    free(rep->points);
    for (size_t i = 0; i < rep->n_gateway_stats; i++) {
        free(rep->gateway_stats[i]->gateway_id);
        free(rep->gateway_stats[i]->last_reason);
        free(rep->gateway_stats[i]);
    }
    free(rep->gateway_stats);
    for (size_t i = 0; i < rep->n_commands; i++) {
        Suido__CommandRecord *c = rep->commands[i];
        char *s[] = {c->command_id, c->gateway_id, c->actuator, c->unit, c->requested_by,
                     c->decision, c->detail};
        for (size_t k = 0; k < sizeof s / sizeof s[0]; k++)
            free(s[k]);
        free(c);
    }
    free(rep->commands);
    for (size_t i = 0; i < rep->n_audit; i++) {
        Suido__AuditRecord *e = rep->audit[i];
        char *s[] = {e->source, e->event, e->subject, e->actor, e->detail};
        for (size_t k = 0; k < sizeof s / sizeof s[0]; k++)
            free(s[k]);
        free(e);
    }
    free(rep->audit);
    if (rep->audit_check) {
        free(rep->audit_check->problem);
        free(rep->audit_check->head_sha256);
        free(rep->audit_check->checkpoint);
        free(rep->audit_check);
    }
    for (size_t i = 0; i < rep->n_summaries; i++) {
        free(rep->summaries[i]->gateway_id);
        free(rep->summaries[i]->channel);
        free(rep->summaries[i]);
    }
    free(rep->summaries);
    for (size_t i = 0; i < rep->n_alarms; i++) {
        free(rep->alarms[i]->gateway_id);
        free(rep->alarms[i]);
    }
    free(rep->alarms);
    rep->points = NULL;
    rep->gateway_stats = NULL;
    rep->commands = NULL;
    rep->audit = NULL;
    rep->audit_check = NULL;
    rep->summaries = NULL;
    rep->alarms = NULL;
    rep->n_points = rep->n_gateway_stats = rep->n_commands = rep->n_audit = 0;
    rep->n_summaries = rep->n_alarms = 0;
}
