/* Unit tests of registry_acked: points only move forward, each gateway keeps its newest epochs,
 * malformed points are skipped and counted, the list is complete and ordered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "registry_acked.h"

static Suido__Ack point(const char *gw, uint64_t epoch, uint64_t seq)
{
    Suido__Ack p = SUIDO__ACK__INIT;
    p.gateway_id = (char *)gw;
    p.boot_epoch = epoch;
    p.seq = seq;
    return p;
}

static uint64_t seq_of(sqlite3 *db, const char *gw, uint64_t epoch)
{
    Suido__Ack **v = NULL;
    size_t n = 0;
    assert_int_equal(registry_acked_list(db, &v, &n), CM_OK);
    uint64_t seq = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i]->gateway_id, gw) == 0 && v[i]->boot_epoch == epoch)
            seq = v[i]->seq;
    registry_acked_free(v, n);
    return seq;
}

static void test_points_move_forward_only(void **state)
{
    (void)state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(registry_acked_init(db), CM_OK);
    Suido__Ack a = point("gw-1", 3, 100), b = point("gw-2", 1, 7);
    Suido__Ack *pts[] = {&a, &b};
    size_t skipped = 9;
    assert_int_equal(registry_acked_put(db, pts, 2, 1000, &skipped), CM_OK);
    assert_int_equal(skipped, 0);
    assert_int_equal(seq_of(db, "gw-1", 3), 100);
    a.seq = 50; /* a lower point (an archive restored and not compared yet) changes nothing */
    assert_int_equal(registry_acked_put(db, pts, 1, 2000, &skipped), CM_OK);
    assert_int_equal(seq_of(db, "gw-1", 3), 100);
    a.seq = 150;
    assert_int_equal(registry_acked_put(db, pts, 1, 3000, &skipped), CM_OK);
    assert_int_equal(seq_of(db, "gw-1", 3), 150);
    assert_int_equal(seq_of(db, "gw-2", 1), 7);
    sqlite3_close(db);
}

static void test_newest_epochs_kept_and_malformed_skipped(void **state)
{
    (void)state;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(registry_acked_init(db), CM_OK);
    for (uint64_t e = 1; e <= ACKED_EPOCHS_KEPT + 3; e++) {
        Suido__Ack p = point("gw-1", e, 10);
        Suido__Ack *pts[] = {&p};
        assert_int_equal(registry_acked_put(db, pts, 1, e, NULL), CM_OK);
    }
    Suido__Ack **v = NULL;
    size_t n = 0;
    assert_int_equal(registry_acked_list(db, &v, &n), CM_OK);
    assert_int_equal(n, ACKED_EPOCHS_KEPT);
    assert_int_equal(v[0]->boot_epoch, 4); /* ordered; the three oldest gone */
    assert_int_equal(v[n - 1]->boot_epoch, ACKED_EPOCHS_KEPT + 3);
    registry_acked_free(v, n);

    char longid[80];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    Suido__Ack bad1 = point("", 1, 1), bad2 = point(longid, 1, 1), bad3 = point("gw-3", 1, 0),
               good = point("gw-3", 1, 2);
    Suido__Ack *pts[] = {&bad1, &bad2, &bad3, &good};
    size_t skipped = 0;
    assert_int_equal(registry_acked_put(db, pts, 4, 1, &skipped), CM_OK);
    assert_int_equal(skipped, 3);
    assert_int_equal(seq_of(db, "gw-3", 1), 2);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_points_move_forward_only),
        cmocka_unit_test(test_newest_epochs_kept_and_malformed_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
