/* commands: validation of commands from the command gate (see commands.h). Pure apart from
 * hashing and signature verification; allocates only for protobuf decoding, freed before return. */
#include "commands.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "suido.pb-c.h"

static const char *const reason_names[CMD__REASONS] = {
    "ok",      "malformed",        "bad_signature", "wrong_gateway",
    "expired", "replayed",         "unknown_actuator", "wrong_unit",
    "out_of_range",
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

static int signature_ok(const cm_pubkey *key, const uint8_t *cmd, size_t len, const uint8_t *sig,
                        size_t siglen)
{
    return key && cm_command_verify(key, cmd, len, sig, siglen) == CM_OK;
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

cmd_reason cmd_check(cmd_state *st, const cm_pubkey *key, const char *own_id, uint64_t now_ms,
                     const sig_actuator *act, size_t n_act, const uint8_t *payload, size_t len,
                     cmd_decision *out)
{
    memset(out, 0, sizeof *out);
    out->actuator = -1;
    Suido__SignedCommand *sc = NULL;
    Suido__Command *c = NULL;
    cmd_reason r = CMD_MALFORMED;
    uint8_t h[CMD_ID_HASH];

    /* malformed: sizes before parsing, then both layers, unknown fields refused (what is acted
     * on must be exactly what was signed, nothing else) */
    if (!payload || len == 0 || len > CMD_MAX_PAYLOAD)
        goto out;
    sc = suido__signed_command__unpack(NULL, len, payload);
    if (!sc || sc->base.n_unknown_fields || sc->command.len == 0 || sc->signature.len == 0)
        goto out;
    c = suido__command__unpack(NULL, sc->command.len, sc->command.data);
    if (!c || c->base.n_unknown_fields)
        goto out;
    if (field_ok(c->command_id, CMD_ID_MAX))
        snprintf(out->command_id, sizeof out->command_id, "%s", c->command_id);
    if (field_ok(c->channel, CMD_NAME_MAX))
        snprintf(out->channel, sizeof out->channel, "%s", c->channel);
    if (!out->command_id[0] || !out->channel[0] || !field_ok(c->gateway_id, CMD_NAME_MAX) ||
        !field_ok(c->unit, CMD_UNIT_MAX) || c->issued_ms == 0 || c->expires_ms == 0 ||
        c->expires_ms < c->issued_ms)
        goto out;
    out->value = c->value;
    for (size_t i = 0; i < n_act; i++)
        if (strcmp(act[i].name, c->channel) == 0)
            out->actuator = (int)i;

    r = CMD_BAD_SIGNATURE;
    if (!signature_ok(key, sc->command.data, sc->command.len, sc->signature.data,
                      sc->signature.len))
        goto out;
    /* from here on the command is the gate's word */
    r = CMD_WRONG_GATEWAY;
    if (!own_id || strcmp(c->gateway_id, own_id) != 0)
        goto out;
    r = CMD_EXPIRED;
    if (now_ms > c->expires_ms || c->issued_ms > now_ms + CMD_MAX_SKEW_MS)
        goto out;
    r = CMD_REPLAYED;
    if (id_hash(c->command_id, h) != 0 || seen(st, h) || c->issued_ms <= st->last_issued_ms)
        goto out;
    r = CMD_UNKNOWN_ACTUATOR;
    if (out->actuator < 0)
        goto out;
    const sig_actuator *a = &act[out->actuator];
    r = CMD_WRONG_UNIT;
    if (strcmp(c->unit, a->unit) != 0)
        goto out;
    r = CMD_OUT_OF_RANGE;
    if (!isfinite(c->value) || c->value < a->lo || c->value > a->hi)
        goto out;

    r = CMD_OK;
    memcpy(st->seen[st->next], h, CMD_ID_HASH);
    st->next = (st->next + 1) % CMD_SEEN_MAX;
    if (st->n_seen < CMD_SEEN_MAX)
        st->n_seen++;
    st->last_issued_ms = c->issued_ms;
out:
    if (c)
        suido__command__free_unpacked(c, NULL);
    if (sc)
        suido__signed_command__free_unpacked(sc, NULL);
    out->reason = r;
    return r;
}
