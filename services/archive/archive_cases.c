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

cm_err archive_cases_init(cm_sql *db)
{
    return cm_sql_exec_ddl(db, SCHEMA) == CM_OK ? CM_OK : CM_ERR_DB;
}

static cm_err prepare(cm_sql *db, const char *sql, cm_sql_stmt **out)
{
    return cm_sql_prepare(db, sql, out) == CM_OK ? CM_OK : CM_ERR_DB;
}

/* Runs a statement that returns no rows and finalizes it; *changed (may be NULL) gets the rows
 * it changed. */
static cm_err run(cm_sql_stmt **st, int64_t *changed)
{
    cm_err rc = cm_sql_step(*st) == CM_SQL_DONE ? CM_OK : CM_ERR_DB;
    if (changed)
        *changed = cm_sql_changes(*st);
    cm_sql_finalize(st);
    return rc;
}

static const char *text(const char *s) { return s ? s : ""; }

cm_err archive_cases_record(cm_sql *db, const Suido__Alert *a, uint64_t now_ms)
{
    (void)now_ms;
    cm_sql_stmt *st = NULL;
    if (a->cleared) {
        if (prepare(db, "UPDATE alert_cases SET active=0 WHERE alert_id=? AND state!='closed'",
                    &st) != CM_OK)
            return CM_ERR_DB;
        cm_sql_bind_text(st, 1, text(a->id));
        return run(&st, NULL);
    }
    if (prepare(db,
                "UPDATE alert_cases SET active=1, occurrences=occurrences+1, evidence=?,"
                " value=?, limit_value=?,"
                " severity=CASE WHEN severity > ? THEN severity ELSE ? END, rule=?"
                " WHERE alert_id=? AND state!='closed'",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, text(a->evidence));
    cm_sql_bind_double(st, 2, a->value);
    cm_sql_bind_double(st, 3, a->limit);
    cm_sql_bind_int64(st, 4, (int64_t)a->severity);
    cm_sql_bind_int64(st, 5, (int64_t)a->severity);
    cm_sql_bind_text(st, 6, text(a->rule));
    cm_sql_bind_text(st, 7, text(a->id));
    int64_t changed = 0;
    if (run(&st, &changed) != CM_OK)
        return CM_ERR_DB;
    if (changed > 0)
        return CM_OK;
    if (prepare(db,
                "INSERT INTO alert_cases(alert_id, gateway, site, channel, rule, severity, state,"
                " active, raised_ms, occurrences, evidence, value, limit_value)"
                " VALUES(?,?,?,?,?,?,'raised',1,?,1,?,?,?)",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, text(a->id));
    cm_sql_bind_text(st, 2, text(a->gateway_id));
    cm_sql_bind_text(st, 3, text(a->site));
    cm_sql_bind_text(st, 4, text(a->channel));
    cm_sql_bind_text(st, 5, text(a->rule));
    cm_sql_bind_int64(st, 6, (int64_t)a->severity);
    cm_sql_bind_int64(st, 7, (int64_t)a->timestamp_ms);
    cm_sql_bind_text(st, 8, text(a->evidence));
    cm_sql_bind_double(st, 9, a->value);
    cm_sql_bind_double(st, 10, a->limit);
    return run(&st, NULL);
}

/* Calls fn for every row of a prepared SELECT COLS ... statement; finalizes it. */
static cm_err each(cm_sql_stmt *st, archive_case_fn fn, void *ctx, int *rows)
{
    int rc;
    *rows = 0;
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
        Suido__AlertCase c = SUIDO__ALERT_CASE__INIT;
        c.case_id = (uint64_t)cm_sql_column_int64(st, 0);
        c.alert_id = (char *)cm_sql_column_text(st, 1);
        c.gateway_id = (char *)cm_sql_column_text(st, 2);
        c.site = (char *)cm_sql_column_text(st, 3);
        c.channel = (char *)cm_sql_column_text(st, 4);
        c.rule = (char *)cm_sql_column_text(st, 5);
        c.severity = (Suido__Severity)cm_sql_column_int64(st, 6);
        c.state = (char *)cm_sql_column_text(st, 7);
        c.active = (int)cm_sql_column_int64(st, 8);
        c.raised_ms = (uint64_t)cm_sql_column_int64(st, 9);
        c.occurrences = (uint32_t)cm_sql_column_int64(st, 10);
        c.evidence = (char *)cm_sql_column_text(st, 11);
        c.acked_by = (char *)cm_sql_column_text(st, 12);
        c.acked_ms = (uint64_t)cm_sql_column_int64(st, 13);
        c.closed_by = (char *)cm_sql_column_text(st, 14);
        c.closed_ms = (uint64_t)cm_sql_column_int64(st, 15);
        c.cause = (char *)cm_sql_column_text(st, 16);
        c.action = (char *)cm_sql_column_text(st, 17);
        c.value = cm_sql_column_double(st, 18);
        c.limit = cm_sql_column_double(st, 19);
        fn(ctx, &c);
        (*rows)++;
    }
    cm_sql_finalize(&st);
    return rc == CM_SQL_DONE ? CM_OK : CM_ERR_DB;
}

cm_err archive_cases_list(cm_sql *db, int all, unsigned limit, archive_case_fn fn, void *ctx)
{
    cm_sql_stmt *st;
    if (prepare(db,
                all ? "SELECT " COLS " FROM alert_cases ORDER BY case_id DESC LIMIT ?"
                    : "SELECT " COLS " FROM alert_cases WHERE state!='closed'"
                      " ORDER BY case_id DESC LIMIT ?",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_int64(st, 1, (int64_t)(limit ? limit : 100));
    int rows;
    return each(st, fn, ctx, &rows);
}

cm_err archive_cases_get(cm_sql *db, uint64_t case_id, archive_case_fn fn, void *ctx)
{
    cm_sql_stmt *st;
    if (prepare(db, "SELECT " COLS " FROM alert_cases WHERE case_id=?", &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_int64(st, 1, (int64_t)case_id);
    int rows;
    cm_err rc = each(st, fn, ctx, &rows);
    return rc == CM_OK && rows == 0 ? CM_ERR_UNKNOWN : rc;
}

cm_err archive_cases_past(cm_sql *db, const char *alert_id, uint64_t except_case,
                          unsigned limit, archive_case_fn fn, void *ctx)
{
    cm_sql_stmt *st;
    if (prepare(db,
                "SELECT " COLS " FROM alert_cases WHERE alert_id=? AND state='closed'"
                " AND case_id!=? ORDER BY case_id DESC LIMIT ?",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, alert_id);
    cm_sql_bind_int64(st, 2, (int64_t)except_case);
    cm_sql_bind_int64(st, 3, (int64_t)(limit ? limit : 5));
    int rows;
    return each(st, fn, ctx, &rows);
}

/* state and active of a case; CM_ERR_UNKNOWN if none. */
static cm_err state_of(cm_sql *db, uint64_t case_id, char state[16], int *active)
{
    cm_sql_stmt *st;
    if (prepare(db, "SELECT state, active FROM alert_cases WHERE case_id=?", &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_int64(st, 1, (int64_t)case_id);
    cm_err rc = CM_ERR_UNKNOWN;
    int r = cm_sql_step(st);
    if (r == CM_SQL_ROW) {
        snprintf(state, 16, "%s", cm_sql_column_text(st, 0));
        *active = (int)cm_sql_column_int64(st, 1);
        rc = CM_OK;
    } else if (r == CM_SQL_FAIL) {
        rc = CM_ERR_DB;
    }
    cm_sql_finalize(&st);
    return rc;
}

cm_err archive_cases_ack(cm_sql *db, uint64_t case_id, const char *who, uint64_t now_ms)
{
    char state[16];
    int active;
    cm_err rc = state_of(db, case_id, state, &active);
    if (rc != CM_OK)
        return rc;
    if (strcmp(state, "closed") == 0)
        return CM_ERR_INVAL;
    cm_sql_stmt *st;
    if (prepare(db,
                "UPDATE alert_cases SET state='acknowledged', acked_by=?, acked_ms=?"
                " WHERE case_id=?",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, who);
    cm_sql_bind_int64(st, 2, (int64_t)now_ms);
    cm_sql_bind_int64(st, 3, (int64_t)case_id);
    return run(&st, NULL);
}

static int note_ok(const char *s) { return s && *s && strlen(s) <= 500; }

cm_err archive_cases_close(cm_sql *db, uint64_t case_id, const char *who, const char *cause,
                           const char *action, const char *retired, uint64_t now_ms)
{
    char state[16];
    int active;
    cm_err rc = state_of(db, case_id, state, &active);
    if (rc != CM_OK)
        return rc;
    if (strcmp(state, "closed") == 0 || !note_ok(cause) || !note_ok(action))
        return CM_ERR_INVAL;
    int closed_active = active && retired && *retired;
    if (active && !closed_active)
        return CM_ERR_DENIED;
    char recorded[700];
    if (closed_active) { /* kept with the case: it closed while its condition was unobservable */
        snprintf(recorded, sizeof recorded, "%s [closed while active: gateway %s]", cause,
                 retired);
        cause = recorded;
    }
    cm_sql_stmt *st;
    if (prepare(db,
                "UPDATE alert_cases SET state='closed', closed_by=?, closed_ms=?, cause=?,"
                " action=?, acked_by=CASE WHEN acked_by='' THEN ? ELSE acked_by END,"
                " acked_ms=CASE WHEN acked_ms=0 THEN ? ELSE acked_ms END WHERE case_id=?",
                &st) != CM_OK)
        return CM_ERR_DB;
    cm_sql_bind_text(st, 1, who);
    cm_sql_bind_int64(st, 2, (int64_t)now_ms);
    cm_sql_bind_text(st, 3, cause);
    cm_sql_bind_text(st, 4, action);
    cm_sql_bind_text(st, 5, who);
    cm_sql_bind_int64(st, 6, (int64_t)now_ms);
    cm_sql_bind_int64(st, 7, (int64_t)case_id);
    return run(&st, NULL);
}
