/* archive_query: the aggregates (written with their batch's transaction, back-fill and
 * duplicates, rollback, an early flush of a large transaction, readings of quality BAD left out)
 * and every read the monitor asks for, on SQLite and, with SUIDO_SQL_TEST_PG naming a connection-string file (mode 0600) of an
 * empty database, on PostgreSQL with the same SQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "archive_query.h"
#include "archive_store.h"
#include "cm_audit.h"

#define T0 1795708800000ll /* on an hour */

/* A stored batch's message with these mapped readings (channel, value, ms after T0). */
typedef struct batch {
    Suido__StageMessage m;
    Suido__Header h;
    Suido__MappedReading r[8], *p[8];
} batch;

static void make_batch(batch *b, const char *gw, size_t n, const char *const *ch,
                       const double *v, const int64_t *dt)
{
    memset(b, 0, sizeof *b);
    suido__stage_message__init(&b->m);
    suido__header__init(&b->h);
    b->h.gateway_id = (char *)gw;
    b->m.header = &b->h;
    for (size_t i = 0; i < n; i++) {
        suido__mapped_reading__init(&b->r[i]);
        b->r[i].channel = (char *)ch[i];
        b->r[i].value = v[i];
        b->r[i].timestamp_ms = (uint64_t)(T0 + dt[i]);
        b->p[i] = &b->r[i];
    }
    b->m.n_mapped = n;
    b->m.mapped = b->p;
}

static void set_quality(batch *b, const Suido__Quality *q)
{
    for (size_t i = 0; i < b->m.n_mapped; i++)
        b->r[i].quality = q[i];
}

static void store(cm_sql *db, archive_agg *agg, batch *b)
{
    assert_int_equal(cm_sql_begin(db), CM_OK);
    assert_int_equal(archive_agg_add(agg, db, &b->m), CM_OK);
    assert_int_equal(archive_agg_flush(agg, db), CM_OK);
    assert_int_equal(cm_sql_commit(db), CM_OK);
}

static Suido__ArchiveReply *ask(cm_sql *db, Suido__ArchiveRequest *q, cm_err want)
{
    static Suido__ArchiveReply rep;
    suido__archive_reply__init(&rep);
    assert_int_equal(archive_query_answer(db, q, (uint64_t)T0 + 3600000, &rep), want);
    return &rep;
}

static void exec_bound(cm_sql *db, const char *sql, const char *fmt, ...)
{
    cm_sql_stmt *st = NULL;
    assert_int_equal(cm_sql_prepare(db, sql, &st), CM_OK);
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        if (fmt[i] == 'i')
            cm_sql_bind_int64(st, i + 1, va_arg(ap, int64_t));
        else if (fmt[i] == 'd')
            cm_sql_bind_double(st, i + 1, va_arg(ap, double));
        else if (fmt[i] == 's')
            cm_sql_bind_text(st, i + 1, va_arg(ap, const char *));
        else
            cm_sql_bind_blob(st, i + 1, "\x00", 1);
    }
    va_end(ap);
    assert_int_equal(cm_sql_step(st), CM_SQL_DONE);
    cm_sql_finalize(&st);
}

static void aggregates(cm_sql *db)
{
    archive_agg *agg = archive_agg_new();
    assert_non_null(agg);
    static const char *const ch[] = {"reservoir.level", "reservoir.level", "reservoir.level",
                                     "reservoir.inflow", "reservoir.level", "DROP TABLE x;"};
    const double v[] = {1, 2, 3, 100, NAN, 7};
    const int64_t dt[] = {0, 10000, 70000, 5000, 20000, 0};
    batch b;
    make_batch(&b, "gw-0001", 6, ch, v, dt);
    store(db, agg, &b);
    /* a back-filled older reading in the first minute: min moves, last does not */
    static const char *const ch2[] = {"reservoir.level"};
    const double v2[] = {0.5};
    const int64_t dt2[] = {1000};
    make_batch(&b, "gw-0001", 1, ch2, v2, dt2);
    store(db, agg, &b);
    /* a rolled-back transaction leaves nothing */
    const double v3[] = {99};
    make_batch(&b, "gw-0001", 1, ch2, v3, dt2);
    assert_int_equal(cm_sql_begin(db), CM_OK);
    assert_int_equal(archive_agg_add(agg, db, &b.m), CM_OK);
    assert_int_equal(archive_agg_pending(agg), 2); /* its minute and its hour */
    archive_agg_discard(agg);
    cm_sql_rollback(db);
    assert_int_equal(archive_agg_pending(agg), 0);

    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__TREND;
    q.gateway_id = "gw-0001";
    q.channel = "reservoir.level";
    q.from_ms = (uint64_t)T0 - 60000;
    q.to_ms = (uint64_t)T0 + 180000;
    Suido__ArchiveReply *r = ask(db, &q, CM_OK);
    assert_int_equal(r->step_s, 60);
    assert_int_equal(r->n_points, 2);
    assert_int_equal(r->points[0]->t_ms, T0);
    assert_int_equal(r->points[0]->count, 3);
    assert_true(r->points[0]->min == 0.5 && r->points[0]->max == 2);
    assert_true(fabs(r->points[0]->mean - 3.5 / 3) < 1e-9);
    assert_true(r->points[0]->last == 2 && r->points[0]->last_ms == (uint64_t)T0 + 10000);
    assert_true(r->points[1]->count == 1 && r->points[1]->last == 3);
    archive_query_free(r);
    /* wide points: both minutes in one */
    q.limit = 1;
    r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_points, 1);
    assert_int_equal(r->points[0]->count, 4);
    assert_true(r->points[0]->last == 3 && r->points[0]->max == 3);
    archive_query_free(r);
    /* malformed requests */
    q.gateway_id = "GW 1";
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
    q.gateway_id = "gw-0001";
    q.channel = "level";
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
    q.channel = "reservoir.level";
    q.from_ms = q.to_ms;
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
    q.from_ms = 1;
    q.to_ms = (uint64_t)T0;
    archive_query_free(ask(db, &q, CM_ERR_INVAL)); /* more than ten years */

    /* one transaction with more gateway/channel/minutes than are held: flushed on the way */
    assert_int_equal(cm_sql_begin(db), CM_OK);
    static const char *const one[] = {"pumping.flow"};
    for (int i = 0; i < 8000; i++) {
        const double fv[] = {(double)i};
        const int64_t fdt[] = {(int64_t)i * 60000 - 400ll * 86400000};
        make_batch(&b, "gw-0003", 1, one, fv, fdt);
        assert_int_equal(archive_agg_add(agg, db, &b.m), CM_OK);
    }
    assert_true(archive_agg_pending(agg) < 8000);
    assert_int_equal(archive_agg_flush(agg, db), CM_OK);
    assert_int_equal(cm_sql_commit(db), CM_OK);
    q.gateway_id = "gw-0003";
    q.channel = "pumping.flow";
    q.from_ms = (uint64_t)(T0 - 401ll * 86400000);
    q.to_ms = (uint64_t)(T0 - 390ll * 86400000);
    q.limit = 2000;
    r = ask(db, &q, CM_OK);
    assert_int_equal(r->step_s, 3600); /* a long period: from the hourly table */
    uint64_t n = 0;
    for (size_t i = 0; i < r->n_points; i++)
        n += r->points[i]->count;
    assert_int_equal(n, 8000);
    assert_true(r->points[r->n_points - 1]->last == 7999);
    archive_query_free(r);
    archive_agg_destroy(&agg);
}

static void planning_and_stats(cm_sql *db)
{
    /* refusals: two real ones in the last day, a duplicate and an old one that do not count */
    const char *rej = "INSERT INTO rejects(received_ms,topic,gateway,boot_epoch,seq,reason,envelope) "
                      "VALUES(?,?,?,?,?,?,?)";
    exec_bound(db, rej, "issiisb", (int64_t)T0 + 1000, "suido/v1/gw-0001/data", "gw-0001",
               (int64_t)1, (int64_t)1, "replay");
    exec_bound(db, rej, "issiisb", (int64_t)T0 + 2000, "suido/v1/gw-0001/data", "gw-0001",
               (int64_t)1, (int64_t)2, "bad_signature");
    exec_bound(db, rej, "issiisb", (int64_t)T0 + 3000, "suido/v1/gw-0001/data", "gw-0001",
               (int64_t)1, (int64_t)3, "duplicate");
    exec_bound(db, rej, "issiisb", (int64_t)T0 - 90000000, "suido/v1/gw-0009/data", "gw-0009",
               (int64_t)1, (int64_t)1, "bad_signature");
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__GATEWAY_STATS;
    Suido__ArchiveReply *r = ask(db, &q, CM_OK);
    const Suido__GatewayStats *g1 = NULL;
    for (size_t i = 0; i < r->n_gateway_stats; i++) {
        assert_string_not_equal(r->gateway_stats[i]->gateway_id, "gw-0009");
        if (strcmp(r->gateway_stats[i]->gateway_id, "gw-0001") == 0)
            g1 = r->gateway_stats[i];
    }
    assert_non_null(g1);
    assert_int_equal(g1->refusals, 2);
    assert_string_equal(g1->last_reason, "bad_signature");
    assert_int_equal(g1->last_reading_ms, T0 + 70000);
    archive_query_free(r);

    /* alerts of the hour: two raised (one severe), a clear and one outside do not count */
    const char *al = "INSERT INTO alerts(alert_id,gateway,site,channel,rule,severity,value,"
                     "limit_value,ts_ms,evidence,cleared,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)";
    exec_bound(db, al, "ssssiiddisii", "a", "gw-0001", "s", "c", "r", (int64_t)2, 1.0, 1.0,
               (int64_t)T0 + 100, "e", (int64_t)0, (int64_t)T0);
    exec_bound(db, al, "ssssiiddisii", "a", "gw-0001", "s", "c", "r", (int64_t)1, 1.0, 1.0,
               (int64_t)T0 + 200, "e", (int64_t)0, (int64_t)T0);
    exec_bound(db, al, "ssssiiddisii", "a", "gw-0001", "s", "c", "r", (int64_t)2, 1.0, 1.0,
               (int64_t)T0 + 300, "e", (int64_t)1, (int64_t)T0);
    exec_bound(db, al, "ssssiiddisii", "a", "gw-0001", "s", "c", "r", (int64_t)3, 1.0, 1.0,
               (int64_t)T0 + 7200000, "e", (int64_t)0, (int64_t)T0);
    q.op = SUIDO__ARCHIVE_OP__PLANNING;
    q.from_ms = (uint64_t)T0;
    q.to_ms = (uint64_t)T0 + 3600000;
    r = ask(db, &q, CM_OK);
    const Suido__ChannelSummary *level = NULL, *inflow = NULL;
    for (size_t i = 0; i < r->n_summaries; i++) {
        if (strcmp(r->summaries[i]->channel, "reservoir.level") == 0)
            level = r->summaries[i];
        if (strcmp(r->summaries[i]->channel, "reservoir.inflow") == 0)
            inflow = r->summaries[i];
        assert_string_not_equal(r->summaries[i]->gateway_id, "gw-0003"); /* a year earlier */
    }
    assert_non_null(level);
    assert_non_null(inflow);
    assert_int_equal(level->minutes, 2); /* the back-filled reading fell in a minute already had */
    assert_int_equal(level->count, 4);
    assert_true(level->min == 0.5 && level->max == 3);
    assert_true(fabs(level->integral - 6.5 / 4 * 2) < 1e-9); /* the hour's mean x 2 minutes */
    assert_true(inflow->minutes == 1 && inflow->integral == 100);
    assert_int_equal(r->n_alarms, 1);
    assert_string_equal(r->alarms[0]->gateway_id, "gw-0001");
    assert_int_equal(r->alarms[0]->raised, 2);
    assert_int_equal(r->alarms[0]->critical, 1);
    archive_query_free(r);
    q.from_ms = 0;
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
}

static void commands(cm_sql *db)
{
    const char *ins = "INSERT INTO command_log(command_id,gateway,actuator,value,unit,"
                      "requested_by,issued_ms,expires_ms,decision,detail,ts_ms) "
                      "VALUES(?,?,?,?,?,?,?,?,?,?,?)";
    for (int i = 0; i < 5; i++)
        exec_bound(db, ins, "sssdssiissi", i < 3 ? "c1" : "c2", i < 3 ? "gw-0003" : "gw-0001",
                   "pump1", (double)i, "1", "ada", (int64_t)T0, (int64_t)T0 + 30000,
                   i == 0 ? "sent" : "applied", "ok", (int64_t)T0 + i);
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__COMMAND_LOG;
    Suido__ArchiveReply *r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_commands, 5);
    assert_true(r->commands[0]->id > r->commands[4]->id);
    uint64_t third = r->commands[2]->id;
    archive_query_free(r);
    q.gateway_id = "gw-0003";
    r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_commands, 3);
    assert_string_equal(r->commands[0]->decision, "applied");
    assert_string_equal(r->commands[2]->decision, "sent");
    archive_query_free(r);
    q.gateway_id = "";
    q.before = third;
    q.limit = 1;
    r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_commands, 1);
    assert_true(r->commands[0]->id < third);
    archive_query_free(r);
    q.gateway_id = "gw 3'";
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
}

static void audit(cm_sql *db)
{
    uint8_t prev[CM_AUDIT_HASH_LEN] = {0}, h[CM_AUDIT_HASH_LEN];
    const char *ins = "INSERT INTO audit(seq,ts_ms,source,event,subject,actor,detail,hash) "
                      "VALUES(?,?,?,?,?,?,?,?)";
    for (uint64_t seq = 1; seq <= 4; seq++) {
        char detail[32];
        snprintf(detail, sizeof detail, "n=%llu", (unsigned long long)seq);
        cm_audit_entry e = {seq, (uint64_t)T0 + seq, "monitor", "monitor_login", "ada", "ada",
                            detail};
        assert_int_equal(cm_audit_hash(prev, &e, h), CM_OK);
        cm_sql_stmt *st = NULL;
        assert_int_equal(cm_sql_prepare(db, ins, &st), CM_OK);
        cm_sql_bind_int64(st, 1, (int64_t)seq);
        cm_sql_bind_int64(st, 2, (int64_t)e.ts_ms);
        cm_sql_bind_text(st, 3, e.source);
        cm_sql_bind_text(st, 4, e.event);
        cm_sql_bind_text(st, 5, e.subject);
        cm_sql_bind_text(st, 6, e.actor);
        cm_sql_bind_text(st, 7, e.detail);
        cm_sql_bind_blob(st, 8, h, sizeof h);
        assert_int_equal(cm_sql_step(st), CM_SQL_DONE);
        cm_sql_finalize(&st);
        memcpy(prev, h, sizeof h);
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__AUDIT_LIST;
    Suido__ArchiveReply *r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_audit, 4);
    assert_int_equal(r->audit[0]->seq, 4);
    assert_string_equal(r->audit[3]->detail, "n=1");
    archive_query_free(r);
    q.op = SUIDO__ARCHIVE_OP__AUDIT_VERIFY;
    r = ask(db, &q, CM_OK);
    assert_true(r->audit_check->intact);
    assert_int_equal(r->audit_check->entries, 4);
    char head[65];
    for (int i = 0; i < CM_AUDIT_HASH_LEN; i++)
        snprintf(head + 2 * i, 3, "%02x", prev[i]);
    assert_string_equal(r->audit_check->head_sha256, head);
    archive_query_free(r);
    /* an edited entry is found */
    assert_int_equal(cm_sql_exec(db, "UPDATE audit SET detail='n=0' WHERE seq=3"), CM_OK);
    r = ask(db, &q, CM_OK);
    assert_false(r->audit_check->intact);
    assert_int_equal(r->audit_check->first_bad_seq, 3);
    assert_int_equal(r->audit_check->entries, 2);
    assert_string_not_equal(r->audit_check->problem, "");
    archive_query_free(r);
}

/* Rows of table for gateway gw (and channel, if not NULL). */
static int64_t rows_of(cm_sql *db, const char *table, const char *gw, const char *channel)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE gateway=? AND (?='' OR channel=?)",
             table);
    cm_sql_stmt *st = NULL;
    assert_int_equal(cm_sql_prepare(db, sql, &st), CM_OK);
    cm_sql_bind_text(st, 1, gw);
    cm_sql_bind_text(st, 2, channel ? channel : "");
    cm_sql_bind_text(st, 3, channel ? channel : "");
    assert_int_equal(cm_sql_step(st), CM_SQL_ROW);
    int64_t n = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    return n;
}

/* A reading of quality BAD is no measurement: no count, extreme, sum or last value of any
 * minute, hour or series has it; UNCERTAIN readings count. */
static void bad_quality(cm_sql *db)
{
    archive_agg *agg = archive_agg_new();
    assert_non_null(agg);
    static const char *const ch[] = {"treatment.turbidity", "treatment.turbidity",
                                     "treatment.turbidity", "treatment.ph"};
    const double v[] = {1.0, 1.5, 99, 7.0};
    const int64_t dt[] = {0, 10000, 20000, 0};
    const Suido__Quality qual[] = {SUIDO__QUALITY__QUALITY_GOOD, SUIDO__QUALITY__QUALITY_UNCERTAIN,
                                   SUIDO__QUALITY__QUALITY_BAD, SUIDO__QUALITY__QUALITY_BAD};
    batch b;
    make_batch(&b, "gw-0002", 4, ch, v, dt);
    set_quality(&b, qual);
    store(db, agg, &b);
    /* a batch of BAD readings only, in the next hour: nothing at all */
    const int64_t later[] = {3600000, 3601000, 3602000, 3600000};
    const Suido__Quality all_bad[] = {SUIDO__QUALITY__QUALITY_BAD, SUIDO__QUALITY__QUALITY_BAD,
                                      SUIDO__QUALITY__QUALITY_BAD, SUIDO__QUALITY__QUALITY_BAD};
    make_batch(&b, "gw-0002", 4, ch, v, later);
    set_quality(&b, all_bad);
    assert_int_equal(cm_sql_begin(db), CM_OK);
    assert_int_equal(archive_agg_add(agg, db, &b.m), CM_OK);
    assert_int_equal(archive_agg_pending(agg), 0);
    assert_int_equal(cm_sql_commit(db), CM_OK);

    assert_int_equal(rows_of(db, "readings_minute", "gw-0002", NULL), 1);
    assert_int_equal(rows_of(db, "readings_hour", "gw-0002", NULL), 1);
    assert_int_equal(rows_of(db, "readings_series", "gw-0002", "treatment.turbidity"), 1);
    assert_int_equal(rows_of(db, "readings_series", "gw-0002", "treatment.ph"), 0);
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__TREND;
    q.gateway_id = "gw-0002";
    q.channel = "treatment.turbidity";
    q.from_ms = (uint64_t)T0;
    q.to_ms = (uint64_t)T0 + 2 * 3600000;
    Suido__ArchiveReply *r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_points, 1);
    assert_int_equal(r->points[0]->count, 2);
    assert_true(r->points[0]->min == 1.0 && r->points[0]->max == 1.5);
    assert_true(fabs(r->points[0]->mean - 1.25) < 1e-12);
    assert_true(r->points[0]->last == 1.5 && r->points[0]->last_ms == (uint64_t)T0 + 10000);
    archive_query_free(r);
    q.channel = "treatment.ph";
    r = ask(db, &q, CM_OK);
    assert_int_equal(r->n_points, 0);
    archive_query_free(r);
    /* the gateway's latest reading is its latest measurement */
    Suido__ArchiveRequest s = SUIDO__ARCHIVE_REQUEST__INIT;
    s.op = SUIDO__ARCHIVE_OP__GATEWAY_STATS;
    r = ask(db, &s, CM_OK);
    const Suido__GatewayStats *g2 = NULL;
    for (size_t i = 0; i < r->n_gateway_stats; i++)
        if (strcmp(r->gateway_stats[i]->gateway_id, "gw-0002") == 0)
            g2 = r->gateway_stats[i];
    assert_non_null(g2);
    assert_int_equal(g2->last_reading_ms, T0 + 10000);
    archive_query_free(r);
    archive_agg_destroy(&agg);
}

static void engine_checks(cm_sql *db)
{
    assert_int_equal(archive_store_create_schema(db, "test"), CM_OK);
    aggregates(db);
    planning_and_stats(db);
    commands(db);
    audit(db);
    bad_quality(db);
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__ALERT_LIST;
    archive_query_free(ask(db, &q, CM_ERR_INVAL));
}

static void test_sqlite(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-query-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    cm_sql *db = NULL;
    assert_int_equal(cm_sql_open_as(CM_SQL_SQLITE, path, 0, &db, NULL, 0), CM_OK);
    engine_checks(db);
    cm_sql_close(&db);
    unlink(path);
    char side[sizeof path + 8];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

/* Every row of a table as text with its sums to the last bit. */
static char *dump(cm_sql *db, const char *table)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT * FROM %s ORDER BY 1, 2, 3", table);
    cm_sql_stmt *st = NULL;
    assert_int_equal(cm_sql_prepare(db, sql, &st), CM_OK);
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(1, cap);
    while (cm_sql_step(st) == CM_SQL_ROW)
        for (int c = 0; c < cm_sql_column_count(st); c++)
            len += (size_t)snprintf(out + len, cap - len, "%s|%a;",
                                    cm_sql_column_text(st, c), cm_sql_column_double(st, c));
    cm_sql_finalize(&st);
    return out;
}

/* A standby archive applies the same batches grouped into other transactions: the rows must be
 * the same to the last bit, sums included (floating-point addition depends on its order). */
static void test_grouping_does_not_change_the_rows(void **state)
{
    (void)state;
    char path[2][40];
    cm_sql *db[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        snprintf(path[k], sizeof path[k], "/tmp/suido-query-group-XXXXXX");
        int fd = mkstemp(path[k]);
        assert_true(fd >= 0);
        close(fd);
        unlink(path[k]);
        assert_int_equal(cm_sql_open_as(CM_SQL_SQLITE, path[k], 0, &db[k], NULL, 0), CM_OK);
        assert_int_equal(archive_store_create_schema(db[k], "test"), CM_OK);
    }
    static const char *const ch[] = {"treatment.ph", "treatment.ph", "treatment.ph"};
    /* 1e16 + 1 rounds back to 1e16, 1e16 + 2 does not: the parts' grouping shows */
    const double v[][3] = {{1e16, 0.0, 0.7}, {1.0, 1.0, 0.1}, {1.0, 1.0, 0.3}, {0.7, 0.1, 0.2}};
    const int64_t dt[] = {0, 20000, 70000};
    archive_agg *agg = archive_agg_new();
    batch b;
    /* one database: a transaction per batch; the other: all in one, then one more */
    for (int i = 0; i < 4; i++) {
        make_batch(&b, "gw-0007", 3, ch, v[i], dt);
        store(db[0], agg, &b);
    }
    assert_int_equal(cm_sql_begin(db[1]), CM_OK);
    for (int i = 0; i < 3; i++) {
        make_batch(&b, "gw-0007", 3, ch, v[i], dt);
        assert_int_equal(archive_agg_add(agg, db[1], &b.m), CM_OK);
    }
    assert_int_equal(archive_agg_flush(agg, db[1]), CM_OK);
    assert_int_equal(cm_sql_commit(db[1]), CM_OK);
    make_batch(&b, "gw-0007", 3, ch, v[3], dt);
    store(db[1], agg, &b);
    const char *tables[] = {"readings_minute", "readings_hour", "readings_series"};
    for (int t = 0; t < 3; t++) {
        char *x = dump(db[0], tables[t]), *y = dump(db[1], tables[t]);
        assert_true(strlen(x) > 0);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
    archive_agg_destroy(&agg);
    for (int k = 0; k < 2; k++) {
        cm_sql_close(&db[k]);
        unlink(path[k]);
        char side[64];
        snprintf(side, sizeof side, "%s-wal", path[k]);
        unlink(side);
        snprintf(side, sizeof side, "%s-shm", path[k]);
        unlink(side);
    }
}

/* Through the store: a batch stored twice (a retransmission) is aggregated once, and only what
 * commits counts. */
static void test_store_counts_a_batch_once(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-query-store-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    archive_store *st = NULL;
    assert_int_equal(archive_store_open(path, &st), CM_OK);
    static const char *const ch[] = {"treatment.ph", "treatment.ph", "treatment.chlorine"};
    const double v[] = {7.1, 7.3, 0.8};
    const int64_t dt[] = {0, 500, 900};
    batch b;
    make_batch(&b, "gw-0005", 3, ch, v, dt);
    b.m.topic = "suido/v1/gw-0005/data";
    b.h.boot_epoch = 1;
    b.h.seq = 1;
    b.h.timestamp_ms = (uint64_t)T0;
    b.h.reading_count = 3;
    b.m.envelope.data = (uint8_t *)"signed bytes";
    b.m.envelope.len = 12;
    b.m.status = SUIDO__VERIFY_STATUS__VERIFY_OK;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(archive_store_begin(st), CM_OK);
        assert_int_equal(archive_store_batch(st, &b.m), i == 0 ? CM_OK : CM_ERR_DUPLICATE);
        assert_int_equal(archive_store_commit(st), CM_OK);
    }
    /* a batch whose transaction rolls back is not counted */
    b.h.seq = 2;
    assert_int_equal(archive_store_begin(st), CM_OK);
    assert_int_equal(archive_store_batch(st, &b.m), CM_OK);
    archive_store_rollback(st);
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__TREND;
    q.gateway_id = "gw-0005";
    q.channel = "treatment.ph";
    q.from_ms = (uint64_t)T0;
    q.to_ms = (uint64_t)T0 + 60000;
    Suido__ArchiveReply *r = ask(archive_store_db(st), &q, CM_OK);
    assert_int_equal(r->n_points, 1);
    assert_int_equal(r->points[0]->count, 2);
    assert_true(fabs(r->points[0]->mean - 7.2) < 1e-9 && r->points[0]->last == 7.3);
    archive_query_free(r);
    archive_store_close(&st);
    unlink(path);
    char side[sizeof path + 8];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

static void test_postgresql(void **state)
{
    (void)state;
    const char *file = getenv("SUIDO_SQL_TEST_PG");
    if (!file || !*file) {
        skip();
        return;
    }
    char conninfo[8192], why[512];
    assert_int_equal(cm_sql_read_conninfo(file, conninfo, sizeof conninfo, why, sizeof why),
                     CM_OK);
    cm_sql *db = NULL;
    if (cm_sql_open_as(CM_SQL_POSTGRESQL, conninfo, 0, &db, why, sizeof why) != CM_OK)
        fail_msg("open: %s", why);
    engine_checks(db);
    cm_sql_close(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlite),
        cmocka_unit_test(test_store_counts_a_batch_once),
        cmocka_unit_test(test_grouping_does_not_change_the_rows),
        cmocka_unit_test(test_postgresql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
