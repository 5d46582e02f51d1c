/* suido-profile: gives verified readings their meaning from the data profile — profile channel,
 * unit, conversion — checks that a birth declares only channels the profile knows, and hands
 * readings on to the archive and to the anomaly shard that owns their gateway. Stateless, so it
 * scales by replicas.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: verify.
 *          [output archive] PUSH to the archive.
 *          [output anomaly] one PUSH per anomaly shard; a gateway always goes to the same shard
 *          (FNV-1a of its id modulo the number of shards), so per-gateway state stays in one
 *          place.
 *          [output gate] optional PUSH to the command gate: mapped readings and command results,
 *          its view of the plant. Never blocks the pipeline: when the gate is away or slow the
 *          frame is dropped and counted (the gate then finds its data stale and refuses
 *          commands that depend on it). */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_log.h"
#include "cm_profile.h"
#include "cm_stage.h"

#define MAX_SHARDS 16

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    {"profile", "file", 1, "data profile"},
    {NULL, NULL, 0, NULL},
};

typedef struct profiler {
    cm_svc *svc;
    cm_profile *profile;
    void *to_archive;
    void *shards[MAX_SHARDS];
    void *to_gate; /* may be NULL */
    int n_shards;
    cm_metric *mapped, *unknown, *births_refused, *gate_dropped;
} profiler;

static unsigned shard_of(const char *gw, int n)
{
    uint32_t h = 2166136261u;
    for (; *gw; gw++)
        h = (h ^ (uint8_t)*gw) * 16777619u;
    return h % (unsigned)n;
}

static void to_gate(profiler *p, const Suido__StageMessage *m)
{
    if (p->to_gate && cm_zsend_pb(p->to_gate, &m->base, ZMQ_DONTWAIT) != CM_OK)
        cm_metric_inc(p->gate_dropped);
}

static void on_data(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    if (!m->batch || !m->header) {
        cm_warn("topic=%s error=\"verified message without batch\"", m->topic);
        return;
    }
    size_t n = m->batch->n_readings;
    Suido__MappedReading *mr = calloc(n ? n : 1, sizeof *mr);
    Suido__MappedReading **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!mr || !ptrs) {
        free(mr);
        free(ptrs);
        cm_error("error=\"out of memory\"");
        return;
    }
    size_t k = 0;
    uint32_t unknown = 0;
    for (size_t i = 0; i < n; i++) {
        const Suido__Reading *r = m->batch->readings[i];
        const cm_channel *c = cm_profile_channel(p->profile, m->site_kind, r->channel);
        if (!c) {
            unknown++;
            continue;
        }
        suido__mapped_reading__init(&mr[k]);
        mr[k].channel = (char *)c->id;
        mr[k].value = r->value;
        mr[k].unit = (char *)c->unit;
        mr[k].timestamp_ms = m->header->timestamp_ms + r->offset_ms;
        ptrs[k] = &mr[k];
        k++;
    }
    cm_metric_add(p->mapped, k);
    if (unknown) {
        cm_metric_add(p->unknown, unknown);
        cm_warn("gateway=%s kind=%s unknown_channels=%u", m->header->gateway_id, m->site_kind,
                unknown);
    }
    /* the archive keeps the signed bytes; the anomaly checker needs only the meaning */
    m->unknown_channels = unknown;
    cm_stage_send(p->to_archive, m);
    ProtobufCBinaryData env = m->envelope;
    Suido__TelemetryBatch *batch = m->batch;
    m->envelope.len = 0;
    m->envelope.data = NULL;
    m->batch = NULL;
    m->n_mapped = k;
    m->mapped = ptrs;
    cm_stage_send(p->shards[shard_of(m->header->gateway_id, p->n_shards)], m);
    to_gate(p, m);
    m->envelope = env;
    m->batch = batch;
    m->n_mapped = 0;
    m->mapped = NULL;
    free(mr);
    free(ptrs);
}

/* A birth may only declare channels the profile knows for the gateway's site kind, in a unit
 * that converts to the profile's. Otherwise it is refused (and stored as a refusal). */
static void on_birth(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    const char *why = NULL;
    if (!m->birth)
        why = "birth_without_body";
    for (size_t i = 0; !why && i < m->birth->n_channels; i++) {
        const Suido__ChannelDecl *d = m->birth->channels[i];
        const cm_channel *c = cm_profile_channel(p->profile, m->site_kind, d->name ? d->name : "");
        double x;
        if (!c)
            why = "unknown_channel";
        else if (cm_unit_convert(d->unit ? d->unit : "", c->unit, 0, &x) != CM_OK)
            why = "unit_mismatch";
    }
    if (why) {
        cm_metric_inc(p->births_refused);
        cm_warn("topic=%s reason=%s result=birth_refused", m->topic, why);
        m->status = SUIDO__VERIFY_STATUS__VERIFY_REJECTED;
        m->reason = (char *)why;
    }
    cm_stage_send(p->to_archive, m);
}

static void on_passthrough(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    profiler *p = ctx;
    cm_stage_send(p->to_archive, arg);
}

/* A command result is stored like any numbered envelope, and the gate learns what happened. */
static void on_cmdres(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    cm_stage_send(p->to_archive, m);
    ProtobufCBinaryData env = m->envelope;
    m->envelope.len = 0;
    m->envelope.data = NULL;
    to_gate(p, m);
    m->envelope = env;
}

static const cm_dispatch DISPATCH[] = {
    {"data", "verify", on_data},
    {"backfill", "verify", on_data},
    {"birth", "verify", on_birth},
    {"death", "verify", on_passthrough},
    {"cmdres", "verify", on_cmdres},
    {NULL, NULL, NULL},
};

static void connect_shards(profiler *p, char err[CM_CONF_ERRLEN])
{
    cm_svc *s = p->svc;
    const char *eps = cm_conf_get(s->conf, "output anomaly", "connect");
    const char *keyf = cm_conf_get(s->conf, "output anomaly", "server_key");
    char buf[4096], key[CM_Z85_LEN + 1];
    const char *items[MAX_SHARDS];
    if (!eps || !keyf)
        cm_svc_die(s, "%s: [output anomaly] needs connect and server_key", cm_conf_name(s->conf));
    p->n_shards = cm_conf_split(eps, buf, sizeof buf, items, MAX_SHARDS);
    if (p->n_shards <= 0)
        cm_svc_die(s, "%s: [output anomaly] connect needs 1 to %d shards", cm_conf_name(s->conf),
                   MAX_SHARDS);
    if (cm_curve_load_public(keyf, key) != CM_OK)
        cm_svc_die(s, "%s: not a CURVE public key", keyf);
    for (int i = 0; i < p->n_shards; i++)
        if (cm_zsock_client(s->zctx, ZMQ_PUSH, items[i], key, &s->keys, &p->shards[i]) != CM_OK)
            cm_svc_die(s, "cannot connect anomaly shard %s", items[i]);
    (void)err;
}

int main(int argc, char **argv)
{
    profiler p = {0};
    p.svc = cm_svc_start("profile", argc, argv, SPEC);
    cm_svc *s = p.svc;
    char err[CM_CONF_ERRLEN];
    if (cm_profile_load(cm_conf_get(s->conf, "profile", "file"), &p.profile, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_info("profile=\"%s\" version=%ld channels=%zu", cm_profile_name(p.profile),
            cm_profile_version(p.profile), cm_profile_channel_count(p.profile));
    cm_svc_ready(s);

    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &p.to_archive, err))
        cm_svc_die(s, "%s", err);
    cm_stage_audit_security(s, p.to_archive);
    connect_shards(&p, err);
    if (cm_conf_get(s->conf, "output gate", "connect") &&
        cm_zsock_client_conf(s->zctx, s->conf, "output gate", ZMQ_PUSH, &s->keys, &p.to_gate, err))
        cm_svc_die(s, "%s", err);
    p.gate_dropped = cm_metric_counter(s->metrics, "suido_profile_gate_dropped_total",
                                       "frames for the command gate dropped (gate away or slow)");
    p.mapped = cm_metric_counter(s->metrics, "suido_profile_mapped_total", "readings mapped");
    p.unknown = cm_metric_counter(s->metrics, "suido_profile_unknown_channel_total",
                                  "readings on channels the profile does not know");
    p.births_refused = cm_metric_counter(s->metrics, "suido_profile_births_refused_total",
                                         "births declaring unknown channels or units");
    cm_metric_set(cm_metric_gauge(s->metrics, "suido_profile_version", "data profile version"),
                  cm_profile_version(p.profile));

    cm_events *events = NULL;
    if (cm_events_new(s, "events", NULL, NULL, &events, err))
        cm_svc_die(s, "%s", err);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &p,
                          .events = events};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    zmq_close(input);
    zmq_close(p.to_archive);
    if (p.to_gate)
        zmq_close(p.to_gate);
    for (int i = 0; i < p.n_shards; i++)
        zmq_close(p.shards[i]);
    cm_profile_destroy(&p.profile);
    cm_svc_destroy(&p.svc);
    return 0;
}
