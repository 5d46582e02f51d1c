/* cm_sql: see cm_sql.h. SQLite through its C API; PostgreSQL through libpq, one PQexecParams per
 * statement run (text parameters with their types given, blobs in binary; text results), so no
 * server-side state has to be rebuilt after a reconnect. */
#include "cm_sql.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "cm_crypto.h"

/* PostgreSQL type oids (pg_type.dat): stable across versions. */
enum {
    OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25,
    OID_OID = 26, OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_NUMERIC = 1700,
};

#define ERR_LEN 512
#define TARGET_MAX 8192

struct cm_sql {
    cm_sql_engine engine;
    int read_only;
    sqlite3 *lite;
    PGconn *pg;
    char *target;
    char err[ERR_LEN];
};

typedef struct pg_param {
    char *val; /* NULL: SQL NULL */
    int len;
    int binary;
    Oid type; /* 0: the server infers it */
} pg_param;

struct cm_sql_stmt {
    cm_sql *db;
    int done;           /* the run finished (DONE or FAIL): step answers DONE until reset */
    int64_t changes;
    /* SQLite */
    sqlite3_stmt *lite;
    /* PostgreSQL */
    char *sql;
    int nparams;
    pg_param *params;
    PGresult *res;
    int row, nrows;
    void **blobs;       /* decoded bytea values of the current row, per column */
    size_t *blob_len;
};

/* ------------------------------------------------------------------ errors */

/* Keeps msg on one line (libpq's messages span several), blanks collapsed, without trailing
 * ones. */
static void set_err(cm_sql *db, const char *prefix, const char *msg)
{
    char raw[ERR_LEN];
    snprintf(raw, sizeof raw, "%s%s", prefix ? prefix : "", msg ? msg : "");
    size_t o = 0;
    for (const char *p = raw; *p && o + 1 < sizeof db->err; p++) {
        int blank = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
        if (blank && (o == 0 || db->err[o - 1] == ' '))
            continue;
        db->err[o++] = blank ? ' ' : *p;
    }
    while (o && db->err[o - 1] == ' ')
        o--;
    db->err[o] = '\0';
}

const char *cm_sql_error(const cm_sql *db) { return db ? db->err : "no database"; }

const char *cm_sql_engine_name(cm_sql_engine e)
{
    return e == CM_SQL_POSTGRESQL ? "postgresql" : "sqlite";
}

cm_sql_engine cm_sql_engine_of(const cm_sql *db) { return db->engine; }

cm_sql_engine cm_sql_engine_for(const char *target)
{
    if (!target || strncmp(target, "file:", 5) == 0)
        return CM_SQL_SQLITE;
    if (strncmp(target, "postgresql://", 13) == 0 || strncmp(target, "postgres://", 11) == 0 ||
        strchr(target, '='))
        return CM_SQL_POSTGRESQL;
    return CM_SQL_SQLITE;
}

/* ------------------------------------------------------------------ text rewriting */

typedef struct buf {
    char *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static char *finish(buf *b)
{
    if (!b->oom && !b->p)
        put(b, "", 0);
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    return b->p;
}

/* Length of the quoted literal, quoted identifier or comment starting at s (0 if none starts
 * there). An unterminated one runs to the end. */
static size_t skip_quoted(const char *s)
{
    if (*s == '\'' || *s == '"') {
        char q = *s;
        size_t i = 1;
        for (;;) {
            if (!s[i])
                return i;
            if (s[i] == q) {
                if (s[i + 1] == q) { /* doubled quote: part of the text */
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i++;
        }
    }
    if (s[0] == '-' && s[1] == '-') {
        size_t i = 2;
        while (s[i] && s[i] != '\n')
            i++;
        return i;
    }
    if (s[0] == '/' && s[1] == '*') {
        const char *e = strstr(s + 2, "*/");
        return e ? (size_t)(e + 2 - s) : strlen(s);
    }
    return 0;
}

static int is_word(char c) { return isalnum((unsigned char)c) || c == '_'; }

char *cm_sql_number_params(const char *sql, int *nparams)
{
    buf b = {0};
    int highest = 0;
    const char *p = sql;
    while (*p) {
        size_t q = skip_quoted(p);
        if (q) {
            put(&b, p, q);
            p += q;
            continue;
        }
        if (*p != '?') {
            put(&b, p, 1);
            p++;
            continue;
        }
        p++;
        int n;
        if (isdigit((unsigned char)*p)) {
            n = 0;
            while (isdigit((unsigned char)*p) && n < 100000)
                n = n * 10 + (*p++ - '0');
        } else {
            n = highest + 1;
        }
        if (n > highest)
            highest = n;
        char num[16];
        int len = snprintf(num, sizeof num, "$%d", n);
        put(&b, num, (size_t)len);
    }
    if (nparams)
        *nparams = highest;
    return finish(&b);
}

/* The word at p if it equals w (case-insensitively) and ends there; its length, else 0. */
static size_t word_is(const char *p, const char *w)
{
    size_t n = strlen(w);
    return strncasecmp(p, w, n) == 0 && !is_word(p[n]) ? n : 0;
}

static const char *skip_space(const char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return p;
}

char *cm_sql_map_ddl(cm_sql_engine engine, const char *sql)
{
    buf b = {0};
    if (engine != CM_SQL_POSTGRESQL) {
        put(&b, sql, strlen(sql));
        return finish(&b);
    }
    const char *p = sql;
    int prev_word = 0; /* the character before p belongs to a word */
    while (*p) {
        size_t q = skip_quoted(p);
        if (q) {
            put(&b, p, q);
            p += q;
            prev_word = 0;
            continue;
        }
        if (prev_word || !is_word(*p)) {
            prev_word = is_word(*p);
            put(&b, p, 1);
            p++;
            continue;
        }
        size_t n;
        const char *r = NULL;
        if ((n = word_is(p, "INTEGER"))) {
            const char *k = skip_space(p + n), *k2;
            size_t m1, m2;
            if (k > p + n && (m1 = word_is(k, "PRIMARY")) &&
                (k2 = skip_space(k + m1)) > k + m1 && (m2 = word_is(k2, "KEY"))) {
                r = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY";
                n = (size_t)(k2 + m2 - p);
            } else {
                r = "BIGINT";
            }
        } else if ((n = word_is(p, "REAL"))) {
            r = "DOUBLE PRECISION";
        } else if ((n = word_is(p, "BLOB"))) {
            r = "BYTEA";
        } else if ((n = word_is(p, "WITHOUT"))) {
            const char *k = skip_space(p + n);
            size_t m;
            if (k > p + n && (m = word_is(k, "ROWID"))) {
                r = "";
                n = (size_t)(k + m - p);
            } else {
                r = NULL;
            }
        }
        if (!r) {
            /* copy the whole word unchanged */
            n = 0;
            while (is_word(p[n]))
                n++;
            put(&b, p, n);
        } else {
            put(&b, r, strlen(r));
        }
        p += n;
        prev_word = 1;
    }
    return finish(&b);
}

/* ------------------------------------------------------------------ open / close */

static void quiet_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "relation already exists, skipping" and the like: not worth a log line */
}

/* Session settings of every PostgreSQL connection, applied again after a reconnect. */
static cm_err pg_session(cm_sql *db)
{
    PQsetNoticeProcessor(db->pg, quiet_notices, NULL);
    const char *sql = db->read_only
                          ? "SET client_min_messages = warning; "
                            "SET default_transaction_read_only = on"
                          : "SET client_min_messages = warning";
    PGresult *r = PQexec(db->pg, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        set_err(db, "", PQerrorMessage(db->pg));
    PQclear(r);
    return ok ? CM_OK : CM_ERR_UNAVAILABLE;
}

static cm_err pg_connect(cm_sql *db)
{
    /* a connect_timeout of our own unless the connection string sets one (later entries win) */
    const char *keys[] = {"connect_timeout", "fallback_application_name", "dbname", NULL};
    const char *vals[] = {"10", "suido", db->target, NULL};
    db->pg = PQconnectdbParams(keys, vals, 1);
    if (!db->pg) {
        set_err(db, "", "out of memory");
        return CM_ERR_NOMEM;
    }
    if (PQstatus(db->pg) != CONNECTION_OK) {
        set_err(db, "", PQerrorMessage(db->pg));
        return CM_ERR_UNAVAILABLE;
    }
    return pg_session(db);
}

static cm_err lite_open(cm_sql *db)
{
    int flags = SQLITE_OPEN_URI |
                (db->read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    if (sqlite3_open_v2(db->target, &db->lite, flags, NULL) != SQLITE_OK) {
        set_err(db, "", db->lite ? sqlite3_errmsg(db->lite) : "out of memory");
        return CM_ERR_DB;
    }
    sqlite3_busy_timeout(db->lite, 10000);
    sqlite3_extended_result_codes(db->lite, 0);
    if (!db->read_only) {
        char *msg = NULL;
        if (sqlite3_exec(db->lite, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL,
                         NULL, &msg) != SQLITE_OK) {
            set_err(db, "", msg ? msg : sqlite3_errmsg(db->lite));
            sqlite3_free(msg);
            return CM_ERR_DB;
        }
    }
    return CM_OK;
}

cm_err cm_sql_open_as(cm_sql_engine engine, const char *target, int read_only, cm_sql **out,
                      char *why, size_t len)
{
    *out = NULL;
    if (why && len)
        why[0] = '\0';
    if (!target || strlen(target) >= TARGET_MAX) {
        if (why && len)
            snprintf(why, len, "%s", "no database named, or the name is too long");
        return CM_ERR_INVAL;
    }
    cm_sql *db = calloc(1, sizeof *db);
    if (!db || !(db->target = strdup(target))) {
        free(db);
        if (why && len)
            snprintf(why, len, "%s", "out of memory");
        return CM_ERR_NOMEM;
    }
    db->engine = engine;
    db->read_only = read_only;
    cm_err rc = engine == CM_SQL_POSTGRESQL ? pg_connect(db) : lite_open(db);
    if (rc != CM_OK) {
        if (why && len)
            snprintf(why, len, "%s", db->err);
        cm_sql_close(&db);
        return rc;
    }
    *out = db;
    return CM_OK;
}

cm_err cm_sql_open(const char *target, int read_only, cm_sql **out)
{
    return cm_sql_open_as(cm_sql_engine_for(target), target, read_only, out, NULL, 0);
}

void cm_sql_close(cm_sql **dbp)
{
    if (!dbp || !*dbp)
        return;
    cm_sql *db = *dbp;
    if (db->lite)
        sqlite3_close(db->lite);
    if (db->pg)
        PQfinish(db->pg);
    if (db->target) {
        /* a connection string may hold a password */
        volatile char *t = db->target;
        for (size_t i = 0; t[i]; i++)
            t[i] = '\0';
        free(db->target);
    }
    free(db);
    *dbp = NULL;
}

int cm_sql_connected(const cm_sql *db)
{
    return db->engine != CM_SQL_POSTGRESQL || (db->pg && PQstatus(db->pg) == CONNECTION_OK);
}

cm_err cm_sql_reconnect(cm_sql *db)
{
    if (cm_sql_connected(db))
        return CM_OK;
    PQreset(db->pg);
    if (PQstatus(db->pg) != CONNECTION_OK) {
        set_err(db, "", PQerrorMessage(db->pg));
        return CM_ERR_UNAVAILABLE;
    }
    return pg_session(db);
}

cm_err cm_sql_read_conninfo(const char *path, char *out, size_t outlen, char *why, size_t len)
{
    char line[TARGET_MAX];
    out[0] = '\0';
    if (cm_key_file_check(path) != CM_OK) {
        snprintf(why, len, "%s: missing, not a regular file, or readable by group or others "
                           "(it may hold a password: mode 0600)", path);
        return CM_ERR_KEY;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(why, len, "%s: %s", path, strerror(errno));
        return CM_ERR_KEY;
    }
    cm_err rc = CM_ERR_CONFIG;
    snprintf(why, len, "%s: holds no connection string", path);
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            snprintf(why, len, "%s: connection string too long", path);
            break;
        }
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        while (n && isspace((unsigned char)line[n - 1]))
            line[--n] = '\0';
        if (!*s || *s == '#')
            continue;
        if (strlen(s) >= outlen) {
            snprintf(why, len, "%s: connection string too long", path);
            break;
        }
        snprintf(out, outlen, "%s", s);
        rc = CM_OK;
        break;
    }
    memset(line, 0, sizeof line);
    fclose(f);
    if (rc == CM_OK && why && len)
        why[0] = '\0';
    return rc;
}

/* ------------------------------------------------------------------ plain statements */

static cm_err pg_exec(cm_sql *db, const char *sql, const char *expect_tag)
{
    PGresult *r = PQexec(db->pg, sql);
    ExecStatusType s = PQresultStatus(r);
    cm_err rc = CM_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        set_err(db, "", PQresultErrorMessage(r)[0] ? PQresultErrorMessage(r)
                                                   : PQerrorMessage(db->pg));
        rc = PQstatus(db->pg) == CONNECTION_OK ? CM_ERR_DB : CM_ERR_UNAVAILABLE;
    } else if (expect_tag && strcmp(PQcmdStatus(r), expect_tag) != 0) {
        /* COMMIT of a transaction that a failed statement aborted answers ROLLBACK */
        set_err(db, "transaction rolled back by the server: ", PQcmdStatus(r));
        rc = CM_ERR_DB;
    }
    PQclear(r);
    return rc;
}

static cm_err lite_exec(cm_sql *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db->lite, sql, NULL, NULL, &msg) != SQLITE_OK) {
        set_err(db, "", msg ? msg : sqlite3_errmsg(db->lite));
        sqlite3_free(msg);
        return CM_ERR_DB;
    }
    return CM_OK;
}

cm_err cm_sql_exec(cm_sql *db, const char *sql)
{
    return db->engine == CM_SQL_POSTGRESQL ? pg_exec(db, sql, NULL) : lite_exec(db, sql);
}

cm_err cm_sql_exec_ddl(cm_sql *db, const char *sql)
{
    char *mapped = cm_sql_map_ddl(db->engine, sql);
    if (!mapped) {
        set_err(db, "", "out of memory");
        return CM_ERR_NOMEM;
    }
    cm_err rc = cm_sql_exec(db, mapped);
    free(mapped);
    return rc;
}

cm_err cm_sql_begin(cm_sql *db)
{
    if (db->engine == CM_SQL_POSTGRESQL)
        return pg_exec(db, "BEGIN", NULL);
    return lite_exec(db, db->read_only ? "BEGIN" : "BEGIN IMMEDIATE");
}

cm_err cm_sql_begin_snapshot(cm_sql *db)
{
    if (db->engine == CM_SQL_POSTGRESQL)
        return pg_exec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", NULL);
    return lite_exec(db, "BEGIN");
}

cm_err cm_sql_commit(cm_sql *db)
{
    if (db->engine == CM_SQL_POSTGRESQL)
        return pg_exec(db, "COMMIT", "COMMIT");
    return lite_exec(db, "COMMIT");
}

void cm_sql_rollback(cm_sql *db)
{
    if (db->engine == CM_SQL_POSTGRESQL) {
        if (cm_sql_connected(db))
            pg_exec(db, "ROLLBACK", NULL);
        return;
    }
    if (!sqlite3_get_autocommit(db->lite))
        lite_exec(db, "ROLLBACK");
}

/* ------------------------------------------------------------------ prepared statements */

cm_err cm_sql_prepare(cm_sql *db, const char *sql, cm_sql_stmt **out)
{
    *out = NULL;
    cm_sql_stmt *st = calloc(1, sizeof *st);
    if (!st) {
        set_err(db, "", "out of memory");
        return CM_ERR_NOMEM;
    }
    st->db = db;
    if (db->engine == CM_SQL_SQLITE) {
        if (sqlite3_prepare_v2(db->lite, sql, -1, &st->lite, NULL) != SQLITE_OK) {
            set_err(db, "", sqlite3_errmsg(db->lite));
            free(st);
            return CM_ERR_DB;
        }
        *out = st;
        return CM_OK;
    }
    st->sql = cm_sql_number_params(sql, &st->nparams);
    st->params = st->nparams ? calloc((size_t)st->nparams, sizeof *st->params) : NULL;
    if (!st->sql || (st->nparams && !st->params)) {
        set_err(db, "", "out of memory");
        cm_sql_finalize(&st);
        return CM_ERR_NOMEM;
    }
    st->row = -1;
    *out = st;
    return CM_OK;
}

static void clear_row(cm_sql_stmt *st)
{
    if (st->blobs) {
        int n = st->res ? PQnfields(st->res) : 0;
        for (int i = 0; i < n; i++)
            PQfreemem(st->blobs[i]);
        free(st->blobs);
        free(st->blob_len);
        st->blobs = NULL;
        st->blob_len = NULL;
    }
}

static void clear_result(cm_sql_stmt *st)
{
    clear_row(st);
    PQclear(st->res);
    st->res = NULL;
    st->row = -1;
    st->nrows = 0;
}

/* Parameter i (from 1) of a PostgreSQL statement, emptied; NULL when out of range. */
static pg_param *param(cm_sql_stmt *st, int i)
{
    if (i < 1 || i > st->nparams)
        return NULL;
    pg_param *p = &st->params[i - 1];
    free(p->val);
    memset(p, 0, sizeof *p);
    return p;
}

static void set_text_param(cm_sql_stmt *st, int i, const char *s, Oid type)
{
    pg_param *p = param(st, i);
    if (!p)
        return;
    p->val = strdup(s);
    p->len = p->val ? (int)strlen(p->val) : 0;
    p->type = type;
}

void cm_sql_bind_int64(cm_sql_stmt *st, int i, int64_t v)
{
    if (st->lite) {
        sqlite3_bind_int64(st->lite, i, (sqlite3_int64)v);
        return;
    }
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, v);
    set_text_param(st, i, s, OID_INT8);
}

void cm_sql_bind_double(cm_sql_stmt *st, int i, double v)
{
    if (st->lite) {
        sqlite3_bind_double(st->lite, i, v);
        return;
    }
    char s[40];
    if (isnan(v))
        snprintf(s, sizeof s, "NaN");
    else if (isinf(v))
        snprintf(s, sizeof s, "%s", v > 0 ? "Infinity" : "-Infinity");
    else
        snprintf(s, sizeof s, "%.17g", v);
    set_text_param(st, i, s, OID_FLOAT8);
}

void cm_sql_bind_text(cm_sql_stmt *st, int i, const char *s)
{
    if (!s) {
        cm_sql_bind_null(st, i);
        return;
    }
    if (st->lite) {
        sqlite3_bind_text(st->lite, i, s, -1, SQLITE_TRANSIENT);
        return;
    }
    set_text_param(st, i, s, OID_TEXT);
}

void cm_sql_bind_blob(cm_sql_stmt *st, int i, const void *data, size_t n)
{
    if (st->lite) {
        sqlite3_bind_blob64(st->lite, i, n ? data : "", (sqlite3_uint64)n, SQLITE_TRANSIENT);
        return;
    }
    pg_param *p = param(st, i);
    if (!p)
        return;
    p->val = malloc(n ? n : 1);
    if (!p->val)
        return; /* bound as NULL: the statement fails on a NOT NULL column */
    if (n)
        memcpy(p->val, data, n);
    p->len = (int)n;
    p->binary = 1;
    p->type = OID_BYTEA;
}

void cm_sql_bind_null(cm_sql_stmt *st, int i)
{
    if (st->lite)
        sqlite3_bind_null(st->lite, i);
    else
        param(st, i);
}

static int pg_step(cm_sql_stmt *st)
{
    cm_sql *db = st->db;
    if (!st->res) {
        int n = st->nparams;
        const char **vals = n ? calloc((size_t)n, sizeof *vals) : NULL;
        int *lens = n ? calloc((size_t)n, sizeof *lens) : NULL;
        int *fmts = n ? calloc((size_t)n, sizeof *fmts) : NULL;
        Oid *types = n ? calloc((size_t)n, sizeof *types) : NULL;
        if (n && (!vals || !lens || !fmts || !types)) {
            free(vals), free(lens), free(fmts), free(types);
            set_err(db, "", "out of memory");
            st->done = 1;
            return CM_SQL_FAIL;
        }
        for (int i = 0; i < n; i++) {
            vals[i] = st->params[i].val;
            lens[i] = st->params[i].len;
            fmts[i] = st->params[i].binary;
            types[i] = st->params[i].type;
        }
        st->res = PQexecParams(db->pg, st->sql, n, types, vals, lens, fmts, 0);
        free(vals), free(lens), free(fmts), free(types);
        ExecStatusType s = PQresultStatus(st->res);
        if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
            const char *m = st->res ? PQresultErrorMessage(st->res) : "";
            set_err(db, "", m && *m ? m : PQerrorMessage(db->pg));
            st->done = 1;
            return CM_SQL_FAIL;
        }
        const char *t = PQcmdTuples(st->res);
        st->changes = t && *t ? strtoll(t, NULL, 10) : 0;
        st->nrows = s == PGRES_TUPLES_OK ? PQntuples(st->res) : 0;
        st->row = -1;
    }
    clear_row(st);
    if (st->row + 1 < st->nrows) {
        st->row++;
        return CM_SQL_ROW;
    }
    st->row = st->nrows;
    st->done = 1;
    return CM_SQL_DONE;
}

int cm_sql_step(cm_sql_stmt *st)
{
    if (st->done)
        return CM_SQL_DONE;
    if (!st->lite)
        return pg_step(st);
    int rc = sqlite3_step(st->lite);
    if (rc == SQLITE_ROW)
        return CM_SQL_ROW;
    st->done = 1;
    if (rc == SQLITE_DONE) {
        st->changes = sqlite3_stmt_readonly(st->lite) ? 0 : sqlite3_changes(st->db->lite);
        return CM_SQL_DONE;
    }
    set_err(st->db, "", sqlite3_errmsg(st->db->lite));
    return CM_SQL_FAIL;
}

/* 1 if the current row has column col (PostgreSQL). */
static int pg_has(cm_sql_stmt *st, int col)
{
    return st->res && st->row >= 0 && st->row < st->nrows && col >= 0 &&
           col < PQnfields(st->res);
}

int cm_sql_column_count(cm_sql_stmt *st)
{
    if (st->lite)
        return sqlite3_column_count(st->lite);
    return st->res ? PQnfields(st->res) : 0;
}

const char *cm_sql_column_name(cm_sql_stmt *st, int col)
{
    const char *n = st->lite ? sqlite3_column_name(st->lite, col)
                    : st->res && col >= 0 && col < PQnfields(st->res) ? PQfname(st->res, col)
                                                                      : NULL;
    return n ? n : "";
}

int cm_sql_column_type(cm_sql_stmt *st, int col)
{
    if (st->lite) {
        switch (sqlite3_column_type(st->lite, col)) {
        case SQLITE_INTEGER: return CM_SQL_INTEGER;
        case SQLITE_FLOAT: return CM_SQL_REAL;
        case SQLITE_TEXT: return CM_SQL_TEXT;
        case SQLITE_BLOB: return CM_SQL_BLOB;
        default: return CM_SQL_NULL;
        }
    }
    if (!pg_has(st, col) || PQgetisnull(st->res, st->row, col))
        return CM_SQL_NULL;
    switch (PQftype(st->res, col)) {
    case OID_BOOL: case OID_INT2: case OID_INT4: case OID_INT8: case OID_OID:
        return CM_SQL_INTEGER;
    case OID_FLOAT4: case OID_FLOAT8: case OID_NUMERIC:
        return CM_SQL_REAL;
    case OID_BYTEA:
        return CM_SQL_BLOB;
    default:
        return CM_SQL_TEXT;
    }
}

int cm_sql_column_is_null(cm_sql_stmt *st, int col)
{
    if (st->lite)
        return sqlite3_column_type(st->lite, col) == SQLITE_NULL;
    return !pg_has(st, col) || PQgetisnull(st->res, st->row, col);
}

/* Text of a PostgreSQL value, NULL for SQL NULL. */
static const char *pg_value(cm_sql_stmt *st, int col)
{
    if (!pg_has(st, col) || PQgetisnull(st->res, st->row, col))
        return NULL;
    return PQgetvalue(st->res, st->row, col);
}

int64_t cm_sql_column_int64(cm_sql_stmt *st, int col)
{
    if (st->lite)
        return (int64_t)sqlite3_column_int64(st->lite, col);
    const char *v = pg_value(st, col);
    if (!v)
        return 0;
    if (PQftype(st->res, col) == OID_BOOL)
        return v[0] == 't';
    return (int64_t)strtoll(v, NULL, 10); /* numeric "12.0" stops at the point, as SQLite */
}

double cm_sql_column_double(cm_sql_stmt *st, int col)
{
    if (st->lite)
        return sqlite3_column_double(st->lite, col);
    const char *v = pg_value(st, col);
    return v ? strtod(v, NULL) : 0.0;
}

const char *cm_sql_column_text(cm_sql_stmt *st, int col)
{
    if (st->lite) {
        const unsigned char *t = sqlite3_column_text(st->lite, col);
        return t ? (const char *)t : "";
    }
    const char *v = pg_value(st, col);
    return v ? v : "";
}

const void *cm_sql_column_blob(cm_sql_stmt *st, int col, size_t *n)
{
    *n = 0;
    if (st->lite) {
        const void *p = sqlite3_column_blob(st->lite, col);
        *n = (size_t)sqlite3_column_bytes(st->lite, col);
        return p;
    }
    const char *v = pg_value(st, col);
    if (!v)
        return NULL;
    if (PQftype(st->res, col) != OID_BYTEA) { /* text read as bytes, as SQLite does */
        *n = (size_t)PQgetlength(st->res, st->row, col);
        return v;
    }
    int nf = PQnfields(st->res);
    if (!st->blobs) {
        st->blobs = calloc((size_t)nf, sizeof *st->blobs);
        st->blob_len = calloc((size_t)nf, sizeof *st->blob_len);
        if (!st->blobs || !st->blob_len) {
            free(st->blobs);
            free(st->blob_len);
            st->blobs = NULL;
            st->blob_len = NULL;
            return NULL;
        }
    }
    if (!st->blobs[col])
        st->blobs[col] = PQunescapeBytea((const unsigned char *)v, &st->blob_len[col]);
    *n = st->blobs[col] ? st->blob_len[col] : 0;
    return st->blobs[col];
}

int64_t cm_sql_changes(cm_sql_stmt *st) { return st->changes; }

void cm_sql_reset(cm_sql_stmt *st)
{
    st->done = 0;
    st->changes = 0;
    if (st->lite)
        sqlite3_reset(st->lite);
    else
        clear_result(st);
}

void cm_sql_finalize(cm_sql_stmt **stp)
{
    if (!stp || !*stp)
        return;
    cm_sql_stmt *st = *stp;
    if (st->lite)
        sqlite3_finalize(st->lite);
    clear_result(st);
    for (int i = 0; i < st->nparams && st->params; i++)
        free(st->params[i].val);
    free(st->params);
    free(st->sql);
    free(st);
    *stp = NULL;
}

/* ------------------------------------------------------------------ schema version */

cm_err cm_sql_get_version(cm_sql *db, int64_t *version)
{
    *version = 0;
    const char *sql = "PRAGMA user_version";
    if (db->engine == CM_SQL_POSTGRESQL) {
        /* a new database has no schema_version table yet: ask before reading it */
        cm_sql_stmt *st = NULL;
        cm_err rc = cm_sql_prepare(db, "SELECT to_regclass('schema_version') IS NOT NULL", &st);
        if (rc != CM_OK)
            return rc;
        int r = cm_sql_step(st);
        int exists = r == CM_SQL_ROW && cm_sql_column_int64(st, 0) == 1;
        cm_sql_finalize(&st);
        if (r == CM_SQL_FAIL)
            return cm_sql_connected(db) ? CM_ERR_DB : CM_ERR_UNAVAILABLE;
        if (!exists)
            return CM_OK;
        sql = "SELECT coalesce(max(version), 0) FROM schema_version";
    }
    cm_sql_stmt *st = NULL;
    cm_err rc = cm_sql_prepare(db, sql, &st);
    if (rc != CM_OK)
        return rc;
    int r = cm_sql_step(st);
    if (r == CM_SQL_ROW)
        *version = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    if (r == CM_SQL_FAIL)
        return cm_sql_connected(db) ? CM_ERR_DB : CM_ERR_UNAVAILABLE;
    return CM_OK;
}

cm_err cm_sql_set_version(cm_sql *db, int64_t version)
{
    char sql[256];
    if (db->engine == CM_SQL_POSTGRESQL)
        snprintf(sql, sizeof sql,
                 "CREATE TABLE IF NOT EXISTS schema_version(version BIGINT NOT NULL);"
                 "DELETE FROM schema_version;"
                 "INSERT INTO schema_version(version) VALUES(%" PRId64 ")",
                 version);
    else
        snprintf(sql, sizeof sql, "PRAGMA user_version=%" PRId64, version);
    return cm_sql_exec(db, sql);
}
