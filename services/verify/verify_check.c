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
#define SEQ_SLOTS 16384     /* power of two */

typedef struct session {
    char gw[65];
    uint64_t boot_epoch;
    uint32_t key_seq;
    size_t key_len;
    uint8_t wrapped_hash[32]; /* which wrapped key this aead came from */
    cm_aead *aead;
} session;

typedef struct seq_state {
    char gw[65];
    uint64_t boot_epoch, seq;
} seq_state;

struct verify_ctx {
    cm_rsa *unwrap;
    verify_lookup_fn lookup;
    void *lookup_ctx;
    uint64_t window_ms;
    uint64_t unwraps;
    session *sessions;
    seq_state *seqs;
};

verify_ctx *verify_new(cm_rsa *unwrap_key, verify_lookup_fn lookup, void *lookup_ctx,
                       uint64_t window_ms)
{
    verify_ctx *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->sessions = calloc(SESSION_SLOTS, sizeof *v->sessions);
    v->seqs = calloc(SEQ_SLOTS, sizeof *v->seqs);
    if (!v->sessions || !v->seqs) {
        verify_destroy(&v);
        return NULL;
    }
    v->unwrap = unwrap_key;
    v->lookup = lookup;
    v->lookup_ctx = lookup_ctx;
    v->window_ms = window_ms;
    return v;
}

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
    free(v);
    *vp = NULL;
}

uint64_t verify_unwraps(const verify_ctx *v) { return v->unwraps; }

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
 * Direct-mapped cache: a collision evicts the older session, which then costs one more unwrap. */
/* Key length the header's cipher announces, or 0 for a cipher we do not accept. */
static size_t cipher_key_len(int cipher)
{
    switch (cipher) {
    case SUIDO__CIPHER__CIPHER_AES_128_GCM:
        return 16;
    case SUIDO__CIPHER__CIPHER_AES_192_GCM:
        return 24;
    case SUIDO__CIPHER__CIPHER_AES_256_GCM:
        return 32;
    default:
        return 0;
    }
}

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

/* Live data must move forward: a boot epoch going back, or a sequence not above the last one
 * of the same boot epoch, is a replay. Per process: with several verifier replicas each sees a
 * subsequence in order, and the archive's unique key catches the rest. */
static cm_err seq_check(verify_ctx *v, const char *gw, uint64_t epoch, uint64_t seq, int commit)
{
    seq_state *s = &v->seqs[hash_str(gw, 0, 0) & (SEQ_SLOTS - 1)];
    if (strcmp(s->gw, gw) == 0) {
        if (epoch < s->boot_epoch || (epoch == s->boot_epoch && seq <= s->seq))
            return CM_ERR_REPLAY;
    }
    if (commit) {
        snprintf(s->gw, sizeof s->gw, "%s", gw);
        s->boot_epoch = epoch;
        s->seq = seq;
    }
    return CM_OK;
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
            if (seq_check(v, res->gateway_id, h->boot_epoch, h->seq, 0) != CM_OK)
                REJECT(CM_ERR_REPLAY, "replay");
        }
    }

    const uint8_t *body = env->body.data;
    size_t bodylen = env->body.len;
    if (kind != SUIDO__KIND__KIND_BIRTH && h->cipher != SUIDO__CIPHER__CIPHER_NONE) {
        cm_aead *a = NULL;
        if (h->iv.len != CM_GCM_IV_LEN || bodylen < CM_GCM_TAG_LEN ||
            session_aead(v, res->gateway_id, h->boot_epoch, h->key_seq, &h->wrapped_key,
                         cipher_key_len(h->cipher), &a) != CM_OK)
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
        }
        break;
    case SUIDO__KIND__KIND_BIRTH:
        res->birth = suido__birth__unpack(NULL, bodylen, body);
        if (!res->birth || res->birth->base.n_unknown_fields)
            REJECT(CM_ERR_DECODE, "malformed_body");
        /* the same for its channel declarations (see the readings above) */
        for (size_t i = 0; i < res->birth->n_channels; i++)
            if (res->birth->channels[i]->base.n_unknown_fields)
                REJECT(CM_ERR_DECODE, "malformed_body");
        if (res->birth->cipher != SUIDO__CIPHER__CIPHER_NONE) {
            cm_aead *a;
            if (session_aead(v, res->gateway_id, h->boot_epoch, h->key_seq,
                             &res->birth->wrapped_key, cipher_key_len(res->birth->cipher),
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
    if (live)
        seq_check(v, res->gateway_id, h->boot_epoch, h->seq, 1);
out:
    free(plain);
    if (env)
        suido__signed_envelope__free_unpacked(env, NULL);
    return res->status;
}
