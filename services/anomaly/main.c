/* suido-anomaly: one shard of the streaming anomaly checker. The profile stage routes every
 * gateway to one shard, so a gateway's state is never split. The checking itself — range, limits
 * and rate (anomaly_rules), stuck, missing data, deviation, tank balance and pumps-vs-flow
 * (detectors), and optionally the learned cross-sensor model (learned, through live_rows) — lives
 * in shard.c; this file wires it: it loads the profile and the optional model, receives batches,
 * hands them to the shard, calls shard_tick every second for missing data, and sends each alert
 * to the archive, which stores it and publishes it on suido/v1/alerts/<site>.
 *
 * Config: [profile] registry_key (the profile in force at the registry, signed; a new version
 * announced by the registry replaces the shard, whose detector state starts afresh) or
 * [profile] file (a local file); [anomaly] model (optional: a model from `suido-anomaly train`,
 * checked against each profile version; a version the model does not fit is not taken).
 * `suido-anomaly train|replay ...` runs the offline commands instead (cli.h).
 *
 * Sockets: [input] PULL, CURVE server, allow-list: profile.
 *          [output archive] PUSH to the archive (alerts); its own security events go to the
 *          audit log through cm_audit_out (a connection of its own, spooled while the archive
 *          is away). No MQTT: it cannot reach the broker. */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cli.h"
#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_profile.h"
#include "cm_registry.h"
#include "cm_stage.h"
#include "cm_time.h"
#include "learned.h"
#include "shard.h"

#define TICK_MS 1000 /* missing-data checks */

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_PROFILE_SPEC_ROWS("profile"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    {"anomaly", "model", 0, "learned model file (suido-anomaly train); optional"},
    {NULL, NULL, 0, NULL},
};

typedef struct checker {
    cm_svc *svc;
    cm_registry *reg;
    cm_profile *profile;
    learned_model *model;
    shard *shard;
    void *to_archive;
    uint64_t next_tick_ms;
} checker;

/* Shard callback: one Alert frame to the archive. */
static void send_alert(void *ctx, const shard_alert *al)
{
    checker *c = ctx;
    const anomaly_event *e = al->ev;
    char topic[128];
    snprintf(topic, sizeof topic, "suido/v1/alerts/%s", *al->site ? al->site : "unknown");
    Suido__Alert a = SUIDO__ALERT__INIT;
    a.id = (char *)al->id;
    a.gateway_id = (char *)al->gateway_id;
    a.site = (char *)al->site;
    a.channel = (char *)al->subject;
    a.rule = (char *)e->rule;
    a.severity = e->severity;
    a.value = al->value;
    a.limit = e->limit;
    a.timestamp_ms = al->timestamp_ms;
    a.evidence = (char *)e->evidence;
    a.cleared = e->cleared;
    Suido__StageMessage out = SUIDO__STAGE_MESSAGE__INIT;
    out.topic = topic;
    out.received_ms = al->received_ms;
    out.site = (char *)al->site;
    out.alert = &a;
    cm_info("alert=%s rule=%s severity=%d cleared=%d value=%.4g", al->id, e->rule, e->severity,
            e->cleared, al->value);
    cm_stage_send(c->to_archive, &out);
}

static void on_readings(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    checker *c = ctx;
    Suido__StageMessage *m = arg;
    if (!m->header || !m->header->gateway_id)
        return;
    shard_batch b = {.gateway_id = m->header->gateway_id, .site = m->site,
                     .site_kind = m->site_kind, .readings = m->mapped, .n_readings = m->n_mapped,
                     .received_ms = m->received_ms};
    shard_feed(c->shard, &b, cm_now_ms());
}

/* An orderly stop: the gateway's silence from now on is expected, not missing data. */
static void on_death(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    checker *c = ctx;
    Suido__StageMessage *m = arg;
    if (m->header && m->header->gateway_id && m->status == SUIDO__VERIFY_STATUS__VERIFY_OK)
        shard_gateway_stopped(c->shard, m->header->gateway_id, cm_now_ms());
}

static void on_tick(void *ctx)
{
    checker *c = ctx;
    uint64_t mono = cm_mono_ms();
    if (mono < c->next_tick_ms)
        return;
    c->next_tick_ms = mono + TICK_MS;
    shard_tick(c->shard, cm_now_ms());
}

/* Puts profile np in force with a new shard (and the model checked against it): on success the
 * old shard, model and profile are gone; on failure nothing changes and np is freed. */
static cm_err take_profile(checker *c, cm_profile *np)
{
    const char *path = cm_conf_get(c->svc->conf, "anomaly", "model");
    char lerr[LEARNED_ERRLEN], serr[SHARD_ERRLEN];
    learned_model *nm = NULL;
    shard *ns = NULL;
    if (path && learned_load(path, np, &nm, lerr) != CM_OK) {
        cm_error("profile_version=%ld model=%s error=\"%s\"", cm_profile_version(np), path, lerr);
        cm_profile_destroy(&np);
        return CM_ERR_CONFIG;
    }
    if (shard_new(np, nm, NULL, c->svc->metrics, send_alert, c, &ns, serr) != CM_OK) {
        cm_error("profile_version=%ld error=\"%s\"", cm_profile_version(np), serr);
        learned_destroy(&nm);
        cm_profile_destroy(&np);
        return CM_ERR_CONFIG;
    }
    shard_destroy(&c->shard);
    learned_destroy(&c->model);
    cm_profile_destroy(&c->profile);
    c->shard = ns;
    c->model = nm;
    c->profile = np;
    cm_info("profile=\"%s\" version=%ld model=%s event=profile_in_force", cm_profile_name(np),
            cm_profile_version(np), nm ? path : "none");
    return CM_OK;
}

static void on_new_profile(void *ctx, const char *kind, const char *id)
{
    if (strcmp(kind, "profile") != 0)
        return;
    long version = strtol(id, NULL, 10);
    checker *c = ctx;
    char err[CM_CONF_ERRLEN];
    cm_profile *np = NULL;
    if (cm_registry_profile(c->reg, c->svc->conf, "profile", &np, err) != CM_OK) {
        cm_error("announced_version=%ld in_force=%ld error=\"%s\"", version,
                 cm_profile_version(c->profile), err);
        return;
    }
    take_profile(c, np);
}

static const cm_dispatch DISPATCH[] = {
    {"data", "profile", on_readings},
    {"backfill", "profile", on_readings},
    {"death", "profile", on_death},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "train") == 0 || strcmp(argv[1], "replay") == 0))
        return anomaly_cli(argc, argv);
    checker c = {0};
    c.svc = cm_svc_start("anomaly", argc, argv, SPEC);
    cm_svc_claim_state(c.svc); /* one instance per shard: a copy would raise every alert twice */
    cm_svc *s = c.svc;
    char err[CM_CONF_ERRLEN], lerr[LEARNED_ERRLEN];
    const char *model = cm_conf_get(s->conf, "anomaly", "model");
    if (cm_conf_get(s->conf, "profile", "file")) {
        /* a local profile: the model is checked against it before start (and by -n) */
        cm_profile *p = NULL;
        learned_model *m = NULL;
        if (cm_profile_load(cm_conf_get(s->conf, "profile", "file"), &p, err) != CM_OK)
            cm_svc_die(s, "%s", err);
        if (model && learned_load(model, p, &m, lerr) != CM_OK)
            cm_svc_die(s, "%s", lerr);
        learned_destroy(&m);
        cm_profile_destroy(&p);
    }
    cm_svc_ready(s);
    if (cm_conf_get(s->conf, "registry", "connect") &&
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &c.reg, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_profile *first = NULL;
    if (cm_registry_profile_wait(c.reg, s->conf, "profile", 15000, &first, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    if (take_profile(&c, first) != CM_OK)
        cm_svc_die(s, "the profile in force and the model do not fit (see the log)");
    if (c.model)
        cm_info("event=model_loaded model=%s channels=%zu period_s=%g", model,
                learned_channel_count(c.model), learned_period(c.model));
    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &c.to_archive, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);

    cm_events *events = NULL;
    if (cm_events_new(s, "events", NULL, NULL, &events, err))
        cm_svc_die(s, "%s", err);
    cm_events_on_other(events, on_new_profile, &c);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &c,
                          .on_tick = on_tick, .events = events};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    zmq_close(input);
    zmq_close(c.to_archive);
    shard_destroy(&c.shard);
    learned_destroy(&c.model);
    cm_profile_destroy(&c.profile);
    cm_registry_destroy(&c.reg);
    cm_svc_destroy(&c.svc);
    return 0;
}
