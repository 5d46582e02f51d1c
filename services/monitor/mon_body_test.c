/* mon_body: the monitor's decoding of query arguments, paths, origin headers and JSON bodies,
 * apart from libmicrohttpd: what is accepted, and each refusal with its reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mon_body.h"

static int add(mon_request *rq, const char *k, const char *v)
{
    return mon_query_add(rq, k, strlen(k), v, v ? strlen(v) : 0);
}

static void test_query_arguments(void **state)
{
    (void)state;
    mon_request rq = {0};
    assert_true(add(&rq, "gateway", "gw-0001"));
    assert_true(add(&rq, "all", NULL));
    assert_int_equal(rq.n_args, 2);
    assert_string_equal(rq.args[1].value, "");
    assert_false(rq.args_bad);
    assert_false(add(&rq, "gateway", "gw-0002")); /* a repeated name */
    assert_true(rq.args_bad);

    mon_request r2 = {0};
    char name[40];
    memset(name, 'k', 33);
    name[33] = '\0';
    assert_false(add(&r2, name, "v")); /* a name over 32 bytes */
    mon_request r3 = {0};
    assert_false(mon_query_add(&r3, "a\0b", 3, "v", 1)); /* a NUL inside the name */
    mon_request r4 = {0};
    char value[MON_HTTP_MAX_ARG_LEN + 2];
    memset(value, 'v', sizeof value - 1);
    value[sizeof value - 1] = '\0';
    assert_false(add(&r4, "span", value));
    value[MON_HTTP_MAX_ARG_LEN] = '\0';
    assert_true(add(&r4, "span", value));
    mon_request r5 = {0};
    for (int i = 0; i < MON_HTTP_MAX_ARGS; i++) {
        snprintf(name, sizeof name, "a%d", i);
        char *k = strdup(name);
        assert_true(add(&r5, k, "1"));
    }
    assert_false(add(&r5, "one_more", "1"));
    for (size_t i = 0; i < r5.n_args; i++)
        free((char *)r5.args[i].key);
}

static void test_paths_lists_and_origins(void **state)
{
    (void)state;
    assert_true(mon_path_ok("/"));
    assert_true(mon_path_ok("/api/alerts/close"));
    assert_true(mon_path_ok("/static/app-1.js"));
    const char *bad[] = {"", "api", "/a/../b", "//x", "/a b", "/a%2e", "/a?x", NULL};
    for (int i = 0; bad[i]; i++)
        assert_false(mon_path_ok(bad[i]));
    char long_path[131] = "/";
    memset(long_path + 1, 'a', 128);
    assert_false(mon_path_ok(long_path));

    assert_true(mon_listed("gateway,channel,span", "span"));
    assert_false(mon_listed("gateway,channel,span", "chan"));
    assert_false(mon_listed(NULL, "span"));

    assert_true(mon_same_origin("h:1", "https://h:1", "same-origin"));
    assert_true(mon_same_origin("h:1", NULL, NULL));
    assert_false(mon_same_origin("h:1", "https://evil", NULL));
    assert_false(mon_same_origin("h:1", "http://h:1", NULL));
    assert_false(mon_same_origin(NULL, "https://h:1", NULL));
    assert_false(mon_same_origin("h:1", NULL, "cross-site"));
}

static mon_body_status body(const char *ct, const char *text, const char *keys, json_t **out)
{
    return mon_body_object(ct, text, strlen(text), keys, out);
}

static void test_json_bodies(void **state)
{
    (void)state;
    json_t *j = NULL;
    const char *keys = "case_id,cause,action";
    assert_int_equal(body("application/json", "{\"case_id\":3,\"cause\":\"c\",\"action\":\"a\"}",
                          keys, &j),
                     MON_BODY_OK);
    uint64_t id = 0;
    assert_true(mon_body_id(j, "case_id", &id));
    assert_int_equal(id, 3);
    assert_string_equal(mon_body_text(j, "cause", 500), "c");
    assert_null(mon_body_text(j, "missing", 500));
    json_decref(j);

    assert_int_equal(body("application/json; charset=utf-8", "{\"case_id\":\"42\"}", keys, &j),
                     MON_BODY_OK);
    assert_true(mon_body_id(j, "case_id", &id));
    assert_int_equal(id, 42);
    json_decref(j);

    assert_int_equal(body(NULL, "{}", keys, &j), MON_BODY_CONTENT_TYPE);
    assert_null(j);
    assert_int_equal(body("text/plain", "{}", keys, &j), MON_BODY_CONTENT_TYPE);
    assert_int_equal(body("application/jsonx", "{}", keys, &j), MON_BODY_CONTENT_TYPE);
    assert_int_equal(body("application/json", "[1]", keys, &j), MON_BODY_MALFORMED);
    assert_int_equal(body("application/json", "{\"case_id\":1,\"case_id\":2}", keys, &j),
                     MON_BODY_MALFORMED);
    assert_int_equal(body("application/json", "{\"case_id\":1", keys, &j), MON_BODY_MALFORMED);
    assert_int_equal(body("application/json", "{\"case\":1}", keys, &j), MON_BODY_UNKNOWN_FIELD);
    assert_null(j);

    /* ids: positive integers or decimal strings within INT64_MAX; text: mon_valid_text */
    assert_int_equal(body("application/json",
                          "{\"case_id\":0,\"cause\":\"\\u0007\",\"action\":\"\"}", keys, &j),
                     MON_BODY_OK);
    assert_false(mon_body_id(j, "case_id", &id));
    assert_null(mon_body_text(j, "cause", 500));
    assert_null(mon_body_text(j, "action", 500));
    json_decref(j);
    assert_int_equal(body("application/json", "{\"case_id\":\"9223372036854775808\"}", keys, &j),
                     MON_BODY_OK);
    assert_false(mon_body_id(j, "case_id", &id));
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_arguments),
        cmocka_unit_test(test_paths_lists_and_origins),
        cmocka_unit_test(test_json_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
