/* archive_store: SQLite persistence of batches, events, refusals and alerts. */
#include "archive_store.h"

#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "archive_cases.h"
#include "cm_audit.h"
#include "cm_log.h"
#include "cm_time.h"

#define SCHEMA_VERSION 3 /* 2: audit log; 3: command log */

enum { ST_BATCH, ST_EVENT, ST_REJECT, ST_ALERT, ST_SEQS, ST_AUDIT, ST_HEAD, ST_COMMAND, ST__COUNT };

struct archive_store {
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    uint64_t audit_seq;                    /* chain head: number and hash of the last entry */
    uint8_t audit_hash[CM_AUDIT_HASH_LEN];
};

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
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
    "CREATE INDEX IF NOT EXISTS command_log_by_id ON command_log(command_id, id);";

static const char *const SQL[ST__COUNT] = {
    [ST_BATCH] = "INSERT OR IGNORE INTO batches(gateway,boot_epoch,seq,kind,device_ms,"
                 "received_ms,site,readings,unknown_channels,key_id,encrypted,status,reason,"
                 "envelope) VALUES(?,?,?,?,?,?,?,?,?,?,?,'verified',?,?)",
    [ST_EVENT] = "INSERT INTO events(gateway,kind,boot_epoch,key_seq,device_ms,received_ms,"
                 "status,reason,envelope) VALUES(?,?,?,?,?,?,?,?,?)",
    [ST_REJECT] = "INSERT INTO rejects(received_ms,topic,gateway,boot_epoch,seq,reason,envelope)"
                  " VALUES(?,?,?,?,?,?,?)",
    [ST_ALERT] = "INSERT INTO alerts(alert_id,gateway,site,channel,rule,severity,value,"
                 "limit_value,ts_ms,evidence,cleared,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
    [ST_SEQS] = "SELECT seq FROM batches WHERE gateway=? AND boot_epoch=? AND seq>? ORDER BY seq",
    [ST_AUDIT] = "INSERT INTO audit(seq,ts_ms,source,event,subject,actor,detail,hash)"
                 " VALUES(?,?,?,?,?,?,?,?)",
    [ST_HEAD] = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
    [ST_COMMAND] = "INSERT INTO command_log(command_id,gateway,actuator,value,unit,requested_by,"
                   "issued_ms,expires_ms,decision,detail,ts_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
};

/* Reads the audit chain's head from the database. */
static cm_err load_head(archive_store *s)
{
    sqlite3_stmt *st = s->st[ST_HEAD];
    s->audit_seq = 0;
    memset(s->audit_hash, 0, sizeof s->audit_hash);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 1) == CM_AUDIT_HASH_LEN) {
        s->audit_seq = (uint64_t)sqlite3_column_int64(st, 0);
        memcpy(s->audit_hash, sqlite3_column_blob(st, 1), CM_AUDIT_HASH_LEN);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err archive_store_open(const char *path, archive_store **out)
{
    *out = NULL;
    archive_store *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ERR_NOMEM;
    int version = -1;
    char *errmsg = NULL;
    sqlite3_stmt *q = NULL;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &q, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_step(q) == SQLITE_ROW)
        version = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    /* versions 1 and 2 lack only tables (audit, command_log) that the schema below adds */
    if (version < 0 || version > SCHEMA_VERSION) {
        cm_error("path=%s schema_version=%d expected=%d error=\"wrong database version\"", path,
                 version, SCHEMA_VERSION);
        goto fail_quiet;
    }
    if (sqlite3_exec(s->db, SCHEMA, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA user_version=3", NULL, NULL, &errmsg) != SQLITE_OK) {
        cm_error("path=%s error=\"%s\"", path, errmsg ? errmsg : "schema");
        sqlite3_free(errmsg);
        goto fail_quiet;
    }
    for (int i = 0; i < ST__COUNT; i++)
        if (sqlite3_prepare_v2(s->db, SQL[i], -1, &s->st[i], NULL) != SQLITE_OK)
            goto fail;
    if (load_head(s) != CM_OK || archive_cases_init(s->db) != CM_OK)
        goto fail;
    *out = s;
    return CM_OK;
fail:
    cm_error("path=%s error=\"%s\"", path, s->db ? sqlite3_errmsg(s->db) : "open");
fail_quiet:
    archive_store_close(&s);
    return CM_ERR_DB;
}

void archive_store_close(archive_store **sp)
{
    if (!sp || !*sp)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize((*sp)->st[i]);
    sqlite3_close((*sp)->db);
    free(*sp);
    *sp = NULL;
}

static cm_err exec(archive_store *s, const char *sql)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        cm_error("sql=\"%s\" error=\"%s\"", sql, sqlite3_errmsg(s->db));
        return CM_ERR_DB;
    }
    return CM_OK;
}

cm_err archive_store_begin(archive_store *s) { return exec(s, "BEGIN IMMEDIATE"); }
cm_err archive_store_commit(archive_store *s) { return exec(s, "COMMIT"); }
void archive_store_rollback(archive_store *s)
{
    exec(s, "ROLLBACK");
    load_head(s);
}

static const char *kind_name(const char *topic)
{
    const char *slash = topic ? strrchr(topic, '/') : NULL;
    return slash ? slash + 1 : "unknown";
}

static cm_err step(archive_store *s, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE) {
        cm_error("error=\"%s\"", sqlite3_errmsg(s->db));
        return CM_ERR_DB;
    }
    return CM_OK;
}

cm_err archive_store_batch(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Header *h = m->header;
    sqlite3_stmt *st = s->st[ST_BATCH];
    sqlite3_bind_text(st, 1, h->gateway_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)h->boot_epoch);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)h->seq);
    sqlite3_bind_text(st, 4, kind_name(m->topic), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)h->timestamp_ms);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)m->received_ms);
    sqlite3_bind_text(st, 7, m->site ? m->site : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 8, (int)h->reading_count);
    sqlite3_bind_int(st, 9, (int)m->unknown_channels);
    sqlite3_bind_text(st, 10, h->key_id ? h->key_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 11, h->cipher != SUIDO__CIPHER__CIPHER_NONE);
    sqlite3_bind_text(st, 12, m->reason ? m->reason : "ok", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 13, m->envelope.data, (int)m->envelope.len, SQLITE_STATIC);
    cm_err rc = step(s, st);
    if (rc == CM_OK && sqlite3_changes(s->db) == 0)
        rc = CM_ERR_DUPLICATE;
    return rc;
}

sqlite3 *archive_store_db(archive_store *s) { return s->db; }

cm_err archive_store_command(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Command *c = m->command;
    sqlite3_stmt *st = s->st[ST_COMMAND];
    sqlite3_bind_text(st, 1, c->command_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->gateway_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->channel, -1, SQLITE_STATIC);
    if (isfinite(c->value))
        sqlite3_bind_double(st, 4, c->value);
    sqlite3_bind_text(st, 5, c->unit, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, c->requested_by, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)c->issued_ms);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)c->expires_ms);
    sqlite3_bind_text(st, 9, m->decision, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, m->reason ? m->reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)(m->received_ms ? m->received_ms : cm_now_ms()));
    return step(s, st);
}

cm_err archive_store_event(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Header *h = m->header;
    sqlite3_stmt *st = s->st[ST_EVENT];
    sqlite3_bind_text(st, 1, h->gateway_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, kind_name(m->topic), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)h->boot_epoch);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)h->key_seq);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)h->timestamp_ms);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)m->received_ms);
    sqlite3_bind_text(st, 7, m->status == SUIDO__VERIFY_STATUS__VERIFY_OK ? "verified" : "refused",
                      -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, m->reason ? m->reason : "", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 9, m->envelope.data, (int)m->envelope.len, SQLITE_STATIC);
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
    }
    sqlite3_stmt *st = s->st[ST_REJECT];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)m->received_ms);
    sqlite3_bind_text(st, 2, t, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, gw, -1, SQLITE_TRANSIENT);
    if (m->header) {
        sqlite3_bind_int64(st, 4, (sqlite3_int64)m->header->boot_epoch);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)m->header->seq);
    }
    sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, m->envelope.data, (int)m->envelope.len, SQLITE_STATIC);
    return step(s, st);
}

cm_err archive_store_alert(archive_store *s, const Suido__StageMessage *m)
{
    const Suido__Alert *a = m->alert;
    sqlite3_stmt *st = s->st[ST_ALERT];
    sqlite3_bind_text(st, 1, a->id ? a->id : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->gateway_id ? a->gateway_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, a->site ? a->site : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, a->channel ? a->channel : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->rule ? a->rule : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, (int)a->severity);
    sqlite3_bind_double(st, 7, a->value);
    sqlite3_bind_double(st, 8, a->limit);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)a->timestamp_ms);
    sqlite3_bind_text(st, 10, a->evidence ? a->evidence : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 11, a->cleared);
    sqlite3_bind_int64(st, 12, (sqlite3_int64)m->received_ms);
    return step(s, st);
}

cm_err archive_store_seqs(archive_store *s, const char *gateway, uint64_t epoch, uint64_t after,
                          void (*fn)(void *ctx, uint64_t seq), void *ctx)
{
    sqlite3_stmt *st = s->st[ST_SEQS];
    sqlite3_bind_text(st, 1, gateway, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)epoch);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)after);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(ctx, (uint64_t)sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? CM_OK : CM_ERR_DB;
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
    sqlite3_stmt *st = s->st[ST_AUDIT];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)en.seq);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)en.ts_ms);
    sqlite3_bind_text(st, 3, en.source, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, en.event, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, en.subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, en.actor, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, en.detail, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, h, CM_AUDIT_HASH_LEN, SQLITE_STATIC);
    cm_err rc = step(s, st);
    if (rc == CM_OK) {
        s->audit_seq = en.seq;
        memcpy(s->audit_hash, h, CM_AUDIT_HASH_LEN);
    }
    return rc;
}
