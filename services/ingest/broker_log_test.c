/* broker_log tests: real Mosquitto 2.0.11 and plugin log lines (as seen in the suite's broker
 * logs) are classified; ordinary lines are not; the rate limit (cm_ratelimit) passes a budget
 * per window and reports what it suppressed exactly once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker_log.h"
#include "cm_ratelimit.h"

static int classify(const char *line, broker_event *ev)
{
    return broker_log_classify(line, strlen(line), ev);
}

static void test_refusals_become_events(void **state)
{
    (void)state;
    broker_event ev;
    assert_int_equal(classify("OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify "
                              "failed", &ev), 1);
    assert_string_equal(ev.event, "broker_tls_refused");
    assert_string_equal(ev.subject, "");
    assert_int_equal(classify("Client <unknown> disconnected: Protocol error.", &ev), 1);
    assert_string_equal(ev.event, "broker_protocol_error");
    assert_int_equal(classify("suido_plugin: event=refused reason=state_revoked user=gw-0008 "
                              "client_id=gw-0008 address=127.0.0.1 access=connect", &ev), 1);
    assert_string_equal(ev.event, "broker_identity_refused");
    assert_string_equal(ev.subject, "gw-0008");
    assert_int_equal(classify("suido_plugin: event=denied reason=gateway_acl user=gw-0003 "
                              "access=write topic=suido/v1/gw-0004/data", &ev), 1);
    assert_string_equal(ev.event, "broker_access_denied");
    assert_string_equal(ev.subject, "gw-0003");
    assert_int_equal(classify("suido_plugin: event=kick user=gw-0009 reason=state_suspended "
                              "sessions=1", &ev), 1);
    assert_string_equal(ev.event, "broker_session_cut");
    assert_int_equal(classify("Client connection from 127.0.0.1 failed: error:0A0000C1:SSL "
                              "routines::no shared cipher.", &ev), 1);
    assert_string_equal(ev.event, "broker_tls_refused");
    assert_string_equal(ev.subject, "");
    assert_int_equal(classify("Client gw-0004 disconnected due to oversize packet.", &ev), 1);
    assert_string_equal(ev.event, "broker_protocol_error");
    assert_string_equal(ev.subject, "gw-0004");
    assert_int_equal(classify("Client gw-0002 already connected, closing old connection.", &ev),
                     1);
    assert_string_equal(ev.event, "broker_session_takeover");
    assert_string_equal(ev.subject, "gw-0002");
}

static void test_ordinary_lines_are_not_events(void **state)
{
    (void)state;
    broker_event ev;
    assert_int_equal(classify("New connection from 127.0.0.1:40000 on port 23000.", &ev), 0);
    assert_int_equal(classify("New client connected from 127.0.0.1:40000 as gw-0001 (p2, c0, "
                              "k30, u'gw-0001').", &ev), 0);
    assert_int_equal(classify("Client gw-0001 disconnected.", &ev), 0);
    assert_int_equal(classify("suido_plugin: event=state_loaded identities=20", &ev), 0);
    assert_int_equal(broker_log_classify("", 0, &ev), 0);
}

static void test_detail_is_safe_and_bounded(void **state)
{
    (void)state;
    char line[1000];
    memset(line, 'x', sizeof line);
    memcpy(line, "OpenSSL Error\n\"\\", 16);
    broker_event ev;
    assert_int_equal(broker_log_classify(line, sizeof line, &ev), 1);
    assert_int_equal(strlen(ev.detail), sizeof ev.detail - 1);
    assert_null(strchr(ev.detail, '\n'));
    assert_null(strchr(ev.detail, '"'));
    assert_null(strchr(ev.detail, '\\'));
    /* a line that is not NUL-terminated is never read past its length */
    assert_int_equal(broker_log_classify("OpenSSL Errorzzz", 13, &ev), 1);
    assert_string_equal(ev.detail, "OpenSSL Error");
}

/* A line that ends in "Client " right at the end of readable memory (a guard page follows): the
 * subject is looked for within the line only. strncmp read up to 16 bytes past it (found by
 * fuzz/broker_log.c; fuzz/regressions/broker_log/). */
static void test_line_ending_in_client_is_not_read_past(void **state)
{
    (void)state;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(mem != MAP_FAILED);
    assert_int_equal(mprotect(mem + page, page, PROT_NONE), 0);
    static const char text[] = "gw-0003 has exceeded timeout, Client ";
    size_t len = sizeof text - 1;
    char *line = mem + page - len;
    memcpy(line, text, len);
    broker_event ev;
    assert_int_equal(broker_log_classify(line, len, &ev), 1);
    assert_string_equal(ev.event, "broker_client_timeout");
    assert_string_equal(ev.subject, "");
    munmap(mem, 2 * page);
}

static void test_rate_limit_passes_a_budget_and_reports_the_rest_once(void **state)
{
    (void)state;
    cm_ratelimit l;
    cm_ratelimit_init(&l, 10000, 3);
    uint64_t closed = 99;
    int passed = 0;
    for (int i = 0; i < 10; i++)
        passed += cm_ratelimit_take(&l, 1000 + (uint64_t)i, &closed);
    assert_int_equal(passed, 3);
    assert_int_equal(closed, 0);
    /* the next window: the 7 suppressed are reported once, and the budget is back */
    assert_int_equal(cm_ratelimit_take(&l, 12000, &closed), 1);
    assert_int_equal(closed, 7);
    assert_int_equal(cm_ratelimit_take(&l, 12001, &closed), 1);
    assert_int_equal(closed, 0);
    /* a clock going back opens a new window rather than stalling */
    assert_int_equal(cm_ratelimit_take(&l, 500, &closed), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_become_events),
        cmocka_unit_test(test_ordinary_lines_are_not_events),
        cmocka_unit_test(test_detail_is_safe_and_bounded),
        cmocka_unit_test(test_line_ending_in_client_is_not_read_past),
        cmocka_unit_test(test_rate_limit_passes_a_budget_and_reports_the_rest_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
