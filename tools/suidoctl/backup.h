/* backup: `suidoctl backup create|verify|restore` — verifiable online backups of the archive and
 * registry databases.
 *
 * A backup is a new directory holding
 *     archive.db, registry.db   consistent snapshots taken with SQLite's online backup API while
 *                               the services keep running (rollback-journal files, mode 0600);
 *                               of a PostgreSQL archive, a SQLite file of the same schema read in
 *                               one REPEATABLE READ transaction
 *     manifest                  what the backup claims (cm_conf INI text, see below)
 *     manifest.sig              ECDSA P-256 / SHA-256 signature, DER, over
 *                               BACKUP_DOMAIN "\0" || the manifest's exact bytes (cm_sign_domain)
 *
 * manifest (format 1):
 *     [backup]            format = 1; deployment = SHA-256 of the deployment CA certificate (DER,
 *                         lowercase hex); created_ms; created (ISO 8601, for people)
 *     [file archive.db]   size; sha256; batches; readings; audit_head_seq; audit_head_hash;
 *                         checkpoint_seq, checkpoint_hash, checkpoint_ms, checkpoint_sig: the
 *                         registry's latest signed audit checkpoint (cm_audit_checkpoint.h),
 *                         read before the archive is copied, all four or none (none signed yet)
 *     [file registry.db]  size; sha256; gateways
 *
 * Verification trusts nothing in the directory before the manifest's signature has been checked
 * with the deployment's backup verification key; then it checks the format version, that the
 * deployment id is this deployment's CA, every file's size and SHA-256, PRAGMA integrity_check of
 * both databases, the audit hash chain against the manifest's head and the archive's log against
 * the manifest's checkpoint (it must hold that entry with that hash; the checkpoint's registry
 * signature too, with [registry] checkpoint_key), the batch and reading counts,
 * and re-verifies every stored batch envelope's ECDSA signature with its gateway's signing key
 * from the backed-up registry. A disposed gateway has no key left: its batches are counted as
 * unverifiable by disposal, not as failures.
 *
 * Configuration (suidoctl.conf): [archive] database, or [archive] postgresql (a file, mode 0600,
 * holding the libpq connection string: the archive is in PostgreSQL and create takes its snapshot
 * into an archive.db of the same schema, backup_pg.h); [backup] registry_database, signing_key
 * (create), verify_key (verify, restore), ca (all three).
 *
 * Every function prints its summary on stdout (one JSON object with json set) and its reasons on
 * stderr, and returns suidoctl's exit code: 0 done, 1 refused or failed, 2 usage or
 * configuration, 3 a live database could not be opened (cannot check: state unavailable). */
#ifndef SUIDOCTL_BACKUP_H
#define SUIDOCTL_BACKUP_H
#include "backup_manifest.h" /* BACKUP_FORMAT */
#include "cm_conf.h"
#include "suido.pb-c.h"

#define BACKUP_DOMAIN "suido-backup-v1"

/* Snapshots the archive and registry into dir, which must not exist, writes and signs the
 * manifest and fsyncs every file and the directory. Refuses (and leaves nothing behind) when a
 * snapshot fails its integrity check or the archive's audit chain is broken. */
int backup_create(const cm_conf *conf, const char *dir, int json);

/* Checks the backup in dir (see above); read only. */
int backup_verify(const cm_conf *conf, const char *dir, int json);

/* Verifies the backup in dir in full, then restores it into statedir/archive/archive.db and
 * statedir/registry/registry.db: each file is copied to a temporary file in its target directory
 * and checked against the manifest again, the restored archive is re-opened and every batch
 * signature re-verified, and only then are the files renamed into place. The services must be
 * stopped: existing target files are refused unless force is set, and a database that another
 * process holds open is refused even then. A refusal writes nothing. */
int backup_restore(const cm_conf *conf, const char *dir, const char *statedir, int force,
                   int json);

/* Verifies the backup in dir in full, then loads its archive into the empty PostgreSQL database
 * whose connection string pgfile holds (mode 0600): the backup's own schema (cm_sql_exec_ddl),
 * every row, identity counters past the loaded ids, the schema version; then reads it back and
 * checks it against the manifest (counts, audit chain head) and every batch signature, all in
 * one transaction, committed only when everything held. A database that has any table is
 * refused. The registry stays a SQLite file: backup_restore puts it in place. */
int backup_restore_pg(const cm_conf *conf, const char *dir, const char *pgfile, int json);

/* The registry's latest signed audit checkpoint, read from its database file registry_db (what
 * `audit verify --offline` holds the log against): CM_OK and *out (caller frees with
 * suido__audit_checkpoint__free_unpacked; its signature not yet checked), CM_ERR_UNKNOWN when it
 * has none, CM_ERR_UNAVAILABLE when the file cannot be read; why says which. */
cm_err backup_registry_checkpoint(const char *registry_db, Suido__AuditCheckpoint **out,
                                  char *why, size_t len);

/* `suidoctl archive verify`: the same checks on the live archive (SQLite or PostgreSQL) and
 * registry (read-only, in one read transaction, while the services run): the audit chain and
 * every stored batch signature. */
int archive_verify_live(const cm_conf *conf, int json);

#endif
