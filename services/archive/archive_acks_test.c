/* Unit tests of archive_acks with a real (temporary) archive database: the ack never runs ahead
 * of what is stored, fills gaps, follows boot epochs, and survives a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "archive_acks.h"
#include "archive_store.h"

static char path[] = "/tmp/suido-acks-test-XXXXXX";

static void store(archive_store *s, archive_acks *a, const char *gw, uint64_t epoch, uint64_t seq)
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
    cm_err rc = archive_store_batch(s, &m);
    assert_true(rc == CM_OK || rc == CM_ERR_DUPLICATE);
    assert_int_equal(archive_acks_mark(a, gw, epoch, seq), CM_OK);
}

typedef struct seen {
    int count;
    char gw[65];
    uint64_t epoch, seq;
} seen;

static void note(void *ctx, const char *gw, uint64_t epoch, uint64_t seq)
{
    seen *n = ctx;
    n->count++;
    snprintf(n->gw, sizeof n->gw, "%s", gw);
    n->epoch = epoch;
    n->seq = seq;
}

static uint64_t acked(archive_acks *a, const char *gw)
{
    uint64_t e;
    return archive_acks_get(a, gw, &e);
}

static void test_contiguous_point(void **state)
{
    (void)state;
    int fd = mkstemp(path);
    close(fd);
    archive_store *s;
    assert_int_equal(archive_store_open(path, &s), CM_OK);
    archive_acks *a = archive_acks_new(s);
    archive_store_begin(s);
    store(s, a, "gw-1", 10, 1);
    store(s, a, "gw-1", 10, 2);
    store(s, a, "gw-1", 10, 4);
    assert_int_equal(acked(a, "gw-1"), 2);          /* 3 is missing */
    store(s, a, "gw-1", 10, 3);
    assert_int_equal(acked(a, "gw-1"), 4);
    store(s, a, "gw-1", 10, 3);                     /* duplicate changes nothing */
    assert_int_equal(acked(a, "gw-1"), 4);
    store(s, a, "gw-1", 10, 4 + 5000);              /* far beyond the window */
    assert_int_equal(acked(a, "gw-1"), 4);
    store(s, a, "gw-1", 9, 5);                      /* older epoch: the tracked point stays */
    assert_int_equal(acked(a, "gw-1"), 4);
    store(s, a, "gw-2", 1, 1);
    assert_int_equal(archive_store_commit(s), CM_OK);
    archive_acks_destroy(&a);

    /* after a restart the point is rebuilt from the database */
    a = archive_acks_new(s);
    archive_store_begin(s);
    store(s, a, "gw-1", 10, 5);
    assert_int_equal(acked(a, "gw-1"), 5);
    for (uint64_t q = 6; q < 5004; q++)
        store(s, a, "gw-1", 10, q);
    assert_int_equal(acked(a, "gw-1"), 5004);      /* and over the far one stored earlier */
    store(s, a, "gw-1", 10, 5006);
    assert_int_equal(acked(a, "gw-1"), 5004);
    store(s, a, "gw-1", 11, 1);                     /* new boot epoch starts over */
    uint64_t e;
    assert_int_equal(archive_acks_get(a, "gw-1", &e), 1);
    assert_int_equal(e, 11);
    archive_store_commit(s);
    seen n = {0};
    archive_acks_each_changed(a, note, &n);         /* drain what is reported */

    /* back-fill of an earlier epoch is acked too, from what the database holds after commit */
    archive_store_begin(s);
    store(s, a, "gw-1", 9, 1);
    store(s, a, "gw-1", 9, 2);
    store(s, a, "gw-1", 9, 4);                      /* 5 was stored before; 3 is missing */
    assert_int_equal(archive_store_commit(s), CM_OK);
    memset(&n, 0, sizeof n);
    archive_acks_each_changed(a, note, &n);
    assert_int_equal(n.count, 1);
    assert_string_equal(n.gw, "gw-1");
    assert_int_equal(n.epoch, 9);
    assert_int_equal(n.seq, 2);
    assert_int_equal(acked(a, "gw-1"), 1);          /* the current epoch's point is untouched */
    memset(&n, 0, sizeof n);
    archive_acks_each_changed(a, note, &n);         /* reported once */
    assert_int_equal(n.count, 0);
    archive_acks_destroy(&a);
    archive_store_close(&s);
    unlink(path);
    char aux[64];
    snprintf(aux, sizeof aux, "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", path);
    unlink(aux);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contiguous_point),
    };
    return cmocka_run_group_tests_name("archive_acks", tests, NULL, NULL);
}
