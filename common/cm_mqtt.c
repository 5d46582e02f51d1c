/* cm_mqtt: the suite's MQTT-over-TLS client on Eclipse Paho MQTT C (MQTTAsync, MQTT 3.1.1).
 *
 * Paho runs the network on its own threads and calls back into this file. Shared state is either
 * atomic (connection flag, in-flight count, the subscription list) or guarded by mu (the outcome
 * of the first connect attempt and of the final disconnect). Paho functions are never called with
 * mu held: Paho may hold its own lock while it runs our callbacks, so the only lock order is
 * "Paho, then mu". */
#include "cm_mqtt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_time.h"

/* A path that goes silent without a reset (a cut link, a stalled broker) is noticed within two
 * intervals: 20 s, well inside the fault plan's 60 s bound for raising the alarm. */
#define DEFAULT_KEEPALIVE_S 10
#define DEFAULT_MAX_INFLIGHT 64
#define CONNECT_TIMEOUT_S 10
#define RETRY_MIN_S 1
#define RETRY_MAX_S 8
#define DISCONNECT_WAIT_MS 1000
#define RENEW_QUIET_MS 10000 /* a loss this long after the last renewal reconnects at once */

/* A subscription to repeat after every reconnect. The list only grows (prepend with an atomic
 * head), so Paho's thread can walk it without a lock while the application adds to it. */
typedef struct cm_sub {
    struct cm_sub *next;
    char *filter;
    int qos;
} cm_sub;

enum { FIRST_PENDING = 0, FIRST_OK, FIRST_FAILED };

struct cm_mqtt {
    MQTTAsync cli;
    /* owned copies of the option strings */
    char *uri, *client_id, *ca_file, *cert_file, *key_file, *will_topic;
    void *will_payload;
    size_t will_len;
    int will_retained;
    int clean_session, keepalive_s, max_inflight, verify_hostname, renew_on_loss;
    int (*on_message)(void *ctx, const char *topic, const void *payload, size_t len);
    void (*on_connected)(void *ctx, int reconnect);
    void (*on_lost)(void *ctx, const char *cause);
    void *ctx;

    atomic_int connected;   /* 1 between a successful connect and the next loss */
    atomic_int inflight;    /* publishes handed to Paho whose outcome is not known yet */
    atomic_int connections; /* successful connections so far */
    atomic_int closing;     /* destroy has begun: no more connection events for the application */
    atomic_int busy;        /* callbacks currently running (destroy waits for 0) */
    atomic_int failures;    /* failed connect attempts since the last success */
    atomic_int renew_due;   /* renew_on_loss: a connection was lost, cm_mqtt_renew has not run */
    _Atomic(cm_sub *) subs;
    int started;            /* cm_mqtt_connect was called (application thread only) */
    int connect_pending;    /* cm_mqtt_renew made a new client, a later call connects it ... */
    uint64_t connect_at_ms; /* ... from then on (monotonic) */
    uint64_t last_renew_ms, renew_delay_ms; /* backoff for a connection lost again and again */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int first;              /* FIRST_*: outcome of the first connect attempt */
    int first_code;         /* Paho / CONNACK code of a failed first attempt */
    int disconnected;       /* the final disconnect completed (either way) */
};

static char *dup_or_null(const char *s, int *fail)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *fail = 1;
    return d;
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ------------------------------------------------------------------ callbacks (Paho's threads) */

/* Every callback brackets its work with enter/leave so that destroy can wait for the last one to
 * return before it frees the structure. */
static void enter(cm_mqtt *m) { atomic_fetch_add(&m->busy, 1); }
static void leave(cm_mqtt *m) { atomic_fetch_sub(&m->busy, 1); }

static void set_first(cm_mqtt *m, int outcome, int code)
{
    pthread_mutex_lock(&m->mu);
    if (m->first == FIRST_PENDING) {
        m->first = outcome;
        m->first_code = code;
        pthread_cond_broadcast(&m->cv);
    }
    pthread_mutex_unlock(&m->mu);
}

static void on_connect_ok(void *ctx, MQTTAsync_successData *resp)
{
    (void)resp;
    cm_mqtt *m = ctx;
    enter(m);
    /* Paho calls this for the first connect and for every automatic reconnect; the connected
     * callback below does the per-connection work, here only the first outcome is recorded. */
    atomic_store(&m->connected, 1);
    set_first(m, FIRST_OK, 0);
    leave(m);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData *resp)
{
    cm_mqtt *m = ctx;
    enter(m);
    int code = resp ? resp->code : MQTTASYNC_FAILURE;
    atomic_store(&m->connected, 0);
    if (!atomic_load(&m->closing)) {
        /* one warning per outage; the retries (every 1..8 s) only at debug level */
        if (atomic_fetch_add(&m->failures, 1) == 0)
            cm_warn("client=%s uri=%s event=connect_failed code=%d reason=\"%s\" retrying=1",
                    m->client_id, m->uri, code, resp && resp->message ? resp->message : "");
        else
            cm_debug("client=%s uri=%s event=connect_failed code=%d", m->client_id, m->uri, code);
        if (m->on_lost)
            m->on_lost(m->ctx, resp && resp->message ? resp->message : "connect failed");
    }
    set_first(m, FIRST_FAILED, code);
    leave(m);
}

static void on_sub_fail(void *ctx, MQTTAsync_failureData *resp)
{
    cm_mqtt *m = ctx;
    enter(m);
    if (!atomic_load(&m->closing))
        cm_warn("client=%s event=subscribe_failed code=%d", m->client_id,
                resp ? resp->code : MQTTASYNC_FAILURE);
    leave(m);
}

static int subscribe_now(cm_mqtt *m, const cm_sub *s)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onFailure = on_sub_fail;
    ro.context = m;
    return MQTTAsync_subscribe(m->cli, s->filter, s->qos, &ro);
}

static void on_connected_cb(void *ctx, char *cause)
{
    (void)cause;
    cm_mqtt *m = ctx;
    enter(m);
    atomic_store(&m->connected, 1);
    int n = atomic_fetch_add(&m->connections, 1);
    int failed = atomic_exchange(&m->failures, 0);
    if (!atomic_load(&m->closing)) {
        cm_info("client=%s uri=%s event=connected reconnect=%d failed_attempts=%d", m->client_id,
                m->uri, n > 0, failed);
        /* With a persistent session the broker still has the subscriptions; repeating them is
         * harmless and covers a broker that lost its state. */
        for (cm_sub *s = atomic_load(&m->subs); s; s = s->next) {
            int rc = subscribe_now(m, s);
            if (rc != MQTTASYNC_SUCCESS)
                cm_warn("client=%s filter=%s event=resubscribe_failed code=%d", m->client_id,
                        s->filter, rc);
        }
        if (m->on_connected)
            m->on_connected(m->ctx, n > 0);
    }
    leave(m);
}

static void on_connection_lost(void *ctx, char *cause)
{
    cm_mqtt *m = ctx;
    enter(m);
    atomic_store(&m->connected, 0);
    if (m->renew_on_loss && !atomic_load(&m->closing)) {
        /* Paho schedules its reconnect after this returns, unless a disconnect was asked for
         * (which, not connected, only stops the reconnect): cm_mqtt_renew takes over */
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 0;
        (void)MQTTAsync_disconnect(m->cli, &d);
        atomic_store(&m->renew_due, 1);
    }
    if (!atomic_load(&m->closing)) {
        cm_warn("client=%s uri=%s event=connection_lost cause=\"%s\"", m->client_id, m->uri,
                cause ? cause : "");
        if (m->on_lost)
            m->on_lost(m->ctx, cause ? cause : "connection lost");
    }
    leave(m);
}

/* Note on acknowledgement: for QoS 1 Paho 1.3 sends the PUBACK before it calls this function
 * (to keep its socket writable), so "0 = not handed on" makes Paho keep the message in memory and
 * deliver it again, but the broker already considers it delivered. Blocking here still pushes back
 * on the broker: nothing more is read from the socket meanwhile. */
static int on_arrived(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
    (void)topic_len; /* > 0 only for a topic with embedded NULs, which MQTT forbids */
    cm_mqtt *m = ctx;
    enter(m);
    int handed_on = 1;
    /* delivered even while closing: the application's context lives until destroy returns */
    if (m->on_message)
        handed_on = m->on_message(m->ctx, topic, msg->payload,
                                  msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0) != 0;
    if (handed_on) {
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
    }
    leave(m);
    /* 0 keeps the message (and its storage) with Paho, which delivers it again later */
    return handed_on;
}

static void on_publish_ok(void *ctx, MQTTAsync_successData *resp)
{
    (void)resp;
    cm_mqtt *m = ctx;
    enter(m);
    atomic_fetch_sub(&m->inflight, 1);
    leave(m);
}

static void on_publish_fail(void *ctx, MQTTAsync_failureData *resp)
{
    cm_mqtt *m = ctx;
    enter(m);
    atomic_fetch_sub(&m->inflight, 1);
    if (!atomic_load(&m->closing))
        cm_debug("client=%s event=publish_failed code=%d", m->client_id,
                 resp ? resp->code : MQTTASYNC_FAILURE);
    leave(m);
}

static void on_disconnect_done(cm_mqtt *m)
{
    pthread_mutex_lock(&m->mu);
    m->disconnected = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void on_disconnect_ok(void *ctx, MQTTAsync_successData *resp)
{
    (void)resp;
    cm_mqtt *m = ctx;
    enter(m);
    on_disconnect_done(m);
    leave(m);
}

static void on_disconnect_fail(void *ctx, MQTTAsync_failureData *resp)
{
    (void)resp;
    cm_mqtt *m = ctx;
    enter(m);
    on_disconnect_done(m);
    leave(m);
}

/* ------------------------------------------------------------------ Paho's threads */

/* Clients of this process that exist (made by cm_mqtt_new, not yet destroyed). */
static atomic_int live_clients;

/* 1 while a thread of this process is one of Paho's (it names them MQTTAsync_send and
 * MQTTAsync_rcv). */
static int paho_threads_left(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[64], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, comm, sizeof comm - 1);
        close(fd);
        found = n > 0 && strncmp(comm, "MQTTAsync_", 10) == 0;
    }
    closedir(d);
    return found;
}

/* Paho stops its two threads when its last client is destroyed, but MQTTAsync_destroy returns
 * once they say they stopped, while they may still be running their thread-exit clean-up
 * (OpenSSL's per-thread state among it). A process that returns from main then runs OpenSSL's
 * atexit clean-up at the same time, and the two free the same memory ("double free" at exit, in
 * one run of hundreds). So the last destroy waits, up to 3 s, until those threads are gone. */
static void wait_for_paho_threads(void)
{
    uint64_t until = cm_mono_ms() + 3000;
    while (paho_threads_left() && cm_mono_ms() < until) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

/* ------------------------------------------------------------------ API */

static void free_fields(cm_mqtt *m)
{
    cm_sub *s = atomic_load(&m->subs);
    while (s) {
        cm_sub *n = s->next;
        free(s->filter);
        free(s);
        s = n;
    }
    free(m->uri);
    free(m->client_id);
    free(m->ca_file);
    free(m->cert_file);
    free(m->key_file);
    free(m->will_topic);
    free(m->will_payload);
}

/* A Paho client for m with its callbacks (no network yet); on failure nothing is left. */
static int create_handle(cm_mqtt *m)
{
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = MQTTVERSION_3_1_1;
    co.sendWhileDisconnected = 0;
    /* Paho refuses new publishes once this many are queued; our own in-flight window is the real
     * limit, this only has to stay above it. */
    co.maxBufferedMessages = m->max_inflight * 2 > 100 ? m->max_inflight * 2 : 100;
    int rc = MQTTAsync_createWithOptions(&m->cli, m->uri, m->client_id, MQTTCLIENT_PERSISTENCE_NONE,
                                         NULL, &co);
    if (rc == MQTTASYNC_SUCCESS)
        rc = MQTTAsync_setCallbacks(m->cli, m, on_connection_lost, on_arrived, NULL);
    if (rc == MQTTASYNC_SUCCESS)
        rc = MQTTAsync_setConnected(m->cli, m, on_connected_cb);
    if (rc != MQTTASYNC_SUCCESS) {
        cm_error("client=%s uri=%s event=create_failed code=%d", m->client_id, m->uri, rc);
        if (m->cli)
            MQTTAsync_destroy(&m->cli);
    }
    return rc;
}

cm_err cm_mqtt_new(const cm_mqtt_opts *o, cm_mqtt **out)
{
    *out = NULL;
    if (!o || !o->uri || !o->client_id || !*o->client_id || !o->ca_file || !o->cert_file ||
        !o->key_file || o->keepalive_s < 0 || o->max_inflight < 0 ||
        (o->will_len && !o->will_payload) || o->will_len > INT_MAX)
        return CM_ERR_INVAL;
    /* Refuse at once what would only show later as an anonymous TLS failure on every retry. */
    const char *pem[] = {o->ca_file, o->cert_file};
    for (int i = 0; i < 2; i++)
        if (access(pem[i], R_OK) != 0) {
            cm_error("client=%s path=%s error=\"%s\"", o->client_id, pem[i], strerror(errno));
            return CM_ERR_KEY;
        }
    if (cm_key_file_check(o->key_file) != CM_OK) /* it logs why */
        return CM_ERR_KEY;
    cm_mqtt *m = calloc(1, sizeof *m);
    if (!m)
        return CM_ERR_NOMEM;
    int fail = 0;
    m->uri = dup_or_null(o->uri, &fail);
    m->client_id = dup_or_null(o->client_id, &fail);
    m->ca_file = dup_or_null(o->ca_file, &fail);
    m->cert_file = dup_or_null(o->cert_file, &fail);
    m->key_file = dup_or_null(o->key_file, &fail);
    m->will_topic = dup_or_null(o->will_topic, &fail);
    if (o->will_topic && o->will_len) {
        if ((m->will_payload = malloc(o->will_len)))
            memcpy(m->will_payload, o->will_payload, o->will_len);
        else
            fail = 1;
        m->will_len = o->will_len;
        m->will_retained = o->will_retained != 0;
    }
    if (fail) {
        free_fields(m);
        free(m);
        return CM_ERR_NOMEM;
    }
    m->clean_session = o->clean_session ? 1 : 0;
    m->keepalive_s = o->keepalive_s ? o->keepalive_s : DEFAULT_KEEPALIVE_S;
    m->max_inflight = o->max_inflight ? o->max_inflight : DEFAULT_MAX_INFLIGHT;
    m->verify_hostname = o->verify_hostname ? 1 : 0;
    m->renew_on_loss = o->renew_on_loss ? 1 : 0;
    m->on_message = o->on_message;
    m->on_connected = o->on_connected;
    m->on_lost = o->on_lost;
    m->ctx = o->ctx;
    atomic_init(&m->connected, 0);
    atomic_init(&m->inflight, 0);
    atomic_init(&m->connections, 0);
    atomic_init(&m->closing, 0);
    atomic_init(&m->busy, 0);
    atomic_init(&m->failures, 0);
    atomic_init(&m->renew_due, 0);
    atomic_init(&m->subs, NULL);

    pthread_condattr_t ca;
    int ok = pthread_condattr_init(&ca) == 0;
    ok = ok && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0;
    ok = ok && pthread_cond_init(&m->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!ok || pthread_mutex_init(&m->mu, NULL) != 0) {
        if (ok)
            pthread_cond_destroy(&m->cv);
        free_fields(m);
        free(m);
        return CM_ERR_NOMEM;
    }

    int rc = create_handle(m);
    if (rc != MQTTASYNC_SUCCESS) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        free_fields(m);
        free(m);
        return rc == MQTTASYNC_BAD_PROTOCOL ? CM_ERR_INVAL : CM_ERR_IO;
    }
    atomic_fetch_add(&live_clients, 1);
    *out = m;
    return CM_OK;
}

static cm_err first_failure_err(int code)
{
    /* CONNACK 2 (identifier rejected), 4 (bad credentials), 5 (not authorized) are refusals by
     * the broker; anything else (TCP, TLS, timeout, protocol) is an I/O failure. */
    if (code == 2 || code == 4 || code == 5)
        return CM_ERR_DENIED;
    return CM_ERR_IO;
}

cm_err cm_mqtt_connect(cm_mqtt *m, int timeout_ms)
{
    if (!m)
        return CM_ERR_INVAL;
    if (!m->started) {
        MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
        ssl.trustStore = m->ca_file;
        ssl.keyStore = m->cert_file;
        ssl.privateKey = m->key_file;
        ssl.enableServerCertAuth = 1;
        ssl.verify = m->verify_hostname;
        ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2;
        /* only the deployment CA is trusted, never the system store */
        ssl.disableDefaultTrustStore = 1;

        MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
        co.MQTTVersion = MQTTVERSION_3_1_1;
        co.keepAliveInterval = m->keepalive_s;
        co.cleansession = m->clean_session;
        co.maxInflight = m->max_inflight;
        co.connectTimeout = CONNECT_TIMEOUT_S;
        co.retryInterval = 0; /* MQTT 3.1.1: resend only on reconnect */
        co.ssl = &ssl;
        co.automaticReconnect = 1;
        co.minRetryInterval = RETRY_MIN_S;
        co.maxRetryInterval = RETRY_MAX_S;
        co.onSuccess = on_connect_ok;
        co.onFailure = on_connect_fail;
        co.context = m;
        if (m->will_topic) {
            will.topicName = m->will_topic;
            will.message = NULL;
            will.payload.data = m->will_payload ? m->will_payload : "";
            will.payload.len = (int)m->will_len;
            will.qos = 1;
            will.retained = m->will_retained;
            co.will = &will;
        }
        int rc = MQTTAsync_connect(m->cli, &co);
        if (rc != MQTTASYNC_SUCCESS) {
            cm_error("client=%s uri=%s event=connect_start_failed code=%d", m->client_id, m->uri,
                     rc);
            return CM_ERR_IO;
        }
        m->started = 1;
    }
    if (timeout_ms <= 0)
        return CM_OK;

    struct timespec dl;
    deadline_after(&dl, timeout_ms);
    pthread_mutex_lock(&m->mu);
    while (m->first == FIRST_PENDING) {
        int e = pthread_cond_timedwait(&m->cv, &m->mu, &dl);
        if (e == ETIMEDOUT)
            break;
    }
    int first = m->first, code = m->first_code;
    pthread_mutex_unlock(&m->mu);
    if (first == FIRST_OK)
        return CM_OK;
    if (first == FIRST_PENDING)
        return atomic_load(&m->connected) ? CM_OK : CM_ERR_TIMEOUT;
    /* The first attempt failed, but a later one may already have succeeded. */
    return atomic_load(&m->connected) ? CM_OK : first_failure_err(code);
}

cm_err cm_mqtt_subscribe(cm_mqtt *m, const char *filter, int qos)
{
    if (!m || !filter || !*filter || qos < 0 || qos > 2)
        return CM_ERR_INVAL;
    cm_sub *s = calloc(1, sizeof *s);
    if (!s || !(s->filter = strdup(filter))) {
        free(s);
        return CM_ERR_NOMEM;
    }
    s->qos = qos;
    /* publish the node only once it is complete; Paho's thread may walk the list right away */
    cm_sub *head = atomic_load(&m->subs);
    do
        s->next = head;
    while (!atomic_compare_exchange_weak(&m->subs, &head, s));
    if (!atomic_load(&m->connected))
        return CM_OK; /* the connected callback subscribes */
    int rc = subscribe_now(m, s);
    if (rc != MQTTASYNC_SUCCESS) {
        /* lost the connection meanwhile: the reconnect will subscribe */
        cm_debug("client=%s filter=%s event=subscribe_deferred code=%d", m->client_id, filter, rc);
    }
    return CM_OK;
}

cm_err cm_mqtt_publish(cm_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                       int retained)
{
    if (!m || !topic || !*topic || (len && !payload) || qos < 0 || qos > 2)
        return CM_ERR_INVAL;
    if (len > INT_MAX)
        return CM_ERR_TOO_BIG;
    if (!atomic_load(&m->connected))
        return CM_ERR_UNAVAILABLE;
    /* reserve a slot in the window first, so that concurrent publishers cannot overshoot it */
    if (atomic_fetch_add(&m->inflight, 1) >= m->max_inflight) {
        atomic_fetch_sub(&m->inflight, 1);
        return CM_ERR_UNAVAILABLE;
    }
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onSuccess = on_publish_ok;
    ro.onFailure = on_publish_fail;
    ro.context = m;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)payload; /* Paho copies it */
    msg.payloadlen = (int)len;
    msg.qos = qos;
    msg.retained = retained ? 1 : 0;
    int rc = MQTTAsync_sendMessage(m->cli, topic, &msg, &ro);
    if (rc == MQTTASYNC_SUCCESS)
        return CM_OK;
    /* refused synchronously: no callback will come for it */
    atomic_fetch_sub(&m->inflight, 1);
    switch (rc) {
    case MQTTASYNC_DISCONNECTED:
    case MQTTASYNC_MAX_BUFFERED_MESSAGES:
    case MQTTASYNC_NO_MORE_MSGIDS:
    case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
        return CM_ERR_UNAVAILABLE;
    case MQTTASYNC_BAD_UTF8_STRING:
    case MQTTASYNC_NULL_PARAMETER:
    case MQTTASYNC_BAD_QOS:
    case MQTTASYNC_BAD_STRUCTURE:
        return CM_ERR_INVAL;
    default:
        cm_warn("client=%s topic=%s event=publish_refused code=%d", m->client_id, topic, rc);
        return CM_ERR_IO;
    }
}

int cm_mqtt_is_connected(const cm_mqtt *m)
{
    return m ? atomic_load(&((cm_mqtt *)m)->connected) : 0;
}

int cm_mqtt_inflight(const cm_mqtt *m)
{
    if (!m)
        return 0;
    int n = atomic_load(&((cm_mqtt *)m)->inflight);
    return n > 0 ? n : 0;
}

/* Frees the Paho client once no callback of it can run any more: Paho fails every pending
 * request here (their callbacks still see m); one already running may still be returning. */
static void destroy_handle(cm_mqtt *m)
{
    MQTTAsync_destroy(&m->cli);
    while (atomic_load(&m->busy) > 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

cm_err cm_mqtt_renew(cm_mqtt *m)
{
    if (!m)
        return CM_ERR_INVAL;
    if (m->connect_pending) { /* the second step: connect the client the first one made */
        if (cm_mono_ms() < m->connect_at_ms)
            return CM_OK;
        m->connect_pending = 0;
        return cm_mqtt_connect(m, 0);
    }
    if (!m->started)
        return CM_ERR_INVAL;
    if (!atomic_exchange(&m->renew_due, 0))
        return CM_OK;
    atomic_store(&m->closing, 1);
    destroy_handle(m); /* no DISCONNECT: the connection is gone, and the will stays armed */
    atomic_store(&m->inflight, 0);
    atomic_store(&m->connected, 0);
    atomic_store(&m->closing, 0);
    m->started = 0;
    if (create_handle(m) != MQTTASYNC_SUCCESS)
        return CM_ERR_IO;
    /* A connection that keeps being lost (a broker refusing us right after CONNECT) is retried
     * with the backoff Paho's own reconnect would use, not at once every time. */
    uint64_t now = cm_mono_ms();
    if (m->last_renew_ms && now - m->last_renew_ms < RENEW_QUIET_MS)
        m->renew_delay_ms = m->renew_delay_ms ? m->renew_delay_ms * 2 : RETRY_MIN_S * 1000;
    else
        m->renew_delay_ms = 0;
    if (m->renew_delay_ms > RETRY_MAX_S * 1000)
        m->renew_delay_ms = RETRY_MAX_S * 1000;
    m->last_renew_ms = now;
    m->connect_at_ms = now + m->renew_delay_ms;
    m->connect_pending = 1;
    cm_info("client=%s reconnect_in_ms=%" PRIu64 " event=client_renewed", m->client_id,
            m->renew_delay_ms);
    return CM_OK;
}

void cm_mqtt_destroy(cm_mqtt **mp)
{
    if (!mp || !*mp)
        return;
    cm_mqtt *m = *mp;
    *mp = NULL;
    /* from here on no connection events reach the application (and no "connect failed"
     * warning for the attempt the disconnect interrupts) */
    atomic_store(&m->closing, 1);
    if (m->started) {
        /* Wait for the in-flight window to drain here rather than in Paho: Paho re-checks a
         * disconnect that waits for acknowledgements only every few seconds, whereas one issued
         * with nothing in flight completes at once. */
        uint64_t until = cm_mono_ms() + DISCONNECT_WAIT_MS;
        while (atomic_load(&m->inflight) > 0 && atomic_load(&m->connected) &&
               cm_mono_ms() < until) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
        /* Disconnecting also stops the automatic reconnect, even when not connected now. */
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 0;
        d.onSuccess = on_disconnect_ok;
        d.onFailure = on_disconnect_fail;
        d.context = m;
        if (MQTTAsync_disconnect(m->cli, &d) == MQTTASYNC_SUCCESS) {
            struct timespec dl;
            deadline_after(&dl, DISCONNECT_WAIT_MS);
            pthread_mutex_lock(&m->mu);
            while (!m->disconnected)
                if (pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT)
                    break;
            pthread_mutex_unlock(&m->mu);
        }
    }
    destroy_handle(m);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free_fields(m);
    free(m);
    if (atomic_fetch_sub(&live_clients, 1) == 1)
        wait_for_paho_threads();
}

cm_err cm_mqtt_opts_from_conf(const cm_conf *c, const char *section, const char *client_id,
                              cm_mqtt_opts *o)
{
    o->uri = cm_conf_get(c, section, "uri");
    o->client_id = client_id;
    o->ca_file = cm_conf_get(c, section, "ca");
    o->cert_file = cm_conf_get(c, section, "cert");
    o->key_file = cm_conf_get(c, section, "key");
    if (!o->uri || !o->ca_file || !o->cert_file || !o->key_file)
        return CM_ERR_CONFIG;
    return cm_key_file_check(o->key_file);
}
