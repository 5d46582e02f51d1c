/* archive_cases tests: one case per problem however often the detector flaps, acknowledgement,
 * closing only once the condition cleared and only with cause and action, and past cases of the
 * same kind on the same asset shown with a new one. In-memory SQLite, through cm_sql. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "archive_cases.h"

typedef struct seen {
    int n;
    Suido__AlertCase last;
    char state[16], cause[128], action[64];
    uint32_t occurrences;
    uint64_t case_id;
} seen;

static void collect(void *ctx, const Suido__AlertCase *c)
{
    seen *s = ctx;
    s->n++;
    s->case_id = c->case_id;
    s->occurrences = c->occurrences;
    s->last.active = c->active;
    snprintf(s->state, sizeof s->state, "%s", c->state);
    snprintf(s->cause, sizeof s->cause, "%s", c->cause);
    snprintf(s->action, sizeof s->action, "%s", c->action);
}

static void raise_alert(cm_sql *db, const char *id, int cleared, double value)
{
    Suido__Alert a = SUIDO__ALERT__INIT;
    a.id = (char *)id;
    a.gateway_id = "gw-0001";
    a.site = "site";
    a.channel = "treatment.chlorine";
    a.rule = "limit_l";
    a.severity = SUIDO__SEVERITY__SEVERITY_WARNING;
    a.value = value;
    a.evidence = "below L";
    a.cleared = cleared;
    a.timestamp_ms = 1000;
    assert_int_equal(archive_cases_record(db, &a, 1000), CM_OK);
}

static cm_sql *open_db(void)
{
    cm_sql *db;
    assert_int_equal(cm_sql_open_as(CM_SQL_SQLITE, ":memory:", 0, &db, NULL, 0), CM_OK);
    assert_int_equal(archive_cases_init(db), CM_OK);
    return db;
}

static void test_lifecycle_and_past_cases(void **state)
{
    (void)state;
    cm_sql *db = open_db();
    const char *id = "gw-0001/treatment.chlorine/limit";
    raise_alert(db, id, 0, 0.3);
    raise_alert(db, id, 1, 0.5); /* condition cleared ... */
    raise_alert(db, id, 0, 0.2); /* ... and back before anyone looked: the same case */
    seen s = {0};
    assert_int_equal(archive_cases_list(db, 0, 10, collect, &s), CM_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.occurrences, 2);
    assert_string_equal(s.state, "raised");
    uint64_t first = s.case_id;

    assert_int_equal(archive_cases_ack(db, first, "otto", 2000), CM_OK);
    /* still active: cannot be closed yet */
    assert_int_equal(archive_cases_close(db, first, "otto", "dosing pump air lock",
                                         "bled the pump", NULL, 3000),
                     CM_ERR_DENIED);
    raise_alert(db, id, 1, 0.6);
    /* cause and action are required */
    assert_int_equal(archive_cases_close(db, first, "otto", "", "bled the pump", NULL, 3000),
                     CM_ERR_INVAL);
    assert_int_equal(archive_cases_close(db, first, "otto", "dosing pump air lock",
                                         "bled the pump", NULL, 3000),
                     CM_OK);
    assert_int_equal(archive_cases_close(db, first, "otto", "again", "again", NULL, 3000), CM_ERR_INVAL);
    assert_int_equal(archive_cases_ack(db, first, "otto", 3000), CM_ERR_INVAL);
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_list(db, 0, 10, collect, &s), CM_OK);
    assert_int_equal(s.n, 0); /* nothing open */

    /* the same kind on the same asset again: a new case, which shows the closed one */
    raise_alert(db, id, 0, 0.25);
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_list(db, 0, 10, collect, &s), CM_OK);
    assert_int_equal(s.n, 1);
    assert_true(s.case_id != first);
    uint64_t second = s.case_id;
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_past(db, id, second, 5, collect, &s), CM_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.case_id, first);
    assert_string_equal(s.cause, "dosing pump air lock");
    assert_string_equal(s.action, "bled the pump");
    /* another asset's history is not shown */
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_past(db, "gw-0002/treatment.chlorine/limit", 0, 5, collect,
                                        &s),
                     CM_OK);
    assert_int_equal(s.n, 0);
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_list(db, 1, 10, collect, &s), CM_OK);
    assert_int_equal(s.n, 2);
    assert_int_equal(archive_cases_get(db, 999, collect, &s), CM_ERR_UNKNOWN);
    assert_int_equal(archive_cases_ack(db, 999, "otto", 1), CM_ERR_UNKNOWN);
    cm_sql_close(&db);
}

/* A case whose gateway was revoked or disposed can be closed while its condition is active (it
 * can never clear), and the cause kept with it says so. */
static void test_a_retired_gateways_active_case_closes(void **state)
{
    (void)state;
    cm_sql *db = open_db();
    raise_alert(db, "gw-0001/treatment.chlorine/limit", 0, 0.3);
    seen s = {0};
    assert_int_equal(archive_cases_list(db, 0, 10, collect, &s), CM_OK);
    assert_true(s.last.active);
    assert_int_equal(archive_cases_close(db, s.case_id, "otto", "site closed", "none", "", 2000),
                     CM_ERR_DENIED);
    assert_int_equal(archive_cases_close(db, s.case_id, "otto", "site closed", "none",
                                         "disposed", 2000),
                     CM_OK);
    memset(&s, 0, sizeof s);
    assert_int_equal(archive_cases_get(db, 1, collect, &s), CM_OK);
    assert_string_equal(s.state, "closed");
    assert_string_equal(s.cause, "site closed [closed while active: gateway disposed]");
    cm_sql_close(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle_and_past_cases),
        cmocka_unit_test(test_a_retired_gateways_active_case_closes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
