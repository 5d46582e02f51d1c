/* verify_check: signature, freshness and envelope checks of gateway messages. */
#include "verify_check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cm_log.h"
#include "cm_svc.h"

#define SESSION_SLOTS 16384 /* power of two */
#define SEQ_MIN_SLOTS 1024  /* power of two; the replay table doubles from here */

typedef struct session {
    char gw[65];
    uint64_t boot_epoch;
    uint32_t key_seq;
    size_t key_len;
    uint8_t wrapped_hash[32]; /* which wrapped key this aead came from */
    cm_aead *aead;
} session;

/* The replay table: the last accepted (boot epoch, sequence) of each gateway, keyed by its full
 * id (gw[0] == 0: free slot). Open addressing with linear probing, never more than half full:
 * it doubles instead. An entry is never evicted or removed, so no gateway's traffic can make the
 * verifier forget another's position. Only a gateway whose signature checked out gets an entry,
 * so the table is bounded by the registered gateways: 88 bytes a slot, 2 to 4 slots per gateway
 * (500 gateways: 1024 slots, 88 KiB; 100,000: 262,144 slots, 22 MiB). */
typedef struct seq_state {
    char gw[65];
    uint64_t boot_epoch, seq;
} seq_state;

typedef struct confidential_channel {
    char kind[32];
    char name[64];
} confidential_channel;

struct verify_ctx {
    cm_rsa *unwrap;
    verify_lookup_fn lookup;
    void *lookup_ctx;
    uint64_t window_ms;
    uint64_t max_ahead_ms;
    uint64_t unwraps;
    session *sessions;
    seq_state *seqs;
    size_t seq_cap, seq_used;
    confidential_channel *confidential; /* of the profile in force (verify_set_confidential) */
    size_t n_confidential;
};

verify_ctx *verify_new(cm_rsa *unwrap_key, verify_lookup_fn lookup, void *lookup_ctx,
                       uint64_t window_ms)
{
    verify_ctx *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->sessions = calloc(SESSION_SLOTS, sizeof *v->sessions);
    v->seqs = calloc(SEQ_MIN_SLOTS, sizeof *v->seqs);
    v->seq_cap = SEQ_MIN_SLOTS;
    if (!v->sessions || !v->seqs) {
        verify_destroy(&v);
        return NULL;
    }
    v->unwrap = unwrap_key;
    v->lookup = lookup;
    v->lookup_ctx = lookup_ctx;
    v->window_ms = window_ms;
    v->max_ahead_ms = VERIFY_MAX_AHEAD_MS;
    return v;
}

void verify_set_max_ahead(verify_ctx *v, uint64_t max_ahead_ms) { v->max_ahead_ms = max_ahead_ms; }

void verify_destroy(verify_ctx **vp)
{
    if (!vp || !*vp)
        return;
    verify_ctx *v = *vp;
    if (v->sessions)
        for (size_t i = 0; i < SESSION_SLOTS; i++)
            cm_aead_destroy(&v->sessions[i].aead);
    free(v->sessions);
    free(v->seqs);
    free(v->confidential);
    free(v);
    *vp = NULL;
}

uint64_t verify_unwraps(const verify_ctx *v) { return v->unwraps; }

size_t verify_replay_entries(const verify_ctx *v) { return v->seq_used; }
cm_err verify_set_confidential(verify_ctx *v, const cm_profile *p)
{
    size_t n = 0, total = p ? cm_profile_channel_count(p) : 0;
    confidential_channel *set = calloc(total ? total : 1, sizeof *set);
    if (!set)
        return CM_ERR_NOMEM;
    for (size_t i = 0; i < total; i++) {
        const cm_channel *c = cm_profile_channel_at(p, i);
        if (!c->confidential)
            continue;
        snprintf(set[n].kind, sizeof set[n].kind, "%s", c->kind);
        snprintf(set[n].name, sizeof set[n].name, "%s", c->name);
        n++;
    }
    free(v->confidential);
    v->confidential = set;
    v->n_confidential = n;
    return CM_OK;
}

size_t verify_confidential_count(const verify_ctx *v) { return v->n_confidential; }

/* 1 when a reading on channel `name` of a gateway of site kind `kind` is confidential. A profile
 * marks a few channels: a linear look-up costs less than the signature already checked. */
static int is_confidential(const verify_ctx *v, const char *kind, const char *name)
{
    for (size_t i = 0; i < v->n_confidential; i++)
        if (strcmp(v->confidential[i].name, name) == 0 &&
            strcmp(v->confidential[i].kind, kind) == 0)
            return 1;
    return 0;
}

void verify_result_clear(verify_result *res)
{
    if (res->header)
        suido__header__free_unpacked(res->header, NULL);
    if (res->batch)
        suido__telemetry_batch__free_unpacked(res->batch, NULL);
    if (res->birth)
        suido__birth__free_unpacked(res->birth, NULL);
    if (res->cmdres)
        suido__command_result__free_unpacked(res->cmdres, NULL);
    memset(res, 0, sizeof *res);
}

static uint32_t hash_str(const char *s, uint64_t a, uint64_t b)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    for (int i = 0; i < 8; i++) {
        h = (h ^ (uint8_t)(a >> (8 * i))) * 16777619u;
        h = (h ^ (uint8_t)(b >> (8 * i))) * 16777619u;
    }
    return h;
}

/* The cached session key for (gw, boot epoch, key_seq), unwrapping `wrapped` if it is new.
 * Direct-mapped cache: a collision evicts the older session, which then costs one more RSA
 * unwrap. A cost, not a weakness: a hit needs the same gateway, epoch, key_seq and wrapped-key
 * hash, so an evicted session is unwrapped again and yields the same key; the replay table
 * (seq_check) is what must never forget, and it does not evict. */
static cm_err session_aead(verify_ctx *v, const char *gw, uint64_t epoch, uint32_t key_seq,
                           const ProtobufCBinaryData *wrapped, size_t key_len, cm_aead **out)
{
    uint8_t h[32];
    unsigned int hl = 0;
    if (!v->unwrap || key_len == 0 || wrapped->len != CM_WRAPPED_LEN ||
        EVP_Digest(wrapped->data, wrapped->len, h, &hl, EVP_sha256(), NULL) != 1)
        return CM_ERR_DECRYPT;
    session *s = &v->sessions[hash_str(gw, epoch, key_seq) & (SESSION_SLOTS - 1)];
    if (s->aead && s->boot_epoch == epoch && s->key_seq == key_seq && strcmp(s->gw, gw) == 0 &&
        s->key_len == key_len && memcmp(s->wrapped_hash, h, 32) == 0) {
        *out = s->aead;
        return CM_OK;
    }
    uint8_t key[32];
    size_t keylen = 0;
    cm_err rc = cm_rsa_unwrap(v->unwrap, wrapped->data, wrapped->len, NULL, 0, 1, key,
                              sizeof key, &keylen);
    v->unwraps++;
    /* the key must be the size the header's cipher names: no silent AES-128 for "AES-256" */
    if (rc != CM_OK || keylen != key_len) {
        OPENSSL_cleanse(key, sizeof key);
        return CM_ERR_DECRYPT;
    }
    cm_aead_destroy(&s->aead);
    rc = cm_aead_new(key, keylen, &s->aead);
    OPENSSL_cleanse(key, sizeof key);
    if (rc != CM_OK)
        return CM_ERR_DECRYPT;
    snprintf(s->gw, sizeof s->gw, "%s", gw);
    s->boot_epoch = epoch;
    s->key_seq = key_seq;
    s->key_len = key_len;
    memcpy(s->wrapped_hash, h, 32);
    *out = s->aead;
    return CM_OK;
}

/* gw's slot in a replay table of cap slots (a power of two): its entry, or the free slot where
 * it belongs. The table is never full (at most half), so the probe ends. */
static seq_state *seq_slot(seq_state *t, size_t cap, const char *gw)
{
    size_t i = hash_str(gw, 0, 0) & (cap - 1);
    while (t[i].gw[0] && strcmp(t[i].gw, gw) != 0)
        i = (i + 1) & (cap - 1);
    return &t[i];
}

/* Doubles the replay table, keeping every entry. */
static cm_err seq_grow(verify_ctx *v)
{
    size_t cap = v->seq_cap * 2;
    seq_state *t = calloc(cap, sizeof *t);
    if (!t)
        return CM_ERR_NOMEM;
    for (size_t i = 0; i < v->seq_cap; i++)
        if (v->seqs[i].gw[0])
            *seq_slot(t, cap, v->seqs[i].gw) = v->seqs[i];
    free(v->seqs);
    v->seqs = t;
    v->seq_cap = cap;
    return CM_OK;
}

/* Live data must move forward: a boot epoch going back, or a sequence not above the last one
 * of the same boot epoch, is a replay. With commit, (epoch, seq) becomes gw's position
 * (CM_ERR_NOMEM if the table cannot grow for a new gateway). Per process: with several verifier
 * replicas each sees a subsequence in order, and the archive's unique key catches the rest. */
static cm_err seq_check(verify_ctx *v, const char *gw, uint64_t epoch, uint64_t seq, int commit)
{
    seq_state *s = seq_slot(v->seqs, v->seq_cap, gw);
    if (s->gw[0] && (epoch < s->boot_epoch || (epoch == s->boot_epoch && seq <= s->seq)))
        return CM_ERR_REPLAY;
    if (!commit)
        return CM_OK;
    if (!s->gw[0]) {
        if ((v->seq_used + 1) * 2 > v->seq_cap) {
            if (seq_grow(v) != CM_OK)
                return CM_ERR_NOMEM;
            s = seq_slot(v->seqs, v->seq_cap, gw);
        }
        snprintf(s->gw, sizeof s->gw, "%s", gw);
        v->seq_used++;
    }
    s->boot_epoch = epoch;
    s->seq = seq;
    return CM_OK;
}

/* t is ahead of the receive time by more than the skew a synced clock may have. */
static int ahead(const verify_ctx *v, uint64_t t, uint64_t received_ms)
{
    return t > received_ms && t - received_ms > v->max_ahead_ms;
}

static Suido__Kind kind_of_topic(const char *k)
{
    if (strcmp(k, "data") == 0)
        return SUIDO__KIND__KIND_DATA;
    if (strcmp(k, "backfill") == 0)
        return SUIDO__KIND__KIND_BACKFILL;
    if (strcmp(k, "birth") == 0)
        return SUIDO__KIND__KIND_BIRTH;
    if (strcmp(k, "death") == 0)
        return SUIDO__KIND__KIND_DEATH;
    if (strcmp(k, "cmdres") == 0)
        return SUIDO__KIND__KIND_CMDRES;
    return SUIDO__KIND__KIND_UNSPECIFIED;
}

#define REJECT(code, why)                                                                          \
    do {                                                                                           \
        res->status = (code);                                                                      \
        res->reason = (why);                                                                       \
        goto out;                                                                                  \
    } while (0)

cm_err verify_message(verify_ctx *v, const char *topic, uint64_t received_ms,
                      const uint8_t *msg, size_t len, verify_result *res)
{
    memset(res, 0, sizeof *res);
    Suido__SignedEnvelope *env = NULL;
    uint8_t *plain = NULL;
    res->status = CM_OK;
    res->reason = "ok";

    if (cm_topic_parse(topic, res->gateway_id, res->kind) != CM_OK)
        REJECT(CM_ERR_INVAL, "bad_topic");
    Suido__Kind kind = kind_of_topic(res->kind);
    if (kind == SUIDO__KIND__KIND_UNSPECIFIED)
        REJECT(CM_ERR_INVAL, "bad_topic");
    if (len > VERIFY_MAX_ENVELOPE)
        REJECT(CM_ERR_TOO_BIG, "too_big");
    env = suido__signed_envelope__unpack(NULL, len, msg);
    /* unknown fields are refused: what is stored must be exactly what was signed, nothing else */
    if (!env || env->base.n_unknown_fields)
        REJECT(CM_ERR_DECODE, "malformed_envelope");
    if (env->header.len == 0 || env->header.len > VERIFY_MAX_HEADER || env->signature.len == 0 ||
        env->signature.len > 4 * CM_SIG_MAX)
        REJECT(CM_ERR_DECODE, "malformed_envelope");
    res->header = suido__header__unpack(NULL, env->header.len, env->header.data);
    Suido__Header *h = res->header;
    if (!h || h->base.n_unknown_fields)
        REJECT(CM_ERR_DECODE, "malformed_header");
    /* sequence numbers and epochs are stored as SQLite integers (signed 64-bit) */
    if (h->seq > INT64_MAX || h->boot_epoch > INT64_MAX || h->timestamp_ms > INT64_MAX)
        REJECT(CM_ERR_DECODE, "malformed_header");
    if (h->version != 1)
        REJECT(CM_ERR_DECODE, "unsupported_version");
    if (!h->gateway_id || strcmp(h->gateway_id, res->gateway_id) != 0)
        REJECT(CM_ERR_DENIED, "topic_gateway_mismatch");
    if (h->kind != kind)
        REJECT(CM_ERR_DECODE, "topic_kind_mismatch");

    const cm_gateway *gw = NULL;
    cm_err rc = v->lookup(v->lookup_ctx, res->gateway_id, &gw);
    if (rc == CM_ERR_UNKNOWN)
        REJECT(CM_ERR_UNKNOWN, "unknown_gateway");
    if (rc != CM_OK)
        REJECT(CM_ERR_UNAVAILABLE, "registry_unavailable");
    if (gw->state != SUIDO__ENTITY_STATE__STATE_ACTIVE)
        REJECT(CM_ERR_REVOKED, "gateway_not_active");
    snprintf(res->site, sizeof res->site, "%s", gw->site);
    snprintf(res->gw_kind, sizeof res->gw_kind, "%s", gw->kind);

    if (cm_pubkey_verify(gw->key, env->header.data, env->header.len, env->body.data,
                         env->body.len, env->signature.data, env->signature.len) != CM_OK)
        REJECT(CM_ERR_SIGNATURE, "bad_signature");

    /* from here on the header is the gateway's own word */
    /* A command result takes its sequence number from the same counter as data and is sent
     * live, so it follows the same freshness and replay rules (a replayed result could make
     * the gate believe an actuator moved). */
    int live = kind == SUIDO__KIND__KIND_DATA || kind == SUIDO__KIND__KIND_CMDRES;
    if (live || kind == SUIDO__KIND__KIND_BACKFILL) {
        if (h->seq == 0)
            REJECT(CM_ERR_DECODE, "zero_sequence");
        if (live) {
            uint64_t d = h->timestamp_ms > received_ms ? h->timestamp_ms - received_ms
                                                       : received_ms - h->timestamp_ms;
            if (d > v->window_ms)
                REJECT(CM_ERR_STALE, "outside_time_window");
        }
    }
    /* nothing of any kind from the future (window_ms bounds the past side of live data) */
    if (ahead(v, h->timestamp_ms, received_ms))
        REJECT(CM_ERR_STALE, "future_timestamp");
    if (live && seq_check(v, res->gateway_id, h->boot_epoch, h->seq, 0) != CM_OK)
        REJECT(CM_ERR_REPLAY, "replay");

    const uint8_t *body = env->body.data;
    size_t bodylen = env->body.len;
    if (kind != SUIDO__KIND__KIND_BIRTH && h->cipher != SUIDO__CIPHER__CIPHER_NONE) {
        cm_aead *a = NULL;
        if (h->iv.len != CM_GCM_IV_LEN || bodylen < CM_GCM_TAG_LEN ||
            session_aead(v, res->gateway_id, h->boot_epoch, h->key_seq, &h->wrapped_key,
                         cm_cipher_key_len(h->cipher), &a) != CM_OK)
            REJECT(CM_ERR_DECRYPT, "decrypt");
        size_t ptlen = bodylen - CM_GCM_TAG_LEN;
        plain = malloc(ptlen ? ptlen : 1);
        if (!plain)
            REJECT(CM_ERR_NOMEM, "out_of_memory");
        if (cm_aead_open(a, h->iv.data, h->iv.len, env->header.data, env->header.len, body,
                         bodylen, plain) != CM_OK)
            REJECT(CM_ERR_DECRYPT, "decrypt");
        body = plain;
        bodylen = ptlen;
    }

    switch (kind) {
    case SUIDO__KIND__KIND_DATA:
    case SUIDO__KIND__KIND_BACKFILL:
        res->batch = suido__telemetry_batch__unpack(NULL, bodylen, body);
        if (!res->batch || res->batch->base.n_unknown_fields)
            REJECT(CM_ERR_DECODE, "malformed_body");
        if (res->batch->n_readings == 0 || res->batch->n_readings > VERIFY_MAX_READINGS ||
            res->batch->n_readings != h->reading_count)
            REJECT(CM_ERR_DECODE, "reading_count");
        for (size_t i = 0; i < res->batch->n_readings; i++) {
            const Suido__Reading *r = res->batch->readings[i];
            /* unknown fields are refused inside readings too: protobuf-c keeps one with field
             * number 0 written as an overlong tag, but cannot read back the form it packs it in,
             * so the StageMessage forwarding this batch would be undecodable at the next hop
             * (a batch lost after it was accepted, resent by its gateway for ever) */
            if (r->base.n_unknown_fields || !r->channel || !*r->channel ||
                strlen(r->channel) > 64 || !isfinite(r->value) ||
                r->offset_ms > VERIFY_MAX_OFFSET_MS)
                REJECT(CM_ERR_DECODE, "invalid_reading");
            /* each reading's own time too: a batch may span minutes, not run into the future */
            if (ahead(v, h->timestamp_ms + r->offset_ms, received_ms))
                REJECT(CM_ERR_STALE, "future_timestamp");
        }
        /* the profile's mandatory encryption of important data: a confidential channel's
         * readings are taken only encrypted */
        for (size_t i = 0; h->cipher == SUIDO__CIPHER__CIPHER_NONE && i < res->batch->n_readings;
             i++)
            if (is_confidential(v, res->gw_kind, res->batch->readings[i]->channel))
                REJECT(CM_ERR_DENIED, "plaintext_confidential");
        break;
    case SUIDO__KIND__KIND_BIRTH:
        res->birth = suido__birth__unpack(NULL, bodylen, body);
        if (!res->birth || res->birth->base.n_unknown_fields)
            REJECT(CM_ERR_DECODE, "malformed_body");
        /* model, firmware and site travel on to the archive and the consoles */
        if ((*res->birth->model && !cm_valid_label(res->birth->model)) ||
            (*res->birth->firmware && !cm_valid_label(res->birth->firmware)) ||
            (*res->birth->site && !cm_valid_label(res->birth->site)))
            REJECT(CM_ERR_DECODE, "invalid_birth_name");
        /* the same for its channel declarations (see the readings above) */
        for (size_t i = 0; i < res->birth->n_channels; i++)
            if (res->birth->channels[i]->base.n_unknown_fields)
                REJECT(CM_ERR_DECODE, "malformed_body");
        if (res->birth->cipher != SUIDO__CIPHER__CIPHER_NONE) {
            cm_aead *a;
            if (session_aead(v, res->gateway_id, h->boot_epoch, h->key_seq,
                             &res->birth->wrapped_key, cm_cipher_key_len(res->birth->cipher),
                             &a) != CM_OK)
                REJECT(CM_ERR_DECRYPT, "decrypt");
        }
        break;
    case SUIDO__KIND__KIND_CMDRES:
        res->cmdres = suido__command_result__unpack(NULL, bodylen, body);
        if (!res->cmdres || res->cmdres->base.n_unknown_fields || !res->cmdres->command_id ||
            !*res->cmdres->command_id || strlen(res->cmdres->command_id) > 128 ||
            !isfinite(res->cmdres->value))
            REJECT(CM_ERR_DECODE, "malformed_body");
        break;
    default:
        break; /* a death carries no readings; its signature is what matters here */
    }
    if (live && seq_check(v, res->gateway_id, h->boot_epoch, h->seq, 1) != CM_OK)
        REJECT(CM_ERR_NOMEM, "out_of_memory");
out:
    free(plain);
    if (env)
        suido__signed_envelope__free_unpacked(env, NULL);
    return res->status;
}
