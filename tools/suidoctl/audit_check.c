/* audit_check: see audit_check.h. */
#include "audit_check.h"

#include <stdio.h>
#include <string.h>

cm_err audit_check_db(sqlite3 *db, audit_check_result *out)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, ts_ms, source, event, subject, actor, detail, hash "
                           "FROM audit ORDER BY rowid",
                           -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    uint8_t prev[CM_AUDIT_HASH_LEN] = {0}, want[CM_AUDIT_HASH_LEN];
    uint64_t n = 0, bad_seq = 0;
    const char *why = NULL;
    int rc = SQLITE_DONE;
    while (!why && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        cm_audit_entry e = {
            .seq = (uint64_t)sqlite3_column_int64(st, 0),
            .ts_ms = (uint64_t)sqlite3_column_int64(st, 1),
            .source = (const char *)sqlite3_column_text(st, 2),
            .event = (const char *)sqlite3_column_text(st, 3),
            .subject = (const char *)sqlite3_column_text(st, 4),
            .actor = (const char *)sqlite3_column_text(st, 5),
            .detail = (const char *)sqlite3_column_text(st, 6),
        };
        n++;
        bad_seq = e.seq;
        if (e.seq != n)
            why = "entry missing or out of order";
        else if (cm_audit_hash(prev, &e, want) != CM_OK)
            why = "hash computation failed";
        else if (sqlite3_column_bytes(st, 7) != CM_AUDIT_HASH_LEN ||
                 memcmp(sqlite3_column_blob(st, 7), want, CM_AUDIT_HASH_LEN) != 0)
            why = "entry altered (hash does not match its content and predecessor)";
        else
            memcpy(prev, want, CM_AUDIT_HASH_LEN);
    }
    sqlite3_finalize(st);
    out->rows = n;
    out->entries = why ? n - 1 : n;
    out->bad_seq = why ? bad_seq : 0;
    out->why = why;
    out->read_error = !why && rc != SQLITE_DONE;
    memcpy(out->head, prev, CM_AUDIT_HASH_LEN);
    for (int i = 0; i < CM_AUDIT_HASH_LEN; i++)
        snprintf(out->head_hex + 2 * i, 3, "%02x", prev[i]);
    return CM_OK;
}
