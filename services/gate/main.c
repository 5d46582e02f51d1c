/* suido-gate: the command safety gate. Operators ask for a command to one actuator of one
 * gateway (pump start/stop, valve position, dosing setpoint); the gate checks the requester's
 * session and role with the registry, that the gateway is active, and the profile's operating
 * envelope and interlocks against its own view of the plant (gate_check); then it encrypts the
 * command to that gateway's own RSA command key and signs it, with an expiry (gate_seal), and
 * publishes it to that gateway only (a gateway without a command key gets none: no_command_key).
 * A Sparkplug B edge node (registry protocol "sparkplug") has no command key: its command goes
 * to the Sparkplug host, which writes the mapped metric (NCMD/DCMD) and reports the next value
 * the node publishes for it as the result.
 * It follows the command: the gateway's signed result, then whether the plant's feedback channel
 * followed. Every decision
 * and every outcome is audited and recorded in the archive's command log; a refusal by the
 * gateway, an unanswered command and a plant that does not follow raise alerts.
 *
 * Sockets: [api] ROUTER, CURVE server, allow-list: suidoctl, monitor (GateRequest/GateReply).
 *          [input] PULL, CURVE server, allow-list: profile (mapped readings, command results).
 *          [output archive] PUSH to the archive (command log, alerts); audit events go on a
 *          connection of their own, spooled while the archive is away (cm_audit_out).
 *          [registry] DEALER to the registry (sessions, gateway state); [events] SUB.
 *          [mqtt] MQTT/TLS client "gate": publishes suido/v1/<gw>/cmd only.
 *          [output sparkplug] optional PUSH to the Sparkplug host: commands to its edge nodes.
 * Keys: [gate] command_key, the P-256 key gateways trust for commands (platform/command.key). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_profile.h"
#include "cm_registry.h"
#include "cm_stage.h"
#include "cm_time.h"
#include "gate_check.h"
#include "gate_seal.h"

#define MAX_GATEWAYS 1024 /* plants held (about 18 KiB each, allocated on first reading) */
#define MAX_COMMANDS 256  /* commands followed; the oldest finished one makes room */
#define ANSWER_GRACE_MS 10000
#define MAX_RETIRED_PROFILES 64 /* profile versions kept alive for the commands still followed */

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_SERVER_ROWS("api"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    CM_MQTT_SPEC_ROWS("mqtt"),
    CM_PROFILE_SPEC_ROWS("profile"),
    {"gate", "command_key", 1, "P-256 private key that signs commands (0600)"},
    {"gate", "expiry_s", 0, "how long a command stays valid (default 30 s)"},
    {NULL, NULL, 0, NULL},
};

typedef struct plant_slot {
    char gw[65];
    gate_plant *plant;
} plant_slot;

/* One command followed from decision to outcome. */
typedef struct followed {
    char id[96];
    char gw[65];
    char site[64];
    char requested_by[65];
    const cm_actuator *act;
    double value;
    uint64_t issued_ms, expires_ms, applied_ms;
    char outcome[96]; /* "sent", "applied", "refused_by_gateway:<r>", "followed", ... */
    int done;
} followed;

typedef struct gate {
    cm_svc *svc;
    cm_profile *profile;
    cm_profile *retired[MAX_RETIRED_PROFILES]; /* older versions: followed commands point in */
    size_t n_retired;
    cm_signer *signer;
    gate_seal *seal;  /* per-gateway session keys; borrows signer */
    cm_registry *reg;
    cm_mqtt *mqtt;
    void *api, *to_archive;
    void *to_sparkplug; /* NULL: no Sparkplug host, its nodes get no command */
    long expiry_s;
    uint64_t last_issued_ms;
    plant_slot plants[MAX_GATEWAYS];
    followed cmds[MAX_COMMANDS];
    size_t next_cmd;
    cm_metric *requests, *sent, *refused, *applied, *gw_refused, *mismatches, *unanswered,
        *untracked, *future, *wraps;
} gate;

/* ------------------------------------------------------------------ plant view */

static gate_plant *plant_for(gate *g, const char *gw, int create)
{
    uint32_t h = 2166136261u;
    for (const char *p = gw; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    for (uint32_t i = 0; i < MAX_GATEWAYS; i++) {
        plant_slot *s = &g->plants[(h + i) % MAX_GATEWAYS];
        if (strcmp(s->gw, gw) == 0)
            return s->plant;
        if (!s->gw[0]) {
            if (!create)
                return NULL;
            s->plant = malloc(sizeof *s->plant);
            if (!s->plant)
                return NULL;
            gate_plant_init(s->plant);
            snprintf(s->gw, sizeof s->gw, "%s", gw);
            return s->plant;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ records */

/* One step of a command into the archive's command log. */
static void record(gate *g, const followed *f, const char *gw, const char *actuator,
                   double value, const char *unit, const char *by, const char *decision,
                   const char *detail)
{
    Suido__Command c = SUIDO__COMMAND__INIT;
    c.command_id = (char *)(f ? f->id : "-");
    c.gateway_id = (char *)gw;
    c.channel = (char *)actuator;
    c.value = value;
    c.unit = (char *)(unit ? unit : "");
    c.requested_by = (char *)(by ? by : "");
    c.issued_ms = f ? f->issued_ms : 0;
    c.expires_ms = f ? f->expires_ms : 0;
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.received_ms = cm_now_ms();
    m.command = &c;
    m.decision = (char *)decision;
    m.reason = (char *)detail;
    if (cm_zsend_pb(g->to_archive, &m.base, ZMQ_DONTWAIT) != CM_OK)
        cm_warn("command=%s decision=%s error=\"command record not queued\"", c.command_id,
                decision);
}

static void alert(gate *g, const followed *f, const char *rule, int severity, int cleared,
                  const char *evidence)
{
    char id[256], topic[128];
    snprintf(id, sizeof id, "%s/%s/command", f->gw, f->act->id);
    snprintf(topic, sizeof topic, "suido/v1/alerts/%s", f->site[0] ? f->site : "unknown");
    Suido__Alert a = SUIDO__ALERT__INIT;
    a.id = id;
    a.gateway_id = (char *)f->gw;
    a.site = (char *)f->site;
    a.channel = (char *)f->act->id;
    a.rule = (char *)rule;
    a.severity = severity;
    a.value = f->value;
    a.limit = f->value;
    a.timestamp_ms = cm_now_ms();
    a.evidence = (char *)evidence;
    a.cleared = cleared;
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.topic = topic;
    m.received_ms = a.timestamp_ms;
    m.site = (char *)f->site;
    m.alert = &a;
    if (cm_zsend_pb(g->to_archive, &m.base, ZMQ_DONTWAIT) != CM_OK)
        cm_warn("alert=%s error=\"alert not queued\"", id);
}

static void audit(gate *g, const char *event, const char *gw, const char *actor,
                  const char *detail)
{
    cm_audit_out_record(g->svc->audit_out, "gate", event, gw, actor, detail);
}

/* ------------------------------------------------------------------ the API */

static void reply(gate *g, zmq_msg_t *route, Suido__GateReply *rep)
{
    cm_zreply(g->api, route, &rep->base);
}

/* A refusal: answered, audited and logged; nothing is sent. */
static void refuse(gate *g, zmq_msg_t *route, const Suido__GateRequest *q, const char *who,
                   const char *reason, const char *detail)
{
    cm_metric_inc(g->refused);
    cm_svc_reject(g->svc, reason);
    char line[1400], act[100], unit[60], det[400], why[600];
    snprintf(line, sizeof line,
             "actuator=\"%s\" value=%.6g unit=\"%s\" reason=%s detail=\"%s\" why=\"%s\"",
             cm_log_escape(act, sizeof act, q->actuator), q->value,
             cm_log_escape(unit, sizeof unit, q->unit), reason,
             cm_log_escape(det, sizeof det, detail), cm_log_escape(why, sizeof why, q->reason));
    char gw[140];
    cm_info("gateway=\"%s\" by=%s decision=refused %s", cm_log_escape(gw, sizeof gw, q->gateway_id),
            who, line);
    audit(g, "command_refused", q->gateway_id, who, line);
    char decision[128];
    snprintf(decision, sizeof decision, "refused:%s", reason);
    record(g, NULL, q->gateway_id, q->actuator, q->value, q->unit, who, decision, detail);
    Suido__GateReply rep = SUIDO__GATE_REPLY__INIT;
    rep.decision = "refused";
    rep.reason = (char *)reason;
    rep.detail = (char *)detail;
    reply(g, route, &rep);
}

static followed *slot_for_new(gate *g)
{
    /* the oldest finished command makes room; failing that, the oldest of all */
    for (size_t i = 0; i < MAX_COMMANDS; i++) {
        followed *f = &g->cmds[(g->next_cmd + i) % MAX_COMMANDS];
        if (!f->id[0] || f->done) {
            g->next_cmd = (size_t)(f - g->cmds + 1) % MAX_COMMANDS;
            return f;
        }
    }
    cm_metric_inc(g->untracked);
    followed *f = &g->cmds[g->next_cmd];
    g->next_cmd = (g->next_cmd + 1) % MAX_COMMANDS;
    return f;
}

static followed *find_command(gate *g, const char *id)
{
    for (size_t i = 0; id && i < MAX_COMMANDS; i++)
        if (g->cmds[i].id[0] && strcmp(g->cmds[i].id, id) == 0)
            return &g->cmds[i];
    return NULL;
}

/* The command a followed entry stands for, as it leaves the gate (c borrows f's strings). */
static void command_of(followed *f, Suido__Command *c)
{
    suido__command__init(c);
    c->command_id = f->id;
    c->gateway_id = f->gw;
    c->channel = (char *)f->act->name;
    c->value = f->value;
    c->unit = (char *)f->act->unit;
    c->issued_ms = f->issued_ms;
    c->expires_ms = f->expires_ms;
    c->requested_by = f->requested_by;
}

/* Seals (encrypted to the gateway's RSA command key `to`), signs and publishes an allowed
 * command; 0 when it left. */
static int send_command(gate *g, followed *f, cm_rsa *to)
{
    Suido__Command c;
    command_of(f, &c);
    uint8_t out[GATE_SEAL_MAX];
    size_t len = 0;
    cm_err rc = gate_seal_command(g->seal, to, &c, out, sizeof out, &len);
    cm_metric_set(g->wraps, (int64_t)gate_seal_wraps(g->seal));
    if (rc != CM_OK) {
        cm_error("gateway=%s command=%s error=\"cannot seal the command: %s\"", f->gw, f->id,
                 cm_strerror(rc));
        return -1;
    }
    char topic[96];
    snprintf(topic, sizeof topic, "suido/v1/%s/cmd", f->gw);
    return cm_mqtt_publish(g->mqtt, topic, out, len, 1, 0) == CM_OK ? 0 : -1;
}

/* Hands an allowed command for a Sparkplug node to the Sparkplug host (CURVE, its allow-list
 * names the gate); 0 when it was queued. The host checks the expiry again and writes it. */
static int send_sparkplug(gate *g, followed *f)
{
    Suido__Command c;
    command_of(f, &c);
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    char topic[96];
    snprintf(topic, sizeof topic, "suido/v1/%s/cmd", f->gw);
    m.topic = topic;
    m.received_ms = cm_now_ms();
    m.command = &c;
    return cm_zsend_pb(g->to_sparkplug, &m.base, ZMQ_DONTWAIT) == CM_OK ? 0 : -1;
}

static void on_command_request(gate *g, zmq_msg_t *route, const Suido__GateRequest *q)
{
    char who[65] = "", role[16] = "";
    char topic[160], gwid[65], kind_[16];
    snprintf(topic, sizeof topic, "suido/v1/%s/cmd", q->gateway_id ? q->gateway_id : "");
    if (cm_topic_parse(topic, gwid, kind_) != CM_OK || strcmp(gwid, q->gateway_id) != 0 ||
        !q->actuator ||
        !*q->actuator || strlen(q->actuator) > 63 || !q->unit || strlen(q->unit) > 15) {
        Suido__GateReply rep = SUIDO__GATE_REPLY__INIT;
        rep.status = CM_ERR_INVAL;
        rep.error = "gateway id, actuator and unit are required";
        reply(g, route, &rep);
        audit(g, "command_refused", "", "suidoctl", "reason=malformed_request");
        return;
    }
    cm_err src = cm_registry_session(g->reg, q->token, who, role);
    if (src == CM_ERR_UNAVAILABLE) { /* fail closed, and say why: the session is not known bad */
        refuse(g, route, q, "unknown", "registry_unavailable", "the registry did not answer");
        return;
    }
    if (src != CM_OK) {
        refuse(g, route, q, "unknown", "session", "no valid operator session (log in first)");
        return;
    }
    const cm_gateway *gw = NULL;
    cm_err rc = cm_registry_gateway(g->reg, q->gateway_id, &gw);
    if (rc == CM_ERR_UNKNOWN) {
        refuse(g, route, q, who, "unknown_gateway", "no such gateway in the registry");
        return;
    }
    if (rc != CM_OK) {
        refuse(g, route, q, who, "registry_unavailable", "the registry did not answer");
        return;
    }
    if (gw->state != SUIDO__ENTITY_STATE__STATE_ACTIVE) {
        refuse(g, route, q, who, "gateway_not_active",
               "the gateway is not active (suspended, revoked or decommissioned)");
        return;
    }
    /* every command is encrypted to the gateway's own RSA key: one made without a key gets
     * none, rather than a command in clear. The key is borrowed from the registry cache until
     * the next registry call (none is made before the command is sealed). */
    cm_rsa *to = gw->cmd_key;
    int sparkplug = gw->sparkplug;
    if (sparkplug && !g->to_sparkplug) {
        refuse(g, route, q, who, "no_sparkplug_host",
               "the gateway is a Sparkplug node and this gate has no [output sparkplug]");
        return;
    }
    if (!to && !sparkplug) {
        refuse(g, route, q, who, "no_command_key",
               "the gateway has no command key in the registry: commands are sent encrypted "
               "only (provision it again)");
        return;
    }
    char site[64], kind[32];
    snprintf(site, sizeof site, "%s", gw->site);
    snprintf(kind, sizeof kind, "%s", gw->kind);
    gate_plant *plant = plant_for(g, q->gateway_id, 1);
    static gate_plant empty; /* zeroed: a gateway the gate has no data of (yet) */
    gate_request req = {.actuator = q->actuator, .value = q->value, .unit = q->unit, .role = role};
    gate_decision dec;
    uint64_t now = cm_now_ms();
    if (gate_decide(g->profile, kind, plant ? plant : &empty, &req, now, &dec) != GATE_ALLOW) {
        refuse(g, route, q, who, dec.reason, dec.detail);
        return;
    }
    followed *f = slot_for_new(g);
    memset(f, 0, sizeof *f);
    uint64_t issued = now > g->last_issued_ms ? now : g->last_issued_ms + 1;
    uint32_t rnd = 0;
    cm_random(&rnd, sizeof rnd);
    snprintf(f->id, sizeof f->id, "%s-%llu-%08x", q->gateway_id, (unsigned long long)issued, rnd);
    snprintf(f->gw, sizeof f->gw, "%s", q->gateway_id);
    snprintf(f->site, sizeof f->site, "%s", site);
    snprintf(f->requested_by, sizeof f->requested_by, "%s", who);
    f->act = dec.actuator;
    f->value = dec.value;
    f->issued_ms = issued;
    f->expires_ms = issued + (uint64_t)g->expiry_s * 1000u;
    if ((sparkplug ? send_sparkplug(g, f) : send_command(g, f, to)) != 0) {
        memset(f, 0, sizeof *f);
        refuse(g, route, q, who, sparkplug ? "sparkplug_host_unavailable" : "broker_unavailable",
               "the command could not be handed on");
        return;
    }
    g->last_issued_ms = issued;
    snprintf(f->outcome, sizeof f->outcome, "sent");
    if (plant)
        gate_plant_commanded(plant, f->act->id, f->value, issued);
    cm_metric_inc(g->sent);
    char line[1024], why[600];
    snprintf(line, sizeof line, "command=%s actuator=%s value=%.6g unit=%s expires_ms=%llu why=\"%s\"",
             f->id, f->act->id, f->value, f->act->unit, (unsigned long long)f->expires_ms,
             cm_log_escape(why, sizeof why, q->reason));
    cm_info("gateway=%s by=%s decision=sent %s", f->gw, who, line);
    audit(g, "command_sent", f->gw, who, line);
    record(g, f, f->gw, f->act->name, f->value, f->act->unit, who, "sent", dec.detail);
    Suido__GateReply rep = SUIDO__GATE_REPLY__INIT;
    rep.decision = "sent";
    rep.reason = "ok";
    rep.detail = dec.detail;
    rep.command_id = f->id;
    rep.value = f->value;
    rep.unit = (char *)f->act->unit;
    rep.expires_ms = f->expires_ms;
    reply(g, route, &rep);
}

static void on_status_request(gate *g, zmq_msg_t *route, const Suido__GateRequest *q)
{
    char who[65], role[16];
    Suido__GateReply rep = SUIDO__GATE_REPLY__INIT;
    const followed *f = NULL;
    if (cm_registry_session(g->reg, q->token, who, role) != CM_OK) {
        rep.status = CM_ERR_DENIED;
        rep.error = "no valid operator session (log in first)";
    } else if (!(f = find_command(g, q->command_id))) {
        rep.status = CM_ERR_UNKNOWN;
        rep.error = "no such command (or no longer followed: see the archive's command log)";
    } else {
        rep.command_id = (char *)f->id;
        rep.outcome = (char *)f->outcome;
        rep.value = f->value;
        rep.unit = (char *)f->act->unit;
        rep.expires_ms = f->expires_ms;
    }
    reply(g, route, &rep);
}

/* The API's attack surface: who may ask what. */
static const struct {
    int op;
    const char *peers;
    void (*fn)(gate *, zmq_msg_t *, const Suido__GateRequest *);
} API[] = {
    {SUIDO__GATE_OP__GATE_COMMAND, "suidoctl,monitor", on_command_request},
    {SUIDO__GATE_OP__GATE_STATUS, "suidoctl,monitor", on_status_request},
};

static void on_api(void *ctx)
{
    gate *g = ctx;
    zmq_msg_t route, body;
    char peer[64];
    zmq_msg_init(&route);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&route, g->api, ZMQ_DONTWAIT) < 0)
        goto out;
    if (!zmq_msg_more(&route) || cm_zrecv(g->api, &body, peer, sizeof peer, 0) != CM_OK)
        goto out;
    cm_metric_inc(g->requests);
    Suido__GateRequest *q =
        suido__gate_request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
    size_t row = sizeof API / sizeof API[0];
    for (size_t i = 0; q && i < sizeof API / sizeof API[0]; i++)
        if (API[i].op == (int)q->op)
            row = i;
    cm_dispatch allowed = {"api", row < sizeof API / sizeof API[0] ? API[row].peers : "", NULL};
    if (!q || row == sizeof API / sizeof API[0] || !cm_dispatch_peer_ok(&allowed, peer) ||
        cm_svc_peer_revoked(g->svc, peer)) {
        cm_warn("peer=%s error=\"request refused (malformed, unknown or not allowed)\"", peer);
        cm_svc_reject(g->svc, q ? "request_not_allowed" : "malformed_request");
        audit(g, "request_denied", "", peer, q ? "reason=not_allowed" : "reason=malformed");
        Suido__GateReply rep = SUIDO__GATE_REPLY__INIT;
        rep.status = q ? CM_ERR_DENIED : CM_ERR_DECODE;
        rep.error = (char *)cm_strerror(rep.status);
        reply(g, &route, &rep);
    } else {
        API[row].fn(g, &route, q);
    }
    if (q)
        suido__gate_request__free_unpacked(q, NULL);
out:
    zmq_msg_close(&route);
    zmq_msg_close(&body);
}

/* ------------------------------------------------------------------ the plant and results */

static void on_readings(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    gate *g = ctx;
    Suido__StageMessage *m = arg;
    if (!m->header || !m->header->gateway_id || m->n_mapped == 0)
        return;
    gate_plant *plant = plant_for(g, m->header->gateway_id, 1);
    if (!plant) {
        cm_metric_inc(g->untracked);
        return;
    }
    uint64_t now = cm_now_ms();
    size_t future = 0;
    for (size_t i = 0; i < m->n_mapped; i++) {
        const Suido__MappedReading *r = m->mapped[i];
        cm_err rc = CM_OK;
        if (!r->channel)
            continue;
        /* a BAD reading is no measurement: never the channel's reading, and it makes the
         * reading held before it stale (gate_plant_bad_at) */
        if (r->quality == SUIDO__QUALITY__QUALITY_BAD)
            rc = gate_plant_bad_at(plant, r->channel, r->timestamp_ms, now);
        else if (isfinite(r->value))
            rc = gate_plant_reading_at(plant, r->channel, r->value, r->timestamp_ms, now);
        if (rc == CM_ERR_STALE)
            future++;
    }
    if (future) {
        cm_metric_add(g->future, future);
        cm_svc_reject(g->svc, "future_timestamp");
        cm_warn("gateway=%s readings=%zu reason=future_timestamp result=ignored",
                m->header->gateway_id, future);
    }
}

static void on_result(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    gate *g = ctx;
    Suido__StageMessage *m = arg;
    const Suido__CommandResult *r = m->cmdres;
    if (!r || !m->header || !m->header->gateway_id)
        return;
    followed *f = find_command(g, r->command_id);
    if (!f || strcmp(f->gw, m->header->gateway_id) != 0) {
        cm_warn("gateway=%s command=%s error=\"result for a command this gate is not following\"",
                m->header->gateway_id, r->command_id);
        audit(g, "command_result_unexpected", m->header->gateway_id, m->header->gateway_id,
              r->command_id);
        return;
    }
    if (strcmp(f->outcome, "sent") != 0)
        return; /* a duplicate delivery of a result already taken */
    char line[256];
    snprintf(line, sizeof line, "command=%s outcome=%s reason=%s value_in_force=%.6g", f->id,
             r->outcome == SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED  ? "applied"
             : r->outcome == SUIDO__COMMAND_OUTCOME__OUTCOME_FAILED ? "failed"
                                                                    : "refused",
             r->reason ? r->reason : "", r->value);
    audit(g, "command_result", f->gw, f->gw, line);
    if (r->outcome == SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED) {
        cm_metric_inc(g->applied);
        snprintf(f->outcome, sizeof f->outcome, "applied");
        f->applied_ms = cm_now_ms();
        f->done = f->act->feedback[0] == '\0'; /* nothing more to follow */
    } else if (r->outcome == SUIDO__COMMAND_OUTCOME__OUTCOME_FAILED) {
        /* verified and attempted, but the field device did not take it: the plant may not be
         * in the state the operator asked for, which is more than a refusal */
        cm_metric_inc(g->gw_refused);
        snprintf(f->outcome, sizeof f->outcome, "failed_at_gateway");
        f->done = 1;
        alert(g, f, "command_failed_at_gateway", SUIDO__SEVERITY__SEVERITY_ALARM, 0, line);
    } else {
        cm_metric_inc(g->gw_refused);
        snprintf(f->outcome, sizeof f->outcome, "refused_by_gateway:%s",
                 r->reason ? r->reason : "unspecified");
        f->done = 1;
        alert(g, f, "command_refused_by_gateway", SUIDO__SEVERITY__SEVERITY_WARNING, 0, line);
    }
    record(g, f, f->gw, f->act->name, f->value, f->act->unit, f->requested_by, f->outcome, line);
}

/* Every tick: commands nobody answered, and whether the plant followed applied ones. */
static void follow(void *ctx)
{
    gate *g = ctx;
    uint64_t now = cm_now_ms();
    for (size_t i = 0; i < MAX_COMMANDS; i++) {
        followed *f = &g->cmds[i];
        if (!f->id[0] || f->done)
            continue;
        if (strcmp(f->outcome, "sent") == 0) {
            if (now > f->expires_ms + ANSWER_GRACE_MS) {
                cm_metric_inc(g->unanswered);
                snprintf(f->outcome, sizeof f->outcome, "unanswered");
                f->done = 1;
                char line[160];
                snprintf(line, sizeof line, "command=%s no result from the gateway by %llu",
                         f->id, (unsigned long long)(f->expires_ms + ANSWER_GRACE_MS));
                audit(g, "command_unanswered", f->gw, "gate", line);
                alert(g, f, "command_unanswered", SUIDO__SEVERITY__SEVERITY_WARNING, 0, line);
                record(g, f, f->gw, f->act->name, f->value, f->act->unit, f->requested_by,
                       f->outcome, line);
            }
            continue;
        }
        gate_plant *plant = plant_for(g, f->gw, 0);
        static gate_plant empty;
        gate_follow fo;
        gate_follow_state st = gate_follow_check(g->profile, f->act, f->value, f->applied_ms,
                                                 plant ? plant : &empty, now, &fo);
        if (st == GATE_FOLLOW_PENDING)
            continue;
        f->done = 1;
        if (st == GATE_FOLLOW_MISMATCH) {
            cm_metric_inc(g->mismatches);
            snprintf(f->outcome, sizeof f->outcome, "mismatch");
            audit(g, "command_mismatch", f->gw, "gate", fo.detail);
            alert(g, f, "command_mismatch", SUIDO__SEVERITY__SEVERITY_ALARM, 0, fo.detail);
        } else {
            snprintf(f->outcome, sizeof f->outcome, "followed");
        }
        char det[400];
        cm_info("command=%s outcome=%s detail=\"%s\"", f->id, f->outcome,
                cm_log_escape(det, sizeof det, fo.detail));
        record(g, f, f->gw, f->act->name, f->value, f->act->unit, f->requested_by, f->outcome,
               fo.detail);
    }
}

/* A new profile version from the registry: new requests are decided against it at once. The
 * commands already followed keep pointing into the version they were decided with, so older
 * versions stay alive (up to MAX_RETIRED_PROFILES changes; then the gate keeps the one in force
 * and says so: restart it to take more). */
static void on_new_profile(void *ctx, const char *kind, const char *id)
{
    if (strcmp(kind, "profile") != 0)
        return;
    long version = strtol(id, NULL, 10);
    gate *g = ctx;
    char err[CM_CONF_ERRLEN];
    if (g->n_retired == MAX_RETIRED_PROFILES) {
        cm_error("announced_version=%ld error=\"too many profile changes since start; restart "
                 "the gate to take this one\"", version);
        return;
    }
    cm_profile *np = NULL;
    if (cm_registry_profile(g->reg, g->svc->conf, "profile", &np, err) != CM_OK) {
        cm_error("announced_version=%ld in_force=%ld error=\"%s\"", version,
                 cm_profile_version(g->profile), err);
        return;
    }
    cm_info("profile=\"%s\" version=%ld previous=%ld event=profile_in_force", cm_profile_name(np),
            cm_profile_version(np), cm_profile_version(g->profile));
    g->retired[g->n_retired++] = g->profile;
    g->profile = np;
}

static void on_gateway_event(void *ctx, const char *id, int state)
{
    (void)state;
    gate *g = ctx;
    cm_registry_forget(g->reg, id);
}

static const cm_dispatch DISPATCH[] = {
    {"data", "profile", on_readings},
    {"backfill", "profile", on_readings},
    {"cmdres", "profile", on_result},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    static gate g; /* large: plants and followed commands */
    g.svc = cm_svc_start("gate", argc, argv, SPEC);
    cm_svc_claim_state(g.svc); /* one gate: its command ledger and interlock view */
    cm_svc *s = g.svc;
    char err[CM_CONF_ERRLEN];
    const char *keyf = cm_conf_get(s->conf, "gate", "command_key");
    if (cm_key_file_check(keyf) != CM_OK || cm_signer_load(keyf, &g.signer) != CM_OK)
        cm_svc_die(s, "%s: not a private P-256 key readable by this user only", keyf);
    if (cm_conf_long(s->conf, "gate", "expiry_s", 30, 5, 3600, &g.expiry_s, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    if (!(g.seal = gate_seal_new(g.signer)))
        cm_svc_die(s, "out of memory");
    cm_mqtt_opts mo = {.clean_session = 1, .max_inflight = 64, .verify_hostname = 1};
    if (cm_mqtt_opts_from_conf(s->conf, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(s->conf));
    cm_svc_ready(s);

    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "api", ZMQ_ROUTER, &s->keys, &g.api, err) ||
        cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &g.to_archive, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &g.reg, err))
        cm_svc_die(s, "%s", err);
    if (cm_conf_get(s->conf, "output sparkplug", "connect") &&
        cm_zsock_client_conf(s->zctx, s->conf, "output sparkplug", ZMQ_PUSH, &s->keys,
                             &g.to_sparkplug, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    if (cm_registry_profile_wait(g.reg, s->conf, "profile", 15000, &g.profile, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_info("profile=\"%s\" version=%ld actuators=%zu interlocks=%zu", cm_profile_name(g.profile),
            cm_profile_version(g.profile), cm_profile_actuator_count(g.profile),
            cm_profile_interlock_count(g.profile));
    if (cm_mqtt_new(&mo, &g.mqtt) != CM_OK || cm_mqtt_connect(g.mqtt, 0) != CM_OK)
        cm_svc_die(s, "cannot start the MQTT client");
    cm_metrics *mx = s->metrics;
    g.requests = cm_metric_counter(mx, "suido_gate_requests_total", "API requests");
    g.sent = cm_metric_counter(mx, "suido_gate_commands_sent_total", "commands signed and sent");
    g.refused = cm_metric_counter(mx, "suido_gate_commands_refused_total", "commands refused");
    g.applied = cm_metric_counter(mx, "suido_gate_commands_applied_total",
                                  "commands the gateway reported applied");
    g.gw_refused = cm_metric_counter(mx, "suido_gate_commands_refused_by_gateway_total",
                                     "commands the gateway refused");
    g.mismatches = cm_metric_counter(mx, "suido_gate_command_mismatch_total",
                                     "commands the plant did not follow");
    g.unanswered = cm_metric_counter(mx, "suido_gate_commands_unanswered_total",
                                     "commands without a result from the gateway");
    g.untracked = cm_metric_counter(mx, "suido_gate_untracked_total",
                                    "gateways or commands beyond the gate's tables");
    g.future = cm_metric_counter(mx, "suido_gate_future_readings_total",
                                 "readings ignored because they are stamped ahead of the gate's "
                                 "clock");
    g.wraps = cm_metric_gauge(mx, "suido_gate_command_key_wraps",
                              "command session keys made and RSA-OAEP wrapped to a gateway");

    cm_events *events = NULL;
    if (cm_events_new(s, "events", on_gateway_event, &g, &events, err))
        cm_svc_die(s, "%s", err);
    cm_events_on_other(events, on_new_profile, &g);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &g,
                          .events = events, .on_tick = follow, .side = g.api, .on_side = on_api};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    zmq_close(input);
    zmq_close(g.api);
    zmq_close(g.to_archive);
    if (g.to_sparkplug)
        zmq_close(g.to_sparkplug);
    cm_mqtt_destroy(&g.mqtt);
    cm_registry_destroy(&g.reg);
    gate_seal_destroy(&g.seal);
    cm_signer_destroy(&g.signer);
    for (size_t i = 0; i < MAX_GATEWAYS; i++)
        free(g.plants[i].plant);
    cm_profile_destroy(&g.profile);
    for (size_t i = 0; i < g.n_retired; i++)
        cm_profile_destroy(&g.retired[i]);
    cm_svc_destroy(&g.svc);
    return 0;
}
