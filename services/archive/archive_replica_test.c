/* archive_replica tests, the primary's side: inputs logged in a transaction become visible only
 * once it commits (and are forgotten when it rolls back); a standby's request is answered with
 * the contiguous inputs after its position, or held until the next commit; gateway acks wait for
 * a standby that applies and are released by its acknowledgement (at once when it applies
 * nothing); the replication log keeps what a standby has not acknowledged and its newest row;
 * requests that cannot be served are answered with the reason. A real CURVE DEALER plays the
 * standby; the database is in-memory SQLite through cm_sql. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "archive_replica.h"
#include "cm_time.h"

typedef struct released {
    char gw[65];
    uint64_t epoch, seq;
} released;

typedef struct fx {
    cm_svc svc;
    cm_sql *db;
    archive_replica *r;
    void *standby;
    char dir[64];
    released rel[16];
    int n_rel;
} fx;

static cm_err begin(void *ctx) { return cm_sql_begin(((fx *)ctx)->db); }
static cm_err commit(void *ctx) { return cm_sql_commit(((fx *)ctx)->db); }
static void rollback(void *ctx) { cm_sql_rollback(((fx *)ctx)->db); }
static cm_err apply(void *ctx, const archive_repl_input *in)
{
    (void)ctx;
    (void)in;
    return CM_OK;
}
static void audit(void *ctx, const char *event, const char *subject, const char *detail)
{
    (void)ctx;
    (void)event;
    (void)subject;
    (void)detail;
}
static void release(void *ctx, const char *gw, uint64_t epoch, uint64_t seq)
{
    fx *f = ctx;
    released *x = &f->rel[f->n_rel++];
    snprintf(x->gw, sizeof x->gw, "%s", gw);
    x->epoch = epoch;
    x->seq = seq;
}

static void write_key(const char *path, const char *z85)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "%s\n", z85);
    fclose(fp);
}

/* A TCP port nobody listens on now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/archive-replica-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    cm_curve_keypair sb;
    assert_int_equal(zmq_curve_keypair(f->svc.keys.public_z85, f->svc.keys.secret_z85), 0);
    assert_int_equal(zmq_curve_keypair(sb.public_z85, sb.secret_z85), 0);
    char pub[128], text[1024], err[CM_CONF_ERRLEN];
    snprintf(pub, sizeof pub, "%s/standby.pub", f->dir);
    write_key(pub, sb.public_z85);
    int port = free_port();
    snprintf(text, sizeof text,
             "[service]\nname = archive\n[replication]\nrole = primary\n"
             "bind = tcp://127.0.0.1:%d\nallow = standby:%s\nretain_s = 0\n",
             port, pub);
    assert_int_equal(cm_conf_parse("t.conf", text, strlen(text), &f->svc.conf, err), CM_OK);
    snprintf(f->svc.name, sizeof f->svc.name, "archive");
    f->svc.zctx = zmq_ctx_new();
    assert_int_equal(cm_zap_start(f->svc.zctx, &f->svc.zap), CM_OK);
    f->svc.metrics = cm_metrics_new("archive", NULL);
    assert_int_equal(cm_sql_open_as(CM_SQL_SQLITE, ":memory:", 0, &f->db, NULL, 0), CM_OK);
    archive_repl_hooks hooks = {.ctx = f, .begin = begin, .commit = commit, .rollback = rollback,
                                .apply = apply, .audit = audit, .release_ack = release};
    assert_int_equal(archive_replica_new(&f->svc, f->db, &hooks, &f->r, err), CM_OK);
    assert_int_equal(archive_replica_logging(f->r), 1);
    assert_string_equal(archive_replica_role(f->r), "primary");
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    assert_int_equal(cm_zsock_client(f->svc.zctx, ZMQ_DEALER, ep, f->svc.keys.public_z85, &sb,
                                     &f->standby),
                     CM_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    zmq_close(f->standby);
    archive_replica_destroy(&f->r);
    cm_sql_close(&f->db);
    cm_zap_stop(&f->svc.zap);
    zmq_ctx_term(f->svc.zctx);
    cm_metrics_destroy(&f->svc.metrics);
    cm_conf_destroy(&f->svc.conf);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Logs n inputs "input-<k>" in one transaction and commits (or rolls back). */
static void log_inputs(fx *f, int n, int keep)
{
    assert_int_equal(cm_sql_begin(f->db), CM_OK);
    for (int i = 0; i < n; i++) {
        char body[32];
        int len = snprintf(body, sizeof body, "input-%d", i);
        assert_int_equal(archive_replica_log(f->r, "stage", "profile", cm_now_ms(),
                                             (const uint8_t *)body, (size_t)len),
                         CM_OK);
    }
    if (keep) {
        assert_int_equal(cm_sql_commit(f->db), CM_OK);
        archive_replica_committed(f->r);
    } else {
        cm_sql_rollback(f->db);
        archive_replica_rolled_back(f->r);
    }
}

static void ask_as(fx *f, uint64_t after, uint64_t after_ms, uint32_t max)
{
    Suido__ReplRequest q = SUIDO__REPL_REQUEST__INIT;
    q.after = after;
    q.after_ms = after_ms;
    q.max = max;
    assert_int_equal(cm_zsend_pb(f->standby, &q.base, 0), CM_OK);
}

static void ask(fx *f, uint64_t after, uint32_t max) { ask_as(f, after, 0, max); }

/* The primary's answer within wait_ms (serving and ticking meanwhile), or NULL. */
static Suido__ReplReply *answer(fx *f, int wait_ms)
{
    for (int t = 0; t < wait_ms; t += 10) {
        archive_replica_serve(f->r);
        archive_replica_tick(f->r);
        zmq_pollitem_t it = {.socket = f->standby, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 10) == 1) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            assert_true(zmq_msg_recv(&m, f->standby, 0) >= 0);
            Suido__ReplReply *rep =
                suido__repl_reply__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
            zmq_msg_close(&m);
            assert_non_null(rep);
            return rep;
        }
    }
    return NULL;
}

static void test_committed_inputs_are_served_in_order_rolled_back_ones_never(void **state)
{
    fx *f = *state;
    log_inputs(f, 2, 0); /* rolled back: their ids are used again */
    log_inputs(f, 3, 1);
    ask(f, 0, 500);
    Suido__ReplReply *rep = answer(f, 5000);
    assert_non_null(rep);
    assert_int_equal(rep->status, 0);
    assert_int_equal(rep->after, 0);
    assert_int_equal(rep->head, 3);
    assert_int_equal(rep->n_records, 3);
    for (size_t i = 0; i < 3; i++) {
        char want[32];
        snprintf(want, sizeof want, "input-%zu", i);
        assert_int_equal(rep->records[i]->id, i + 1);
        assert_string_equal(rep->records[i]->kind, "stage");
        assert_string_equal(rep->records[i]->peer, "profile");
        assert_int_equal(rep->records[i]->body.len, strlen(want));
        assert_memory_equal(rep->records[i]->body.data, want, strlen(want));
    }
    suido__repl_reply__free_unpacked(rep, NULL);

    /* at most max, from where the standby stands */
    ask(f, 1, 1);
    rep = answer(f, 5000);
    assert_int_equal(rep->n_records, 1);
    assert_int_equal(rep->records[0]->id, 2);
    suido__repl_reply__free_unpacked(rep, NULL);

    /* nothing new: held until the next commit, then answered with it */
    ask(f, 3, 500);
    assert_null(answer(f, 300));
    log_inputs(f, 1, 1);
    rep = answer(f, 5000);
    assert_non_null(rep);
    assert_int_equal(rep->n_records, 1);
    assert_int_equal(rep->records[0]->id, 4);
    suido__repl_reply__free_unpacked(rep, NULL);

    Suido__ReplicationStatus *st;
    archive_replica_status(f->r, &st);
    assert_string_equal(st->role, "primary");
    assert_int_equal(st->position, 4);
    assert_int_equal(st->n_standbys, 1);
    assert_string_equal(st->standbys[0]->name, "standby");
    assert_int_equal(st->standbys[0]->acked, 3);
    assert_int_equal(st->standbys[0]->behind, 1);
    assert_true(st->standbys[0]->live);
}

static void test_gateway_acks_wait_for_the_standby_that_applies(void **state)
{
    fx *f = *state;
    /* no standby has asked yet: acks go out at once */
    log_inputs(f, 2, 1);
    assert_int_equal(archive_replica_hold_ack(f->r, "gw-0001", 7, 1), 0);
    ask(f, 0, 500);
    Suido__ReplReply *rep = answer(f, 5000);
    assert_int_equal(rep->n_records, 2);
    suido__repl_reply__free_unpacked(rep, NULL);

    /* a live standby at 0: the ack of a commit of inputs 3..4 waits for it */
    log_inputs(f, 2, 1);
    assert_int_equal(archive_replica_hold_ack(f->r, "gw-0001", 7, 5), 1);
    assert_int_equal(f->n_rel, 0);
    ask(f, 2, 500); /* acknowledges 1..2: not enough */
    rep = answer(f, 5000);
    assert_int_equal(rep->n_records, 2);
    suido__repl_reply__free_unpacked(rep, NULL);
    assert_int_equal(f->n_rel, 0);
    ask(f, 4, 500); /* acknowledges the commit: released */
    assert_null(answer(f, 200));
    assert_int_equal(f->n_rel, 1);
    assert_string_equal(f->rel[0].gw, "gw-0001");
    assert_int_equal(f->rel[0].epoch, 7);
    assert_int_equal(f->rel[0].seq, 5);

    /* a standby that stopped applying (asks for nothing) holds nothing back */
    log_inputs(f, 1, 1);
    rep = answer(f, 5000); /* the held request, answered by the commit */
    assert_int_equal(rep->n_records, 1);
    assert_int_equal(rep->records[0]->id, 5);
    suido__repl_reply__free_unpacked(rep, NULL);
    assert_int_equal(archive_replica_hold_ack(f->r, "gw-0002", 8, 9), 1);
    ask(f, 4, 0);
    rep = answer(f, 5000);
    assert_non_null(rep);
    assert_int_equal(rep->n_records, 0);
    assert_int_equal(rep->head, 5);
    suido__repl_reply__free_unpacked(rep, NULL);
    assert_int_equal(f->n_rel, 2);
    assert_string_equal(f->rel[1].gw, "gw-0002");
    assert_int_equal(archive_replica_hold_ack(f->r, "gw-0002", 8, 10), 0);
}

static void test_the_log_keeps_what_is_unacknowledged_and_its_newest_row(void **state)
{
    fx *f = *state;
    log_inputs(f, 5, 1);
    usleep(20000); /* retain_s = 0: older than now */
    ask(f, 3, 500); /* acknowledges 1..3, which the next tick removes but for the newest */
    Suido__ReplReply *rep = answer(f, 5000);
    assert_int_equal(rep->n_records, 2);
    suido__repl_reply__free_unpacked(rep, NULL);
    cm_sql_stmt *st;
    assert_int_equal(cm_sql_prepare(f->db, "SELECT min(id), max(id) FROM replog", &st), CM_OK);
    assert_int_equal(cm_sql_step(st), CM_SQL_ROW);
    assert_int_equal(cm_sql_column_int64(st, 0), 4);
    assert_int_equal(cm_sql_column_int64(st, 1), 5);
    cm_sql_finalize(&st);
    /* a standby that needs what is gone is told so, and told to be seeded again */
    ask(f, 1, 500);
    rep = answer(f, 5000);
    assert_int_equal(rep->status, CM_ERR_UNKNOWN);
    assert_non_null(strstr(rep->error, "no longer kept"));
    assert_int_equal(rep->n_records, 0);
    suido__repl_reply__free_unpacked(rep, NULL);
}

static void test_requests_that_cannot_be_served_are_answered_with_the_reason(void **state)
{
    fx *f = *state;
    log_inputs(f, 2, 1);
    /* at a position this primary has, but with another input there: another history */
    ask_as(f, 1, 12345, 500);
    Suido__ReplReply *rep = answer(f, 5000);
    assert_int_equal(rep->status, CM_ERR_INVAL);
    assert_non_null(strstr(rep->error, "another history"));
    suido__repl_reply__free_unpacked(rep, NULL);
    /* the right input at the position: served */
    cm_sql_stmt *st;
    assert_int_equal(cm_sql_prepare(f->db, "SELECT ts_ms FROM replog WHERE id = 1", &st), CM_OK);
    assert_int_equal(cm_sql_step(st), CM_SQL_ROW);
    uint64_t ts1 = (uint64_t)cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    ask_as(f, 1, ts1, 500);
    rep = answer(f, 5000);
    assert_int_equal(rep->status, 0);
    assert_int_equal(rep->n_records, 1);
    suido__repl_reply__free_unpacked(rep, NULL);
    ask(f, 9, 500); /* ahead of this primary: another history */
    rep = answer(f, 5000);
    assert_int_equal(rep->status, CM_ERR_INVAL);
    assert_non_null(strstr(rep->error, "ahead"));
    suido__repl_reply__free_unpacked(rep, NULL);
    assert_int_equal(zmq_send(f->standby, "\xff\xff\xff", 3, 0), 3);
    rep = answer(f, 5000);
    assert_int_equal(rep->status, CM_ERR_DECODE);
    suido__repl_reply__free_unpacked(rep, NULL);
    /* neither counted as a live standby that acks wait for */
    assert_int_equal(archive_replica_hold_ack(f->r, "gw-0001", 1, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_committed_inputs_are_served_in_order_rolled_back_ones_never, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gateway_acks_wait_for_the_standby_that_applies,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_the_log_keeps_what_is_unacknowledged_and_its_newest_row, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_requests_that_cannot_be_served_are_answered_with_the_reason, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
