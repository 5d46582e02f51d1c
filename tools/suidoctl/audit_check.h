/* audit_check: how suidoctl opens an archive to read it: the live archive its configuration
 * names, or a backed-up SQLite copy. The audit chain itself is judged by cm_audit_check_db
 * (common/cm_audit_check.h). */
#ifndef SUIDOCTL_AUDIT_CHECK_H
#define SUIDOCTL_AUDIT_CHECK_H
#include <stdint.h>

#include "cm_audit_check.h"
#include "cm_conf.h"
#include "cm_err.h"
#include "cm_sql.h"



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
