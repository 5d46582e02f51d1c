/* cm_audit_checkpoint: the head of the archive's audit chain, anchored outside the archive.
 *
 * The hash chain (cm_audit.h) shows an edited, removed or reordered entry, but not the newest
 * entries cut off the end: what is left is still a good chain. So the archive sends its head
 * (entry number and hash) to the registry after it commits audit entries (at most every few
 * seconds, and when it stops); the registry signs it with its profile key (domain
 * CM_AUDIT_CHECKPOINT_DOMAIN, over be64(seq) || head || be64(ts_ms)) and keeps it in its own
 * database. Whoever checks a log (suidoctl audit verify, backup verify, the archive's chain check
 * for the monitor) fetches the latest checkpoint, verifies its signature, and requires the log to
 * hold that entry with that hash: a log that does not reach it was cut ("truncated").
 *
 * It does not protect against whoever holds both the archive's database and the registry's
 * profile key (or its database and the key): they can cut the log and sign a new head. */
#ifndef CM_AUDIT_CHECKPOINT_H
#define CM_AUDIT_CHECKPOINT_H
#include <stddef.h>
#include <stdint.h>

#include "cm_audit_check.h"
#include "cm_crypto.h"
#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

#define CM_AUDIT_CHECKPOINT_DOMAIN "suido-audit-checkpoint-v1"

/* Signs (seq, head, ts_ms) into sig (CM_SIG_MAX bytes). */
cm_err cm_audit_checkpoint_sign(cm_signer *s, uint64_t seq, const uint8_t head[CM_AUDIT_HASH_LEN],
                                uint64_t ts_ms, uint8_t *sig, size_t *siglen);
/* CM_OK when cp is well-formed (seq > 0, a 32-byte head) and signed by k; CM_ERR_INVAL or
 * CM_ERR_SIGNATURE otherwise. */
cm_err cm_audit_checkpoint_verify(const cm_pubkey *k, const Suido__AuditCheckpoint *cp);

/* Whether the log in db, whose chain cm_audit_check_db judged (chain), reaches the verified
 * checkpoint cp: 1 when it holds entry cp->seq with hash cp->head_sha256; 0 when it does not (the
 * log was cut: why says how); -1 on a database error. */
int cm_audit_checkpoint_reached(cm_sql *db, const cm_audit_check_result *chain,
                                const Suido__AuditCheckpoint *cp, char *why, size_t len);

#endif
