/* cm_audit_checkpoint: see cm_audit_checkpoint.h. */
#include "cm_audit_checkpoint.h"

#include <stdio.h>
#include <string.h>

#include "cm_time.h"

#define SIGNED_LEN (8 + CM_AUDIT_HASH_LEN + 8)

static void put_be64(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void signed_bytes(uint64_t seq, const uint8_t *head, uint64_t ts_ms, uint8_t out[SIGNED_LEN])
{
    put_be64(out, seq);
    memcpy(out + 8, head, CM_AUDIT_HASH_LEN);
    put_be64(out + 8 + CM_AUDIT_HASH_LEN, ts_ms);
}

cm_err cm_audit_checkpoint_sign(cm_signer *s, uint64_t seq, const uint8_t head[CM_AUDIT_HASH_LEN],
                                uint64_t ts_ms, uint8_t *sig, size_t *siglen)
{
    uint8_t msg[SIGNED_LEN];
    signed_bytes(seq, head, ts_ms, msg);
    return cm_sign_domain(s, CM_AUDIT_CHECKPOINT_DOMAIN, msg, sizeof msg, sig, siglen);
}

cm_err cm_audit_checkpoint_verify(const cm_pubkey *k, const Suido__AuditCheckpoint *cp)
{
    if (!cp || cp->seq == 0 || cp->head_sha256.len != CM_AUDIT_HASH_LEN ||
        cp->signature.len == 0)
        return CM_ERR_INVAL;
    uint8_t msg[SIGNED_LEN];
    signed_bytes(cp->seq, cp->head_sha256.data, cp->ts_ms, msg);
    return cm_verify_domain(k, CM_AUDIT_CHECKPOINT_DOMAIN, msg, sizeof msg, cp->signature.data,
                            cp->signature.len);
}

int cm_audit_checkpoint_reached(cm_sql *db, const cm_audit_check_result *chain,
                                const Suido__AuditCheckpoint *cp, char *why, size_t len)
{
    char when[32];
    cm_time_iso(cp->ts_ms, when, sizeof when);
    if (chain->entries < cp->seq) {
        snprintf(why, len,
                 "the log ends at entry %llu, but the registry signed entry %llu as its head at "
                 "%s: the newest entries were removed",
                 (unsigned long long)chain->entries, (unsigned long long)cp->seq, when);
        return 0;
    }
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, "SELECT hash FROM audit WHERE seq=?", &st) != CM_OK)
        return -1;
    cm_sql_bind_int64(st, 1, (int64_t)cp->seq);
    int r = cm_sql_step(st), reached = -1;
    if (r == CM_SQL_ROW) {
        size_t hlen = 0;
        const void *h = cm_sql_column_blob(st, 0, &hlen);
        reached = h && hlen == CM_AUDIT_HASH_LEN &&
                  memcmp(h, cp->head_sha256.data, CM_AUDIT_HASH_LEN) == 0;
    } else if (r == CM_SQL_DONE) {
        reached = 0;
    }
    cm_sql_finalize(&st);
    if (reached == 0)
        snprintf(why, len,
                 "entry %llu is not the one the registry signed as the head at %s: the log was "
                 "cut there and written again",
                 (unsigned long long)cp->seq, when);
    return reached;
}
