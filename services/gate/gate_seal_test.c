/* gate_seal_test: what the gate puts on the wire for a command, opened here as a gateway opens it
 * with keys made for the test: the header (cipher, IV, wrapped key, key id) and the ciphertext
 * are signed by the gate's key, the session key unwraps only with that gateway's RSA key, the
 * Command opens with the header as AAD, nothing of it is in clear; one session key per gateway
 * (wrapped once), a new one when the gateway's key changes; no key, no command. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gate_seal.h"

typedef struct keys {
    cm_signer *signer;       /* the gate's command key */
    cm_pubkey *verify;       /* its public half, as gateways hold it */
    cm_rsa *to1, *to2;       /* two gateways' RSA command keys (public, as the registry gives) */
    cm_rsa *priv1, *priv2;   /* and their private halves, as the gateways hold them */
} keys;

static keys K;
static char dir[] = "/tmp/suido-gate-seal-test-XXXXXX";

static int rsa_pair(cm_rsa **pub, cm_rsa **priv)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    unsigned char *der = NULL;
    int n = k ? i2d_PUBKEY(k, &der) : 0;
    int ok = n > 0 && cm_rsa_from_public_der(der, (size_t)n, pub) == CM_OK;
    OPENSSL_free(der);
    der = NULL;
    n = ok ? i2d_PrivateKey(k, &der) : 0;
    ok = ok && n > 0 && cm_rsa_from_private_der(der, (size_t)n, priv) == CM_OK;
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    return ok ? 0 : -1;
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    char path[128];
    snprintf(path, sizeof path, "%s/command.key", dir);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    FILE *f = fopen(path, "w");
    if (!k || !f)
        return -1;
    fchmod(fileno(f), 0600);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(k, &der);
    int ok = n > 0 && cm_pubkey_from_der(der, (size_t)n, &K.verify) == CM_OK &&
             cm_signer_load(path, &K.signer) == CM_OK;
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    unlink(path);
    rmdir(dir);
    if (!ok || rsa_pair(&K.to1, &K.priv1) || rsa_pair(&K.to2, &K.priv2))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cm_signer_destroy(&K.signer);
    cm_pubkey_destroy(&K.verify);
    cm_rsa_destroy(&K.to1);
    cm_rsa_destroy(&K.to2);
    cm_rsa_destroy(&K.priv1);
    cm_rsa_destroy(&K.priv2);
    return 0;
}

static Suido__Command command(const char *gw, const char *id)
{
    Suido__Command c = SUIDO__COMMAND__INIT;
    c.command_id = (char *)id;
    c.gateway_id = (char *)gw;
    c.channel = "dosing";
    c.value = 2.75;
    c.unit = "mg/L";
    c.issued_ms = 1700000000000ull;
    c.expires_ms = 1700000030000ull;
    c.requested_by = "operator-otto";
    return c;
}

/* A payload opened as the gateway whose private key is priv opens it: signature, header, unwrap,
 * GCM with the header as AAD. Returns the Command (caller frees) and the header's key id and
 * wrapped key; NULL when any step fails. */
static Suido__Command *open_as(cm_rsa *priv, const uint8_t *p, size_t n, char key_id[17],
                               uint8_t wrapped[CM_WRAPPED_LEN])
{
    Suido__Command *c = NULL;
    Suido__SignedCommand *sc = suido__signed_command__unpack(NULL, n, p);
    assert_non_null(sc);
    Suido__CommandHeader *h = suido__command_header__unpack(NULL, sc->header.len, sc->header.data);
    assert_non_null(h);
    assert_int_equal(cm_command_verify(K.verify, sc->header.data, sc->header.len,
                                       sc->command.data, sc->command.len, sc->signature.data,
                                       sc->signature.len),
                     CM_OK);
    assert_int_equal(h->version, 1);
    assert_int_equal(h->cipher, SUIDO__CIPHER__CIPHER_AES_256_GCM);
    assert_int_equal(h->iv.len, CM_GCM_IV_LEN);
    assert_int_equal(h->wrapped_key.len, CM_WRAPPED_LEN);
    assert_int_equal(strlen(h->key_id), 16);
    snprintf(key_id, 17, "%s", h->key_id);
    memcpy(wrapped, h->wrapped_key.data, CM_WRAPPED_LEN);
    uint8_t key[32], plain[CM_CMD_MAX];
    size_t kl = 0;
    cm_aead *a = NULL;
    if (cm_rsa_unwrap(priv, h->wrapped_key.data, h->wrapped_key.len, NULL, 0, 1, key, sizeof key,
                      &kl) == CM_OK &&
        kl == 32 && cm_aead_new(key, kl, &a) == CM_OK &&
        cm_aead_open(a, h->iv.data, h->iv.len, sc->header.data, sc->header.len, sc->command.data,
                     sc->command.len, plain) == CM_OK) {
        c = suido__command__unpack(NULL, sc->command.len - CM_GCM_TAG_LEN, plain);
        assert_non_null(c);
        assert_string_equal(h->command_id, c->command_id);
        assert_string_equal(h->gateway_id, c->gateway_id);
    }
    cm_aead_destroy(&a);
    suido__command_header__free_unpacked(h, NULL);
    suido__signed_command__free_unpacked(sc, NULL);
    return c;
}

static void test_a_command_is_sealed_to_its_gateway_and_signed(void **state)
{
    (void)state;
    gate_seal *s = gate_seal_new(K.signer);
    assert_non_null(s);
    uint8_t p[GATE_SEAL_MAX];
    size_t n = 0;
    Suido__Command c = command("gw-0001", "gw-0001-1700000000000-0000abcd");
    assert_int_equal(gate_seal_command(s, K.to1, &c, p, sizeof p, &n), CM_OK);
    /* nothing of the command's body crosses in clear */
    assert_null(memmem(p, n, "dosing", 6));
    assert_null(memmem(p, n, "mg/L", 4));
    assert_null(memmem(p, n, "operator-otto", 13));
    double v = 2.75;
    assert_null(memmem(p, n, &v, sizeof v));
    char kid[17];
    uint8_t w[CM_WRAPPED_LEN];
    Suido__Command *got = open_as(K.priv1, p, n, kid, w);
    assert_non_null(got);
    assert_string_equal(got->channel, "dosing");
    assert_true(got->value == 2.75);
    assert_string_equal(got->requested_by, "operator-otto");
    suido__command__free_unpacked(got, NULL);
    /* another gateway's key does not open it */
    assert_null(open_as(K.priv2, p, n, kid, w));
    gate_seal_destroy(&s);
    assert_null(s);
}

static void test_one_session_key_per_gateway(void **state)
{
    (void)state;
    gate_seal *s = gate_seal_new(K.signer);
    uint8_t p[GATE_SEAL_MAX], iv1[CM_GCM_IV_LEN];
    size_t n = 0;
    char kid1[17], kid[17];
    uint8_t w1[CM_WRAPPED_LEN], w[CM_WRAPPED_LEN];
    Suido__Command c = command("gw-0001", "a-1");
    assert_int_equal(gate_seal_command(s, K.to1, &c, p, sizeof p, &n), CM_OK);
    Suido__Command *got = open_as(K.priv1, p, n, kid1, w1);
    suido__command__free_unpacked(got, NULL);
    Suido__SignedCommand *sc = suido__signed_command__unpack(NULL, n, p);
    Suido__CommandHeader *h = suido__command_header__unpack(NULL, sc->header.len, sc->header.data);
    memcpy(iv1, h->iv.data, sizeof iv1);
    suido__command_header__free_unpacked(h, NULL);
    suido__signed_command__free_unpacked(sc, NULL);
    /* the next commands to the same gateway: the same key (id, wrapped bytes), a new IV */
    for (int i = 0; i < 3; i++) {
        c = command("gw-0001", "a-2");
        assert_int_equal(gate_seal_command(s, K.to1, &c, p, sizeof p, &n), CM_OK);
        got = open_as(K.priv1, p, n, kid, w);
        assert_non_null(got);
        suido__command__free_unpacked(got, NULL);
        assert_string_equal(kid, kid1);
        assert_memory_equal(w, w1, CM_WRAPPED_LEN);
        sc = suido__signed_command__unpack(NULL, n, p);
        h = suido__command_header__unpack(NULL, sc->header.len, sc->header.data);
        assert_memory_not_equal(h->iv.data, iv1, CM_GCM_IV_LEN);
        suido__command_header__free_unpacked(h, NULL);
        suido__signed_command__free_unpacked(sc, NULL);
    }
    assert_int_equal(gate_seal_wraps(s), 1);
    /* another gateway: its own key, wrapped to its own RSA key */
    c = command("gw-0002", "b-1");
    assert_int_equal(gate_seal_command(s, K.to2, &c, p, sizeof p, &n), CM_OK);
    got = open_as(K.priv2, p, n, kid, w);
    assert_non_null(got);
    suido__command__free_unpacked(got, NULL);
    assert_string_not_equal(kid, kid1);
    assert_int_equal(gate_seal_wraps(s), 2);
    /* gw-0001 with a new RSA key (provisioned again): a new session key for it */
    c = command("gw-0001", "a-3");
    assert_int_equal(gate_seal_command(s, K.to2, &c, p, sizeof p, &n), CM_OK);
    assert_null(open_as(K.priv1, p, n, kid, w));
    got = open_as(K.priv2, p, n, kid, w);
    assert_non_null(got);
    suido__command__free_unpacked(got, NULL);
    assert_string_not_equal(kid, kid1);
    assert_int_equal(gate_seal_wraps(s), 3);
    gate_seal_destroy(&s);
}

static void test_no_key_no_command(void **state)
{
    (void)state;
    gate_seal *s = gate_seal_new(K.signer);
    uint8_t p[GATE_SEAL_MAX];
    size_t n = 1;
    Suido__Command c = command("gw-0003", "c-1");
    assert_int_equal(gate_seal_command(s, NULL, &c, p, sizeof p, &n), CM_ERR_KEY);
    assert_int_equal(n, 0);
    assert_int_equal(gate_seal_wraps(s), 0);
    /* a command too big for a gateway to take, and a buffer too small */
    char big[CM_CMD_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    c.requested_by = big;
    assert_int_equal(gate_seal_command(s, K.to1, &c, p, sizeof p, &n), CM_ERR_TOO_BIG);
    c = command("gw-0003", "c-2");
    assert_int_equal(gate_seal_command(s, K.to1, &c, p, 100, &n), CM_ERR_TOO_BIG);
    gate_seal_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_command_is_sealed_to_its_gateway_and_signed),
        cmocka_unit_test(test_one_session_key_per_gateway),
        cmocka_unit_test(test_no_key_no_command),
    };
    return cmocka_run_group_tests_name("gate_seal", tests, setup, teardown);
}
