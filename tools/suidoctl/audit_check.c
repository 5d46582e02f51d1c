/* audit_check: see audit_check.h. */
#include "audit_check.h"

#include <stdio.h>
#include <string.h>

int ctl_sqlite_ro_uri(const char *path, int immutable, char *out, size_t len)
{
    size_t o = 0;
    int n = snprintf(out, len, "file:");
    if (n < 0 || (size_t)n >= len)
        return 0;
    o = (size_t)n;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (o + 4 >= len)
            return 0;
        if (*p == '%' || *p == '?' || *p == '#' || *p <= 0x20 || *p >= 0x7f)
            o += (size_t)snprintf(out + o, len - o, "%%%02X", *p);
        else
            out[o++] = (char)*p;
    }
    out[o] = '\0';
    n = snprintf(out + o, len - o, "?mode=ro%s", immutable ? "&immutable=1" : "");
    return n > 0 && (size_t)n < len - o;
}

int ctl_archive_open(const cm_conf *conf, cm_sql **out, char *label, size_t len)
{
    const char *pg = cm_conf_get(conf, "archive", "postgresql");
    const char *path = cm_conf_get(conf, "archive", "database");
    char why[600];
    *out = NULL;
    if (pg && *pg && path && *path) {
        fprintf(stderr, "suidoctl: %s: [archive] names both database and postgresql: give one\n",
                cm_conf_name(conf));
        return 2;
    }
    if (pg && *pg) {
        static char conninfo[8192];
        snprintf(label, len, "%s", pg);
        cm_err rc = cm_sql_read_conninfo(pg, conninfo, sizeof conninfo, why, sizeof why);
        if (rc != CM_OK) {
            fprintf(stderr, "suidoctl: %s: [archive] postgresql %s\n", cm_conf_name(conf), why);
            return 2;
        }
        rc = cm_sql_open_as(CM_SQL_POSTGRESQL, conninfo, 1, out, why, sizeof why);
        explicit_bzero(conninfo, sizeof conninfo);
        if (rc != CM_OK) {
            fprintf(stderr, "suidoctl: PostgreSQL archive (%s) unreachable or refused: %s\n", pg,
                    why);
            return 3;
        }
        return 0;
    }
    if (!path || !*path) {
        fprintf(stderr, "suidoctl: %s: [archive] database (or postgresql) is not set\n",
                cm_conf_name(conf));
        return 2;
    }
    snprintf(label, len, "%s", path);
    char uri[3 * 4096 + 64];
    snprintf(why, sizeof why, "%s", "path too long");
    if (!ctl_sqlite_ro_uri(path, 0, uri, sizeof uri) ||
        cm_sql_open_as(CM_SQL_SQLITE, uri, 1, out, why, sizeof why) != CM_OK) {
        fprintf(stderr, "suidoctl: %s: cannot open: %s\n", path, why);
        return 3;
    }
    return 0;
}
