/* registry_checkpoint: see registry_checkpoint.h. */
#include "registry_checkpoint.h"

#include <stdlib.h>
#include <string.h>

#include "cm_audit.h"
#include "cm_audit_checkpoint.h"

cm_err registry_checkpoint_init(sqlite3 *db)
{
    return sqlite3_exec(db,
                        "CREATE TABLE IF NOT EXISTS audit_checkpoints("
                        " seq INTEGER PRIMARY KEY, head BLOB NOT NULL, ts_ms INTEGER NOT NULL,"
                        " signature BLOB NOT NULL)",
                        NULL, NULL, NULL) == SQLITE_OK
               ? CM_OK
               : CM_ERR_DB;
}

cm_err registry_checkpoint_latest(sqlite3 *db, Suido__AuditCheckpoint *out)
{
    suido__audit_checkpoint__init(out);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT seq, head, ts_ms, signature FROM audit_checkpoints"
                               " ORDER BY seq DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    int r = sqlite3_step(st);
    cm_err rc = r == SQLITE_DONE ? CM_ERR_UNKNOWN : r == SQLITE_ROW ? CM_OK : CM_ERR_DB;
    if (rc == CM_OK) {
        size_t hl = (size_t)sqlite3_column_bytes(st, 1), sl = (size_t)sqlite3_column_bytes(st, 3);
        out->seq = (uint64_t)sqlite3_column_int64(st, 0);
        out->ts_ms = (uint64_t)sqlite3_column_int64(st, 2);
        out->head_sha256.data = malloc(hl ? hl : 1);
        out->signature.data = malloc(sl ? sl : 1);
        if (!out->head_sha256.data || !out->signature.data) {
            rc = CM_ERR_NOMEM;
        } else {
            memcpy(out->head_sha256.data, sqlite3_column_blob(st, 1), hl);
            memcpy(out->signature.data, sqlite3_column_blob(st, 3), sl);
            out->head_sha256.len = hl;
            out->signature.len = sl;
        }
    }
    sqlite3_finalize(st);
    if (rc != CM_OK)
        registry_checkpoint_clear(out);
    return rc;
}

void registry_checkpoint_clear(Suido__AuditCheckpoint *cp)
{
    free(cp->head_sha256.data);
    free(cp->signature.data);
    suido__audit_checkpoint__init(cp);
}

cm_err registry_checkpoint_put(sqlite3 *db, cm_signer *signer, const Suido__AuditCheckpoint *cp,
                               uint64_t now_ms, int *stored)
{
    *stored = 0;
    if (!cp || cp->seq == 0 || cp->seq > INT64_MAX || cp->head_sha256.len != CM_AUDIT_HASH_LEN)
        return CM_ERR_INVAL;
    if (!signer)
        return CM_ERR_CONFIG;
    uint64_t seq = cp->seq;
    const uint8_t *head = cp->head_sha256.data;
    size_t head_len = cp->head_sha256.len;
    Suido__AuditCheckpoint last;
    cm_err rc = registry_checkpoint_latest(db, &last);
    if (rc == CM_OK) {
        int same = last.seq == seq && memcmp(last.head_sha256.data, head, head_len) == 0;
        int back = seq <= last.seq && !same;
        int knows = cp->prev_seq == last.seq;
        int holds = knows && cp->prev_sha256.len == last.head_sha256.len &&
                    memcmp(cp->prev_sha256.data, last.head_sha256.data, last.head_sha256.len) == 0;
        registry_checkpoint_clear(&last);
        if (same)
            return CM_OK;
        if (back)
            return CM_ERR_REPLAY;
        if (!knows)
            return CM_ERR_UNKNOWN;
        if (!holds)
            return CM_ERR_REPLAY;
    } else if (rc != CM_ERR_UNKNOWN) {
        return rc;
    }
    uint8_t sig[CM_SIG_MAX];
    size_t siglen = 0;
    if (cm_audit_checkpoint_sign(signer, seq, head, now_ms, sig, &siglen) != CM_OK)
        return CM_ERR_CRYPTO;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO audit_checkpoints(seq, head, ts_ms, signature)"
                               " VALUES(?,?,?,?)", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_blob(st, 2, head, (int)head_len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)now_ms);
    sqlite3_bind_blob(st, 4, sig, (int)siglen, SQLITE_TRANSIENT);
    rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
    sqlite3_finalize(st);
    if (rc != CM_OK)
        return rc;
    *stored = 1;
    /* the history is evidence, but bounded: the latest 1000 heads */
    sqlite3_exec(db, "DELETE FROM audit_checkpoints WHERE seq < (SELECT min(seq) FROM (SELECT seq"
                     " FROM audit_checkpoints ORDER BY seq DESC LIMIT 1000))",
                 NULL, NULL, NULL);
    return CM_OK;
}
