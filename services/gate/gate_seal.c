/* gate_seal: per-gateway command session keys, sealing and signing (see gate_seal.h). */
#include "gate_seal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define SLOTS 1024 /* gateways with a session key; a full table replaces the oldest session */
#define SESSION_KEY_LEN 32

typedef struct session {
    char gw[65];
    char to_id[CM_KEY_ID_LEN + 1]; /* the gateway RSA key it is wrapped to */
    char key_id[CM_KEY_ID_LEN + 1];
    uint8_t wrapped[CM_WRAPPED_LEN];
    size_t wrapped_len;
    uint8_t iv_salt[4];
    uint64_t iv_ctr;
    cm_aead *aead;
    uint64_t made; /* order of creation, for replacement when full */
} session;

struct gate_seal {
    cm_signer *signer;
    session *slots;
    uint64_t made, wraps;
};

gate_seal *gate_seal_new(cm_signer *signer)
{
    gate_seal *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (!(s->slots = calloc(SLOTS, sizeof *s->slots))) {
        free(s);
        return NULL;
    }
    s->signer = signer;
    return s;
}

void gate_seal_destroy(gate_seal **sp)
{
    if (!sp || !*sp)
        return;
    gate_seal *s = *sp;
    for (size_t i = 0; i < SLOTS; i++)
        cm_aead_destroy(&s->slots[i].aead);
    OPENSSL_cleanse(s->slots, SLOTS * sizeof *s->slots);
    free(s->slots);
    free(s);
    *sp = NULL;
}

uint64_t gate_seal_wraps(const gate_seal *s) { return s->wraps; }

/* The slot of gw: its own, else a free one, else the oldest session's (linear probing from the
 * hash; a replaced session costs its gateway one more unwrap). */
static session *slot_of(gate_seal *s, const char *gw)
{
    uint32_t h = 2166136261u;
    for (const char *p = gw; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    session *oldest = NULL;
    for (uint32_t i = 0; i < SLOTS; i++) {
        session *x = &s->slots[(h + i) % SLOTS];
        if (!x->aead || strcmp(x->gw, gw) == 0)
            return x;
        if (!oldest || x->made < oldest->made)
            oldest = x;
    }
    return oldest;
}

/* A new session key for gw wrapped to `to`, in x. */
static cm_err new_session(gate_seal *s, session *x, const char *gw, cm_rsa *to)
{
    uint8_t key[SESSION_KEY_LEN], id[CM_KEY_ID_LEN / 2];
    size_t wl = 0;
    cm_aead *a = NULL;
    cm_err rc = cm_random(key, sizeof key);
    if (rc == CM_OK)
        rc = cm_random(id, sizeof id);
    if (rc == CM_OK)
        rc = cm_rsa_wrap(to, key, sizeof key, x->wrapped, &wl);
    s->wraps++;
    if (rc == CM_OK)
        rc = cm_aead_new(key, sizeof key, &a);
    if (rc == CM_OK)
        rc = cm_random(x->iv_salt, sizeof x->iv_salt);
    OPENSSL_cleanse(key, sizeof key);
    if (rc != CM_OK) {
        cm_aead_destroy(&a);
        return CM_ERR_CRYPTO;
    }
    cm_aead_destroy(&x->aead);
    x->aead = a;
    x->wrapped_len = wl;
    x->iv_ctr = 0;
    x->made = ++s->made;
    snprintf(x->gw, sizeof x->gw, "%s", gw);
    snprintf(x->to_id, sizeof x->to_id, "%s", cm_rsa_key_id(to));
    for (size_t i = 0; i < sizeof id; i++)
        snprintf(x->key_id + 2 * i, 3, "%02x", id[i]);
    return CM_OK;
}

cm_err gate_seal_command(gate_seal *s, cm_rsa *to, const Suido__Command *c, uint8_t *out,
                         size_t cap, size_t *len)
{
    *len = 0;
    if (!to)
        return CM_ERR_KEY;
    if (!c->gateway_id || !*c->gateway_id || strlen(c->gateway_id) > 64 || !c->command_id)
        return CM_ERR_INVAL;
    size_t n = suido__command__get_packed_size(c);
    if (n + CM_GCM_TAG_LEN > CM_CMD_MAX)
        return CM_ERR_TOO_BIG;
    session *x = slot_of(s, c->gateway_id);
    cm_err rc = CM_OK;
    if (!x->aead || strcmp(x->gw, c->gateway_id) != 0 || strcmp(x->to_id, cm_rsa_key_id(to)) != 0)
        rc = new_session(s, x, c->gateway_id, to);
    if (rc != CM_OK)
        return rc;
    uint8_t iv[CM_GCM_IV_LEN];
    memcpy(iv, x->iv_salt, sizeof x->iv_salt);
    uint64_t ctr = ++x->iv_ctr;
    for (int i = 0; i < 8; i++)
        iv[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));

    Suido__CommandHeader h = SUIDO__COMMAND_HEADER__INIT;
    h.version = 1;
    h.gateway_id = c->gateway_id;
    h.command_id = c->command_id;
    h.cipher = SUIDO__CIPHER__CIPHER_AES_256_GCM;
    h.iv.data = iv;
    h.iv.len = sizeof iv;
    h.wrapped_key.data = x->wrapped;
    h.wrapped_key.len = x->wrapped_len;
    h.key_id = x->key_id;
    uint8_t hdr[CM_CMD_HEADER_MAX], plain[CM_CMD_MAX], ct[CM_CMD_MAX + CM_GCM_TAG_LEN];
    uint8_t sig[CM_SIG_MAX];
    size_t hlen = suido__command_header__get_packed_size(&h), siglen = 0;
    if (hlen > sizeof hdr)
        return CM_ERR_TOO_BIG;
    suido__command_header__pack(&h, hdr);
    suido__command__pack(c, plain);
    rc = cm_aead_seal(x->aead, iv, hdr, hlen, plain, n, ct);
    OPENSSL_cleanse(plain, n);
    if (rc != CM_OK ||
        cm_command_sign(s->signer, hdr, hlen, ct, n + CM_GCM_TAG_LEN, sig, &siglen) != CM_OK)
        return CM_ERR_CRYPTO;
    Suido__SignedCommand sc = SUIDO__SIGNED_COMMAND__INIT;
    sc.header.data = hdr;
    sc.header.len = hlen;
    sc.command.data = ct;
    sc.command.len = n + CM_GCM_TAG_LEN;
    sc.signature.data = sig;
    sc.signature.len = siglen;
    size_t total = suido__signed_command__get_packed_size(&sc);
    if (total > cap)
        return CM_ERR_TOO_BIG;
    *len = suido__signed_command__pack(&sc, out);
    return CM_OK;
}
