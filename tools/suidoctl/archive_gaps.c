/* archive_gaps: see archive_gaps.h. */
#include "archive_gaps.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "audit_check.h"
#include "cm_sql.h"
#include "ctl_msg.h"

/* The same SQL for SQLite and PostgreSQL (cm_sql). ?1 is the gateway, or '' for all of them.
 * One pass: both queries come ordered by (gateway, boot_epoch) in the database's own order, and
 * every run of GAPS_SQL belongs to an epoch of EPOCHS_SQL, so the report walks the two cursors
 * side by side (comparing for equality only, never the collation), each row read once. */

/* Per epoch: stored count, highest sequence, and the copies refused as duplicates. */
static const char EPOCHS_SQL[] =
    "SELECT b.gateway, b.boot_epoch, b.stored, b.highest, coalesce(d.dups, 0) FROM ("
    " SELECT gateway, boot_epoch, count(*) AS stored, max(seq) AS highest FROM batches"
    "  WHERE (?1 = '' OR gateway = ?1) GROUP BY gateway, boot_epoch) AS b"
    " LEFT JOIN ("
    " SELECT gateway, boot_epoch, count(*) AS dups FROM rejects WHERE reason = 'duplicate'"
    "  AND (?1 = '' OR gateway = ?1) GROUP BY gateway, boot_epoch) AS d"
    " ON d.gateway = b.gateway AND d.boot_epoch = b.boot_epoch"
    " ORDER BY b.gateway, b.boot_epoch";

/* Missing runs: for each stored sequence, the run between it and the one stored before it
 * (or 1 for the first). The query does the work (window functions: SQLite since 3.25). */
static const char GAPS_SQL[] =
    "SELECT gateway, boot_epoch, prev + 1, seq - 1 FROM ("
    " SELECT gateway, boot_epoch, seq,"
    "  coalesce(lag(seq) OVER (PARTITION BY gateway, boot_epoch ORDER BY seq), 0) AS prev"
    " FROM batches WHERE (?1 = '' OR gateway = ?1)) AS runs"
    " WHERE seq > prev + 1 ORDER BY gateway, boot_epoch, prev";

static int prepare(cm_sql *db, const char *sql, const char *gw, cm_sql_stmt **st)
{
    if (cm_sql_prepare(db, sql, st) != CM_OK)
        return ctl_say("archive: %s", cm_sql_error(db)), 0;
    cm_sql_bind_text(*st, 1, gw ? gw : "");
    return 1;
}

/* Whether the gaps cursor's current row (gp_row: CM_SQL_ROW) is a run of (gw, epoch). */
static int run_of(cm_sql_stmt *gp, int gp_row, const char *gw, int64_t epoch)
{
    return gp_row == CM_SQL_ROW && cm_sql_column_int64(gp, 1) == epoch &&
           strcmp(cm_sql_column_text(gp, 0), gw) == 0;
}

int archive_gaps(const cm_conf *conf, const char *gateway, int json)
{
    char label[4200];
    cm_sql *db = NULL;
    cm_sql_stmt *ep = NULL, *gp = NULL;
    int rc = ctl_archive_open(conf, &db, label, sizeof label);
    if (rc != 0)
        return rc;
    rc = 1;
    uint64_t missing_total = 0, dup_total = 0, stored_total = 0;
    /* one read transaction: both queries see the same committed state */
    if (cm_sql_begin_snapshot(db) != CM_OK) {
        ctl_say("archive %s: %s", label, cm_sql_error(db));
        goto out;
    }
    if (!prepare(db, EPOCHS_SQL, gateway, &ep) || !prepare(db, GAPS_SQL, gateway, &gp))
        goto out;
    int gp_row = cm_sql_step(gp);
    if (json)
        printf("{\"epochs\":[");
    else
        printf("%-10s %-12s %8s %8s %8s  %s\n", "GATEWAY", "BOOT EPOCH", "STORED", "HIGHEST",
               "DUPS", "MISSING");
    int first = 1, row;
    while ((row = cm_sql_step(ep)) == CM_SQL_ROW) {
        const char *gw = cm_sql_column_text(ep, 0);
        int64_t epoch = cm_sql_column_int64(ep, 1);
        uint64_t stored = (uint64_t)cm_sql_column_int64(ep, 2);
        uint64_t highest = (uint64_t)cm_sql_column_int64(ep, 3);
        uint64_t missing = highest > stored ? highest - stored : 0;
        uint64_t dups = (uint64_t)cm_sql_column_int64(ep, 4);
        stored_total += stored;
        missing_total += missing;
        dup_total += dups;
        if (json)
            printf("%s{\"gateway\":\"%s\",\"boot_epoch\":%" PRId64 ",\"stored\":%" PRIu64
                   ",\"highest\":%" PRIu64 ",\"missing\":%" PRIu64
                   ",\"duplicates_refused\":%" PRIu64 ",\"missing_ranges\":[",
                   first ? "" : ",", gw, epoch, stored, highest, missing, dups);
        else
            printf("%-10s %-12" PRId64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64 "  ", gw, epoch,
                   stored, highest, dups);
        first = 0;
        int shown = 0;
        for (; run_of(gp, gp_row, gw, epoch); gp_row = cm_sql_step(gp)) {
            int64_t a = cm_sql_column_int64(gp, 2), b = cm_sql_column_int64(gp, 3);
            if (json)
                printf("%s[%" PRId64 ",%" PRId64 "]", shown ? "," : "", a, b);
            else if (a == b)
                printf("%s%" PRId64, shown ? "," : "", a);
            else
                printf("%s%" PRId64 "-%" PRId64, shown ? "," : "", a, b);
            shown++;
        }
        if (json)
            printf("]}");
        else
            printf("%s\n", shown ? "" : "none");
    }
    if (row != CM_SQL_DONE || (gp_row != CM_SQL_DONE && gp_row != CM_SQL_ROW)) {
        ctl_say("archive %s: %s", label, cm_sql_error(db));
        goto out;
    }
    if (json)
        printf("],\"stored\":%" PRIu64 ",\"missing\":%" PRIu64 ",\"duplicates_refused\":%" PRIu64
               "}\n",
               stored_total, missing_total, dup_total);
    else
        printf("gaps: stored=%" PRIu64 " missing=%" PRIu64 " duplicate_rows=0 "
               "duplicates_refused=%" PRIu64 "\n",
               stored_total, missing_total, dup_total);
    rc = missing_total ? 1 : 0;
out:
    cm_sql_finalize(&ep);
    cm_sql_finalize(&gp);
    cm_sql_close(&db);
    return rc;
}
