/* registry_checkpoint: the archive's audit-log heads, signed and kept by the registry (table
 * audit_checkpoints, the latest 1000), so that a log cut at its end shows against a head kept
 * outside the archive (cm_audit_checkpoint.h). The archive sends its head (REG_AUDIT_CHECKPOINT)
 * after it commits audit entries; anyone may fetch the latest (REG_GET_AUDIT_CHECKPOINT).
 *
 * A head never goes back, and a new one must come from a log that still holds the latest one:
 * the sender proves it with its hash of the latest's entry (prev_seq, prev_sha256, learnt from the
 * registry's previous answer). Otherwise it is refused and the latest stays: a log cut at its end
 * and grown again past the cut never gets a new head signed. */
#ifndef REGISTRY_CHECKPOINT_H
#define REGISTRY_CHECKPOINT_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_crypto.h"
#include "cm_err.h"
#include "suido.pb-c.h"

cm_err registry_checkpoint_init(sqlite3 *db);

/* Signs cp's (seq, head) at now_ms with signer and keeps it as the latest. CM_OK (*stored 0
 * when it is the latest already), CM_ERR_INVAL (seq 0 or a head that is not 32 bytes),
 * CM_ERR_UNKNOWN (cp->prev_seq is not the latest's number: the sender must learn it and ask
 * again), CM_ERR_REPLAY (goes back, or the sender's log no longer holds the latest: cut or
 * rewritten), CM_ERR_CONFIG (no signer), CM_ERR_DB, CM_ERR_CRYPTO. */
cm_err registry_checkpoint_put(sqlite3 *db, cm_signer *signer, const Suido__AuditCheckpoint *cp,
                               uint64_t now_ms, int *stored);

/* The latest checkpoint into *out (its buffers allocated: registry_checkpoint_clear).
 * CM_ERR_UNKNOWN when there is none yet. */
cm_err registry_checkpoint_latest(sqlite3 *db, Suido__AuditCheckpoint *out);
void registry_checkpoint_clear(Suido__AuditCheckpoint *cp);

#endif
