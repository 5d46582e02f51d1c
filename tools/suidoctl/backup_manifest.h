/* backup_manifest: the parser of a backup's manifest (format in backup.h), apart from the rest
 * of `suidoctl backup` so that it can be tested and fuzzed on its own: pure, no I/O.
 *
 * The manifest is only parsed after its signature has been checked, but a backup is a directory
 * that travels (copies, restores on another machine): the parser refuses anything malformed with
 * one reason and never trusts a length or a count it reads. */
#ifndef SUIDOCTL_BACKUP_MANIFEST_H
#define SUIDOCTL_BACKUP_MANIFEST_H
#include <stddef.h>
#include <stdint.h>

#include "cm_audit_checkpoint.h"
#include "cm_conf.h"
#include "cm_crypto.h"

#define BACKUP_FORMAT 1
#define BACKUP_HEX_SHA256 65 /* 64 lowercase hex characters and a NUL */

/* The files of a backup, in this order everywhere. */
enum { BACKUP_F_ARCHIVE, BACKUP_F_REGISTRY, BACKUP_F_COUNT };
extern const char *const BACKUP_FILE_NAME[BACKUP_F_COUNT]; /* "archive.db", "registry.db" */

/* What the signed manifest claims. */
typedef struct backup_manifest {
    long format;
    char deployment[BACKUP_HEX_SHA256];
    uint64_t created_ms;
    uint64_t size[BACKUP_F_COUNT];
    char sha256[BACKUP_F_COUNT][BACKUP_HEX_SHA256];
    uint64_t batches, readings, audit_seq, gateways;
    char audit_hash[BACKUP_HEX_SHA256];
    /* the registry's signed audit checkpoint at backup time (cm_audit_checkpoint.h), if it had
     * one: all four checkpoint_* fields or none; its signature is the caller's to check */
    int has_cp;
    uint64_t cp_seq, cp_ms;
    uint8_t cp_head[CM_AUDIT_HASH_LEN], cp_sig[CM_SIG_MAX];
    size_t cp_siglen;
} backup_manifest;

/* Parses the manifest's text (len bytes, NUL not needed) into *m. CM_OK, or CM_ERR_CONFIG with
 * why = "manifest: <reason>" (not a manifest, wrong format version, unknown key or file, a field
 * missing or malformed); *m is then only partly filled and must not be used. */
cm_err backup_manifest_parse(const char *text, size_t len, backup_manifest *m,
                             char why[CM_CONF_ERRLEN]);

#endif
