/* archive_store: persistence of batches, events, refusals and alerts, in SQLite or PostgreSQL
 * (cm_sql): the SQL below is written once, in the dialect both accept. */
#include "archive_store.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "archive_cases.h"
#include "archive_query.h"
#include "cm_audit.h"
#include "cm_log.h"
#include "cm_time.h"

#define LOST_RUN_STEP 16384 /* sequences of lost runs handed out per archive_store_seqs */
#define SCHEMA_VERSION 3 /* 2: audit log; 3: command log */

enum {
    ST_BATCH, ST_EVENT, ST_REJECT, ST_ALERT, ST_SEQS, ST_LOST, ST_AUDIT, ST_HEAD, ST_COMMAND,
    ST__COUNT
};

struct archive_store {
    cm_sql *db;
    cm_sql_stmt *st[ST__COUNT];
    uint64_t audit_seq;                    /* chain head: number and hash of the last entry */
    uint8_t audit_hash[CM_AUDIT_HASH_LEN];
    archive_agg *agg; /* readings of the open transaction's batches, for the aggregates */
};

/* Through cm_sql_exec_ddl: the type names are mapped for PostgreSQL, and WITHOUT ROWID (the
 * batches' primary key is their storage order on SQLite) applies to SQLite only. */
static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS batches("
    " gateway TEXT NOT NULL, boot_epoch INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " kind TEXT NOT NULL, device_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,"
    " site TEXT NOT NULL, readings INTEGER NOT NULL, unknown_channels INTEGER NOT NULL,"
    " key_id TEXT NOT NULL, encrypted INTEGER NOT NULL,"
    " status TEXT NOT NULL, reason TEXT NOT NULL,"
    " envelope BLOB NOT NULL,"
    " PRIMARY KEY(gateway, boot_epoch, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS events("
    " id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, kind TEXT NOT NULL,"
    " boot_epoch INTEGER NOT NULL, key_seq INTEGER NOT NULL, device_ms INTEGER NOT NULL,"
    " received_ms INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,"
    " envelope BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rejects("
    " id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL,"
    " gateway TEXT NOT NULL, boot_epoch INTEGER, seq INTEGER, reason TEXT NOT NULL,"
    " envelope BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS alerts("
    " id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, gateway TEXT NOT NULL,"
    " site TEXT NOT NULL, channel TEXT NOT NULL, rule TEXT NOT NULL, severity INTEGER NOT NULL,"
    " value REAL NOT NULL, limit_value REAL, ts_ms INTEGER NOT NULL, evidence TEXT NOT NULL,"
    " cleared INTEGER NOT NULL, received_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS alerts_by_id ON alerts(alert_id, id);"
    "CREATE TABLE IF NOT EXISTS audit("
    " seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, source TEXT NOT NULL,"
    " event TEXT NOT NULL, subject TEXT NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL,"
    " hash BLOB NOT NULL);"
    /* every step of every command: the gate's decision, the gateway's result, the follow-up */
    "CREATE TABLE IF NOT EXISTS command_log("
    " id INTEGER PRIMARY KEY, command_id TEXT NOT NULL, gateway TEXT NOT NULL,"
    " actuator TEXT NOT NULL, value REAL, unit TEXT NOT NULL, requested_by TEXT NOT NULL,"
    " issued_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, decision TEXT NOT NULL,"
    " detail TEXT NOT NULL, ts_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS command_log_by_id ON command_log(command_id, id);"
    /* runs acknowledged to their gateway and no longer held (restored from an older backup):
     * archive_acked.h */
    "CREATE TABLE IF NOT EXISTS acked_lost("
    " gateway TEXT NOT NULL, boot_epoch INTEGER NOT NULL, first_seq INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL, detected_ms INTEGER NOT NULL,"
    " PRIMARY KEY(gateway, boot_epoch, first_seq));";

static const char *const SQL[ST__COUNT] = {
    [ST_BATCH] = "INSERT INTO batches(gateway,boot_epoch,seq,kind,device_ms,"
                 "received_ms,site,readings,unknown_channels,key_id,encrypted,status,reason,"
                 "envelope) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
    [ST_EVENT] = "INSERT INTO events(gateway,kind,boot_epoch,key_seq,device_ms,received_ms,"
                 "status,reason,envelope) VALUES(?,?,?,?,?,?,?,?,?)",
    [ST_REJECT] = "INSERT INTO rejects(received_ms,topic,gateway,boot_epoch,seq,reason,envelope)"
                  " VALUES(?,?,?,?,?,?,?)",
    [ST_ALERT] = "INSERT INTO alerts(alert_id,gateway,site,channel,rule,severity,value,"
                 "limit_value,ts_ms,evidence,cleared,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
    [ST_SEQS] = "SELECT seq FROM batches WHERE gateway=? AND boot_epoch=? AND seq>? ORDER BY seq",
    [ST_LOST] = "SELECT first_seq, last_seq FROM acked_lost WHERE gateway=? AND boot_epoch=?"
                " AND last_seq>? ORDER BY first_seq",
    [ST_AUDIT] = "INSERT INTO audit(seq,ts_ms,source,event,subject,actor,detail,hash)"
                 " VALUES(?,?,?,?,?,?,?,?)",
    [ST_HEAD] = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
    [ST_COMMAND] = "INSERT INTO command_log(command_id,gateway,actuator,value,unit,requested_by,"
                   "issued_ms,expires_ms,decision,detail,ts_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
};

/* Reads the audit chain's head from the database. */
static cm_err load_head(archive_store *s)
{
    cm_sql_stmt *st = s->st[ST_HEAD];
    s->audit_seq = 0;
    memset(s->audit_hash, 0, sizeof s->audit_hash);
    cm_sql_reset(st);
    int rc = cm_sql_step(st);
    size_t n = 0;
    const void *h = rc == CM_SQL_ROW ? cm_sql_column_blob(st, 1, &n) : NULL;
    if (h && n == CM_AUDIT_HASH_LEN) {
        s->audit_seq = (uint64_t)cm_sql_column_int64(st, 0);
        memcpy(s->audit_hash, h, CM_AUDIT_HASH_LEN);
    }
    cm_sql_reset(st);
    return rc == CM_SQL_FAIL ? CM_ERR_DB : CM_OK;
}

cm_err archive_store_create_schema(cm_sql *db, const char *name)
{
    int64_t version = -1;
    if (cm_sql_get_version(db, &version) != CM_OK) {
        cm_error("db=%s error=\"%s\"", name, cm_sql_error(db));
        return CM_ERR_DB;
    }
    /* versions 1 and 2 lack only tables (audit, command_log) that the schema below adds */
    if (version < 0 || version > SCHEMA_VERSION) {
        cm_error("db=%s schema_version=%lld expected=%d error=\"wrong database version\"", name,
                 (long long)version, SCHEMA_VERSION);
        return CM_ERR_DB;
    }
    if (cm_sql_begin(db) != CM_OK || cm_sql_exec_ddl(db, SCHEMA) != CM_OK ||
        archive_cases_init(db) != CM_OK || archive_query_init(db) != CM_OK ||
        cm_sql_set_version(db, SCHEMA_VERSION) != CM_OK ||
        cm_sql_commit(db) != CM_OK) {
        cm_error("db=%s error=\"%s\"", name, cm_sql_error(db));
        cm_sql_rollback(db);
        return CM_ERR_DB;
    }
    return CM_OK;
}

cm_err archive_store_open_db(cm_sql **db, const char *name, archive_store **out)
{
    *out = NULL;
    archive_store *s = calloc(1, sizeof *s);
    if (!s) {
        cm_sql_close(db);
        return CM_ERR_NOMEM;
    }
    s->db = *db;
    *db = NULL;
    if (!(s->agg = archive_agg_new()))
        goto fail;
    if (archive_store_create_schema(s->db, name) != CM_OK)
        goto fail_quiet;
    for (int i = 0; i < ST__COUNT; i++)
        if (cm_sql_prepare(s->db, SQL[i], &s->st[i]) != CM_OK)
            goto fail;
    if (load_head(s) != CM_OK)
        goto fail;
    *out = s;
    return CM_OK;
fail:
    cm_error("db=%s error=\"%s\"", name, cm_sql_error(s->db));
fail_quiet:
    archive_store_close(&s);
    return CM_ERR_DB;
}

/* SQLite's own structural check of every page (PRAGMA quick_check), before anything is
 * written: a damaged archive is refused at start rather than written into, so the damaged file
 * stays as evidence and nothing is acknowledged on top of it. Linear in the file's size. */
static cm_err quick_check(cm_sql *db, char *why, size_t n)
{
    cm_sql_stmt *st = NULL;
    snprintf(why, n, "quick_check did not run");
    if (cm_sql_prepare(db, "PRAGMA quick_check(1)", &st) != CM_OK) {
        snprintf(why, n, "%s", cm_sql_error(db));
        return CM_ERR_DB;
    }
    int rc = cm_sql_step(st);
    cm_err e = CM_ERR_DB;
    if (rc == CM_SQL_ROW) {
        const char *r = cm_sql_column_text(st, 0);
        if (strcmp(r, "ok") == 0)
            e = CM_OK;
        else
            snprintf(why, n, "%s", r);
    } else {
        snprintf(why, n, "%s", cm_sql_error(db));
    }
    cm_sql_finalize(&st);
    return e;
}

cm_err archive_store_open(const char *path, archive_store **out)
{
    cm_sql *db = NULL;
    char why[512];
    *out = NULL;
    if (cm_sql_open_as(CM_SQL_SQLITE, path, 0, &db, why, sizeof why) != CM_OK) {
        cm_error("path=%s error=\"%s\" alarm=1", path, why);
        return CM_ERR_DB;
    }
    if (quick_check(db, why, sizeof why) != CM_OK) {
        cm_error("path=%s error=\"damaged database: %s; the file is left as it is: restore the "
                 "last good backup (suidoctl backup restore) or promote the standby\" alarm=1",
                 path, why);
        cm_sql_close(&db);
        return CM_ERR_DB;
    }
    return archive_store_open_db(&db, path, out);
}

void archive_store_close(archive_store **sp)
{
    if (!sp || !*sp)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        cm_sql_finalize(&(*sp)->st[i]);
    cm_sql_close(&(*sp)->db);
    archive_agg_destroy(&(*sp)->agg);
    free(*sp);
    *sp = NULL;
}

cm_err archive_store_begin(archive_store *s)
{
    cm_err rc = cm_sql_begin(s->db);
    if (rc != CM_OK)
        cm_error("error=\"begin: %s\"", cm_sql_error(s->db));
    return rc;
}

cm_err archive_store_commit(archive_store *s)
{
    /* the aggregates of the transaction's batches commit with them, or nothing does */
    if (archive_agg_flush(s->agg, s->db) != CM_OK)
        return CM_ERR_DB;
    cm_err rc = cm_sql_commit(s->db);
    if (rc != CM_OK)
        cm_error("error=\"commit: %s\"", cm_sql_error(s->db));
    return rc;
}

void archive_store_rollback(archive_store *s)
{
    archive_agg_discard(s->agg);
    cm_sql_rollback(s->db);
    if (cm_sql_connected(s->db))
        load_head(s);
}

int archive_store_connected(archive_store *s) { return cm_sql_connected(s->db); }

cm_err archive_store_reconnect(archive_store *s)
{
    cm_err rc = cm_sql_reconnect(s->db);
    if (rc == CM_OK)
        rc = load_head(s);
    return rc;
}

static const char *kind_name(const char *topic)
{
    const char *slash = topic ? strrchr(topic, '/') : NULL;
    return slash ? slash + 1 : "unknown";
}

/* Runs a bound statement that returns no rows; *changes (may be NULL) gets the rows it changed.
 * Every parameter is bound again before each run. */
static cm_err run(archive_store *s, cm_sql_stmt *st, int64_t *changes)
{
    int rc = cm_sql_step(st);
    if (changes)
        *changes = cm_sql_changes(st);
    cm_sql_reset(st);
    if (rc != CM_SQL_DONE) {
        if (cm_sql_connected(s->db)) /* a lost connection is reported once, by the caller */
            cm_error("error=\"%s\"", cm_sql_error(s->db));
        return CM_ERR_DB;
    }
    return CM_OK;
}

static cm_err step(archive_store *s, cm_sql_stmt *st) { return run(s, st, NULL); }

const char *archive_status_verified(const Suido__StageMessage *m)
{
    return m->provenance == SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG ? "transport" : "verified";
}

cm_err archive_store_batch(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Header *h = m->header;
    cm_sql_stmt *st = s->st[ST_BATCH];
    cm_sql_bind_text(st, 1, h->gateway_id);
    cm_sql_bind_int64(st, 2, (int64_t)h->boot_epoch);
    cm_sql_bind_int64(st, 3, (int64_t)h->seq);
    cm_sql_bind_text(st, 4, kind_name(m->topic));
    cm_sql_bind_int64(st, 5, (int64_t)h->timestamp_ms);
    cm_sql_bind_int64(st, 6, (int64_t)m->received_ms);
    cm_sql_bind_text(st, 7, m->site ? m->site : "");
    cm_sql_bind_int64(st, 8, (int64_t)h->reading_count);
    cm_sql_bind_int64(st, 9, (int64_t)m->unknown_channels);
    cm_sql_bind_text(st, 10, h->key_id ? h->key_id : "");
    cm_sql_bind_int64(st, 11, h->cipher != SUIDO__CIPHER__CIPHER_NONE);
    cm_sql_bind_text(st, 12, archive_status_verified(m));
    cm_sql_bind_text(st, 13, m->reason ? m->reason : "ok");
    cm_sql_bind_blob(st, 14, m->envelope.data, m->envelope.len);
    int64_t changed = 0;
    cm_err rc = run(s, st, &changed);
    if (rc == CM_OK && changed == 0)
        rc = CM_ERR_DUPLICATE;
    if (rc == CM_OK)
        rc = archive_agg_add(s->agg, s->db, m);
    return rc;
}

cm_sql *archive_store_db(archive_store *s) { return s->db; }

cm_err archive_store_command(archive_store *s, const Suido__StageMessage *m, uint64_t now_ms)
{
    const Suido__Command *c = m->command;
    cm_sql_stmt *st = s->st[ST_COMMAND];
    cm_sql_bind_text(st, 1, c->command_id);
    cm_sql_bind_text(st, 2, c->gateway_id);
    cm_sql_bind_text(st, 3, c->channel);
    if (isfinite(c->value))
        cm_sql_bind_double(st, 4, c->value);
    else
        cm_sql_bind_null(st, 4);
    cm_sql_bind_text(st, 5, c->unit);
    cm_sql_bind_text(st, 6, c->requested_by);
    cm_sql_bind_int64(st, 7, (int64_t)c->issued_ms);
    cm_sql_bind_int64(st, 8, (int64_t)c->expires_ms);
    cm_sql_bind_text(st, 9, m->decision);
    cm_sql_bind_text(st, 10, m->reason ? m->reason : "");
    cm_sql_bind_int64(st, 11, (int64_t)(m->received_ms ? m->received_ms : now_ms));
    return step(s, st);
}

cm_err archive_store_event(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Header *h = m->header;
    cm_sql_stmt *st = s->st[ST_EVENT];
    cm_sql_bind_text(st, 1, h->gateway_id);
    cm_sql_bind_text(st, 2, kind_name(m->topic));
    cm_sql_bind_int64(st, 3, (int64_t)h->boot_epoch);
    cm_sql_bind_int64(st, 4, (int64_t)h->key_seq);
    cm_sql_bind_int64(st, 5, (int64_t)h->timestamp_ms);
    cm_sql_bind_int64(st, 6, (int64_t)m->received_ms);
    cm_sql_bind_text(st, 7, m->status == SUIDO__VERIFY_STATUS__VERIFY_OK ? archive_status_verified(m)
                                                                         : "refused");
    cm_sql_bind_text(st, 8, m->reason ? m->reason : "");
    cm_sql_bind_blob(st, 9, m->envelope.data, m->envelope.len);
    return step(s, st);
}

cm_err archive_store_reject(archive_store *s, const Suido__StageMessage *m, const char *reason)
{
    char gw[65] = "";
    const char *t = m->topic ? m->topic : "";
    if (strncmp(t, "suido/v1/", 9) == 0) {
        const char *e = strchr(t + 9, '/');
        size_t n = e ? (size_t)(e - (t + 9)) : 0;
        if (n < sizeof gw) {
            memcpy(gw, t + 9, n);
            gw[n] = '\0';
        }
    } else if (m->header && m->header->gateway_id) { /* a Sparkplug topic: the host names it */
        snprintf(gw, sizeof gw, "%s", m->header->gateway_id);
    }
    cm_sql_stmt *st = s->st[ST_REJECT];
    cm_sql_bind_int64(st, 1, (int64_t)m->received_ms);
    cm_sql_bind_text(st, 2, t);
    cm_sql_bind_text(st, 3, gw);
    if (m->header) {
        cm_sql_bind_int64(st, 4, (int64_t)m->header->boot_epoch);
        cm_sql_bind_int64(st, 5, (int64_t)m->header->seq);
    } else {
        cm_sql_bind_null(st, 4);
        cm_sql_bind_null(st, 5);
    }
    cm_sql_bind_text(st, 6, reason);
    cm_sql_bind_blob(st, 7, m->envelope.data, m->envelope.len);
    return step(s, st);
}

cm_err archive_store_alert(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Alert *a = m->alert;
    cm_sql_stmt *st = s->st[ST_ALERT];
    cm_sql_bind_text(st, 1, a->id ? a->id : "");
    cm_sql_bind_text(st, 2, a->gateway_id ? a->gateway_id : "");
    cm_sql_bind_text(st, 3, a->site ? a->site : "");
    cm_sql_bind_text(st, 4, a->channel ? a->channel : "");
    cm_sql_bind_text(st, 5, a->rule ? a->rule : "");
    cm_sql_bind_int64(st, 6, (int64_t)a->severity);
    cm_sql_bind_double(st, 7, a->value);
    cm_sql_bind_double(st, 8, a->limit);
    cm_sql_bind_int64(st, 9, (int64_t)a->timestamp_ms);
    cm_sql_bind_text(st, 10, a->evidence ? a->evidence : "");
    cm_sql_bind_int64(st, 11, a->cleared);
    cm_sql_bind_int64(st, 12, (int64_t)m->received_ms);
    return step(s, st);
}

cm_err archive_store_seqs(archive_store *s, const char *gateway, uint64_t epoch, uint64_t after,
                          void (*fn)(void *ctx, uint64_t seq), void *ctx)
{
    cm_sql_stmt *st = s->st[ST_SEQS];
    cm_sql_bind_text(st, 1, gateway);
    cm_sql_bind_int64(st, 2, (int64_t)epoch);
    cm_sql_bind_int64(st, 3, (int64_t)after);
    int rc;
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW)
        fn(ctx, (uint64_t)cm_sql_column_int64(st, 0));
    cm_sql_reset(st);
    if (rc == CM_SQL_DONE) { /* runs recorded lost count as held: nothing will ever fill them */
        st = s->st[ST_LOST];
        cm_sql_bind_text(st, 1, gateway);
        cm_sql_bind_int64(st, 2, (int64_t)epoch);
        cm_sql_bind_int64(st, 3, (int64_t)after);
        while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
            uint64_t first = (uint64_t)cm_sql_column_int64(st, 0);
            uint64_t last = (uint64_t)cm_sql_column_int64(st, 1);
            /* a long run: its start only (the caller asks again from further on) */
            if (last - after > LOST_RUN_STEP)
                last = after + LOST_RUN_STEP;
            for (uint64_t q = first > after ? first : after + 1; q <= last; q++)
                fn(ctx, q);
        }
        cm_sql_reset(st);
    }
    if (rc == CM_SQL_FAIL)
        cm_error("error=\"%s\"", cm_sql_error(s->db));
    return rc == CM_SQL_DONE ? CM_OK : CM_ERR_DB;
}

cm_err archive_store_audit(archive_store *s, const char *source, const Suido__AuditEvent *e)
{
    cm_audit_entry en = {
        .seq = s->audit_seq + 1,
        .ts_ms = e->ts_ms,
        .source = source,
        .event = e->event ? e->event : "",
        .subject = e->subject ? e->subject : "",
        .actor = e->actor ? e->actor : "",
        .detail = e->detail ? e->detail : "",
    };
    uint8_t h[CM_AUDIT_HASH_LEN];
    if (cm_audit_hash(s->audit_hash, &en, h) != CM_OK)
        return CM_ERR_CRYPTO;
    cm_sql_stmt *st = s->st[ST_AUDIT];
    cm_sql_bind_int64(st, 1, (int64_t)en.seq);
    cm_sql_bind_int64(st, 2, (int64_t)en.ts_ms);
    cm_sql_bind_text(st, 3, en.source);
    cm_sql_bind_text(st, 4, en.event);
    cm_sql_bind_text(st, 5, en.subject);
    cm_sql_bind_text(st, 6, en.actor);
    cm_sql_bind_text(st, 7, en.detail);
    cm_sql_bind_blob(st, 8, h, CM_AUDIT_HASH_LEN);
    cm_err rc = step(s, st);
    if (rc == CM_OK) {
        s->audit_seq = en.seq;
        memcpy(s->audit_hash, h, CM_AUDIT_HASH_LEN);
    }
    return rc;
}
