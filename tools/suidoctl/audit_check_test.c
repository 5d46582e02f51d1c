/* audit_check: how suidoctl opens a database it reads. A WAL database that no process holds and
 * that has no log beside it is read as the file it is (immutable: no -shm or -wal is made, so a
 * read-only folder or mount will do); one that another process holds, or whose write-ahead log
 * still holds changes, is read through SQLite's WAL as usual, changes included; a file that
 * cannot be read fails at open, with the reason, not at the first query. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "audit_check.h"

typedef struct fx {
    char dir[64], db[128];
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/audit_check_test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/archive.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static int exists(const fx *f, const char *side)
{
    char p[160];
    snprintf(p, sizeof p, "%s%s", f->db, side);
    return access(p, F_OK) == 0;
}

/* A WAL database with n rows in table t; closed unless keep (then returned open). */
static sqlite3 *make_db(const fx *f, int n, int keep)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
                                      "CREATE TABLE IF NOT EXISTS t(x)", NULL, NULL, NULL),
                     SQLITE_OK);
    for (int i = 0; i < n; i++)
        assert_int_equal(sqlite3_exec(db, "INSERT INTO t VALUES(1)", NULL, NULL, NULL), SQLITE_OK);
    if (keep)
        return db;
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return NULL;
}

/* The rows of t as ctl_sqlite_open reads them (-1: not opened or not read). */
static long rows(const fx *f)
{
    cm_sql *db = NULL;
    cm_sql_stmt *st = NULL;
    char why[256] = "";
    long n = -1;
    if (ctl_sqlite_open(f->db, &db, why, sizeof why) &&
        cm_sql_prepare(db, "SELECT count(*) FROM t", &st) == CM_OK && cm_sql_step(st) == CM_SQL_ROW)
        n = (long)cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    cm_sql_close(&db);
    return n;
}

static void test_a_closed_database_is_read_as_it_is(void **state)
{
    fx *f = *state;
    make_db(f, 3, 0);
    assert_false(exists(f, "-wal")); /* the last connection folded the log in and removed it */
    assert_int_equal(ctl_lock_holder(f->db), 0);
    assert_int_equal(ctl_sqlite_at_rest(f->db), 1);
    assert_int_equal(rows(f), 3);
    /* nothing was made beside it: a read-only folder would have done */
    assert_false(exists(f, "-shm"));
    assert_false(exists(f, "-wal"));
}

static void test_a_database_another_process_holds_is_read_through_its_log(void **state)
{
    fx *f = *state;
    make_db(f, 1, 0);
    int ready[2], done[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(done), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) { /* a service writing it, not yet checkpointed */
        sqlite3 *db = make_db(f, 4, 1);
        char c = 1;
        if (write(ready[1], &c, 1) != 1 || read(done[0], &c, 1) != 1)
            _exit(1);
        sqlite3_close(db);
        _exit(0);
    }
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    assert_int_equal(ctl_lock_holder(f->db), (long)child);
    assert_int_equal(ctl_sqlite_at_rest(f->db), 0);
    assert_int_equal(rows(f), 5); /* what is still only in the log too */
    assert_int_equal(write(done[1], &c, 1), 1);
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(ctl_lock_holder(f->db), 0);
}

static void test_a_log_left_by_a_killed_writer_is_not_ignored(void **state)
{
    fx *f = *state;
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        make_db(f, 6, 1);
        _exit(0); /* killed: never closed, the log never folded in */
    }
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(exists(f, "-wal"));
    assert_int_equal(ctl_lock_holder(f->db), 0);
    assert_int_equal(ctl_sqlite_at_rest(f->db), 0);
    assert_int_equal(rows(f), 6);
}

static void test_what_cannot_be_read_fails_at_open_with_the_reason(void **state)
{
    fx *f = *state;
    cm_sql *db = NULL;
    char why[256] = "";
    assert_int_equal(ctl_sqlite_open(f->db, &db, why, sizeof why), 0);
    assert_null(db);
    assert_string_equal(why, "No such file or directory");
    FILE *out = fopen(f->db, "w");
    assert_non_null(out);
    fputs("not a database, but long enough to have a header of sorts................\n", out);
    fclose(out);
    assert_int_equal(ctl_sqlite_open(f->db, &db, why, sizeof why), 0);
    assert_null(db);
    assert_non_null(strstr(why, "not a database"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_closed_database_is_read_as_it_is, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_database_another_process_holds_is_read_through_its_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_log_left_by_a_killed_writer_is_not_ignored, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_what_cannot_be_read_fails_at_open_with_the_reason,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
