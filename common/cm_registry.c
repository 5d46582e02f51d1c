/* cm_registry: DEALER client of the registry with an open-addressing identity cache. */
#include "cm_registry.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_daemon.h"
#include "cm_log.h"
#include "cm_profile.h"
#include "cm_time.h"
#include "suido.pb-c.h"

#define CACHE_SLOTS 8192 /* power of two; holds far more gateways than one deployment has */

typedef struct slot {
    int used;
    cm_err status;           /* CM_OK or CM_ERR_UNKNOWN (negative entry) */
    uint64_t expires_ms;
    cm_gateway gw;
} slot;

/* While the registry is unreachable, calls fail at once instead of each waiting the full timeout
 * (which held every caller's loop, cached gateways' data included, to one message per timeout);
 * one request per PROBE_MS still goes out, unanswered-for, and any reply at all ends the outage. */
#define PROBE_MS 1000

struct cm_registry {
    void *sock;
    long timeout_ms, ttl_ms;
    slot *cache;
    uint64_t next_request;
    int down;               /* a request went unanswered and nothing has been heard since */
    uint64_t down_since_ms, next_probe_ms;
    uint64_t failed_fast;   /* calls refused at once during this outage */
};

cm_err cm_registry_new(void *zctx, const cm_conf *conf, const char *section,
                       const cm_curve_keypair *own, cm_registry **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    cm_registry *r = calloc(1, sizeof *r);
    if (!r)
        return CM_ERR_NOMEM;
    cm_err rc;
    if ((rc = cm_conf_long(conf, section, "timeout_ms", 1000, 10, 60000, &r->timeout_ms, err)) ||
        (rc = cm_conf_long(conf, section, "cache_ttl_ms", 10000, 0, 3600000, &r->ttl_ms, err)))
        goto fail;
    r->cache = calloc(CACHE_SLOTS, sizeof *r->cache);
    if (!r->cache) {
        rc = CM_ERR_NOMEM;
        goto fail;
    }
    if ((rc = cm_zsock_client_conf(zctx, conf, section, ZMQ_DEALER, own, &r->sock, err)))
        goto fail;
    *out = r;
    return CM_OK;
fail:
    free(r->cache);
    free(r);
    return rc;
}

cm_err cm_registry_session(cm_registry *r, const char *token, char who[65], char role[16])
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_SESSION_CHECK;
    req.token = (char *)(token ? token : "");
    Suido__RegistryReply *rep = NULL;
    if (cm_registry_call(r, &req, &rep) != CM_OK)
        return CM_ERR_UNAVAILABLE;
    int ok = rep->status == 0 && rep->operator_ && rep->operator_->id && rep->operator_->role;
    if (ok) {
        snprintf(who, 65, "%s", rep->operator_->id);
        snprintf(role, 16, "%s", rep->operator_->role);
    }
    suido__registry_reply__free_unpacked(rep, NULL);
    return ok ? CM_OK : CM_ERR_DENIED;
}

cm_err cm_registry_profile(cm_registry *r, const cm_conf *conf, const char *section,
                           cm_profile **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    const char *file = cm_conf_get(conf, section, "file");
    const char *keyf = cm_conf_get(conf, section, "registry_key");
    if (file)
        return cm_profile_load(file, out, err);
    if (!keyf || !r) {
        snprintf(err, CM_CONF_ERRLEN, "%s: [%s] needs file or registry_key (and [registry])",
                 cm_conf_name(conf), section);
        return CM_ERR_CONFIG;
    }
    cm_pubkey *key = NULL;
    if (cm_pubkey_load_pem(keyf, &key) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s: not a P-256 public key", keyf);
        return CM_ERR_KEY;
    }
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_PROFILE;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(r, &req, &rep);
    if (rc == CM_OK && rep->status != 0)
        rc = CM_ERR_UNAVAILABLE;
    if (rc != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "the registry has no profile for us (or did not answer)");
    } else if (cm_verify_domain(key, CM_PROFILE_DOMAIN, rep->profile_text.data,
                                rep->profile_text.len, rep->profile_signature.data,
                                rep->profile_signature.len) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "profile version %llu: signature is not the registry's "
                 "(%s)", (unsigned long long)rep->profile_version, keyf);
        rc = CM_ERR_SIGNATURE;
    } else {
        char name[64];
        snprintf(name, sizeof name, "registry:profile-v%llu",
                 (unsigned long long)rep->profile_version);
        rc = cm_profile_load_text(name, (const char *)rep->profile_text.data,
                                  rep->profile_text.len, out, err);
    }
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    cm_pubkey_destroy(&key);
    return rc;
}

cm_err cm_registry_profile_wait(cm_registry *r, const cm_conf *conf, const char *section,
                                long wait_ms, cm_profile **out, char err[CM_CONF_ERRLEN])
{
    uint64_t until = cm_mono_ms() + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    for (;;) {
        cm_err rc = cm_registry_profile(r, conf, section, out, err);
        if (rc != CM_ERR_UNAVAILABLE || cm_mono_ms() >= until || cm_daemon_stopping)
            return rc;
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void cm_registry_destroy(cm_registry **rp)
{
    if (!rp || !*rp)
        return;
    cm_registry *r = *rp;
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        cm_pubkey_destroy(&r->cache[i].gw.key);
        cm_rsa_destroy(&r->cache[i].gw.cmd_key);
    }
    free(r->cache);
    if (r->sock)
        zmq_close(r->sock);
    free(r);
    *rp = NULL;
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Slot holding id, or the first free slot of its probe sequence, or NULL when full. */
static slot *find_slot(cm_registry *r, const char *id)
{
    uint32_t h = hash(id);
    for (uint32_t i = 0; i < CACHE_SLOTS; i++) {
        slot *s = &r->cache[(h + i) & (CACHE_SLOTS - 1)];
        if (!s->used || strcmp(s->gw.id, id) == 0)
            return s;
    }
    return NULL;
}

/* Drops replies that arrived after their request timed out (or to a probe); any of them means
 * the registry is answering again. */
static void drain_late(cm_registry *r)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int got = cm_zrecv(r->sock, &m, NULL, 0, ZMQ_DONTWAIT) == CM_OK;
        zmq_msg_close(&m);
        if (!got)
            return;
        if (r->down) {
            r->down = 0;
            cm_info("event=registry_answering down_ms=%" PRIu64 " failed_fast=%" PRIu64,
                    cm_mono_ms() - r->down_since_ms, r->failed_fast);
        }
    }
}

static void went_unanswered(cm_registry *r, uint64_t now)
{
    if (!r->down) {
        r->down = 1;
        r->down_since_ms = now;
        r->failed_fast = 0;
        cm_warn("event=registry_unreachable timeout_ms=%ld alarm=1 detail=\"look-ups fail at once "
                "until it answers again\"",
                r->timeout_ms);
    }
    r->next_probe_ms = now + PROBE_MS;
}

cm_err cm_registry_call(cm_registry *r, const Suido__RegistryRequest *req,
                        Suido__RegistryReply **rep)
{
    *rep = NULL;
    drain_late(r);
    /* Numbered, so that a reply to an earlier request that timed out, arriving while this one
     * waits, is dropped instead of being taken for this one's answer. */
    Suido__RegistryRequest numbered = *req;
    numbered.request_id = ++r->next_request;
    uint64_t now = cm_mono_ms();
    if (r->down) {
        /* unreachable: this request goes out as the probe when one is due, without waiting */
        r->failed_fast++;
        if (now >= r->next_probe_ms) {
            r->next_probe_ms = now + PROBE_MS;
            (void)cm_zsend_pb(r->sock, &numbered.base, ZMQ_DONTWAIT);
        }
        return CM_ERR_UNAVAILABLE;
    }
    if (cm_zsend_pb(r->sock, &numbered.base, ZMQ_DONTWAIT) != CM_OK)
        return CM_ERR_UNAVAILABLE;
    uint64_t deadline = now + (uint64_t)r->timeout_ms;
    for (;;) {
        now = cm_mono_ms();
        if (now >= deadline) {
            went_unanswered(r, now);
            return CM_ERR_UNAVAILABLE;
        }
        zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)(deadline - now)) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (cm_zrecv(r->sock, &m, NULL, 0, ZMQ_DONTWAIT) != CM_OK) {
            zmq_msg_close(&m);
            continue;
        }
        *rep = suido__registry_reply__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        if (*rep && (*rep)->request_id == numbered.request_id)
            return CM_OK;
        if (*rep)
            suido__registry_reply__free_unpacked(*rep, NULL);
        *rep = NULL;
    }
}

cm_err cm_registry_notify(cm_registry *r, const Suido__RegistryRequest *req)
{
    drain_late(r);
    return cm_zsend_pb(r->sock, &req->base, ZMQ_DONTWAIT) == CM_OK ? CM_OK : CM_ERR_UNAVAILABLE;
}

static cm_err ask(cm_registry *r, const char *id, Suido__RegistryReply **rep)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_GATEWAY;
    req.id = (char *)id;
    cm_err rc = cm_registry_call(r, &req, rep);
    if (rc == CM_OK && (*rep)->status == 0 &&
        (!(*rep)->gateway || !(*rep)->gateway->id || strcmp((*rep)->gateway->id, id) != 0)) {
        suido__registry_reply__free_unpacked(*rep, NULL);
        *rep = NULL;
        return CM_ERR_UNAVAILABLE;
    }
    return rc;
}

cm_err cm_registry_gateway(cm_registry *r, const char *id, const cm_gateway **out)
{
    *out = NULL;
    if (strlen(id) > 64)
        return CM_ERR_UNKNOWN;
    uint64_t now = cm_mono_ms();
    slot *s = find_slot(r, id);
    if (s && s->used && now < s->expires_ms) {
        if (s->status != CM_OK)
            return s->status;
        *out = &s->gw;
        return CM_OK;
    }
    Suido__RegistryReply *rep;
    cm_err rc = ask(r, id, &rep);
    if (rc != CM_OK)
        return rc; /* cm_registry_call said it, once per outage */
    if (!s) {
        /* cache full: start afresh rather than grow without bound */
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            cm_pubkey_destroy(&r->cache[i].gw.key);
            cm_rsa_destroy(&r->cache[i].gw.cmd_key);
        }
        memset(r->cache, 0, CACHE_SLOTS * sizeof *r->cache);
        s = find_slot(r, id);
    }
    cm_pubkey_destroy(&s->gw.key);
    cm_rsa_destroy(&s->gw.cmd_key);
    memset(s, 0, sizeof *s);
    s->used = 1;
    snprintf(s->gw.id, sizeof s->gw.id, "%s", id);
    s->expires_ms = now + (uint64_t)r->ttl_ms;
    if (rep->status != 0 || !rep->gateway) {
        /* only "unknown" is cached; other failures are asked again next time */
        s->status = rep->status == CM_ERR_UNKNOWN ? CM_ERR_UNKNOWN : CM_ERR_UNAVAILABLE;
        rc = s->status;
        if (rc != CM_ERR_UNKNOWN)
            s->used = 0;
        suido__registry_reply__free_unpacked(rep, NULL);
        return rc;
    }
    Suido__GatewayInfo *g = rep->gateway;
    /* an identity that is not active has nothing to verify with (a disposed one has no key) */
    if (g->state == SUIDO__ENTITY_STATE__STATE_ACTIVE &&
        cm_pubkey_from_der(g->sign_pub_der.data, g->sign_pub_der.len, &s->gw.key) != CM_OK) {
        cm_error("id=%s error=\"registry sent an unusable signing key\"", id);
        s->used = 0;
        suido__registry_reply__free_unpacked(rep, NULL);
        return CM_ERR_UNAVAILABLE;
    }
    /* the command key is optional (gateways made before command encryption have none): an
     * unusable one counts as none, so the gate refuses to command rather than send in clear */
    if (g->state == SUIDO__ENTITY_STATE__STATE_ACTIVE && g->cmd_pub_der.len &&
        cm_rsa_from_public_der(g->cmd_pub_der.data, g->cmd_pub_der.len, &s->gw.cmd_key) != CM_OK)
        cm_error("id=%s error=\"registry sent an unusable command key\"", id);
    s->status = CM_OK;
    s->gw.state = g->state;
    snprintf(s->gw.site, sizeof s->gw.site, "%s", g->site ? g->site : "");
    snprintf(s->gw.kind, sizeof s->gw.kind, "%s", g->kind ? g->kind : "");
    snprintf(s->gw.key_id, sizeof s->gw.key_id, "%s", g->key_id ? g->key_id : "");
    s->gw.cert_not_after_ms = g->cert_not_after_ms;
    s->gw.sparkplug = g->protocol && strcmp(g->protocol, "sparkplug") == 0;
    suido__registry_reply__free_unpacked(rep, NULL);
    *out = &s->gw;
    return CM_OK;
}

void cm_registry_forget(cm_registry *r, const char *id)
{
    slot *s = find_slot(r, id);
    if (s && s->used) {
        /* keep the probe chain intact: mark expired instead of emptying the slot */
        s->expires_ms = 0;
    }
}
