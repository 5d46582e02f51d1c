/* Unit tests of cm_log_escape: operator or gateway text put inside a quoted value of a log line
 * or an audit detail stays one value on one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cm_log.h"

static void test_plain_text_is_unchanged(void **state)
{
    (void)state;
    char out[64];
    assert_string_equal(cm_log_escape(out, sizeof out, "valve 3 closed, pressure ok"),
                        "valve 3 closed, pressure ok");
    assert_string_equal(cm_log_escape(out, sizeof out, NULL), "");
}

static void test_quotes_backslashes_and_controls_are_escaped(void **state)
{
    (void)state;
    char out[128];
    /* a reason trying to close its value, add a key and start a forged line */
    assert_string_equal(cm_log_escape(out, sizeof out, "x\" result=ok\nlevel=info"),
                        "x\\\" result=ok\\x0alevel=info");
    assert_string_equal(cm_log_escape(out, sizeof out, "a\\\"b"), "a\\\\\\\"b");
    assert_string_equal(cm_log_escape(out, sizeof out, "\r\t\x7f\xc3\xa9"),
                        "\\x0d\\x09\\x7f\\xc3\\xa9");
    /* no unescaped quote and no control character survives */
    const char *nasty = "\"\\\n\"\\\"\x01";
    cm_log_escape(out, sizeof out, nasty);
    for (size_t i = 0; out[i]; i++) {
        assert_true((unsigned char)out[i] >= 0x20 && (unsigned char)out[i] < 0x7f);
        if (out[i] == '"')
            assert_true(i > 0 && out[i - 1] == '\\');
    }
}

static void test_truncation_never_splits_an_escape(void **state)
{
    (void)state;
    char out[6];
    /* "ab" fits, the 4-byte escape of \n would not: cut before it */
    assert_string_equal(cm_log_escape(out, sizeof out, "ab\ncd"), "ab");
    assert_string_equal(cm_log_escape(out, sizeof out, "abcd\""), "abcd");
    assert_string_equal(cm_log_escape(out, sizeof out, "abcdefgh"), "abcde");
    char one[1];
    assert_string_equal(cm_log_escape(one, sizeof one, "abc"), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text_is_unchanged),
        cmocka_unit_test(test_quotes_backslashes_and_controls_are_escaped),
        cmocka_unit_test(test_truncation_never_splits_an_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
