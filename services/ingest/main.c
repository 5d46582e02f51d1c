/* suido-ingest: the bridge from the broker into the internal pipeline. Subscribes (as the MQTT
 * identity "ingest", persistent session, QoS 1) to every gateway's birth, data, backfill, death
 * and cmdres topics and hands each message, with its topic and receive time, to the verifiers.
 *
 * Back-pressure: the hand-over blocks while the verifiers are at their high-water mark, which
 * stops Paho reading from the broker; the broker queues for the persistent session. Paho sends
 * the QoS 1 PUBACK before the callback runs, so reliability comes from the archive's end-to-end
 * ack to the gateway, not from this hop.
 *
 * It also reads the broker's own log ($SYS/broker/log/#, QoS 0) and hands the security events in
 * it — refused TLS handshakes, protocol errors, what the broker plugin refused — to the audit log,
 * at most BROKER_EVENTS_BUDGET per 10 s (broker_log).
 *
 * Sockets: [mqtt] MQTT/TLS client "ingest" (subscribe only).
 *          [output verify] PUSH to every verifier replica (round robin).
 *          [output archive] the archive (optional): the audit events from the broker's log and
 *          the process's own security events (refusals of the metrics endpoint), through
 *          cm_audit_out, which spools them while the archive is away and takes them from
 *          Paho's thread and the main thread alike. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "broker_log.h"
#include "cm_audit_out.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_ratelimit.h"
#include "cm_stage.h"
#include "cm_time.h"

#define MAX_PAYLOAD 65536
#define BROKER_LOG_TOPIC "$SYS/broker/log/#"
#define BROKER_EVENTS_BUDGET 30

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_MQTT_SPEC_ROWS("mqtt"),
    {NULL, NULL, 0, NULL},
};

static const char *const TOPICS[] = {"suido/v1/+/birth", "suido/v1/+/data", "suido/v1/+/backfill",
                                     "suido/v1/+/death", "suido/v1/+/cmdres"};

typedef struct ingest {
    cm_svc *svc;
    void *to_verify;  /* used only on the MQTT callback thread */
    cm_ratelimit limit;
    cm_metric *broker_events, *broker_suppressed;
    cm_metric *received, *bytes, *forwarded, *bad_topic, *too_big, *connects, *lost;
    cm_metric *connected, *handover;
} ingest;

/* One line of the broker's log: a security event goes to the audit log, within the budget. */
static void on_broker_log(ingest *in, const char *line, size_t len)
{
    broker_event ev;
    cm_audit_out *audit = in->svc->audit_out;
    if (!audit || !broker_log_classify(line, len, &ev))
        return;
    uint64_t closed = 0;
    int pass = cm_ratelimit_take(&in->limit, cm_now_ms(), &closed);
    if (closed) {
        char detail[96];
        snprintf(detail, sizeof detail, "events=%llu window_s=10 (over the audit budget)",
                 (unsigned long long)closed);
        cm_audit_out_record(audit, "ingest", "broker_events_suppressed", "", "broker", detail);
    }
    if (!pass) {
        cm_metric_inc(in->broker_suppressed);
        return;
    }
    cm_metric_inc(in->broker_events);
    cm_audit_out_record(audit, "ingest", ev.event, ev.subject, "broker", ev.detail);
}

/* Runs on Paho's thread. Returns 1 once the message is handed on; 0 (only while stopping) makes
 * Paho deliver it again. */
static int on_message(void *ctx, const char *topic, const void *payload, size_t len)
{
    ingest *in = ctx;
    if (strncmp(topic, "$SYS/broker/log/", 16) == 0) {
        on_broker_log(in, payload, len);
        return 1;
    }
    cm_metric_inc(in->received);
    cm_metric_add(in->bytes, len);
    char gw[65], kind[16];
    if (cm_topic_parse(topic, gw, kind) != CM_OK) {
        cm_metric_inc(in->bad_topic);
        cm_svc_reject(in->svc, "bad_topic");
        cm_warn("topic_len=%zu error=\"unexpected topic\"", strlen(topic));
        return 1;
    }
    if (len > MAX_PAYLOAD) {
        cm_metric_inc(in->too_big);
        cm_svc_reject(in->svc, "too_big");
        cm_warn("gateway=%s size=%zu error=\"payload over limit\"", gw, len);
        return 1;
    }
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.topic = (char *)topic;
    m.received_ms = cm_now_ms();
    m.envelope.data = (uint8_t *)payload;
    m.envelope.len = len;
    uint64_t t0 = cm_mono_us();
    if (cm_stage_send(in->to_verify, &m) != CM_OK)
        return 0; /* stopping: leave it with the broker, it is delivered again */
    cm_metric_observe_us(in->handover, cm_mono_us() - t0);
    cm_metric_inc(in->forwarded);
    return 1;
}

static void on_connected(void *ctx, int reconnect)
{
    ingest *in = ctx;
    cm_metric_inc(in->connects);
    cm_metric_set(in->connected, 1);
    cm_info("event=connected reconnect=%d", reconnect);
}

static void on_lost(void *ctx, const char *cause)
{
    ingest *in = ctx;
    cm_metric_inc(in->lost);
    cm_metric_set(in->connected, 0);
    cm_warn("event=connection_lost cause=\"%s\"", cause ? cause : "");
}

int main(int argc, char **argv)
{
    ingest in = {0};
    in.svc = cm_svc_start("ingest", argc, argv, SPEC);
    cm_svc_claim_state(in.svc); /* one holder of the broker identity "ingest" */
    cm_svc *s = in.svc;
    char err[CM_CONF_ERRLEN];
    cm_mqtt_opts mo = {
        .clean_session = 0, /* the broker queues for us while we are away */
        .max_inflight = 64,
        .verify_hostname = 1,
        .on_message = on_message,
        .on_connected = on_connected,
        .on_lost = on_lost,
        .ctx = &in,
    };
    if (cm_mqtt_opts_from_conf(s->conf, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(s->conf));
    cm_svc_ready(s);

    cm_metrics *mx = s->metrics;
    in.received = cm_metric_counter(mx, "suido_ingest_received_total", "MQTT messages received");
    in.bytes = cm_metric_counter(mx, "suido_ingest_received_bytes_total", "payload bytes received");
    in.forwarded = cm_metric_counter(mx, "suido_ingest_forwarded_total",
                                     "messages handed to the verifiers");
    in.bad_topic = cm_metric_counter(mx, "suido_ingest_bad_topic_total",
                                     "messages on unexpected topics");
    in.too_big = cm_metric_counter(mx, "suido_ingest_too_big_total", "oversized payloads");
    in.connects = cm_metric_counter(mx, "suido_ingest_connects_total", "broker (re)connects");
    in.lost = cm_metric_counter(mx, "suido_ingest_connection_lost_total", "broker connection losses");
    in.connected = cm_metric_gauge(mx, "suido_ingest_connected", "1 while connected to the broker");
    in.handover = cm_metric_histogram(mx, "suido_ingest_handover_seconds",
                                      "time to hand a message to the verifiers (waits while full)");
    cm_stage_metrics(s);

    if (cm_zsock_client_conf(s->zctx, s->conf, "output verify", ZMQ_PUSH, &s->keys, &in.to_verify,
                             err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    cm_ratelimit_init(&in.limit, 10000, BROKER_EVENTS_BUDGET);
    in.broker_events = cm_metric_counter(mx, "suido_ingest_broker_events_total",
                                         "security events from the broker's log, audited");
    in.broker_suppressed = cm_metric_counter(mx, "suido_ingest_broker_events_suppressed_total",
                                             "broker security events over the audit budget");
    cm_mqtt *mqtt = NULL;
    if (cm_mqtt_new(&mo, &mqtt) != CM_OK)
        cm_svc_die(s, "cannot create the MQTT client for %s", mo.uri);
    for (size_t i = 0; i < sizeof TOPICS / sizeof TOPICS[0]; i++)
        cm_mqtt_subscribe(mqtt, TOPICS[i], 1);
    if (s->audit_out)
        cm_mqtt_subscribe(mqtt, BROKER_LOG_TOPIC, 0); /* best effort: not queued while away */
    if (cm_mqtt_connect(mqtt, 0) != CM_OK)
        cm_warn("uri=%s error=\"broker not reachable yet; retrying\"", mo.uri);

    while (!cm_daemon_stopping) {
        usleep(100 * 1000);
        cm_svc_tick(s);
    }
    cm_info("event=stopping");
    cm_mqtt_destroy(&mqtt);
    zmq_close(in.to_verify);
    cm_svc_destroy(&in.svc);
    return 0;
}
