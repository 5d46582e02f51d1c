/* commands: validation and decryption of commands from the command gate (see commands.h). Pure
 * apart from hashing, signature verification and the session key cache (cmd_keys); allocates
 * only for protobuf decoding and the opened command, freed (and wiped) before return. */
#include "commands.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cm_svc.h"
#include "suido.pb-c.h"

static const char *const reason_names[CMD__REASONS] = {
    "ok",      "malformed",        "bad_signature", "wrong_gateway",
    "expired", "replayed",         "unknown_actuator", "wrong_unit",
    "out_of_range", "plaintext_command", "decrypt", "failed",
};

const char *cmd_reason_name(cmd_reason r)
{
    return (unsigned)r < CMD__REASONS ? reason_names[r] : "unknown";
}

/* 1 for a present field of 1..max characters, each printable ASCII other than space, '"' and
 * '\': what an id, a channel name or a unit needs, and safe to log as it is. */
static int field_ok(const char *s, size_t max)
{
    if (!s || !*s)
        return 0;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        if (n >= max || *p <= 0x20 || *p >= 0x7f || *p == '"' || *p == '\\')
            return 0;
    return 1;
}

static int signature_ok(const cm_pubkey *key, const ProtobufCBinaryData *hdr,
                        const ProtobufCBinaryData *body, const ProtobufCBinaryData *sig)
{
    return key && cm_command_verify(key, hdr->data, hdr->len, body->data, body->len, sig->data,
                                    sig->len) == CM_OK;
}

void cmd_keys_clear(cmd_keys *k)
{
    cm_aead_destroy(&k->aead);
    k->key_id[0] = '\0';
    k->key_len = 0;
}

/* The session key named by h, from the cache or unwrapped now (and then cached). Only called on a
 * header the gate signed, so the RSA work is never an unauthenticated sender's to ask for. Every
 * failure is the same -1. */
static int session_of(cmd_keys *k, const Suido__CommandHeader *h, cm_aead **out)
{
    uint8_t hash[32], key[32];
    unsigned int hl = 0;
    size_t keylen = 0, want = cm_cipher_key_len(h->cipher);
    if (!k || EVP_Digest(h->wrapped_key.data, h->wrapped_key.len, hash, &hl, EVP_sha256(),
                         NULL) != 1)
        return -1;
    if (k->aead && k->key_len == want && strcmp(k->key_id, h->key_id) == 0 &&
        memcmp(k->wrapped_hash, hash, sizeof hash) == 0) {
        *out = k->aead;
        return 0;
    }
    if (!k->unwrap)
        return -1;
    k->unwraps++;
    cm_aead *a = NULL;
    int ok = cm_rsa_unwrap(k->unwrap, h->wrapped_key.data, h->wrapped_key.len, NULL, 0, 1, key,
                           sizeof key, &keylen) == CM_OK &&
             keylen == want && cm_aead_new(key, keylen, &a) == CM_OK;
    OPENSSL_cleanse(key, sizeof key);
    if (!ok)
        return -1;
    cmd_keys_clear(k);
    k->aead = a;
    k->key_len = keylen;
    snprintf(k->key_id, sizeof k->key_id, "%s", h->key_id);
    memcpy(k->wrapped_hash, hash, sizeof hash);
    *out = a;
    return 0;
}

/* A plaintext command is refused before anything else is looked at; its id and channel are
 * read, unauthenticated, only so that the refusal can name them in the result. */
static void plaintext_names(const ProtobufCBinaryData *body, cmd_decision *out)
{
    Suido__Command *c = suido__command__unpack(NULL, body->len, body->data);
    if (!c)
        return;
    if (field_ok(c->command_id, CMD_ID_MAX))
        snprintf(out->command_id, sizeof out->command_id, "%s", c->command_id);
    if (field_ok(c->channel, CMD_NAME_MAX))
        snprintf(out->channel, sizeof out->channel, "%s", c->channel);
    suido__command__free_unpacked(c, NULL);
}

/* The ids are authenticated by the gate before they are compared, so a hash prefix cannot be
 * steered to collide; 128 bits keep an accidental collision out of reach. */
static int id_hash(const char *id, uint8_t out[CMD_ID_HASH])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(id, strlen(id), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < CMD_ID_HASH)
        return -1;
    memcpy(out, md, CMD_ID_HASH);
    return 0;
}

static int seen(const cmd_state *st, const uint8_t h[CMD_ID_HASH])
{
    for (uint32_t i = 0; i < st->n_seen && i < CMD_SEEN_MAX; i++)
        if (memcmp(st->seen[i], h, CMD_ID_HASH) == 0)
            return 1;
    return 0;
}

cmd_reason cmd_check(cmd_state *st, const cm_pubkey *key, cmd_keys *keys, const char *own_id,
                     uint64_t now_ms, const cmd_actuator *act, size_t n_act,
                     const uint8_t *payload, size_t len, cmd_decision *out)
{
    memset(out, 0, sizeof *out);
    out->actuator = -1;
    Suido__SignedCommand *sc = NULL;
    Suido__CommandHeader *h = NULL;
    Suido__Command *c = NULL;
    uint8_t *plain = NULL;
    cm_aead *aead = NULL;
    cmd_reason r = CMD_MALFORMED;
    uint8_t hash[CMD_ID_HASH];

    /* malformed: sizes before parsing, then the outer layers, unknown fields refused (what is
     * acted on must be exactly what was signed, nothing else) */
    if (!payload || len == 0 || len > CMD_MAX_PAYLOAD)
        goto out;
    sc = suido__signed_command__unpack(NULL, len, payload);
    if (!sc || sc->base.n_unknown_fields || sc->command.len == 0 || sc->signature.len == 0 ||
        sc->header.len > CM_CMD_HEADER_MAX)
        goto out;
    if (sc->header.len == 0) {
        plaintext_names(&sc->command, out);
        r = CMD_PLAINTEXT;
        goto out;
    }
    h = suido__command_header__unpack(NULL, sc->header.len, sc->header.data);
    if (!h || h->base.n_unknown_fields || h->version != 1)
        goto out;
    if (field_ok(h->command_id, CMD_ID_MAX))
        snprintf(out->command_id, sizeof out->command_id, "%s", h->command_id);
    if (h->cipher == SUIDO__CIPHER__CIPHER_NONE) {
        plaintext_names(&sc->command, out);
        r = CMD_PLAINTEXT;
        goto out;
    }
    if (!out->command_id[0] || cm_cipher_key_len(h->cipher) == 0 || h->iv.len != CM_GCM_IV_LEN ||
        h->wrapped_key.len != CM_WRAPPED_LEN || !field_ok(h->key_id, CMD_KEY_ID_MAX) ||
        sc->command.len < CM_GCM_TAG_LEN)
        goto out;

    r = CMD_BAD_SIGNATURE;
    if (!signature_ok(key, &sc->header, &sc->command, &sc->signature))
        goto out;
    /* from here on header and ciphertext are the gate's word */
    r = CMD_DECRYPT;
    size_t ptlen = sc->command.len - CM_GCM_TAG_LEN;
    if (session_of(keys, h, &aead) != 0 || !(plain = malloc(ptlen ? ptlen : 1)) ||
        cm_aead_open(aead, h->iv.data, h->iv.len, sc->header.data, sc->header.len,
                     sc->command.data, sc->command.len, plain) != CM_OK)
        goto out;

    r = CMD_MALFORMED;
    c = suido__command__unpack(NULL, ptlen, plain);
    if (!c || c->base.n_unknown_fields)
        goto out;
    if (field_ok(c->channel, CMD_NAME_MAX))
        snprintf(out->channel, sizeof out->channel, "%s", c->channel);
    if (!field_ok(c->command_id, CMD_ID_MAX) || strcmp(c->command_id, out->command_id) != 0 ||
        !out->channel[0] || !field_ok(c->gateway_id, CMD_NAME_MAX) ||
        !field_ok(c->unit, CMD_UNIT_MAX) || c->issued_ms == 0 || c->expires_ms == 0 ||
        c->expires_ms < c->issued_ms)
        goto out;
    out->value = c->value;
    for (size_t i = 0; i < n_act; i++)
        if (strcmp(act[i].name, c->channel) == 0)
            out->actuator = (int)i;

    r = CMD_WRONG_GATEWAY;
    if (!own_id || strcmp(c->gateway_id, own_id) != 0)
        goto out;
    r = CMD_EXPIRED;
    if (now_ms > c->expires_ms || c->issued_ms > now_ms + CMD_MAX_SKEW_MS)
        goto out;
    r = CMD_REPLAYED;
    if (id_hash(c->command_id, hash) != 0 || seen(st, hash) ||
        c->issued_ms <= st->last_issued_ms)
        goto out;
    r = CMD_UNKNOWN_ACTUATOR;
    if (out->actuator < 0)
        goto out;
    const cmd_actuator *a = &act[out->actuator];
    r = CMD_WRONG_UNIT;
    if (strcmp(c->unit, a->unit) != 0)
        goto out;
    r = CMD_OUT_OF_RANGE;
    if (!isfinite(c->value) || c->value < a->lo || c->value > a->hi)
        goto out;

    r = CMD_OK;
    memcpy(st->seen[st->next], hash, CMD_ID_HASH);
    st->next = (st->next + 1) % CMD_SEEN_MAX;
    if (st->n_seen < CMD_SEEN_MAX)
        st->n_seen++;
    st->last_issued_ms = c->issued_ms;
out:
    if (c)
        suido__command__free_unpacked(c, NULL);
    if (plain) {
        OPENSSL_cleanse(plain, sc->command.len - CM_GCM_TAG_LEN);
        free(plain);
    }
    if (h)
        suido__command_header__free_unpacked(h, NULL);
    if (sc)
        suido__signed_command__free_unpacked(sc, NULL);
    out->reason = r;
    return r;
}
