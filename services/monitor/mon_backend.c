/* mon_backend: see mon_backend.h. */
#include "mon_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include <openssl/crypto.h>

#include "cm_audit_out.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_ratelimit.h"
#include "cm_registry.h"
#include "cm_time.h"

#define GATEWAYS_TTL_MS 5000
#define PROFILE_TTL_MS 30000

struct mon_backend {
    cm_svc *svc;
    cm_registry *reg;
    void *archive; /* DEALER */
    long archive_timeout_ms;
    uint64_t next_request;
    cm_pubkey *profile_key;
    cm_profile *profile;
    uint64_t profile_until_ms;
    Suido__RegistryReply *gateways;
    uint64_t gateways_until_ms;
    cm_ratelimit outsider;
    cm_metric *audited, *audit_unsent, *audit_suppressed, *archive_timeouts,
        *registry_timeouts;
};

cm_err mon_backend_new(cm_svc *svc, mon_backend **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    mon_backend *b = calloc(1, sizeof *b);
    if (!b)
        return CM_ERR_NOMEM;
    b->svc = svc;
    cm_err rc;
    const char *keyf = cm_conf_get(svc->conf, "profile", "registry_key");
    if ((rc = cm_conf_long(svc->conf, "archive", "timeout_ms", 10000, 100, 600000,
                           &b->archive_timeout_ms, err)) ||
        (rc = cm_registry_new(svc->zctx, svc->conf, "registry", &svc->keys, &b->reg, err)) ||
        (rc = cm_zsock_client_conf(svc->zctx, svc->conf, "archive", ZMQ_DEALER, &svc->keys,
                                   &b->archive, err)))
        goto fail;
    if (cm_pubkey_load_pem(keyf, &b->profile_key) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s: [profile] registry_key %s is not a P-256 public key",
                 cm_conf_name(svc->conf), keyf);
        rc = CM_ERR_KEY;
        goto fail;
    }
    cm_ratelimit_init(&b->outsider, 10000, 30);
    cm_metrics *mx = svc->metrics;
    b->audited = cm_metric_counter(mx, "suido_monitor_audit_events_total",
                                   "audit events sent to the archive or spooled for it");
    b->audit_unsent = cm_metric_counter(mx, "suido_monitor_audit_unsent_total",
                                        "audit events lost (the spool was full or failed)");
    b->audit_suppressed = cm_metric_counter(mx, "suido_monitor_audit_suppressed_total",
                                            "outsider-driven audit events over the budget");
    b->archive_timeouts = cm_metric_counter(mx, "suido_monitor_archive_timeouts_total",
                                            "archive requests without an answer in time");
    b->registry_timeouts = cm_metric_counter(mx, "suido_monitor_registry_timeouts_total",
                                             "registry requests without an answer in time");
    *out = b;
    return CM_OK;
fail:
    mon_backend_destroy(&b);
    return rc;
}

void mon_backend_destroy(mon_backend **bp)
{
    if (!bp || !*bp)
        return;
    mon_backend *b = *bp;
    int linger = 0;
    if (b->archive) {
        zmq_setsockopt(b->archive, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(b->archive);
    }
    cm_registry_destroy(&b->reg);
    cm_pubkey_destroy(&b->profile_key);
    cm_profile_destroy(&b->profile);
    if (b->gateways)
        suido__registry_reply__free_unpacked(b->gateways, NULL);
    free(b);
    *bp = NULL;
}

/* ------------------------------------------------------------------ registry */

static cm_err registry_call(mon_backend *b, const Suido__RegistryRequest *req,
                            Suido__RegistryReply **rep)
{
    cm_err rc = cm_registry_call(b->reg, req, rep);
    if (rc != CM_OK)
        cm_metric_inc(b->registry_timeouts);
    return rc;
}

void mon_backend_login(mon_backend *b, const char *op, const char *password, const char *totp,
                       const char *source, mon_login_result *res)
{
    memset(res, 0, sizeof *res);
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_LOGIN;
    req.id = (char *)op;
    req.password = (char *)password;
    req.totp = (char *)totp;
    req.source = (char *)source;
    Suido__RegistryReply *rep = NULL;
    if (registry_call(b, &req, &rep) != CM_OK) {
        res->status = CM_ERR_UNAVAILABLE;
        return;
    }
    if (rep->status != 0 || !rep->token || strlen(rep->token) != 64) {
        res->status = rep->status == CM_ERR_REVOKED ? CM_ERR_REVOKED
                      : rep->status == CM_ERR_UNAVAILABLE || rep->status == CM_ERR_DB
                          ? CM_ERR_UNAVAILABLE
                          : CM_ERR_DENIED;
        res->retry_after_ms = rep->retry_after_ms;
        suido__registry_reply__free_unpacked(rep, NULL);
        return;
    }
    snprintf(res->token, sizeof res->token, "%s", rep->token);
    res->expires_ms = rep->expires_ms;
    OPENSSL_cleanse(rep->token, strlen(rep->token));
    suido__registry_reply__free_unpacked(rep, NULL);
    /* the token must be this operator's (never another login's late answer) */
    char who[65];
    cm_err rc = mon_backend_session(b, res->token, who, res->role);
    if (rc != CM_OK || strcmp(who, op) != 0) {
        cm_error("operator=%s error=\"login answer does not belong to this operator\"", op);
        OPENSSL_cleanse(res->token, sizeof res->token);
        res->status = CM_ERR_UNAVAILABLE;
        return;
    }
    res->status = CM_OK;
}

cm_err mon_backend_session(mon_backend *b, const char *token, char who[65], char role[16])
{
    cm_err rc = cm_registry_session(b->reg, token, who, role);
    if (rc == CM_ERR_UNAVAILABLE)
        cm_metric_inc(b->registry_timeouts);
    return rc;
}

void mon_backend_logout(mon_backend *b, const char *token)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_LOGOUT;
    req.token = (char *)token;
    Suido__RegistryReply *rep = NULL;
    if (registry_call(b, &req, &rep) == CM_OK)
        suido__registry_reply__free_unpacked(rep, NULL);
}

cm_err mon_backend_gateways(mon_backend *b, const char *token, const Suido__RegistryReply **out)
{
    *out = NULL;
    uint64_t now = cm_mono_ms();
    if (!b->gateways || now >= b->gateways_until_ms) {
        Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
        req.op = SUIDO__REGISTRY_OP__REG_LIST_GATEWAYS;
        req.token = (char *)token;
        Suido__RegistryReply *rep = NULL;
        if (registry_call(b, &req, &rep) != CM_OK)
            return CM_ERR_UNAVAILABLE;
        if (rep->status != 0) {
            cm_err rc = (cm_err)rep->status;
            suido__registry_reply__free_unpacked(rep, NULL);
            return rc == CM_ERR_DENIED ? CM_ERR_DENIED : CM_ERR_UNAVAILABLE;
        }
        if (b->gateways)
            suido__registry_reply__free_unpacked(b->gateways, NULL);
        b->gateways = rep;
        b->gateways_until_ms = now + GATEWAYS_TTL_MS;
    }
    *out = b->gateways;
    return CM_OK;
}

const Suido__GatewayInfo *mon_backend_gateway(const Suido__RegistryReply *list, const char *id)
{
    for (size_t i = 0; list && i < list->n_gateways; i++)
        if (list->gateways[i]->id && strcmp(list->gateways[i]->id, id) == 0)
            return list->gateways[i];
    return NULL;
}

cm_err mon_backend_profile(mon_backend *b, const char *token, const cm_profile **out)
{
    *out = NULL;
    uint64_t now = cm_mono_ms();
    if (b->profile && now < b->profile_until_ms) {
        *out = b->profile;
        return CM_OK;
    }
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_PROFILE;
    req.token = (char *)token;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = registry_call(b, &req, &rep);
    if (rc == CM_OK && rep->status != 0)
        rc = rep->status == CM_ERR_DENIED ? CM_ERR_DENIED : CM_ERR_UNAVAILABLE;
    if (rc == CM_OK &&
        cm_verify_domain(b->profile_key, CM_PROFILE_DOMAIN, rep->profile_text.data,
                         rep->profile_text.len, rep->profile_signature.data,
                         rep->profile_signature.len) != CM_OK) {
        cm_error("version=%llu error=\"profile signature is not the registry's\" alarm=1",
                 (unsigned long long)rep->profile_version);
        rc = CM_ERR_SIGNATURE;
    }
    cm_profile *p = NULL;
    if (rc == CM_OK) {
        char name[64], why[CM_CONF_ERRLEN];
        snprintf(name, sizeof name, "registry:profile-v%llu",
                 (unsigned long long)rep->profile_version);
        rc = cm_profile_load_text(name, (const char *)rep->profile_text.data,
                                  rep->profile_text.len, &p, why);
        if (rc != CM_OK)
            cm_error("error=\"%s\"", why);
    }
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    if (rc != CM_OK) {
        /* the version known before serves on while the registry is away */
        if (b->profile && rc == CM_ERR_UNAVAILABLE) {
            *out = b->profile;
            return CM_OK;
        }
        return rc;
    }
    cm_profile_destroy(&b->profile);
    b->profile = p;
    b->profile_until_ms = now + PROFILE_TTL_MS;
    *out = p;
    return CM_OK;
}

/* ------------------------------------------------------------------ archive */

/* Drops answers to requests that timed out earlier. */
static void drain_late(mon_backend *b)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int got = zmq_msg_recv(&m, b->archive, ZMQ_DONTWAIT) >= 0;
        zmq_msg_close(&m);
        if (!got)
            return;
    }
}

cm_err mon_backend_archive(mon_backend *b, const char *token, Suido__ArchiveRequest *req,
                           Suido__ArchiveReply **rep)
{
    *rep = NULL;
    drain_late(b);
    req->token = (char *)token;
    req->request_id = ++b->next_request;
    if (cm_zsend_pb(b->archive, &req->base, ZMQ_DONTWAIT) != CM_OK) {
        cm_metric_inc(b->archive_timeouts);
        return CM_ERR_UNAVAILABLE;
    }
    uint64_t deadline = cm_mono_ms() + (uint64_t)b->archive_timeout_ms;
    for (;;) {
        uint64_t now = cm_mono_ms();
        if (now >= deadline) {
            cm_metric_inc(b->archive_timeouts);
            cm_warn("op=%d error=\"the archive did not answer in time\"", (int)req->op);
            return CM_ERR_UNAVAILABLE;
        }
        zmq_pollitem_t it = {.socket = b->archive, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)(deadline - now)) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->archive, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        Suido__ArchiveReply *r =
            suido__archive_reply__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        if (r && r->request_id == req->request_id) {
            *rep = r;
            return CM_OK;
        }
        if (r)
            suido__archive_reply__free_unpacked(r, NULL); /* a late answer: not ours */
    }
}

/* ------------------------------------------------------------------ audit */

void mon_backend_audit(mon_backend *b, const char *event, const char *subject, const char *actor,
                       const char *detail)
{
    if (cm_audit_out_record(b->svc->audit_out, b->svc->name, event, subject ? subject : "",
                            actor ? actor : "", detail ? detail : "") == CM_OK)
        cm_metric_inc(b->audited);
    else
        cm_metric_inc(b->audit_unsent);
}

void mon_backend_audit_outsider(mon_backend *b, const char *event, const char *subject,
                                const char *actor, const char *detail)
{
    uint64_t closed = 0;
    int pass = cm_ratelimit_take(&b->outsider, cm_now_ms(), &closed);
    if (closed) {
        char d[64];
        snprintf(d, sizeof d, "suppressed=%llu", (unsigned long long)closed);
        mon_backend_audit(b, "security_events_suppressed", "http", b->svc->name, d);
    }
    if (pass)
        mon_backend_audit(b, event, subject, actor, detail);
    else
        cm_metric_inc(b->audit_suppressed);
}
