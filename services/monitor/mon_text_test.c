/* mon_text: what passes each check and what does not (injections, encodings, limits), and the
 * escaping of log details and CSV cells. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mon_text.h"

static void test_identifiers(void **state)
{
    (void)state;
    assert_true(mon_valid_gateway("gw-0001"));
    assert_true(mon_valid_gateway("a"));
    const char *bad_gw[] = {"", "GW-1", "gw_1", "gw 1", "gw-1'", "gw/1", "gw.1", "gw%31",
                            "gw-1\n", "\xc3\xa9", NULL};
    for (int i = 0; bad_gw[i]; i++)
        assert_false(mon_valid_gateway(bad_gw[i]));
    char long_id[66];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_false(mon_valid_gateway(long_id));
    long_id[64] = '\0';
    assert_true(mon_valid_gateway(long_id));
    assert_false(mon_valid_gateway(NULL));

    assert_true(mon_valid_operator("ada.lovelace_2"));
    assert_false(mon_valid_operator("admin' --"));
    assert_false(mon_valid_operator("Admin"));
    assert_false(mon_valid_operator(""));

    assert_true(mon_valid_channel("reservoir.level"));
    assert_true(mon_valid_channel("pumping.pump1_status"));
    const char *bad_ch[] = {"level", ".level", "reservoir.", "reservoir.level;", "a b.c",
                            "x.Y", NULL};
    for (int i = 0; bad_ch[i]; i++)
        assert_false(mon_valid_channel(bad_ch[i]));

    assert_true(mon_valid_totp("012345"));
    assert_false(mon_valid_totp("12345"));
    assert_false(mon_valid_totp("1234567"));
    assert_false(mon_valid_totp("12345a"));
    assert_false(mon_valid_totp("\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93")); /* fullwidth digits */
}

static void test_free_text(void **state)
{
    (void)state;
    const char *ok[] = {"pump 2 tripped", "Chlor < 0.1 mg/L; \xe6\xb0\xb4\xe9\x81\x93",
                        "<script>alert(1)</script>", "it's \"fine\"", "\xf0\x9f\x92\xa7", NULL};
    for (int i = 0; ok[i]; i++)
        assert_true(mon_valid_text(ok[i], strlen(ok[i]), 500));
    const char *bad[] = {"", "tab\there", "line\nbreak", "cr\r", "del\x7f", "\xc0\xaf",
                         "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc2\x85",
                         "\xe2\x80\xa8", "\xc3", "\xff", NULL};
    for (int i = 0; bad[i]; i++)
        assert_false(mon_valid_text(bad[i], strlen(bad[i]), 500));
    /* a NUL inside: the length does not match */
    assert_false(mon_valid_text("ab\0cd", 5, 500));
    char big[502];
    memset(big, 'x', 501);
    big[501] = '\0';
    assert_false(mon_valid_text(big, 501, 500));
    assert_true(mon_valid_text(big, 500, 500) == 0); /* strlen differs from len */
    big[500] = '\0';
    assert_true(mon_valid_text(big, 500, 500));
    assert_true(mon_valid_password("anything goes \x01 here", 20, 256));
    assert_false(mon_valid_password("a\0b", 3, 256));
    assert_false(mon_valid_password("", 0, 256));
}

static void test_numbers_and_dates(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_true(mon_parse_u64("42", 1, 100, &v) && v == 42);
    assert_true(mon_parse_u64("18446744073709551615", 0, UINT64_MAX, &v) && v == UINT64_MAX);
    const char *bad[] = {"", "-1", "+1", "1e3", " 1", "1 ", "0x10", "18446744073709551616",
                         "99999999999999999999", "１", NULL};
    for (int i = 0; bad[i]; i++)
        assert_false(mon_parse_u64(bad[i], 0, UINT64_MAX, &v));
    assert_false(mon_parse_u64("101", 1, 100, &v));
    assert_false(mon_parse_u64(NULL, 0, 1, &v));

    uint64_t ms = 0;
    assert_true(mon_parse_date("2026-11-26", &ms));
    char out[11];
    mon_format_date(ms, out);
    assert_string_equal(out, "2026-11-26");
    assert_int_equal(ms % 86400000u, 0);
    assert_true(mon_parse_date("2024-02-29", &ms));
    const char *bad_d[] = {"2023-02-29", "2026-13-01", "2026-00-10", "2026-01-32", "1999-12-31",
                           "2026-1-01", "2026/01/01", "26-01-01", "2026-01-01T", "'; --", NULL};
    for (int i = 0; bad_d[i]; i++)
        assert_false(mon_parse_date(bad_d[i], &ms));
}

static void test_escaping(void **state)
{
    (void)state;
    char d[32];
    assert_string_equal(mon_safe(d, sizeof d, "a \"b\" c\nd=e"), "a ?b? c?d=e");
    assert_string_equal(mon_safe(d, 4, "abcdef"), "abc");
    assert_string_equal(mon_safe(d, sizeof d, NULL), "");

    char buf[256];
    size_t pos = 0;
    buf[0] = '\0';
    assert_true(mon_csv_text(buf, sizeof buf, &pos, "site \"A\"", 1));
    assert_true(mon_csv_text(buf, sizeof buf, &pos, "=HYPERLINK(\"x\")", 0));
    assert_true(mon_csv_text(buf, sizeof buf, &pos, "-1+2", 0));
    assert_true(mon_csv_number(buf, sizeof buf, &pos, -1.25, 2, 0));
    assert_true(mon_csv_number(buf, sizeof buf, &pos, NAN, 2, 0));
    assert_string_equal(buf, "\"site \"\"A\"\"\",\"'=HYPERLINK(\"\"x\"\")\",\"'-1+2\",-1.25,");
    /* a cell that does not fit is not written in part */
    char small[8];
    pos = 0;
    small[0] = '\0';
    assert_true(mon_csv_text(small, sizeof small, &pos, "ab", 1));
    assert_false(mon_csv_text(small, sizeof small, &pos, "cdefgh", 0));
    assert_string_equal(small, "\"ab\"");
    assert_int_equal(pos, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identifiers),
        cmocka_unit_test(test_free_text),
        cmocka_unit_test(test_numbers_and_dates),
        cmocka_unit_test(test_escaping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
