/* outbox_test: unit tests of the gateway outbox (gateway/outbox.c): append, sync, load and
 * ack; a torn last record ignored at every byte offset a crash could leave it at; a checksum
 * mismatch detected (at load and when a record is read back); the size bound, the full state
 * and compaction; abort of unsynced records; the sent ranges across restarts and compactions. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cm_log.h"
#include "outbox.h"

#define GW "gw-test"
#define EPOCH 1700000000ull

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/outbox-test-XXXXXX");
    if (!f || !mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/%s.outbox", f->dir, GW);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char p[160];
    unlink(f->path);
    snprintf(p, sizeof p, "%s.tmp", f->path);
    unlink(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* A recognisable envelope for (seq, which): len bytes of a pattern. */
static void pattern(uint8_t *p, size_t len, uint64_t seq, int backfill)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seq * 31u + i * 7u + (backfill ? 101u : 0u));
}

static size_t env_len(uint64_t seq) { return 100 + (size_t)(seq % 17); }

static void append(outbox *ob, uint64_t epoch, uint64_t seq)
{
    uint8_t d[512], b[512];
    size_t n = env_len(seq);
    pattern(d, n, seq, 0);
    pattern(b, n + 3, seq, 1);
    assert_int_equal(outbox_append(ob, epoch, seq, 1000 * seq, d, n, b, n + 3), CM_OK);
}

/* Both envelopes of entry i read back as they were appended. */
static void check_entry(outbox *ob, size_t i, uint64_t epoch, uint64_t seq)
{
    const ob_entry *e = outbox_entry(ob, i);
    assert_non_null(e);
    assert_int_equal(e->epoch, epoch);
    assert_int_equal(e->seq, seq);
    assert_int_equal(e->ts_ms, 1000 * seq);
    uint8_t got[512], want[512];
    size_t len = 0, n = env_len(seq);
    assert_int_equal(outbox_read(ob, e, 0, got, sizeof got, &len), CM_OK);
    pattern(want, n, seq, 0);
    assert_int_equal(len, n);
    assert_memory_equal(got, want, n);
    assert_int_equal(outbox_read(ob, e, 1, got, sizeof got, &len), CM_OK);
    pattern(want, n + 3, seq, 1);
    assert_int_equal(len, n + 3);
    assert_memory_equal(got, want, n + 3);
}

static outbox *open_ok(const fixture *f, uint64_t max)
{
    outbox *ob = NULL;
    assert_int_equal(outbox_open(f->dir, GW, max, &ob), CM_OK);
    assert_non_null(ob);
    return ob;
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(*len ? *len : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, *len, fp), *len);
    fclose(fp);
    return p;
}

static void write_file(const char *path, const uint8_t *p, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, len, fp), len);
    fclose(fp);
}

static void test_append_load_ack(void **state)
{
    fixture *f = *state;
    outbox *ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_count(ob), 0);
    for (uint64_t s = 1; s <= 5; s++)
        append(ob, EPOCH, s);
    /* appended but not synced: not entries yet, and not in the ranges */
    assert_int_equal(outbox_count(ob), 0);
    const ob_range *r;
    assert_int_equal(outbox_ranges(ob, &r), 0);
    assert_int_equal(outbox_sync(ob), CM_OK);
    assert_int_equal(outbox_count(ob), 5);
    assert_int_equal(outbox_stats(ob)->stored, 5);
    for (size_t i = 0; i < 5; i++)
        check_entry(ob, i, EPOCH, i + 1);
    assert_int_equal(outbox_find(ob, EPOCH, 3), 2);
    assert_int_equal(outbox_find(ob, EPOCH + 1, 0), 5);
    /* an ack of another epoch removes nothing; ours removes up to its seq */
    assert_int_equal(outbox_ack(ob, EPOCH - 1, 100), 0);
    assert_int_equal(outbox_ack(ob, EPOCH, 3), 3);
    assert_int_equal(outbox_ack(ob, EPOCH, 3), 0);
    assert_int_equal(outbox_count(ob), 2);
    check_entry(ob, 0, EPOCH, 4);
    /* out of order or repeated keys are refused */
    uint8_t d[8] = {1};
    assert_int_equal(outbox_append(ob, EPOCH, 5, 0, d, 8, d, 8), CM_ERR_INVAL);
    assert_int_equal(outbox_append(ob, EPOCH - 1, 9, 0, d, 8, d, 8), CM_ERR_INVAL);
    assert_int_equal(outbox_append(ob, EPOCH, 6, 0, d, 0, d, 8), CM_ERR_INVAL);
    outbox_destroy(&ob);
    assert_null(ob);

    /* after a restart: the two unacked batches, the ranges of all five */
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_count(ob), 2);
    assert_int_equal(outbox_stats(ob)->loaded, 2);
    assert_int_equal(outbox_stats(ob)->torn_tail, 0);
    check_entry(ob, 0, EPOCH, 4);
    check_entry(ob, 1, EPOCH, 5);
    assert_int_equal(outbox_ranges(ob, &r), 1);
    assert_int_equal(r[0].epoch, EPOCH);
    assert_int_equal(r[0].first, 1);
    assert_int_equal(r[0].last, 5);
    assert_int_equal(outbox_max_epoch(ob), EPOCH);
    /* a new epoch continues the log */
    append(ob, EPOCH + 7, 1);
    append(ob, EPOCH + 7, 2);
    assert_int_equal(outbox_sync(ob), CM_OK);
    assert_int_equal(outbox_ack(ob, EPOCH, 5), 2);
    outbox_destroy(&ob);

    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_count(ob), 2);
    check_entry(ob, 0, EPOCH + 7, 1);
    check_entry(ob, 1, EPOCH + 7, 2);
    assert_int_equal(outbox_ranges(ob, &r), 2);
    assert_int_equal(r[1].epoch, EPOCH + 7);
    assert_int_equal(r[1].first, 1);
    assert_int_equal(r[1].last, 2);
    assert_int_equal(outbox_max_epoch(ob), EPOCH + 7);
    outbox_destroy(&ob);
}

static void test_abort_drops_unsynced(void **state)
{
    fixture *f = *state;
    outbox *ob = open_ok(f, 1 << 20);
    append(ob, EPOCH, 1);
    assert_int_equal(outbox_sync(ob), CM_OK);
    off_t size = file_size(f->path);
    append(ob, EPOCH, 2);
    append(ob, EPOCH, 3);
    assert_int_equal(outbox_abort(ob), 2);
    assert_int_equal(file_size(f->path), size);
    assert_int_equal(outbox_count(ob), 1);
    /* the numbers given back can be taken again */
    append(ob, EPOCH, 2);
    assert_int_equal(outbox_sync(ob), CM_OK);
    outbox_destroy(&ob);
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_count(ob), 2);
    check_entry(ob, 1, EPOCH, 2);
    const ob_range *r;
    assert_int_equal(outbox_ranges(ob, &r), 1);
    assert_int_equal(r[0].last, 2);
    outbox_destroy(&ob);
}

/* A crash in the middle of the last append, simulated by cutting the file at every byte offset
 * of its last record: every earlier record survives, the torn one is ignored (and cut off, so
 * that the log continues cleanly), and it is never read back. */
static void test_torn_last_record_at_every_offset(void **state)
{
    fixture *f = *state;
    outbox *ob = open_ok(f, 1 << 20);
    for (uint64_t s = 1; s <= 3; s++)
        append(ob, EPOCH, s);
    assert_int_equal(outbox_sync(ob), CM_OK);
    assert_int_equal(outbox_ack(ob, EPOCH, 1), 1); /* an ack record in the middle */
    assert_int_equal(outbox_sync(ob), CM_OK);
    off_t before_last = file_size(f->path);
    append(ob, EPOCH, 4);
    assert_int_equal(outbox_sync(ob), CM_OK);
    outbox_destroy(&ob);
    size_t len;
    uint8_t *full = read_file(f->path, &len);
    assert_true((off_t)len > before_last);
    for (size_t cut = (size_t)before_last; cut < len; cut++) {
        write_file(f->path, full, cut);
        ob = open_ok(f, 1 << 20);
        assert_int_equal(outbox_count(ob), 2);
        check_entry(ob, 0, EPOCH, 2);
        check_entry(ob, 1, EPOCH, 3);
        assert_int_equal(outbox_stats(ob)->torn_tail, cut > (size_t)before_last);
        assert_int_equal(outbox_stats(ob)->corrupt, 0);
        assert_int_equal(file_size(f->path), before_last);
        const ob_range *r;
        assert_int_equal(outbox_ranges(ob, &r), 1);
        assert_int_equal(r[0].last, 3); /* the torn batch was never taken */
        /* the log goes on after the cut */
        append(ob, EPOCH, 4);
        assert_int_equal(outbox_sync(ob), CM_OK);
        outbox_destroy(&ob);
        ob = open_ok(f, 1 << 20);
        assert_int_equal(outbox_count(ob), 3);
        check_entry(ob, 2, EPOCH, 4);
        assert_int_equal(outbox_stats(ob)->torn_tail, 0);
        outbox_destroy(&ob);
    }
    /* the whole file again: nothing torn */
    write_file(f->path, full, len);
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_count(ob), 3);
    assert_int_equal(outbox_stats(ob)->torn_tail, 0);
    outbox_destroy(&ob);
    free(full);
}

/* Offset of the record of the entry holding seq (through the index of a fresh open). */
static uint64_t record_offset(const fixture *f, uint64_t seq)
{
    outbox *ob = open_ok(f, 1 << 20);
    uint64_t off = outbox_entry(ob, outbox_find(ob, EPOCH, seq))->rec_off;
    outbox_destroy(&ob);
    return off;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x55;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

static void test_checksum_mismatch_detected(void **state)
{
    fixture *f = *state;
    outbox *ob = open_ok(f, 1 << 20);
    for (uint64_t s = 1; s <= 4; s++)
        append(ob, EPOCH, s);
    assert_int_equal(outbox_sync(ob), CM_OK);
    outbox_destroy(&ob);

    /* one byte of record 2's envelope changes: record 2 is skipped, 1, 3 and 4 survive */
    flip_byte(f->path, record_offset(f, 2) + 60);
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_stats(ob)->corrupt, 1);
    assert_int_equal(outbox_stats(ob)->torn_tail, 0);
    assert_int_equal(outbox_count(ob), 3);
    check_entry(ob, 0, EPOCH, 1);
    check_entry(ob, 1, EPOCH, 3);
    check_entry(ob, 2, EPOCH, 4);
    outbox_destroy(&ob);
    /* the file was rewritten clean: no corruption reported again */
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_stats(ob)->corrupt, 0);
    assert_int_equal(outbox_count(ob), 3);
    outbox_destroy(&ob);

    /* a damaged length field: resynchronised at the next record */
    flip_byte(f->path, record_offset(f, 3) + 2);
    ob = open_ok(f, 1 << 20);
    assert_int_equal(outbox_stats(ob)->corrupt, 1);
    assert_int_equal(outbox_count(ob), 2);
    check_entry(ob, 0, EPOCH, 1);
    check_entry(ob, 1, EPOCH, 4);

    /* the disk changing under an open outbox: never sent half-right */
    flip_byte(f->path, outbox_entry(ob, 1)->rec_off + 70);
    uint8_t buf[512];
    size_t len;
    assert_int_equal(outbox_read(ob, outbox_entry(ob, 1), 1, buf, sizeof buf, &len),
                     CM_ERR_DECODE);
    assert_int_equal(outbox_read(ob, outbox_entry(ob, 0), 1, buf, sizeof buf, &len), CM_OK);
    assert_int_equal(outbox_read(ob, outbox_entry(ob, 0), 0, buf, 10, &len), CM_ERR_TOO_BIG);
    outbox_destroy(&ob);
}

static void test_foreign_or_broken_header_refused(void **state)
{
    fixture *f = *state;
    outbox *ob = open_ok(f, 1 << 20);
    append(ob, EPOCH, 1);
    assert_int_equal(outbox_sync(ob), CM_OK);
    outbox_destroy(&ob);
    /* another gateway's id: its outbox is not ours */
    char other[160];
    snprintf(other, sizeof other, "%s/gw-other.outbox", f->dir);
    assert_int_equal(rename(f->path, other), 0);
    assert_int_equal(outbox_open(f->dir, "gw-other", 1 << 20, &ob), CM_ERR_DECODE);
    assert_null(ob);
    assert_int_equal(rename(other, f->path), 0);
    /* a damaged header: refused rather than guessed at */
    flip_byte(f->path, 9);
    assert_int_equal(outbox_open(f->dir, GW, 1 << 20, &ob), CM_ERR_DECODE);
    assert_null(ob);
    /* too small a bound */
    assert_int_equal(outbox_open(f->dir, GW, OB_MIN_BYTES - 1, &ob), CM_ERR_INVAL);
}

/* One process per outbox: a second open is refused while the first holds it, also after the
 * first has compacted it into a new file. */
static void test_one_process_at_a_time(void **state)
{
    fixture *f = *state;
    outbox *a = open_ok(f, OB_MIN_BYTES), *b = NULL;
    assert_int_equal(outbox_open(f->dir, GW, OB_MIN_BYTES, &b), CM_ERR_DENIED);
    assert_null(b);
    uint8_t d[3000] = {0};
    for (uint64_t s = 1; s <= 8; s++) {
        assert_int_equal(outbox_append(a, EPOCH, s, s, d, sizeof d, d, sizeof d), CM_OK);
        assert_int_equal(outbox_sync(a), CM_OK);
    }
    assert_int_equal(outbox_ack(a, EPOCH, 8), 8); /* compacts: a new file under the name */
    assert_true(outbox_stats(a)->compactions >= 1);
    assert_int_equal(outbox_open(f->dir, GW, OB_MIN_BYTES, &b), CM_ERR_DENIED);
    outbox_destroy(&a);
    b = open_ok(f, OB_MIN_BYTES);
    assert_int_equal(outbox_count(b), 0);
    outbox_destroy(&b);
}

/* The bound: records never push the file past it; when the unacked ones fill it the outbox is
 * full until acks free enough (1/16 of the bound) for a compaction to make room. */
static void test_bound_full_and_compaction(void **state)
{
    fixture *f = *state;
    const uint64_t max = OB_MIN_BYTES;
    outbox *ob = open_ok(f, max);
    uint8_t d[4000], b[4000];
    memset(d, 'd', sizeof d);
    memset(b, 'b', sizeof b);
    size_t bound = outbox_record_size(sizeof d, sizeof b);
    uint64_t seq = 0;
    while (outbox_room(ob, bound) == OB_ROOM) {
        seq++;
        assert_int_equal(outbox_append(ob, EPOCH, seq, seq, d, sizeof d, b, sizeof b), CM_OK);
        /* pending records: room is asked again only after the sync */
        if (seq % 3 == 0)
            assert_int_equal(outbox_sync(ob), CM_OK);
        assert_true(outbox_bytes(ob) <= max);
    }
    if (outbox_room(ob, bound) == OB_LATER)
        assert_int_equal(outbox_sync(ob), CM_OK);
    assert_int_equal(outbox_room(ob, bound), OB_FULL);
    uint64_t n = outbox_count(ob);
    assert_int_equal(n, seq);
    assert_true(n >= 6);
    /* forcing it does not pass the bound either */
    assert_int_equal(outbox_append(ob, EPOCH, seq + 1, 0, d, sizeof d, b, sizeof b),
                     CM_ERR_TOO_BIG);
    assert_true(file_size(f->path) <= (off_t)max);
    /* one ack of one batch: less than 1/16 of the bound, still full (hysteresis) */
    assert_int_equal(outbox_ack(ob, EPOCH, 1), 1);
    if (bound < max / 16)
        assert_int_equal(outbox_room(ob, bound), OB_FULL);
    /* acks of a quarter: compaction makes room, the rest survives it byte for byte */
    uint64_t q = n / 4 + 1;
    assert_int_equal(outbox_ack(ob, EPOCH, q), q - 1);
    assert_int_equal(outbox_room(ob, bound), OB_ROOM);
    assert_true(outbox_stats(ob)->compactions >= 1);
    assert_true(file_size(f->path) <= (off_t)max);
    assert_int_equal(outbox_count(ob), n - q);
    uint8_t got[4000];
    size_t len;
    for (size_t i = 0; i < outbox_count(ob); i++) {
        assert_int_equal(outbox_entry(ob, i)->seq, q + 1 + i);
        assert_int_equal(outbox_read(ob, outbox_entry(ob, i), 1, got, sizeof got, &len), CM_OK);
        assert_memory_equal(got, b, sizeof b);
    }
    assert_int_equal(outbox_append(ob, EPOCH, seq + 1, 0, d, sizeof d, b, sizeof b), CM_OK);
    assert_int_equal(outbox_sync(ob), CM_OK);
    outbox_destroy(&ob);
    /* after compaction and restart: the same batches, all numbers in the ranges */
    ob = open_ok(f, max);
    assert_int_equal(outbox_count(ob), n - q + 1);
    assert_int_equal(outbox_entry(ob, 0)->seq, q + 1);
    const ob_range *r;
    assert_int_equal(outbox_ranges(ob, &r), 1);
    assert_int_equal(r[0].first, 1);
    assert_int_equal(r[0].last, seq + 1);
    /* everything acked: the steady-state compaction leaves header and ranges only */
    assert_int_equal(outbox_ack(ob, EPOCH, seq + 1), n - q + 1);
    assert_int_equal(outbox_count(ob), 0);
    assert_true(outbox_bytes(ob) < 200);
    outbox_destroy(&ob);
    ob = open_ok(f, max);
    assert_int_equal(outbox_count(ob), 0);
    assert_int_equal(outbox_ranges(ob, &r), 1);
    assert_int_equal(r[0].last, seq + 1);
    assert_int_equal(outbox_max_epoch(ob), EPOCH);
    outbox_destroy(&ob);
}

/* Many runs: ranges of several epochs with gaps (numbers taken by other envelopes) survive
 * restarts and compactions. */
static void test_ranges_across_restarts(void **state)
{
    fixture *f = *state;
    for (uint64_t run = 0; run < 4; run++) {
        outbox *ob = open_ok(f, 1 << 20);
        uint64_t ep = EPOCH + run;
        for (uint64_t s = 1; s <= 6; s++)
            if (s != 4) /* 4: a command result's number, never stored here */
                append(ob, ep, s);
        assert_int_equal(outbox_sync(ob), CM_OK);
        outbox_ack(ob, ep, run % 2 ? 6 : 2); /* odd runs: everything acked */
        outbox_destroy(&ob);
    }
    outbox *ob = open_ok(f, 1 << 20);
    const ob_range *r;
    size_t n = outbox_ranges(ob, &r);
    assert_int_equal(n, 8);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(r[i].epoch, EPOCH + i / 2);
        assert_int_equal(r[i].first, i % 2 ? 5 : 1);
        assert_int_equal(r[i].last, i % 2 ? 6 : 3);
    }
    /* unacked: 3, 5, 6 of the even runs */
    assert_int_equal(outbox_count(ob), 6);
    check_entry(ob, 0, EPOCH, 3);
    check_entry(ob, 3, EPOCH + 2, 3);
    outbox_destroy(&ob);
}

int main(void)
{
    cm_log_init("outbox_test", CM_LOG_ERROR); /* the torn-record warnings are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_load_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_drops_unsynced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_last_record_at_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checksum_mismatch_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_or_broken_header_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_process_at_a_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound_full_and_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ranges_across_restarts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
