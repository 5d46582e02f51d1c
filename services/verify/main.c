/* suido-verify: proves every gateway message authentic and fresh before anything uses it.
 * Stateless apart from caches, so it scales by replicas.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: ingest.
 *          [output profile] PUSH to the profile stage (verified messages).
 *          [output archive] PUSH to the archive (refusals, kept as audit records).
 *          Its own security events go to the audit log through cm_audit_out (a connection
 *          of its own to the archive, spooled while the archive is away).
 *          [registry] DEALER to the registry (identities and signing keys; fail closed), and
 *          the profile in force ([profile] registry_key): of it the verifier keeps only the set
 *          of confidential channels, which may not arrive in clear; a new version announced on
 *          [events] replaces the set at once (one that does not check out leaves it). */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_audit_out.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_profile.h"
#include "cm_registry.h"
#include "cm_stage.h"
#include "cm_time.h"
#include "verify_check.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_REGISTRY_SPEC_ROWS("registry"),
    CM_PROFILE_SPEC_ROWS("profile"),
    {"verify", "unwrap_key", 0, "platform RSA-2048 private key for session keys (0600)"},
    {"verify", "window_s", 0, "freshness window for live data in seconds (300)"},
    {"verify", "max_ahead_s", 0,
     "how far ahead of this host's clock any timestamp may be, every kind, in seconds (10)"},
    {NULL, NULL, 0, NULL},
};

#define SEEN_MAX 4096
#define SEEN_REPORT_MS 5000

typedef struct verifier {
    cm_svc *svc;
    char *seen[SEEN_MAX]; /* gateways with verified data since the last report to the registry */
    size_t n_seen;
    uint64_t next_seen_report_ms;
    verify_ctx *check;
    cm_registry *registry;
    void *to_profile, *to_archive;
    cm_metric *verified, *readings, *rejected_total;
    cm_metric *unwraps;
} verifier;

/* A gateway changed state: from now on its data is judged by its new state. */
static void on_gateway_event(void *ctx, const char *id, int state)
{
    verifier *v = ctx;
    cm_registry_forget(v->registry, id);
    cm_info("gateway=%s state=%d event=cache_dropped", id, state);
}

/* Puts the confidential channels of the profile in force into the check. Without a [profile]
 * section nothing is confidential (a deployment without a profile key). */
static cm_err load_confidential(verifier *v, long wait_ms, char err[CM_CONF_ERRLEN])
{
    const cm_conf *conf = v->svc->conf;
    if (!cm_conf_get(conf, "profile", "file") && !cm_conf_get(conf, "profile", "registry_key"))
        return CM_OK;
    cm_profile *p = NULL;
    cm_err rc = wait_ms ? cm_registry_profile_wait(v->registry, conf, "profile", wait_ms, &p, err)
                        : cm_registry_profile(v->registry, conf, "profile", &p, err);
    if (rc == CM_OK && (rc = verify_set_confidential(v->check, p)) != CM_OK)
        snprintf(err, CM_CONF_ERRLEN, "out of memory");
    if (rc == CM_OK)
        cm_info("profile=\"%s\" version=%ld confidential_channels=%zu event=profile_in_force",
                cm_profile_name(p), cm_profile_version(p), verify_confidential_count(v->check));
    cm_profile_destroy(&p);
    return rc;
}

static void on_other_event(void *ctx, const char *kind, const char *id)
{
    verifier *v = ctx;
    char err[CM_CONF_ERRLEN];
    if (strcmp(kind, "profile") == 0 && load_confidential(v, 0, err) != CM_OK)
        cm_error("announced_version=%s error=\"%s\" detail=\"the confidential channels of the "
                 "version in force stay\"", id, err);
}

static cm_err lookup(void *ctx, const char *id, const cm_gateway **out)
{
    return cm_registry_gateway(ctx, id, out);
}

/* One counter per reason, registered on first use. */
static void count_reject(verifier *v, const char *reason)
{
    char name[128];
    snprintf(name, sizeof name, "suido_verify_rejected_total{reason=\"%s\"}", reason);
    cm_metric_inc(cm_metric_counter(v->svc->metrics, name, "messages refused, by reason"));
    cm_metric_inc(v->rejected_total);
    cm_svc_reject(v->svc, reason);
}

/* Remembers gw for the next "last seen" report (linear: a report covers a few seconds). */
static void mark_seen(verifier *v, const char *gw)
{
    for (size_t i = 0; i < v->n_seen; i++)
        if (strcmp(v->seen[i], gw) == 0)
            return;
    if (v->n_seen < SEEN_MAX && (v->seen[v->n_seen] = strdup(gw)))
        v->n_seen++;
}

/* Every few seconds: tell the registry which gateways sent verified data (inventory). */
static void report_seen(void *ctx)
{
    verifier *v = ctx;
    uint64_t now = cm_mono_ms();
    if (now < v->next_seen_report_ms || v->n_seen == 0)
        return;
    v->next_seen_report_ms = now + SEEN_REPORT_MS;
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_SEEN;
    req.ids = v->seen;
    req.n_ids = v->n_seen;
    cm_registry_notify(v->registry, &req);
    for (size_t i = 0; i < v->n_seen; i++)
        free(v->seen[i]);
    v->n_seen = 0;
}

/* The envelope without its body, malloc'd into *out (*len bytes): what is kept of a batch refused
 * for carrying a confidential channel in clear. Its header and signature name and prove what was
 * sent; the readings themselves are not stored at rest in clear. NULL when it does not decode. */
static uint8_t *without_body(const ProtobufCBinaryData *env, size_t *len)
{
    Suido__SignedEnvelope *e = suido__signed_envelope__unpack(NULL, env->len, env->data);
    uint8_t *out = NULL;
    if (e) {
        e->body.len = 0;
        *len = suido__signed_envelope__get_packed_size(e);
        if ((out = malloc(*len ? *len : 1)))
            suido__signed_envelope__pack(e, out);
        suido__signed_envelope__free_unpacked(e, NULL);
    }
    return out;
}

static void on_gateway_message(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    verifier *v = ctx;
    Suido__StageMessage *in = arg;
    verify_result res;
    verify_message(v->check, in->topic ? in->topic : "", in->received_ms, in->envelope.data,
                   in->envelope.len, &res);
    cm_metric_set(v->unwraps, (int64_t)verify_unwraps(v->check));
    Suido__StageMessage out = SUIDO__STAGE_MESSAGE__INIT;
    out.topic = in->topic;
    out.received_ms = in->received_ms;
    out.envelope = in->envelope;
    out.site = res.site;
    out.site_kind = res.gw_kind;
    if (res.status != CM_OK) {
        count_reject(v, res.reason);
        cm_warn("gateway=%s topic=%s reason=%s seq=%llu result=rejected", res.gateway_id,
                in->topic ? in->topic : "", res.reason,
                res.header ? (unsigned long long)res.header->seq : 0ULL);
        out.status = SUIDO__VERIFY_STATUS__VERIFY_REJECTED;
        out.reason = (char *)res.reason;
        /* evidence, not a record: a refused envelope is kept up to the broker's 64 KiB limit, so
         * the refusal always fits the archive's frame limit */
        if (out.envelope.len > VERIFY_MAX_ENVELOPE)
            out.envelope.len = VERIFY_MAX_ENVELOPE;
        uint8_t *kept = NULL;
        if (strcmp(res.reason, "plaintext_confidential") == 0) {
            kept = without_body(&in->envelope, &out.envelope.len);
            out.envelope.data = kept;
            if (!kept)
                out.envelope.len = 0;
        }
        out.header = res.header;
        cm_stage_send(v->to_archive, &out);
        free(kept);
    } else {
        cm_metric_inc(v->verified);
        if (res.batch)
            cm_metric_add(v->readings, res.batch->n_readings);
        out.status = SUIDO__VERIFY_STATUS__VERIFY_OK;
        out.reason = "ok";
        out.header = res.header;
        out.batch = res.batch;
        out.birth = res.birth;
        out.cmdres = res.cmdres;
        mark_seen(v, res.gateway_id);
        cm_stage_send(v->to_profile, &out);
    }
    verify_result_clear(&res);
}

/* verify's attack surface: only ingest may send, and only gateway traffic. */
static const cm_dispatch DISPATCH[] = {
    {"data", "ingest", on_gateway_message},
    {"backfill", "ingest", on_gateway_message},
    {"birth", "ingest", on_gateway_message},
    {"death", "ingest", on_gateway_message},
    {"cmdres", "ingest", on_gateway_message},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    verifier v = {0};
    v.svc = cm_svc_start("verify", argc, argv, SPEC);
    cm_svc *s = v.svc;
    char err[CM_CONF_ERRLEN];
    long window_s, max_ahead_s;
    if (cm_conf_long(s->conf, "verify", "window_s", 300, 1, 86400, &window_s, err) ||
        cm_conf_long(s->conf, "verify", "max_ahead_s", VERIFY_MAX_AHEAD_MS / 1000, 0, 300,
                     &max_ahead_s, err))
        cm_svc_die(s, "%s", err);
    cm_rsa *unwrap = NULL;
    const char *keyfile = cm_conf_get(s->conf, "verify", "unwrap_key");
    if (keyfile && cm_rsa_load_private(keyfile, &unwrap) != CM_OK)
        cm_svc_die(s, "%s: unwrap_key is not a usable RSA-2048 private key", keyfile);
    cm_svc_ready(s);

    void *input;
    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output profile", ZMQ_PUSH, &s->keys,
                             &v.to_profile, err) ||
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &v.to_archive, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &v.registry, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    v.check = verify_new(unwrap, lookup, v.registry, (uint64_t)window_s * 1000u);
    if (!v.check)
        cm_svc_die(s, "out of memory");
    verify_set_max_ahead(v.check, (uint64_t)max_ahead_s * 1000u);
    if (load_confidential(&v, 15000, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    v.verified = cm_metric_counter(s->metrics, "suido_verify_verified_total", "messages verified");
    v.readings = cm_metric_counter(s->metrics, "suido_verify_readings_total",
                                   "readings in verified batches");
    v.rejected_total = cm_metric_counter(s->metrics, "suido_verify_rejected_all_total",
                                         "messages refused, all reasons");
    v.unwraps = cm_metric_gauge(s->metrics, "suido_verify_unwraps", "RSA-OAEP unwraps done");

    cm_events *events = NULL;
    if (cm_events_new(s, "events", on_gateway_event, &v, &events, err))
        cm_svc_die(s, "%s", err);
    cm_events_on_other(events, on_other_event, &v);
    cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &v,
                          .events = events, .on_tick = report_seen};
    cm_stage_run(&stage);
    cm_events_destroy(&events);

    cm_info("event=stopping");
    for (size_t i = 0; i < v.n_seen; i++)
        free(v.seen[i]);
    verify_destroy(&v.check);
    cm_registry_destroy(&v.registry);
    zmq_close(input);
    zmq_close(v.to_profile);
    zmq_close(v.to_archive);
    cm_rsa_destroy(&unwrap);
    cm_svc_destroy(&v.svc);
    return 0;
}
