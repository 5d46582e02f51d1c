/* cm_audit_check: see cm_audit_check.h. */
#include "cm_audit_check.h"

#include <stdio.h>
#include <string.h>

cm_err cm_audit_check_db(cm_sql *db, cm_audit_check_result *out)
{
    memset(out, 0, sizeof *out);
    cm_sql_stmt *st = NULL;
    /* seq is the table's integer primary key (SQLite: the rowid itself, so this is the storage
     * order): an entry moved to another number shows as missing or out of order */
    if (cm_sql_prepare(db,
                       "SELECT seq, ts_ms, source, event, subject, actor, detail, hash "
                       "FROM audit ORDER BY seq",
                       &st) != CM_OK)
        return CM_ERR_DB;
    uint8_t prev[CM_AUDIT_HASH_LEN] = {0}, want[CM_AUDIT_HASH_LEN];
    uint64_t n = 0, bad_seq = 0;
    const char *why = NULL;
    int rc = CM_SQL_DONE;
    while (!why && (rc = cm_sql_step(st)) == CM_SQL_ROW) {
        cm_audit_entry e = {
            .seq = (uint64_t)cm_sql_column_int64(st, 0),
            .ts_ms = (uint64_t)cm_sql_column_int64(st, 1),
            .source = cm_sql_column_text(st, 2),
            .event = cm_sql_column_text(st, 3),
            .subject = cm_sql_column_text(st, 4),
            .actor = cm_sql_column_text(st, 5),
            .detail = cm_sql_column_text(st, 6),
        };
        size_t hlen = 0;
        const void *hash = cm_sql_column_blob(st, 7, &hlen);
        n++;
        bad_seq = e.seq;
        if (e.seq != n)
            why = "entry missing or out of order";
        else if (cm_audit_hash(prev, &e, want) != CM_OK)
            why = "hash computation failed";
        else if (!hash || hlen != CM_AUDIT_HASH_LEN || memcmp(hash, want, CM_AUDIT_HASH_LEN) != 0)
            why = "entry altered (hash does not match its content and predecessor)";
        else
            memcpy(prev, want, CM_AUDIT_HASH_LEN);
    }
    cm_sql_finalize(&st);
    out->rows = n;
    out->entries = why ? n - 1 : n;
    out->bad_seq = why ? bad_seq : 0;
    out->why = why;
    out->read_error = !why && rc != CM_SQL_DONE;
    memcpy(out->head, prev, CM_AUDIT_HASH_LEN);
    for (int i = 0; i < CM_AUDIT_HASH_LEN; i++)
        snprintf(out->head_hex + 2 * i, 3, "%02x", prev[i]);
    return CM_OK;
}
