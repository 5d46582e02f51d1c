/* Unit tests of cm_zmq's endpoints that name a host: a PUSH output follows every address of its
 * name (replicas appearing and vanishing), a server binds the address of its name that is its
 * own. The names come from an injected resolver, the addresses are loopback ones (127.0.0.2-5,
 * all local on Linux), and real CURVE sockets carry the frames. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <zmq.h>

#include "cm_zmq.h"
#include "suido.pb-c.h"

/* ---------------------------------------------------------------- the injected DNS */

static const char *g_name = "svc-a";
static const char *g_addrs[4];
static int g_n;

static int fake_resolve(const char *host, char addrs[][CM_ZADDR_LEN], int max)
{
    if (strcmp(host, "own-name") == 0) { /* a foreign address first, then ours */
        snprintf(addrs[0], CM_ZADDR_LEN, "192.0.2.1");
        snprintf(addrs[1], CM_ZADDR_LEN, "127.0.0.5");
        return 2;
    }
    if (strcmp(host, "not-here") == 0) {
        snprintf(addrs[0], CM_ZADDR_LEN, "192.0.2.1");
        return 1;
    }
    if (strcmp(host, g_name) != 0)
        return 0;
    int n = 0;
    for (int i = 0; i < g_n && n < max; i++)
        snprintf(addrs[n++], CM_ZADDR_LEN, "%s", g_addrs[i]);
    return n;
}

static void dns(int n, const char *a, const char *b)
{
    g_addrs[0] = a;
    g_addrs[1] = b;
    g_n = n;
    cm_zfollow_refresh();
}

/* ---------------------------------------------------------------- fixture */

typedef struct fx {
    void *ctx;
    cm_zap *zap;
    cm_curve_keypair server, client;
    void *pull[3]; /* bound on 127.0.0.2, .3, .4, one port */
    void *push;    /* the socket under test, closed by teardown whatever happened */
    char port[16];
} fx;

static void keypair(cm_curve_keypair *k)
{
    assert_int_equal(zmq_curve_keypair(k->public_z85, k->secret_z85), 0);
}

static int setup(void **state)
{
    static fx f;
    memset(&f, 0, sizeof f);
    cm_zfollow_setup(fake_resolve, 0);
    f.ctx = zmq_ctx_new();
    assert_non_null(f.ctx);
    assert_int_equal(cm_zap_start(f.ctx, &f.zap), CM_OK);
    keypair(&f.server);
    keypair(&f.client);
    assert_int_equal(cm_zap_allow(f.zap, "input", "tester", f.client.public_z85), CM_OK);
    assert_int_equal(cm_zsock_server(f.ctx, ZMQ_PULL, "tcp://127.0.0.2:*", "input", &f.server,
                                     &f.pull[0]),
                     CM_OK);
    char last[64];
    size_t len = sizeof last;
    assert_int_equal(zmq_getsockopt(f.pull[0], ZMQ_LAST_ENDPOINT, last, &len), 0);
    snprintf(f.port, sizeof f.port, "%s", strrchr(last, ':') + 1);
    const char *more[] = {"127.0.0.3", "127.0.0.4"};
    for (int i = 0; i < 2; i++) {
        char ep[64];
        snprintf(ep, sizeof ep, "tcp://%s:%s", more[i], f.port);
        assert_int_equal(cm_zsock_server(f.ctx, ZMQ_PULL, ep, "input", &f.server, &f.pull[i + 1]),
                         CM_OK);
    }
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    for (int i = 0; i < 3; i++)
        cm_zsock_close(&f->pull[i]);
    cm_zsock_close(&f->push);
    cm_zap_stop(&f->zap);
    zmq_ctx_term(f->ctx);
    return 0;
}

/* Sends one frame tagged `phase` and returns the index of the server that got it, or -1 when
 * none did within 5 s. */
static int round_trip(fx *f, void *push, int phase)
{
    char tag[8];
    snprintf(tag, sizeof tag, "p%d", phase);
    if (zmq_send(push, tag, strlen(tag), 0) < 0)
        return -1;
    /* POLLIN may be reported for a pipe that is being torn down: only a frame read counts */
    for (int polls = 0; polls < 50; polls++) {
        zmq_pollitem_t it[3];
        for (int i = 0; i < 3; i++)
            it[i] = (zmq_pollitem_t){.socket = f->pull[i], .events = ZMQ_POLLIN};
        if (zmq_poll(it, 3, 100) < 0)
            return -1;
        for (int i = 0; i < 3; i++) {
            char buf[8] = {0};
            if (zmq_recv(f->pull[i], buf, sizeof buf - 1, ZMQ_DONTWAIT) > 0) {
                assert_string_equal(buf, tag);
                return i;
            }
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- tests */

static void test_push_follows_every_replica_of_its_name(void **state)
{
    fx *f = *state;
    dns(2, "127.0.0.2", "127.0.0.3");
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://svc-a:%s", f->port);
    assert_int_equal(cm_zsock_client(f->ctx, ZMQ_PUSH, ep, f->server.public_z85, &f->client,
                                     &f->push),
                     CM_OK);
    void *push = f->push;
    assert_int_equal(cm_zfollow_apply(push), 0); /* looked up by the resolver, not at creation */
    cm_zfollow_refresh();
    assert_int_equal(cm_zfollow_apply(push), 2);

    /* both replicas take frames (round robin over established connections) */
    int seen[3] = {0};
    for (int i = 0; i < 1000 && !(seen[0] && seen[1]); i++) {
        int who = round_trip(f, push, 1);
        assert_true(who == 0 || who == 1);
        seen[who]++;
    }
    assert_true(seen[0] > 0 && seen[1] > 0);

    /* .2 vanishes, .4 appears: nothing more reaches .2, .4 gets its share. libzmq tears the
     * old pipe down in its I/O thread, so the first frame may still enter it and be lost with
     * it (what the end-to-end ack recovers), never delivered to .2. */
    dns(2, "127.0.0.3", "127.0.0.4");
    assert_int_equal(cm_zfollow_apply(push), 2);
    struct timespec pause = {0, 100 * 1000000L};
    nanosleep(&pause, NULL);
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 1000 && !(seen[1] && seen[2]); i++) {
        int who = round_trip(f, push, 2);
        if (who == -1 && i == 0)
            continue;
        assert_true(who == 1 || who == 2);
        seen[who]++;
    }
    assert_true(seen[1] > 0 && seen[2] > 0);

    /* every replica gone: once the two old pipes are torn down (each may swallow one more
     * frame meanwhile), no pipe takes a frame and a non-blocking send says so */
    dns(0, NULL, NULL);
    assert_int_equal(cm_zfollow_apply(push), 0);
    Suido__Ack ack = SUIDO__ACK__INIT;
    int taken = 0;
    cm_err rc = CM_OK;
    for (int i = 0; i < 50 && (rc = cm_zsend_pb(push, &ack.base, ZMQ_DONTWAIT)) == CM_OK; i++) {
        taken++;
        nanosleep(&pause, NULL); /* lets the I/O thread close the pipes */
    }
    assert_int_equal(rc, CM_ERR_UNAVAILABLE);
    assert_true(taken <= 2);

    /* one comes back: a blocking send applies the new answer itself and is delivered */
    dns(1, "127.0.0.3", NULL);
    assert_int_equal(cm_zsend_pb(push, &ack.base, 0), CM_OK);
    assert_int_equal(cm_zfollow_apply(push), 1);
    zmq_pollitem_t it = {.socket = f->pull[1], .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    char buf[16];
    assert_true(zmq_recv(f->pull[1], buf, sizeof buf, 0) >= 0);
    cm_zsock_close(&f->push);
    assert_null(f->push);
}

static void test_only_push_sockets_with_a_name_follow(void **state)
{
    fx *f = *state;
    dns(1, "127.0.0.2", NULL);
    char ep[64];
    void *s = NULL;
    snprintf(ep, sizeof ep, "tcp://127.0.0.2:%s", f->port);
    assert_int_equal(cm_zsock_client(f->ctx, ZMQ_PUSH, ep, f->server.public_z85, &f->client, &s),
                     CM_OK);
    assert_int_equal(cm_zfollow_apply(s), -1); /* an address: libzmq's connect as before */
    cm_zsock_close(&s);
    snprintf(ep, sizeof ep, "tcp://svc-a:%s", f->port);
    assert_int_equal(cm_zsock_client(f->ctx, ZMQ_DEALER, ep, f->server.public_z85, &f->client,
                                     &s),
                     CM_OK);
    assert_int_equal(cm_zfollow_apply(s), -1); /* not a PUSH: libzmq resolves it */
    cm_zsock_close(&s);
}

static void test_server_binds_the_address_of_its_name_that_is_its_own(void **state)
{
    fx *f = *state;
    void *s = NULL;
    assert_int_equal(cm_zsock_server(f->ctx, ZMQ_PULL, "tcp://own-name:*", "input", &f->server,
                                     &s),
                     CM_OK);
    char last[64];
    size_t len = sizeof last;
    assert_int_equal(zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, last, &len), 0);
    assert_memory_equal(last, "tcp://127.0.0.5:", 16);
    cm_zsock_close(&s);
    assert_int_equal(cm_zsock_server(f->ctx, ZMQ_PULL, "tcp://not-here:*", "input", &f->server,
                                     &s),
                     CM_ERR_IO);
    assert_null(s);
}

static void test_system_resolver_answers_localhost_with_loopback_addresses(void **state)
{
    (void)state;
    cm_zfollow_setup(NULL, 0);
    void *ctx = zmq_ctx_new();
    cm_curve_keypair k;
    keypair(&k);
    /* a server bound by name ("localhost") binds one of its loopback addresses */
    void *s = NULL;
    assert_int_equal(cm_zsock_server(ctx, ZMQ_PULL, "tcp://localhost:*", "input", &k, &s), CM_OK);
    char last[80];
    size_t len = sizeof last;
    assert_int_equal(zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, last, &len), 0);
    assert_true(strncmp(last, "tcp://127.", 10) == 0 || strncmp(last, "tcp://[::1]:", 12) == 0);
    /* a PUSH to localhost follows every address the system gives for it */
    char ep[96];
    snprintf(ep, sizeof ep, "tcp://localhost:%s", strrchr(last, ':') + 1);
    void *push = NULL;
    assert_int_equal(cm_zsock_client(ctx, ZMQ_PUSH, ep, k.public_z85, &k, &push), CM_OK);
    cm_zfollow_refresh();
    assert_true(cm_zfollow_apply(push) >= 1);
    cm_zsock_close(&push);
    cm_zsock_close(&s);
    zmq_ctx_term(ctx);
    cm_zfollow_setup(fake_resolve, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_follows_every_replica_of_its_name),
        cmocka_unit_test(test_only_push_sockets_with_a_name_follow),
        cmocka_unit_test(test_server_binds_the_address_of_its_name_that_is_its_own),
        cmocka_unit_test(test_system_resolver_answers_localhost_with_loopback_addresses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
