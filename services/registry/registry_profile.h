/* registry_profile: the registry's versions of the data profile (table profile_versions). The
 * registry is where the profile is loaded, checked, signed and versioned; the services fetch the
 * signed text from it (REG_GET_PROFILE) and verify the signature before they use it.
 *
 * A new version is taken only when it parses whole (cm_profile_load_text: file, line and reason
 * otherwise) and its [profile] version is higher than the current one; a file whose bytes did
 * not change is no new version. Anything else is refused and the current version stays in force.
 * Versions are kept forever (what was in force when is part of the record). */
#ifndef REGISTRY_PROFILE_H
#define REGISTRY_PROFILE_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_err.h"

cm_err registry_profile_init(sqlite3 *db);

typedef struct registry_profile_offer {
    int changed;                /* 1: a new version was stored */
    long old_version;           /* 0: there was none */
    long new_version;           /* the version in force afterwards */
    char digest[65];            /* of the version in force afterwards */
    char why[CM_CONF_ERRLEN];   /* refusal: file:line: reason, or the version rule */
} registry_profile_offer;

/* Reads path and takes it as the next version if it is one (see above), signed with signer.
 * CM_OK (changed or not), or the refusal's code with out->why. */
cm_err registry_profile_offer_file(sqlite3 *db, cm_signer *signer, const char *path,
                                   uint64_t now_ms, registry_profile_offer *out);

/* The version in force: its text and signature (caller frees both with free()). CM_ERR_UNKNOWN
 * when none was ever taken. */
cm_err registry_profile_current(sqlite3 *db, long *version, uint8_t **text, size_t *len,
                                uint8_t **sig, size_t *siglen);

#endif
