/* commands_test: unit tests of the gateway's command validation (gateway-sim/commands.c) with a
 * real P-256 gate key generated here: acceptance of a valid command, every refusal reason, the
 * order of the checks, replay by id and by issued_ms, the bounded seen-id memory, and that a
 * refused command changes nothing. */
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
#define BUF 8192

typedef struct keys {
    EVP_PKEY *gate, *other; /* private keys: the gate's, and someone else's */
    cm_pubkey *pub;         /* the gate's public key as the gateway loads it */
} keys;

static keys K;

static int setup(void **state)
{
    (void)state;
    K.gate = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    K.other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!K.gate || !K.other)
        return -1;
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(K.gate, &der);
    if (n <= 0)
        return -1;
    cm_err e = cm_pubkey_from_der(der, (size_t)n, &K.pub);
    OPENSSL_free(der);
    return e == CM_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(K.gate);
    EVP_PKEY_free(K.other);
    cm_pubkey_destroy(&K.pub);
    return 0;
}

/* Test-only signer: ECDSA P-256/SHA-256 DER over prefix || msg, as the gate signs with
 * prefix = "suido-cmd-v1" || 0x00 (prefix_len 13); other prefixes make wrong signatures. */
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

/* Packs SignedCommand{cmd bytes, sig} into out. */
static size_t wrap(const uint8_t *cmd, size_t cmdlen, const uint8_t *sig, size_t siglen,
                   uint8_t *out)
{
    Suido__SignedCommand sc = SUIDO__SIGNED_COMMAND__INIT;
    sc.command.data = (uint8_t *)cmd;
    sc.command.len = cmdlen;
    sc.signature.data = (uint8_t *)sig;
    sc.signature.len = siglen;
    assert_true(suido__signed_command__get_packed_size(&sc) <= BUF);
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

/* Serialises c, signs it with k under the command domain and wraps it: a payload as the gate
 * publishes it. */
static size_t signed_by(EVP_PKEY *k, const Suido__Command *c, uint8_t *out)
{
    uint8_t cmd[BUF], sig[CM_SIG_MAX];
    size_t n = suido__command__pack(c, cmd);
    size_t sl = sign_with(k, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, n, sig);
    return wrap(cmd, n, sig, sl, out);
}

static size_t gate(const Suido__Command *c, uint8_t *out) { return signed_by(K.gate, c, out); }

/* Decision for a payload at a pumping station. */
static cmd_reason check_at(cmd_state *st, sig_kind kind, uint64_t now, const uint8_t *p,
                           size_t n, cmd_decision *d)
{
    const sig_actuator *act;
    size_t na = sig_actuators(kind, &act);
    return cmd_check(st, K.pub, GW, now, act, na, p, n, d);
}

static cmd_reason check(cmd_state *st, const uint8_t *p, size_t n)
{
    cmd_decision d;
    return check_at(st, SIG_PUMPING, NOW_MS, p, n, &d);
}

/* The decision on command c (signed by the gate) at a site of kind, now = NOW_MS. */
static cmd_reason decide(cmd_state *st, sig_kind kind, const Suido__Command *c)
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
        "replayed", "unknown_actuator", "wrong_unit",    "out_of_range",
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
    uint8_t p[BUF], cmd[BUF], sig[CM_SIG_MAX];
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
    n = suido__command__pack(&c, cmd);
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, 0, p)), CMD_MALFORMED);
    size_t sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, 0, sig);
    assert_int_equal(check(&st, p, wrap(cmd, 0, sig, sl, p)), CMD_MALFORMED);

    /* the command bytes are not a Command, yet validly signed */
    memset(cmd, 0xff, 40);
    sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, 40, sig);
    assert_int_equal(check(&st, p, wrap(cmd, 40, sig, sl, p)), CMD_MALFORMED);

    /* an unknown field in the Command (field 99, varint 1), validly signed */
    c = cmd_of("unknown-field", NOW_MS - 1000);
    n = suido__command__pack(&c, cmd);
    cmd[n++] = 0x98; /* tag (99 << 3 | 0) as a varint: 0x98 0x06 */
    cmd[n++] = 0x06;
    cmd[n++] = 1;
    sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, n, sig);
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, sl, p)), CMD_MALFORMED);

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
    uint8_t p[BUF], cmd[BUF], sig[CM_SIG_MAX];
    Suido__Command c = cmd_of("sig-1", NOW_MS - 1000);
    size_t n = suido__command__pack(&c, cmd), sl;

    /* another key */
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_BAD_SIGNATURE);
    /* the right key without the domain prefix, or with the prefix but no 0x00 */
    sl = sign_with(K.gate, NULL, 0, cmd, n, sig);
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, sl, p)), CMD_BAD_SIGNATURE);
    sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN - 1, cmd, n, sig);
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, sl, p)), CMD_BAD_SIGNATURE);
    /* the signed command, then its value changed (still a well-formed Command) */
    sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, n, sig);
    c.value = 0.0;
    size_t n2 = suido__command__pack(&c, cmd);
    assert_int_equal(check(&st, p, wrap(cmd, n2, sig, sl, p)), CMD_BAD_SIGNATURE);
    c.value = 1.0;
    n = suido__command__pack(&c, cmd);
    /* a signature with a flipped bit, one cut short, one with a trailing byte (not strict DER) */
    sl = sign_with(K.gate, CMD_DOMAIN, sizeof CMD_DOMAIN, cmd, n, sig);
    sig[sl - 1] ^= 1;
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, sl, p)), CMD_BAD_SIGNATURE);
    sig[sl - 1] ^= 1;
    assert_int_equal(check(&st, p, wrap(cmd, n, sig, sl - 1, p)), CMD_BAD_SIGNATURE);
    uint8_t longer[CM_SIG_MAX + 1];
    memcpy(longer, sig, sl);
    longer[sl] = 0;
    assert_int_equal(check(&st, p, wrap(cmd, n, longer, sl + 1, p)), CMD_BAD_SIGNATURE);
    /* no key at all */
    const sig_actuator *act;
    size_t na = sig_actuators(SIG_PUMPING, &act);
    cmd_decision d;
    size_t good = wrap(cmd, n, sig, sl, p);
    assert_int_equal(cmd_check(&st, NULL, GW, NOW_MS, act, na, p, good, &d), CMD_BAD_SIGNATURE);
    assert_int_equal(memcmp(&st, &before, sizeof st), 0);
    /* and the intact one is fine */
    assert_int_equal(check(&st, p, good), CMD_OK);
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

    /* malformed before bad_signature: a missing unit, signed by the wrong key */
    c = cmd_of("ord-1", NOW_MS - 1000);
    c.unit = "";
    assert_int_equal(check(&st, p, signed_by(K.other, &c, p)), CMD_MALFORMED);
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
