/* suido-sparkplug: the Sparkplug B host application. Lets the edge nodes a utility already runs
 * feed suido: it subscribes (as the MQTT identity "sparkplug") to the node and device topics of
 * the groups its map names, decodes each payload (proto/sparkplug_b.proto, protobuf-c), follows
 * every node's session (spb_host.h) and hands births, readings and deaths to the profile stage,
 * like verify does for suido gateways, with provenance SPARKPLUG: authenticated by the node's
 * TLS identity at the broker (which lets a node publish on its own topics only), not signed.
 *
 * It is the primary host application of its groups: spBv1.0/STATE/<host_id> carries
 * {"online":true,...} retained while it is connected, and its will sets it to false.
 *
 * Commands: the gate hands it the commands it allowed for these nodes; each is written to the
 * actuator's mapped metric (NCMD, or DCMD for a device's) and its result is the next value the
 * node publishes for that metric (spb_host_command), reported like a gateway's result.
 *
 * Sockets: [mqtt] MQTT/TLS client "sparkplug": subscribes spBv1.0/<group>/#, publishes NCMD and
 *          DCMD (rebirth requests, commands) and its STATE.
 *          [input] PULL, CURVE server, allow-list: gate (commands).
 *          [output profile] PUSH to the profile stage (accepted records, command results).
 *          [output archive] PUSH to the archive: refusals (stored with the payload and audited);
 *          its audit events (seq gaps, its own security events) go on a connection of their
 *          own through cm_audit_out, which spools them while the archive is away and takes
 *          them from either thread.
 *          [registry] DEALER: each node's gateway record (active? site, kind); fail closed.
 * Paho's callback thread handles the nodes' messages, the main thread the commands; each has its
 * own connection to profile (a ZeroMQ socket belongs to one thread), the registry is the callback
 * thread's, and the session logic is shared under a lock. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_ratelimit.h"
#include "cm_registry.h"
#include "cm_stage.h"
#include "cm_time.h"
#include "spb_host.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_MQTT_SPEC_ROWS("mqtt"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    {"sparkplug", "map", 1, "the Sparkplug map: edge nodes, their groups, metrics -> channels"},
    {"sparkplug", "host_id", 0, "primary host id: its STATE topic is spBv1.0/STATE/<id> (suido)"},
    {"sparkplug", "rebirth_interval_ms", 0, "at most one rebirth request per node per (5000)"},
    {"sparkplug", "births_per_minute", 0, "NBIRTHs of one node above this are refused (6)"},
    {"sparkplug", "max_ahead_s", 0, "how far ahead of this host's clock a timestamp may be (10)"},
    {NULL, NULL, 0, NULL},
};

#define SEQ_GAP_AUDIT_BUDGET 30 /* per 10 s */

typedef struct host {
    cm_svc *svc;
    pthread_mutex_t mu; /* logic: Paho's thread (messages) and the main thread (commands) */
    spb_host *logic;
    cm_registry *registry;      /* Paho's callback thread */
    cm_registry *registry_main; /* the main thread */
    cm_mqtt *mqtt;
    void *to_profile, *to_archive; /* Paho's callback thread */
    void *profile_main;            /* the main thread */
    char state_topic[96];
    char state_online[96];
    atomic_int publish_state; /* set on connect; the main loop publishes STATE */
    cm_ratelimit gap_audit;
    const spb_map *map;
    unsigned char *seen;  /* per map node: sent accepted data since the last report */
    uint64_t next_seen_report_ms;
    cm_metric *received, *forwarded, *readings, *skipped, *refused_all, *rebirths, *seq_gaps;
    cm_metric *online, *connected, *connects, *commands, *commands_refused;
} host;

static void count_refusal(host *h, const char *reason)
{
    char name[128];
    snprintf(name, sizeof name, "suido_sparkplug_refused_total{reason=\"%s\"}", reason);
    cm_metric_inc(cm_metric_counter(h->svc->metrics, name, "Sparkplug messages refused, by reason"));
    cm_metric_inc(h->refused_all);
    cm_svc_reject(h->svc, reason);
}

/* A refused message goes to the archive as a refusal (stored with its payload, audited there). */
static void refuse(host *h, const char *topic, const char *node, const uint8_t *payload,
                   size_t len, uint64_t now_ms, const char *reason, const char *detail)
{
    count_refusal(h, reason);
    char t[160], d[160];
    cm_log_escape(t, sizeof t, topic);
    cm_log_escape(d, sizeof d, detail ? detail : "");
    cm_warn("topic=%s reason=%s detail=%s result=refused", t, reason, d);
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    Suido__Header hd = SUIDO__HEADER__INIT;
    m.topic = (char *)topic;
    m.received_ms = now_ms;
    m.status = SUIDO__VERIFY_STATUS__VERIFY_REJECTED;
    m.reason = (char *)reason;
    m.provenance = SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG;
    m.envelope.data = (uint8_t *)payload;
    m.envelope.len = len > SPB_MAX_PAYLOAD ? SPB_MAX_PAYLOAD : len;
    if (node && *node) {
        hd.gateway_id = (char *)node;
        m.header = &hd;
    }
    cm_stage_send(h->to_archive, &m);
}

static void ask_rebirth(host *h, const char *topic, const char *node, uint64_t now_ms)
{
    /* spBv1.0/<group>/<type>/<node>...: the NCMD topic is the same group's */
    const char *g = topic + 8, *e = strchr(g, '/');
    char ncmd[200];
    if (!e || snprintf(ncmd, sizeof ncmd, "spBv1.0/%.*s/NCMD/%s", (int)(e - g), g, node) >=
                  (int)sizeof ncmd)
        return;
    uint8_t *buf = NULL;
    size_t n = 0;
    if (spb_rebirth_payload(now_ms, &buf, &n) != CM_OK)
        return;
    if (cm_mqtt_publish(h->mqtt, ncmd, buf, n, 0, 0) == CM_OK) {
        cm_metric_inc(h->rebirths);
        cm_info("node=%s event=rebirth_requested", node);
    }
    free(buf);
}

/* Callback thread: every few seconds, tells the registry which nodes sent accepted data (the
 * inventory's "last seen", as verify does for suido gateways). */
static void report_seen(host *h, const char *node, uint64_t now)
{
    const spb_map_node *n = node ? spb_map_find(h->map, node) : NULL;
    if (n)
        h->seen[n - h->map->nodes] = 1;
    if (now < h->next_seen_report_ms)
        return;
    h->next_seen_report_ms = now + 5000;
    char *ids[64];
    size_t k = 0;
    for (size_t i = 0; i < h->map->n_nodes; i++) {
        if (h->seen[i] && k < 64)
            ids[k++] = (char *)h->map->nodes[i].id;
        h->seen[i] = 0;
    }
    if (!k)
        return;
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_SEEN;
    req.ids = ids;
    req.n_ids = k;
    cm_registry_notify(h->registry, &req);
}

/* A record to the profile stage, with the gateway's site and kind from the registry. */
static void forward(host *h, void *sock, Suido__StageMessage *rec, const cm_gateway *gw)
{
    rec->site = (char *)gw->site;
    rec->site_kind = (char *)gw->kind;
    cm_stage_send(sock, rec);
    rec->site = NULL; /* freed as unpacked: not ours */
    rec->site_kind = NULL;
    cm_metric_inc(h->forwarded);
}

/* Runs on Paho's thread: one Sparkplug message. Always returns 1 (a message is never asked for
 * again: what was not forwarded was refused, and Sparkplug has no resend). */
static int on_message(void *ctx, const char *topic, const void *payload, size_t len)
{
    host *h = ctx;
    uint64_t now = cm_now_ms();
    cm_metric_inc(h->received);
    spb_result res;
    pthread_mutex_lock(&h->mu);
    spb_host_handle(h->logic, topic, payload, len, now, &res);
    cm_metric_set(h->online, spb_host_online(h->logic));
    pthread_mutex_unlock(&h->mu);
    if (res.ignored) {
        spb_result_clear(&res);
        return 1;
    }
    if (res.seq_gap) {
        cm_metric_inc(h->seq_gaps);
        uint64_t closed = 0;
        if (cm_ratelimit_take(&h->gap_audit, now, &closed))
            cm_audit_out_record(h->svc->audit_out, "sparkplug", "sparkplug_seq_gap", res.node,
                                res.node, res.type);
        cm_warn("node=%s type=%s event=seq_gap", res.node, res.type);
    }
    if (res.rebirth)
        ask_rebirth(h, topic, res.node, now);
    if (res.refused) {
        refuse(h, topic, res.node, payload, len, now, res.refused, res.detail);
    } else if (res.record || res.result) {
        const cm_gateway *gw = NULL;
        cm_err rc = cm_registry_gateway(h->registry, res.node, &gw);
        if (rc != CM_OK || gw->state != SUIDO__ENTITY_STATE__STATE_ACTIVE) {
            const char *why = rc == CM_ERR_UNAVAILABLE || rc == CM_ERR_TIMEOUT
                                  ? "registry_unavailable"
                              : rc != CM_OK ? "unknown_gateway"
                                            : "gateway_not_active";
            refuse(h, topic, res.node, payload, len, now, why, "");
        } else {
            if (res.record)
                forward(h, h->to_profile, res.record, gw);
            if (res.values)
                forward(h, h->to_profile, res.values, gw);
            cm_metric_add(h->readings, res.readings);
            if (res.result)
                forward(h, h->to_profile, res.result, gw);
            report_seen(h, res.node, now);
        }
    }
    cm_metric_add(h->skipped, res.skipped);
    spb_result_clear(&res);
    return 1;
}

/* Main thread: a command the gate allowed for one of these nodes. Written to the node, or refused
 * with a result the gate hears like any gateway's. */
static void on_command(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    host *h = ctx;
    Suido__StageMessage *m = arg;
    const Suido__Command *c = m->command;
    if (!c || !c->gateway_id || !c->command_id || !c->channel)
        return;
    uint64_t now = cm_now_ms();
    spb_write w;
    Suido__StageMessage *refused = NULL;
    pthread_mutex_lock(&h->mu);
    cm_err rc = spb_host_command(h->logic, c, now, &w, &refused);
    pthread_mutex_unlock(&h->mu);
    char gw[140], act[140];
    cm_log_escape(gw, sizeof gw, c->gateway_id);
    cm_log_escape(act, sizeof act, c->channel);
    if (rc == CM_OK && cm_mqtt_publish(h->mqtt, w.topic, w.payload, w.len, 1, 0) != CM_OK)
        cm_warn("gateway=%s command=%s error=\"not published: broker unavailable\"", gw,
                c->command_id); /* the gate reports it unanswered */
    else if (rc == CM_OK)
        cm_info("gateway=%s command=%s actuator=%s value=%.6g topic=%s event=command_written", gw,
                c->command_id, act, c->value, w.topic);
    free(w.payload);
    if (rc == CM_OK) {
        cm_metric_inc(h->commands);
        return;
    }
    cm_metric_inc(h->commands_refused);
    if (!refused) {
        cm_warn("gateway=%s command=%s error=\"not a node of this host's map\"", gw,
                c->command_id);
        return;
    }
    cm_info("gateway=%s command=%s actuator=%s reason=%s event=command_refused", gw,
            c->command_id, act, refused->cmdres->reason);
    const cm_gateway *g = NULL;
    static const cm_gateway unknown = {0}; /* the registry did not answer: stored without site */
    if (cm_registry_gateway(h->registry_main, c->gateway_id, &g) != CM_OK)
        g = &unknown;
    forward(h, h->profile_main, refused, g);
    spb_record_free(&refused);
}

static const cm_dispatch DISPATCH[] = {
    {"command", "gate", on_command},
    {NULL, NULL, NULL},
};

/* Every tick of the main loop: STATE online after each (re)connect. */
static void on_tick(void *ctx)
{
    host *h = ctx;
    if (atomic_exchange(&h->publish_state, 0) &&
        cm_mqtt_publish(h->mqtt, h->state_topic, h->state_online, strlen(h->state_online), 1, 1) !=
            CM_OK)
        atomic_store(&h->publish_state, 1); /* not connected after all: next round */
}

static void on_connected(void *ctx, int reconnect)
{
    host *h = ctx;
    cm_metric_inc(h->connects);
    cm_metric_set(h->connected, 1);
    atomic_store(&h->publish_state, 1);
    cm_info("event=connected reconnect=%d", reconnect);
}

static void on_lost(void *ctx, const char *cause)
{
    host *h = ctx;
    cm_metric_set(h->connected, 0);
    cm_warn("event=connection_lost cause=\"%s\"", cause ? cause : "");
}

int main(int argc, char **argv)
{
    static host h; /* the callback thread holds it until the MQTT client is destroyed */
    pthread_mutex_init(&h.mu, NULL);
    h.svc = cm_svc_start("sparkplug", argc, argv, SPEC);
    cm_svc_claim_state(h.svc); /* one holder of the broker identity and of the nodes' sessions */
    cm_svc *s = h.svc;
    char err[CM_CONF_ERRLEN];
    long interval_ms, births, ahead_s;
    const char *host_id = cm_conf_get(s->conf, "sparkplug", "host_id");
    if (!host_id)
        host_id = "suido";
    if (!cm_valid_label(host_id))
        cm_svc_die(s, "%s: [sparkplug] host_id '%s': 1 to 64 of [A-Za-z0-9._-]",
                   cm_conf_name(s->conf), host_id);
    if (cm_conf_long(s->conf, "sparkplug", "rebirth_interval_ms", 5000, 100, 3600000,
                     &interval_ms, err) ||
        cm_conf_long(s->conf, "sparkplug", "births_per_minute", 6, 1, 600, &births, err) ||
        cm_conf_long(s->conf, "sparkplug", "max_ahead_s", 10, 0, 300, &ahead_s, err))
        cm_svc_die(s, "%s", err);
    cm_conf *mapconf = NULL;
    spb_map *map = NULL;
    if (cm_conf_load(cm_conf_get(s->conf, "sparkplug", "map"), &mapconf, err) != CM_OK ||
        spb_map_load(mapconf, &map, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    spb_limits lim = {.rebirth_interval_ms = (uint64_t)interval_ms,
                      .births_per_minute = (unsigned)births,
                      .max_ahead_ms = (uint64_t)ahead_s * 1000u};
    h.map = map;
    if (!(h.seen = calloc(map->n_nodes, 1)) || !(h.logic = spb_host_new(map, &lim)))
        cm_svc_die(s, "out of memory");

    /* STATE (Sparkplug 3.0): the same timestamp in the birth and the will of one connection */
    uint64_t t0 = cm_now_ms();
    char state_offline[96];
    snprintf(h.state_topic, sizeof h.state_topic, "spBv1.0/STATE/%s", host_id);
    snprintf(h.state_online, sizeof h.state_online, "{\"online\":true,\"timestamp\":%llu}",
             (unsigned long long)t0);
    snprintf(state_offline, sizeof state_offline, "{\"online\":false,\"timestamp\":%llu}",
             (unsigned long long)t0);
    cm_mqtt_opts mo = {
        .clean_session = 1, /* a host application starts clean: births tell it everything */
        .max_inflight = 64,
        .verify_hostname = 1,
        .will_topic = h.state_topic,
        .will_payload = state_offline,
        .will_len = strlen(state_offline),
        .will_retained = 1,
        .on_message = on_message,
        .on_connected = on_connected,
        .on_lost = on_lost,
        .ctx = &h,
    };
    if (cm_mqtt_opts_from_conf(s->conf, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(s->conf));
    cm_svc_ready(s);

    cm_metrics *mx = s->metrics;
    h.received = cm_metric_counter(mx, "suido_sparkplug_received_total", "Sparkplug messages received");
    h.forwarded = cm_metric_counter(mx, "suido_sparkplug_forwarded_total",
                                    "births, data and deaths handed to the profile stage");
    h.readings = cm_metric_counter(mx, "suido_sparkplug_readings_total",
                                   "readings of mapped metrics handed on");
    h.skipped = cm_metric_counter(mx, "suido_sparkplug_unmapped_metrics_total",
                                  "metric values of no mapped channel, skipped");
    h.refused_all = cm_metric_counter(mx, "suido_sparkplug_refused_all_total",
                                      "Sparkplug messages refused, all reasons");
    h.rebirths = cm_metric_counter(mx, "suido_sparkplug_rebirth_requests_total",
                                   "rebirth requests sent (NCMD Node Control/Rebirth)");
    h.seq_gaps = cm_metric_counter(mx, "suido_sparkplug_seq_gaps_total",
                                   "messages whose seq was not the next one");
    h.online = cm_metric_gauge(mx, "suido_sparkplug_nodes_online", "edge nodes with a live session");
    h.connected = cm_metric_gauge(mx, "suido_sparkplug_connected", "1 while connected to the broker");
    h.connects = cm_metric_counter(mx, "suido_sparkplug_connects_total", "broker (re)connects");
    h.commands = cm_metric_counter(mx, "suido_sparkplug_commands_written_total",
                                   "commands from the gate written to a node (NCMD/DCMD)");
    h.commands_refused = cm_metric_counter(mx, "suido_sparkplug_commands_refused_total",
                                           "commands from the gate this host refused");
    cm_stage_metrics(s);
    cm_ratelimit_init(&h.gap_audit, 10000, SEQ_GAP_AUDIT_BUDGET);

    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output profile", ZMQ_PUSH, &s->keys,
                             &h.to_profile, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output profile", ZMQ_PUSH, &s->keys,
                             &h.profile_main, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &h.to_archive, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &h.registry, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &h.registry_main, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);

    if (cm_mqtt_new(&mo, &h.mqtt) != CM_OK)
        cm_svc_die(s, "cannot create the MQTT client for %s", mo.uri);
    const char *groups[64];
    size_t ng = spb_map_groups(map, groups, 64);
    for (size_t i = 0; i < ng; i++) {
        char filter[96];
        snprintf(filter, sizeof filter, "spBv1.0/%s/#", groups[i]);
        cm_mqtt_subscribe(h.mqtt, filter, 1);
        cm_info("group=%s event=subscribed", groups[i]);
    }
    cm_info("nodes=%zu groups=%zu host_id=%s event=map_loaded", map->n_nodes, ng, host_id);
    if (cm_mqtt_connect(h.mqtt, 0) != CM_OK)
        cm_warn("uri=%s error=\"broker not reachable yet; retrying\"", mo.uri);

    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &h,
                          .on_tick = on_tick};
    cm_stage_run(&stage);
    cm_info("event=stopping");
    /* an orderly stop says so itself: the will is for a host that vanishes */
    char offline[96];
    snprintf(offline, sizeof offline, "{\"online\":false,\"timestamp\":%llu}",
             (unsigned long long)t0);
    cm_mqtt_publish(h.mqtt, h.state_topic, offline, strlen(offline), 1, 1);
    cm_mqtt_destroy(&h.mqtt);
    cm_registry_destroy(&h.registry);
    cm_registry_destroy(&h.registry_main);
    zmq_close(input);
    zmq_close(h.to_profile);
    zmq_close(h.profile_main);
    zmq_close(h.to_archive);
    spb_host_destroy(&h.logic);
    free(h.seen);
    spb_map_destroy(&map);
    cm_conf_destroy(&mapconf);
    cm_svc_destroy(&h.svc);
    return 0;
}
