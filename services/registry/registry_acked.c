/* registry_acked: see registry_acked.h. */
#include "registry_acked.h"

#include <stdlib.h>
#include <string.h>

cm_err registry_acked_init(sqlite3 *db)
{
    return sqlite3_exec(db,
                        "CREATE TABLE IF NOT EXISTS acked_points("
                        " gateway TEXT NOT NULL, boot_epoch INTEGER NOT NULL,"
                        " seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
                        " PRIMARY KEY(gateway, boot_epoch))",
                        NULL, NULL, NULL) == SQLITE_OK
               ? CM_OK
               : CM_ERR_DB;
}

static int point_ok(const Suido__Ack *p)
{
    size_t len = p && p->gateway_id ? strlen(p->gateway_id) : 0;
    return len > 0 && len <= 64 && p->seq > 0 && p->boot_epoch <= INT64_MAX &&
           p->seq <= INT64_MAX;
}

cm_err registry_acked_put(sqlite3 *db, Suido__Ack *const *pts, size_t n, uint64_t now_ms,
                          size_t *skipped)
{
    static const char UPSERT[] =
        "INSERT INTO acked_points(gateway, boot_epoch, seq, updated_ms) VALUES(?1, ?2, ?3, ?4)"
        " ON CONFLICT(gateway, boot_epoch) DO UPDATE SET seq = excluded.seq,"
        " updated_ms = excluded.updated_ms WHERE excluded.seq > acked_points.seq";
    /* the newest epochs of the gateway stay; older ones go */
    static const char TRIM[] =
        "DELETE FROM acked_points WHERE gateway = ?1 AND boot_epoch < (SELECT min(boot_epoch)"
        " FROM (SELECT boot_epoch FROM acked_points WHERE gateway = ?1"
        " ORDER BY boot_epoch DESC LIMIT ?2))";
    sqlite3_stmt *up = NULL, *trim = NULL;
    size_t bad = 0;
    cm_err rc = CM_ERR_DB;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    if (sqlite3_prepare_v2(db, UPSERT, -1, &up, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, TRIM, -1, &trim, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const Suido__Ack *p = pts[i];
        if (!point_ok(p)) {
            bad++;
            continue;
        }
        sqlite3_bind_text(up, 1, p->gateway_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 2, (sqlite3_int64)p->boot_epoch);
        sqlite3_bind_int64(up, 3, (sqlite3_int64)p->seq);
        sqlite3_bind_int64(up, 4, (sqlite3_int64)now_ms);
        int r = sqlite3_step(up);
        sqlite3_reset(up);
        if (r != SQLITE_DONE)
            goto out;
        sqlite3_bind_text(trim, 1, p->gateway_id, -1, SQLITE_STATIC);
        sqlite3_bind_int(trim, 2, ACKED_EPOCHS_KEPT);
        r = sqlite3_step(trim);
        sqlite3_reset(trim);
        if (r != SQLITE_DONE)
            goto out;
    }
    rc = CM_OK;
out:
    sqlite3_finalize(up);
    sqlite3_finalize(trim);
    if (rc == CM_OK && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = CM_ERR_DB;
    if (rc != CM_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (skipped)
        *skipped = bad;
    return rc;
}

void registry_acked_free(Suido__Ack **pts, size_t n)
{
    for (size_t i = 0; pts && i < n; i++) {
        if (pts[i])
            free(pts[i]->gateway_id);
        free(pts[i]);
    }
    free(pts);
}

cm_err registry_acked_list(sqlite3 *db, Suido__Ack ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT gateway, boot_epoch, seq FROM acked_points"
                               " ORDER BY gateway, boot_epoch", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    Suido__Ack **v = NULL;
    size_t n = 0, cap = 0;
    cm_err rc = CM_OK;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            Suido__Ack **nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc = CM_ERR_NOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        Suido__Ack *p = malloc(sizeof *p);
        char *gw = p ? strdup((const char *)sqlite3_column_text(st, 0)) : NULL;
        if (!gw) {
            free(p);
            rc = CM_ERR_NOMEM;
            break;
        }
        suido__ack__init(p);
        p->gateway_id = gw;
        p->boot_epoch = (uint64_t)sqlite3_column_int64(st, 1);
        p->seq = (uint64_t)sqlite3_column_int64(st, 2);
        v[n++] = p;
    }
    if (rc == CM_OK && r != SQLITE_DONE)
        rc = CM_ERR_DB;
    sqlite3_finalize(st);
    if (rc != CM_OK) {
        registry_acked_free(v, n);
        return rc;
    }
    *out = v;
    *n_out = n;
    return CM_OK;
}
