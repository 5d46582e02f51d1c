/* backup_pg: see backup_pg.h. Run by suidoctl (backup create, backup restore --postgresql). */
#include "backup_pg.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE 500 /* rows per fetch */

static int fail(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
    return 0;
}

/* "name" with embedded quotes doubled: an identifier in both dialects. */
static void put_ident(FILE *f, const char *name)
{
    fputc('"', f);
    for (const char *p = name; *p; p++) {
        if (*p == '"')
            fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

/* A plain lowercase identifier, written as is (the archive's own names), else quoted. */
static void put_name(FILE *f, const char *name)
{
    int plain = *name && (islower((unsigned char)*name) || *name == '_');
    for (const char *p = name; plain && *p; p++)
        plain = islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_';
    if (plain)
        fputs(name, f);
    else
        put_ident(f, name);
}

typedef struct names {
    char **v;
    size_t n;
} names;

static void names_free(names *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int names_add(names *l, const char *s)
{
    char **nv = realloc(l->v, (l->n + 1) * sizeof *nv);
    if (!nv)
        return 0;
    l->v = nv;
    if (!(l->v[l->n] = strdup(s)))
        return 0;
    l->n++;
    return 1;
}

/* Binds the value of column col of from's current row as parameter i of to. */
static void bind_value(cm_sql_stmt *to, int i, cm_sql_stmt *from, int col)
{
    size_t n = 0;
    const void *b;
    switch (cm_sql_column_type(from, col)) {
    case CM_SQL_INTEGER:
        cm_sql_bind_int64(to, i, cm_sql_column_int64(from, col));
        break;
    case CM_SQL_REAL:
        cm_sql_bind_double(to, i, cm_sql_column_double(from, col));
        break;
    case CM_SQL_TEXT:
        cm_sql_bind_text(to, i, cm_sql_column_text(from, col));
        break;
    case CM_SQL_BLOB:
        b = cm_sql_column_blob(from, col, &n);
        cm_sql_bind_blob(to, i, b ? b : "", n);
        break;
    default:
        cm_sql_bind_null(to, i);
    }
}

/* An INSERT of every column in cols into table, with ? parameters; malloc'd. */
static char *insert_sql(const char *table, const names *cols)
{
    char *sql = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&sql, &sz);
    if (!f)
        return NULL;
    fputs("INSERT INTO ", f);
    put_ident(f, table);
    fputc('(', f);
    for (size_t i = 0; i < cols->n; i++) {
        if (i)
            fputs(", ", f);
        put_ident(f, cols->v[i]);
    }
    fputs(") VALUES(", f);
    for (size_t i = 0; i < cols->n; i++)
        fputs(i ? ", ?" : "?", f);
    fputc(')', f);
    if (fclose(f) != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

/* ------------------------------------------------------------------ PostgreSQL -> SQLite */

/* The SQLite type the archive's own schema uses for a PostgreSQL type (format_type). */
static const char *lite_type(const char *pg)
{
    if (!strcmp(pg, "bigint") || !strcmp(pg, "integer") || !strcmp(pg, "smallint") ||
        !strcmp(pg, "boolean"))
        return "INTEGER";
    if (!strcmp(pg, "double precision") || !strcmp(pg, "real"))
        return "REAL";
    if (!strncmp(pg, "numeric", 7))
        return "NUMERIC";
    if (!strcmp(pg, "bytea"))
        return "BLOB";
    return "TEXT";
}

/* A column default as SQLite takes it: PostgreSQL's text without its trailing type cast
 * ("''::text" -> "''"); an expression in parentheses. Empty: no default worth keeping. */
static void lite_default(const char *pg, char *out, size_t len)
{
    out[0] = '\0';
    if (!*pg || strstr(pg, "nextval("))
        return;
    size_t n = 0;
    int q = 0;
    for (; pg[n]; n++) {
        if (pg[n] == '\'')
            q = !q;
        else if (!q && pg[n] == ':' && pg[n + 1] == ':')
            break;
    }
    char v[256];
    snprintf(v, sizeof v, "%.*s", (int)(n < sizeof v - 1 ? n : sizeof v - 1), pg);
    int literal = v[0] == '\'' || isdigit((unsigned char)v[0]) ||
                  (v[0] == '-' && isdigit((unsigned char)v[1]));
    if (literal)
        snprintf(out, len, "%s", v);
    else
        snprintf(out, len, "(%s)", v);
}

static const char TABLES_SQL[] =
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    " AND c.relname <> 'schema_version' ORDER BY c.relname";

static const char COLUMNS_SQL[] =
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
    " coalesce(pg_get_expr(d.adbin, d.adrelid), '')"
    " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    " WHERE a.attrelid = to_regclass(quote_ident(?)) AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY a.attnum";

static const char PKEY_SQL[] =
    "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
    " WHERE i.indrelid = to_regclass(quote_ident(?)) AND i.indisprimary"
    " ORDER BY array_position(i.indkey::int2[], a.attnum)";

static const char INDEXES_SQL[] =
    "SELECT ci.relname, i.indisunique,"
    " (SELECT string_agg(pg_get_indexdef(i.indexrelid, k, true), ', ' ORDER BY k)"
    "  FROM generate_series(1, i.indnatts) AS k)"
    " FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid"
    " WHERE i.indrelid = to_regclass(quote_ident(?)) AND NOT i.indisprimary ORDER BY ci.relname";

/* Every value of column 0 of sql (one ? = arg, or none) into l. */
static int list(cm_sql *db, const char *sql, const char *arg, names *l, char *why, size_t len)
{
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(db, sql, &st) != CM_OK)
        return fail(why, len, "%s", cm_sql_error(db));
    if (arg)
        cm_sql_bind_text(st, 1, arg);
    int rc;
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW)
        if (!names_add(l, cm_sql_column_text(st, 0))) {
            cm_sql_finalize(&st);
            return fail(why, len, "%s", "out of memory");
        }
    cm_sql_finalize(&st);
    return rc == CM_SQL_DONE ? 1 : fail(why, len, "%s", cm_sql_error(db));
}

/* The CREATE TABLE and CREATE INDEX statements of table in SQLite's dialect, and its columns. */
static int table_ddl(cm_sql *src, const char *table, names *cols, char **ddl, char *why,
                     size_t len)
{
    names pk = {0};
    cm_sql_stmt *st = NULL;
    char *sql = NULL;
    size_t sz = 0;
    int ok = 0;
    FILE *f = NULL;
    *ddl = NULL;
    if (!list(src, PKEY_SQL, table, &pk, why, len))
        goto out;
    if (!(f = open_memstream(&sql, &sz))) {
        fail(why, len, "%s", "out of memory");
        goto out;
    }
    fputs("CREATE TABLE ", f);
    put_name(f, table);
    fputc('(', f);
    if (cm_sql_prepare(src, COLUMNS_SQL, &st) != CM_OK) {
        fail(why, len, "%s", cm_sql_error(src));
        goto out;
    }
    cm_sql_bind_text(st, 1, table);
    int rc, rowid_key = 0;
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
        const char *name = cm_sql_column_text(st, 0);
        const char *type = lite_type(cm_sql_column_text(st, 1));
        if (!names_add(cols, name)) {
            fail(why, len, "%s", "out of memory");
            goto out;
        }
        if (cols->n > 1)
            fputs(", ", f);
        put_name(f, name);
        /* a single integer key is SQLite's rowid, as the archive declares it */
        if (pk.n == 1 && !strcmp(pk.v[0], name) && !strcmp(type, "INTEGER")) {
            fputs(" INTEGER PRIMARY KEY", f);
            rowid_key = 1;
            continue;
        }
        fprintf(f, " %s", type);
        if (cm_sql_column_int64(st, 2))
            fputs(" NOT NULL", f);
        char dflt[300];
        lite_default(cm_sql_column_text(st, 3), dflt, sizeof dflt);
        if (*dflt)
            fprintf(f, " DEFAULT %s", dflt);
    }
    cm_sql_finalize(&st);
    if (rc != CM_SQL_DONE) {
        fail(why, len, "%s", cm_sql_error(src));
        goto out;
    }
    if (pk.n && !rowid_key) {
        fputs(", PRIMARY KEY(", f);
        for (size_t i = 0; i < pk.n; i++) {
            if (i)
                fputs(", ", f);
            put_name(f, pk.v[i]);
        }
        fputs(")) WITHOUT ROWID;", f);
    } else {
        fputs(");", f);
    }
    if (cm_sql_prepare(src, INDEXES_SQL, &st) != CM_OK) {
        fail(why, len, "%s", cm_sql_error(src));
        goto out;
    }
    cm_sql_bind_text(st, 1, table);
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
        fprintf(f, "CREATE %sINDEX ", cm_sql_column_int64(st, 1) ? "UNIQUE " : "");
        put_name(f, cm_sql_column_text(st, 0));
        fputs(" ON ", f);
        put_name(f, table);
        fprintf(f, "(%s);", cm_sql_column_text(st, 2));
    }
    cm_sql_finalize(&st);
    if (rc != CM_SQL_DONE) {
        fail(why, len, "%s", cm_sql_error(src));
        goto out;
    }
    ok = 1;
out:
    cm_sql_finalize(&st);
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok)
        *ddl = sql;
    else
        free(sql);
    names_free(&pk);
    return ok;
}

/* Copies every row of table from PostgreSQL (a cursor, PAGE rows at a time) into SQLite. */
static int copy_from_pg(cm_sql *src, cm_sql *dst, const char *table, const names *cols,
                        uint64_t *rows, char *why, size_t len)
{
    char *sel = NULL, *ins = insert_sql(table, cols);
    size_t sz = 0;
    cm_sql_stmt *fetch = NULL, *put = NULL;
    int ok = 0;
    FILE *f = open_memstream(&sel, &sz);
    if (!f || !ins) {
        if (f)
            fclose(f);
        free(sel);
        free(ins);
        return fail(why, len, "%s", "out of memory");
    }
    fputs("DECLARE suido_backup NO SCROLL CURSOR FOR SELECT ", f);
    for (size_t i = 0; i < cols->n; i++) {
        if (i)
            fputs(", ", f);
        put_ident(f, cols->v[i]);
    }
    fputs(" FROM ", f);
    put_ident(f, table);
    if (fclose(f) != 0) {
        free(sel);
        free(ins);
        return fail(why, len, "%s", "out of memory");
    }
    if (cm_sql_exec(src, sel) != CM_OK || cm_sql_prepare(src, "FETCH FORWARD 500 FROM suido_backup",
                                                         &fetch) != CM_OK) {
        fail(why, len, "%s: %s", table, cm_sql_error(src));
        goto out;
    }
    if (cm_sql_prepare(dst, ins, &put) != CM_OK) {
        fail(why, len, "%s: %s", table, cm_sql_error(dst));
        goto out;
    }
    for (;;) {
        int rc, got = 0;
        while ((rc = cm_sql_step(fetch)) == CM_SQL_ROW) {
            for (size_t i = 0; i < cols->n; i++)
                bind_value(put, (int)i + 1, fetch, (int)i);
            if (cm_sql_step(put) != CM_SQL_DONE) {
                fail(why, len, "%s: %s", table, cm_sql_error(dst));
                goto out;
            }
            cm_sql_reset(put);
            got++;
            (*rows)++;
        }
        if (rc != CM_SQL_DONE) {
            fail(why, len, "%s: %s", table, cm_sql_error(src));
            goto out;
        }
        if (got < PAGE)
            break;
        cm_sql_reset(fetch);
    }
    ok = cm_sql_exec(src, "CLOSE suido_backup") == CM_OK ||
         fail(why, len, "%s: %s", table, cm_sql_error(src));
out:
    cm_sql_finalize(&fetch);
    cm_sql_finalize(&put);
    free(sel);
    free(ins);
    return ok;
}

int backup_pg_snapshot(cm_sql *src, const char *dst, uint64_t *rows, char *why, size_t len)
{
    names tables = {0};
    cm_sql *d = NULL;
    int ok = 0;
    int64_t version = 0;
    *rows = 0;
    if (cm_sql_engine_of(src) != CM_SQL_POSTGRESQL)
        return fail(why, len, "%s", "not a PostgreSQL database");
    /* one committed state for every table: a snapshot that ignores later commits */
    if (cm_sql_begin_snapshot(src) != CM_OK)
        return fail(why, len, "%s", cm_sql_error(src));
    if (cm_sql_get_version(src, &version) != CM_OK) {
        fail(why, len, "schema version: %s", cm_sql_error(src));
        goto out;
    }
    if (!list(src, TABLES_SQL, NULL, &tables, why, len))
        goto out;
    if (tables.n == 0) {
        fail(why, len, "%s", "the PostgreSQL database holds no archive tables");
        goto out;
    }
    char w[512];
    if (cm_sql_open_as(CM_SQL_SQLITE, dst, 0, &d, w, sizeof w) != CM_OK) {
        fail(why, len, "%s: %s", dst, w);
        goto out;
    }
    if (cm_sql_begin(d) != CM_OK) {
        fail(why, len, "%s: %s", dst, cm_sql_error(d));
        goto out;
    }
    for (size_t t = 0; t < tables.n; t++) {
        names cols = {0};
        char *ddl = NULL;
        int step_ok = table_ddl(src, tables.v[t], &cols, &ddl, why, len);
        if (step_ok && cm_sql_exec(d, ddl) != CM_OK)
            step_ok = fail(why, len, "%s: schema of %s: %s", dst, tables.v[t], cm_sql_error(d));
        if (step_ok)
            step_ok = copy_from_pg(src, d, tables.v[t], &cols, rows, why, len);
        free(ddl);
        names_free(&cols);
        if (!step_ok)
            goto out;
    }
    if (cm_sql_set_version(d, version) != CM_OK || cm_sql_commit(d) != CM_OK) {
        fail(why, len, "%s: %s", dst, cm_sql_error(d));
        goto out;
    }
    /* one self-contained file: no WAL beside it */
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(d, "PRAGMA journal_mode=DELETE", &st) != CM_OK ||
        cm_sql_step(st) != CM_SQL_ROW || strcmp(cm_sql_column_text(st, 0), "delete") != 0) {
        cm_sql_finalize(&st);
        fail(why, len, "%s: could not switch the copy to a rollback journal", dst);
        goto out;
    }
    cm_sql_finalize(&st);
    ok = 1;
out:
    if (d)
        cm_sql_rollback(d);
    cm_sql_close(&d);
    cm_sql_rollback(src); /* ends the read-only snapshot */
    names_free(&tables);
    return ok;
}

/* ------------------------------------------------------------------ SQLite -> PostgreSQL */

int backup_pg_empty(cm_sql *db, char *why, size_t len)
{
    cm_sql_stmt *st = NULL;
    int64_t n = -1;
    if (cm_sql_prepare(db,
                       "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
                       " AND c.relkind IN ('r', 'p', 'v', 'm', 'S')",
                       &st) == CM_OK &&
        cm_sql_step(st) == CM_SQL_ROW)
        n = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    if (n < 0)
        return fail(why, len, "%s", cm_sql_error(db));
    if (n > 0)
        return fail(why, len,
                    "the database is not empty (%lld tables, views or sequences in its schema): "
                    "restore loads into an empty database only",
                    (long long)n);
    return 1;
}

/* Copies every row of table from the SQLite copy into PostgreSQL; returns its columns. */
static int copy_to_pg(cm_sql *src, cm_sql *dst, const char *table, uint64_t *rows, char *why,
                      size_t len)
{
    char sel[512];
    names cols = {0};
    cm_sql_stmt *get = NULL, *put = NULL;
    char *ins = NULL;
    int ok = 0, rc;
    char *q = NULL;
    size_t qsz = 0;
    FILE *f = open_memstream(&q, &qsz);
    if (!f)
        return fail(why, len, "%s", "out of memory");
    put_ident(f, table);
    fclose(f);
    snprintf(sel, sizeof sel, "SELECT * FROM %s", q ? q : "");
    free(q);
    if (cm_sql_prepare(src, sel, &get) != CM_OK) {
        fail(why, len, "%s: %s", table, cm_sql_error(src));
        goto out;
    }
    for (int i = 0; i < cm_sql_column_count(get); i++)
        if (!names_add(&cols, cm_sql_column_name(get, i))) {
            fail(why, len, "%s", "out of memory");
            goto out;
        }
    if (!(ins = insert_sql(table, &cols)) || cm_sql_prepare(dst, ins, &put) != CM_OK) {
        fail(why, len, "%s: %s", table, ins ? cm_sql_error(dst) : "out of memory");
        goto out;
    }
    while ((rc = cm_sql_step(get)) == CM_SQL_ROW) {
        for (size_t i = 0; i < cols.n; i++)
            bind_value(put, (int)i + 1, get, (int)i);
        if (cm_sql_step(put) != CM_SQL_DONE) {
            fail(why, len, "%s: %s", table, cm_sql_error(dst));
            goto out;
        }
        cm_sql_reset(put);
        (*rows)++;
    }
    if (rc != CM_SQL_DONE) {
        fail(why, len, "%s: %s", table, cm_sql_error(src));
        goto out;
    }
    ok = 1;
out:
    cm_sql_finalize(&get);
    cm_sql_finalize(&put);
    free(ins);
    names_free(&cols);
    return ok;
}

/* Moves the identity counters of table past its highest id, so new rows do not collide with
 * the loaded ones. */
static int move_identities(cm_sql *dst, const char *table, char *why, size_t len)
{
    names idcols = {0};
    if (!list(dst,
              "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(?))"
              " AND attidentity <> '' AND NOT attisdropped",
              table, &idcols, why, len))
        return 0;
    int ok = 1;
    for (size_t i = 0; ok && i < idcols.n; i++) {
        char *sql = NULL;
        size_t sz = 0;
        FILE *f = open_memstream(&sql, &sz);
        if (!f)
            return names_free(&idcols), fail(why, len, "%s", "out of memory");
        fputs("SELECT setval(pg_get_serial_sequence(?, ?), coalesce((SELECT max(", f);
        put_ident(f, idcols.v[i]);
        fputs(") FROM ", f);
        put_ident(f, table);
        fputs("), 0) + 1, false)", f);
        fclose(f);
        cm_sql_stmt *st = NULL;
        char qt[300];
        snprintf(qt, sizeof qt, "\"%s\"", table);
        ok = sql && cm_sql_prepare(dst, sql, &st) == CM_OK;
        if (ok) {
            cm_sql_bind_text(st, 1, qt);
            cm_sql_bind_text(st, 2, idcols.v[i]);
            ok = cm_sql_step(st) == CM_SQL_ROW;
        }
        if (!ok)
            fail(why, len, "%s: identity of %s: %s", table, idcols.v[i], cm_sql_error(dst));
        cm_sql_finalize(&st);
        free(sql);
    }
    names_free(&idcols);
    return ok;
}

int backup_pg_load(cm_sql *src, cm_sql *dst, uint64_t *rows, char *why, size_t len)
{
    names tables = {0};
    cm_sql_stmt *st = NULL;
    int ok = 0, rc;
    int64_t version = 0;
    *rows = 0;
    if (cm_sql_get_version(src, &version) != CM_OK)
        return fail(why, len, "schema version: %s", cm_sql_error(src));
    /* the copy's own schema text: what the archive (or a snapshot) created it with */
    if (cm_sql_prepare(src,
                       "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                       " AND name NOT LIKE 'sqlite^_%' ESCAPE '^'"
                       " ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, rowid",
                       &st) != CM_OK)
        return fail(why, len, "%s", cm_sql_error(src));
    while ((rc = cm_sql_step(st)) == CM_SQL_ROW) {
        const char *type = cm_sql_column_text(st, 0);
        if (strcmp(type, "table") != 0 && strcmp(type, "index") != 0)
            continue;
        if (!strcmp(type, "table") && !names_add(&tables, cm_sql_column_text(st, 1))) {
            fail(why, len, "%s", "out of memory");
            goto out;
        }
        if (cm_sql_exec_ddl(dst, cm_sql_column_text(st, 2)) != CM_OK) {
            fail(why, len, "schema of %s: %s", cm_sql_column_text(st, 1), cm_sql_error(dst));
            goto out;
        }
    }
    if (rc != CM_SQL_DONE) {
        fail(why, len, "%s", cm_sql_error(src));
        goto out;
    }
    cm_sql_finalize(&st);
    for (size_t t = 0; t < tables.n; t++)
        if (!copy_to_pg(src, dst, tables.v[t], rows, why, len) ||
            !move_identities(dst, tables.v[t], why, len))
            goto out;
    if (cm_sql_set_version(dst, version) != CM_OK) {
        fail(why, len, "schema version: %s", cm_sql_error(dst));
        goto out;
    }
    ok = 1;
out:
    cm_sql_finalize(&st);
    names_free(&tables);
    return ok;
}
