/* cm_audit: the hash chain of the tamper-evident audit log.
 *
 *   hash(n) = SHA-256( hash(n-1) || be64(n) || be64(ts_ms) || lp(source) || lp(event) ||
 *                      lp(subject) || lp(actor) || lp(detail) )      lp(s) = be32(len) || s
 *
 * with hash(0) = 32 zero bytes and entries numbered from 1. Each stored entry keeps its number
 * and hash: an edited entry no longer matches its hash, a removed or reordered one breaks the
 * numbering or the link to its predecessor. (Cutting the newest entries off the end is only
 * visible against a head hash kept elsewhere; cm_audit_verify reports the head so it can be
 * compared.) The archive appends; `suidoctl audit verify` checks. */
#ifndef CM_AUDIT_H
#define CM_AUDIT_H
#include <stdint.h>
#include "cm_err.h"

#define CM_AUDIT_HASH_LEN 32

typedef struct cm_audit_entry {
    uint64_t seq, ts_ms;
    const char *source, *event, *subject, *actor, *detail;
} cm_audit_entry;

/* out = hash of e chained to prev. */
cm_err cm_audit_hash(const uint8_t prev[CM_AUDIT_HASH_LEN], const cm_audit_entry *e,
                     uint8_t out[CM_AUDIT_HASH_LEN]);

#endif
