/* Wycheproof conformance of cm_crypto: runs the C2SP/wycheproof vectors of
 * tests/data/wycheproof (RSA-OAEP-2048 SHA-256, AES-GCM, ECDSA P-256 in DER and P1363 form)
 * through cm_crypto's public interface only. Every valid case must pass, every invalid case must
 * be refused with the module's single error code for that operation (CM_ERR_DECRYPT,
 * CM_ERR_SIGNATURE), and every case that is not run is listed with the reason. A mismatch names
 * the file and tcId; all mismatches of a file are printed before its test fails.
 *
 * Policies:
 *  - RSA-OAEP: a group whose sha/mgfSha is not SHA-256/SHA-256 is a negative set (cm_rsa_unwrap
 *    is fixed to SHA-256 with MGF1-SHA-256): each of its ciphertexts, valid or not for its own
 *    parameters, must be refused. "acceptable" cases (none in the current files) may decrypt to
 *    exactly msg or be refused with CM_ERR_DECRYPT.
 *  - AES-GCM: only 128-bit tags (groups with other tag sizes are skipped); a valid case whose
 *    IV length cm_aead_open_tagged refuses by design (outside 1..256 bytes) is skipped, after
 *    checking that it really is refused; invalid cases are run whatever their IV length. With
 *    96-bit IVs cm_aead_seal must reproduce ct||tag and cm_aead_open (the production form) must
 *    agree with cm_aead_open_tagged. After a refusal the output buffer must hold no plaintext.
 *  - ECDSA: the verifier is strict DER, so "acceptable" cases (BER and the like) must be
 *    refused; they and the BER-flagged cases are counted and listed. P1363 signatures are
 *    converted to DER here with ECDSA_SIG; one that is not exactly 64 bytes is refused by this
 *    test without calling the verifier; r or s zero or >= n are passed on and must be refused.
 *
 * Data directory: $SUIDO_WYCHEPROOF, else tests/data/wycheproof (tests run from the repository
 * root; the vectors and their licence are kept there). A missing directory or file fails the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>

#include "cm_crypto.h"

#define GCM_IV_MAX 256 /* cm_aead_open_tagged refuses longer IVs (and empty ones) */

/* ------------------------------------------------------------------ bookkeeping */

typedef struct tally {
    const char *file;
    int expected;         /* numberOfTests of the file */
    int run, valid_ok, invalid_rejected, acceptable, skipped, failures;
    int extra;            /* file-specific count, described by extra_what */
    const char *extra_what;
    char extra_ids[1024]; /* tcIds of the extra cases */
    int seal_checked, open_checked; /* AES-GCM only */
    int out_of_range;               /* P1363 only: r or s zero or >= n, sent to the verifier */
} tally;

#define LOG_MAX 128
static char skip_log[LOG_MAX][200];
static int skip_n, skip_dropped;
static char data_path[512];

static void add_id(char *list, size_t cap, int tcid)
{
    size_t n = strlen(list);
    if (n + 12 < cap)
        snprintf(list + n, cap - n, "%s%d", n ? " " : "", tcid);
    else if (n + 4 < cap && strcmp(list + n - 3, "...") != 0)
        snprintf(list + n, cap - n, "...");
}

__attribute__((format(printf, 3, 4))) static void mismatch(tally *t, int tcid,
                                                           const char *fmt, ...)
{
    va_list ap;
    char msg[256];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    print_error("FAIL %s tcId %d: %s\n", t->file, tcid, msg);
    t->failures++;
}

__attribute__((format(printf, 3, 4))) static void skip_case(tally *t, int tcid,
                                                            const char *fmt, ...)
{
    t->skipped++;
    if (skip_n == LOG_MAX) {
        skip_dropped++;
        return;
    }
    va_list ap;
    char why[160];
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(skip_log[skip_n++], sizeof skip_log[0], "%s tcId %d: %s", t->file, tcid, why);
}

/* ------------------------------------------------------------------ JSON and hex helpers */

typedef struct bytes {
    uint8_t *p;
    size_t n;
} bytes;

static void bytes_free(bytes *b)
{
    free(b->p);
    b->p = NULL;
    b->n = 0;
}

static int hex_nibble(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes hex into a fresh buffer of at least one byte (so an empty value still has a valid
 * pointer). Returns 0 on odd length, a non-hex character or no memory. */
static int hex_decode(const char *hex, bytes *out)
{
    size_t len = strlen(hex);
    out->p = NULL;
    out->n = 0;
    if (len % 2)
        return 0;
    uint8_t *p = malloc(len / 2 + 1);
    if (!p)
        return 0;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(p);
            return 0;
        }
        p[i] = (uint8_t)(hi << 4 | lo);
    }
    out->p = p;
    out->n = len / 2;
    return 1;
}

/* obj[key] as decoded hex; 0 if missing, not a string or not hex. */
static int json_hex(const json_t *obj, const char *key, bytes *out)
{
    const char *s = json_string_value(json_object_get(obj, key));
    out->p = NULL;
    out->n = 0;
    return s && hex_decode(s, out);
}

static int json_int(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

static const char *json_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static int has_flag(const json_t *tc, const char *flag)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(tc, "flags"), i, f) {
        if (json_is_string(f) && strcmp(json_string_value(f), flag) == 0)
            return 1;
    }
    return 0;
}

typedef enum { R_VALID, R_INVALID, R_ACCEPTABLE, R_UNKNOWN } result;

static result case_result(const json_t *tc)
{
    const char *r = json_str(tc, "result");
    return strcmp(r, "valid") == 0        ? R_VALID
           : strcmp(r, "invalid") == 0    ? R_INVALID
           : strcmp(r, "acceptable") == 0 ? R_ACCEPTABLE
                                          : R_UNKNOWN;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The vector directory (see the header comment), or NULL if it does not exist. */
static const char *data_dir(void)
{
    const char *env = getenv("SUIDO_WYCHEPROOF");
    const char *dir = env && *env ? env : "tests/data/wycheproof";
    snprintf(data_path, sizeof data_path, "%s", dir);
    return is_dir(dir) ? dir : NULL;
}

/* A group's cases all count as failures (e.g. its key does not load). */
static void group_failed(tally *t, const json_t *g, const char *why)
{
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(g, "tests"), i, tc) {
        t->run++;
        mismatch(t, json_int(tc, "tcId"), "%s", why);
    }
}

/* ------------------------------------------------------------------ RSA-OAEP */

static void oaep_case(tally *t, cm_rsa *r, int negative, const char *params, const json_t *tc)
{
    int id = json_int(tc, "tcId");
    result res = case_result(tc);
    bytes ct, label, msg;
    int ok = json_hex(tc, "ct", &ct) & json_hex(tc, "label", &label) & json_hex(tc, "msg", &msg);
    t->run++;
    if (!ok || res == R_UNKNOWN) {
        mismatch(t, id, "malformed test case");
        goto out;
    }
    uint8_t out[CM_WRAPPED_LEN];
    size_t outlen = 12345;
    cm_err rc = cm_rsa_unwrap(r, ct.p, ct.n, label.n ? label.p : NULL, label.n, 0, out,
                              sizeof out, &outlen);
    int decrypted = rc == CM_OK && outlen == msg.n && memcmp(out, msg.p, msg.n) == 0;
    int refused = rc == CM_ERR_DECRYPT && outlen == 0;
    if (negative) {
        if (refused) {
            t->extra++;
            add_id(t->extra_ids, sizeof t->extra_ids, id);
        } else {
            mismatch(t, id, "%s ciphertext (%s) not refused: rc=%s outlen=%zu", params,
                     json_str(tc, "result"), cm_strerror(rc), outlen);
        }
    } else if (res == R_VALID) {
        if (decrypted)
            t->valid_ok++;
        else
            mismatch(t, id, "valid case: rc=%s outlen=%zu (want ok, msg of %zu bytes)",
                     cm_strerror(rc), outlen, msg.n);
    } else if (res == R_INVALID) {
        if (refused)
            t->invalid_rejected++;
        else
            mismatch(t, id, "invalid case: rc=%s outlen=%zu (want decrypt, 0)", cm_strerror(rc),
                     outlen);
    } else if (decrypted || refused) {
        t->acceptable++;
    } else {
        mismatch(t, id, "acceptable case: rc=%s outlen=%zu (want msg or decrypt)",
                 cm_strerror(rc), outlen);
    }
out:
    bytes_free(&ct);
    bytes_free(&label);
    bytes_free(&msg);
}

static void oaep_group(tally *t, const json_t *g)
{
    const char *sha = json_str(g, "sha"), *mgf_sha = json_str(g, "mgfSha");
    int negative = strcmp(sha, "SHA-256") != 0 || strcmp(mgf_sha, "SHA-256") != 0 ||
                   strcmp(json_str(g, "mgf"), "MGF1") != 0;
    char params[64];
    snprintf(params, sizeof params, "%s/%s-%s", sha, json_str(g, "mgf"), mgf_sha);
    bytes der;
    cm_rsa *r = NULL;
    if (!json_hex(g, "privateKeyPkcs8", &der) ||
        cm_rsa_from_private_der(der.p, der.n, &r) != CM_OK) {
        group_failed(t, g, "privateKeyPkcs8 does not load with cm_rsa_from_private_der");
    } else {
        size_t i;
        json_t *tc;
        json_array_foreach(json_object_get(g, "tests"), i, tc)
            oaep_case(t, r, negative, params, tc);
    }
    cm_rsa_destroy(&r);
    bytes_free(&der);
}

/* ------------------------------------------------------------------ AES-GCM */

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* With a 96-bit IV: cm_aead_seal must reproduce ct||tag exactly for a valid case (and must not
 * for an invalid one), and cm_aead_open must reach the same verdict as cm_aead_open_tagged. */
static void gcm_production_forms(tally *t, int id, cm_aead *a, const bytes *iv, const bytes *aad,
                                 const bytes *msg, const bytes *ct, const bytes *tag, int valid)
{
    size_t n = ct->n + tag->n;
    uint8_t *ctt = malloc(n + 1), *sealed = malloc(msg->n + CM_GCM_TAG_LEN + 1),
            *opened = calloc(ct->n + 1, 1);
    if (!ctt || !sealed || !opened) {
        mismatch(t, id, "out of memory");
        goto out;
    }
    memcpy(ctt, ct->p, ct->n);
    memcpy(ctt + ct->n, tag->p, tag->n);
    cm_err rc = cm_aead_seal(a, iv->p, aad->p, aad->n, msg->p, msg->n, sealed);
    int same = rc == CM_OK && msg->n + CM_GCM_TAG_LEN == n && memcmp(sealed, ctt, n) == 0;
    t->seal_checked++;
    if (rc != CM_OK)
        mismatch(t, id, "cm_aead_seal: rc=%s", cm_strerror(rc));
    else if (valid && !same)
        mismatch(t, id, "cm_aead_seal output differs from ct||tag");
    else if (!valid && same)
        mismatch(t, id, "cm_aead_seal reproduces the ct||tag of an invalid case");

    rc = cm_aead_open(a, iv->p, iv->n, aad->p, aad->n, ctt, n, opened);
    t->open_checked++;
    if (valid && !(rc == CM_OK && memcmp(opened, msg->p, msg->n) == 0))
        mismatch(t, id, "cm_aead_open (ct||tag) of a valid case: rc=%s", cm_strerror(rc));
    else if (!valid && !(rc == CM_ERR_DECRYPT && all_zero(opened, ct->n)))
        mismatch(t, id, "cm_aead_open (ct||tag) of an invalid case: rc=%s", cm_strerror(rc));
out:
    free(ctt);
    free(sealed);
    free(opened);
}

static void gcm_case(tally *t, const json_t *tc)
{
    int id = json_int(tc, "tcId");
    result res = case_result(tc);
    bytes key, iv, aad, msg, ct, tag;
    int ok = json_hex(tc, "key", &key) & json_hex(tc, "iv", &iv) & json_hex(tc, "aad", &aad) &
             json_hex(tc, "msg", &msg) & json_hex(tc, "ct", &ct) & json_hex(tc, "tag", &tag);
    cm_aead *a = NULL;
    uint8_t *out = NULL;
    if (!ok || res == R_UNKNOWN || ct.n != msg.n) {
        t->run++;
        mismatch(t, id, "malformed test case");
        goto out;
    }
    cm_err rc = cm_aead_new(key.p, key.n, &a);
    if (rc != CM_OK) {
        t->run++;
        mismatch(t, id, "cm_aead_new(%zu-byte key): rc=%s", key.n, cm_strerror(rc));
        goto out;
    }
    /* zeroed, so that after a refusal any non-zero byte is leaked plaintext */
    out = calloc(ct.n + 1, 1);
    if (!out) {
        t->run++;
        mismatch(t, id, "out of memory");
        goto out;
    }
    rc = cm_aead_open_tagged(a, iv.p, iv.n, aad.p, aad.n, ct.p, ct.n, tag.p, tag.n, out);
    int refused = rc == CM_ERR_DECRYPT && all_zero(out, ct.n);
    if (res != R_INVALID && (iv.n == 0 || iv.n > GCM_IV_MAX) && refused) {
        skip_case(t, id,
                  "%s case with a %zu-byte IV: cm_aead_open_tagged takes 1..%d bytes by "
                  "design (checked: refused with decrypt)",
                  json_str(tc, "result"), iv.n, GCM_IV_MAX);
        goto out;
    }
    t->run++;
    int opened = rc == CM_OK && memcmp(out, msg.p, msg.n) == 0;
    if (res == R_VALID) {
        if (opened)
            t->valid_ok++;
        else
            mismatch(t, id, "valid case (%zu-byte IV): rc=%s%s", iv.n, cm_strerror(rc),
                     rc == CM_OK ? " but plaintext differs" : "");
    } else if (res == R_INVALID) {
        if (refused) {
            t->invalid_rejected++;
            if (iv.n == 0) {
                t->extra++;
                add_id(t->extra_ids, sizeof t->extra_ids, id);
            }
        } else {
            mismatch(t, id, "invalid case (%zu-byte IV): rc=%s%s", iv.n, cm_strerror(rc),
                     rc == CM_ERR_DECRYPT ? " but plaintext left in out" : "");
        }
    } else if (opened || refused) {
        t->acceptable++;
    } else {
        mismatch(t, id, "acceptable case: rc=%s", cm_strerror(rc));
    }
    if (iv.n == CM_GCM_IV_LEN && res != R_ACCEPTABLE)
        gcm_production_forms(t, id, a, &iv, &aad, &msg, &ct, &tag, res == R_VALID);
out:
    free(out);
    cm_aead_destroy(&a);
    bytes_free(&key);
    bytes_free(&iv);
    bytes_free(&aad);
    bytes_free(&msg);
    bytes_free(&ct);
    bytes_free(&tag);
}

static void gcm_group(tally *t, const json_t *g)
{
    int key_bits = json_int(g, "keySize"), iv_bits = json_int(g, "ivSize"),
        tag_bits = json_int(g, "tagSize");
    const char *why = tag_bits != 128 ? "tag size is not 128 bits (cm_aead_open_tagged takes "
                                        "16-byte tags only)"
                      : key_bits != 128 && key_bits != 192 && key_bits != 256
                          ? "key size is not 128/192/256 bits"
                          : NULL;
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(g, "tests"), i, tc) {
        if (why)
            skip_case(t, json_int(tc, "tcId"), "group keySize %d ivSize %d tagSize %d: %s",
                      key_bits, iv_bits, tag_bits, why);
        else
            gcm_case(t, tc);
    }
}

/* ------------------------------------------------------------------ ECDSA P-256 */

/* r||s (exactly 64 bytes) to a DER ECDSA-Sig-Value. Returns 0 for any other length. */
static int p1363_to_der(const bytes *sig, bytes *der)
{
    der->p = NULL;
    der->n = 0;
    if (sig->n != 64)
        return 0;
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig->p, 32, NULL), *sv = BN_bin2bn(sig->p + 32, 32, NULL);
    if (!s || !r || !sv || ECDSA_SIG_set0(s, r, sv) != 1) {
        BN_free(r);
        BN_free(sv);
        ECDSA_SIG_free(s);
        return 0;
    }
    unsigned char *enc = NULL;
    int len = i2d_ECDSA_SIG(s, &enc); /* s owns r and sv now */
    ECDSA_SIG_free(s);
    if (len <= 0)
        return 0;
    der->p = malloc((size_t)len);
    if (der->p) {
        memcpy(der->p, enc, (size_t)len);
        der->n = (size_t)len;
    }
    OPENSSL_free(enc);
    return der->p != NULL;
}

/* 1 if r or s of a 64-byte r||s is zero or not below the P-256 group order n. */
static int p1363_out_of_range(const bytes *sig)
{
    static const char N[] = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
    BIGNUM *n = NULL, *r = BN_bin2bn(sig->p, 32, NULL), *s = BN_bin2bn(sig->p + 32, 32, NULL);
    int out = BN_hex2bn(&n, N) && r && s &&
              (BN_is_zero(r) || BN_is_zero(s) || BN_cmp(r, n) >= 0 || BN_cmp(s, n) >= 0);
    BN_free(n);
    BN_free(r);
    BN_free(s);
    return out;
}

static void ecdsa_case(tally *t, const cm_pubkey *k, int p1363, const json_t *tc)
{
    int id = json_int(tc, "tcId");
    result res = case_result(tc);
    bytes msg, sig, der = {NULL, 0};
    int ok = json_hex(tc, "msg", &msg) & json_hex(tc, "sig", &sig);
    t->run++;
    if (!ok || res == R_UNKNOWN) {
        mismatch(t, id, "malformed test case");
        goto out;
    }
    if (p1363 && sig.n != 64) {
        /* not a P-256 P1363 signature: refused here, the verifier never sees it */
        if (res == R_VALID) {
            mismatch(t, id, "valid case with a %zu-byte P1363 signature", sig.n);
        } else {
            t->invalid_rejected += res == R_INVALID;
            t->acceptable += res == R_ACCEPTABLE;
            t->extra++;
            add_id(t->extra_ids, sizeof t->extra_ids, id);
        }
        goto out;
    }
    if (p1363 && !p1363_to_der(&sig, &der)) {
        mismatch(t, id, "could not convert the P1363 signature to DER");
        goto out;
    }
    if (p1363 && p1363_out_of_range(&sig))
        t->out_of_range++; /* must be refused by the verifier itself */
    const bytes *s = p1363 ? &der : &sig;
    cm_err rc = cm_pubkey_verify_raw(k, msg.p, msg.n, s->p, s->n);
    if (!p1363 && has_flag(tc, "BerEncodedSignature")) {
        t->extra++;
        add_id(t->extra_ids, sizeof t->extra_ids, id);
    }
    if (res == R_VALID) {
        if (rc == CM_OK)
            t->valid_ok++;
        else
            mismatch(t, id, "valid signature: rc=%s (%s)", cm_strerror(rc),
                     json_str(tc, "comment"));
    } else if (rc == CM_ERR_SIGNATURE) {
        /* invalid, or acceptable: the strict-DER verifier refuses those too */
        t->invalid_rejected += res == R_INVALID;
        t->acceptable += res == R_ACCEPTABLE;
    } else {
        mismatch(t, id, "%s signature: rc=%s, want signature (%s)", json_str(tc, "result"),
                 cm_strerror(rc), json_str(tc, "comment"));
    }
out:
    bytes_free(&msg);
    bytes_free(&sig);
    bytes_free(&der);
}

static void ecdsa_group(tally *t, const json_t *g)
{
    int p1363 = strcmp(json_str(g, "type"), "EcdsaP1363Verify") == 0;
    bytes der;
    cm_pubkey *k = NULL;
    if (strcmp(json_str(g, "sha"), "SHA-256") != 0 ||
        strcmp(json_str(json_object_get(g, "publicKey"), "curve"), "secp256r1") != 0) {
        group_failed(t, g, "group is not P-256 with SHA-256");
        return;
    }
    if (!json_hex(g, "publicKeyDer", &der) || cm_pubkey_from_der(der.p, der.n, &k) != CM_OK) {
        group_failed(t, g, "publicKeyDer does not load with cm_pubkey_from_der");
    } else {
        size_t i;
        json_t *tc;
        json_array_foreach(json_object_get(g, "tests"), i, tc)
            ecdsa_case(t, k, p1363, tc);
    }
    cm_pubkey_destroy(&k);
    bytes_free(&der);
}

/* ------------------------------------------------------------------ the table */

typedef void (*group_fn)(tally *t, const json_t *group);

static struct vector_file {
    const char *file;
    group_fn run_group;
    tally t;
} FILES[] = {
    {"rsa_oaep_2048_sha256_mgf1sha256_test.json", oaep_group, {.extra_what = "not used"}},
    {"rsa_oaep_2048_sha256_mgf1sha1_test.json", oaep_group,
     {.extra_what = "refused (made with other OAEP parameters)"}},
    {"aes_gcm_test.json", gcm_group,
     {.extra_what = "of the invalid ones have a 0-byte IV (refused by the ivlen guard)"}},
    {"ecdsa_secp256r1_sha256_test.json", ecdsa_group,
     {.extra_what = "BER-encoded signatures refused (strict DER)"}},
    {"ecdsa_secp256r1_sha256_p1363_test.json", ecdsa_group,
     {.extra_what = "signatures not 64 bytes, refused before verification"}},
};
#define NFILES (sizeof FILES / sizeof FILES[0])

static void test_data_dir_exists(void **state)
{
    (void)state;
    if (!data_dir())
        fail_msg("Wycheproof directory %s not found (set SUIDO_WYCHEPROOF)", data_path);
}

/* Runs every group of one vector file through its algorithm's group function. */
static void test_vector_file(void **state)
{
    struct vector_file *vf = *state;
    tally *t = &vf->t;
    char path[1024];
    json_error_t jerr;
    t->file = vf->file;
    const char *dir = data_dir();
    if (!dir)
        fail_msg("Wycheproof directory %s not found", data_path);
    snprintf(path, sizeof path, "%s/%s", dir, vf->file);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
    t->expected = json_int(root, "numberOfTests");
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(root, "testGroups"), i, g)
        vf->run_group(t, g);
    json_decref(root);
    if (t->run + t->skipped != t->expected) {
        print_error("FAIL %s: numberOfTests %d but %d cases seen\n", t->file, t->expected,
                    t->run + t->skipped);
        t->failures++;
    }
    assert_int_equal(t->failures, 0);
}

static int print_summary(void **state)
{
    (void)state;
    printf("\nWycheproof summary (data: %s)\n", data_path);
    printf("%-42s %5s %5s %8s %8s %6s %7s %5s\n", "file", "cases", "run", "valid ok",
           "inv rej", "accept", "skipped", "FAIL");
    for (size_t i = 0; i < NFILES; i++) {
        const tally *t = &FILES[i].t;
        printf("%-42s %5d %5d %8d %8d %6d %7d %5d\n", FILES[i].file, t->expected, t->run,
               t->valid_ok, t->invalid_rejected, t->acceptable, t->skipped, t->failures);
        if (t->extra)
            printf("    %d %s: tcId %s\n", t->extra, t->extra_what, t->extra_ids);
        if (t->out_of_range)
            printf("    %d signatures with r or s zero or >= n went to the verifier\n",
                   t->out_of_range);
        if (t->seal_checked)
            printf("    96-bit IV: cm_aead_seal checked on %d cases, cm_aead_open on %d\n",
                   t->seal_checked, t->open_checked);
    }
    printf("Skipped cases (%d):\n", skip_n + skip_dropped);
    for (int i = 0; i < skip_n; i++)
        printf("    %s\n", skip_log[i]);
    if (skip_dropped)
        printf("    ... and %d more\n", skip_dropped);
    if (!skip_n)
        printf("    none\n");
    return 0;
}

int main(void)
{
    /* one cmocka test per vector file, named after it */
    struct CMUnitTest tests[NFILES + 1] = {cmocka_unit_test(test_data_dir_exists)};
    for (size_t i = 0; i < NFILES; i++)
        tests[i + 1] = (struct CMUnitTest){.name = FILES[i].file,
                                           .test_func = test_vector_file,
                                           .initial_state = &FILES[i]};
    return cmocka_run_group_tests_name("cm_crypto_wycheproof", tests, NULL, print_summary);
}
