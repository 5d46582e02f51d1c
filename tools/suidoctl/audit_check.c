/* audit_check: see audit_check.h. */
#include "audit_check.h"

#include <stdio.h>
#include <string.h>

cm_err audit_check_db(cm_sql *db, audit_check_result *out)
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

int ctl_sqlite_ro_uri(const char *path, int immutable, char *out, size_t len)
{
    size_t o = 0;
    int n = snprintf(out, len, "file:");
    if (n < 0 || (size_t)n >= len)
        return 0;
    o = (size_t)n;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (o + 4 >= len)
            return 0;
        if (*p == '%' || *p == '?' || *p == '#' || *p <= 0x20 || *p >= 0x7f)
            o += (size_t)snprintf(out + o, len - o, "%%%02X", *p);
        else
            out[o++] = (char)*p;
    }
    out[o] = '\0';
    n = snprintf(out + o, len - o, "?mode=ro%s", immutable ? "&immutable=1" : "");
    return n > 0 && (size_t)n < len - o;
}

int ctl_archive_open(const cm_conf *conf, cm_sql **out, char *label, size_t len)
{
    const char *pg = cm_conf_get(conf, "archive", "postgresql");
    const char *path = cm_conf_get(conf, "archive", "database");
    char why[600];
    *out = NULL;
    if (pg && *pg && path && *path) {
        fprintf(stderr, "suidoctl: %s: [archive] names both database and postgresql: give one\n",
                cm_conf_name(conf));
        return 2;
    }
    if (pg && *pg) {
        static char conninfo[8192];
        snprintf(label, len, "%s", pg);
        cm_err rc = cm_sql_read_conninfo(pg, conninfo, sizeof conninfo, why, sizeof why);
        if (rc != CM_OK) {
            fprintf(stderr, "suidoctl: %s: [archive] postgresql %s\n", cm_conf_name(conf), why);
            return 2;
        }
        rc = cm_sql_open_as(CM_SQL_POSTGRESQL, conninfo, 1, out, why, sizeof why);
        explicit_bzero(conninfo, sizeof conninfo);
        if (rc != CM_OK) {
            fprintf(stderr, "suidoctl: PostgreSQL archive (%s) unreachable or refused: %s\n", pg,
                    why);
            return 3;
        }
        return 0;
    }
    if (!path || !*path) {
        fprintf(stderr, "suidoctl: %s: [archive] database (or postgresql) is not set\n",
                cm_conf_name(conf));
        return 2;
    }
    snprintf(label, len, "%s", path);
    char uri[3 * 4096 + 64];
    snprintf(why, sizeof why, "%s", "path too long");
    if (!ctl_sqlite_ro_uri(path, 0, uri, sizeof uri) ||
        cm_sql_open_as(CM_SQL_SQLITE, uri, 1, out, why, sizeof why) != CM_OK) {
        fprintf(stderr, "suidoctl: %s: cannot open: %s\n", path, why);
        return 3;
    }
    return 0;
}
