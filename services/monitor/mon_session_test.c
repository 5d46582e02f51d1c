/* mon_session: random ids and CSRF tokens, idle and absolute ends (the registry token's expiry
 * too), pre-login sessions making room but never live ones, lookups that accept nothing but a
 * well-formed id, and wiping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mon_session.h"

#define MIN 60000u

static void test_ids_are_random_and_found_only_whole(void **state)
{
    (void)state;
    mon_sessions *s = mon_sessions_new(8, 10 * MIN, 30 * MIN, 5 * MIN);
    mon_session *a = NULL, *b = NULL;
    assert_int_equal(mon_session_create(s, MON_LIVE, "10.0.0.1", 1000, 0, &a), CM_OK);
    assert_int_equal(mon_session_create(s, MON_LIVE, "10.0.0.2", 1000, 0, &b), CM_OK);
    assert_int_equal(strlen(a->id), MON_TOKEN_HEX);
    assert_string_not_equal(a->id, b->id);
    assert_string_not_equal(a->csrf, b->csrf);
    assert_string_not_equal(a->id, a->csrf);
    char id[MON_TOKEN_HEX + 1];
    strcpy(id, a->id);
    assert_ptr_equal(mon_session_find(s, id, 2000, NULL, NULL), a);
    assert_ptr_equal(mon_session_peek(s, id, 2000), a);
    /* a prefix, a longer string, upper case, other characters: nothing */
    char bad[MON_TOKEN_HEX + 2];
    snprintf(bad, sizeof bad, "%.*s", MON_TOKEN_HEX - 1, id);
    assert_null(mon_session_find(s, bad, 2000, NULL, NULL));
    snprintf(bad, sizeof bad, "%s0", id);
    assert_null(mon_session_find(s, bad, 2000, NULL, NULL));
    strcpy(bad, id);
    bad[0] = bad[0] == 'a' ? 'A' : (bad[0] >= 'a' ? 'A' : 'a');
    assert_null(mon_session_find(s, bad, 2000, NULL, NULL));
    assert_null(mon_session_find(s, NULL, 2000, NULL, NULL));
    assert_null(mon_session_find(s, "", 2000, NULL, NULL));
    /* the CSRF token: only the session's own, whole */
    assert_true(mon_session_csrf_ok(a, a->csrf));
    assert_false(mon_session_csrf_ok(a, b->csrf));
    assert_false(mon_session_csrf_ok(a, NULL));
    assert_false(mon_session_csrf_ok(a, ""));
    mon_session_end(s, &a);
    assert_null(a);
    assert_null(mon_session_find(s, id, 2000, NULL, NULL));
    mon_sessions_destroy(&s);
    assert_null(s);
}

static void test_sessions_end_when_idle_and_at_their_limit(void **state)
{
    (void)state;
    mon_sessions *s = mon_sessions_new(8, 10 * MIN, 30 * MIN, 5 * MIN);
    mon_session *x = NULL;
    const char *why = NULL;
    char op[65] = "";
    assert_int_equal(mon_session_create(s, MON_LIVE, "", 0, 0, &x), CM_OK);
    snprintf(x->op, sizeof x->op, "ada");
    char id[MON_TOKEN_HEX + 1];
    strcpy(id, x->id);
    /* busy: every 9 minutes a request keeps it, until 30 minutes after login */
    for (uint64_t t = 9 * MIN; t < 30 * MIN; t += 9 * MIN) {
        x = mon_session_find(s, id, t, &why, op);
        assert_non_null(x);
        assert_null(why);
        mon_session_touch(x, t);
    }
    assert_int_equal(mon_session_left_ms(s, x, 27 * MIN), 3 * MIN);
    assert_null(mon_session_find(s, id, 30 * MIN, &why, op));
    assert_string_equal(why, "absolute");
    assert_string_equal(op, "ada");
    assert_null(mon_session_find(s, id, 30 * MIN + 1, &why, op)); /* gone, nothing to report */
    assert_null(why);

    /* idle */
    assert_int_equal(mon_session_create(s, MON_LIVE, "", 0, 0, &x), CM_OK);
    strcpy(id, x->id);
    assert_non_null(mon_session_find(s, id, 10 * MIN - 1, &why, op));
    assert_null(mon_session_peek(s, id, 10 * MIN));
    assert_null(mon_session_find(s, id, 10 * MIN, &why, op));
    assert_string_equal(why, "idle");

    /* the registry's token ends first */
    assert_int_equal(mon_session_create(s, MON_LIVE, "", 0, 7 * MIN, &x), CM_OK);
    strcpy(id, x->id);
    assert_null(mon_session_find(s, id, 7 * MIN, &why, op));
    assert_string_equal(why, "absolute");
    mon_sessions_destroy(&s);
}

static void test_a_full_table_evicts_login_forms_never_operators(void **state)
{
    (void)state;
    mon_sessions *s = mon_sessions_new(4, 10 * MIN, 30 * MIN, 5 * MIN);
    mon_session *x = NULL, *live[4];
    char first_pre[MON_TOKEN_HEX + 1];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(mon_session_create(s, MON_PRELOGIN, "", (uint64_t)i, 0, &x), CM_OK);
        if (i == 0)
            strcpy(first_pre, x->id);
    }
    /* the oldest login form makes room */
    assert_int_equal(mon_session_create(s, MON_LIVE, "", 10, 0, &live[0]), CM_OK);
    assert_null(mon_session_find(s, first_pre, 11, NULL, NULL));
    assert_int_equal(mon_sessions_count(s, MON_PRELOGIN), 3);
    for (int i = 1; i < 4; i++)
        assert_int_equal(mon_session_create(s, MON_LIVE, "", 10, 0, &live[i]), CM_OK);
    assert_int_equal(mon_sessions_count(s, MON_LIVE), 4);
    /* full of operators: refused, nobody is pushed out */
    assert_int_equal(mon_session_create(s, MON_PRELOGIN, "", 20, 0, &x), CM_ERR_UNAVAILABLE);
    assert_int_equal(mon_session_create(s, MON_LIVE, "", 20, 0, &x), CM_ERR_UNAVAILABLE);
    assert_null(x);
    /* an operator's sessions end together (suspension) */
    snprintf(live[1]->op, sizeof live[1]->op, "bob");
    snprintf(live[2]->op, sizeof live[2]->op, "bob");
    assert_int_equal(mon_session_end_operator(s, "bob"), 2);
    assert_int_equal(mon_sessions_count(s, MON_LIVE), 2);
    /* sessions that ended (idle) free their slots */
    for (int i = 0; i < 4; i++)
        assert_int_equal(mon_session_create(s, MON_LIVE, "", 10 * MIN + 10, 0, &x), CM_OK);
    assert_int_equal(mon_sessions_count(s, MON_LIVE), 4);
    mon_sessions_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_are_random_and_found_only_whole),
        cmocka_unit_test(test_sessions_end_when_idle_and_at_their_limit),
        cmocka_unit_test(test_a_full_table_evicts_login_forms_never_operators),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
