/* history: the CSV reader of historian exports (format in history.h). */
#include "history.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_FIELD 256 /* longest field kept (names, stamps, numbers) */

/* ---- timestamps ---- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm), so
 * that no time zone or locale of this machine enters the result. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int days_in_month(int64_t y, int m)
{
    static const int DAYS[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : DAYS[m - 1];
}

/* Reads exactly `digits` digits (or 1..digits when min1 is set) at *p. */
static int read_num(const char **p, int min_digits, int max_digits, int *out)
{
    int n = 0, v = 0;
    while (n < max_digits && isdigit((unsigned char)(*p)[n])) {
        v = v * 10 + ((*p)[n] - '0');
        n++;
    }
    if (n < min_digits)
        return -1;
    *p += n;
    *out = v;
    return n;
}

/* "HH[:MM[:SS[.fff]]]" at *p; minutes required when need_min. */
static int read_clock(const char **p, int need_min, int *hh, int *mi, int *ss)
{
    *mi = *ss = 0;
    if (read_num(p, 1, 2, hh) < 0)
        return -1;
    if (**p == ':') {
        (*p)++;
        if (read_num(p, 2, 2, mi) != 2)
            return -1;
        if (**p == ':') {
            (*p)++;
            if (read_num(p, 2, 2, ss) != 2)
                return -1;
            if (**p == '.' || **p == ',') { /* fractions of a second are dropped */
                (*p)++;
                int frac;
                if (read_num(p, 1, 9, &frac) < 0)
                    return -1;
            }
        }
    } else if (need_min) {
        return -1;
    }
    return *hh <= 23 && *mi <= 59 && *ss <= 60 ? 0 : -1;
}

int history_parse_time(const char *s, int64_t *out)
{
    while (isspace((unsigned char)*s))
        s++;
    const char *p = s;
    int a, b, c, hh, mi, ss, ndig;
    int64_t y;
    int mo, d, offset_s = 0;
    if ((ndig = read_num(&p, 1, 4, &a)) < 0)
        return -1;
    if (ndig == 4 && *p == '-') { /* ISO 8601: YYYY-MM-DD[T ]HH:MM[:SS][Z|+HH:MM|-HH:MM] */
        p++;
        if (read_num(&p, 2, 2, &b) != 2 || *p++ != '-' || read_num(&p, 2, 2, &c) != 2)
            return -1;
        if (*p != 'T' && *p != ' ')
            return -1;
        p++;
        if (read_clock(&p, 1, &hh, &mi, &ss) != 0)
            return -1;
        if (*p == 'Z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
            if (read_num(&p, 2, 2, &oh) != 2)
                return -1;
            if (*p == ':')
                p++;
            if (isdigit((unsigned char)*p) && read_num(&p, 2, 2, &om) != 2)
                return -1;
            if (oh > 23 || om > 59)
                return -1;
            offset_s = sign * (oh * 3600 + om * 60);
        }
        y = a;
        mo = b;
        d = c;
    } else if (ndig <= 2 && *p == '/') { /* DD/MM/YY[YY] HH[:MM[:SS]] */
        p++;
        if (read_num(&p, 1, 2, &b) < 0 || *p++ != '/')
            return -1;
        int yd = read_num(&p, 2, 4, &c);
        if (yd != 2 && yd != 4)
            return -1;
        if (*p != ' ')
            return -1;
        while (*p == ' ')
            p++;
        if (read_clock(&p, 0, &hh, &mi, &ss) != 0)
            return -1;
        y = yd == 2 ? 2000 + c : c; /* historians' two-digit years are this century */
        mo = b;
        d = a;
    } else {
        return -1;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (*p)
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
        return -1;
    *out = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - offset_s;
    return 0;
}

void history_format_time(int64_t t, char out[20])
{
    int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
    int64_t sec = t - days * 86400, y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    snprintf(out, 20, "%04d-%02d-%02d %02d:%02d:%02d", (int)(y % 10000), m, d, (int)(sec / 3600),
             (int)(sec / 60 % 60), (int)(sec % 60));
}

/* ---- CSV ---- */

typedef struct parser {
    const char *name;
    char *err;
    int line;
} parser;

__attribute__((format(printf, 2, 3))) static cm_err fail(parser *ps, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(ps->err, HISTORY_ERRLEN, "%s:%d: %s", ps->name, ps->line, why);
    return CM_ERR_CONFIG;
}

/* Splits one line (without its end) into at most max fields, trimmed, unquoted, copied into
 * fields[i] (MAX_FIELD bytes each). Returns the number of fields, or -1 with err set. */
static int split_line(parser *ps, const char *s, const char *end, char (*fields)[MAX_FIELD],
                      int max)
{
    int n = 0;
    for (;;) {
        if (n >= max) {
            fail(ps, "more than %d fields", max);
            return -1;
        }
        char *f = fields[n];
        size_t len = 0;
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        if (s < end && *s == '"') {
            s++;
            for (;;) {
                if (s >= end) {
                    fail(ps, "unterminated quoted field %d", n + 1);
                    return -1;
                }
                if (*s == '"') {
                    if (s + 1 < end && s[1] == '"') {
                        s++;
                    } else {
                        s++;
                        break;
                    }
                }
                if (len + 1 >= MAX_FIELD) {
                    fail(ps, "field %d longer than %d bytes", n + 1, MAX_FIELD - 1);
                    return -1;
                }
                f[len++] = *s++;
            }
            while (s < end && (*s == ' ' || *s == '\t'))
                s++;
            if (s < end && *s != ',') {
                fail(ps, "text after the closing quote of field %d", n + 1);
                return -1;
            }
        } else {
            while (s < end && *s != ',') {
                if (len + 1 >= MAX_FIELD) {
                    fail(ps, "field %d longer than %d bytes", n + 1, MAX_FIELD - 1);
                    return -1;
                }
                f[len++] = *s++;
            }
            while (len > 0 && (f[len - 1] == ' ' || f[len - 1] == '\t'))
                len--;
        }
        f[len] = '\0';
        n++;
        if (s >= end)
            return n;
        s++; /* the comma */
    }
}

static int is_label_name(const char *s)
{
    return strcasecmp(s, "ATT_FLAG") == 0 || strcasecmp(s, "label") == 0;
}

static int is_missing(const char *s)
{
    return *s == '\0' || strcasecmp(s, "NA") == 0 || strcasecmp(s, "NaN") == 0 ||
           strcasecmp(s, "null") == 0;
}

/* Parses a number field; -999 and the missing markers give NAN. */
static int parse_value(const char *s, double *out)
{
    if (is_missing(s)) {
        *out = NAN;
        return 0;
    }
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (e == s || *e || errno == ERANGE || !isfinite(v))
        return -1;
    *out = v == -999.0 ? NAN : v;
    return 0;
}

void history_destroy(history **hp)
{
    if (!hp || !*hp)
        return;
    history *h = *hp;
    for (size_t i = 0; h->cols && i < h->n_cols; i++)
        free(h->cols[i]);
    free(h->cols);
    free(h->name);
    free(h->time_col);
    free(h->ts);
    free(h->line);
    free(h->v);
    free(h->label);
    free(h);
    *hp = NULL;
}

int history_column(const history *h, const char *name)
{
    for (size_t i = 0; i < h->n_cols; i++)
        if (strcasecmp(h->cols[i], name) == 0)
            return (int)i;
    return -1;
}

/* Grows the per-row arrays to hold `need` rows. */
static int reserve_rows(history *h, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 1024;
    while (nc < need)
        nc *= 2;
    int64_t *ts = realloc(h->ts, nc * sizeof *ts);
    if (ts)
        h->ts = ts;
    int *line = realloc(h->line, nc * sizeof *line);
    if (line)
        h->line = line;
    signed char *label = realloc(h->label, nc * sizeof *label);
    if (label)
        h->label = label;
    double *v = realloc(h->v, nc * (h->n_cols ? h->n_cols : 1) * sizeof *v);
    if (v)
        h->v = v;
    if (!ts || !line || !label || !v)
        return -1;
    *cap = nc;
    return 0;
}

#define MAX_COLS 4096

cm_err history_parse(const char *name, const char *text, size_t len, history **out,
                     char err[HISTORY_ERRLEN])
{
    *out = NULL;
    parser ps = {.name = name, .err = err, .line = 0};
    history *h = calloc(1, sizeof *h);
    char(*fields)[MAX_FIELD] = calloc(MAX_COLS, MAX_FIELD);
    int *chan_of = calloc(MAX_COLS, sizeof *chan_of); /* field index -> channel column or -1 */
    cm_err rc = CM_ERR_NOMEM;
    if (!h || !fields || !chan_of || !(h->name = strdup(name)))
        goto done;
    rc = CM_ERR_CONFIG;
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    int n_fields = 0, label_field = -1;
    size_t cap = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        ps.line++;
        if (le > p && le[-1] == '\r')
            le--;
        const char *q = p;
        while (q < le && isspace((unsigned char)*q))
            q++;
        if (q == le || *q == '#') {
            p = next;
            continue;
        }
        if (memchr(p, '\0', (size_t)(le - p))) {
            rc = fail(&ps, "NUL byte in line");
            goto done;
        }
        int n = split_line(&ps, p, le, fields, MAX_COLS);
        if (n < 0)
            goto done;
        if (n_fields == 0) { /* the header */
            if (n < 2) {
                rc = fail(&ps, "header needs a timestamp column and at least one more column");
                goto done;
            }
            n_fields = n;
            if (!(h->time_col = strdup(fields[0])) ||
                !(h->cols = calloc((size_t)n, sizeof *h->cols))) {
                rc = CM_ERR_NOMEM;
                goto done;
            }
            for (int i = 1; i < n; i++) {
                if (fields[i][0] == '\0') {
                    rc = fail(&ps, "column %d has an empty name", i + 1);
                    goto done;
                }
                if (is_label_name(fields[i])) {
                    if (label_field >= 0) {
                        rc = fail(&ps, "two label columns ('%s')", fields[i]);
                        goto done;
                    }
                    label_field = i;
                    chan_of[i] = -1;
                    continue;
                }
                if (history_column(h, fields[i]) >= 0) {
                    rc = fail(&ps, "column '%s' appears twice", fields[i]);
                    goto done;
                }
                if (!(h->cols[h->n_cols] = strdup(fields[i]))) {
                    rc = CM_ERR_NOMEM;
                    goto done;
                }
                chan_of[i] = (int)h->n_cols++;
            }
            h->has_label = label_field >= 0;
            p = next;
            continue;
        }
        if (n != n_fields) {
            rc = fail(&ps, "expected %d fields as in the header, got %d", n_fields, n);
            goto done;
        }
        if (reserve_rows(h, &cap, h->n_rows + 1) != 0) {
            rc = CM_ERR_NOMEM;
            goto done;
        }
        size_t r = h->n_rows;
        if (history_parse_time(fields[0], &h->ts[r]) != 0) {
            rc = fail(&ps, "bad timestamp '%s' (expected DD/MM/YY HH, DD/MM/YYYY HH:MM, "
                           "YYYY-MM-DDTHH:MM[:SS][Z] or YYYY-MM-DD HH:MM:SS)",
                      fields[0]);
            goto done;
        }
        h->line[r] = ps.line;
        h->label[r] = HISTORY_NORMAL;
        for (int i = 1; i < n; i++) {
            double v;
            if (parse_value(fields[i], &v) != 0) {
                rc = fail(&ps, "column '%s': '%s' is not a number",
                          i == label_field ? "label" : h->cols[chan_of[i]], fields[i]);
                goto done;
            }
            if (i == label_field) {
                if (isnan(v))
                    h->label[r] = HISTORY_UNKNOWN;
                else if (v == 0 || v == 1)
                    h->label[r] = v == 1 ? HISTORY_ATTACK : HISTORY_NORMAL;
                else {
                    rc = fail(&ps, "label '%s' is not 0, 1, -999 or empty", fields[i]);
                    goto done;
                }
            } else {
                h->v[r * h->n_cols + (size_t)chan_of[i]] = v;
            }
        }
        h->n_rows++;
        p = next;
    }
    if (n_fields == 0) {
        snprintf(err, HISTORY_ERRLEN, "%s: no header line", name);
        goto done;
    }
    if (h->n_cols == 0 && !h->has_label) {
        snprintf(err, HISTORY_ERRLEN, "%s: no channel or label column besides the timestamp",
                 name);
        goto done;
    }
    *out = h;
    h = NULL;
    rc = CM_OK;
done:
    if (rc == CM_ERR_NOMEM)
        snprintf(err, HISTORY_ERRLEN, "%s: out of memory", name);
    free(fields);
    free(chan_of);
    history_destroy(&h);
    return rc;
}

cm_err history_load(const char *path, history **out, char err[HISTORY_ERRLEN])
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, HISTORY_ERRLEN, "%s: %s", path, strerror(errno));
        return CM_ERR_IO;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    cm_err rc = CM_ERR_NOMEM;
    while (buf) {
        if (len == cap) {
            if (cap >= HISTORY_MAX_FILE) {
                snprintf(err, HISTORY_ERRLEN, "%s: larger than %u MiB", path,
                         HISTORY_MAX_FILE >> 20);
                rc = CM_ERR_TOO_BIG;
                goto done;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                snprintf(err, HISTORY_ERRLEN, "%s: read error", path);
                rc = CM_ERR_IO;
                goto done;
            }
            rc = history_parse(path, buf, len, out, err);
            goto done;
        }
    }
    snprintf(err, HISTORY_ERRLEN, "%s: out of memory", path);
done:
    free(buf);
    fclose(f);
    return rc;
}
