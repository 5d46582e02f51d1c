/* Unit tests of archive_acked with a real (temporary) archive database: ack points wait for the
 * registry and are handed over once; the comparison finds exactly the runs acknowledged and not
 * held, never a run already recorded; recorded runs count as held for the acks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "archive_acked.h"
#include "archive_acks.h"
#include "archive_store.h"

static void store(archive_store *s, const char *gw, uint64_t epoch, uint64_t seq)
{
    Suido__Header h = SUIDO__HEADER__INIT;
    h.gateway_id = (char *)gw;
    h.boot_epoch = epoch;
    h.seq = seq;
    h.reading_count = 1;
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.topic = "suido/v1/gw/data";
    m.header = &h;
    m.envelope.data = (uint8_t *)"x";
    m.envelope.len = 1;
    assert_int_equal(archive_store_batch(s, &m), CM_OK);
}

typedef struct found {
    int n;
    uint64_t first[8], last[8];
} found;

static void on_lost(void *ctx, uint64_t first, uint64_t last)
{
    found *f = ctx;
    assert_true(f->n < 8);
    f->first[f->n] = first;
    f->last[f->n++] = last;
}

static archive_store *open_store(char *path)
{
    int fd = mkstemp(path);
    close(fd);
    archive_store *s = NULL;
    assert_int_equal(archive_store_open(path, &s), CM_OK);
    return s;
}

static void close_store(archive_store **s, const char *path)
{
    archive_store_close(s);
    unlink(path);
    char side[128];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

static void test_points_wait_until_handed_over(void **state)
{
    (void)state;
    archive_acked *k = archive_acked_new();
    Suido__Ack *pts[8];
    archive_acked_note(k, "gw-1", 5, 10);
    archive_acked_note(k, "gw-1", 5, 12);
    archive_acked_note(k, "gw-1", 5, 11); /* lower: changes nothing */
    archive_acked_note(k, "gw-1", 4, 30); /* an older epoch is its own point */
    archive_acked_note(k, "gw-2", 1, 3);
    assert_int_equal(archive_acked_waiting(k), 3);
    size_t n = archive_acked_take(k, pts, 8);
    assert_int_equal(n, 3);
    int seen12 = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(pts[i]->gateway_id, "gw-1") == 0 && pts[i]->boot_epoch == 5)
            seen12 = pts[i]->seq == 12;
    assert_true(seen12);
    /* noted again between the take and its success: still waits */
    archive_acked_note(k, "gw-2", 1, 4);
    archive_acked_taken(k);
    assert_int_equal(archive_acked_waiting(k), 1);
    assert_int_equal(archive_acked_take(k, pts, 8), 1);
    assert_int_equal(pts[0]->seq, 4);
    /* a take that did not reach the registry: everything waits on */
    archive_acked_note(k, "gw-3", 1, 1);
    assert_int_equal(archive_acked_take(k, pts, 8), 2);
    assert_int_equal(archive_acked_waiting(k), 2);
    archive_acked_taken(k);
    assert_int_equal(archive_acked_waiting(k), 0);
    assert_int_equal(archive_acked_take(k, pts, 8), 0);
    archive_acked_destroy(&k);
}

static void test_compare_finds_what_was_acknowledged_and_not_held(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-acked-test-XXXXXX";
    archive_store *s = open_store(path);
    cm_sql *db = archive_store_db(s);
    assert_int_equal(archive_store_begin(s), CM_OK);
    for (uint64_t q = 1; q <= 10; q++)
        if (q != 4)
            store(s, "gw-1", 7, q); /* 4 missing, and the tail after 10 */
    for (uint64_t q = 1; q <= 20; q++)
        store(s, "gw-2", 7, q);
    assert_int_equal(archive_store_commit(s), CM_OK);

    found f = {0};
    /* an epoch that reaches its point lost nothing */
    assert_int_equal(archive_acked_find_lost(db, "gw-2", 7, 20, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 0);
    assert_int_equal(archive_acked_find_lost(db, "gw-2", 7, 15, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 0);
    /* short of its point: the hole below and the tail */
    assert_int_equal(archive_acked_find_lost(db, "gw-1", 7, 25, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 2);
    assert_int_equal(f.first[0], 4);
    assert_int_equal(f.last[0], 4);
    assert_int_equal(f.first[1], 11);
    assert_int_equal(f.last[1], 25);
    /* an epoch the archive holds nothing of: all of it */
    memset(&f, 0, sizeof f);
    assert_int_equal(archive_acked_find_lost(db, "gw-3", 2, 5, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.first[0], 1);
    assert_int_equal(f.last[0], 5);

    /* recorded once, never found again; a later point finds only what is beyond */
    Suido__AckedLost run = SUIDO__ACKED_LOST__INIT;
    run.gateway_id = "gw-1";
    run.boot_epoch = 7;
    run.first_seq = 11;
    run.last_seq = 25;
    assert_int_equal(archive_acked_record_lost(db, &run, 1000), CM_OK);
    assert_int_equal(archive_acked_record_lost(db, &run, 2000), CM_OK); /* again: no change */
    run.first_seq = 4;
    run.last_seq = 4;
    assert_int_equal(archive_acked_record_lost(db, &run, 1000), CM_OK);
    memset(&f, 0, sizeof f);
    assert_int_equal(archive_acked_find_lost(db, "gw-1", 7, 25, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 0);
    assert_int_equal(archive_acked_find_lost(db, "gw-1", 7, 30, on_lost, &f), CM_OK);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.first[0], 26);
    assert_int_equal(f.last[0], 30);

    /* malformed runs are refused */
    run.first_seq = 0;
    assert_int_equal(archive_acked_record_lost(db, &run, 1), CM_ERR_INVAL);
    run.first_seq = 9;
    run.last_seq = 8;
    assert_int_equal(archive_acked_record_lost(db, &run, 1), CM_ERR_INVAL);
    run.gateway_id = "";
    run.last_seq = 9;
    assert_int_equal(archive_acked_record_lost(db, &run, 1), CM_ERR_INVAL);

    /* the acks count recorded runs as held: the gateway's later batches are acknowledged */
    archive_acks *a = archive_acks_new(s);
    assert_int_equal(archive_store_begin(s), CM_OK);
    store(s, "gw-1", 7, 26);
    assert_int_equal(archive_acks_mark(a, "gw-1", 7, 26), CM_OK);
    assert_int_equal(archive_store_commit(s), CM_OK);
    uint64_t epoch = 0;
    assert_int_equal(archive_acks_get(a, "gw-1", &epoch), 26);
    assert_int_equal(epoch, 7);
    archive_acks_destroy(&a);
    close_store(&s, path);
}

static void test_long_lost_run_is_passed_by_the_acks(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-acked-test-XXXXXX";
    archive_store *s = open_store(path);
    Suido__AckedLost run = SUIDO__ACKED_LOST__INIT;
    run.gateway_id = "gw-9";
    run.boot_epoch = 1;
    run.first_seq = 1;
    run.last_seq = 100000; /* beyond the acks' window and the store's step */
    assert_int_equal(archive_acked_record_lost(archive_store_db(s), &run, 1), CM_OK);
    archive_acks *a = archive_acks_new(s);
    assert_int_equal(archive_store_begin(s), CM_OK);
    store(s, "gw-9", 1, 100001);
    assert_int_equal(archive_acks_mark(a, "gw-9", 1, 100001), CM_OK);
    assert_int_equal(archive_store_commit(s), CM_OK);
    uint64_t epoch = 0;
    assert_int_equal(archive_acks_get(a, "gw-9", &epoch), 100001);
    archive_acks_destroy(&a);
    close_store(&s, path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_points_wait_until_handed_over),
        cmocka_unit_test(test_compare_finds_what_was_acknowledged_and_not_held),
        cmocka_unit_test(test_long_lost_run_is_passed_by_the_acks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
