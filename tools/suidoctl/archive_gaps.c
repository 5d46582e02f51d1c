/* archive_gaps: see archive_gaps.h. */
#include "archive_gaps.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "ctl_msg.h"

/* Missing runs: for each stored sequence, the run between it and the one stored before it
 * (or 1 for the first). The query does the work; SQLite has window functions since 3.25. */
static const char GAPS_SQL[] =
    "SELECT gateway, boot_epoch, prev + 1, seq - 1 FROM ("
    " SELECT gateway, boot_epoch, seq,"
    "  coalesce(lag(seq) OVER (PARTITION BY gateway, boot_epoch ORDER BY seq), 0) AS prev"
    " FROM batches WHERE (?1 IS NULL OR gateway = ?1))"
    " WHERE seq > prev + 1 ORDER BY gateway, boot_epoch, prev";

static const char EPOCHS_SQL[] =
    "SELECT gateway, boot_epoch, count(*), max(seq) FROM batches"
    " WHERE (?1 IS NULL OR gateway = ?1) GROUP BY gateway, boot_epoch ORDER BY gateway, boot_epoch";

static const char DUPS_SQL[] =
    "SELECT gateway, boot_epoch, count(*) FROM rejects WHERE reason = 'duplicate'"
    " AND (?1 IS NULL OR gateway = ?1) GROUP BY gateway, boot_epoch";

static int prepare(sqlite3 *db, const char *sql, const char *gw, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
        return ctl_say("archive: %s", sqlite3_errmsg(db)), 0;
    if (gw)
        sqlite3_bind_text(*st, 1, gw, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(*st, 1);
    return 1;
}

int archive_gaps(const cm_conf *conf, const char *gateway, int json)
{
    const char *path = cm_conf_get(conf, "archive", "database");
    if (!path)
        return ctl_say("%s: [archive] database is not set", cm_conf_name(conf)), 2;
    char uri[4200];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", path);
    sqlite3 *db = NULL;
    sqlite3_stmt *ep = NULL, *gp = NULL, *dp = NULL;
    int rc = 1;
    uint64_t missing_total = 0, dup_total = 0, stored_total = 0;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
        ctl_say("%s: cannot open: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(db, 10000);
    /* one read transaction: the three queries see the same committed state */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        !prepare(db, EPOCHS_SQL, gateway, &ep) || !prepare(db, GAPS_SQL, gateway, &gp) ||
        !prepare(db, DUPS_SQL, gateway, &dp))
        goto out;
    if (json)
        printf("{\"epochs\":[");
    else
        printf("%-10s %-12s %8s %8s %8s  %s\n", "GATEWAY", "BOOT EPOCH", "STORED", "HIGHEST",
               "DUPS", "MISSING");
    int first = 1, row;
    while ((row = sqlite3_step(ep)) == SQLITE_ROW) {
        const char *gw = (const char *)sqlite3_column_text(ep, 0);
        int64_t epoch = sqlite3_column_int64(ep, 1);
        uint64_t stored = (uint64_t)sqlite3_column_int64(ep, 2);
        uint64_t highest = (uint64_t)sqlite3_column_int64(ep, 3);
        uint64_t missing = highest > stored ? highest - stored : 0;
        uint64_t dups = 0;
        sqlite3_reset(dp);
        while (sqlite3_step(dp) == SQLITE_ROW)
            if (strcmp((const char *)sqlite3_column_text(dp, 0), gw) == 0 &&
                sqlite3_column_int64(dp, 1) == epoch)
                dups = (uint64_t)sqlite3_column_int64(dp, 2);
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
        sqlite3_reset(gp);
        while (sqlite3_step(gp) == SQLITE_ROW) {
            if (strcmp((const char *)sqlite3_column_text(gp, 0), gw) != 0 ||
                sqlite3_column_int64(gp, 1) != epoch)
                continue;
            int64_t a = sqlite3_column_int64(gp, 2), b = sqlite3_column_int64(gp, 3);
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
    if (row != SQLITE_DONE) {
        ctl_say("archive: %s", sqlite3_errmsg(db));
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
    sqlite3_finalize(ep);
    sqlite3_finalize(gp);
    sqlite3_finalize(dp);
    sqlite3_close(db);
    return rc;
}
