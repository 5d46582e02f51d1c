/* suido-anomaly: one shard of the streaming anomaly checker. Keeps per (gateway, channel) state,
 * applies the profile's range, limits and rate checks (anomaly_rules), and sends alerts to the
 * archive, which stores them and publishes them on suido/v1/alerts/<site>. The profile stage
 * routes every gateway to one shard, so state is never split.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: profile.
 *          [output archive] PUSH to the archive (alerts). No MQTT: it cannot reach the broker. */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "anomaly_rules.h"
#include "cli.h"
#include "cm_log.h"
#include "cm_profile.h"
#include "cm_stage.h"

#define STATE_SLOTS (1u << 16) /* bounded: a shard tracks at most this many channels */

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    {"profile", "file", 1, "data profile"},
    {NULL, NULL, 0, NULL},
};

typedef struct slot {
    char key[160]; /* "<gateway>/<channel id>" */
    anomaly_state st;
} slot;

typedef struct checker {
    cm_svc *svc;
    cm_profile *profile;
    void *to_archive;
    slot *slots;
    size_t used;
    cm_metric *checked, *raised, *cleared, *untracked;
} checker;

static slot *state_for(checker *c, const char *gw, const char *channel)
{
    char key[160];
    snprintf(key, sizeof key, "%s/%s", gw, channel);
    uint32_t h = 2166136261u;
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    for (uint32_t i = 0; i < STATE_SLOTS; i++) {
        slot *s = &c->slots[(h + i) & (STATE_SLOTS - 1)];
        if (s->key[0] == '\0') {
            if (c->used >= STATE_SLOTS * 3 / 4)
                return NULL;
            snprintf(s->key, sizeof s->key, "%s", key);
            c->used++;
            return s;
        }
        if (strcmp(s->key, key) == 0)
            return s;
    }
    return NULL;
}

static void emit(checker *c, const Suido__StageMessage *m, const cm_channel *ch,
                 const Suido__MappedReading *r, const anomaly_event *e)
{
    char id[256], topic[128];
    snprintf(id, sizeof id, "%s/%s/%s", m->header->gateway_id, ch->id, e->family);
    snprintf(topic, sizeof topic, "suido/v1/alerts/%s", m->site && *m->site ? m->site : "unknown");
    Suido__Alert a = SUIDO__ALERT__INIT;
    a.id = id;
    a.gateway_id = m->header->gateway_id;
    a.site = m->site;
    a.channel = (char *)ch->id;
    a.rule = (char *)e->rule;
    a.severity = e->severity;
    a.value = r->value;
    a.limit = e->limit;
    a.timestamp_ms = r->timestamp_ms;
    a.evidence = (char *)e->evidence;
    a.cleared = e->cleared;
    Suido__StageMessage out = SUIDO__STAGE_MESSAGE__INIT;
    out.topic = topic;
    out.received_ms = m->received_ms;
    out.site = m->site;
    out.alert = &a;
    cm_metric_inc(e->cleared ? c->cleared : c->raised);
    cm_info("alert=%s rule=%s severity=%d cleared=%d value=%.4g", id, e->rule, e->severity,
            e->cleared, r->value);
    cm_stage_send(c->to_archive, &out);
}

static void on_readings(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    checker *c = ctx;
    Suido__StageMessage *m = arg;
    if (!m->header || !m->header->gateway_id)
        return;
    for (size_t i = 0; i < m->n_mapped; i++) {
        const Suido__MappedReading *r = m->mapped[i];
        const char *dot = r->channel ? strchr(r->channel, '.') : NULL;
        char kind[32];
        if (!dot || (size_t)(dot - r->channel) >= sizeof kind)
            continue;
        snprintf(kind, sizeof kind, "%.*s", (int)(dot - r->channel), r->channel);
        const cm_channel *ch = cm_profile_channel(c->profile, kind, dot + 1);
        if (!ch)
            continue;
        slot *s = state_for(c, m->header->gateway_id, ch->id);
        if (!s) {
            cm_metric_inc(c->untracked);
            continue;
        }
        cm_metric_inc(c->checked);
        anomaly_event ev[3];
        int n = anomaly_eval(&s->st, ch, r->value, r->timestamp_ms, ev);
        for (int k = 0; k < n; k++)
            emit(c, m, ch, r, &ev[k]);
    }
}

static const cm_dispatch DISPATCH[] = {
    {"data", "profile", on_readings},
    {"backfill", "profile", on_readings},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "train") == 0 || strcmp(argv[1], "replay") == 0))
        return anomaly_cli(argc, argv);
    checker c = {0};
    c.svc = cm_svc_start("anomaly", argc, argv, SPEC);
    cm_svc *s = c.svc;
    char err[CM_CONF_ERRLEN];
    if (cm_profile_load(cm_conf_get(s->conf, "profile", "file"), &c.profile, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_svc_ready(s);
    c.slots = calloc(STATE_SLOTS, sizeof *c.slots);
    if (!c.slots)
        cm_svc_die(s, "out of memory");
    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &c.to_archive, err))
        cm_svc_die(s, "%s", err);
    c.checked = cm_metric_counter(s->metrics, "suido_anomaly_checked_total", "readings checked");
    c.raised = cm_metric_counter(s->metrics, "suido_anomaly_alerts_raised_total", "alerts raised");
    c.cleared = cm_metric_counter(s->metrics, "suido_anomaly_alerts_cleared_total",
                                  "alerts cleared");
    c.untracked = cm_metric_counter(s->metrics, "suido_anomaly_untracked_total",
                                    "readings not checked because the state table is full");

    cm_events *events = NULL;
    if (cm_events_new(s, "events", NULL, NULL, &events, err))
        cm_svc_die(s, "%s", err);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &c,
                          .events = events};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    zmq_close(input);
    zmq_close(c.to_archive);
    free(c.slots);
    cm_profile_destroy(&c.profile);
    cm_svc_destroy(&c.svc);
    return 0;
}
