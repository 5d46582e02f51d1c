/* suido-profile: gives verified readings their meaning from the data profile — profile channel,
 * unit, conversion — checks that a birth declares only channels the profile knows, and hands
 * readings on to the archive and to the anomaly shard that owns their gateway. Stateless, so it
 * scales by replicas.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: verify, and sparkplug (the Sparkplug host:
 *          births, data and deaths of edge nodes, provenance SPARKPLUG).
 *          [output archive] PUSH to the archive.
 *          Its own security events go to the audit log through cm_audit_out (a connection
 *          of its own to the archive, spooled while the archive is away).
 *          [output anomaly] one PUSH per anomaly shard; a gateway always goes to the same shard
 *          (FNV-1a of its id modulo the number of shards), so per-gateway state stays in one
 *          place.
 *          [registry] DEALER: the profile in force, and the units each gateway declared in its
 *          last birth (stored there by whichever replica saw the birth; a replica caches them
 *          and drops a gateway's entry when the registry announces a change), so that every
 *          replica converts readings into the profile's units.
 *          [output gate] optional PUSH to the command gate: mapped readings and command results,
 *          its view of the plant. Never blocks the pipeline: when the gate is away or slow the
 *          frame is dropped and counted (the gate then finds its data stale and refuses
 *          commands that depend on it). */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_profile.h"
#include "cm_registry.h"
#include "cm_stage.h"

#define MAX_SHARDS 16
#define UNIT_SLOTS 4096 /* gateways whose declared units a replica keeps; full: start afresh */

/* The units a gateway declared, by channel name (absent: the profile's unit). */
typedef struct declared {
    char gw[65];
    size_t n;
    char (*channel)[65];
    char (*unit)[16];
} declared;

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_PROFILE_SPEC_ROWS("profile"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    {NULL, NULL, 0, NULL},
};

typedef struct profiler {
    cm_svc *svc;
    cm_registry *reg; /* NULL with a local profile file */
    cm_profile *profile;
    cm_metric *version;
    void *to_archive;
    void *shards[MAX_SHARDS];
    void *to_gate; /* may be NULL */
    int n_shards;
    cm_metric *mapped, *unknown, *births_refused, *gate_dropped, *converted, *units_unknown;
    declared *units[UNIT_SLOTS];
    size_t n_units;
} profiler;

static unsigned shard_of(const char *gw, int n)
{
    uint32_t h = 2166136261u;
    for (; *gw; gw++)
        h = (h ^ (uint8_t)*gw) * 16777619u;
    return h % (unsigned)n;
}

static void declared_free(declared **d)
{
    if (!*d)
        return;
    free((*d)->channel);
    free((*d)->unit);
    free(*d);
    *d = NULL;
}

static size_t unit_slot(profiler *p, const char *gw)
{
    uint32_t h = 2166136261u;
    for (const char *c = gw; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    size_t i = h % UNIT_SLOTS;
    while (p->units[i] && strcmp(p->units[i]->gw, gw) != 0)
        i = (i + 1) % UNIT_SLOTS;
    return i;
}

static void units_forget(profiler *p, const char *gw)
{
    /* open addressing without tombstones: dropping one entry means starting afresh */
    size_t i = unit_slot(p, gw);
    if (!p->units[i])
        return;
    for (size_t k = 0; k < UNIT_SLOTS; k++)
        declared_free(&p->units[k]);
    p->n_units = 0;
}

/* What gw declared, from the cache or the registry; NULL when the registry does not answer. */
static const declared *units_of(profiler *p, const char *gw)
{
    size_t i = unit_slot(p, gw);
    if (p->units[i])
        return p->units[i];
    if (!p->reg)
        return NULL;
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_CHANNELS;
    req.id = (char *)gw;
    Suido__RegistryReply *rep = NULL;
    if (cm_registry_call(p->reg, &req, &rep) != CM_OK || rep->status != 0) {
        if (rep)
            suido__registry_reply__free_unpacked(rep, NULL);
        return NULL;
    }
    declared *d = calloc(1, sizeof *d);
    size_t n = rep->n_channels;
    if (d) {
        d->channel = calloc(n ? n : 1, sizeof *d->channel);
        d->unit = calloc(n ? n : 1, sizeof *d->unit);
    }
    if (!d || !d->channel || !d->unit) {
        declared_free(&d);
        suido__registry_reply__free_unpacked(rep, NULL);
        return NULL;
    }
    snprintf(d->gw, sizeof d->gw, "%s", gw);
    for (size_t k = 0; k < n; k++) {
        snprintf(d->channel[k], sizeof d->channel[0], "%s", rep->channels[k]->name);
        snprintf(d->unit[k], sizeof d->unit[0], "%s", rep->channels[k]->unit);
    }
    d->n = n;
    suido__registry_reply__free_unpacked(rep, NULL);
    if (p->n_units >= UNIT_SLOTS * 3 / 4) { /* bounded: start afresh */
        for (size_t k = 0; k < UNIT_SLOTS; k++)
            declared_free(&p->units[k]);
        p->n_units = 0;
    }
    i = unit_slot(p, gw);
    p->units[i] = d;
    p->n_units++;
    return d;
}

static const char *declared_unit(const declared *d, const char *channel)
{
    for (size_t k = 0; d && k < d->n; k++)
        if (strcmp(d->channel[k], channel) == 0)
            return d->unit[k];
    return NULL;
}

static void to_gate(profiler *p, const Suido__StageMessage *m)
{
    if (p->to_gate && cm_zsend_pb(p->to_gate, &m->base, ZMQ_DONTWAIT) != CM_OK)
        cm_metric_inc(p->gate_dropped);
}

/* A Sparkplug node's payload is in clear, and the archive keeps it as the record: a channel the
 * profile marks confidential may not come that way (profile P8, as verify refuses a suido
 * gateway's plaintext batch). Returns the first such channel name, or NULL. */
static const char *sparkplug_confidential(const profiler *p, const Suido__StageMessage *m)
{
    if (m->provenance != SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG)
        return NULL;
    size_t n = m->batch ? m->batch->n_readings : m->birth ? m->birth->n_channels : 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = m->batch ? m->batch->readings[i]->channel : m->birth->channels[i]->name;
        const cm_channel *c = cm_profile_channel(p->profile, m->site_kind, name ? name : "");
        if (c && c->confidential)
            return name;
    }
    return NULL;
}

/* Refuses m as carrying a confidential channel in clear: stored as a refusal without its
 * payload (the readings are not kept at rest in clear), audited by the archive. */
static void refuse_in_clear(profiler *p, Suido__StageMessage *m, const char *channel)
{
    if (m->birth)
        cm_metric_inc(p->births_refused);
    cm_svc_reject(p->svc, "plaintext_confidential");
    char name[160];
    cm_warn("topic=%s channel=%s reason=plaintext_confidential result=refused", m->topic,
            cm_log_escape(name, sizeof name, channel));
    char *reason = m->reason;
    ProtobufCBinaryData env = m->envelope;
    m->status = SUIDO__VERIFY_STATUS__VERIFY_REJECTED;
    m->reason = "plaintext_confidential";
    m->envelope.data = NULL;
    m->envelope.len = 0;
    cm_stage_send(p->to_archive, m);
    m->reason = reason; /* m is freed as unpacked */
    m->envelope = env;
}

/* A record's provenance is its sender's: verify hands on signed envelopes only, the Sparkplug
 * host its nodes' payloads only, so neither can pass its records off as the other's (a record
 * the archive would call verified without a signature, or the reverse). 0: dropped, counted. */
static int provenance_ok(profiler *p, const Suido__StageMessage *m, const char *peer)
{
    int sparkplug = m->provenance == SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG;
    if (sparkplug == (strcmp(peer, "sparkplug") == 0))
        return 1;
    cm_svc_reject(p->svc, "wrong_provenance");
    cm_warn("peer=%s provenance=%d topic=%s error=\"a record of another sender's provenance\"",
            peer, (int)m->provenance, m->topic ? m->topic : "");
    return 0;
}

static void on_data(void *ctx, void *arg, const char *peer)
{
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    if (!provenance_ok(p, m, peer))
        return;
    if (!m->batch || !m->header) {
        cm_warn("topic=%s error=\"verified message without batch\"", m->topic);
        return;
    }
    const char *clear = sparkplug_confidential(p, m);
    if (clear) {
        refuse_in_clear(p, m, clear);
        return;
    }
    size_t n = m->batch->n_readings;
    Suido__MappedReading *mr = calloc(n ? n : 1, sizeof *mr);
    Suido__MappedReading **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    Suido__MappedReading **kept = calloc(n ? n : 1, sizeof *kept); /* the archive's */
    if (!mr || !ptrs || !kept) {
        free(mr);
        free(ptrs);
        free(kept);
        cm_error("error=\"out of memory\"");
        return;
    }
    size_t k = 0, n_kept = 0;
    uint32_t unknown = 0;
    const declared *d = units_of(p, m->header->gateway_id);
    if (!d)
        cm_metric_inc(p->units_unknown); /* registry away: the profile's units are assumed */
    for (size_t i = 0; i < n; i++) {
        const Suido__Reading *r = m->batch->readings[i];
        const cm_channel *c = cm_profile_channel(p->profile, m->site_kind, r->channel);
        if (!c) {
            unknown++;
            continue;
        }
        double v = r->value;
        const char *from = declared_unit(d, r->channel);
        if (from && strcmp(from, c->unit) != 0) {
            if (cm_unit_convert(from, c->unit, r->value, &v) != CM_OK) {
                unknown++; /* the birth check lets only convertible units through */
                continue;
            }
            cm_metric_inc(p->converted);
        }
        suido__mapped_reading__init(&mr[k]);
        mr[k].channel = (char *)c->id;
        mr[k].value = v;
        mr[k].unit = (char *)c->unit;
        mr[k].timestamp_ms = m->header->timestamp_ms + r->offset_ms;
        /* passed on as reported: a BAD reading's value is no measurement, and each consumer
         * (archive, shards, gate) must be able to tell */
        mr[k].quality = r->quality;
        ptrs[k] = &mr[k];
        if (!c->confidential)
            kept[n_kept++] = &mr[k];
        k++;
    }
    cm_metric_add(p->mapped, k);
    if (unknown) {
        cm_metric_add(p->unknown, unknown);
        cm_warn("gateway=%s kind=%s unknown_channels=%u", m->header->gateway_id, m->site_kind,
                unknown);
    }
    /* The archive keeps the signed bytes and aggregates the meaning (trends, reports), but
     * never of a channel the profile marks confidential: its readings stay at rest only inside
     * their encrypted envelope (profile P8), so the archive gets neither their mapped values nor
     * the decrypted batch (it never needs the batch: the envelope is the record). Deciding here,
     * with the profile in force, keeps the archive's input self-describing: a standby applying
     * the same frames stores the same rows. The anomaly checker needs only the meaning. */
    m->unknown_channels = unknown;
    m->n_mapped = n_kept;
    m->mapped = kept;
    Suido__TelemetryBatch *batch = m->batch;
    m->batch = NULL;
    cm_stage_send(p->to_archive, m);
    m->n_mapped = k;
    m->mapped = ptrs;
    ProtobufCBinaryData env = m->envelope;
    m->envelope.len = 0;
    m->envelope.data = NULL;
    cm_stage_send(p->shards[shard_of(m->header->gateway_id, p->n_shards)], m);
    to_gate(p, m);
    m->envelope = env;
    m->batch = batch;
    m->n_mapped = 0;
    m->mapped = NULL;
    free(mr);
    free(ptrs);
    free(kept);
}

/* A birth may only declare channels the profile knows for the gateway's site kind, in a unit
 * that converts to the profile's, and may not come from a boot epoch older than the newest birth
 * of its gateway (the registry decides: "stale_birth"). Otherwise it is refused (and stored as a
 * refusal, which the archive audits). */
static void on_birth(void *ctx, void *arg, const char *peer)
{
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    if (!provenance_ok(p, m, peer))
        return;
    const char *why = NULL, *bad = "";
    if (!m->birth)
        why = "birth_without_body";
    const char *clear = why ? NULL : sparkplug_confidential(p, m);
    if (clear) {
        refuse_in_clear(p, m, clear);
        return;
    }
    for (size_t i = 0; !why && i < m->birth->n_channels; i++) {
        const Suido__ChannelDecl *d = m->birth->channels[i];
        const cm_channel *c = cm_profile_channel(p->profile, m->site_kind, d->name ? d->name : "");
        double x;
        if (!c)
            why = "unknown_channel";
        else if (cm_unit_convert(d->unit ? d->unit : "", c->unit, 0, &x) != CM_OK)
            why = "unit_mismatch";
        if (why)
            bad = d->name ? d->name : "";
    }
    if (!why && p->reg && m->header && m->header->gateway_id) {
        /* every replica converts this gateway's readings from what it declared now; the
         * registry refuses a birth of an older boot epoch than the newest it recorded (kept
         * with the channels, so across restarts) */
        Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
        req.op = SUIDO__REGISTRY_OP__REG_SET_CHANNELS;
        req.id = m->header->gateway_id;
        req.boot_epoch = m->header->boot_epoch;
        req.n_channels = m->birth->n_channels;
        req.channels = m->birth->channels;
        Suido__RegistryReply *rep = NULL;
        cm_err rc = cm_registry_call(p->reg, &req, &rep);
        if (rc == CM_OK && rep->status == CM_ERR_STALE)
            why = "stale_birth";
        else if (rc != CM_OK || rep->status != 0)
            cm_warn("gateway=%s error=\"declared channels not recorded by the registry\"",
                    m->header->gateway_id);
        else
            units_forget(p, m->header->gateway_id);
        if (rep)
            suido__registry_reply__free_unpacked(rep, NULL);
    }
    char *reason = m->reason;
    if (why) {
        cm_metric_inc(p->births_refused);
        cm_svc_reject(p->svc, why);
        char name[160];
        cm_log_escape(name, sizeof name, bad); /* the gateway's text */
        cm_warn("topic=%s epoch=%llu reason=%s kind=%s channel=%s result=birth_refused",
                m->topic, m->header ? (unsigned long long)m->header->boot_epoch : 0ULL, why,
                m->site_kind ? m->site_kind : "", name);
        m->status = SUIDO__VERIFY_STATUS__VERIFY_REJECTED;
        m->reason = (char *)why;
    }
    cm_stage_send(p->to_archive, m);
    m->reason = reason; /* m is freed as unpacked: a static string may not stay in it */
}

/* A death is stored, and told to the gateway's shard (its silence is expected from now on). */
static void on_death(void *ctx, void *arg, const char *peer)
{
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    if (!provenance_ok(p, m, peer))
        return;
    cm_stage_send(p->to_archive, m);
    if (!m->header || !m->header->gateway_id)
        return;
    ProtobufCBinaryData env = m->envelope;
    m->envelope.len = 0;
    m->envelope.data = NULL;
    cm_stage_send(p->shards[shard_of(m->header->gateway_id, p->n_shards)], m);
    m->envelope = env;
}

/* A command result is stored like any numbered envelope, and the gate learns what happened. */
static void on_cmdres(void *ctx, void *arg, const char *peer)
{
    profiler *p = ctx;
    Suido__StageMessage *m = arg;
    if (!provenance_ok(p, m, peer))
        return;
    cm_stage_send(p->to_archive, m);
    ProtobufCBinaryData env = m->envelope;
    m->envelope.len = 0;
    m->envelope.data = NULL;
    to_gate(p, m);
    m->envelope = env;
}

/* The registry announced a new profile version: fetched, checked and put in force at once (the
 * stage keeps no state that refers to the old one). A version that cannot be fetched or does not
 * check out leaves the one in force. */
static void on_new_profile(void *ctx, const char *kind, const char *id)
{
    if (strcmp(kind, "channels") == 0) {
        units_forget(ctx, id);
        return;
    }
    if (strcmp(kind, "profile") != 0)
        return;
    long version = strtol(id, NULL, 10);
    profiler *p = ctx;
    char err[CM_CONF_ERRLEN];
    cm_profile *np = NULL;
    if (cm_registry_profile(p->reg, p->svc->conf, "profile", &np, err) != CM_OK) {
        cm_error("announced_version=%ld in_force=%ld error=\"%s\"", version,
                 cm_profile_version(p->profile), err);
        return;
    }
    cm_info("profile=\"%s\" version=%ld previous=%ld event=profile_in_force", cm_profile_name(np),
            cm_profile_version(np), cm_profile_version(p->profile));
    cm_profile_destroy(&p->profile);
    p->profile = np;
    cm_metric_set(p->version, cm_profile_version(np));
}

static const cm_dispatch DISPATCH[] = {
    {"data", "verify,sparkplug", on_data},
    {"backfill", "verify", on_data},
    {"birth", "verify,sparkplug", on_birth},
    {"death", "verify,sparkplug", on_death},
    {"cmdres", "verify,sparkplug", on_cmdres},
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
    cm_svc_ready(s);
    if (cm_conf_get(s->conf, "registry", "connect") &&
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &p.reg, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    if (cm_registry_profile_wait(p.reg, s->conf, "profile", 15000, &p.profile, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_info("profile=\"%s\" version=%ld channels=%zu", cm_profile_name(p.profile),
            cm_profile_version(p.profile), cm_profile_channel_count(p.profile));

    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &p.to_archive, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    connect_shards(&p, err);
    if (cm_conf_get(s->conf, "output gate", "connect") &&
        cm_zsock_client_conf(s->zctx, s->conf, "output gate", ZMQ_PUSH, &s->keys, &p.to_gate, err))
        cm_svc_die(s, "%s", err);
    p.converted = cm_metric_counter(s->metrics, "suido_profile_converted_total",
                                    "readings converted from the unit their gateway declared");
    p.units_unknown = cm_metric_counter(s->metrics, "suido_profile_units_unknown_total",
                                        "batches mapped without the gateway's declared units");
    p.gate_dropped = cm_metric_counter(s->metrics, "suido_profile_gate_dropped_total",
                                       "frames for the command gate dropped (gate away or slow)");
    p.mapped = cm_metric_counter(s->metrics, "suido_profile_mapped_total", "readings mapped");
    p.unknown = cm_metric_counter(s->metrics, "suido_profile_unknown_channel_total",
                                  "readings on channels the profile does not know");
    p.births_refused = cm_metric_counter(s->metrics, "suido_profile_births_refused_total",
                                         "births declaring unknown channels or units, or from "
                                         "a boot epoch older than the newest birth's");
    p.version = cm_metric_gauge(s->metrics, "suido_profile_version", "data profile version");
    cm_metric_set(p.version, cm_profile_version(p.profile));

    cm_events *events = NULL;
    if (cm_events_new(s, "events", NULL, NULL, &events, err))
        cm_svc_die(s, "%s", err);
    cm_events_on_other(events, on_new_profile, &p);
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
    cm_registry_destroy(&p.reg);
    for (size_t i = 0; i < UNIT_SLOTS; i++)
        declared_free(&p.units[i]);
    cm_svc_destroy(&p.svc);
    return 0;
}
