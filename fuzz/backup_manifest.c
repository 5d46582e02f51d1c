/* Fuzz target: the backup manifest parser (tools/suidoctl/backup_manifest.c) that
 * `suidoctl backup verify|restore` runs on a backup directory's manifest. In the tool the parser
 * only sees a manifest whose signature verified; here it sees anything, as it would with a
 * compromised backup key or a bug in the signature check. */
#include <stdio.h>

#include "backup_manifest.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    backup_manifest m;
    char why[CM_CONF_ERRLEN];
    cm_err rc = backup_manifest_parse((const char *)data, size, &m, why);
    if (rc == CM_OK) {
        /* what the tool then prints and compares: terminated hex strings of 64 characters */
        if (strlen(m.deployment) != 64 || strlen(m.audit_hash) != 64 ||
            strlen(m.sha256[BACKUP_F_ARCHIVE]) != 64 || strlen(m.sha256[BACKUP_F_REGISTRY]) != 64 ||
            m.format != BACKUP_FORMAT)
            abort();
    } else if (strncmp(why, "manifest: ", 10) != 0) {
        abort(); /* every refusal names the file */
    }
    return 0;
}
