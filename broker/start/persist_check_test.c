/* Unit tests of persist_check on crafted files in Mosquitto's persistence format (version 6:
 * magic, checksum field, big-endian version, chunks of an 8-byte header and a body); the real
 * broker's own files are checked by tests/integration/test_broker_start.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "persist_check.h"

static char g_dir[64], g_path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/persist_check_test.XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    snprintf(g_path, sizeof g_path, "%s/mosquitto.db", g_dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_path);
    rmdir(g_dir);
    return 0;
}

/* A version-v file with a configuration chunk and a message chunk of 40 bytes; cut to len
 * bytes (0: whole). Returns the whole length. */
static size_t write_db(uint32_t v, size_t len)
{
    uint8_t b[256];
    size_t n = 0;
    static const uint8_t magic[15] = {0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u',
                                      'i',  't',  't',  'o', ' ', 'd', 'b'};
    memcpy(b, magic, 15);
    n = 15;
    memset(b + n, 0, 4); /* checksum field */
    n += 4;
    uint8_t ver[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    memcpy(b + n, ver, 4);
    n += 4;
    const uint32_t chunks[2][2] = {{1, 16}, {2, 40}}; /* type, body length */
    for (int c = 0; c < 2; c++) {
        uint8_t h[8] = {0, 0, 0, (uint8_t)chunks[c][0], 0, 0, 0, (uint8_t)chunks[c][1]};
        memcpy(b + n, h, 8);
        n += 8;
        memset(b + n, 0x5a, chunks[c][1]);
        n += chunks[c][1];
    }
    FILE *f = fopen(g_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len ? len : n, f), len ? len : n);
    fclose(f);
    return n;
}

static int check(char *why)
{
    why[0] = '\0';
    return persist_check_file(g_path, why, 200);
}

static void test_whole_empty_and_absent_files_pass(void **state)
{
    (void)state;
    char why[200];
    assert_int_equal(check(why), PERSIST_OK); /* absent: nothing to restore */
    write_db(6, 0);
    assert_int_equal(check(why), PERSIST_OK);
    write_db(5, 0);
    assert_int_equal(check(why), PERSIST_OK);
    FILE *f = fopen(g_path, "wb");
    fclose(f);
    assert_int_equal(check(why), PERSIST_OK); /* empty: Mosquitto warns and starts */
}

static void test_every_cut_inside_a_chunk_body_is_damage(void **state)
{
    (void)state;
    char why[200];
    size_t whole = write_db(6, 0);
    /* bodies: 31..46 (configuration), 55..94 (message) */
    for (size_t cut = 24; cut < whole; cut++) {
        write_db(6, cut);
        int in_header = (cut >= 23 && cut < 31) || (cut >= 47 && cut < 55);
        int at_boundary = cut == 23 || cut == 47;
        if (in_header || at_boundary) {
            /* a chunk header cut short at the very end is where Mosquitto stops quietly */
            assert_int_equal(check(why), PERSIST_OK);
        } else {
            assert_int_equal(check(why), PERSIST_DAMAGED);
            assert_non_null(strstr(why, "cut short"));
        }
    }
}

static void test_foreign_cut_header_and_unknown_versions_are_damage(void **state)
{
    (void)state;
    char why[200];
    write_db(6, 10); /* inside the magic */
    assert_int_equal(check(why), PERSIST_DAMAGED);
    write_db(6, 20); /* inside the version */
    assert_int_equal(check(why), PERSIST_DAMAGED);
    assert_non_null(strstr(why, "file header"));
    write_db(7, 0);
    assert_int_equal(check(why), PERSIST_DAMAGED);
    assert_non_null(strstr(why, "version 7"));
    write_db(1, 0);
    assert_int_equal(check(why), PERSIST_DAMAGED);
    write_db(4, 40); /* an older format: its chunks are left to Mosquitto */
    assert_int_equal(check(why), PERSIST_OK);
    FILE *f = fopen(g_path, "wb");
    fputs("SQLite format 3", f);
    fclose(f);
    assert_int_equal(check(why), PERSIST_DAMAGED);
    assert_non_null(strstr(why, "magic"));
}

static void test_a_directory_is_unreadable_not_damaged(void **state)
{
    (void)state;
    char why[200];
    assert_int_equal(mkdir(g_path, 0700), 0);
    assert_int_equal(check(why), PERSIST_UNREADABLE);
    rmdir(g_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_whole_empty_and_absent_files_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_cut_inside_a_chunk_body_is_damage, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_foreign_cut_header_and_unknown_versions_are_damage,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_directory_is_unreadable_not_damaged, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
