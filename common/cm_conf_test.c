/* Unit tests of cm_conf: parsing, errors with file and line, the spec check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "cm_conf.h"

static cm_conf *parse(const char *text, char err[CM_CONF_ERRLEN])
{
    cm_conf *c = NULL;
    cm_conf_parse("t.conf", text, strlen(text), &c, err);
    return c;
}

static void test_sections_keys_and_lists(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_conf *c = parse("# c\n[service]\nname = verify # the verifier\n[output  profile]\n"
                       "connect = a, b ,c\nurl = http://x/#frag\n",
                       err);
    assert_non_null(c);
    assert_string_equal(cm_conf_get(c, "service", "name"), "verify");
    assert_int_equal(cm_conf_section_count(c), 2);
    assert_string_equal(cm_conf_section(c, 1), "output profile");
    assert_string_equal(cm_conf_section_name("output profile", "output"), "profile");
    assert_null(cm_conf_section_name("outputs x", "output"));
    char buf[64];
    const char *items[4];
    assert_int_equal(cm_conf_split(cm_conf_get(c, "output profile", "connect"), buf, sizeof buf,
                                   items, 4),
                     3);
    assert_string_equal(items[1], "b");
    assert_int_equal(cm_conf_split("a,b,c", buf, sizeof buf, items, 2), -1);
    assert_int_equal(cm_conf_line(c, "output profile", "connect"), 5);
    assert_string_equal(cm_conf_get(c, "output profile", "url"), "http://x/#frag");
    cm_conf_destroy(&c);
    assert_null(c);
}

static void test_errors_name_file_and_line(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    assert_null(parse("[a]\nx = 1\nx = 2\n", err));
    assert_string_equal(err, "t.conf:3: duplicate key 'x' in [a] (first at line 2)");
    assert_null(parse("x = 1\n", err));
    assert_string_equal(err, "t.conf:1: key 'x' outside any [section]");
    assert_null(parse("[a]\nnot a pair\n", err));
    assert_string_equal(err, "t.conf:2: expected 'key = value'");
    assert_null(parse("[a\n", err));
    assert_string_equal(err, "t.conf:1: malformed section header");
    assert_null(parse("[a]\n[a]\n", err));
    assert_non_null(strstr(err, "t.conf:2: section [a] repeated"));
    cm_conf *c = NULL;
    assert_int_equal(cm_conf_parse("n.conf", "[a]\0x", 5, &c, err), CM_ERR_CONFIG);
    assert_string_equal(err, "n.conf: contains a NUL byte");
    assert_int_equal(cm_conf_load("/nonexistent/x.conf", &c, err), CM_ERR_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/x.conf: cannot open"));
}

static void test_spec_check(void **state)
{
    (void)state;
    static const cm_conf_spec spec[] = {
        {"service", "name", 1, ""},
        {"output", "connect", 1, ""},
        {NULL, NULL, 0, NULL},
    };
    char err[CM_CONF_ERRLEN];
    cm_conf *c = parse("[service]\nname = a\n[output x]\nconnect = b\n", err);
    assert_int_equal(cm_conf_check(c, spec, err), CM_OK);
    cm_conf_destroy(&c);
    c = parse("[service]\nname = a\nnmae = b\n", err);
    assert_int_equal(cm_conf_check(c, spec, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.conf:3: unknown key 'nmae' in [service]");
    cm_conf_destroy(&c);
    c = parse("[service]\nname = a\n[output x]\n", err);
    assert_int_equal(cm_conf_check(c, spec, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.conf:3: [output x] missing required key 'connect'");
    cm_conf_destroy(&c);
    c = parse("[bogus]\nk = v\n", err);
    assert_int_equal(cm_conf_check(c, spec, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.conf:1: unknown section [bogus]");
    cm_conf_destroy(&c);
}

static void test_numbers(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_conf *c = parse("[a]\nn = 12\nbad = 12x\nd = 1.5\nnan = nan\n", err);
    long v;
    double d;
    assert_int_equal(cm_conf_long(c, "a", "n", 0, 0, 100, &v, err), CM_OK);
    assert_int_equal(v, 12);
    assert_int_equal(cm_conf_long(c, "a", "n", 0, 0, 10, &v, err), CM_ERR_CONFIG);
    assert_int_equal(cm_conf_long(c, "a", "bad", 0, 0, 100, &v, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.conf:3: 'bad' must be an integer in [0, 100]");
    assert_int_equal(cm_conf_long(c, "a", "absent", 7, 0, 100, &v, err), CM_OK);
    assert_int_equal(v, 7);
    assert_int_equal(cm_conf_double(c, "a", "d", 0, &d, err), CM_OK);
    assert_true(d == 1.5);
    assert_int_equal(cm_conf_double(c, "a", "nan", 0, &d, err), CM_ERR_CONFIG);
    cm_conf_destroy(&c);
}

/* Site, kind, model and firmware names: nothing that could leave a topic level, a line of
 * gateway.conf or a key=value of a log line. */
static void test_labels(void **state)
{
    (void)state;
    assert_true(cm_valid_label("reservoir-07"));
    assert_true(cm_valid_label("RTU-9"));
    assert_true(cm_valid_label("2.1.0_rc1"));
    assert_false(cm_valid_label(NULL));
    assert_false(cm_valid_label(""));
    assert_false(cm_valid_label("a/b"));    /* another topic level */
    assert_false(cm_valid_label("#"));
    assert_false(cm_valid_label("+"));
    assert_false(cm_valid_label("x\nbroker = ssl://evil:8883")); /* another conf line */
    assert_false(cm_valid_label("a b"));
    assert_false(cm_valid_label("a\"b"));
    assert_false(cm_valid_label("caf\xc3\xa9"));
    char longest[CM_LABEL_MAX + 2];
    memset(longest, 'a', sizeof longest);
    longest[CM_LABEL_MAX] = '\0';
    assert_true(cm_valid_label(longest));
    longest[CM_LABEL_MAX] = 'a';
    longest[CM_LABEL_MAX + 1] = '\0';
    assert_false(cm_valid_label(longest));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sections_keys_and_lists),
        cmocka_unit_test(test_errors_name_file_and_line),
        cmocka_unit_test(test_spec_check),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_labels),
    };
    return cmocka_run_group_tests_name("cm_conf", tests, NULL, NULL);
}
