/* archive_gaps: see archive_gaps.h. */
#include "archive_gaps.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_check.h"
#include "cm_sql.h"
#include "cm_time.h"
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

/* Runs recorded lost (acknowledged, then not held after a restore). An archive from before the
 * table existed has none. */
static const char LOST_SQL[] =
    "SELECT gateway, boot_epoch, first_seq, last_seq, detected_ms FROM acked_lost"
    " WHERE (?1 = '' OR gateway = ?1) ORDER BY gateway, boot_epoch, first_seq";

typedef struct lost_run {
    char gw[65];
    int64_t epoch, first, last, detected_ms;
} lost_run;

typedef struct lost_list {
    lost_run *v;
    size_t n;
} lost_list;

static int load_lost(cm_sql *db, const char *gw, lost_list *l)
{
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, LOST_SQL, &st) != CM_OK)
        return strstr(cm_sql_error(db), "acked_lost") != NULL; /* no such table: none */
    cm_sql_bind_text(st, 1, gw ? gw : "");
    size_t cap = 0;
    int r;
    while ((r = cm_sql_step(st)) == CM_SQL_ROW) {
        if (l->n == cap) {
            cap = cap ? cap * 2 : 16;
            lost_run *nv = realloc(l->v, cap * sizeof *nv);
            if (!nv)
                break;
            l->v = nv;
        }
        lost_run *x = &l->v[l->n++];
        snprintf(x->gw, sizeof x->gw, "%s", cm_sql_column_text(st, 0));
        x->epoch = cm_sql_column_int64(st, 1);
        x->first = cm_sql_column_int64(st, 2);
        x->last = cm_sql_column_int64(st, 3);
        x->detected_ms = cm_sql_column_int64(st, 4);
    }
    cm_sql_finalize(&st);
    return r == CM_SQL_DONE;
}

/* Prints the parts of the missing run [a, b] of (gw, epoch) that no lost run covers, as the
 * report's ranges; returns how many sequences they hold. */
static uint64_t print_uncovered(const lost_list *l, const char *gw, int64_t epoch, int64_t a,
                                int64_t b, int json, int *shown)
{
    uint64_t n = 0;
    int64_t at = a;
    for (size_t i = 0; i <= l->n && at <= b; i++) {
        int64_t to = b, next = b + 1;
        if (i < l->n) {
            const lost_run *x = &l->v[i];
            if (x->epoch != epoch || strcmp(x->gw, gw) != 0 || x->last < at || x->first > b)
                continue;
            to = x->first - 1;
            next = x->last + 1;
        }
        if (to >= at) {
            if (json)
                printf("%s[%" PRId64 ",%" PRId64 "]", *shown ? "," : "", at, to);
            else if (at == to)
                printf("%s%" PRId64, *shown ? "," : "", at);
            else
                printf("%s%" PRId64 "-%" PRId64, *shown ? "," : "", at, to);
            (*shown)++;
            n += (uint64_t)(to - at + 1);
        }
        at = next;
    }
    return n;
}

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
    lost_list lost = {0};
    int rc = ctl_archive_open(conf, &db, label, sizeof label);
    if (rc != 0)
        return rc;
    rc = 1;
    uint64_t missing_total = 0, dup_total = 0, stored_total = 0, lost_total = 0;
    /* one read transaction: both queries see the same committed state */
    if (cm_sql_begin_snapshot(db) != CM_OK) {
        ctl_say("archive %s: %s", label, cm_sql_error(db));
        goto out;
    }
    if (!load_lost(db, gateway, &lost)) {
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
        uint64_t dups = (uint64_t)cm_sql_column_int64(ep, 4);
        stored_total += stored;
        dup_total += dups;
        if (json)
            printf("%s{\"gateway\":\"%s\",\"boot_epoch\":%" PRId64 ",\"stored\":%" PRIu64
                   ",\"highest\":%" PRIu64 ",\"duplicates_refused\":%" PRIu64
                   ",\"missing_ranges\":[",
                   first ? "" : ",", gw, epoch, stored, highest, dups);
        else
            printf("%-10s %-12" PRId64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64 "  ", gw, epoch,
                   stored, highest, dups);
        first = 0;
        int shown = 0;
        uint64_t missing = 0; /* the holes up to the highest, less the runs recorded lost */
        for (; run_of(gp, gp_row, gw, epoch); gp_row = cm_sql_step(gp))
            missing += print_uncovered(&lost, gw, epoch, cm_sql_column_int64(gp, 2),
                                       cm_sql_column_int64(gp, 3), json, &shown);
        missing_total += missing;
        if (json)
            printf("],\"missing\":%" PRIu64 "}", missing);
        else
            printf("%s\n", shown ? "" : "none");
    }
    if (row != CM_SQL_DONE || (gp_row != CM_SQL_DONE && gp_row != CM_SQL_ROW)) {
        ctl_say("archive %s: %s", label, cm_sql_error(db));
        goto out;
    }
    /* what was acknowledged to the gateways and is not held: lost, never to be filled */
    if (json)
        printf("],\"lost_ranges\":[");
    else if (lost.n)
        printf("\nacknowledged to the gateway, then not held (lost: restored from an older "
               "backup):\n%-10s %-12s %17s %8s  %s\n",
               "GATEWAY", "BOOT EPOCH", "SEQUENCES", "BATCHES", "FOUND (UTC)");
    for (size_t i = 0; i < lost.n; i++) {
        const lost_run *x = &lost.v[i];
        uint64_t n = (uint64_t)(x->last - x->first + 1);
        lost_total += n;
        char when[32];
        cm_time_iso((uint64_t)x->detected_ms, when, sizeof when);
        if (json)
            printf("%s{\"gateway\":\"%s\",\"boot_epoch\":%" PRId64 ",\"first\":%" PRId64
                   ",\"last\":%" PRId64 ",\"batches\":%" PRIu64 ",\"found_ms\":%" PRId64 "}",
                   i ? "," : "", x->gw, x->epoch, x->first, x->last, n, x->detected_ms);
        else
            printf("%-10s %-12" PRId64 " %8" PRId64 "-%-8" PRId64 " %8" PRIu64 "  %s\n", x->gw,
                   x->epoch, x->first, x->last, n, when);
    }
    if (json)
        printf("],\"stored\":%" PRIu64 ",\"missing\":%" PRIu64 ",\"lost\":%" PRIu64
               ",\"duplicates_refused\":%" PRIu64 "}\n",
               stored_total, missing_total, lost_total, dup_total);
    else
        printf("gaps: stored=%" PRIu64 " missing=%" PRIu64 " lost=%" PRIu64 " duplicate_rows=0 "
               "duplicates_refused=%" PRIu64 "\n",
               stored_total, missing_total, lost_total, dup_total);
    rc = missing_total ? 1 : lost_total ? 4 : 0;
out:
    free(lost.v);
    cm_sql_finalize(&ep);
    cm_sql_finalize(&gp);
    cm_sql_close(&db);
    return rc;
}
