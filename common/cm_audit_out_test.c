/* cm_audit_out_test: unit tests of the audit output (common/cm_audit_out.c) over a real ZeroMQ
 * PUSH/PULL pair on loopback TCP, the PULL standing for the archive: sent at once while the
 * archive is there; spooled in order, with their own times, while it is not, and delivered oldest
 * first when it comes; a new event waits behind spooled ones; the archive going away and coming
 * back; a flush that stops when the archive is full and goes on later; the bound (the oldest
 * kept, the new refused and counted); the spool kept across a close and reopen; two threads
 * recording at once; and a spool that cannot be opened (no folder, a directory, not a database,
 * another database, in use) refused with a reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

typedef struct fx {
    char dir[64];
    char path[128];
    char endpoint[64]; /* the archive's: loopback TCP, so that a connection comes and goes */
    void *ctx;
    void *archive;   /* the PULL, NULL while "the archive is down" */
    void *mon;       /* events of the PUSH handed to the output (connected, disconnected) */
    cm_audit_out *a; /* the output under test, closed by teardown whatever happened */
    cm_metrics *mx;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/audit-out-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof f->path, "%s/audit-spool.db", f->dir);
    f->ctx = zmq_ctx_new();
    f->mx = cm_metrics_new("test", NULL);
    if (!f->ctx || !f->mx)
        return -1;
    /* a free port, learnt by a plain socket whose close is done when close returns (a ZeroMQ
     * listener lingers a moment after zmq_close, and would take the first connection) */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    close(fd);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%u", ntohs(sa.sin_port));
    *state = f;
    return 0;
}

/* Closes a test socket without lingering; NULLs *sock. */
static void close_now(void **sock)
{
    if (*sock) {
        int linger = 0;
        zmq_setsockopt(*sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(*sock);
        *sock = NULL;
    }
}

static void archive_down(fx *f) { close_now(&f->archive); }

static int teardown(void **state)
{
    fx *f = *state;
    cm_audit_out_destroy(&f->a);
    close_now(&f->archive);
    close_now(&f->mon);
    zmq_ctx_term(f->ctx);
    cm_metrics_destroy(&f->mx);
    static const char *const side[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof side / sizeof side[0]; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->path, side[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* The archive's input, bound (again) with a receive high-water mark of hwm frames (0: libzmq's
 * default). */
static void archive_up(fx *f, int hwm)
{
    f->archive = zmq_socket(f->ctx, ZMQ_PULL);
    assert_non_null(f->archive);
    if (hwm)
        assert_int_equal(zmq_setsockopt(f->archive, ZMQ_RCVHWM, &hwm, sizeof hwm), 0);
    int rc = -1;
    for (int i = 0; i < 100 && (rc = zmq_bind(f->archive, f->endpoint)) != 0; i++)
        usleep(20000); /* the port of the archive just closed may take a moment */
    assert_int_equal(rc, 0);
}

/* Waits (up to 5 s) for the monitored PUSH to report event (ZMQ_EVENT_*), then a little more:
 * libzmq reports it from its I/O thread before the socket itself takes the new connection (or
 * drops the lost one), which it does at its next send. */
static void wait_for(fx *f, int event)
{
    for (;;) {
        zmq_pollitem_t it = {.socket = f->mon, .events = ZMQ_POLLIN};
        assert_true(zmq_poll(&it, 1, 5000) == 1);
        zmq_msg_t head, addr;
        zmq_msg_init(&head);
        zmq_msg_init(&addr);
        assert_true(zmq_msg_recv(&head, f->mon, 0) >= 6);
        assert_true(zmq_msg_recv(&addr, f->mon, 0) >= 0);
        uint16_t got;
        memcpy(&got, zmq_msg_data(&head), sizeof got);
        zmq_msg_close(&head);
        zmq_msg_close(&addr);
        if (got == event) {
            usleep(50000);
            return;
        }
    }
}

/* The PUSH can hand frames to the archive (its connection is established). */
static void wait_connected(fx *f) { wait_for(f, ZMQ_EVENT_HANDSHAKE_SUCCEEDED); }

/* A PUSH as cm_audit_out_start makes it: it sends only on an established connection. */
static void *push(fx *f, const char *endpoint, int hwm)
{
    static int n;
    void *s = zmq_socket(f->ctx, ZMQ_PUSH);
    int one = 1, linger = 0, ivl = 10;
    assert_non_null(s);
    assert_int_equal(zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof one), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl), 0);
    if (hwm)
        assert_int_equal(zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm), 0);
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://audit-out-monitor-%d", n++);
    close_now(&f->mon);
    assert_int_equal(zmq_socket_monitor(s, mon, ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                                    ZMQ_EVENT_DISCONNECTED),
                     0);
    f->mon = zmq_socket(f->ctx, ZMQ_PAIR);
    assert_int_equal(zmq_connect(f->mon, mon), 0);
    assert_int_equal(zmq_connect(s, endpoint ? endpoint : f->endpoint), 0);
    return s;
}

/* Opens the output under test as f->a, its PUSH connected to endpoint (NULL: the archive's). */
static cm_audit_out *open_on(fx *f, const char *endpoint, uint64_t max_events, int hwm)
{
    void *s = push(f, endpoint, hwm);
    char why[256];
    assert_null(f->a);
    assert_int_equal(cm_audit_out_open(&s, f->path, max_events, f->mx, &f->a, why, sizeof why),
                     CM_OK);
    assert_null(s); /* taken over */
    assert_non_null(f->a);
    return f->a;
}

static cm_audit_out *open_ok(fx *f, uint64_t max_events) { return open_on(f, NULL, max_events, 0); }

static uint64_t metric(fx *f, const char *name)
{
    return cm_metric_value(cm_metric_counter(f->mx, name, ""));
}

/* The next audit event the archive receives within ms, or NULL; the caller frees it with
 * suido__stage_message__free_unpacked. */
static Suido__StageMessage *receive(fx *f, long ms)
{
    zmq_pollitem_t it = {.socket = f->archive, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, ms) <= 0)
        return NULL;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    assert_true(zmq_msg_recv(&msg, f->archive, 0) >= 0);
    Suido__StageMessage *m =
        suido__stage_message__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
    zmq_msg_close(&msg);
    assert_non_null(m);
    assert_non_null(m->audit);
    return m;
}

/* The archive receives exactly these events (by subject), in this order, and nothing more. */
static void expect_subjects(fx *f, const char *const *subjects, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        Suido__StageMessage *m = receive(f, 2000);
        assert_non_null(m);
        assert_string_equal(m->audit->subject, subjects[i]);
        suido__stage_message__free_unpacked(m, NULL);
    }
    assert_null(receive(f, 20));
}

/* An event reaches an archive that is there at once, and leaves nothing in the spool. */
static void test_sent_at_once_when_the_archive_is_there(void **state)
{
    fx *f = *state;
    archive_up(f, 0);
    cm_audit_out *a = open_ok(f, 100);
    wait_connected(f);
    assert_int_equal(cm_audit_out_record(a, "registry", "operator_added", "admin", "suidoctl",
                                         "role=admin"),
                     CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 0);
    Suido__StageMessage *m = receive(f, 2000);
    assert_non_null(m);
    assert_string_equal(m->audit->source, "registry");
    assert_string_equal(m->audit->event, "operator_added");
    assert_string_equal(m->audit->subject, "admin");
    assert_string_equal(m->audit->actor, "suidoctl");
    assert_string_equal(m->audit->detail, "role=admin");
    suido__stage_message__free_unpacked(m, NULL);
    assert_int_equal(metric(f, "suido_audit_delivered_late_total"), 0);
    cm_audit_out_destroy(&f->a);
    assert_null(f->a);
}

/* While the archive is down events are spooled with their own time and every field; when it
 * comes, a flush delivers them oldest first, and an event made before that flush waits behind
 * them instead of overtaking them. */
static void test_spooled_in_order_and_delivered_when_the_archive_comes(void **state)
{
    fx *f = *state;
    cm_audit_out *a = open_ok(f, 100);
    assert_int_equal(cm_audit_out_record(a, "registry", "profile_changed", "profile", NULL, NULL),
                     CM_OK);
    usleep(5000); /* distinct times */
    assert_int_equal(cm_audit_out_record(a, "registry", "operator_added", "admin", "suidoctl",
                                         "role=admin"),
                     CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 2);
    assert_int_equal(cm_metric_value(cm_metric_gauge(f->mx, "suido_audit_spooled", "")), 2);
    assert_int_equal(cm_audit_out_flush(a), 0); /* nobody to send to: kept */
    assert_int_equal(cm_audit_out_spooled(a), 2);

    archive_up(f, 0);
    wait_connected(f);
    /* the archive is there, but two events wait: this one goes behind them */
    assert_int_equal(cm_audit_out_record(a, "registry", "login", "admin", "admin", ""), CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 3);
    assert_null(receive(f, 20));

    assert_int_equal(cm_audit_out_flush(a), 3);
    assert_int_equal(cm_audit_out_spooled(a), 0);
    Suido__StageMessage *m1 = receive(f, 2000), *m2 = receive(f, 2000), *m3 = receive(f, 2000);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_non_null(m3);
    assert_string_equal(m1->audit->event, "profile_changed");
    assert_string_equal(m1->audit->actor, "registry"); /* a NULL actor is the source */
    assert_string_equal(m1->audit->detail, "");
    assert_string_equal(m2->audit->event, "operator_added");
    assert_string_equal(m2->audit->subject, "admin");
    assert_string_equal(m2->audit->actor, "suidoctl");
    assert_string_equal(m2->audit->detail, "role=admin");
    assert_string_equal(m3->audit->event, "login");
    /* each keeps the time it was made, not the time it was sent */
    assert_true(m1->audit->ts_ms < m2->audit->ts_ms);
    assert_true(m2->audit->ts_ms <= m3->audit->ts_ms);
    assert_true(m1->received_ms >= m3->audit->ts_ms);
    suido__stage_message__free_unpacked(m1, NULL);
    suido__stage_message__free_unpacked(m2, NULL);
    suido__stage_message__free_unpacked(m3, NULL);
    assert_null(receive(f, 20));
    assert_int_equal(metric(f, "suido_audit_delivered_late_total"), 3);
    assert_int_equal(cm_metric_value(cm_metric_gauge(f->mx, "suido_audit_spooled", "")), 0);

    /* empty again: the next one goes at once */
    assert_int_equal(cm_audit_out_record(a, "registry", "logout", "admin", "admin", ""), CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 0);
    expect_subjects(f, (const char *const[]){"admin"}, 1);
}

/* The archive goes away while the process runs: what is made meanwhile is spooled, not lost, and
 * arrives in order, after what came before, when the archive is back. */
static void test_the_archive_going_away_and_coming_back(void **state)
{
    fx *f = *state;
    archive_up(f, 0);
    cm_audit_out *a = open_ok(f, 100);
    wait_connected(f);
    assert_int_equal(cm_audit_out_record(a, "gate", "command_sent", "c0", "op", ""), CM_OK);
    expect_subjects(f, (const char *const[]){"c0"}, 1);
    archive_down(f);
    wait_for(f, ZMQ_EVENT_DISCONNECTED);
    assert_int_equal(cm_audit_out_record(a, "gate", "command_result", "c1", "gw", ""), CM_OK);
    assert_int_equal(cm_audit_out_record(a, "gate", "command_sent", "c2", "op", ""), CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 2);
    assert_int_equal(cm_audit_out_flush(a), 0);
    archive_up(f, 0);
    wait_connected(f);
    assert_int_equal(cm_audit_out_flush(a), 2);
    expect_subjects(f, (const char *const[]){"c1", "c2"}, 2);
    assert_int_equal(metric(f, "suido_audit_delivered_late_total"), 2);
    /* and again, on a spool that was emptied: a new event is never taken for one already sent */
    archive_down(f);
    wait_for(f, ZMQ_EVENT_DISCONNECTED);
    assert_int_equal(cm_audit_out_record(a, "gate", "command_result", "c3", "gw", ""), CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 1);
    archive_up(f, 0);
    wait_connected(f);
    assert_int_equal(cm_audit_out_flush(a), 1);
    expect_subjects(f, (const char *const[]){"c3"}, 1);
}

/* An archive that stops taking frames (full: it does not read) stops the flush where it is; what
 * was not taken stays spooled and follows in order once the archive reads again. (inproc, bound
 * first: the pipe holds two frames, one per side.) */
static void test_a_flush_stops_when_sends_fail_and_goes_on_later(void **state)
{
    fx *f = *state;
    cm_audit_out *a = open_ok(f, 100);
    static const char *const subj[] = {"e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"};
    for (int i = 0; i < 8; i++)
        assert_int_equal(cm_audit_out_record(a, "gate", "command_sent", subj[i], "op", ""),
                         CM_OK);
    assert_int_equal(cm_audit_out_spooled(a), 8);
    cm_audit_out_destroy(&f->a); /* again, on a PUSH whose peer takes two frames at most */
    snprintf(f->endpoint, sizeof f->endpoint, "inproc://archive-full");
    archive_up(f, 1);
    a = open_on(f, NULL, 100, 1);
    assert_int_equal(cm_audit_out_spooled(a), 8);
    size_t first = cm_audit_out_flush(a);
    assert_true(first >= 1 && first < 8);
    assert_int_equal(cm_audit_out_spooled(a), 8 - first);
    assert_int_equal(metric(f, "suido_audit_delivered_late_total"), first);
    /* the archive reads; flushes go on where they stopped */
    for (int i = 0; i < 8; i++) {
        Suido__StageMessage *m = receive(f, 20);
        for (int t = 0; t < 100 && !m; t++) {
            cm_audit_out_flush(a);
            m = receive(f, 20);
        }
        assert_non_null(m);
        assert_string_equal(m->audit->subject, subj[i]);
        suido__stage_message__free_unpacked(m, NULL);
    }
    assert_int_equal(cm_audit_out_spooled(a), 0);
    assert_null(receive(f, 20));
}

/* A full spool keeps its oldest events and refuses new ones, counted; room made by delivery
 * takes new events again. */
static void test_a_full_spool_keeps_the_oldest_and_refuses_new_events(void **state)
{
    fx *f = *state;
    cm_audit_out *a = open_ok(f, 3);
    static const char *const subj[] = {"s0", "s1", "s2", "s3", "s4"};
    for (int i = 0; i < 5; i++)
        assert_int_equal(cm_audit_out_record(a, "ingest", "broker_tls_refused", subj[i], NULL, ""),
                         i < 3 ? CM_OK : CM_ERR_DB);
    assert_int_equal(cm_audit_out_spooled(a), 3);
    assert_int_equal(metric(f, "suido_audit_spool_dropped_total"), 2);
    archive_up(f, 0);
    wait_connected(f);
    assert_int_equal(cm_audit_out_flush(a), 3);
    expect_subjects(f, subj, 3);
    assert_int_equal(cm_audit_out_record(a, "ingest", "broker_tls_refused", "s5", NULL, ""), CM_OK);
    expect_subjects(f, (const char *const[]){"s5"}, 1);
    assert_int_equal(metric(f, "suido_audit_spool_dropped_total"), 2);
}

/* What a process could not send stays in the file across a close (an orderly stop, whose last
 * flush finds no archive) and is delivered, first and in order, by the next one. */
static void test_the_spool_is_kept_across_a_restart(void **state)
{
    fx *f = *state;
    cm_audit_out *a = open_ok(f, 100);
    assert_int_equal(cm_audit_out_record(a, "registry", "profile_changed", "p1", NULL, NULL),
                     CM_OK);
    assert_int_equal(cm_audit_out_record(a, "registry", "operator_added", "p2", NULL, NULL),
                     CM_OK);
    cm_audit_out_destroy(&f->a);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    a = open_ok(f, 100);
    assert_int_equal(cm_audit_out_spooled(a), 2);
    assert_int_equal(cm_metric_value(cm_metric_gauge(f->mx, "suido_audit_spooled", "")), 2);
    assert_int_equal(cm_audit_out_record(a, "registry", "login", "p3", NULL, NULL), CM_OK);
    archive_up(f, 0);
    wait_connected(f);
    assert_int_equal(cm_audit_out_flush(a), 3);
    expect_subjects(f, (const char *const[]){"p1", "p2", "p3"}, 3);
    cm_audit_out_destroy(&f->a);
    a = open_ok(f, 100);
    assert_int_equal(cm_audit_out_spooled(a), 0); /* delivered ones are gone for good */
}

typedef struct writer {
    cm_audit_out *a;
    char name[8];
} writer;

static void *write_many(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < 50; i++) {
        char subject[32];
        snprintf(subject, sizeof subject, "%s-%02d", w->name, i);
        if (cm_audit_out_record(w->a, "ingest", "broker_access_denied", subject, NULL, "") != CM_OK)
            return (void *)1;
        if (i % 10 == 0)
            usleep(1000);
    }
    return NULL;
}

/* Two threads record at once (Paho's thread and the main one) while flushes run and the archive
 * comes: nothing is lost and each thread's events arrive in its order. */
static void test_two_threads_record_at_once(void **state)
{
    fx *f = *state;
    cm_audit_out *a = open_ok(f, 1000);
    writer w[2] = {{a, "a"}, {a, "b"}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, write_many, &w[i]), 0);
    archive_up(f, 0);
    for (int i = 0; i < 20; i++) {
        cm_audit_out_flush(a);
        usleep(1000);
    }
    for (int i = 0; i < 2; i++) {
        void *rc = NULL;
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    for (int i = 0; i < 500 && cm_audit_out_spooled(a) > 0; i++) {
        cm_audit_out_flush(a);
        usleep(10000);
    }
    assert_int_equal(cm_audit_out_spooled(a), 0);
    int next[2] = {0, 0};
    for (int i = 0; i < 100; i++) {
        Suido__StageMessage *m = receive(f, 2000);
        assert_non_null(m);
        int who = m->audit->subject[0] == 'a' ? 0 : 1;
        assert_int_equal(atoi(m->audit->subject + 2), next[who]++);
        suido__stage_message__free_unpacked(m, NULL);
    }
    assert_null(receive(f, 20));
}

static cm_err open_fails(fx *f, const char *path, char *why, size_t len)
{
    void *s = push(f, NULL, 0);
    cm_audit_out *a = NULL;
    cm_err rc = cm_audit_out_open(&s, path, 100, f->mx, &a, why, len);
    assert_null(s); /* closed on failure too */
    assert_null(a);
    return rc;
}

/* A spool that cannot be opened is refused with a reason, never half used. */
static void test_a_spool_that_cannot_be_opened_is_refused(void **state)
{
    fx *f = *state;
    char why[256], p[160];
    snprintf(p, sizeof p, "%s/missing/audit-spool.db", f->dir);
    assert_int_equal(open_fails(f, p, why, sizeof why), CM_ERR_IO);
    assert_true(strstr(why, "No such file") != NULL);
    assert_int_equal(open_fails(f, f->dir, why, sizeof why), CM_ERR_IO); /* a directory */

    /* not a database */
    int fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    char junk[4096];
    memset(junk, 'x', sizeof junk);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    assert_int_equal(open_fails(f, f->path, why, sizeof why), CM_ERR_DB);
    assert_true(*why);
    unlink(f->path);

    /* another database named by mistake is left alone */
    cm_sql *db = NULL;
    assert_int_equal(cm_sql_open(f->path, 0, &db), CM_OK);
    assert_int_equal(cm_sql_exec(db, "CREATE TABLE operators(id TEXT)"), CM_OK);
    cm_sql_close(&db);
    assert_int_equal(open_fails(f, f->path, why, sizeof why), CM_ERR_DB);
    assert_true(strstr(why, "not an audit spool") != NULL);
    static const char *const side[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, side[i]);
        unlink(p);
    }

    /* one process per spool */
    open_ok(f, 100);
    assert_int_equal(open_fails(f, f->path, why, sizeof why), CM_ERR_DENIED);
    assert_true(strstr(why, "in use") != NULL);
    cm_audit_out_destroy(&f->a);
    open_ok(f, 100); /* free again once closed */
}

/* The service-level calls take a missing output (no [output archive]) as "audit nothing". */
static void test_no_output_takes_nothing(void **state)
{
    (void)state;
    assert_int_equal(cm_audit_out_record(NULL, "registry", "login", "x", "x", ""), CM_OK);
    assert_int_equal(cm_audit_out_flush(NULL), 0);
    cm_audit_out *a = NULL;
    cm_audit_out_destroy(&a);
}

int main(void)
{
    cm_log_init("cm_audit_out_test", CM_LOG_ERROR); /* refusals of the tests' own making show */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sent_at_once_when_the_archive_is_there, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_spooled_in_order_and_delivered_when_the_archive_comes,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_archive_going_away_and_coming_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_flush_stops_when_sends_fail_and_goes_on_later,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_full_spool_keeps_the_oldest_and_refuses_new_events,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_spool_is_kept_across_a_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_threads_record_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_spool_that_cannot_be_opened_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_output_takes_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
