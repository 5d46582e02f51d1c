/* commands_test: unit tests of the gateway's command validation (gateway/commands.c) with a
 * real P-256 gate key and RSA-2048 gateway command keys generated here: acceptance of a valid
 * (encrypted) command, every refusal reason (a command in clear, one that does not decrypt), the
 * order of the checks, the once-per-key unwrap, replay by id and by issued_ms, the bounded
 * seen-id memory, and that a refused command changes nothing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "commands.h"
#include "suido.pb-c.h"

#define NOW_MS 1700000000000ull
#define GW "gw-0001"
#define BUF 16384

#define KID "0123456789abcdef"

/* The actuators of three kinds of site, as the simulator declares them (gateway-sim/signals.c). */
typedef enum site_kind { SIG_TREATMENT, SIG_RESERVOIR, SIG_PUMPING } site_kind;
static const cmd_actuator treatment_act[] = {{"dosing", "mg/L", 0.0, 4.0}};
static const cmd_actuator reservoir_act[] = {{"inlet_valve", "%", 0.0, 100.0}};
static const cmd_actuator pumping_act[] = {{"pump1", "1", 0.0, 1.0}, {"pump2", "1", 0.0, 1.0}};

static size_t site_actuators(site_kind k, const cmd_actuator **out)
{
    switch (k) {
    case SIG_TREATMENT:
        *out = treatment_act;
        return 1;
    case SIG_RESERVOIR:
        *out = reservoir_act;
        return 1;
    default:
        *out = pumping_act;
        return 2;
    }
}

typedef struct keys {
    EVP_PKEY *gate, *other;   /* private keys: the gate's, and someone else's */
    cm_pubkey *pub;           /* the gate's public key as the gateway loads it */
    cm_rsa *unwrap;           /* this gateway's RSA command key (private) */
    uint8_t key[32];          /* the gate's session key for this gateway */
    uint8_t wrapped[CM_WRAPPED_LEN], wrapped_other[CM_WRAPPED_LEN]; /* to it / to another key */
    cmd_keys ck;              /* the gateway's cache, as gateway.c keeps it */
} keys;

static keys K;

/* SPKI DER of k's public half, as the registry keeps it, into a cm_rsa for wrapping. */
static cm_rsa *rsa_public(EVP_PKEY *k)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(k, &der);
    cm_rsa *r = NULL;
    if (n > 0)
        cm_rsa_from_public_der(der, (size_t)n, &r);
    OPENSSL_free(der);
    return r;
}

static int setup(void **state)
{
    (void)state;
    K.gate = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    K.other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *mine = EVP_RSA_gen(2048), *theirs = EVP_RSA_gen(2048);
    if (!K.gate || !K.other || !mine || !theirs)
        return -1;
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(K.gate, &der);
    if (n <= 0)
        return -1;
    cm_err e = cm_pubkey_from_der(der, (size_t)n, &K.pub);
    OPENSSL_free(der);
    der = NULL;
    n = i2d_PrivateKey(mine, &der);
    if (e != CM_OK || n <= 0 || cm_rsa_from_private_der(der, (size_t)n, &K.unwrap) != CM_OK)
        return -1;
    OPENSSL_free(der);
    cm_rsa *to = rsa_public(mine), *to_other = rsa_public(theirs);
    size_t wl = 0, wl2 = 0;
    int ok = to && to_other && cm_random(K.key, sizeof K.key) == CM_OK &&
             cm_rsa_wrap(to, K.key, sizeof K.key, K.wrapped, &wl) == CM_OK &&
             cm_rsa_wrap(to_other, K.key, sizeof K.key, K.wrapped_other, &wl2) == CM_OK;
    cm_rsa_destroy(&to);
    cm_rsa_destroy(&to_other);
    EVP_PKEY_free(mine);
    EVP_PKEY_free(theirs);
    K.ck.unwrap = K.unwrap;
    return ok ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(K.gate);
    EVP_PKEY_free(K.other);
    cm_pubkey_destroy(&K.pub);
    cmd_keys_clear(&K.ck);
    cm_rsa_destroy(&K.unwrap);
    return 0;
}

/* Test-only signer: ECDSA P-256/SHA-256 DER over prefix || msg, as the gate signs with
 * prefix = "suido-cmd-v2" || 0x00 (prefix_len 13); other prefixes make wrong signatures. */
static size_t sign_with(EVP_PKEY *k, const void *prefix, size_t prefix_len, const uint8_t *msg,
                        size_t len, uint8_t *sig)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t siglen = CM_SIG_MAX;
    assert_non_null(md);
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k), 1);
    if (prefix_len)
        assert_int_equal(EVP_DigestSignUpdate(md, prefix, prefix_len), 1);
    assert_int_equal(EVP_DigestSignUpdate(md, msg, len), 1);
    assert_int_equal(EVP_DigestSignFinal(md, sig, &siglen), 1);
    EVP_MD_CTX_free(md);
    return siglen;
}

/* How a payload is made: zero-initialised it is the gate's own (sealed under K.key wrapped to
 * this gateway, signed by the gate); each field changes one ingredient. */
typedef struct sealing {
    EVP_PKEY *signer;           /* NULL: K.gate */
    int no_prefix, short_prefix; /* sign without the domain, or without its 0x00 */
    int plaintext;              /* cipher NONE, the Command in clear */
    int no_header;              /* the old form: no header, the Command in clear */
    int cipher;                 /* 0: AES-256-GCM */
    int to_other;               /* session key wrapped to another gateway's key */
    const char *key_id;         /* NULL: KID */
    const char *header_cid;     /* NULL: the command's own id */
    size_t iv_len;              /* 0: 12 */
    size_t wrapped_len;         /* 0: 256 */
    int damage_ct;              /* a ciphertext byte flipped before signing (GCM notices) */
    int change_after_sign;      /* a ciphertext byte flipped after signing */
    int sig_flip, sig_cut, sig_extra; /* the signature damaged */
    int no_sig, no_cmd;         /* empty signature / command */
} sealing;

#define BIG 16384

/* Seals cmd bytes (id cid) as o says, signs and packs them into out: a payload on the command
 * topic. */
static size_t seal_bytes(const sealing *o, const char *cid, const uint8_t *cmd, size_t n,
                         uint8_t *out)
{
    static uint8_t hdr[2048], ct[BIG], msg[BIG + 2048];
    uint8_t iv[CM_GCM_IV_LEN] = {7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 1}, sig[CM_SIG_MAX + 1];
    size_t hlen = 0, clen = n;
    if (!o->no_header) {
        Suido__CommandHeader h = SUIDO__COMMAND_HEADER__INIT;
        h.version = 1;
        h.gateway_id = GW;
        h.command_id = (char *)(o->header_cid ? o->header_cid : cid);
        h.cipher = o->plaintext ? SUIDO__CIPHER__CIPHER_NONE
                   : o->cipher  ? o->cipher
                                : SUIDO__CIPHER__CIPHER_AES_256_GCM;
        if (!o->plaintext) {
            h.iv.data = iv;
            h.iv.len = o->iv_len ? o->iv_len : sizeof iv;
            h.wrapped_key.data = o->to_other ? K.wrapped_other : K.wrapped;
            h.wrapped_key.len = o->wrapped_len ? o->wrapped_len : CM_WRAPPED_LEN;
            h.key_id = (char *)(o->key_id ? o->key_id : KID);
        }
        hlen = suido__command_header__pack(&h, hdr);
    }
    if (o->plaintext || o->no_header) {
        memcpy(ct, cmd, n);
    } else {
        cm_aead *a = NULL;
        assert_int_equal(cm_aead_new(K.key, sizeof K.key, &a), CM_OK);
        assert_int_equal(cm_aead_seal(a, iv, hdr, hlen, cmd, n, ct), CM_OK);
        cm_aead_destroy(&a);
        clen = n + CM_GCM_TAG_LEN;
    }
    if (o->damage_ct)
        ct[0] ^= 1;
    size_t m = 0;
    if (!o->no_header) {
        msg[0] = (uint8_t)(hlen >> 24);
        msg[1] = (uint8_t)(hlen >> 16);
        msg[2] = (uint8_t)(hlen >> 8);
        msg[3] = (uint8_t)hlen;
        memcpy(msg + 4, hdr, hlen);
        m = 4 + hlen;
    }
    memcpy(msg + m, ct, clen);
    m += clen;
    size_t sl = sign_with(o->signer ? o->signer : K.gate, CMD_DOMAIN,
                          o->no_prefix ? 0 : sizeof CMD_DOMAIN - (o->short_prefix ? 1 : 0), msg,
                          m, sig);
    if (o->change_after_sign)
        ct[clen - 1] ^= 1;
    if (o->sig_flip)
        sig[sl - 1] ^= 1;
    if (o->sig_cut)
        sl--;
    if (o->sig_extra)
        sig[sl++] = 0;
    Suido__SignedCommand sc = SUIDO__SIGNED_COMMAND__INIT;
    sc.header.data = hdr;
    sc.header.len = hlen;
    sc.command.data = ct;
    sc.command.len = o->no_cmd ? 0 : clen;
    sc.signature.data = sig;
    sc.signature.len = o->no_sig ? 0 : sl;
    assert_true(suido__signed_command__get_packed_size(&sc) <= BIG);
    return suido__signed_command__pack(&sc, out);
}

/* A valid command for GW's pump1, issued a second ago, valid for a minute. Strings are static. */
static Suido__Command cmd_of(const char *id, uint64_t issued)
{
    Suido__Command c = SUIDO__COMMAND__INIT;
    c.command_id = (char *)id;
    c.gateway_id = GW;
    c.channel = "pump1";
    c.value = 1.0;
    c.unit = "1";
    c.issued_ms = issued;
    c.expires_ms = issued + 60000;
    c.requested_by = "op-1";
    return c;
}

/* c sealed and signed as o says. */
static size_t sealed(const sealing *o, const Suido__Command *c, uint8_t *out)
{
    static uint8_t cmd[BIG];
    size_t n = suido__command__pack(c, cmd);
    return seal_bytes(o, c->command_id, cmd, n, out);
}

/* c sealed by the gate, signed with k: a payload as the gate publishes it when k is its key. */
static size_t signed_by(EVP_PKEY *k, const Suido__Command *c, uint8_t *out)
{
    sealing o = {.signer = k};
    return sealed(&o, c, out);
}

static size_t gate(const Suido__Command *c, uint8_t *out) { return signed_by(K.gate, c, out); }

/* Decision for a payload at a pumping station. */
static cmd_reason check_at(cmd_state *st, site_kind kind, uint64_t now, const uint8_t *p,
                           size_t n, cmd_decision *d)
{
    const cmd_actuator *act;
    size_t na = site_actuators(kind, &act);
    return cmd_check(st, K.pub, &K.ck, GW, now, act, na, p, n, d);
}

static cmd_reason check(cmd_state *st, const uint8_t *p, size_t n)
{
    cmd_decision d;
    return check_at(st, SIG_PUMPING, NOW_MS, p, n, &d);
}

/* The decision on command c (signed by the gate) at a site of kind, now = NOW_MS. */
static cmd_reason decide(cmd_state *st, site_kind kind, const Suido__Command *c)
{
    uint8_t p[BUF];
    cmd_decision d;
    return check_at(st, kind, NOW_MS, p, gate(c, p), &d);
}

/* ------------------------------------------------------------------ tests */

static void test_reason_names(void **state)
{
    (void)state;
    static const char *const want[CMD__REASONS] = {
        "ok",       "malformed",        "bad_signature", "wrong_gateway", "expired",
        "replayed", "unknown_actuator", "wrong_unit",    "out_of_range", "plaintext_command",
        "decrypt",  "failed",
    };
    for (int i = 0; i < CMD__REASONS; i++)
        assert_string_equal(cmd_reason_name((cmd_reason)i), want[i]);
    assert_string_equal(cmd_reason_name(CMD__REASONS), "unknown");
}

static void test_accept(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    uint8_t p[BUF];
    Suido__Command c = cmd_of("gw-0001-1699999999000-a1", NOW_MS - 1000);
    size_t n = gate(&c, p);
    cmd_decision d;
    assert_int_equal(check_at(&st, SIG_PUMPING, NOW_MS, p, n, &d), CMD_OK);
    assert_int_equal(d.reason, CMD_OK);
    assert_int_equal(d.actuator, 0);
    assert_true(d.value == 1.0);
    assert_string_equal(d.command_id, "gw-0001-1699999999000-a1");
    assert_string_equal(d.channel, "pump1");
    assert_int_equal(st.n_seen, 1);
    assert_true(st.last_issued_ms == NOW_MS - 1000);

    /* each kind's actuators, at the edges of their ranges */
    c = cmd_of("b1", NOW_MS - 900);
    c.channel = "pump2";
    c.value = 0.0;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    c = cmd_of("b2", NOW_MS - 800);
    c.channel = "dosing";
    c.unit = "mg/L";
    c.value = 4.0;
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_OK);
    c = cmd_of("b3", NOW_MS - 700);
    c.channel = "inlet_valve";
    c.unit = "%";
    c.value = 100.0;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_OK);
    c = cmd_of("b4", NOW_MS - 600);
    c.channel = "inlet_valve";
    c.unit = "%";
    c.value = 0.0;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_OK);
    assert_int_equal(st.n_seen, 5);
}

/* Every malformed shape, including ones whose signature is valid (malformed is checked first),
 * and none of them touches the state. */
static void test_malformed(void **state)
{
    (void)state;
    cmd_state st, before;
    memset(&st, 0, sizeof st);
    Suido__Command ok = cmd_of("seed", NOW_MS - 5000);
    assert_int_equal(decide(&st, SIG_PUMPING, &ok), CMD_OK);
    before = st;
    uint8_t p[BUF], cmd[BUF];
    size_t n;

    assert_int_equal(check(&st, NULL, 0), CMD_MALFORMED);
    assert_int_equal(check(&st, (const uint8_t *)"", 0), CMD_MALFORMED);
    assert_int_equal(check(&st, (const uint8_t *)"\xff\xff\xff\xff", 4), CMD_MALFORMED);
    memset(p, 0x0a, sizeof p); /* field 1, length 10, ... : never a whole message */
    assert_int_equal(check(&st, p, 64), CMD_MALFORMED);

    /* over the size limit, even though it is a valid command plus padding */
    Suido__Command c = cmd_of("big", NOW_MS - 1000);
    c.requested_by = (char[CMD_MAX_PAYLOAD + 1]){0};
    memset(c.requested_by, 'x', CMD_MAX_PAYLOAD);
    n = gate(&c, p);
    assert_true(n > CMD_MAX_PAYLOAD);
    assert_int_equal(check(&st, p, n), CMD_MALFORMED);

    /* SignedCommand without a signature, or without a command */
    c = cmd_of("nosig", NOW_MS - 1000);
    assert_int_equal(check(&st, p, sealed(&(sealing){.no_sig = 1}, &c, p)), CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.no_cmd = 1}, &c, p)), CMD_MALFORMED);

    /* a header that cannot be right, validly signed: IV, wrapped key, key id, cipher */
    c = cmd_of("bad-header", NOW_MS - 1000);
    assert_int_equal(check(&st, p, sealed(&(sealing){.iv_len = 8}, &c, p)), CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.wrapped_len = 255}, &c, p)),
                     CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.key_id = ""}, &c, p)), CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.key_id = "0123456789abcdef0"}, &c, p)),
                     CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.cipher = 99}, &c, p)), CMD_MALFORMED);
    /* the header names another command than the one sealed */
    assert_int_equal(check(&st, p, sealed(&(sealing){.header_cid = "other"}, &c, p)),
                     CMD_MALFORMED);

    /* the sealed bytes are not a Command, yet validly sealed and signed */
    memset(cmd, 0xff, 40);
    assert_int_equal(check(&st, p, seal_bytes(&(sealing){0}, "junk", cmd, 40, p)),
                     CMD_MALFORMED);

    /* an unknown field in the Command (field 99, varint 1), validly sealed and signed */
    c = cmd_of("unknown-field", NOW_MS - 1000);
    n = suido__command__pack(&c, cmd);
    cmd[n++] = 0x98; /* tag (99 << 3 | 0) as a varint: 0x98 0x06 */
    cmd[n++] = 0x06;
    cmd[n++] = 1;
    assert_int_equal(check(&st, p, seal_bytes(&(sealing){0}, "unknown-field", cmd, n, p)),
                     CMD_MALFORMED);

    /* an unknown field in the SignedCommand */
    c = cmd_of("outer-unknown", NOW_MS - 1000);
    n = gate(&c, p);
    p[n++] = 7 << 3; /* field 7, varint */
    p[n++] = 1;
    assert_int_equal(check(&st, p, n), CMD_MALFORMED);

    /* missing or broken fields, each validly signed */
    c = cmd_of("", NOW_MS - 1000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("no-gw", NOW_MS - 1000);
    c.gateway_id = "";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("no-channel", NOW_MS - 1000);
    c.channel = "";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("no-unit", NOW_MS - 1000);
    c.unit = "";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("no-issued", NOW_MS - 1000);
    c.issued_ms = 0;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("no-expiry", NOW_MS - 1000);
    c.expires_ms = 0;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("expires-before-issued", NOW_MS - 1000);
    c.expires_ms = c.issued_ms - 1;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("with space", NOW_MS - 1000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("quote\"", NOW_MS - 1000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    c = cmd_of("newline", NOW_MS - 1000);
    c.channel = "pump1\n";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    char longid[CMD_ID_MAX + 2];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    c = cmd_of(longid, NOW_MS - 1000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    longid[CMD_ID_MAX] = '\0'; /* exactly at the limit: fine */
    c = cmd_of(longid, NOW_MS - 1000);
    assert_int_equal(memcmp(&st, &before, sizeof st), 0);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
}

static void test_bad_signature(void **state)
{
    (void)state;
    cmd_state st, before;
    memset(&st, 0, sizeof st);
    before = st;
    uint8_t p[BUF];
    Suido__Command c = cmd_of("sig-1", NOW_MS - 1000);

    /* another key */
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_BAD_SIGNATURE);
    /* the right key without the domain prefix, or with the prefix but no 0x00 */
    assert_int_equal(check(&st, p, sealed(&(sealing){.no_prefix = 1}, &c, p)),
                     CMD_BAD_SIGNATURE);
    assert_int_equal(check(&st, p, sealed(&(sealing){.short_prefix = 1}, &c, p)),
                     CMD_BAD_SIGNATURE);
    /* the signed command, then its ciphertext changed */
    assert_int_equal(check(&st, p, sealed(&(sealing){.change_after_sign = 1}, &c, p)),
                     CMD_BAD_SIGNATURE);
    /* a signature with a flipped bit, one cut short, one with a trailing byte (not strict DER) */
    assert_int_equal(check(&st, p, sealed(&(sealing){.sig_flip = 1}, &c, p)), CMD_BAD_SIGNATURE);
    assert_int_equal(check(&st, p, sealed(&(sealing){.sig_cut = 1}, &c, p)), CMD_BAD_SIGNATURE);
    assert_int_equal(check(&st, p, sealed(&(sealing){.sig_extra = 1}, &c, p)),
                     CMD_BAD_SIGNATURE);
    /* no key at all */
    const cmd_actuator *act;
    size_t na = site_actuators(SIG_PUMPING, &act);
    cmd_decision d;
    size_t good = gate(&c, p);
    assert_int_equal(cmd_check(&st, NULL, &K.ck, GW, NOW_MS, act, na, p, good, &d),
                     CMD_BAD_SIGNATURE);
    assert_int_equal(memcmp(&st, &before, sizeof st), 0);
    /* and the intact one is fine */
    assert_int_equal(check(&st, p, good), CMD_OK);
}

/* A command in clear is refused whoever signed it; one whose session key does not unwrap with
 * this gateway's key, or whose ciphertext does not open, is refused as decrypt, naming the
 * command (from the signed header) so that the gate learns of it. Neither changes the state. */
static void test_plaintext_and_decrypt(void **state)
{
    (void)state;
    cmd_state st, before;
    memset(&st, 0, sizeof st);
    before = st;
    uint8_t p[BUF], cmd[BUF], sig[CM_SIG_MAX];
    cmd_decision d;
    Suido__Command c = cmd_of("clear-1", NOW_MS - 1000);
    /* the old form: the Command in clear, signed by the gate over the v1 domain */
    size_t n = suido__command__pack(&c, cmd);
    size_t sl = sign_with(K.gate, "suido-cmd-v1", 13, cmd, n, sig);
    Suido__SignedCommand sc = SUIDO__SIGNED_COMMAND__INIT;
    sc.command.data = cmd;
    sc.command.len = n;
    sc.signature.data = sig;
    sc.signature.len = sl;
    n = suido__signed_command__pack(&sc, p);
    assert_int_equal(check_at(&st, SIG_PUMPING, NOW_MS, p, n, &d), CMD_PLAINTEXT);
    assert_string_equal(d.command_id, "clear-1");
    assert_string_equal(d.channel, "pump1");
    assert_string_equal(cmd_reason_name(d.reason), "plaintext_command");
    assert_int_equal(check(&st, p, sealed(&(sealing){.no_header = 1}, &c, p)), CMD_PLAINTEXT);
    /* a header saying CIPHER_NONE, validly signed, or signed by anyone */
    assert_int_equal(check(&st, p, sealed(&(sealing){.plaintext = 1}, &c, p)), CMD_PLAINTEXT);
    assert_int_equal(check(&st, p, sealed(&(sealing){.plaintext = 1, .signer = K.other}, &c, p)),
                     CMD_PLAINTEXT);

    /* a session key wrapped to another gateway's key */
    c = cmd_of("undecryptable", NOW_MS - 1000);
    n = sealed(&(sealing){.to_other = 1, .key_id = "fedcba9876543210"}, &c, p);
    assert_int_equal(check_at(&st, SIG_PUMPING, NOW_MS, p, n, &d), CMD_DECRYPT);
    assert_string_equal(d.command_id, "undecryptable");
    assert_string_equal(cmd_reason_name(d.reason), "decrypt");
    /* damaged before it was signed: only GCM notices */
    assert_int_equal(check(&st, p, sealed(&(sealing){.damage_ct = 1}, &c, p)), CMD_DECRYPT);
    /* a 32-byte key announced as AES-128 */
    assert_int_equal(check(&st, p,
                           sealed(&(sealing){.cipher = SUIDO__CIPHER__CIPHER_AES_128_GCM}, &c, p)),
                     CMD_DECRYPT);
    /* a gateway without a command key opens nothing */
    cmd_keys none = {0};
    const cmd_actuator *act;
    size_t na = site_actuators(SIG_PUMPING, &act);
    n = gate(&c, p);
    assert_int_equal(cmd_check(&st, K.pub, &none, GW, NOW_MS, act, na, p, n, &d), CMD_DECRYPT);
    assert_int_equal(cmd_check(&st, K.pub, NULL, GW, NOW_MS, act, na, p, n, &d), CMD_DECRYPT);
    assert_int_equal(memcmp(&st, &before, sizeof st), 0);
    /* the same command, decryptable, is accepted */
    assert_int_equal(check(&st, p, n), CMD_OK);
}

/* The session key is unwrapped once and then taken from the cache; another key is unwrapped
 * (once) when the gate's key id or wrapped bytes change. What crosses is ciphertext. */
static void test_session_key_unwrapped_once(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    cmd_keys ck = {.unwrap = K.unwrap};
    const cmd_actuator *act;
    size_t na = site_actuators(SIG_PUMPING, &act);
    uint8_t p[BUF];
    cmd_decision d;
    char id[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "once-%d", i);
        Suido__Command c = cmd_of(id, NOW_MS - 10000 + (uint64_t)i);
        size_t n = gate(&c, p);
        assert_int_equal(cmd_check(&st, K.pub, &ck, GW, NOW_MS, act, na, p, n, &d), CMD_OK);
        /* neither the actuator nor the requester appears in clear */
        assert_null(memmem(p, n, "pump1", 5));
        assert_null(memmem(p, n, "op-1", 4));
    }
    assert_int_equal(ck.unwraps, 1);
    /* an undecryptable key under the cached id does not replace the good one */
    Suido__Command c = cmd_of("once-x", NOW_MS - 1000);
    size_t n = sealed(&(sealing){.to_other = 1}, &c, p);
    assert_int_equal(cmd_check(&st, K.pub, &ck, GW, NOW_MS, act, na, p, n, &d), CMD_DECRYPT);
    assert_int_equal(ck.unwraps, 2);
    c = cmd_of("once-y", NOW_MS - 900);
    n = gate(&c, p);
    assert_int_equal(cmd_check(&st, K.pub, &ck, GW, NOW_MS, act, na, p, n, &d), CMD_OK);
    assert_int_equal(ck.unwraps, 2);
    /* no RSA work for a command the gate did not sign */
    c = cmd_of("once-z", NOW_MS - 800);
    n = sealed(&(sealing){.signer = K.other, .key_id = "aaaaaaaaaaaaaaaa"}, &c, p);
    assert_int_equal(cmd_check(&st, K.pub, &ck, GW, NOW_MS, act, na, p, n, &d),
                     CMD_BAD_SIGNATURE);
    assert_int_equal(ck.unwraps, 2);
    cmd_keys_clear(&ck);
}

static void test_wrong_gateway(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    Suido__Command c = cmd_of("gw-1", NOW_MS - 1000);
    c.gateway_id = "gw-0002";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_GATEWAY);
    c.gateway_id = "gw-00011";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_GATEWAY);
    assert_int_equal(st.n_seen, 0);
}

static void test_expired(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    uint8_t p[BUF];
    cmd_decision d;
    Suido__Command c = cmd_of("exp-1", NOW_MS - 60000);
    c.expires_ms = NOW_MS - 1;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_EXPIRED);
    /* issued too far in the future: more than 300 s of clock skew */
    c = cmd_of("exp-2", NOW_MS + CMD_MAX_SKEW_MS + 1);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_EXPIRED);
    assert_int_equal(st.n_seen, 0);
    /* the edges are still valid: exactly at expiry, exactly 300 s ahead */
    c = cmd_of("exp-3", NOW_MS - 60000);
    c.expires_ms = NOW_MS;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    c = cmd_of("exp-4", NOW_MS + CMD_MAX_SKEW_MS);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    /* a command that was valid is refused once its time has passed */
    c = cmd_of("exp-5", NOW_MS + CMD_MAX_SKEW_MS + 10);
    size_t n = gate(&c, p);
    assert_int_equal(check_at(&st, SIG_PUMPING, c.expires_ms + 1, p, n, &d), CMD_EXPIRED);
}

static void test_replayed(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    uint8_t p[BUF];
    Suido__Command c = cmd_of("rp-1", NOW_MS - 10000);
    size_t n = gate(&c, p);
    assert_int_equal(check(&st, p, n), CMD_OK);
    /* the same bytes again */
    assert_int_equal(check(&st, p, n), CMD_REPLAYED);
    /* the same id with a later issue time (caught by the id) */
    c = cmd_of("rp-1", NOW_MS - 5000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    /* a fresh id not issued after the last accepted command (caught by issued_ms) */
    c = cmd_of("rp-2", NOW_MS - 10000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    c = cmd_of("rp-3", NOW_MS - 20000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    /* fresh id, later: fine; then the earlier one is refused by issued_ms */
    c = cmd_of("rp-4", NOW_MS - 9999);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    c = cmd_of("rp-2", NOW_MS - 9999);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    assert_int_equal(st.n_seen, 2);
}

static void test_unknown_actuator(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    Suido__Command c = cmd_of("ua-1", NOW_MS - 1000);
    c.channel = "pump3";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    c.channel = "Pump1";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    /* another kind's actuator, or a reported channel that is not an actuator */
    c.channel = "dosing";
    c.unit = "mg/L";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    c.channel = "pump1";
    c.unit = "1";
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_UNKNOWN_ACTUATOR);
    c.channel = "flow";
    c.unit = "L/s";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    c.channel = "inlet_valve";
    c.unit = "%";
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_UNKNOWN_ACTUATOR);
    assert_int_equal(st.n_seen, 0);
}

static void test_wrong_unit(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    Suido__Command c = cmd_of("wu-1", NOW_MS - 1000);
    c.unit = "%";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_UNIT);
    c.channel = "dosing";
    c.unit = "mg/l";
    c.value = 1.0;
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_WRONG_UNIT);
    c.unit = "L/h";
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_WRONG_UNIT);
    c.channel = "inlet_valve";
    c.unit = "1";
    c.value = 0.5;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_WRONG_UNIT);
    assert_int_equal(st.n_seen, 0);
}

static void test_out_of_range(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    Suido__Command c = cmd_of("or-1", NOW_MS - 1000);
    const double bad_pump[] = {NAN, INFINITY, -INFINITY, -0.001, 1.001, 1e300};
    for (size_t i = 0; i < sizeof bad_pump / sizeof bad_pump[0]; i++) {
        c.value = bad_pump[i];
        assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OUT_OF_RANGE);
    }
    c.channel = "dosing";
    c.unit = "mg/L";
    c.value = 4.001;
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_OUT_OF_RANGE);
    c.value = -0.1;
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_OUT_OF_RANGE);
    c.value = NAN;
    assert_int_equal(decide(&st, SIG_TREATMENT, &c), CMD_OUT_OF_RANGE);
    c.channel = "inlet_valve";
    c.unit = "%";
    c.value = 100.5;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_OUT_OF_RANGE);
    c.value = -1.0;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_OUT_OF_RANGE);
    assert_int_equal(st.n_seen, 0);
    /* the refused id was not remembered: the same id with a safe value is accepted */
    c.value = 50.0;
    assert_int_equal(decide(&st, SIG_RESERVOIR, &c), CMD_OK);
}

/* When a command breaks several rules, the first check in the documented order decides. */
static void test_order(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    uint8_t p[BUF], p_old[BUF];
    Suido__Command c = cmd_of("ord-0", NOW_MS - 30000);
    size_t n_old = gate(&c, p_old);
    assert_int_equal(check(&st, p_old, n_old), CMD_OK);

    /* malformed (the header) before plaintext_command before bad_signature before decrypt
     * before malformed (the opened command): what is in clear is checked first, nothing is
     * opened that the gate did not sign */
    c = cmd_of("ord-1", NOW_MS - 1000);
    c.unit = "";
    assert_int_equal(check(&st, p, sealed(&(sealing){.iv_len = 8, .signer = K.other}, &c, p)),
                     CMD_MALFORMED);
    assert_int_equal(check(&st, p, sealed(&(sealing){.plaintext = 1, .signer = K.other}, &c, p)),
                     CMD_PLAINTEXT);
    assert_int_equal(check(&st, p, sealed(&(sealing){.to_other = 1, .signer = K.other}, &c, p)),
                     CMD_BAD_SIGNATURE);
    assert_int_equal(check(&st, p, sealed(&(sealing){.to_other = 1, .key_id = "1111111111111111"},
                                          &c, p)),
                     CMD_DECRYPT);
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_BAD_SIGNATURE);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_MALFORMED);
    /* bad_signature before wrong_gateway */
    c = cmd_of("ord-2", NOW_MS - 1000);
    c.gateway_id = "gw-0002";
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_BAD_SIGNATURE);
    /* wrong_gateway before expired */
    c.expires_ms = NOW_MS - 1;
    c.issued_ms = NOW_MS - 2;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_GATEWAY);
    /* expired before replayed: the accepted command again, after it expired */
    cmd_decision d;
    assert_int_equal(check_at(&st, SIG_PUMPING, NOW_MS + 60000, p_old, n_old, &d), CMD_EXPIRED);
    /* replayed before unknown_actuator */
    c = cmd_of("ord-3", NOW_MS - 30000);
    c.channel = "pump9";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    /* unknown_actuator before wrong_unit and out_of_range */
    c = cmd_of("ord-4", NOW_MS - 1000);
    c.channel = "valve";
    c.unit = "x";
    c.value = NAN;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    /* wrong_unit before out_of_range */
    c.channel = "pump2";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_UNIT);
    c.unit = "1";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OUT_OF_RANGE);
    c.value = 0.0;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
}

/* A refused command leaves the state exactly as it was, whatever the reason. */
static void test_refused_changes_nothing(void **state)
{
    (void)state;
    cmd_state st, before;
    memset(&st, 0, sizeof st);
    Suido__Command c = cmd_of("rcn-0", NOW_MS - 30000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    before = st;
    uint8_t p[BUF];
    cmd_decision d;
    assert_int_equal(check(&st, (const uint8_t *)"x", 1), CMD_MALFORMED);
    c = cmd_of("rcn-1", NOW_MS - 1000);
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_BAD_SIGNATURE);
    c.gateway_id = "gw-9";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_GATEWAY);
    c = cmd_of("rcn-1", NOW_MS - 1000);
    assert_int_equal(check_at(&st, SIG_PUMPING, NOW_MS + 120000, p, gate(&c, p), &d),
                     CMD_EXPIRED);
    c = cmd_of("rcn-0", NOW_MS - 1000);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    c = cmd_of("rcn-1", NOW_MS - 1000);
    c.channel = "pump7";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_UNKNOWN_ACTUATOR);
    c.channel = "pump1";
    c.unit = "kW";
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_WRONG_UNIT);
    c.unit = "1";
    c.value = 2.0;
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OUT_OF_RANGE);
    assert_int_equal(memcmp(&st, &before, sizeof st), 0);
}

/* The seen-id memory keeps the last CMD_SEEN_MAX accepted ids; older ones are forgotten, and
 * the exact replay of an old command is still refused by its issue time. */
static void test_bounded_memory(void **state)
{
    (void)state;
    cmd_state st;
    memset(&st, 0, sizeof st);
    enum { N = CMD_SEEN_MAX + 44 };
    static uint8_t first[BUF];
    size_t n_first = 0;
    char id[32];
    uint64_t t = NOW_MS - 10000;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "bm-%d", i);
        Suido__Command c = cmd_of(id, t + (uint64_t)i);
        uint8_t p[BUF];
        size_t n = gate(&c, p);
        if (i == 10) {
            memcpy(first, p, n);
            n_first = n;
        }
        assert_int_equal(check(&st, p, n), CMD_OK);
        assert_true(st.n_seen <= CMD_SEEN_MAX);
    }
    assert_int_equal(st.n_seen, CMD_SEEN_MAX);
    assert_int_equal(sizeof st.seen, CMD_SEEN_MAX * CMD_ID_HASH); /* fixed size, no heap */
    /* the exact bytes of an old, forgotten command: refused by issued_ms */
    assert_int_equal(check(&st, first, n_first), CMD_REPLAYED);
    /* a recent id is still remembered, even with a later issue time */
    snprintf(id, sizeof id, "bm-%d", N - 1);
    Suido__Command c = cmd_of(id, t + N + 1);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    snprintf(id, sizeof id, "bm-%d", N - CMD_SEEN_MAX);
    c = cmd_of(id, t + N + 1);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_REPLAYED);
    /* one id older than the window is forgotten: with a fresh issue time it is accepted (the
     * gate never reuses ids; the issue time is what guards against replays of old commands) */
    snprintf(id, sizeof id, "bm-%d", N - CMD_SEEN_MAX - 1);
    c = cmd_of(id, t + N + 1);
    assert_int_equal(decide(&st, SIG_PUMPING, &c), CMD_OK);
    assert_int_equal(st.n_seen, CMD_SEEN_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_accept),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_plaintext_and_decrypt),
        cmocka_unit_test(test_session_key_unwrapped_once),
        cmocka_unit_test(test_wrong_gateway),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_replayed),
        cmocka_unit_test(test_unknown_actuator),
        cmocka_unit_test(test_wrong_unit),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_refused_changes_nothing),
        cmocka_unit_test(test_bounded_memory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
