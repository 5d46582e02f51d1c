/* backup_pg: moves a whole archive between PostgreSQL and a SQLite file of the same schema, so
 * that a backup of a PostgreSQL archive is the same archive.db as a SQLite deployment's (and
 * `backup verify` and `restore` treat it alike).
 *
 *   snapshot  PostgreSQL -> new SQLite file: every table of the archive's schema (the schema
 *             read from PostgreSQL's catalog and written back in the SQLite dialect the archive
 *             itself uses: INTEGER, REAL, TEXT, BLOB, INTEGER PRIMARY KEY for an identity key,
 *             WITHOUT ROWID for a composite one; indexes; defaults), every row, and the schema
 *             version as user_version, read in one REPEATABLE READ, READ ONLY transaction, so the
 *             copy is one committed state while the archive goes on writing.
 *   load      SQLite copy -> empty PostgreSQL database: the copy's own CREATE statements through
 *             cm_sql_exec_ddl, every row, identity counters moved past the highest id, the schema
 *             version; in the caller's transaction.
 *
 * Rows are read in pages (keyset on the table's primary key, or a cursor), never all at once. */
#ifndef SUIDOCTL_BACKUP_PG_H
#define SUIDOCTL_BACKUP_PG_H
#include <stddef.h>
#include <stdint.h>

#include "cm_sql.h"

/* src: an open PostgreSQL connection (read-only is enough); dst: a new, empty SQLite file that
 * exists (the caller created it exclusively). Returns 1, or 0 with the reason in why. The copy
 * ends in rollback-journal mode: one self-contained file. rows gets the rows copied. */
int backup_pg_snapshot(cm_sql *src, const char *dst, uint64_t *rows, char *why, size_t len);

/* 1 when the PostgreSQL database has no table in its current schema; 0 (why: the reason) when
 * it has or cannot be asked. */
int backup_pg_empty(cm_sql *db, char *why, size_t len);

/* Creates the copy's schema in the PostgreSQL database dst and copies every row into it, inside
 * a transaction the caller opened (and commits or rolls back). Returns 1, or 0 with why. */
int backup_pg_load(cm_sql *src, cm_sql *dst, uint64_t *rows, char *why, size_t len);

#endif
