/* audit_check: recomputes the hash chain of an archive's audit log (common/cm_audit.h) over an
 * open database (cm_sql: SQLite or PostgreSQL). One implementation for `suidoctl audit verify` (the live archive, read
 * only) and `suidoctl backup verify|restore` (a backed-up copy), so both judge a chain the same
 * way. It reads; it never writes. */
#ifndef SUIDOCTL_AUDIT_CHECK_H
#define SUIDOCTL_AUDIT_CHECK_H
#include <stdint.h>

#include "cm_audit.h"
#include "cm_conf.h"
#include "cm_err.h"
#include "cm_sql.h"

typedef struct audit_check_result {
    uint64_t rows;        /* entries read, the first one that does not fit included */
    uint64_t entries;     /* entries that fit the chain (rows, or rows - 1 when broken) */
    uint64_t bad_seq;     /* number stored in the first entry that does not fit; 0 if none */
    const char *why;      /* NULL when every entry read fits; else a static reason */
    int read_error;       /* reading stopped on a database error before the end of the log */
    uint8_t head[CM_AUDIT_HASH_LEN];            /* hash of the last entry that fits (zeros: none) */
    char head_hex[2 * CM_AUDIT_HASH_LEN + 1];   /* the same, lowercase hex */
} audit_check_result;

/* Walks the audit table in the order of its entry numbers, recomputing each entry's hash from its content and
 * its predecessor's, and stops at the first entry that is missing, out of order or altered.
 * Returns CM_OK with *out filled, or CM_ERR_DB when the audit table cannot be queried (the
 * caller reports cm_sql_error(db)). A read error part-way leaves why NULL and sets
 * read_error: callers decide whether a short read counts as a failure. */
cm_err audit_check_db(cm_sql *db, audit_check_result *out);

/* A read-only SQLite URI for path ("file:...?mode=ro", characters that mean something in a URI
 * escaped). immutable: the file is a finished copy that nothing else writes, so SQLite reads
 * exactly its bytes and creates no journal or lock files beside it. 0 if it does not fit. */
int ctl_sqlite_ro_uri(const char *path, int immutable, char *out, size_t len);

/* Opens the live archive that suidoctl.conf names, read-only: [archive] postgresql = FILE (the
 * libpq connection string, in a file of mode 0600) or [archive] database = PATH (SQLite; the
 * services keep writing it). label gets what names it in messages (a path, never the connection
 * string). Returns 0, or the exit code after printing the reason: 2 when the configuration names
 * neither or both, 3 when the archive cannot be opened or reached. */
int ctl_archive_open(const cm_conf *conf, cm_sql **out, char *label, size_t len);

#endif
