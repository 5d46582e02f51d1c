/* cm_audit_check: recomputes the hash chain of an archive's audit log (cm_audit.h) over an open
 * database (cm_sql: SQLite or PostgreSQL). One implementation for every place that judges a chain:
 * `suidoctl audit verify` (the live archive), `suidoctl backup verify|restore` (a backed-up copy)
 * and the archive's read API (the monitor's chain check). It reads; it never writes. */
#ifndef CM_AUDIT_CHECK_H
#define CM_AUDIT_CHECK_H
#include <stdint.h>

#include "cm_audit.h"
#include "cm_err.h"
#include "cm_sql.h"

typedef struct cm_audit_check_result {
    uint64_t rows;        /* entries read, the first one that does not fit included */
    uint64_t entries;     /* entries that fit the chain (rows, or rows - 1 when broken) */
    uint64_t bad_seq;     /* number stored in the first entry that does not fit; 0 if none */
    const char *why;      /* NULL when every entry read fits; else a static reason */
    int read_error;       /* reading stopped on a database error before the end of the log */
    uint8_t head[CM_AUDIT_HASH_LEN];            /* hash of the last entry that fits (zeros: none) */
    char head_hex[2 * CM_AUDIT_HASH_LEN + 1];   /* the same, lowercase hex */
} cm_audit_check_result;

/* Walks the audit table in the order of its entry numbers, recomputing each entry's hash from its content and
 * its predecessor's, and stops at the first entry that is missing, out of order or altered.
 * Returns CM_OK with *out filled, or CM_ERR_DB when the audit table cannot be queried (the
 * caller reports cm_sql_error(db)). A read error part-way leaves why NULL and sets
 * read_error: callers decide whether a short read counts as a failure. */
cm_err cm_audit_check_db(cm_sql *db, cm_audit_check_result *out);

#endif
