/* audit_check: see audit_check.h. */
#include "audit_check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

long ctl_lock_holder(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    int rc = fcntl(fd, F_GETLK, &fl);
    close(fd);
    if (rc != 0)
        return -1;
    if (fl.l_type == F_UNLCK)
        return 0;
    if (fl.l_pid > 0)
        return (long)fl.l_pid;
    errno = EBUSY; /* held, by a process this one cannot name */
    return -1;
}

int ctl_sqlite_at_rest(const char *path)
{
    static const char *const LOGS[] = {"-wal", "-journal"};
    char side[4200];
    struct stat st;
    if (ctl_lock_holder(path) != 0)
        return 0;
    for (size_t i = 0; i < sizeof LOGS / sizeof LOGS[0]; i++) {
        if (snprintf(side, sizeof side, "%s%s", path, LOGS[i]) >= (int)sizeof side)
            return 0;
        /* an empty log (left by a reader, or truncated at a checkpoint) holds nothing */
        if (stat(side, &st) == 0 ? st.st_size > 0 : errno != ENOENT)
            return 0;
    }
    return 1;
}

int ctl_sqlite_open(const char *path, cm_sql **out, char *why, size_t len)
{
    char uri[3 * 4096 + 64];
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "%s", strerror(errno));
        return 0;
    }
    close(fd);
    int at_rest = ctl_sqlite_at_rest(path);
    if (!ctl_sqlite_ro_uri(path, at_rest, uri, sizeof uri)) {
        snprintf(why, len, "%s", "path too long");
        return 0;
    }
    if (cm_sql_open_as(CM_SQL_SQLITE, uri, 1, out, why, len) != CM_OK)
        return 0;
    cm_sql_stmt *st = NULL;
    int ok = cm_sql_prepare(*out, "SELECT count(*) FROM sqlite_master", &st) == CM_OK &&
             cm_sql_step(st) == CM_SQL_ROW;
    cm_sql_finalize(&st);
    if (!ok) {
        snprintf(why, len, "%s%s", cm_sql_error(*out),
                 at_rest ? ""
                         : " (it is in use, or a log beside it holds changes not yet in it: "
                           "SQLite then needs its -shm file, which this user cannot open or "
                           "create there)");
        cm_sql_close(out);
    }
    return ok;
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
    if (!ctl_sqlite_open(path, out, why, sizeof why)) {
        fprintf(stderr, "suidoctl: %s: cannot open: %s\n", path, why);
        return 3;
    }
    return 0;
}
