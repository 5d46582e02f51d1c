/* archive_cases: alert cases and their lifecycle, in the archive's database (table alert_cases).
 *
 * A case is one occurrence of an alert id ("<gateway>/<channel>/<family>"): opened when a
 * detector raises the alert, "acknowledged" by an operator, its condition cleared by the detector
 * (active = 0), and "closed" by an operator who records the cause and the action taken. Raises
 * of an alert id while its case is open fold into that case (occurrences, latest evidence and
 * value, highest severity): one case per problem, however often the detector flaps. A case is
 * closed only once its condition has cleared, so a closure always describes a finished episode.
 * Closed cases of the same alert id are the "past cases" shown with a new one: what was found
 * and done the last times this kind of alert was raised on this asset.
 *
 * All functions run inside the caller's transaction where they write; no I/O besides the
 * database (SQLite or PostgreSQL, through cm_sql). */
#ifndef ARCHIVE_CASES_H
#define ARCHIVE_CASES_H
#include <stdint.h>

#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

/* Creates the table if missing. */
cm_err archive_cases_init(cm_sql *db);
/* Folds one raised or cleared alert (as stored) into the cases. */
cm_err archive_cases_record(cm_sql *db, const Suido__Alert *a, uint64_t now_ms);

typedef void (*archive_case_fn)(void *ctx, const Suido__AlertCase *c);
/* Open cases (all = 1: every case), newest first, at most limit. */
cm_err archive_cases_list(cm_sql *db, int all, unsigned limit, archive_case_fn fn, void *ctx);
/* One case. CM_ERR_UNKNOWN if there is none. */
cm_err archive_cases_get(cm_sql *db, uint64_t case_id, archive_case_fn fn, void *ctx);
/* Closed cases of alert_id other than except_case, newest first, at most limit. */
cm_err archive_cases_past(cm_sql *db, const char *alert_id, uint64_t except_case,
                          unsigned limit, archive_case_fn fn, void *ctx);
/* Acknowledge: CM_ERR_UNKNOWN (no such case), CM_ERR_INVAL (closed already). */
cm_err archive_cases_ack(cm_sql *db, uint64_t case_id, const char *who, uint64_t now_ms);
/* Close with cause and action (both 1..500 characters): CM_ERR_UNKNOWN, CM_ERR_INVAL (closed
 * already, or cause/action missing), CM_ERR_DENIED (the condition is still active). retired
 * (NULL or ""): the state of the case's gateway when it will never report again ("revoked",
 * "disposed"): an active case may then be closed, and the cause says why it closed active. */
cm_err archive_cases_close(cm_sql *db, uint64_t case_id, const char *who, const char *cause,
                           const char *action, const char *retired, uint64_t now_ms);

#endif
