/* suido-archive: commits every verified batch (the exact signed bytes), every birth/death,
 * refusal and alert to SQLite, and only then acknowledges end to end: it publishes
 * suido/v1/<gw>/ack with the highest contiguous sequence stored, and publishes alerts on
 * suido/v1/alerts/<site>.
 *
 * Writes are group-committed: records of up to commit_ms (or max_batch records) share one
 * transaction. A failed commit acknowledges nothing; the gateways resend what was not acked.
 *
 * It also keeps the tamper-evident audit log (hash-chained, cm_audit): every refusal it stores,
 * every replay, and the security events other services send it.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: verify, profile, anomaly, registry.
 *          [api] ROUTER, CURVE server, allow-list: suidoctl, monitor: alert cases (list, show
 *          with past cases, acknowledge, close with cause and action), for a valid operator
 *          session (registry); viewers read, operators and admins change.
 *          [registry] DEALER to the registry (session checks).
 *          [mqtt] MQTT/TLS client "archive": publishes acks and alerts only. */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "archive_acks.h"
#include "archive_store.h"
#include "archive_cases.h"
#include "cm_log.h"
#include "cm_crypto.h"
#include "cm_registry.h"
#include "cm_mqtt.h"
#include "cm_stage.h"
#include "cm_time.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_SERVER_ROWS("api"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    {"archive", "database", 0, "SQLite file (default state_dir/archive.db)"},
    {"archive", "commit_ms", 0, "longest wait before a group commit (50)"},
    {"archive", "max_batch", 0, "most records per commit (500)"},
    CM_MQTT_SPEC_ROWS("mqtt"),
    {NULL, NULL, 0, NULL},
};

#define MAX_PENDING_ALERTS 4096

typedef struct pending_alert {
    char topic[128];
    uint8_t *payload;
    size_t len;
} pending_alert;

typedef struct archiver {
    cm_svc *svc;
    archive_store *store;
    archive_acks *acks;
    cm_mqtt *mqtt;
    cm_registry *reg;
    void *api;
    long commit_ms, max_batch;
    int in_tx;
    long tx_records;
    uint64_t tx_started_ms;
    pending_alert alerts[MAX_PENDING_ALERTS];
    size_t n_alerts;
    cm_metric *batches, *readings, *duplicates, *rejects, *events, *alerts_stored;
    cm_metric *audited;
    cm_metric *commits, *commit_failures, *acks_sent, *acks_unsent, *alerts_unpublished;
} archiver;

static int tx_open(archiver *a)
{
    if (a->in_tx)
        return 1;
    if (archive_store_begin(a->store) != CM_OK)
        return 0;
    a->in_tx = 1;
    a->tx_records = 0;
    a->tx_started_ms = cm_mono_ms();
    return 1;
}

static void publish_ack(void *ctx, const char *gw, uint64_t epoch, uint64_t seq)
{
    archiver *a = ctx;
    char topic[96];
    uint8_t buf[128];
    Suido__Ack ack = SUIDO__ACK__INIT;
    ack.gateway_id = (char *)gw;
    ack.boot_epoch = epoch;
    ack.seq = seq;
    size_t n = suido__ack__pack(&ack, buf);
    snprintf(topic, sizeof topic, "suido/v1/%s/ack", gw);
    if (cm_mqtt_publish(a->mqtt, topic, buf, n, 1, 0) == CM_OK)
        cm_metric_inc(a->acks_sent);
    else
        cm_metric_inc(a->acks_unsent); /* the next commit acks a later point; nothing is lost */
}

static void drop_alerts(archiver *a)
{
    for (size_t i = 0; i < a->n_alerts; i++)
        free(a->alerts[i].payload);
    a->n_alerts = 0;
}

/* Commits the open transaction; acknowledges and publishes only on success. */
static void tx_commit(archiver *a)
{
    if (!a->in_tx)
        return;
    a->in_tx = 0;
    if (archive_store_commit(a->store) != CM_OK) {
        archive_store_rollback(a->store);
        archive_acks_reset(a->acks);
        drop_alerts(a);
        cm_metric_inc(a->commit_failures);
        cm_error("records=%ld error=\"commit failed: nothing acknowledged\" alarm=1",
                 a->tx_records);
        return;
    }
    cm_metric_inc(a->commits);
    archive_acks_each_changed(a->acks, publish_ack, a);
    for (size_t i = 0; i < a->n_alerts; i++)
        if (cm_mqtt_publish(a->mqtt, a->alerts[i].topic, a->alerts[i].payload, a->alerts[i].len,
                            1, 0) != CM_OK)
            cm_metric_inc(a->alerts_unpublished);
    drop_alerts(a);
}

static void on_tick(void *ctx)
{
    archiver *a = ctx;
    if (a->in_tx && (a->tx_records >= a->max_batch ||
                     cm_mono_ms() - a->tx_started_ms >= (uint64_t)a->commit_ms))
        tx_commit(a);
}

static void after_record(archiver *a)
{
    if (++a->tx_records >= a->max_batch)
        tx_commit(a);
}

/* An audit entry the archive makes itself, inside the open transaction. */
static void archive_audit_self(archiver *a, const char *event, const char *subject,
                               const char *actor, const char *detail)
{
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = cm_now_ms();
    e.event = (char *)event;
    e.subject = (char *)subject;
    e.actor = (char *)actor;
    e.detail = (char *)detail;
    if (tx_open(a) && archive_store_audit(a->store, "archive", &e) == CM_OK) {
        cm_metric_inc(a->audited);
        after_record(a);
    }
}

/* The archive's own refused handshakes go straight into its audit log. */
static void own_security_event(void *ctx, const char *event, const char *subject,
                               const char *detail)
{
    archive_audit_self(ctx, event, subject, "zmq", detail);
}

/* A refused message becomes an audit event: what was refused, from whom, why. */
static void audit_refusal(archiver *a, const Suido__StageMessage *m, const char *reason)
{
    char detail[256], gw[65] = "", kind[16] = "";
    cm_topic_parse(m->topic ? m->topic : "", gw, kind);
    snprintf(detail, sizeof detail, "reason=%s topic=%s epoch=%llu seq=%llu", reason,
             m->topic ? m->topic : "",
             m->header ? (unsigned long long)m->header->boot_epoch : 0ULL,
             m->header ? (unsigned long long)m->header->seq : 0ULL);
    const char *event = strcmp(reason, "bad_signature") == 0 ? "signature_rejected"
                        : strcmp(reason, "replay") == 0 || strcmp(reason, "duplicate") == 0
                            ? "replay"
                        : strcmp(reason, "outside_time_window") == 0 ? "stale_data"
                                                                     : "message_refused";
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = m->received_ms ? m->received_ms : cm_now_ms();
    e.event = (char *)event;
    e.subject = gw;
    e.actor = gw;
    e.detail = detail;
    if (archive_store_audit(a->store, "archive", &e) == CM_OK)
        cm_metric_inc(a->audited);
}

static void on_batch(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!m->header || !m->header->gateway_id || m->status != SUIDO__VERIFY_STATUS__VERIFY_OK) {
        cm_warn("topic=%s error=\"unverified batch refused\"", m->topic ? m->topic : "");
        return;
    }
    if (!tx_open(a))
        return;
    cm_err rc = archive_store_batch(a->store, m);
    if (rc == CM_ERR_DUPLICATE) {
        /* stored before: a retransmission or a replay; never a second row */
        cm_metric_inc(a->duplicates);
        archive_store_reject(a->store, m, "duplicate");
        audit_refusal(a, m, "duplicate");
        cm_info("gateway=%s epoch=%llu seq=%llu result=duplicate", m->header->gateway_id,
                (unsigned long long)m->header->boot_epoch, (unsigned long long)m->header->seq);
    } else if (rc != CM_OK) {
        return;
    } else {
        cm_metric_inc(a->batches);
        cm_metric_add(a->readings, m->header->reading_count);
    }
    archive_acks_mark(a->acks, m->header->gateway_id, m->header->boot_epoch, m->header->seq);
    if (rc == CM_ERR_DUPLICATE)
        archive_acks_rereport(a->acks, m->header->gateway_id);
    after_record(a);
}

static void on_event(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!m->header || !m->header->gateway_id || !tx_open(a))
        return;
    if (archive_store_event(a->store, m) == CM_OK)
        cm_metric_inc(a->events);
    after_record(a);
}

static int text_ok(const char *s, size_t max) { return s && *s && strlen(s) <= max; }

static void on_command(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    const Suido__Command *c = m->command;
    if (!c || !text_ok(c->command_id, 128) || !text_ok(c->gateway_id, 64) ||
        !text_ok(c->channel, 64) || !c->unit || !c->requested_by || !text_ok(m->decision, 128) ||
        !tx_open(a)) {
        cm_warn("peer=%s error=\"incomplete command record refused\"", peer);
        return;
    }
    if (archive_store_command(a->store, m) == CM_OK)
        cm_metric_inc(a->events);
    after_record(a);
}

static void on_reject(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!tx_open(a))
        return;
    const char *reason = m->reason ? m->reason : "unspecified";
    if (archive_store_reject(a->store, m, reason) == CM_OK)
        cm_metric_inc(a->rejects);
    audit_refusal(a, m, reason);
    after_record(a);
}

static void on_audit(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!m->audit || !m->audit->event || !*m->audit->event || !tx_open(a))
        return;
    /* the source is the authenticated peer, never what the event says about itself */
    if (archive_store_audit(a->store, peer, m->audit) == CM_OK)
        cm_metric_inc(a->audited);
    after_record(a);
}

typedef struct past_collect {
    char (*text)[640];
    size_t n;
} past_collect;

static void collect_past(void *ctx, const Suido__AlertCase *c)
{
    past_collect *p = ctx;
    if (p->n >= 3)
        return;
    char when[32];
    cm_time_iso(c->closed_ms, when, sizeof when);
    snprintf(p->text[p->n++], 640, "%s by %s: cause: %s; action: %s", when, c->closed_by,
             c->cause, c->action);
}

static void on_alert(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!m->topic || strncmp(m->topic, "suido/v1/alerts/", 16) != 0 || !tx_open(a))
        return;
    if (archive_store_alert(a->store, m) != CM_OK ||
        archive_cases_record(archive_store_db(a->store), m->alert, cm_now_ms()) != CM_OK)
        return;
    /* a raised alert carries what operators found and did the last times */
    char past_text[3][640];
    char *past[3];
    past_collect pc = {past_text, 0};
    if (!m->alert->cleared && m->alert->id)
        archive_cases_past(archive_store_db(a->store), m->alert->id, 0, 3, collect_past, &pc);
    for (size_t i = 0; i < pc.n; i++)
        past[i] = past_text[i];
    /* the sender's own past_cases (if any) are never published: ours replace them while
     * packing, then the message is given back as it came (the loop frees it) */
    size_t their_n = m->alert->n_past_cases;
    char **theirs = m->alert->past_cases;
    m->alert->n_past_cases = pc.n;
    m->alert->past_cases = past;
    cm_metric_inc(a->alerts_stored);
    if (a->n_alerts < MAX_PENDING_ALERTS) {
        pending_alert *p = &a->alerts[a->n_alerts];
        p->len = suido__alert__get_packed_size(m->alert);
        p->payload = malloc(p->len ? p->len : 1);
        if (p->payload) {
            suido__alert__pack(m->alert, p->payload);
            snprintf(p->topic, sizeof p->topic, "%s", m->topic);
            a->n_alerts++;
        }
    } else {
        cm_metric_inc(a->alerts_unpublished);
    }
    m->alert->n_past_cases = their_n;
    m->alert->past_cases = theirs;
    after_record(a);
}

/* ------------------------------------------------------------------ the operators' API */

typedef struct case_list {
    Suido__AlertCase **items;
    size_t n, cap;
} case_list;

static char *dup_text(const char *s) { return strdup(s ? s : ""); }

static void case_collect(void *ctx, const Suido__AlertCase *c)
{
    case_list *l = ctx;
    if (l->n == l->cap)
        return;
    Suido__AlertCase *d = malloc(sizeof *d);
    if (!d)
        return;
    *d = *c;
    d->alert_id = dup_text(c->alert_id);
    d->gateway_id = dup_text(c->gateway_id);
    d->site = dup_text(c->site);
    d->channel = dup_text(c->channel);
    d->rule = dup_text(c->rule);
    d->state = dup_text(c->state);
    d->evidence = dup_text(c->evidence);
    d->acked_by = dup_text(c->acked_by);
    d->closed_by = dup_text(c->closed_by);
    d->cause = dup_text(c->cause);
    d->action = dup_text(c->action);
    l->items[l->n++] = d;
}

static void case_list_free(case_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        Suido__AlertCase *c = l->items[i];
        char *strs[] = {c->alert_id, c->gateway_id, c->site, c->channel, c->rule, c->state,
                        c->evidence, c->acked_by, c->closed_by, c->cause, c->action};
        for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++)
            free(strs[k]);
        free(c);
    }
    free(l->items);
}

/* The operator behind token and whether their role may change cases; 0 for a valid session. */
static int session(archiver *a, const char *token, char who[65], int *may_change)
{
    char role[16];
    if (cm_registry_session(a->reg, token, who, role) != CM_OK)
        return -1;
    *may_change = strcmp(role, "operator") == 0 || strcmp(role, "admin") == 0;
    return 0;
}

static void on_api(void *ctx)
{
    archiver *a = ctx;
    zmq_msg_t route, body;
    char peer[64], who[65] = "";
    zmq_msg_init(&route);
    zmq_msg_init(&body);
    Suido__ArchiveRequest *q = NULL;
    Suido__ArchiveReply rep = SUIDO__ARCHIVE_REPLY__INIT;
    case_list cases = {0}, past = {0};
    int may_change = 0;
    if (zmq_msg_recv(&route, a->api, ZMQ_DONTWAIT) < 0)
        goto out;
    if (!zmq_msg_more(&route) || cm_zrecv(a->api, &body, peer, sizeof peer, 0) != CM_OK)
        goto out;
    q = suido__archive_request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
    static const cm_dispatch API_PEERS = {"api", "suidoctl,monitor", NULL};
    sqlite3 *db = archive_store_db(a->store);
    cm_err rc = CM_OK;
    if (!q || !cm_dispatch_peer_ok(&API_PEERS, peer) || cm_svc_peer_revoked(a->svc, peer)) {
        rc = q ? CM_ERR_DENIED : CM_ERR_DECODE;
        archive_audit_self(a, "request_denied", peer, peer, q ? "reason=not_allowed" : "malformed");
    } else if (session(a, q->token, who, &may_change) != 0) {
        rc = CM_ERR_DENIED;
    } else if ((q->op == SUIDO__ARCHIVE_OP__ALERT_ACK || q->op == SUIDO__ARCHIVE_OP__ALERT_CLOSE) &&
               !may_change) {
        rc = CM_ERR_DENIED;
        archive_audit_self(a, "request_denied", "", who, "op=alert_change reason=role");
    } else {
        size_t cap = q->limit && q->limit < 1000 ? q->limit : 100;
        cases.items = calloc(cap, sizeof *cases.items);
        cases.cap = cases.items ? cap : 0;
        switch (q->op) {
        case SUIDO__ARCHIVE_OP__ALERT_LIST:
            rc = archive_cases_list(db, q->all, (unsigned)cap, case_collect, &cases);
            break;
        case SUIDO__ARCHIVE_OP__ALERT_SHOW:
            past.items = calloc(20, sizeof *past.items);
            past.cap = past.items ? 20 : 0;
            rc = archive_cases_get(db, q->case_id, case_collect, &cases);
            if (rc == CM_OK && cases.n == 1)
                rc = archive_cases_past(db, cases.items[0]->alert_id, q->case_id, 20,
                                        case_collect, &past);
            break;
        case SUIDO__ARCHIVE_OP__ALERT_ACK:
        case SUIDO__ARCHIVE_OP__ALERT_CLOSE: {
            int ack = q->op == SUIDO__ARCHIVE_OP__ALERT_ACK;
            if (!tx_open(a)) {
                rc = CM_ERR_DB;
                break;
            }
            rc = ack ? archive_cases_ack(db, q->case_id, who, cm_now_ms())
                     : archive_cases_close(db, q->case_id, who, q->cause, q->action, cm_now_ms());
            char detail[1200], subject[32];
            snprintf(subject, sizeof subject, "case-%llu", (unsigned long long)q->case_id);
            snprintf(detail, sizeof detail, "result=%s cause=\"%s\" action=\"%s\"",
                     cm_strerror(rc), ack ? "" : (q->cause ? q->cause : ""),
                     ack ? "" : (q->action ? q->action : ""));
            archive_audit_self(a,
                               rc != CM_OK ? "alert_change_refused"
                               : ack       ? "alert_acknowledged"
                                           : "alert_closed",
                               subject, who, detail);
            tx_commit(a); /* the operator's change is on disk before the answer */
            if (rc == CM_OK)
                rc = archive_cases_get(db, q->case_id, case_collect, &cases);
            break;
        }
        default:
            rc = CM_ERR_INVAL;
        }
    }
    rep.status = (uint32_t)rc;
    rep.error = (char *)(rc == CM_ERR_DENIED && q && q->op == SUIDO__ARCHIVE_OP__ALERT_CLOSE &&
                                 may_change
                             ? "the condition is still active: acknowledge it now, close it "
                               "with cause and action once it has cleared"
                             : cm_strerror(rc));
    rep.n_cases = cases.n;
    rep.cases = cases.items;
    rep.n_past = past.n;
    rep.past = past.items;
    cm_zreply(a->api, &route, &rep.base);
out:
    case_list_free(&cases);
    case_list_free(&past);
    if (q)
        suido__archive_request__free_unpacked(q, NULL);
    zmq_msg_close(&route);
    zmq_msg_close(&body);
}

/* The archive's attack surface: who may hand it what. */
static const cm_dispatch DISPATCH[] = {
    {"data", "profile", on_batch},
    {"backfill", "profile", on_batch},
    {"birth", "profile", on_event},
    {"death", "profile", on_event},
    {"cmdres", "profile", on_batch}, /* numbered like data: stored, deduplicated and acked */
    {"command", "gate", on_command},
    {"reject", "verify,profile", on_reject},
    {"alert", "anomaly,registry,gate", on_alert},
    {"audit", "ingest,verify,profile,anomaly,registry,gate", on_audit},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    archiver a = {0};
    a.svc = cm_svc_start("archive", argc, argv, SPEC);
    cm_svc *s = a.svc;
    char err[CM_CONF_ERRLEN];
    if (cm_conf_long(s->conf, "archive", "commit_ms", 50, 1, 10000, &a.commit_ms, err) ||
        cm_conf_long(s->conf, "archive", "max_batch", 500, 1, 100000, &a.max_batch, err))
        cm_svc_die(s, "%s", err);
    cm_mqtt_opts mo = {.clean_session = 1, .max_inflight = 1024, .verify_hostname = 1};
    if (cm_mqtt_opts_from_conf(s->conf, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(s->conf));
    cm_svc_ready(s);

    char db[4096];
    cm_svc_path(s, "archive", "database", "archive.db", db, sizeof db);
    if (archive_store_open(db, &a.store) != CM_OK)
        cm_svc_die(s, "%s: cannot open the archive database", db);
    a.acks = archive_acks_new(a.store);
    cm_svc_on_security(s, own_security_event, &a);
    if (!a.acks)
        cm_svc_die(s, "out of memory");
    if (cm_mqtt_new(&mo, &a.mqtt) != CM_OK)
        cm_svc_die(s, "cannot create the MQTT client for %s", mo.uri);
    if (cm_mqtt_connect(a.mqtt, 0) != CM_OK)
        cm_warn("uri=%s error=\"broker not reachable yet; retrying\"", mo.uri);
    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_server_conf(s->zctx, s->zap, s->conf, "api", ZMQ_ROUTER, &s->keys, &a.api, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &a.reg, err))
        cm_svc_die(s, "%s", err);

    cm_metrics *mx = s->metrics;
    a.batches = cm_metric_counter(mx, "suido_archive_batches_total", "batches stored");
    a.readings = cm_metric_counter(mx, "suido_archive_readings_total", "readings stored");
    a.duplicates = cm_metric_counter(mx, "suido_archive_duplicates_total",
                                     "batches already stored (retransmission or replay)");
    a.rejects = cm_metric_counter(mx, "suido_archive_refusals_total", "refusals recorded");
    a.events = cm_metric_counter(mx, "suido_archive_events_total", "births, deaths, results");
    a.alerts_stored = cm_metric_counter(mx, "suido_archive_alerts_total", "alerts stored");
    a.commits = cm_metric_counter(mx, "suido_archive_commits_total", "group commits");
    a.audited = cm_metric_counter(mx, "suido_archive_audit_events_total",
                                  "entries appended to the audit log");
    a.commit_failures = cm_metric_counter(mx, "suido_archive_commit_failures_total",
                                          "failed commits (nothing acknowledged)");
    a.acks_sent = cm_metric_counter(mx, "suido_archive_acks_total", "acks published");
    a.acks_unsent = cm_metric_counter(mx, "suido_archive_acks_unsent_total",
                                      "acks not published (broker unavailable)");
    a.alerts_unpublished = cm_metric_counter(mx, "suido_archive_alerts_unpublished_total",
                                             "stored alerts not published");

    cm_events *events = NULL;
    if (cm_events_new(s, "events", NULL, NULL, &events, err))
        cm_svc_die(s, "%s", err);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &a,
                          .on_tick = on_tick, .events = events, .side = a.api,
                          .on_side = on_api};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    tx_commit(&a);
    zmq_close(input);
    zmq_close(a.api);
    cm_registry_destroy(&a.reg);
    cm_mqtt_destroy(&a.mqtt);
    archive_acks_destroy(&a.acks);
    archive_store_close(&a.store);
    cm_svc_destroy(&a.svc);
    return 0;
}
