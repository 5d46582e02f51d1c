/* backup: see backup.h. Run by an operator (or a timer) as `suidoctl backup ...`; it reads the
 * live databases read-only through SQLite, the deployment CA certificate and the backup keys
 * named in suidoctl.conf, and talks to no service. */
#include "backup.h"
#include "sparkplug_b.pb-c.h"
#include "backup_manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "audit_check.h"
#include "cm_audit_checkpoint.h"
#include "backup_pg.h"
#include "cm_crypto.h"
#include "ctl_msg.h"
#include "cm_time.h"
#include "suido.pb-c.h"

enum { B_OK = 0, B_FAILED = 1, B_USAGE = 2, B_UNAVAILABLE = 3 };

#define MANIFEST "manifest"
#define MANIFEST_SIG "manifest.sig"
#define MANIFEST_MAX (64 * 1024)
#define SIG_FILE_MAX (4 * CM_SIG_MAX)
#define MAX_PROBLEMS 24       /* reasons kept for the report; the rest are only counted */
#define MAX_BATCH_DETAILS 10  /* failed batches named one by one */
#define MAX_DISPOSED_NAMES 8
#define HEX_SHA256 65
#define PATH_LEN_MAX 4000 /* longest DIR or STATEDIR accepted (file names are added to it) */

/* the backup's files, in the manifest's order (backup_manifest.h) */
enum { F_ARCHIVE = BACKUP_F_ARCHIVE, F_REGISTRY = BACKUP_F_REGISTRY, F__COUNT = BACKUP_F_COUNT };
#define FILE_NAME BACKUP_FILE_NAME
static const char *const SUBDIR[F__COUNT] = {"archive", "registry"};

typedef backup_manifest manifest;

/* What a check of the two databases found. */
typedef struct content {
    uint64_t batches, readings, gateways;
    cm_audit_check_result audit;
    uint64_t sig_ok, sig_disposed, sig_failed;
    uint64_t sig_transport; /* Sparkplug records: not signed, authenticated by TLS at the broker */
    char disposed[MAX_DISPOSED_NAMES][65]; /* gateways whose batches are unverifiable */
    size_t n_disposed, more_disposed;
    int checked_signatures;
} content;

/* Everything one command found, printed once at the end. */
typedef struct report {
    const char *dir;
    int json;
    int signature_ok, manifest_ok;
    char key_id[CM_KEY_ID_LEN + 1];
    manifest m;
    char deployment[HEX_SHA256]; /* this deployment's id */
    int file_checked[F__COUNT], file_ok[F__COUNT], integrity_ok[F__COUNT];
    uint64_t file_size[F__COUNT];
    content c;
    char *problems[MAX_PROBLEMS];
    size_t n_problems, more_problems;
    const char *restore_to; /* restore only */
    int restored;
} report;

/* ------------------------------------------------------------------ reporting */


/* Records one reason for refusing: "FILE: what is wrong". */
static void problem(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(report *r, const char *fmt, ...)
{
    if (r->n_problems == MAX_PROBLEMS) {
        r->more_problems++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (s)
        r->problems[r->n_problems++] = s;
    else
        r->more_problems++;
}

static int failed(const report *r) { return r->n_problems + r->more_problems > 0; }

static void report_free(report *r)
{
    for (size_t i = 0; i < r->n_problems; i++)
        free(r->problems[i]);
    r->n_problems = 0;
}

static void json_string(const char *v)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void print_json(const report *r)
{
    printf("{\"ok\":%s,\"dir\":", failed(r) ? "false" : "true");
    json_string(r->dir);
    printf(",\"signature_ok\":%s,\"backup_key_id\":", r->signature_ok ? "true" : "false");
    json_string(r->key_id);
    if (r->manifest_ok) {
        printf(",\"format\":%ld,\"deployment\":", r->m.format);
        json_string(r->m.deployment);
        printf(",\"created_ms\":%" PRIu64 ",\"checkpoint_seq\":%" PRIu64, r->m.created_ms,
               r->m.has_cp ? r->m.cp_seq : 0);
    }
    printf(",\"files\":[");
    for (int f = 0; f < F__COUNT; f++) {
        printf("%s{\"name\":\"%s\",\"checked\":%s,\"size\":%" PRIu64 ",\"hash_ok\":%s,"
               "\"integrity_ok\":%s}",
               f ? "," : "", FILE_NAME[f], r->file_checked[f] ? "true" : "false",
               r->file_size[f], r->file_ok[f] ? "true" : "false",
               r->integrity_ok[f] ? "true" : "false");
    }
    printf("],\"batches\":%" PRIu64 ",\"readings\":%" PRIu64 ",\"gateways\":%" PRIu64
           ",\"audit_entries\":%" PRIu64 ",\"audit_head\":",
           r->c.batches, r->c.readings, r->c.gateways, r->c.audit.entries);
    json_string(r->c.audit.head_hex);
    printf(",\"signatures\":{\"checked\":%s,\"verified\":%" PRIu64
           ",\"unverifiable_disposed\":%" PRIu64 ",\"transport\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"disposed_gateways\":[",
           r->c.checked_signatures ? "true" : "false", r->c.sig_ok, r->c.sig_disposed,
           r->c.sig_transport, r->c.sig_failed);
    for (size_t i = 0; i < r->c.n_disposed; i++) {
        if (i)
            putchar(',');
        json_string(r->c.disposed[i]);
    }
    printf("]},\"problems\":[");
    for (size_t i = 0; i < r->n_problems; i++) {
        if (i)
            putchar(',');
        json_string(r->problems[i]);
    }
    printf("],\"more_problems\":%zu", r->more_problems);
    if (r->restore_to) {
        printf(",\"restore_to\":");
        json_string(r->restore_to);
        printf(",\"restored\":%s", r->restored ? "true" : "false");
    }
    printf("}\n");
}

static void print_signature_line(const content *c)
{
    printf("  batches      %" PRIu64 " (%" PRIu64 " readings): %" PRIu64
           " signatures verified, %" PRIu64 " unverifiable (gateway disposed",
           c->batches, c->readings, c->sig_ok, c->sig_disposed);
    for (size_t i = 0; i < c->n_disposed; i++)
        printf("%s%s", i ? ", " : ": ", c->disposed[i]);
    if (c->more_disposed)
        printf(" and %zu more", c->more_disposed);
    printf("), %" PRIu64 " failed\n", c->sig_failed);
    if (c->sig_transport)
        printf("               %" PRIu64 " transport only: Sparkplug B records, authenticated by "
               "their node's TLS identity at the broker, not signed (nothing to re-verify)\n",
               c->sig_transport);
}

/* The summary of a successful verify (stdout) or the reasons of a refusal (stderr). */
static void print_report(const report *r, const char *what)
{
    if (r->json)
        print_json(r);
    if (failed(r)) {
        ctl_say("backup %s REFUSED: %s", r->dir, r->n_problems ? r->problems[0] : "too many problems");
        for (size_t i = 1; i < r->n_problems; i++)
            ctl_say("  also: %s", r->problems[i]);
        if (r->more_problems)
            ctl_say("  and %zu more problem(s)", r->more_problems);
        return;
    }
    if (r->json)
        return;
    char created[32];
    cm_time_iso(r->m.created_ms, created, sizeof created);
    printf("backup %s: %s\n", r->dir, what);
    printf("  manifest     format %ld, created %s, signature ok (backup key %s, %s)\n",
           r->m.format, created, r->key_id, BACKUP_DOMAIN);
    printf("  deployment   %s (this deployment's CA)\n", r->m.deployment);
    for (int f = 0; f < F__COUNT; f++)
        printf("  %-12s %" PRIu64 " bytes, sha256 ok, integrity ok\n", FILE_NAME[f],
               r->file_size[f]);
    printf("  audit chain  %" PRIu64 " entries intact, head %s (as in the manifest)\n",
           r->c.audit.entries, r->c.audit.head_hex);
    if (r->m.has_cp)
        printf("  checkpoint   entry %" PRIu64 " as the registry signed it: reached\n",
               r->m.cp_seq);
    else
        printf("  checkpoint   none in the manifest (the registry had signed none)\n");
    printf("  registry     %" PRIu64 " gateways\n", r->c.gateways);
    print_signature_line(&r->c);
}

/* ------------------------------------------------------------------ files */

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* The manifest's checkpoint as a message (borrowing m's bytes). */
static Suido__AuditCheckpoint manifest_checkpoint(const manifest *m)
{
    Suido__AuditCheckpoint cp = SUIDO__AUDIT_CHECKPOINT__INIT;
    cp.seq = m->cp_seq;
    cp.ts_ms = m->cp_ms;
    cp.head_sha256.data = (uint8_t *)m->cp_head;
    cp.head_sha256.len = sizeof m->cp_head;
    cp.signature.data = (uint8_t *)m->cp_sig;
    cp.signature.len = m->cp_siglen;
    return cp;
}

static void join(char *out, size_t len, const char *dir, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* Reads a whole regular file of at most max bytes (never through a symlink) into a malloc'd,
 * NUL-terminated buffer. On failure returns 0 with *why set. */
static int read_small(const char *path, size_t max, uint8_t **out, size_t *len, const char **why)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *why = errno == ENOENT ? "missing" : strerror(errno);
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        *why = "not a regular file";
        if (S_ISREG(st.st_mode))
            *why = "too large";
        close(fd);
        return 0;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    ssize_t n = 0;
    while (buf && got < (size_t)st.st_size &&
           (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
        got += (size_t)n;
    close(fd);
    if (!buf || got != (size_t)st.st_size) {
        free(buf);
        *why = buf ? "read error" : "out of memory";
        return 0;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 1;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

static int fsync_path(const char *path, int directory)
{
    int fd = open(path, (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int ok = fsync(fd) == 0;
    close(fd);
    return ok;
}

/* The directory that holds path ("." for a bare name). */
static void parent_of(const char *path, char *out, size_t len)
{
    snprintf(out, len, "%s", path);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(out, len, ".");
    else if (slash == out)
        out[1] = '\0';
    else
        *slash = '\0';
}

/* Size and SHA-256 of a regular file (never through a symlink); with out_fd >= 0 every byte read
 * is also written there. On failure returns 0 with *why set. */
static int hash_file(const char *path, int out_fd, uint64_t *size, char hexout[HEX_SHA256],
                     const char **why)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *why = errno == ENOENT ? "missing" : strerror(errno);
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *why = "not a regular file";
        close(fd);
        return 0;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    static uint8_t buf[1 << 16];
    uint64_t total = 0;
    ssize_t n;
    *why = "read error";
    while (ok && (n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) {
            ok = errno == EINTR;
            continue;
        }
        total += (uint64_t)n;
        ok = EVP_DigestUpdate(md, buf, (size_t)n) == 1;
        if (ok && out_fd >= 0 && !write_all(out_fd, buf, (size_t)n)) {
            *why = strerror(errno);
            ok = 0;
        }
    }
    uint8_t d[32];
    unsigned int dl = 0;
    ok = ok && EVP_DigestFinal_ex(md, d, &dl) == 1 && dl == 32;
    EVP_MD_CTX_free(md);
    close(fd);
    if (!ok)
        return 0;
    hex(d, 32, hexout);
    *size = total;
    return 1;
}

/* ------------------------------------------------------------------ databases */

/* Opens the SQLite file path read-only (immutable: a finished copy, see ctl_sqlite_ro_uri); 0
 * with the reason in why when it cannot. */
static int db_open_ro(const char *path, int immutable, cm_sql **db, char *why, size_t len)
{
    char uri[3 * 4096 + 64];
    *db = NULL;
    if (!ctl_sqlite_ro_uri(path, immutable, uri, sizeof uri)) {
        snprintf(why, len, "%s", "path too long");
        return 0;
    }
    return cm_sql_open_as(CM_SQL_SQLITE, uri, 1, db, why, len) == CM_OK;
}

/* PRAGMA integrity_check of a SQLite file: 1 when it says "ok"; else its first finding in msg. */
static int integrity_ok(cm_sql *db, char *msg, size_t len)
{
    cm_sql_stmt *st = NULL;
    int ok = 0;
    snprintf(msg, len, "%s", "integrity_check could not run");
    if (cm_sql_prepare(db, "PRAGMA integrity_check", &st) == CM_OK &&
        cm_sql_step(st) == CM_SQL_ROW) {
        const char *t = cm_sql_column_text(st, 0);
        ok = strcmp(t, "ok") == 0;
        snprintf(msg, len, "%s", *t ? t : "no answer");
    } else {
        snprintf(msg, len, "%s", cm_sql_error(db));
    }
    cm_sql_finalize(&st);
    return ok;
}

/* The two integers of a one-row query; 0 when the query fails. */
static int query_u64s(cm_sql *db, const char *sql, uint64_t *a, uint64_t *b)
{
    cm_sql_stmt *st = NULL;
    int ok = cm_sql_prepare(db, sql, &st) == CM_OK && cm_sql_step(st) == CM_SQL_ROW;
    if (ok) {
        *a = (uint64_t)cm_sql_column_int64(st, 0);
        *b = (uint64_t)cm_sql_column_int64(st, 1);
    }
    cm_sql_finalize(&st);
    return ok;
}

/* Counts and audit chain of an archive; label names the file in the problems. */
static int archive_facts(cm_sql *db, const char *label, content *c, report *r)
{
    if (!query_u64s(db, "SELECT count(*), coalesce(sum(readings), 0) FROM batches", &c->batches,
                    &c->readings)) {
        problem(r, "%s: cannot count the batches: %s", label, cm_sql_error(db));
        return 0;
    }
    if (cm_audit_check_db(db, &c->audit) != CM_OK) {
        problem(r, "%s: cannot read the audit log: %s", label, cm_sql_error(db));
        return 0;
    }
    if (c->audit.why) {
        problem(r, "%s: audit log BROKEN at entry %" PRIu64 " (position %" PRIu64 "): %s", label,
                c->audit.bad_seq, c->audit.rows, c->audit.why);
        return 0;
    }
    if (c->audit.read_error) {
        problem(r, "%s: audit log unreadable after entry %" PRIu64 ": %s", label,
                c->audit.entries, cm_sql_error(db));
        return 0;
    }
    return 1;
}

static int registry_facts(cm_sql *db, const char *label, content *c, report *r)
{
    uint64_t unused = 0;
    int ok = query_u64s(db, "SELECT count(*), 0 FROM gateways", &c->gateways, &unused);
    if (!ok)
        problem(r, "%s: cannot read the gateways: %s", label, cm_sql_error(db));
    return ok;
}

typedef struct gwkey {
    char *id;
    int disposed;
    cm_pubkey *key; /* NULL when disposed or unusable */
} gwkey;

static int gwkey_cmp(const void *a, const void *b)
{
    return strcmp(((const gwkey *)a)->id, ((const gwkey *)b)->id);
}

static void gwkeys_free(gwkey *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(k[i].id);
        cm_pubkey_destroy(&k[i].key);
    }
    free(k);
}

/* Every gateway's signing key from a registry database. */
static int load_gwkeys(cm_sql *reg, const char *label, gwkey **out, size_t *n, report *r)
{
    cm_sql_stmt *st = NULL;
    gwkey *k = NULL;
    size_t cnt = 0, cap = 0;
    *out = NULL;
    *n = 0;
    if (cm_sql_prepare(reg, "SELECT id, state, sign_pub FROM gateways", &st) != CM_OK) {
        problem(r, "%s: cannot read the gateways' keys: %s", label, cm_sql_error(reg));
        return 0;
    }
    int rc;
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
        if (cm_sql_column_is_null(st, 0))
            continue;
        const char *id = cm_sql_column_text(st, 0);
        if (cnt == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            gwkey *nk = realloc(k, ncap * sizeof *nk);
            if (!nk)
                break;
            k = nk;
            cap = ncap;
        }
        gwkey *g = &k[cnt];
        memset(g, 0, sizeof *g);
        if (!(g->id = strdup(id)))
            break;
        cnt++;
        g->disposed = cm_sql_column_int64(st, 1) == SUIDO__ENTITY_STATE__STATE_DISPOSED;
        size_t len = 0;
        const void *der = cm_sql_column_blob(st, 2, &len);
        /* a key that does not parse stays NULL and fails its batches, with the reason */
        if (!g->disposed && der && len > 0)
            cm_pubkey_from_der(der, len, &g->key);
    }
    cm_sql_finalize(&st);
    if (rc != CM_SQL_DONE) {
        problem(r, "%s: reading the gateways' keys failed: %s", label,
                rc == CM_SQL_ROW ? "out of memory" : cm_sql_error(reg));
        gwkeys_free(k, cnt);
        return 0;
    }
    if (cnt)
        qsort(k, cnt, sizeof *k, gwkey_cmp);
    *out = k;
    *n = cnt;
    return 1;
}

static void batch_failed(content *c, report *r, const char *label, const char *gw, int64_t epoch,
                         int64_t seq, const char *why)
{
    if (c->sig_failed++ < MAX_BATCH_DETAILS)
        problem(r, "%s: batch %s/%" PRId64 "/%" PRId64 ": %s", label, gw, epoch, seq, why);
}

static void note_disposed(content *c, const char *gw)
{
    for (size_t i = 0; i < c->n_disposed; i++)
        if (strcmp(c->disposed[i], gw) == 0)
            return;
    if (c->n_disposed == MAX_DISPOSED_NAMES) {
        c->more_disposed++;
        return;
    }
    snprintf(c->disposed[c->n_disposed++], sizeof c->disposed[0], "%s", gw);
}

/* One stored batch against its gateway's key. */
static void check_batch(const gwkey *keys, size_t nkeys, const gwkey **g, cm_sql_stmt *st,
                        const char *alabel, content *c, report *r)
{
    const char *gw = cm_sql_column_text(st, 0);
    int64_t epoch = cm_sql_column_int64(st, 1), seq = cm_sql_column_int64(st, 2);
    int64_t readings = cm_sql_column_int64(st, 3);
    size_t env_len = 0;
    const uint8_t *env_bytes = cm_sql_column_blob(st, 4, &env_len);
    if (!*g || strcmp((*g)->id, gw) != 0) {
        gwkey probe = {.id = (char *)gw};
        *g = nkeys ? bsearch(&probe, keys, nkeys, sizeof *keys, gwkey_cmp) : NULL;
    }
    if (!*g) {
        batch_failed(c, r, alabel, gw, epoch, seq, "its gateway is not in the registry");
        return;
    }
    if (strcmp(cm_sql_column_text(st, 5), "transport") == 0) {
        /* a Sparkplug node's payload as received: nothing was signed, so nothing re-verifies;
         * what is checked is that the record is still a Sparkplug payload */
        Org__Eclipse__Tahu__Protobuf__Payload *p =
            org__eclipse__tahu__protobuf__payload__unpack(NULL, env_len, env_bytes);
        if (p)
            c->sig_transport++;
        else
            batch_failed(c, r, alabel, gw, epoch, seq, "its Sparkplug payload does not decode");
        org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
        return;
    }
    if ((*g)->disposed) {
        c->sig_disposed++;
        note_disposed(c, gw);
        return;
    }
    if (!(*g)->key) {
        batch_failed(c, r, alabel, gw, epoch, seq,
                     "its gateway's signing key in the registry is missing or unusable");
        return;
    }
    Suido__SignedEnvelope *env =
        env_bytes ? suido__signed_envelope__unpack(NULL, env_len, env_bytes) : NULL;
    Suido__Header *h = NULL;
    const char *why = NULL;
    if (!env || env->base.n_unknown_fields)
        why = "malformed envelope";
    else if (cm_pubkey_verify((*g)->key, env->header.data, env->header.len, env->body.data,
                              env->body.len, env->signature.data, env->signature.len) != CM_OK)
        why = "SIGNATURE DOES NOT VERIFY with its gateway's key (altered after it was signed)";
    else if (!(h = suido__header__unpack(NULL, env->header.len, env->header.data)) ||
             !h->gateway_id || strcmp(h->gateway_id, gw) != 0 ||
             h->boot_epoch != (uint64_t)epoch || h->seq != (uint64_t)seq ||
             (int64_t)h->reading_count != readings)
        why = "the signed header does not match the row it is stored under";
    if (h)
        suido__header__free_unpacked(h, NULL);
    if (env)
        suido__signed_envelope__free_unpacked(env, NULL);
    if (why)
        batch_failed(c, r, alabel, gw, epoch, seq, why);
    else
        c->sig_ok++;
}

#define BATCH_COLS "SELECT gateway, boot_epoch, seq, readings, envelope, status FROM batches "
#define BATCH_PAGE 1000

/* Re-verifies every stored batch envelope: its signature over (header, body) with the signing key
 * that the registry holds for its gateway (exactly as the verifier checked it on arrival), and
 * that the signed header names the row it is stored under. The batches are read in pages along
 * their primary key, so memory stays bounded however large the archive. */
static int check_signatures(cm_sql *arch, const char *alabel, cm_sql *reg, const char *rlabel,
                            content *c, report *r)
{
    gwkey *keys = NULL;
    size_t nkeys = 0;
    if (!load_gwkeys(reg, rlabel, &keys, &nkeys, r))
        return 0;
    c->checked_signatures = 1;
    c->sig_ok = c->sig_disposed = c->sig_failed = c->sig_transport = 0;
    cm_sql_stmt *first = NULL, *next = NULL;
    if (cm_sql_prepare(arch, BATCH_COLS "ORDER BY gateway, boot_epoch, seq LIMIT 1000", &first) !=
            CM_OK ||
        cm_sql_prepare(arch,
                       BATCH_COLS "WHERE gateway > ? OR (gateway = ? AND (boot_epoch > ? OR"
                                  " (boot_epoch = ? AND seq > ?)))"
                                  " ORDER BY gateway, boot_epoch, seq LIMIT 1000",
                       &next) != CM_OK) {
        problem(r, "%s: cannot read the batches: %s", alabel, cm_sql_error(arch));
        cm_sql_finalize(&first);
        gwkeys_free(keys, nkeys);
        return 0;
    }
    const gwkey *g = NULL;
    cm_sql_stmt *st = first;
    char last_gw[128] = "";
    int rc;
    for (;;) {
        int rows = 0;
        int64_t last_epoch = 0, last_seq = 0;
        while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
            check_batch(keys, nkeys, &g, st, alabel, c, r);
            snprintf(last_gw, sizeof last_gw, "%s", cm_sql_column_text(st, 0));
            last_epoch = cm_sql_column_int64(st, 1);
            last_seq = cm_sql_column_int64(st, 2);
            rows++;
        }
        if (rc != CM_SQL_DONE || rows < BATCH_PAGE)
            break;
        st = next;
        cm_sql_reset(st);
        cm_sql_bind_text(st, 1, last_gw);
        cm_sql_bind_text(st, 2, last_gw);
        cm_sql_bind_int64(st, 3, last_epoch);
        cm_sql_bind_int64(st, 4, last_epoch);
        cm_sql_bind_int64(st, 5, last_seq);
    }
    cm_sql_finalize(&first);
    cm_sql_finalize(&next);
    gwkeys_free(keys, nkeys);
    if (rc != CM_SQL_DONE) {
        problem(r, "%s: reading the batches failed: %s", alabel, cm_sql_error(arch));
        return 0;
    }
    if (c->sig_failed > MAX_BATCH_DETAILS)
        problem(r, "%s: and %" PRIu64 " more batches failed their signature check", alabel,
                c->sig_failed - MAX_BATCH_DETAILS);
    return c->sig_failed == 0;
}

/* The facts of an open archive and registry and, with sigs, every batch signature; compared with
 * m when it is given. Labels name the databases in the problems. */
static int check_open(cm_sql *arch, const char *alabel, cm_sql *reg, const char *rlabel,
                      const manifest *m, int sigs, content *c, report *r)
{
    if (!archive_facts(arch, alabel, c, r) || !registry_facts(reg, rlabel, c, r))
        return 0;
    int ok = 1;
    if (m) {
        if (c->batches != m->batches || c->readings != m->readings) {
            problem(r,
                    "%s: holds %" PRIu64 " batches / %" PRIu64 " readings, the manifest says "
                    "%" PRIu64 " / %" PRIu64,
                    alabel, c->batches, c->readings, m->batches, m->readings);
            ok = 0;
        }
        if (c->audit.entries != m->audit_seq || strcmp(c->audit.head_hex, m->audit_hash) != 0) {
            problem(r,
                    "%s: audit chain head is entry %" PRIu64 " %s, the manifest says %" PRIu64
                    " %s (entries cut off or added)",
                    alabel, c->audit.entries, c->audit.head_hex, m->audit_seq, m->audit_hash);
            ok = 0;
        }
        if (c->gateways != m->gateways) {
            problem(r, "%s: holds %" PRIu64 " gateways, the manifest says %" PRIu64, rlabel,
                    c->gateways, m->gateways);
            ok = 0;
        }
        if (m->has_cp) {
            /* the log must reach the head the registry had signed when the backup was made */
            Suido__AuditCheckpoint cp = manifest_checkpoint(m);
            char why[400];
            int reached = cm_audit_checkpoint_reached(arch, &c->audit, &cp, why, sizeof why);
            if (reached <= 0) {
                problem(r, "%s: audit log TRUNCATED against the manifest's checkpoint: %s",
                        alabel, reached < 0 ? cm_sql_error(arch) : why);
                ok = 0;
            }
        }
    }
    if (sigs && !check_signatures(arch, alabel, reg, rlabel, c, r))
        ok = 0;
    return ok;
}

/* check_open on two SQLite files; immutable: finished copies (see db_open_ro), else live
 * databases read through their WAL. */
static int check_databases(const char *apath, const char *alabel, const char *rpath,
                           const char *rlabel, int immutable, const manifest *m, int sigs,
                           content *c, report *r)
{
    cm_sql *arch = NULL, *reg = NULL;
    char why[512];
    int ok = 0;
    if (!db_open_ro(apath, immutable, &arch, why, sizeof why)) {
        problem(r, "%s: cannot open: %s", alabel, why);
        goto out;
    }
    if (!db_open_ro(rpath, immutable, &reg, why, sizeof why)) {
        problem(r, "%s: cannot open: %s", rlabel, why);
        goto out;
    }
    ok = check_open(arch, alabel, reg, rlabel, m, sigs, c, r);
out:
    cm_sql_close(&arch);
    cm_sql_close(&reg);
    return ok;
}

static int check_content(const char *apath, const char *alabel, const char *rpath,
                         const char *rlabel, const manifest *m, int sigs, content *c, report *r)
{
    return check_databases(apath, alabel, rpath, rlabel, 1, m, sigs, c, r);
}

/* ------------------------------------------------------------------ configuration */

static int conf_need(const cm_conf *conf, const char *section, const char *key, const char *why,
                     const char **out)
{
    *out = cm_conf_get(conf, section, key);
    if (*out && **out)
        return 1;
    ctl_say("%s: [%s] %s is not set (%s)", cm_conf_name(conf), section, key, why);
    return 0;
}

/* This deployment's id: SHA-256 of its CA certificate's DER. */
static int deployment_id(const cm_conf *conf, char out[HEX_SHA256])
{
    const char *ca;
    if (!conf_need(conf, "backup", "ca", "the deployment CA certificate: its SHA-256 is the "
                                         "deployment id of a backup", &ca))
        return B_USAGE;
    cm_cert_info ci;
    if (cm_cert_info_load(ca, &ci) != CM_OK) {
        ctl_say("%s: [backup] ca: %s is not a readable PEM certificate", cm_conf_name(conf), ca);
        return B_FAILED;
    }
    snprintf(out, HEX_SHA256, "%s", ci.sha256);
    return B_OK;
}

/* ------------------------------------------------------------------ manifest */

/* Checks the signature of DIR/manifest, then parses it. Each failure is a problem naming the
 * file; returns 1 when the manifest is authentic, of a format this tool reads, and of this
 * deployment. */
static int read_manifest(const cm_conf *conf, const char *dir, report *r)
{
    const char *keyf;
    char mpath[4200], spath[4200];
    uint8_t *text = NULL, *sig = NULL;
    size_t tlen = 0, slen = 0;
    const char *why = "";
    cm_pubkey *key = NULL;
    int ok = 0;
    if (!conf_need(conf, "backup", "verify_key", "the backup verification public key", &keyf))
        return -1;
    join(mpath, sizeof mpath, dir, MANIFEST);
    join(spath, sizeof spath, dir, MANIFEST_SIG);
    if (cm_pubkey_load_pem(keyf, &key) != CM_OK) {
        problem(r, "%s: [backup] verify_key %s is not a P-256 public key", cm_conf_name(conf),
                keyf);
        goto out;
    }
    snprintf(r->key_id, sizeof r->key_id, "%s", cm_pubkey_key_id(key));
    if (!read_small(mpath, MANIFEST_MAX, &text, &tlen, &why)) {
        problem(r, "%s: %s (not a backup, or an incomplete one)", MANIFEST, why);
        goto out;
    }
    if (!read_small(spath, SIG_FILE_MAX, &sig, &slen, &why)) {
        problem(r, "%s: %s (an unsigned or incomplete backup)", MANIFEST_SIG, why);
        goto out;
    }
    if (cm_verify_domain(key, BACKUP_DOMAIN, text, tlen, sig, slen) != CM_OK) {
        problem(r,
                "%s: the manifest's signature does not verify with this deployment's backup key "
                "%s (%s): the manifest was edited, or the backup is foreign or forged",
                MANIFEST_SIG, r->key_id, keyf);
        goto out;
    }
    r->signature_ok = 1;
    char why_m[CM_CONF_ERRLEN];
    manifest *m = &r->m;
    if (backup_manifest_parse((const char *)text, tlen, m, why_m) != CM_OK) {
        problem(r, "%s", why_m);
        goto out;
    }
    if (m->has_cp) {
        /* signed by the backup key with the manifest; the registry's own signature is checked
         * too when this suidoctl knows its key */
        const char *ckey = cm_conf_get(conf, "registry", "checkpoint_key");
        cm_pubkey *rk = NULL;
        if (ckey && *ckey) {
            Suido__AuditCheckpoint cp = manifest_checkpoint(m);
            if (cm_pubkey_load_pem(ckey, &rk) != CM_OK) {
                problem(r, "%s: [registry] checkpoint_key %s is not a P-256 public key",
                        cm_conf_name(conf), ckey);
                goto out;
            }
            int good = cm_audit_checkpoint_verify(rk, &cp) == CM_OK;
            cm_pubkey_destroy(&rk);
            if (!good) {
                problem(r, "%s: the audit checkpoint's signature is not the registry's (%s)",
                        MANIFEST, ckey);
                goto out;
            }
        }
    }
    r->manifest_ok = 1;
    if (deployment_id(conf, r->deployment) != B_OK) {
        problem(r, "%s: cannot tell this deployment's id ([backup] ca)", cm_conf_name(conf));
        goto out;
    }
    if (strcmp(m->deployment, r->deployment) != 0) {
        problem(r,
                "%s: foreign backup: made for deployment %s, this deployment (its CA) is %s",
                MANIFEST, m->deployment, r->deployment);
        goto out;
    }
    ok = 1;
out:
    cm_pubkey_destroy(&key);
    free(text);
    free(sig);
    return ok;
}

/* The whole verification of the backup in dir, into r. */
static int verify_dir(const cm_conf *conf, const char *dir, report *r)
{
    const char *v;
    if (!conf_need(conf, "backup", "verify_key", "the backup verification public key", &v) ||
        !conf_need(conf, "backup", "ca", "the deployment CA certificate", &v))
        return -1;
    if (strlen(dir) > PATH_LEN_MAX) {
        ctl_say("%s: path too long", dir);
        return -1;
    }
    int rm = read_manifest(conf, dir, r);
    if (rm < 0)
        return -1;
    if (!rm)
        return 0;
    char path[F__COUNT][4200];
    for (int f = 0; f < F__COUNT; f++) {
        const char *why = "";
        char h[HEX_SHA256];
        join(path[f], sizeof path[f], dir, FILE_NAME[f]);
        r->file_checked[f] = 1;
        if (!hash_file(path[f], -1, &r->file_size[f], h, &why)) {
            problem(r, "%s: %s", FILE_NAME[f], why);
            continue;
        }
        if (r->file_size[f] != r->m.size[f])
            problem(r, "%s: %" PRIu64 " bytes, the manifest says %" PRIu64 " (%s)", FILE_NAME[f],
                    r->file_size[f], r->m.size[f],
                    r->file_size[f] < r->m.size[f] ? "truncated" : "grown");
        else if (strcmp(h, r->m.sha256[f]) != 0)
            problem(r, "%s: SHA-256 %s does not match the manifest's %s (the file was altered)",
                    FILE_NAME[f], h, r->m.sha256[f]);
        else
            r->file_ok[f] = 1;
    }
    /* nothing in a file that does not match the signed manifest is worth reading further */
    if (!r->file_ok[F_ARCHIVE] || !r->file_ok[F_REGISTRY])
        return 0;
    for (int f = 0; f < F__COUNT; f++) {
        cm_sql *db = NULL;
        char msg[512];
        if (!db_open_ro(path[f], 1, &db, msg, sizeof msg))
            problem(r, "%s: cannot open as SQLite: %s", FILE_NAME[f], msg);
        else if (!integrity_ok(db, msg, sizeof msg))
            problem(r, "%s: PRAGMA integrity_check: %s", FILE_NAME[f], msg);
        else
            r->integrity_ok[f] = 1;
        cm_sql_close(&db);
    }
    if (!r->integrity_ok[F_ARCHIVE] || !r->integrity_ok[F_REGISTRY])
        return 0;
    check_content(path[F_ARCHIVE], FILE_NAME[F_ARCHIVE], path[F_REGISTRY], FILE_NAME[F_REGISTRY],
                  &r->m, 1, &r->c, r);
    return !failed(r);
}

int backup_verify(const cm_conf *conf, const char *dir, int json)
{
    report r = {.dir = dir, .json = json};
    int rc = verify_dir(conf, dir, &r);
    if (rc < 0) {
        report_free(&r);
        return B_USAGE;
    }
    print_report(&r, "OK");
    rc = failed(&r) ? B_FAILED : B_OK;
    report_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ create */

/* Consistent snapshot of the live database src into the new file dst with SQLite's online backup
 * API: one step over a single read transaction, so the copy is one committed state while the
 * service goes on writing (WAL readers do not block the writer). The copy is then switched to a
 * rollback journal so that it is one self-contained file. */
static int snapshot(const char *src, const char *dst, const char **why, int *unavailable)
{
    sqlite3 *s = NULL, *d = NULL;
    sqlite3_backup *b = NULL;
    int ok = 0;
    char uri[3 * 4096 + 64];
    *unavailable = 0;
    if (!ctl_sqlite_ro_uri(src, ctl_sqlite_at_rest(src), uri, sizeof uri)) {
        *why = "path too long";
        goto out;
    }
    if (sqlite3_open_v2(uri, &s, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
        *why = s ? sqlite3_errmsg(s) : "out of memory";
        *unavailable = 1;
        goto out;
    }
    sqlite3_busy_timeout(s, 10000);
    /* the copy must be a new file: this refuses anything already there */
    int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        *why = strerror(errno);
        goto out;
    }
    close(fd);
    if (sqlite3_open_v2(dst, &d, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        *why = d ? sqlite3_errmsg(d) : "out of memory";
        goto out;
    }
    if (!(b = sqlite3_backup_init(d, "main", s, "main"))) {
        *why = sqlite3_errmsg(d);
        goto out;
    }
    int rc;
    for (int tries = 0; (rc = sqlite3_backup_step(b, -1)) != SQLITE_DONE; tries++) {
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || tries == 100)
            break;
        sqlite3_sleep(100);
    }
    int frc = sqlite3_backup_finish(b);
    b = NULL;
    if (rc != SQLITE_DONE || frc != SQLITE_OK) {
        *why = sqlite3_errmsg(d);
        if (!*why || strcmp(*why, "not an error") == 0)
            *why = sqlite3_errstr(rc != SQLITE_DONE ? rc : frc);
        goto out;
    }
    sqlite3_stmt *st = NULL;
    const char *mode = "";
    if (sqlite3_prepare_v2(d, "PRAGMA journal_mode=DELETE", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        mode = (const char *)sqlite3_column_text(st, 0);
    ok = mode && strcmp(mode, "delete") == 0;
    sqlite3_finalize(st);
    if (!ok)
        *why = "could not switch the copy to a rollback journal";
out:
    sqlite3_close(d);
    sqlite3_close(s);
    return ok;
}

/* Removes what create made in dir (known names only) and dir itself. */
static void remove_partial(const char *dir)
{
    static const char *const names[] = {"archive.db",          "archive.db-journal",
                                        "archive.db-wal",      "archive.db-shm",
                                        "registry.db",         "registry.db-journal",
                                        "registry.db-wal",     "registry.db-shm",
                                        MANIFEST,              MANIFEST_SIG,
                                        MANIFEST ".tmp"};
    char p[4200];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        join(p, sizeof p, dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Writes a new file (mode 0600) and fsyncs it. */
static int write_new_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return 0;
    int ok = write_all(fd, buf, len) && fsync(fd) == 0;
    return close(fd) == 0 && ok;
}

/* Snapshot of the PostgreSQL archive that suidoctl.conf names into the new SQLite file dst
 * (backup_pg.h): the same schema and rows as a SQLite archive's, read in one REPEATABLE READ
 * transaction. Returns B_OK, or an exit code with the reason printed. */
static int snapshot_pg(const cm_conf *conf, const char *dst)
{
    char label[4200], why[600];
    cm_sql *db = NULL;
    uint64_t rows = 0;
    int rc = ctl_archive_open(conf, &db, label, sizeof label);
    if (rc != 0)
        return rc == 2 ? B_USAGE : B_UNAVAILABLE;
    int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ctl_say("%s: %s", dst, strerror(errno));
        cm_sql_close(&db);
        return B_FAILED;
    }
    close(fd);
    rc = B_OK;
    if (!backup_pg_snapshot(db, dst, &rows, why, sizeof why)) {
        ctl_say("%s: snapshot of the PostgreSQL archive (%s) failed: %s", FILE_NAME[F_ARCHIVE],
                label, why);
        rc = cm_sql_connected(db) ? B_FAILED : B_UNAVAILABLE;
    }
    cm_sql_close(&db);
    return rc;
}

/* The registry's latest signed audit checkpoint, read from its live database (table
 * audit_checkpoints): 1 and *m's checkpoint fields, 0 when there is none (no such table yet, or no
 * row), -1 when the database cannot be read (why). Read before the archive is copied, so the copy
 * (the archive only grows) must reach it. */
static int live_checkpoint(const char *registry_db, manifest *m, char *why, size_t len)
{
    cm_sql *db = NULL;
    if (!ctl_sqlite_open(registry_db, &db, why, len))
        return -1;
    cm_sql_stmt *st = NULL;
    int found = 0;
    if (cm_sql_prepare(db, "SELECT seq, head, ts_ms, signature FROM audit_checkpoints"
                           " ORDER BY seq DESC LIMIT 1", &st) == CM_OK) {
        if (cm_sql_step(st) == CM_SQL_ROW) {
            size_t hl = 0, sl = 0;
            const void *h = cm_sql_column_blob(st, 1, &hl), *g = cm_sql_column_blob(st, 3, &sl);
            int64_t seq = cm_sql_column_int64(st, 0);
            if (h && g && hl == sizeof m->cp_head && sl > 0 && sl <= sizeof m->cp_sig && seq > 0) {
                m->cp_seq = (uint64_t)seq;
                m->cp_ms = (uint64_t)cm_sql_column_int64(st, 2);
                memcpy(m->cp_head, h, hl);
                memcpy(m->cp_sig, g, sl);
                m->cp_siglen = sl;
                m->has_cp = found = 1;
            } else {
                snprintf(why, len, "its latest audit checkpoint is malformed");
                found = -1;
            }
        }
        cm_sql_finalize(&st);
    } /* no table: a registry that never signed a checkpoint */
    cm_sql_close(&db);
    return found;
}

cm_err backup_registry_checkpoint(const char *registry_db, Suido__AuditCheckpoint **out,
                                  char *why, size_t len)
{
    manifest m = {0};
    *out = NULL;
    int found = live_checkpoint(registry_db, &m, why, len);
    if (found < 0)
        return CM_ERR_UNAVAILABLE;
    if (found == 0) {
        snprintf(why, len, "the registry's database (%s) holds no signed checkpoint yet",
                 registry_db);
        return CM_ERR_UNKNOWN;
    }
    /* a message of its own (suido__audit_checkpoint__free_unpacked), not borrowing m */
    Suido__AuditCheckpoint cp = manifest_checkpoint(&m);
    size_t n = suido__audit_checkpoint__get_packed_size(&cp);
    uint8_t *buf = malloc(n);
    if (buf) {
        suido__audit_checkpoint__pack(&cp, buf);
        *out = suido__audit_checkpoint__unpack(NULL, n, buf);
        free(buf);
    }
    if (!*out)
        snprintf(why, len, "%s", "out of memory");
    return *out ? CM_OK : CM_ERR_NOMEM;
}

int backup_create(const cm_conf *conf, const char *dir, int json)
{
    const char *src[F__COUNT], *keyf;
    char depl[HEX_SHA256];
    const char *pgfile = cm_conf_get(conf, "archive", "postgresql");
    int archive_pg = pgfile && *pgfile;
    if (archive_pg)
        src[F_ARCHIVE] = pgfile;
    if ((!archive_pg && !conf_need(conf, "archive", "database", "the archive database to back up",
                                   &src[F_ARCHIVE])) ||
        !conf_need(conf, "backup", "registry_database", "the registry database to back up",
                   &src[F_REGISTRY]) ||
        !conf_need(conf, "backup", "signing_key", "the backup signing key (0600)", &keyf))
        return B_USAGE;
    if (strlen(dir) > PATH_LEN_MAX)
        return ctl_say("%s: path too long", dir) + 1;
    int rc = deployment_id(conf, depl);
    if (rc != B_OK)
        return rc;
    cm_signer *signer = NULL;
    if (cm_signer_load(keyf, &signer) != CM_OK) {
        ctl_say("%s: [backup] signing_key %s: not a usable P-256 private key (mode 0600?)",
            cm_conf_name(conf), keyf);
        return B_FAILED;
    }
    if (mkdir(dir, 0700) != 0) {
        cm_signer_destroy(&signer);
        if (errno == EEXIST)
            return ctl_say("%s exists: a backup goes into a new directory (nothing was changed)", dir);
        return ctl_say("%s: cannot create the backup directory: %s", dir, strerror(errno));
    }
    report r = {.dir = dir, .json = json};
    char path[F__COUNT][4200], mpath[4200], spath[4200], parent[4200];
    uint64_t created = cm_now_ms();
    char *text = NULL, cpwhy[600];
    rc = B_FAILED;
    if (live_checkpoint(src[F_REGISTRY], &r.m, cpwhy, sizeof cpwhy) < 0) {
        ctl_say("%s: cannot read the registry's audit checkpoint: %s", src[F_REGISTRY], cpwhy);
        rc = B_UNAVAILABLE;
        goto out;
    }
    for (int f = 0; f < F__COUNT; f++) {
        const char *why = "";
        int unavailable = 0;
        join(path[f], sizeof path[f], dir, FILE_NAME[f]);
        if (f == F_ARCHIVE && archive_pg) {
            if ((rc = snapshot_pg(conf, path[f])) != B_OK)
                goto out;
            rc = B_FAILED;
        } else if (!snapshot(src[f], path[f], &why, &unavailable)) {
            ctl_say("%s: snapshot of %s failed: %s", FILE_NAME[f], src[f], why);
            if (unavailable)
                rc = B_UNAVAILABLE;
            goto out;
        }
        if (!fsync_path(path[f], 0)) {
            ctl_say("%s: fsync failed: %s", path[f], strerror(errno));
            goto out;
        }
    }
    /* the manifest describes the finished copies, so every fact is read back from them */
    for (int f = 0; f < F__COUNT; f++) {
        cm_sql *db = NULL;
        char msg[512];
        const char *why = "";
        if (!db_open_ro(path[f], 1, &db, msg, sizeof msg) || !integrity_ok(db, msg, sizeof msg)) {
            ctl_say("%s: the snapshot of %s fails PRAGMA integrity_check: %s (the live database may "
                "be damaged; no backup made)",
                FILE_NAME[f], src[f], msg);
            cm_sql_close(&db);
            goto out;
        }
        cm_sql_close(&db);
        r.integrity_ok[f] = r.file_checked[f] = 1;
        if (!hash_file(path[f], -1, &r.file_size[f], r.m.sha256[f], &why)) {
            ctl_say("%s: %s", path[f], why);
            goto out;
        }
        r.file_ok[f] = 1;
    }
    if (!check_content(path[F_ARCHIVE], FILE_NAME[F_ARCHIVE], path[F_REGISTRY],
                       FILE_NAME[F_REGISTRY], NULL, 0, &r.c, &r)) {
        for (size_t i = 0; i < r.n_problems; i++)
            ctl_say("%s (the live %s; no backup made: run suidoctl audit verify)", r.problems[i],
                src[F_ARCHIVE]);
        goto out;
    }
    char cplines[400] = "";
    if (r.m.has_cp) {
        Suido__AuditCheckpoint cp = manifest_checkpoint(&r.m);
        cm_sql *arch = NULL;
        int reached = db_open_ro(path[F_ARCHIVE], 1, &arch, cpwhy, sizeof cpwhy)
                          ? cm_audit_checkpoint_reached(arch, &r.c.audit, &cp, cpwhy,
                                                        sizeof cpwhy)
                          : -1;
        cm_sql_close(&arch);
        if (reached != 1) {
            ctl_say("%s: the live archive's audit log does not reach the registry's signed "
                    "checkpoint: %s (no backup made: run suidoctl audit verify)",
                    FILE_NAME[F_ARCHIVE], cpwhy);
            goto out;
        }
        char hh[2 * CM_AUDIT_HASH_LEN + 1], sh[2 * CM_SIG_MAX + 1];
        hex(r.m.cp_head, sizeof r.m.cp_head, hh);
        hex(r.m.cp_sig, r.m.cp_siglen, sh);
        snprintf(cplines, sizeof cplines,
                 "checkpoint_seq = %" PRIu64 "\ncheckpoint_hash = %s\ncheckpoint_ms = %" PRIu64
                 "\ncheckpoint_sig = %s\n",
                 r.m.cp_seq, hh, r.m.cp_ms, sh);
    }
    char iso[32];
    cm_time_iso(created, iso, sizeof iso);
    if (asprintf(&text,
                 "# suido backup manifest. %s is the ECDSA P-256 signature (DER) of the backup\n"
                 "# key over \"%s\" NUL and the exact bytes of this file.\n"
                 "[backup]\n"
                 "format = %d\n"
                 "deployment = %s\n"
                 "created_ms = %" PRIu64 "\n"
                 "created = %s\n"
                 "\n"
                 "[file archive.db]\n"
                 "size = %" PRIu64 "\n"
                 "sha256 = %s\n"
                 "batches = %" PRIu64 "\n"
                 "readings = %" PRIu64 "\n"
                 "audit_head_seq = %" PRIu64 "\n"
                 "audit_head_hash = %s\n"
                 "%s"
                 "\n"
                 "[file registry.db]\n"
                 "size = %" PRIu64 "\n"
                 "sha256 = %s\n"
                 "gateways = %" PRIu64 "\n",
                 MANIFEST_SIG, BACKUP_DOMAIN, BACKUP_FORMAT, depl, created, iso,
                 r.file_size[F_ARCHIVE], r.m.sha256[F_ARCHIVE], r.c.batches, r.c.readings,
                 r.c.audit.entries, r.c.audit.head_hex, cplines, r.file_size[F_REGISTRY],
                 r.m.sha256[F_REGISTRY], r.c.gateways) < 0) {
        text = NULL;
        ctl_say("%s", "out of memory");
        goto out;
    }
    uint8_t sig[CM_SIG_MAX];
    size_t siglen = 0;
    join(mpath, sizeof mpath, dir, MANIFEST);
    join(spath, sizeof spath, dir, MANIFEST_SIG);
    if (cm_sign_domain(signer, BACKUP_DOMAIN, (const uint8_t *)text, strlen(text), sig,
                       &siglen) != CM_OK) {
        ctl_say("%s: signing the manifest failed", keyf);
        goto out;
    }
    /* the signature is written last: a backup cut short by a crash never verifies */
    if (!write_new_file(mpath, text, strlen(text)) || !write_new_file(spath, sig, siglen) ||
        !fsync_path(dir, 1)) {
        ctl_say("%s: writing the manifest failed: %s", dir, strerror(errno));
        goto out;
    }
    parent_of(dir, parent, sizeof parent);
    if (!fsync_path(parent, 1)) {
        ctl_say("%s: fsync failed: %s", parent, strerror(errno));
        goto out;
    }
    snprintf(r.key_id, sizeof r.key_id, "%s", cm_signer_key_id(signer));
    snprintf(r.m.deployment, sizeof r.m.deployment, "%s", depl);
    r.m.format = BACKUP_FORMAT;
    r.m.created_ms = created;
    r.signature_ok = r.manifest_ok = 1;
    rc = B_OK;
    if (json) {
        print_json(&r);
    } else {
        printf("backup %s: created %s (signed by backup key %s)\n", dir, iso, r.key_id);
        printf("  deployment   %s\n", depl);
        for (int f = 0; f < F__COUNT; f++)
            printf("  %-12s %" PRIu64 " bytes, sha256 %s\n", FILE_NAME[f], r.file_size[f],
                   r.m.sha256[f]);
        printf("  archive      %" PRIu64 " batches (%" PRIu64 " readings), audit chain %" PRIu64
               " entries, head %s\n",
               r.c.batches, r.c.readings, r.c.audit.entries, r.c.audit.head_hex);
        printf("  registry     %" PRIu64 " gateways\n", r.c.gateways);
        printf("check it with: suidoctl backup verify %s\n", dir);
    }
out:
    if (rc != B_OK)
        remove_partial(dir);
    free(text);
    report_free(&r);
    cm_signer_destroy(&signer);
    return rc;
}

/* ------------------------------------------------------------------ restore */

static const char *const SIDE[] = {"", "-wal", "-shm", "-journal"};

/* Refuses (1) when a target or one of its side files exists and force is not set, or when any
 * process holds the target open. */
static int target_refused(const char *target, int force)
{
    char p[4300];
    for (size_t i = 0; i < sizeof SIDE / sizeof SIDE[0]; i++) {
        snprintf(p, sizeof p, "%s%s", target, SIDE[i]);
        struct stat st;
        if (lstat(p, &st) != 0)
            continue;
        if (!force)
            return ctl_say("%s exists: restore never replaces a database by default; stop every "
                       "service, then give --force to replace it",
                       p);
        long pid = ctl_lock_holder(p);
        if (pid > 0)
            return ctl_say("%s is in use by process %ld: stop the services before restoring", p, pid);
        if (pid < 0)
            return ctl_say("%s: cannot tell whether a service holds it (%s): stop the services and "
                       "check",
                       p, strerror(errno));
    }
    return 0;
}

static int mkdir_new(const char *path, int *made)
{
    *made = 0;
    if (mkdir(path, 0700) == 0) {
        *made = 1;
        return 1;
    }
    struct stat st;
    return errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The live registry's ack points (the archive's published acks, registry_acked.h in the
 * registry) are newer than the backup's: they are carried over into the restored registry, so
 * that the archive, comparing them at start, finds and reports what was acknowledged after the
 * backup and is not in it. Nothing to carry when there is no live registry. Returns the number
 * of points carried, or -1 (why set) when the restored copy could not take them. */
static long carry_ack_points(const char *restored, const char *live, uint64_t *live_audit_seq,
                             char *why, size_t len)
{
    *live_audit_seq = 0;
    if (access(live, R_OK) != 0)
        return 0;
    sqlite3 *db = NULL;
    long n = -1;
    /* the same table as the registry makes (an older backup may predate it) */
    static const char SQL[] =
        "CREATE TABLE IF NOT EXISTS acked_points("
        " gateway TEXT NOT NULL, boot_epoch INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
        " PRIMARY KEY(gateway, boot_epoch));"
        "BEGIN;"
        "INSERT INTO acked_points(gateway, boot_epoch, seq, updated_ms)"
        " SELECT gateway, boot_epoch, seq, updated_ms FROM live.acked_points WHERE true"
        " ON CONFLICT(gateway, boot_epoch) DO UPDATE SET seq = excluded.seq,"
        " updated_ms = excluded.updated_ms WHERE excluded.seq > acked_points.seq;"
        "COMMIT;";
    char uri[4400];
    snprintf(uri, sizeof uri, "file:%s?mode=ro", live);
    sqlite3_stmt *has = NULL;
    if (sqlite3_open_v2(restored, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(db, 10000) != SQLITE_OK) {
        snprintf(why, len, "%s", db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_stmt *at = NULL;
    int ok = sqlite3_prepare_v2(db, "ATTACH DATABASE ? AS live", -1, &at, NULL) == SQLITE_OK &&
             sqlite3_bind_text(at, 1, uri, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_step(at) == SQLITE_DONE;
    sqlite3_finalize(at);
    if (!ok) {
        snprintf(why, len, "the live registry %s: %s", live, sqlite3_errmsg(db));
        goto out;
    }
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM live.sqlite_master WHERE type = 'table'"
                               " AND name = 'acked_points'", -1, &has, NULL) != SQLITE_OK ||
        sqlite3_step(has) != SQLITE_ROW) {
        snprintf(why, len, "the live registry %s: %s", live, sqlite3_errmsg(db));
        goto out;
    }
    /* how far the live audit log had been signed: what the restore cuts off it */
    sqlite3_stmt *cp = NULL;
    if (sqlite3_prepare_v2(db, "SELECT max(seq) FROM live.audit_checkpoints", -1, &cp, NULL) ==
            SQLITE_OK && sqlite3_step(cp) == SQLITE_ROW)
        *live_audit_seq = (uint64_t)sqlite3_column_int64(cp, 0);
    sqlite3_finalize(cp);
    if (sqlite3_column_int(has, 0) == 0) {
        n = 0; /* a registry from before ack points were kept */
        goto out;
    }
    if (sqlite3_exec(db, SQL, NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(why, len, "%s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        goto out;
    }
    n = sqlite3_changes(db);
out:
    sqlite3_finalize(has);
    sqlite3_close(db);
    return n;
}

int backup_restore(const cm_conf *conf, const char *dir, const char *statedir, int force,
                   int json)
{
    if (!statedir || !*statedir) {
        ctl_say("%s", "backup restore needs --to STATEDIR (the services' state directory)");
        return B_USAGE;
    }
    if (strlen(statedir) > PATH_LEN_MAX)
        return ctl_say("%s: path too long", statedir) + 1;
    report r = {.dir = dir, .json = json, .restore_to = statedir};
    int rc = verify_dir(conf, dir, &r);
    if (rc < 0) {
        report_free(&r);
        return B_USAGE;
    }
    if (failed(&r)) {
        print_report(&r, "");
        ctl_say("restore refused: the backup did not verify; nothing was written to %s", statedir);
        report_free(&r);
        return B_FAILED;
    }
    char subdir[F__COUNT][4200], target[F__COUNT][4300], tmp[F__COUNT][4300];
    int made_top = 0, made_sub[F__COUNT] = {0}, have_tmp[F__COUNT] = {0};
    for (int f = 0; f < F__COUNT; f++) {
        join(subdir[f], sizeof subdir[f], statedir, SUBDIR[f]);
        snprintf(target[f], sizeof target[f], "%s/%s", subdir[f], FILE_NAME[f]);
        if (target_refused(target[f], force)) {
            ctl_say("restore refused; nothing was written to %s", statedir);
            report_free(&r);
            return B_FAILED;
        }
    }
    rc = B_FAILED;
    if (!mkdir_new(statedir, &made_top)) {
        ctl_say("%s: cannot create or use it as the state directory: %s", statedir, strerror(errno));
        goto out;
    }
    /* each file goes to a temporary file beside its target, is checked against the manifest
     * again as it is copied (the backup may change between verify and copy) and fsynced */
    for (int f = 0; f < F__COUNT; f++) {
        char src[4200], h[HEX_SHA256];
        uint64_t size = 0;
        const char *why = "";
        if (!mkdir_new(subdir[f], &made_sub[f])) {
            ctl_say("%s: cannot create: %s", subdir[f], strerror(errno));
            goto out;
        }
        snprintf(tmp[f], sizeof tmp[f], "%s/.%s.restore-XXXXXX", subdir[f], FILE_NAME[f]);
        int fd = mkstemp(tmp[f]);
        if (fd < 0) {
            ctl_say("%s: cannot create a temporary file: %s", subdir[f], strerror(errno));
            goto out;
        }
        have_tmp[f] = 1;
        join(src, sizeof src, dir, FILE_NAME[f]);
        int ok = hash_file(src, fd, &size, h, &why);
        if (ok && (size != r.m.size[f] || strcmp(h, r.m.sha256[f]) != 0)) {
            why = "the backup's file changed after it was verified";
            ok = 0;
        }
        if (ok && (fchmod(fd, 0600) != 0 || fsync(fd) != 0)) {
            why = strerror(errno);
            ok = 0;
        }
        if (close(fd) != 0 && ok) {
            why = strerror(errno);
            ok = 0;
        }
        if (!ok) {
            ctl_say("%s: copy to %s failed: %s", FILE_NAME[f], tmp[f], why);
            goto out;
        }
    }
    /* the restored copies, re-opened where they will live, must carry every signature again */
    content again = {0};
    report rr = {.dir = dir};
    if (!check_content(tmp[F_ARCHIVE], target[F_ARCHIVE], tmp[F_REGISTRY], target[F_REGISTRY],
                       &r.m, 1, &again, &rr)) {
        for (size_t i = 0; i < rr.n_problems; i++)
            ctl_say("restored %s", rr.problems[i]);
        ctl_say("restore refused: the restored copy did not re-verify; nothing was put in place in %s",
            statedir);
        report_free(&rr);
        goto out;
    }
    report_free(&rr);
    char why_carry[512] = "";
    uint64_t live_audit_seq = 0;
    long carried = carry_ack_points(tmp[F_REGISTRY], target[F_REGISTRY], &live_audit_seq,
                                    why_carry, sizeof why_carry);
    if (carried < 0) {
        ctl_say("restore refused: the acknowledgements kept by the live registry could not be "
                "carried over (%s); nothing was put in place in %s", why_carry, statedir);
        goto out;
    }
    /* in place: stale WAL or journal files of a replaced database would be replayed into the
     * restored one, so they go first; then each rename is atomic */
    for (int f = 0; f < F__COUNT; f++) {
        for (size_t i = 1; i < sizeof SIDE / sizeof SIDE[0]; i++) {
            char p[4400];
            snprintf(p, sizeof p, "%s%s", target[f], SIDE[i]);
            if (unlink(p) != 0 && errno != ENOENT) {
                ctl_say("%s: cannot remove the replaced database's %s: %s", p, SIDE[i],
                    strerror(errno));
                goto out;
            }
        }
        if (rename(tmp[f], target[f]) != 0) {
            ctl_say("%s: rename to %s failed: %s", tmp[f], target[f], strerror(errno));
            goto out;
        }
        have_tmp[f] = 0;
        if (!fsync_path(subdir[f], 1)) {
            ctl_say("%s: fsync failed: %s", subdir[f], strerror(errno));
            goto out;
        }
    }
    if (made_top || made_sub[0] || made_sub[1]) {
        char parent[4200];
        parent_of(statedir, parent, sizeof parent);
        fsync_path(statedir, 1);
        fsync_path(parent, 1);
    }
    r.c.sig_ok = again.sig_ok;
    r.c.sig_disposed = again.sig_disposed;
    r.c.sig_failed = again.sig_failed;
    r.restored = 1;
    rc = B_OK;
    if (json) {
        print_json(&r);
    } else {
        print_report(&r, "OK");
        printf("restored into %s: %s, %s\n", statedir, target[F_ARCHIVE], target[F_REGISTRY]);
        printf("  restored archive re-opened: %" PRIu64 " signatures verified again, %" PRIu64
               " unverifiable (gateway disposed), 0 failed\n",
               again.sig_ok, again.sig_disposed);
        printf("  acknowledgements carried over from the live registry: %ld ack points (the "
               "archive reports at start what they cover and the backup lacks)\n",
               carried);
        if (live_audit_seq > r.m.audit_seq)
            printf("  audit log: the live log had reached entry %" PRIu64 " (the registry's last "
                   "signed checkpoint); the backup's ends at entry %" PRIu64 ": entries %" PRIu64
                   "-%" PRIu64 " are lost with this restore\n",
                   live_audit_seq, r.m.audit_seq, r.m.audit_seq + 1, live_audit_seq);
        printf("start the services on %s now\n", statedir);
    }
out:
    for (int f = 0; f < F__COUNT; f++)
        if (have_tmp[f])
            unlink(tmp[f]);
    if (rc != B_OK) {
        for (int f = F__COUNT - 1; f >= 0; f--)
            if (made_sub[f])
                rmdir(subdir[f]);
        if (made_top)
            rmdir(statedir);
    }
    report_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ the live archive */

int archive_verify_live(const cm_conf *conf, int json)
{
    const char *rpath;
    char apath[4200], why[512];
    if (!conf_need(conf, "backup", "registry_database", "the gateways' signing keys", &rpath))
        return 2;
    cm_sql *arch = NULL, *reg = NULL;
    if (!ctl_sqlite_open(rpath, &reg, why, sizeof why)) {
        ctl_say("%s: cannot open: %s", rpath, why);
        return B_UNAVAILABLE;
    }
    int orc = ctl_archive_open(conf, &arch, apath, sizeof apath);
    if (orc != 0) {
        cm_sql_close(&reg);
        return orc;
    }
    report r = {0};
    r.json = json;
    int ok = 0;
    /* one committed state of the archive for the counts, the chain and the batches */
    if (cm_sql_begin_snapshot(arch) != CM_OK)
        problem(&r, "%s: %s", apath, cm_sql_error(arch));
    else
        ok = check_open(arch, apath, reg, rpath, NULL, 1, &r.c, &r) && !failed(&r);
    cm_sql_rollback(arch);
    cm_sql_close(&arch);
    cm_sql_close(&reg);
    if (json) {
        printf("{\"ok\":%s,\"batches\":%" PRIu64 ",\"readings\":%" PRIu64
               ",\"verified\":%" PRIu64 ",\"unverifiable_disposed\":%" PRIu64
               ",\"transport\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"audit_entries\":%" PRIu64 "}\n",
               ok ? "true" : "false", r.c.batches, r.c.readings, r.c.sig_ok, r.c.sig_disposed,
               r.c.sig_transport, r.c.sig_failed, r.c.audit.entries);
    } else {
        printf("archive %s: %s\n", apath, ok ? "OK" : "PROBLEMS");
        printf("  audit chain  %" PRIu64 " entries\n", r.c.audit.entries);
        print_signature_line(&r.c);
    }
    for (size_t i = 0; i < r.n_problems; i++)
        ctl_say("%s", r.problems[i]);
    report_free(&r);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ restore into PostgreSQL */

int backup_restore_pg(const cm_conf *conf, const char *dir, const char *pgfile, int json)
{
    report r = {.dir = dir, .json = json, .restore_to = pgfile};
    int rc = verify_dir(conf, dir, &r);
    if (rc < 0) {
        report_free(&r);
        return B_USAGE;
    }
    if (failed(&r)) {
        print_report(&r, "");
        ctl_say("restore refused: the backup did not verify; nothing was written to the "
                "PostgreSQL database of %s", pgfile);
        report_free(&r);
        return B_FAILED;
    }
    static char conninfo[8192];
    char why[600], apath[4200], rpath[4200];
    cm_sql *dst = NULL, *src = NULL, *reg = NULL;
    uint64_t rows = 0;
    content again = {0};
    report rr = {.dir = dir};
    if (cm_sql_read_conninfo(pgfile, conninfo, sizeof conninfo, why, sizeof why) != CM_OK) {
        ctl_say("--postgresql %s", why);
        report_free(&r);
        return B_USAGE;
    }
    rc = cm_sql_open_as(CM_SQL_POSTGRESQL, conninfo, 0, &dst, why, sizeof why) == CM_OK
             ? B_FAILED
             : B_UNAVAILABLE;
    explicit_bzero(conninfo, sizeof conninfo);
    if (rc == B_UNAVAILABLE) {
        ctl_say("PostgreSQL database (%s) unreachable or refused: %s", pgfile, why);
        goto out;
    }
    join(apath, sizeof apath, dir, FILE_NAME[F_ARCHIVE]);
    join(rpath, sizeof rpath, dir, FILE_NAME[F_REGISTRY]);
    if (!db_open_ro(apath, 1, &src, why, sizeof why) ||
        !db_open_ro(rpath, 1, &reg, why, sizeof why)) {
        ctl_say("%s: %s", dir, why);
        goto out;
    }
    if (!backup_pg_empty(dst, why, sizeof why)) {
        ctl_say("restore refused: %s: %s; nothing was written", pgfile, why);
        goto out;
    }
    /* one transaction: the load and its re-verification, or nothing */
    if (cm_sql_begin(dst) != CM_OK) {
        ctl_say("%s: %s", pgfile, cm_sql_error(dst));
        goto out;
    }
    if (!backup_pg_load(src, dst, &rows, why, sizeof why)) {
        ctl_say("restore refused: loading %s into %s failed: %s; nothing was written", apath,
                pgfile, why);
        cm_sql_rollback(dst);
        goto out;
    }
    /* what was loaded, read back from PostgreSQL, must match the signed manifest and carry every
     * batch signature again */
    if (!check_open(dst, pgfile, reg, FILE_NAME[F_REGISTRY], &r.m, 1, &again, &rr)) {
        for (size_t i = 0; i < rr.n_problems; i++)
            ctl_say("restored %s", rr.problems[i]);
        ctl_say("restore refused: the loaded archive did not re-verify; nothing was written to %s",
                pgfile);
        cm_sql_rollback(dst);
        goto out;
    }
    if (cm_sql_commit(dst) != CM_OK) {
        ctl_say("%s: commit failed: %s; nothing was written", pgfile, cm_sql_error(dst));
        goto out;
    }
    r.c.sig_ok = again.sig_ok;
    r.c.sig_disposed = again.sig_disposed;
    r.c.sig_failed = again.sig_failed;
    r.restored = 1;
    rc = B_OK;
    if (json) {
        print_json(&r);
    } else {
        print_report(&r, "OK");
        printf("restored the archive into the PostgreSQL database of %s: %" PRIu64 " rows\n",
               pgfile, rows);
        printf("  re-read from PostgreSQL: %" PRIu64 " signatures verified again, %" PRIu64
               " unverifiable (gateway disposed), 0 failed\n",
               again.sig_ok, again.sig_disposed);
        printf("the registry is not in PostgreSQL: restore it with --to STATEDIR\n");
    }
out:
    report_free(&rr);
    cm_sql_close(&src);
    cm_sql_close(&reg);
    cm_sql_close(&dst);
    report_free(&r);
    return rc;
}
