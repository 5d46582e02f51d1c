/* Unit tests of registry_operators: lockouts keyed on the authenticated peer (a source the
 * client claims does not count, except the browser address the monitor relays), the per-account
 * cap across all sources, and TOTP seeds sealed under a key kept outside the database (seeds
 * found in clear are sealed at open). An in-memory database; TOTP codes made with liboath. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <liboath/oath.h>
#include <sqlite3.h>

#include "registry_operators.h"

#define PW "a long enough passphrase"
#define T0 1800000000000ull /* a fixed "now", ms */

static const uint8_t KEY[OP_SEAL_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

typedef struct fixture {
    sqlite3 *db;
    registry_operators *o;
    char secret[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(sqlite3_open(":memory:", &f->db), SQLITE_OK);
    int sealed = -1;
    assert_int_equal(registry_operators_open(f->db, KEY, &sealed, &f->o), CM_OK);
    assert_int_equal(sealed, 0);
    assert_int_equal(registry_operators_add(f->o, "dave", "admin", PW, f->secret), CM_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    registry_operators_close(&f->o);
    sqlite3_close(f->db);
    free(f);
    return 0;
}

/* The code for time t (ms) of a base32 secret. */
static void code_at(const char *b32, uint64_t t_ms, char out[7])
{
    char *raw = NULL;
    size_t len = 0;
    assert_int_equal(oath_base32_decode(b32, strlen(b32), &raw, &len), OATH_OK);
    assert_int_equal(oath_totp_generate(raw, len, (time_t)(t_ms / 1000), 30, 0, 6, out), OATH_OK);
    free(raw);
}

static void test_source_key(void **state)
{
    (void)state;
    char k[OP_SOURCE_LEN];
    registry_operators_source_key("suidoctl", "10.9.9.9", k);
    assert_string_equal(k, "suidoctl");
    registry_operators_source_key("suidoctl", NULL, k);
    assert_string_equal(k, "suidoctl");
    registry_operators_source_key("monitor", "192.0.2.7", k);
    assert_string_equal(k, "monitor/192.0.2.7");
    registry_operators_source_key("monitor", "2001:db8::1", k);
    assert_string_equal(k, "monitor/2001:db8::1");
    /* what is not an address is not a source of its own */
    registry_operators_source_key("monitor", "a/b\nresult=ok", k);
    assert_string_equal(k, "monitor/unknown");
    registry_operators_source_key("monitor", "", k);
    assert_string_equal(k, "monitor/unknown");
}

/* The attack: a new claimed source for every wrong password. It stays one source: locked after
 * OP_MAX_FAILURES, and the right password from yet another claimed source is refused too. */
static void test_claimed_source_does_not_escape_the_lockout(void **state)
{
    fixture *f = *state;
    op_login r;
    char src[32], code[7];
    for (int i = 0; i < OP_MAX_FAILURES; i++) {
        snprintf(src, sizeof src, "10.0.0.%d", i + 1);
        registry_operators_login(f->o, "dave", "wrong password!!", "000000", "suidoctl", src,
                                 T0 + (uint64_t)i * 1000, &r);
        assert_string_equal(r.source, "suidoctl");
        assert_string_equal(r.reason, "bad_password");
    }
    assert_int_equal(r.locked_now, 1);
    assert_int_equal(r.status, CM_ERR_REVOKED);
    code_at(f->secret, T0 + 10000, code);
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", "somewhere-new", T0 + 10000, &r);
    assert_int_equal(r.status, CM_ERR_REVOKED);
    assert_string_equal(r.reason, "locked_out");
    /* another browser behind the monitor is another source: not locked */
    registry_operators_login(f->o, "dave", PW, code, "monitor", "192.0.2.7", T0 + 10000, &r);
    assert_int_equal(r.status, CM_OK);
    assert_string_equal(r.source, "monitor/192.0.2.7");
}

/* Guessing spread over many browser addresses, each below the per-source limit: the account is
 * locked everywhere after OP_ACCOUNT_MAX_FAILURES in a row, 15 min then doubling. */
static void test_account_cap_across_sources(void **state)
{
    fixture *f = *state;
    op_login r;
    char src[32], code[7];
    uint64_t t = T0;
    int n = 0;
    for (int s = 0; n < OP_ACCOUNT_MAX_FAILURES; s++)
        for (int i = 0; i < OP_MAX_FAILURES - 1 && n < OP_ACCOUNT_MAX_FAILURES; i++, n++) {
            snprintf(src, sizeof src, "198.51.100.%d", s + 1);
            registry_operators_login(f->o, "dave", "wrong password!!", "000000", "monitor", src,
                                     t += 1000, &r);
            assert_int_equal(r.locked_now, 0);
            assert_int_equal(r.account_locked_now, n == OP_ACCOUNT_MAX_FAILURES - 1);
        }
    assert_int_equal(r.status, CM_ERR_REVOKED);
    assert_true(r.retry_after_ms >= t + 15 * 60000ull);
    /* the right credentials from a fresh source, and from suidoctl, are refused */
    code_at(f->secret, t + 1000, code);
    registry_operators_login(f->o, "dave", PW, code, "monitor", "203.0.113.9", t + 1000, &r);
    assert_int_equal(r.status, CM_ERR_REVOKED);
    assert_string_equal(r.reason, "account_locked");
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, t + 1000, &r);
    assert_string_equal(r.reason, "account_locked");
    /* the lock is stored: a restart (the tables opened again) does not lift it */
    registry_operators_close(&f->o);
    int sealed = 0;
    assert_int_equal(registry_operators_open(f->db, KEY, &sealed, &f->o), CM_OK);
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, t + 2000, &r);
    assert_string_equal(r.reason, "account_locked");
    /* after 15 min it opens; the next round of failures locks it for 30 */
    t += 15 * 60000ull + 1000;
    for (n = 0; n < OP_ACCOUNT_MAX_FAILURES; n++) {
        snprintf(src, sizeof src, "192.0.2.%d", n / (OP_MAX_FAILURES - 1) + 1);
        registry_operators_login(f->o, "dave", "wrong password!!", "000000", "monitor", src,
                                 t += 1000, &r);
    }
    assert_int_equal(r.account_locked_now, 1);
    assert_true(r.retry_after_ms >= t + 30 * 60000ull);
}

/* A success resets the count: the cap is on failures in a row. */
static void test_success_resets_the_account_count(void **state)
{
    fixture *f = *state;
    op_login r;
    char src[32], code[7];
    uint64_t t = T0;
    for (int n = 0; n < OP_ACCOUNT_MAX_FAILURES - 1; n++) {
        snprintf(src, sizeof src, "198.51.100.%d", n / (OP_MAX_FAILURES - 1) + 1);
        registry_operators_login(f->o, "dave", "wrong password!!", "000000", "monitor", src,
                                 t += 1000, &r);
    }
    code_at(f->secret, t + 1000, code);
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, t += 1000, &r);
    assert_int_equal(r.status, CM_OK);
    registry_operators_login(f->o, "dave", "wrong password!!", "000000", "monitor", "192.0.2.1",
                             t += 1000, &r);
    assert_int_equal(r.account_locked_now, 0);
    assert_string_equal(r.reason, "bad_password");
}

/* An unknown account gets no account lock (nothing to protect, no table to fill). */
static void test_unknown_operator_has_no_account_lock(void **state)
{
    fixture *f = *state;
    op_login r;
    for (int n = 0; n < OP_ACCOUNT_MAX_FAILURES + 2; n++) {
        char src[32];
        snprintf(src, sizeof src, "198.51.100.%d", n + 1);
        registry_operators_login(f->o, "nobody", "x", "000000", "monitor", src,
                                 T0 + (uint64_t)n * 1000, &r);
        assert_int_equal(r.account_locked_now, 0);
    }
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->db, "SELECT count(*) FROM account_locks", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
}

static void stored_seed(sqlite3 *db, const char *id, uint8_t *out, int *len)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT totp_secret FROM operators WHERE id=?", -1,
                                        &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    *len = sqlite3_column_bytes(st, 0);
    memcpy(out, sqlite3_column_blob(st, 0), (size_t)*len);
    sqlite3_finalize(st);
}

/* The stored seed is not the seed; it opens only with the key it was sealed under. */
static void test_seed_is_sealed(void **state)
{
    fixture *f = *state;
    char *raw = NULL;
    size_t rawlen = 0;
    assert_int_equal(oath_base32_decode(f->secret, strlen(f->secret), &raw, &rawlen), OATH_OK);
    uint8_t blob[128];
    int len = 0;
    stored_seed(f->db, "dave", blob, &len);
    assert_true(len > (int)rawlen);
    assert_null(memmem(blob, (size_t)len, raw, rawlen));
    free(raw);
    /* the same database under another key: the seed does not open, the login fails */
    registry_operators_close(&f->o);
    uint8_t other[OP_SEAL_KEY_LEN] = {9};
    int sealed = 0;
    assert_int_equal(registry_operators_open(f->db, other, &sealed, &f->o), CM_OK);
    char code[7];
    op_login r;
    code_at(f->secret, T0, code);
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, T0, &r);
    assert_int_equal(r.status, CM_ERR_DENIED);
    assert_string_equal(r.reason, "seed_unreadable");
    /* and under its own key it does */
    registry_operators_close(&f->o);
    assert_int_equal(registry_operators_open(f->db, KEY, &sealed, &f->o), CM_OK);
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, T0, &r);
    assert_int_equal(r.status, CM_OK);
}

/* A seed stored in clear by an older registry is sealed at open, once, and still works. */
static void test_clear_seed_is_sealed_at_open(void **state)
{
    fixture *f = *state;
    const uint8_t seed[20] = "0123456789abcdefghij";
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->db, "UPDATE operators SET totp_secret=? WHERE id='dave'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, seed, sizeof seed, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    registry_operators_close(&f->o);
    int sealed = 0;
    assert_int_equal(registry_operators_open(f->db, KEY, &sealed, &f->o), CM_OK);
    assert_int_equal(sealed, 1);
    uint8_t blob[128];
    int len = 0;
    stored_seed(f->db, "dave", blob, &len);
    assert_int_not_equal(len, 20);
    assert_null(memmem(blob, (size_t)len, seed, sizeof seed));
    registry_operators_close(&f->o);
    assert_int_equal(registry_operators_open(f->db, KEY, &sealed, &f->o), CM_OK);
    assert_int_equal(sealed, 0);
    char code[7];
    assert_int_equal(oath_totp_generate((const char *)seed, sizeof seed, (time_t)(T0 / 1000), 30,
                                        0, 6, code),
                     OATH_OK);
    op_login r;
    registry_operators_login(f->o, "dave", PW, code, "suidoctl", NULL, T0, &r);
    assert_int_equal(r.status, CM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_source_key),
        cmocka_unit_test_setup_teardown(test_claimed_source_does_not_escape_the_lockout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_account_cap_across_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_success_resets_the_account_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_operator_has_no_account_lock, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_seed_is_sealed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clear_seed_is_sealed_at_open, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
