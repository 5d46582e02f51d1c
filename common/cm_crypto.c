/* cm_crypto: ECDSA P-256, AES-GCM and RSA-OAEP on OpenSSL 3 (EVP interfaces only). */
#include "cm_crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/bn.h>
#include <time.h>

#include "cm_log.h"

static const char SIGN_DOMAIN[] = "suido/v1/batch"; /* sizeof includes the NUL, on purpose */

cm_err cm_random(void *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1 ? CM_OK : CM_ERR_CRYPTO;
}

cm_err cm_key_file_check(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        cm_error("path=%s error=\"%s\"", path, strerror(errno));
        return CM_ERR_KEY;
    }
    if (!S_ISREG(st.st_mode)) {
        cm_error("path=%s error=\"not a regular file\"", path);
        return CM_ERR_KEY;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        cm_error("path=%s error=\"private key readable by group or others (mode %03o)\"", path,
                 (unsigned)(st.st_mode & 0777));
        return CM_ERR_KEY;
    }
    return CM_OK;
}

static EVP_PKEY *read_private_pem(const char *path)
{
    if (cm_key_file_check(path) != CM_OK)
        return NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        cm_error("path=%s error=\"%s\"", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k)
        cm_error("path=%s error=\"not a PEM private key\"", path);
    return k;
}

/* Reads a PEM public key, or the public key of a PEM certificate. */
static EVP_PKEY *read_public_pem(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cm_error("path=%s error=\"%s\"", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    if (!k) {
        rewind(f);
        X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
        if (x) {
            k = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    fclose(f);
    if (!k)
        cm_error("path=%s error=\"not a PEM public key or certificate\"", path);
    return k;
}

static int is_p256(const EVP_PKEY *k)
{
    char name[64];
    size_t len = 0;
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC)
        return 0;
    if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len))
        return 0;
    return strcmp(name, "prime256v1") == 0 || strcmp(name, "P-256") == 0;
}

static cm_err key_id_of(const EVP_PKEY *k, char out[CM_KEY_ID_LEN + 1])
{
    unsigned char *der = NULL;
    int len = i2d_PUBKEY((EVP_PKEY *)k, &der);
    if (len <= 0)
        return CM_ERR_CRYPTO;
    unsigned char md[32];
    unsigned int mdlen = 0;
    int ok = EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    if (!ok)
        return CM_ERR_CRYPTO;
    for (int i = 0; i < CM_KEY_ID_LEN / 2; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return CM_OK;
}

/* ------------------------------------------------------------------ signing */

struct cm_signer {
    EVP_PKEY *key;
    EVP_MD_CTX *md;
    char key_id[CM_KEY_ID_LEN + 1];
};

cm_err cm_signer_load(const char *pem_path, cm_signer **out)
{
    *out = NULL;
    EVP_PKEY *k = read_private_pem(pem_path);
    if (!k)
        return CM_ERR_KEY;
    if (!is_p256(k)) {
        cm_error("path=%s error=\"signing key is not EC P-256\"", pem_path);
        EVP_PKEY_free(k);
        return CM_ERR_KEY;
    }
    cm_signer *s = calloc(1, sizeof *s);
    if (!s || !(s->md = EVP_MD_CTX_new())) {
        free(s);
        EVP_PKEY_free(k);
        return CM_ERR_NOMEM;
    }
    s->key = k;
    if (key_id_of(k, s->key_id) != CM_OK) {
        cm_signer_destroy(&s);
        return CM_ERR_CRYPTO;
    }
    *out = s;
    return CM_OK;
}

void cm_signer_destroy(cm_signer **sp)
{
    if (!sp || !*sp)
        return;
    EVP_MD_CTX_free((*sp)->md);
    EVP_PKEY_free((*sp)->key);
    free(*sp);
    *sp = NULL;
}

const char *cm_signer_key_id(const cm_signer *s) { return s->key_id; }

static int digest_update_input(EVP_MD_CTX *md, int sign, const uint8_t *header, size_t hlen,
                               const uint8_t *body, size_t blen)
{
    uint8_t be[4] = {(uint8_t)(hlen >> 24), (uint8_t)(hlen >> 16), (uint8_t)(hlen >> 8),
                     (uint8_t)hlen};
    int (*upd)(EVP_MD_CTX *, const void *, size_t) =
        sign ? EVP_DigestSignUpdate : EVP_DigestVerifyUpdate;
    return upd(md, SIGN_DOMAIN, sizeof SIGN_DOMAIN) == 1 && upd(md, be, 4) == 1 &&
           upd(md, header, hlen) == 1 && upd(md, body, blen) == 1;
}

cm_err cm_signer_sign(cm_signer *s, const uint8_t *header, size_t hlen, const uint8_t *body,
                      size_t blen, uint8_t *sig, size_t *siglen)
{
    if (hlen > UINT32_MAX)
        return CM_ERR_INVAL;
    size_t cap = CM_SIG_MAX;
    if (EVP_DigestSignInit(s->md, NULL, EVP_sha256(), NULL, s->key) != 1 ||
        !digest_update_input(s->md, 1, header, hlen, body, blen) ||
        EVP_DigestSignFinal(s->md, sig, &cap) != 1)
        return CM_ERR_CRYPTO;
    *siglen = cap;
    return CM_OK;
}

cm_err cm_sign_domain(cm_signer *s, const char *domain, const uint8_t *msg, size_t len,
                      uint8_t *sig, size_t *siglen)
{
    size_t cap = CM_SIG_MAX;
    if (EVP_DigestSignInit(s->md, NULL, EVP_sha256(), NULL, s->key) != 1 ||
        EVP_DigestSignUpdate(s->md, domain, strlen(domain) + 1) != 1 ||
        EVP_DigestSignUpdate(s->md, msg, len) != 1 || EVP_DigestSignFinal(s->md, sig, &cap) != 1)
        return CM_ERR_CRYPTO;
    *siglen = cap;
    return CM_OK;
}

/* be32(hlen) || header || body into buf (cap bytes): the message a command signature covers. */
static size_t command_input(const uint8_t *header, size_t hlen, const uint8_t *body, size_t blen,
                            uint8_t *buf, size_t cap)
{
    if (hlen > CM_CMD_HEADER_MAX || blen > CM_CMD_MAX || 4 + hlen + blen > cap)
        return 0;
    buf[0] = (uint8_t)(hlen >> 24);
    buf[1] = (uint8_t)(hlen >> 16);
    buf[2] = (uint8_t)(hlen >> 8);
    buf[3] = (uint8_t)hlen;
    if (hlen)
        memcpy(buf + 4, header, hlen);
    if (blen)
        memcpy(buf + 4 + hlen, body, blen);
    return 4 + hlen + blen;
}

cm_err cm_command_sign(cm_signer *s, const uint8_t *header, size_t hlen, const uint8_t *body,
                       size_t blen, uint8_t *sig, size_t *siglen)
{
    uint8_t buf[4 + CM_CMD_HEADER_MAX + CM_CMD_MAX];
    size_t n = command_input(header, hlen, body, blen, buf, sizeof buf);
    if (n == 0)
        return CM_ERR_INVAL;
    return cm_sign_domain(s, CM_CMD_DOMAIN, buf, n, sig, siglen);
}

/* ------------------------------------------------------------ verification */

struct cm_pubkey {
    EVP_PKEY *key;
    char key_id[CM_KEY_ID_LEN + 1];
};

static cm_err pubkey_wrap(EVP_PKEY *k, cm_pubkey **out)
{
    if (!is_p256(k)) {
        EVP_PKEY_free(k);
        return CM_ERR_KEY;
    }
    cm_pubkey *p = calloc(1, sizeof *p);
    if (!p) {
        EVP_PKEY_free(k);
        return CM_ERR_NOMEM;
    }
    p->key = k;
    if (key_id_of(k, p->key_id) != CM_OK) {
        cm_pubkey_destroy(&p);
        return CM_ERR_CRYPTO;
    }
    *out = p;
    return CM_OK;
}

cm_err cm_pubkey_from_der(const uint8_t *der, size_t len, cm_pubkey **out)
{
    *out = NULL;
    const unsigned char *p = der;
    if (len == 0 || len > 4096)
        return CM_ERR_KEY;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)len);
    if (!k || p != der + len) {
        EVP_PKEY_free(k);
        return CM_ERR_KEY;
    }
    return pubkey_wrap(k, out);
}

cm_err cm_pubkey_load_pem(const char *path, cm_pubkey **out)
{
    *out = NULL;
    EVP_PKEY *k = read_public_pem(path);
    if (!k)
        return CM_ERR_KEY;
    cm_err rc = pubkey_wrap(k, out);
    if (rc == CM_ERR_KEY)
        cm_error("path=%s error=\"not an EC P-256 public key\"", path);
    return rc;
}

void cm_pubkey_destroy(cm_pubkey **kp)
{
    if (!kp || !*kp)
        return;
    EVP_PKEY_free((*kp)->key);
    free(*kp);
    *kp = NULL;
}

cm_err cm_pubkey_der(const cm_pubkey *k, uint8_t **der, size_t *len)
{
    unsigned char *tmp = NULL;
    int n = i2d_PUBKEY(k->key, &tmp);
    if (n <= 0)
        return CM_ERR_CRYPTO;
    *der = malloc((size_t)n);
    if (!*der) {
        OPENSSL_free(tmp);
        return CM_ERR_NOMEM;
    }
    memcpy(*der, tmp, (size_t)n);
    OPENSSL_free(tmp);
    *len = (size_t)n;
    return CM_OK;
}

const char *cm_pubkey_key_id(const cm_pubkey *k) { return k->key_id; }

/* OpenSSL 3 parses ECDSA signatures as DER but tolerates some BER; we demand that the signature
 * re-encodes to exactly the bytes received, so BER forms and trailing garbage are refused. */
static int strict_der(const uint8_t *sig, size_t siglen)
{
    if (siglen == 0 || siglen > CM_SIG_MAX)
        return 0;
    const unsigned char *p = sig;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
    if (!s)
        return 0;
    int ok = p == sig + siglen;
    unsigned char *re = NULL;
    int relen = ok ? i2d_ECDSA_SIG(s, &re) : 0;
    ok = ok && relen == (int)siglen && memcmp(re, sig, siglen) == 0;
    OPENSSL_free(re);
    ECDSA_SIG_free(s);
    return ok;
}

static cm_err verify_parts(const cm_pubkey *k, int domain, const uint8_t *header, size_t hlen,
                           const uint8_t *body, size_t blen, const uint8_t *sig, size_t siglen)
{
    if (!strict_der(sig, siglen))
        return CM_ERR_SIGNATURE;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return CM_ERR_NOMEM;
    int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->key) == 1;
    if (ok && domain)
        ok = digest_update_input(md, 0, header, hlen, body, blen);
    else if (ok)
        ok = EVP_DigestVerifyUpdate(md, header, hlen) == 1;
    ok = ok && EVP_DigestVerifyFinal(md, sig, siglen) == 1;
    EVP_MD_CTX_free(md);
    return ok ? CM_OK : CM_ERR_SIGNATURE;
}

cm_err cm_pubkey_verify(const cm_pubkey *k, const uint8_t *header, size_t hlen,
                        const uint8_t *body, size_t blen, const uint8_t *sig, size_t siglen)
{
    if (hlen > UINT32_MAX)
        return CM_ERR_SIGNATURE;
    return verify_parts(k, 1, header, hlen, body, blen, sig, siglen);
}

cm_err cm_pubkey_verify_raw(const cm_pubkey *k, const uint8_t *msg, size_t len,
                            const uint8_t *sig, size_t siglen)
{
    return verify_parts(k, 0, msg, len, NULL, 0, sig, siglen);
}

cm_err cm_verify_domain(const cm_pubkey *k, const char *domain, const uint8_t *msg, size_t len,
                        const uint8_t *sig, size_t siglen)
{
    if (!strict_der(sig, siglen))
        return CM_ERR_SIGNATURE;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return CM_ERR_NOMEM;
    int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->key) == 1 &&
             EVP_DigestVerifyUpdate(md, domain, strlen(domain) + 1) == 1 &&
             EVP_DigestVerifyUpdate(md, msg, len) == 1 &&
             EVP_DigestVerifyFinal(md, sig, siglen) == 1;
    EVP_MD_CTX_free(md);
    return ok ? CM_OK : CM_ERR_SIGNATURE;
}

cm_err cm_command_verify(const cm_pubkey *k, const uint8_t *header, size_t hlen,
                         const uint8_t *body, size_t blen, const uint8_t *sig, size_t siglen)
{
    uint8_t buf[4 + CM_CMD_HEADER_MAX + CM_CMD_MAX];
    size_t n = command_input(header, hlen, body, blen, buf, sizeof buf);
    if (n == 0)
        return CM_ERR_SIGNATURE;
    return cm_verify_domain(k, CM_CMD_DOMAIN, buf, n, sig, siglen);
}

/* ------------------------------------------------------------------ AES-GCM */

struct cm_aead {
    EVP_CIPHER_CTX *enc, *dec;
};

cm_err cm_aead_new(const uint8_t *key, size_t keylen, cm_aead **out)
{
    *out = NULL;
    const EVP_CIPHER *c = keylen == 16   ? EVP_aes_128_gcm()
                          : keylen == 24 ? EVP_aes_192_gcm()
                          : keylen == 32 ? EVP_aes_256_gcm()
                                         : NULL;
    if (!c)
        return CM_ERR_INVAL;
    cm_aead *a = calloc(1, sizeof *a);
    if (!a)
        return CM_ERR_NOMEM;
    a->enc = EVP_CIPHER_CTX_new();
    a->dec = EVP_CIPHER_CTX_new();
    /* the key schedule happens here, once per session; per message only the IV is set */
    if (!a->enc || !a->dec || EVP_EncryptInit_ex(a->enc, c, NULL, key, NULL) != 1 ||
        EVP_DecryptInit_ex(a->dec, c, NULL, key, NULL) != 1) {
        cm_aead_destroy(&a);
        return CM_ERR_CRYPTO;
    }
    *out = a;
    return CM_OK;
}

void cm_aead_destroy(cm_aead **ap)
{
    if (!ap || !*ap)
        return;
    EVP_CIPHER_CTX_free((*ap)->enc); /* frees and cleanses the key schedule */
    EVP_CIPHER_CTX_free((*ap)->dec);
    free(*ap);
    *ap = NULL;
}

cm_err cm_aead_seal(cm_aead *a, const uint8_t iv[CM_GCM_IV_LEN], const uint8_t *aad,
                    size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out)
{
    int len = 0;
    if (ptlen > INT32_MAX || aadlen > INT32_MAX)
        return CM_ERR_TOO_BIG;
    if (EVP_CIPHER_CTX_ctrl(a->enc, EVP_CTRL_GCM_SET_IVLEN, CM_GCM_IV_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(a->enc, NULL, NULL, NULL, iv) != 1 ||
        (aadlen && EVP_EncryptUpdate(a->enc, NULL, &len, aad, (int)aadlen) != 1) ||
        EVP_EncryptUpdate(a->enc, out, &len, pt, (int)ptlen) != 1 ||
        EVP_EncryptFinal_ex(a->enc, out + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->enc, EVP_CTRL_GCM_GET_TAG, CM_GCM_TAG_LEN, out + ptlen) != 1)
        return CM_ERR_CRYPTO;
    return CM_OK;
}

cm_err cm_aead_open_tagged(cm_aead *a, const uint8_t *iv, size_t ivlen, const uint8_t *aad,
                           size_t aadlen, const uint8_t *ct, size_t ctlen, const uint8_t *tag,
                           size_t taglen, uint8_t *out)
{
    int len = 0;
    if (ivlen == 0 || ivlen > 256 || taglen != CM_GCM_TAG_LEN || ctlen > INT32_MAX ||
        aadlen > INT32_MAX)
        return CM_ERR_DECRYPT;
    if (EVP_CIPHER_CTX_ctrl(a->dec, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL) != 1 ||
        EVP_DecryptInit_ex(a->dec, NULL, NULL, NULL, iv) != 1 ||
        (aadlen && EVP_DecryptUpdate(a->dec, NULL, &len, aad, (int)aadlen) != 1) ||
        EVP_DecryptUpdate(a->dec, out, &len, ct, (int)ctlen) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->dec, EVP_CTRL_GCM_SET_TAG, (int)taglen, (void *)tag) != 1 ||
        EVP_DecryptFinal_ex(a->dec, out + len, &len) != 1) {
        OPENSSL_cleanse(out, ctlen);
        return CM_ERR_DECRYPT;
    }
    return CM_OK;
}

cm_err cm_aead_open(cm_aead *a, const uint8_t *iv, size_t ivlen, const uint8_t *aad,
                    size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out)
{
    if (ivlen != CM_GCM_IV_LEN || ctlen < CM_GCM_TAG_LEN)
        return CM_ERR_DECRYPT;
    size_t n = ctlen - CM_GCM_TAG_LEN;
    return cm_aead_open_tagged(a, iv, ivlen, aad, aadlen, ct, n, ct + n, CM_GCM_TAG_LEN, out);
}

/* ------------------------------------------------------------------ RSA-OAEP */

struct cm_rsa {
    EVP_PKEY *key;
    EVP_PKEY_CTX *ctx; /* prepared once: OAEP, SHA-256, MGF1-SHA-256 */
    int private;
    char key_id[CM_KEY_ID_LEN + 1];
};

static cm_err rsa_wrap_key(EVP_PKEY *k, int private, cm_rsa **out)
{
    *out = NULL;
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_get_bits(k) != 2048) {
        EVP_PKEY_free(k);
        return CM_ERR_KEY;
    }
    cm_rsa *r = calloc(1, sizeof *r);
    if (!r) {
        EVP_PKEY_free(k);
        return CM_ERR_NOMEM;
    }
    r->key = k;
    r->private = private;
    if (key_id_of(k, r->key_id) != CM_OK) {
        cm_rsa_destroy(&r);
        return CM_ERR_CRYPTO;
    }
    r->ctx = EVP_PKEY_CTX_new(k, NULL);
    int ok = r->ctx && (private ? EVP_PKEY_decrypt_init(r->ctx) : EVP_PKEY_encrypt_init(r->ctx)) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(r->ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(r->ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(r->ctx, EVP_sha256()) == 1;
    if (!ok) {
        cm_rsa_destroy(&r);
        return CM_ERR_CRYPTO;
    }
    *out = r;
    return CM_OK;
}

cm_err cm_rsa_load_public(const char *pem_path, cm_rsa **out)
{
    *out = NULL;
    EVP_PKEY *k = read_public_pem(pem_path);
    if (!k)
        return CM_ERR_KEY;
    cm_err rc = rsa_wrap_key(k, 0, out);
    if (rc == CM_ERR_KEY)
        cm_error("path=%s error=\"not an RSA-2048 public key\"", pem_path);
    return rc;
}

cm_err cm_rsa_load_private(const char *pem_path, cm_rsa **out)
{
    *out = NULL;
    EVP_PKEY *k = read_private_pem(pem_path);
    if (!k)
        return CM_ERR_KEY;
    cm_err rc = rsa_wrap_key(k, 1, out);
    if (rc == CM_ERR_KEY)
        cm_error("path=%s error=\"not an RSA-2048 private key\"", pem_path);
    return rc;
}

cm_err cm_rsa_from_private_der(const uint8_t *der, size_t len, cm_rsa **out)
{
    *out = NULL;
    const unsigned char *p = der;
    EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, (long)len);
    if (!k)
        return CM_ERR_KEY;
    return rsa_wrap_key(k, 1, out);
}

cm_err cm_rsa_from_public_der(const uint8_t *der, size_t len, cm_rsa **out)
{
    *out = NULL;
    const unsigned char *p = der;
    EVP_PKEY *k = len ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
    if (!k || p != der + len) {
        EVP_PKEY_free(k);
        ERR_clear_error();
        return CM_ERR_KEY;
    }
    return rsa_wrap_key(k, 0, out);
}

cm_err cm_rsa_public_der(const cm_rsa *r, uint8_t **der, size_t *len)
{
    unsigned char *d = NULL;
    int n = i2d_PUBKEY(r->key, &d);
    if (n <= 0)
        return CM_ERR_CRYPTO;
    *der = malloc((size_t)n);
    if (!*der) {
        OPENSSL_free(d);
        return CM_ERR_NOMEM;
    }
    memcpy(*der, d, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(d);
    return CM_OK;
}

const char *cm_rsa_key_id(const cm_rsa *r) { return r->key_id; }

void cm_rsa_destroy(cm_rsa **rp)
{
    if (!rp || !*rp)
        return;
    EVP_PKEY_CTX_free((*rp)->ctx);
    EVP_PKEY_free((*rp)->key);
    free(*rp);
    *rp = NULL;
}

cm_err cm_rsa_wrap(cm_rsa *r, const uint8_t *key, size_t keylen, uint8_t *out, size_t *outlen)
{
    size_t cap = CM_WRAPPED_LEN;
    if (r->private)
        return CM_ERR_INVAL;
    if (EVP_PKEY_encrypt(r->ctx, out, &cap, key, keylen) != 1)
        return CM_ERR_CRYPTO;
    *outlen = cap;
    return CM_OK;
}

cm_err cm_rsa_unwrap(cm_rsa *r, const uint8_t *in, size_t inlen, const uint8_t *label,
                     size_t labellen, int require_aes_len, uint8_t *out, size_t outcap,
                     size_t *outlen)
{
    uint8_t buf[CM_WRAPPED_LEN];
    size_t n = sizeof buf;
    cm_err rc = CM_ERR_DECRYPT;
    *outlen = 0;
    if (!r->private || inlen != CM_WRAPPED_LEN)
        return CM_ERR_DECRYPT;
    /* the label is set per call on a duplicate of the prepared context */
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_dup(r->ctx);
    if (!ctx)
        return CM_ERR_DECRYPT;
    if (labellen > 1024)
        goto out;
    if (labellen) {
        unsigned char *l = OPENSSL_memdup(label, labellen);
        if (!l || EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, l, (int)labellen) != 1) {
            OPENSSL_free(l);
            goto out;
        }
    }
    /* OpenSSL's OAEP decoding is constant time and reports every padding failure alike */
    if (EVP_PKEY_decrypt(ctx, buf, &n, in, inlen) != 1)
        goto out;
    if (require_aes_len && n != 16 && n != 24 && n != 32)
        goto out;
    if (n > outcap)
        goto out;
    memcpy(out, buf, n);
    *outlen = n;
    rc = CM_OK;
out:
    OPENSSL_cleanse(buf, sizeof buf);
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

/* -------------------------------------------------------------- certificates */

static uint64_t asn1_time_ms(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    time_t s = timegm(&tm);
    return s < 0 ? 0 : (uint64_t)s * 1000u;
}

static cm_err cert_facts(X509 *x, cm_cert_info *out)
{
    cm_err rc = CM_ERR_CRYPTO;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!hex || X509_digest(x, EVP_sha256(), md, &mdlen) != 1)
        goto out;
    snprintf(out->serial, sizeof out->serial, "%s", hex);
    for (unsigned i = 0; i < mdlen && i < 32; i++)
        snprintf(out->sha256 + 2 * i, 3, "%02x", md[i]);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out->subject_cn,
                              sizeof out->subject_cn);
    out->not_before_ms = asn1_time_ms(X509_get0_notBefore(x));
    out->not_after_ms = asn1_time_ms(X509_get0_notAfter(x));
    rc = CM_OK;
out:
    OPENSSL_free(hex);
    BN_free(bn);
    return rc;
}

cm_err cm_cert_info_load(const char *pem_path, cm_cert_info *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(pem_path, "r");
    if (!f)
        return CM_ERR_KEY;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        return CM_ERR_KEY;
    cm_err rc = cert_facts(x, out);
    X509_free(x);
    return rc;
}

cm_err cm_cert_check(const uint8_t *pem, size_t len, const char *ca_path, uint64_t now_ms,
                     cm_cert_info *out)
{
    memset(out, 0, sizeof *out);
    if (!pem || len == 0 || len > 16384 || !ca_path)
        return CM_ERR_INVAL;
    cm_err rc = CM_ERR_KEY;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!x || !store || !ctx)
        goto out;
    rc = CM_ERR_SIGNATURE;
    if (X509_STORE_load_file(store, ca_path) != 1 || X509_STORE_CTX_init(ctx, store, x, NULL) != 1)
        goto out;
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_time(vp, (time_t)(now_ms / 1000));
    X509_VERIFY_PARAM_set_purpose(vp, X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(ctx) != 1)
        goto out;
    rc = cert_facts(x, out);
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(x);
    BIO_free(bio);
    return rc;
}
