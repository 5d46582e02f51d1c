/* Unit tests of cm_registry's behaviour when the registry stops answering: one timeout, then
 * calls fail at once (fail closed) with one probe per second on the wire, and the first reply
 * heard ends the outage. The registry is a real CURVE ROUTER socket driven by the test. */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "cm_conf.h"
#include "cm_registry.h"
#include "cm_zmq.h"
#include "suido.pb-c.h"

typedef struct fx {
    void *ctx;
    cm_zap *zap;
    cm_curve_keypair server, client;
    void *router;
    cm_registry *reg;
    char dir[64];
    pthread_t thread;
} fx;

static atomic_int g_answering, g_requests, g_stop;
static void *registry_thread(void *arg);

static void keypair(cm_curve_keypair *k)
{
    assert_int_equal(zmq_curve_keypair(k->public_z85, k->secret_z85), 0);
}

static int setup(void **state)
{
    static fx f;
    memset(&f, 0, sizeof f);
    f.ctx = zmq_ctx_new();
    assert_non_null(f.ctx);
    assert_int_equal(cm_zap_start(f.ctx, &f.zap), CM_OK);
    keypair(&f.server);
    keypair(&f.client);
    assert_int_equal(cm_zap_allow(f.zap, "registry", "tester", f.client.public_z85), CM_OK);
    assert_int_equal(
        cm_zsock_server(f.ctx, ZMQ_ROUTER, "tcp://127.0.0.1:*", "registry", &f.server, &f.router),
        CM_OK);
    char ep[64];
    size_t len = sizeof ep;
    assert_int_equal(zmq_getsockopt(f.router, ZMQ_LAST_ENDPOINT, ep, &len), 0);

    snprintf(f.dir, sizeof f.dir, "/tmp/cm_registry_test.XXXXXX");
    assert_non_null(mkdtemp(f.dir));
    char keyfile[128], text[512];
    snprintf(keyfile, sizeof keyfile, "%s/registry.curve.pub", f.dir);
    FILE *kf = fopen(keyfile, "w");
    assert_non_null(kf);
    fprintf(kf, "%s\n", f.server.public_z85);
    fclose(kf);
    /* a short timeout keeps the test quick; the probe period is the module's own (1 s) */
    int n = snprintf(text, sizeof text,
                     "[registry]\nconnect = %s\nserver_key = %s\ntimeout_ms = 200\n", ep, keyfile);
    cm_conf *conf = NULL;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(cm_conf_parse("test.conf", text, (size_t)n, &conf, err), CM_OK);
    assert_int_equal(cm_registry_new(f.ctx, conf, "registry", &f.client, &f.reg, err), CM_OK);
    cm_conf_destroy(&conf);
    atomic_store(&g_answering, 1);
    atomic_store(&g_requests, 0);
    atomic_store(&g_stop, 0);
    assert_int_equal(pthread_create(&f.thread, NULL, registry_thread, &f), 0);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    atomic_store(&g_stop, 1);
    pthread_join(f->thread, NULL);
    cm_registry_destroy(&f->reg);
    cm_zsock_close(&f->router);
    cm_zap_stop(&f->zap);
    zmq_ctx_term(f->ctx);
    char path[128];
    snprintf(path, sizeof path, "%s/registry.curve.pub", f->dir);
    unlink(path);
    rmdir(f->dir);
    return 0;
}

/* ---------------------------------------------------------------- the registry, on a thread */

/* Counts every request; answers it (status 0, request_id echoed) while g_answering is set. */
static void *registry_thread(void *arg)
{
    fx *f = arg;
    while (!atomic_load(&g_stop)) {
        zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, f->router, 0) < 0 || zmq_msg_recv(&body, f->router, 0) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        Suido__RegistryRequest *req =
            suido__registry_request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
        zmq_msg_close(&body);
        atomic_fetch_add(&g_requests, 1);
        if (req && atomic_load(&g_answering)) {
            Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
            rep.request_id = req->request_id;
            uint8_t buf[64];
            size_t len = suido__registry_reply__pack(&rep, buf);
            zmq_msg_send(&id, f->router, ZMQ_SNDMORE);
            zmq_send(f->router, buf, len, 0);
        }
        zmq_msg_close(&id);
        if (req)
            suido__registry_request__free_unpacked(req, NULL);
    }
    return NULL;
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits up to 3 s for the registry to have received n requests in all. */
static int requests_reach(int n)
{
    for (int i = 0; i < 150 && atomic_load(&g_requests) < n; i++)
        pause_ms(20);
    return atomic_load(&g_requests);
}

static cm_err call(fx *f)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_CHANNELS;
    req.id = "gw-0001";
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(f->reg, &req, &rep);
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    return rc;
}

/* ---------------------------------------------------------------- tests */

static void test_an_answering_registry_answers_every_call(void **state)
{
    fx *f = *state;
    atomic_store(&g_answering, 1);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(call(f), CM_OK);
        assert_int_equal(atomic_load(&g_requests), i);
    }
}

static void test_an_outage_costs_one_timeout_then_calls_fail_at_once_with_one_probe(void **state)
{
    fx *f = *state;
    atomic_store(&g_answering, 0);
    /* the first call waits its timeout: the request went out, nobody answered */
    assert_int_equal(call(f), CM_ERR_UNAVAILABLE);
    assert_int_equal(requests_reach(1), 1);
    /* the next ones fail closed at once, and none reaches the wire before a probe is due */
    for (int i = 0; i < 50; i++)
        assert_int_equal(call(f), CM_ERR_UNAVAILABLE);
    pause_ms(200);
    assert_int_equal(atomic_load(&g_requests), 1);
    /* the registry comes back; a second after the timeout the next call goes out as the probe,
     * itself still refused (nobody waits for the probe's answer), the others stay home */
    atomic_store(&g_answering, 1);
    pause_ms(1000);
    for (int i = 0; i < 20; i++)
        assert_int_equal(call(f), CM_ERR_UNAVAILABLE);
    assert_int_equal(requests_reach(2), 2);
    pause_ms(200); /* the probe's answer is on its way back */
    assert_int_equal(atomic_load(&g_requests), 2);
    /* hearing it ends the outage: the next call is asked and answered */
    assert_int_equal(call(f), CM_OK);
    assert_int_equal(atomic_load(&g_requests), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_an_answering_registry_answers_every_call, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_an_outage_costs_one_timeout_then_calls_fail_at_once_with_one_probe, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
