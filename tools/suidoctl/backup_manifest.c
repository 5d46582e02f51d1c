/* backup_manifest: see backup_manifest.h. */
#include "backup_manifest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MANIFEST "manifest"

const char *const BACKUP_FILE_NAME[BACKUP_F_COUNT] = {"archive.db", "registry.db"};

static const cm_conf_spec MANIFEST_SPEC[] = {
    {"backup", "format", 1, "manifest format version"},
    {"backup", "deployment", 1, "SHA-256 of the deployment CA certificate (DER)"},
    {"backup", "created_ms", 1, "when the snapshot was taken"},
    {"backup", "created", 0, "the same, ISO 8601, for people"},
    {"file", "size", 1, "bytes"},
    {"file", "sha256", 1, "SHA-256 of the file"},
    {"file", "batches", 0, "archive: stored batches"},
    {"file", "readings", 0, "archive: readings in those batches"},
    {"file", "audit_head_seq", 0, "archive: number of the audit log's last entry"},
    {"file", "audit_head_hash", 0, "archive: its chain hash"},
    {"file", "gateways", 0, "registry: gateways"},
    /* the registry's latest signed audit checkpoint when the backup was made (all four or none) */
    {"file", "checkpoint_seq", 0, "archive: entry number of the registry's signed audit head"},
    {"file", "checkpoint_hash", 0, "archive: its chain hash"},
    {"file", "checkpoint_ms", 0, "archive: when the registry signed it"},
    {"file", "checkpoint_sig", 0, "archive: the registry's signature (DER, hex)"},
    {NULL, NULL, 0, NULL},
};

static int is_hex64(const char *s)
{
    if (!s || strlen(s) != 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

/* Lowercase hex of at most max bytes into out; 0 for anything else (odd length, other
 * characters, too long, empty). */
static int parse_hex(const char *s, uint8_t *out, size_t max, size_t *len)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n % 2 || n / 2 > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    *len = n / 2;
    return 1;
}

/* Decimal without sign, spaces or overflow. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

cm_err backup_manifest_parse(const char *text, size_t len, backup_manifest *m,
                             char why[CM_CONF_ERRLEN])
{
    cm_conf *mc = NULL;
    cm_err rc = CM_ERR_CONFIG;
    char err[CM_CONF_ERRLEN];
    memset(m, 0, sizeof *m);
    why[0] = '\0';
    if (cm_conf_parse(MANIFEST, text, len, &mc, err) != CM_OK) {
        snprintf(why, CM_CONF_ERRLEN, "%s: not a backup manifest: %s", MANIFEST, err);
        goto out;
    }
    const char *fmt = cm_conf_get(mc, "backup", "format");
    uint64_t v = 0;
    if (!parse_u64(fmt, &v) || v != BACKUP_FORMAT) {
        snprintf(why, CM_CONF_ERRLEN,
                 "%s: wrong-version backup: manifest format %.64s, this suidoctl reads format %d "
                 "only",
                 MANIFEST, fmt ? fmt : "(none)", BACKUP_FORMAT);
        goto out;
    }
    m->format = (long)v;
    if (cm_conf_check(mc, MANIFEST_SPEC, err) != CM_OK) {
        snprintf(why, CM_CONF_ERRLEN, "%s: %s", MANIFEST, err);
        goto out;
    }
    for (size_t i = 0; i < cm_conf_section_count(mc); i++) {
        const char *s = cm_conf_section(mc, i);
        const char *name = cm_conf_section_name(s, "file");
        if (name && strcmp(name, BACKUP_FILE_NAME[BACKUP_F_ARCHIVE]) != 0 &&
            strcmp(name, BACKUP_FILE_NAME[BACKUP_F_REGISTRY]) != 0) {
            snprintf(why, CM_CONF_ERRLEN, "%s: lists an unknown file '%.128s'", MANIFEST, name);
            goto out;
        }
    }
    const char *dep = cm_conf_get(mc, "backup", "deployment");
    int fields = is_hex64(dep) && parse_u64(cm_conf_get(mc, "backup", "created_ms"),
                                            &m->created_ms);
    if (fields)
        snprintf(m->deployment, sizeof m->deployment, "%s", dep);
    for (int f = 0; f < BACKUP_F_COUNT && fields; f++) {
        char sec[64];
        snprintf(sec, sizeof sec, "file %s", BACKUP_FILE_NAME[f]);
        const char *h = cm_conf_get(mc, sec, "sha256");
        fields = parse_u64(cm_conf_get(mc, sec, "size"), &m->size[f]) && is_hex64(h);
        if (fields)
            snprintf(m->sha256[f], sizeof m->sha256[f], "%s", h);
    }
    const char *as = "file archive.db", *rs = "file registry.db";
    const char *ah = cm_conf_get(mc, as, "audit_head_hash");
    fields = fields && parse_u64(cm_conf_get(mc, as, "batches"), &m->batches) &&
             parse_u64(cm_conf_get(mc, as, "readings"), &m->readings) &&
             parse_u64(cm_conf_get(mc, as, "audit_head_seq"), &m->audit_seq) && is_hex64(ah) &&
             parse_u64(cm_conf_get(mc, rs, "gateways"), &m->gateways);
    if (!fields) {
        snprintf(why, CM_CONF_ERRLEN,
                 "%s: a required field is missing or malformed (both files need size and "
                 "sha256; the archive its counts and audit head)",
                 MANIFEST);
        goto out;
    }
    snprintf(m->audit_hash, sizeof m->audit_hash, "%s", ah);
    const char *cps = cm_conf_get(mc, as, "checkpoint_seq"), *cph = cm_conf_get(mc, as,
                                                                             "checkpoint_hash");
    const char *cpm = cm_conf_get(mc, as, "checkpoint_ms"), *cpg = cm_conf_get(mc, as,
                                                                             "checkpoint_sig");
    if (cps || cph || cpm || cpg) {
        size_t hl = 0;
        if (!parse_u64(cps, &m->cp_seq) || m->cp_seq == 0 || !parse_u64(cpm, &m->cp_ms) ||
            !parse_hex(cph, m->cp_head, sizeof m->cp_head, &hl) || hl != sizeof m->cp_head ||
            !parse_hex(cpg, m->cp_sig, sizeof m->cp_sig, &m->cp_siglen)) {
            snprintf(why, CM_CONF_ERRLEN,
                     "%s: the audit checkpoint (checkpoint_seq, _hash, _ms, _sig) is incomplete "
                     "or malformed",
                     MANIFEST);
            goto out;
        }
        m->has_cp = 1;
    }
    rc = CM_OK;
out:
    cm_conf_destroy(&mc);
    return rc;
}
