/* audit_check: how suidoctl opens an archive to read it: the live archive its configuration
 * names, or a backed-up SQLite copy. The audit chain itself is judged by cm_audit_check_db
 * (common/cm_audit_check.h). */
#ifndef SUIDOCTL_AUDIT_CHECK_H
#define SUIDOCTL_AUDIT_CHECK_H
#include <stddef.h>
#include <stdint.h>

#include "cm_audit_check.h"
#include "cm_conf.h"
#include "cm_err.h"
#include "cm_sql.h"


/* A read-only SQLite URI for path ("file:...?mode=ro", characters that mean something in a URI
 * escaped). immutable: the file is a finished copy that nothing else writes, so SQLite reads
 * exactly its bytes and creates no journal or lock files beside it. 0 if it does not fit. */
int ctl_sqlite_ro_uri(const char *path, int immutable, char *out, size_t len);

/* Pid of another process holding a POSIX lock on path (a service that has a SQLite database
 * open in WAL mode always holds one on the database file and on its -shm); 0 when none or no
 * such file; -1 when it cannot be told (also a holder in another PID namespace, whose pid reads
 * as 0). This process's own locks are never seen; suidoctl holds none when it asks. */
long ctl_lock_holder(const char *path);

/* Whether the SQLite database path is at rest: no process holds it open and no write-ahead log
 * or rollback journal lies beside it, so the file alone is the whole database and can be read as
 * immutable (no -shm or lock files needed: a stopped deployment, a read-only folder or mount).
 * 0 when in use or when a log beside it still holds changes: it is read through SQLite's locks
 * and WAL index as usual. */
int ctl_sqlite_at_rest(const char *path);

/* Opens the SQLite database path read-only, running or at rest (ctl_sqlite_at_rest), and reads
 * its schema at once, so that a file that cannot be read fails here and not at the first query.
 * 1, or 0 with the reason in why (ENOENT's or EACCES's words, or SQLite's). */
int ctl_sqlite_open(const char *path, cm_sql **out, char *why, size_t len);

/* Opens the live archive that suidoctl.conf names, read-only: [archive] postgresql = FILE (the
 * libpq connection string, in a file of mode 0600) or [archive] database = PATH (SQLite; the
 * services keep writing it). label gets what names it in messages (a path, never the connection
 * string). Returns 0, or the exit code after printing the reason: 2 when the configuration names
 * neither or both, 3 when the archive cannot be opened or reached (path and reason printed). */
int ctl_archive_open(const cm_conf *conf, cm_sql **out, char *label, size_t len);

#endif
