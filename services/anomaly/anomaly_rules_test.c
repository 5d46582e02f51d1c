/* Unit tests of anomaly_rules: limits with deadband, escalation, range, rate, de-duplication. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "anomaly_rules.h"

static cm_channel level(void)
{
    cm_channel c;
    memset(&c, 0, sizeof c);
    strcpy(c.id, "reservoir.level");
    strcpy(c.unit, "m");
    c.range_min = 0;
    c.range_max = 10;
    c.has_limits = 1;
    c.ll = 0.5;
    c.l = 1.0;
    c.h = 9.0;
    c.hh = 9.5;
    c.deadband = 0.1;
    c.max_rate = 0.1;
    return c;
}

/* Feeds v at t seconds; returns the rules of the events (or "" when none), comma-joined. */
static const char *feed(anomaly_state *s, const cm_channel *c, double v, unsigned t)
{
    static char out[128];
    anomaly_event ev[3];
    int n = anomaly_eval(s, c, v, (uint64_t)t * 1000u, ev);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, ev[i].cleared ? "clear:" : "");
        strcat(out, ev[i].rule);
    }
    return out;
}

static void test_limits_raise_once_and_clear_with_deadband(void **state)
{
    (void)state;
    cm_channel c = level();
    c.max_rate = 0;
    anomaly_state s = {0};
    assert_string_equal(feed(&s, &c, 5.0, 0), "");
    assert_string_equal(feed(&s, &c, 9.2, 10), "limit_h");
    assert_string_equal(feed(&s, &c, 9.3, 20), "");           /* still high: no duplicate */
    assert_string_equal(feed(&s, &c, 8.95, 30), "");          /* inside the deadband */
    assert_string_equal(feed(&s, &c, 9.6, 40), "limit_hh");   /* escalation */
    assert_string_equal(feed(&s, &c, 9.45, 50), "");          /* within deadband of HH */
    assert_string_equal(feed(&s, &c, 9.3, 60), "limit_h");    /* de-escalation */
    assert_string_equal(feed(&s, &c, 8.85, 70), "clear:limit_h");
    assert_string_equal(feed(&s, &c, 0.8, 80), "limit_l");
    assert_string_equal(feed(&s, &c, 0.4, 90), "limit_ll");
    assert_string_equal(feed(&s, &c, 1.05, 100), "limit_l");  /* LL cleared, still within L+db */
    assert_string_equal(feed(&s, &c, 1.2, 110), "clear:limit_l");
    assert_string_equal(feed(&s, &c, 9.7, 120), "limit_hh");  /* straight to HH */
    assert_string_equal(feed(&s, &c, 0.9, 130), "limit_l");   /* other side at once */
}

static void test_physical_range_is_a_sensor_fault(void **state)
{
    (void)state;
    cm_channel c = level();
    c.max_rate = 0;
    anomaly_state s = {0};
    anomaly_event ev[3];
    assert_int_equal(anomaly_eval(&s, &c, 12.0, 0, ev), 1);
    assert_string_equal(ev[0].rule, "physical_range");
    assert_int_equal(ev[0].severity, 3);
    assert_true(ev[0].limit == 10);
    assert_string_equal(feed(&s, &c, 11.0, 1), "");
    assert_string_equal(feed(&s, &c, 5.0, 2), "clear:physical_range");
}

static void test_rate_of_change(void **state)
{
    (void)state;
    cm_channel c = level();
    anomaly_state s = {0};
    assert_string_equal(feed(&s, &c, 5.0, 0), "");
    assert_string_equal(feed(&s, &c, 5.5, 10), "");      /* 0.05 m/s */
    assert_string_equal(feed(&s, &c, 7.5, 20), "rate");  /* 0.2 m/s */
    assert_string_equal(feed(&s, &c, 7.6, 30), "clear:rate");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_raise_once_and_clear_with_deadband),
        cmocka_unit_test(test_physical_range_is_a_sensor_fault),
        cmocka_unit_test(test_rate_of_change),
    };
    return cmocka_run_group_tests_name("anomaly_rules", tests, NULL, NULL);
}
