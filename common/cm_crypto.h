/* cm_crypto: the suite's crypto on OpenSSL 3 — ECDSA P-256 batch signatures, AES-GCM session
 * envelopes, RSA-OAEP-2048 key wrapping — behind one small interface, so that key storage can
 * later move into a secure element without touching callers.
 *
 * Signature input (domain-separated, so a signature cannot be reused for another purpose):
 *     "suido/v1/batch\0" || be32(len(header)) || header || body
 * ECDSA signatures are DER; verification is strict (BER, r/s out of range are rejected).
 *
 * Private key files must not be readable by group or others (mode 0600 or stricter). */
#ifndef CM_CRYPTO_H
#define CM_CRYPTO_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"

#define CM_SIG_MAX 72        /* DER ECDSA P-256 signature upper bound */
#define CM_KEY_ID_LEN 16     /* hex chars of SHA-256(SPKI DER), first 8 bytes */
#define CM_GCM_IV_LEN 12
#define CM_GCM_TAG_LEN 16
#define CM_WRAPPED_LEN 256   /* RSA-2048 OAEP ciphertext */

/* Fills buf with n cryptographically random bytes. */
cm_err cm_random(void *buf, size_t n);

/* Checks that a private key file exists, is a regular file and is not group/other accessible. */
cm_err cm_key_file_check(const char *path);

/* ---- ECDSA P-256 signing (gateway side) ---- */
typedef struct cm_signer cm_signer;
/* Loads a PEM P-256 private key (PKCS#8 or SEC1). Caller frees with cm_signer_destroy. */
cm_err cm_signer_load(const char *pem_path, cm_signer **out);
void cm_signer_destroy(cm_signer **s);
/* The key id of the signer's public key, CM_KEY_ID_LEN hex chars. Owned by s. */
const char *cm_signer_key_id(const cm_signer *s);
/* Signs sign_input(header, body); sig must hold CM_SIG_MAX bytes; *siglen gets the length. */
cm_err cm_signer_sign(cm_signer *s, const uint8_t *header, size_t hlen, const uint8_t *body,
                      size_t blen, uint8_t *sig, size_t *siglen);

/* Commands (gate -> gateway): ECDSA P-256 / SHA-256 over CM_CMD_DOMAIN, its terminating NUL,
 * be32(len(header)) || header || body, where header is the serialized CommandHeader (at most
 * CM_CMD_HEADER_MAX bytes: cipher, IV, wrapped session key, key id) and body the sealed Command
 * (at most CM_CMD_MAX bytes). The signature covers how the command is encrypted as well as the
 * ciphertext; the domain keeps a command signature from ever passing as a telemetry signature and
 * the other way round. */
#define CM_CMD_DOMAIN "suido-cmd-v2"
#define CM_CMD_MAX 4096
#define CM_CMD_HEADER_MAX 1024
/* Data profiles (registry -> services): the same scheme over the profile file's exact bytes. */
#define CM_PROFILE_DOMAIN "suido-profile-v1"
/* ECDSA P-256 / SHA-256 over domain, its terminating NUL, and msg: the one scheme behind the
 * command and profile signatures. */
cm_err cm_sign_domain(cm_signer *s, const char *domain, const uint8_t *msg, size_t len,
                      uint8_t *sig, size_t *siglen);
cm_err cm_command_sign(cm_signer *s, const uint8_t *header, size_t hlen, const uint8_t *body,
                       size_t blen, uint8_t *sig, size_t *siglen);

/* ---- ECDSA P-256 verification (platform side) ---- */
typedef struct cm_pubkey cm_pubkey;
/* From SubjectPublicKeyInfo DER; refuses anything but a P-256 EC key. */
cm_err cm_pubkey_from_der(const uint8_t *der, size_t len, cm_pubkey **out);
/* From a PEM public key file (or the public half of a PEM certificate). */
cm_err cm_pubkey_load_pem(const char *path, cm_pubkey **out);
void cm_pubkey_destroy(cm_pubkey **k);
/* SPKI DER of k; *der is malloc'd, caller frees. */
cm_err cm_pubkey_der(const cm_pubkey *k, uint8_t **der, size_t *len);
const char *cm_pubkey_key_id(const cm_pubkey *k);
/* CM_OK if sig is a valid strict-DER signature over sign_input(header, body); else
 * CM_ERR_SIGNATURE. */
cm_err cm_pubkey_verify(const cm_pubkey *k, const uint8_t *header, size_t hlen,
                        const uint8_t *body, size_t blen, const uint8_t *sig, size_t siglen);
/* Plain ECDSA-SHA256 verification of msg (no domain prefix), used by conformance tests. */
cm_err cm_pubkey_verify_raw(const cm_pubkey *k, const uint8_t *msg, size_t len,
                            const uint8_t *sig, size_t siglen);
/* A signature made by cm_sign_domain (strict DER); CM_ERR_SIGNATURE for anything else. */
cm_err cm_verify_domain(const cm_pubkey *k, const char *domain, const uint8_t *msg, size_t len,
                        const uint8_t *sig, size_t siglen);
/* A command signature (see cm_command_sign); CM_ERR_SIGNATURE for anything but a valid one. */
cm_err cm_command_verify(const cm_pubkey *k, const uint8_t *header, size_t hlen,
                         const uint8_t *body, size_t blen, const uint8_t *sig, size_t siglen);

/* ---- AES-GCM with a session key: the key schedule is done once per session ---- */
typedef struct cm_aead cm_aead;
/* keylen 16, 24 or 32; the key is copied and wiped on destroy. */
cm_err cm_aead_new(const uint8_t *key, size_t keylen, cm_aead **out);
void cm_aead_destroy(cm_aead **a);
/* out must hold ptlen + CM_GCM_TAG_LEN bytes: ciphertext || tag. */
cm_err cm_aead_seal(cm_aead *a, const uint8_t iv[CM_GCM_IV_LEN], const uint8_t *aad,
                    size_t aadlen, const uint8_t *pt, size_t ptlen, uint8_t *out);
/* ct holds ciphertext || tag (ctlen >= CM_GCM_TAG_LEN); out must hold ctlen - CM_GCM_TAG_LEN.
 * Any failure (tag, length, IV) is CM_ERR_DECRYPT. ivlen must be CM_GCM_IV_LEN. */
cm_err cm_aead_open(cm_aead *a, const uint8_t *iv, size_t ivlen, const uint8_t *aad,
                    size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t *out);
/* General form for conformance tests: IV of 1 to 256 bytes, tag length 16. */
cm_err cm_aead_open_tagged(cm_aead *a, const uint8_t *iv, size_t ivlen, const uint8_t *aad,
                           size_t aadlen, const uint8_t *ct, size_t ctlen, const uint8_t *tag,
                           size_t taglen, uint8_t *out);

/* ---- RSA-OAEP-2048 (SHA-256, MGF1-SHA-256, empty label) key wrapping ---- */
typedef struct cm_rsa cm_rsa;
/* Public key (PEM SPKI or certificate) for wrapping; private key (PEM) for unwrapping. Both
 * refuse anything but RSA with a 2048-bit modulus. */
cm_err cm_rsa_load_public(const char *pem_path, cm_rsa **out);
cm_err cm_rsa_load_private(const char *pem_path, cm_rsa **out);
cm_err cm_rsa_from_private_der(const uint8_t *der, size_t len, cm_rsa **out);
/* A public key for wrapping from SubjectPublicKeyInfo DER (as the registry stores it). */
cm_err cm_rsa_from_public_der(const uint8_t *der, size_t len, cm_rsa **out);
/* SPKI DER of the (public half of the) key; *der is malloc'd, caller frees. */
cm_err cm_rsa_public_der(const cm_rsa *r, uint8_t **der, size_t *len);
/* The key id of the public key, CM_KEY_ID_LEN hex chars of SHA-256(SPKI DER). Owned by r. */
const char *cm_rsa_key_id(const cm_rsa *r);
void cm_rsa_destroy(cm_rsa **r);
/* out must hold CM_WRAPPED_LEN bytes. */
cm_err cm_rsa_wrap(cm_rsa *r, const uint8_t *key, size_t keylen, uint8_t *out, size_t *outlen);
/* Unwraps into out (outcap bytes). Every failure — bad padding, wrong length, wrong label, a
 * result that is not 16/24/32 bytes when require_aes_len is set — is the same CM_ERR_DECRYPT,
 * and the work done does not depend on which check failed beyond OpenSSL's constant-time OAEP
 * decoding. label may be NULL. */
cm_err cm_rsa_unwrap(cm_rsa *r, const uint8_t *in, size_t inlen, const uint8_t *label,
                     size_t labellen, int require_aes_len, uint8_t *out, size_t outcap,
                     size_t *outlen);

/* Facts of a PEM certificate for the registry's inventory. */
typedef struct cm_cert_info {
    char serial[80];        /* hex */
    char sha256[65];        /* fingerprint of the DER, lowercase hex */
    char subject_cn[128];
    uint64_t not_before_ms, not_after_ms;
} cm_cert_info;
cm_err cm_cert_info_load(const char *pem_path, cm_cert_info *out);
/* Facts of one PEM certificate held in memory, after checking that the CA in ca_path issued it,
 * that it is valid at now_ms and that it may be used by a TLS client. CM_ERR_KEY: not a
 * certificate; CM_ERR_SIGNATURE: not issued by that CA, expired or not yet valid. */
cm_err cm_cert_check(const uint8_t *pem, size_t len, const char *ca_path, uint64_t now_ms,
                     cm_cert_info *out);
#endif
