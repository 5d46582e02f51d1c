/* registry_profile: see registry_profile.h. */
#include "registry_profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_profile.h"

cm_err registry_profile_init(sqlite3 *db)
{
    return sqlite3_exec(db,
                        "CREATE TABLE IF NOT EXISTS profile_versions("
                        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL,"
                        " text BLOB NOT NULL, signature BLOB NOT NULL, loaded_ms INTEGER NOT NULL)",
                        NULL, NULL, NULL) == SQLITE_OK
               ? CM_OK
               : CM_ERR_DB;
}

/* Version and digest in force (0 and "" when none). */
static cm_err current_head(sqlite3 *db, long *version, char digest[65])
{
    sqlite3_stmt *st;
    *version = 0;
    digest[0] = '\0';
    if (sqlite3_prepare_v2(db, "SELECT version, digest FROM profile_versions"
                               " ORDER BY version DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = (long)sqlite3_column_int64(st, 0);
        snprintf(digest, 65, "%s", (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err registry_profile_offer_file(sqlite3 *db, cm_signer *signer, const char *path,
                                   uint64_t now_ms, registry_profile_offer *out)
{
    memset(out, 0, sizeof *out);
    cm_err rc = current_head(db, &out->old_version, out->digest);
    out->new_version = out->old_version;
    if (rc != CM_OK) {
        snprintf(out->why, sizeof out->why, "registry database: %s", sqlite3_errmsg(db));
        return rc;
    }
    size_t len = 0;
    char *text = NULL;
    if ((rc = cm_conf_read_file(path, &text, &len, out->why)) != CM_OK)
        return rc;
    cm_profile *p = NULL;
    char digest[65] = "";
    rc = cm_profile_load_text(path, text, len, &p, out->why);
    if (rc == CM_OK)
        rc = cm_profile_digest(p, digest);
    if (rc != CM_OK)
        goto out;
    if (strcmp(digest, out->digest) == 0)
        goto out; /* the version in force, again */
    long version = cm_profile_version(p);
    if (version <= out->old_version) {
        snprintf(out->why, sizeof out->why,
                 "%s: [profile] version %ld: a changed profile needs a version above %ld, the "
                 "one in force", path, version, out->old_version);
        rc = CM_ERR_INVAL;
        goto out;
    }
    uint8_t sig[CM_SIG_MAX];
    size_t siglen = 0;
    sqlite3_stmt *st = NULL;
    if ((rc = cm_sign_domain(signer, CM_PROFILE_DOMAIN, (const uint8_t *)text, len, sig,
                             &siglen)) != CM_OK) {
        snprintf(out->why, sizeof out->why, "cannot sign the profile");
        goto out;
    }
    if (sqlite3_prepare_v2(db, "INSERT INTO profile_versions(version, name, digest, text,"
                               " signature, loaded_ms) VALUES(?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = CM_ERR_DB;
        goto out;
    }
    sqlite3_bind_int64(st, 1, version);
    sqlite3_bind_text(st, 2, cm_profile_name(p), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, digest, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 4, text, (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 5, sig, (int)siglen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)now_ms);
    rc = sqlite3_step(st) == SQLITE_DONE ? CM_OK : CM_ERR_DB;
    sqlite3_finalize(st);
    if (rc != CM_OK) {
        snprintf(out->why, sizeof out->why, "registry database: %s", sqlite3_errmsg(db));
        goto out;
    }
    out->changed = 1;
    out->new_version = version;
    snprintf(out->digest, sizeof out->digest, "%s", digest);
out:
    cm_profile_destroy(&p);
    free(text);
    return rc;
}

cm_err registry_profile_current(sqlite3 *db, long *version, uint8_t **text, size_t *len,
                                uint8_t **sig, size_t *siglen)
{
    *text = *sig = NULL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT version, text, signature FROM profile_versions"
                               " ORDER BY version DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    cm_err rc = CM_ERR_UNKNOWN;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *version = (long)sqlite3_column_int64(st, 0);
        *len = (size_t)sqlite3_column_bytes(st, 1);
        *siglen = (size_t)sqlite3_column_bytes(st, 2);
        *text = malloc(*len ? *len : 1);
        *sig = malloc(*siglen ? *siglen : 1);
        if (*text && *sig) {
            memcpy(*text, sqlite3_column_blob(st, 1), *len);
            memcpy(*sig, sqlite3_column_blob(st, 2), *siglen);
            rc = CM_OK;
        } else {
            free(*text);
            free(*sig);
            *text = *sig = NULL;
            rc = CM_ERR_NOMEM;
        }
    }
    sqlite3_finalize(st);
    return rc;
}
