/* archive_cases: see archive_cases.h. */
#include "archive_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COLS                                                                                       \
    "case_id, alert_id, gateway, site, channel, rule, severity, state, active, raised_ms,"         \
    " occurrences, evidence, acked_by, acked_ms, closed_by, closed_ms, cause, action, value,"      \
    " limit_value"

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS alert_cases("
    " case_id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, gateway TEXT NOT NULL,"
    " site TEXT NOT NULL, channel TEXT NOT NULL, rule TEXT NOT NULL, severity INTEGER NOT NULL,"
    " state TEXT NOT NULL, active INTEGER NOT NULL, raised_ms INTEGER NOT NULL,"
    " occurrences INTEGER NOT NULL, evidence TEXT NOT NULL, acked_by TEXT NOT NULL DEFAULT '',"
    " acked_ms INTEGER NOT NULL DEFAULT 0, closed_by TEXT NOT NULL DEFAULT '',"
    " closed_ms INTEGER NOT NULL DEFAULT 0, cause TEXT NOT NULL DEFAULT '',"
    " action TEXT NOT NULL DEFAULT '', value REAL, limit_value REAL);"
    "CREATE INDEX IF NOT EXISTS alert_cases_by_alert ON alert_cases(alert_id, state);";

cm_err archive_cases_init(sqlite3 *db)
{
    return sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK ? CM_OK : CM_ERR_DB;
}

/* Runs sql with the bound texts/ints; returns SQLITE_DONE-ness as cm_err. */
static cm_err exec1(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    return sqlite3_prepare_v2(db, sql, -1, out, NULL) == SQLITE_OK ? CM_OK : CM_ERR_DB;
}

static const char *text(const char *s) { return s ? s : ""; }

cm_err archive_cases_record(sqlite3 *db, const Suido__Alert *a, uint64_t now_ms)
{
    (void)now_ms;
    sqlite3_stmt *st = NULL;
    cm_err rc;
    if (a->cleared) {
        rc = exec1(db, "UPDATE alert_cases SET active=0 WHERE alert_id=? AND state!='closed'", &st);
        if (rc == CM_OK) {
            sqlite3_bind_text(st, 1, text(a->id), -1, SQLITE_STATIC);
            rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
        }
        sqlite3_finalize(st);
        return rc;
    }
    rc = exec1(db,
               "UPDATE alert_cases SET active=1, occurrences=occurrences+1, evidence=?,"
               " value=?, limit_value=?, severity=max(severity, ?), rule=?"
               " WHERE alert_id=? AND state!='closed'",
               &st);
    if (rc != CM_OK)
        return rc;
    sqlite3_bind_text(st, 1, text(a->evidence), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, a->value);
    sqlite3_bind_double(st, 3, a->limit);
    sqlite3_bind_int(st, 4, (int)a->severity);
    sqlite3_bind_text(st, 5, text(a->rule), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, text(a->id), -1, SQLITE_STATIC);
    int ok = sqlite3_step(st) == SQLITE_DONE;
    int changed = sqlite3_changes(db);
    sqlite3_finalize(st);
    if (!ok)
        return CM_ERR_DB;
    if (changed > 0)
        return CM_OK;
    if (exec1(db,
              "INSERT INTO alert_cases(alert_id, gateway, site, channel, rule, severity, state,"
              " active, raised_ms, occurrences, evidence, value, limit_value)"
              " VALUES(?,?,?,?,?,?,'raised',1,?,1,?,?,?)",
              &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, text(a->id), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, text(a->gateway_id), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, text(a->site), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, text(a->channel), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, text(a->rule), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, (int)a->severity);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)a->timestamp_ms);
    sqlite3_bind_text(st, 8, text(a->evidence), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 9, a->value);
    sqlite3_bind_double(st, 10, a->limit);
    rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
    sqlite3_finalize(st);
    return rc;
}

/* Calls fn for every row of a prepared SELECT COLS ... statement; finalizes it. */
static cm_err each(sqlite3_stmt *st, archive_case_fn fn, void *ctx, int *rows)
{
    int rc;
    *rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        Suido__AlertCase c = SUIDO__ALERT_CASE__INIT;
        c.case_id = (uint64_t)sqlite3_column_int64(st, 0);
        c.alert_id = (char *)sqlite3_column_text(st, 1);
        c.gateway_id = (char *)sqlite3_column_text(st, 2);
        c.site = (char *)sqlite3_column_text(st, 3);
        c.channel = (char *)sqlite3_column_text(st, 4);
        c.rule = (char *)sqlite3_column_text(st, 5);
        c.severity = sqlite3_column_int(st, 6);
        c.state = (char *)sqlite3_column_text(st, 7);
        c.active = sqlite3_column_int(st, 8);
        c.raised_ms = (uint64_t)sqlite3_column_int64(st, 9);
        c.occurrences = (uint32_t)sqlite3_column_int(st, 10);
        c.evidence = (char *)sqlite3_column_text(st, 11);
        c.acked_by = (char *)sqlite3_column_text(st, 12);
        c.acked_ms = (uint64_t)sqlite3_column_int64(st, 13);
        c.closed_by = (char *)sqlite3_column_text(st, 14);
        c.closed_ms = (uint64_t)sqlite3_column_int64(st, 15);
        c.cause = (char *)sqlite3_column_text(st, 16);
        c.action = (char *)sqlite3_column_text(st, 17);
        c.value = sqlite3_column_double(st, 18);
        c.limit = sqlite3_column_double(st, 19);
        fn(ctx, &c);
        (*rows)++;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err archive_cases_list(sqlite3 *db, int all, unsigned limit, archive_case_fn fn, void *ctx)
{
    sqlite3_stmt *st;
    if (exec1(db,
              all ? "SELECT " COLS " FROM alert_cases ORDER BY case_id DESC LIMIT ?"
                  : "SELECT " COLS " FROM alert_cases WHERE state!='closed'"
                    " ORDER BY case_id DESC LIMIT ?",
              &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_int(st, 1, (int)(limit ? limit : 100));
    int rows;
    return each(st, fn, ctx, &rows);
}

cm_err archive_cases_get(sqlite3 *db, uint64_t case_id, archive_case_fn fn, void *ctx)
{
    sqlite3_stmt *st;
    if (exec1(db, "SELECT " COLS " FROM alert_cases WHERE case_id=?", &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)case_id);
    int rows;
    cm_err rc = each(st, fn, ctx, &rows);
    return rc == CM_OK && rows == 0 ? CM_ERR_UNKNOWN : rc;
}

cm_err archive_cases_past(sqlite3 *db, const char *alert_id, uint64_t except_case,
                          unsigned limit, archive_case_fn fn, void *ctx)
{
    sqlite3_stmt *st;
    if (exec1(db,
              "SELECT " COLS " FROM alert_cases WHERE alert_id=? AND state='closed'"
              " AND case_id!=? ORDER BY case_id DESC LIMIT ?",
              &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, alert_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)except_case);
    sqlite3_bind_int(st, 3, (int)(limit ? limit : 5));
    int rows;
    return each(st, fn, ctx, &rows);
}

/* state and active of a case; CM_ERR_UNKNOWN if none. */
static cm_err state_of(sqlite3 *db, uint64_t case_id, char state[16], int *active)
{
    sqlite3_stmt *st;
    if (exec1(db, "SELECT state, active FROM alert_cases WHERE case_id=?", &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)case_id);
    cm_err rc = CM_ERR_UNKNOWN;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(state, 16, "%s", t ? (const char *)t : "");
        *active = sqlite3_column_int(st, 1);
        rc = CM_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

cm_err archive_cases_ack(sqlite3 *db, uint64_t case_id, const char *who, uint64_t now_ms)
{
    char state[16];
    int active;
    cm_err rc = state_of(db, case_id, state, &active);
    if (rc != CM_OK)
        return rc;
    if (strcmp(state, "closed") == 0)
        return CM_ERR_INVAL;
    sqlite3_stmt *st;
    if (exec1(db,
              "UPDATE alert_cases SET state='acknowledged', acked_by=?, acked_ms=?"
              " WHERE case_id=?",
              &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, who, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)now_ms);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)case_id);
    rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
    sqlite3_finalize(st);
    return rc;
}

static int note_ok(const char *s) { return s && *s && strlen(s) <= 500; }

cm_err archive_cases_close(sqlite3 *db, uint64_t case_id, const char *who, const char *cause,
                           const char *action, uint64_t now_ms)
{
    char state[16];
    int active;
    cm_err rc = state_of(db, case_id, state, &active);
    if (rc != CM_OK)
        return rc;
    if (strcmp(state, "closed") == 0 || !note_ok(cause) || !note_ok(action))
        return CM_ERR_INVAL;
    if (active)
        return CM_ERR_DENIED;
    sqlite3_stmt *st;
    if (exec1(db,
              "UPDATE alert_cases SET state='closed', closed_by=?, closed_ms=?, cause=?, action=?,"
              " acked_by=CASE WHEN acked_by='' THEN ? ELSE acked_by END,"
              " acked_ms=CASE WHEN acked_ms=0 THEN ? ELSE acked_ms END WHERE case_id=?",
              &st) != CM_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, who, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)now_ms);
    sqlite3_bind_text(st, 3, cause, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, action, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, who, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)now_ms);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)case_id);
    rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
    sqlite3_finalize(st);
    return rc;
}
