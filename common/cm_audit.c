/* cm_audit: computing the audit log's hash chain (OpenSSL SHA-256). */
#include "cm_audit.h"

#include <string.h>

#include <openssl/evp.h>

static int put_u64(EVP_MD_CTX *md, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
    return EVP_DigestUpdate(md, b, 8);
}

static int put_str(EVP_MD_CTX *md, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    uint8_t b[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    return EVP_DigestUpdate(md, b, 4) && (n == 0 || EVP_DigestUpdate(md, s, n));
}

cm_err cm_audit_hash(const uint8_t prev[CM_AUDIT_HASH_LEN], const cm_audit_entry *e,
                     uint8_t out[CM_AUDIT_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = 0;
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(md, prev, CM_AUDIT_HASH_LEN) && put_u64(md, e->seq) &&
             put_u64(md, e->ts_ms) && put_str(md, e->source) && put_str(md, e->event) &&
             put_str(md, e->subject) && put_str(md, e->actor) && put_str(md, e->detail) &&
             EVP_DigestFinal_ex(md, out, &len) && len == CM_AUDIT_HASH_LEN;
    EVP_MD_CTX_free(md);
    return ok ? CM_OK : CM_ERR_CRYPTO;
}
