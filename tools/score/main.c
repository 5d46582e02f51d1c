/* suido-score: the official BATADAL score of a detector's flags against labels.
 *
 *   suido-score --labels LABELS.csv --flags FLAGS.csv [--attacks ATTACKS.csv]
 *
 * LABELS.csv: a historian CSV whose first column is the timestamp and which has an ATT_FLAG (or
 * label) column: 1 attack, 0 normal, -999 or empty unknown. FLAGS.csv: the output of
 * `suido-anomaly replay`, header timestamp,flag,score, one row per labels row in the same order
 * (the timestamps must agree). ATTACKS.csv (optional): the attack windows, with columns named
 * start and end ("YYYY-MM-DD HH:MM", inclusive), '#' comment lines allowed; without it the attacks
 * are the maximal runs of consecutive rows labelled 1.
 *
 * The score (Taormina et al. 2018, the official BATADAL rules):
 *   for each attack i of duration dt_i hours, TTD_i = hours from its start to the first flagged
 *   row inside it (dt_i if none); S_TTD = 1 - mean(TTD_i / dt_i);
 *   S_CM = (TPR + TNR) / 2 over every labelled row (unknown rows count in neither);
 *   S = (S_TTD + S_CM) / 2.
 * Durations are measured on the timestamps: dt_i = end - start + one sampling period (the median
 * step of the rows), so an hourly attack from 00:00 to 23:00 lasts 24 h.
 *
 * Prints "key value" lines: S, S_TTD, S_CM, TPR, TNR, then one line per attack. Exit 0 on
 * success, 1 on bad input (reason with file:line on stderr), 2 on usage.
 *
 * The tool is self-contained (its own small CSV and timestamp reader): the build links each tool
 * from its own directory only. Its timestamp formats are those of services/anomaly/history.h. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_FIELDS 512
#define MAX_FIELD 512
#define MAX_ATTACKS 10000

typedef struct table {
    size_t n;
    int64_t *ts;
    int *val; /* labels: 1, 0, -1 unknown; flags: 0 or 1 */
} table;

static char fields[MAX_FIELDS][MAX_FIELD];

/* ---- timestamps: DD/MM/YY[YY] HH[:MM[:SS]] and YYYY-MM-DD[T ]HH:MM[:SS][Z] ---- */

static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

static int digits(const char **p, int lo, int hi, int *out)
{
    int n = 0, v = 0;
    while (n < hi && isdigit((unsigned char)(*p)[n]))
        v = v * 10 + ((*p)[n++] - '0');
    if (n < lo)
        return -1;
    *p += n;
    *out = v;
    return n;
}

static int parse_time(const char *s, int64_t *out)
{
    int a, b, c, hh, mi = 0, ss = 0, n, y;
    const char *p = s;
    if ((n = digits(&p, 1, 4, &a)) < 0)
        return -1;
    if (n == 4 && *p == '-') {
        p++;
        if (digits(&p, 2, 2, &b) < 0 || *p++ != '-' || digits(&p, 2, 2, &c) < 0 ||
            (*p != 'T' && *p != ' '))
            return -1;
        p++;
        y = a;
    } else if (n <= 2 && *p == '/') {
        p++;
        int yd;
        if (digits(&p, 1, 2, &b) < 0 || *p++ != '/' || (yd = digits(&p, 2, 4, &c)) < 0 ||
            (yd != 2 && yd != 4) || *p != ' ')
            return -1;
        while (*p == ' ')
            p++;
        y = yd == 2 ? 2000 + c : c;
        int day = a;
        a = y;
        c = day;
    } else {
        return -1;
    }
    if (digits(&p, 1, 2, &hh) < 0)
        return -1;
    if (*p == ':' && (p++, digits(&p, 2, 2, &mi) < 0))
        return -1;
    if (*p == ':' && (p++, digits(&p, 2, 2, &ss) < 0))
        return -1;
    if (*p == 'Z')
        p++;
    while (isspace((unsigned char)*p))
        p++;
    if (*p || b < 1 || b > 12 || c < 1 || c > 31 || hh > 23 || mi > 59 || ss > 60)
        return -1;
    *out = days_from_civil(a, b, c) * 86400 + hh * 3600 + mi * 60 + ss;
    return 0;
}

/* ---- CSV ---- */

/* Splits line (no line end) into trimmed, unquoted fields; returns the count or -1. */
static int split(const char *s)
{
    int n = 0;
    for (;;) {
        if (n >= MAX_FIELDS)
            return -1;
        size_t len = 0;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s == '"') {
            for (s++;; s++) {
                if (!*s)
                    return -1;
                if (*s == '"' && s[1] != '"')
                    break;
                if (*s == '"')
                    s++;
                if (len + 1 < MAX_FIELD)
                    fields[n][len++] = *s;
            }
            s++;
            while (*s == ' ' || *s == '\t')
                s++;
        } else {
            while (*s && *s != ',')
                if (len + 1 < MAX_FIELD)
                    fields[n][len++] = *s++;
                else
                    s++;
            while (len > 0 && isspace((unsigned char)fields[n][len - 1]))
                len--;
        }
        fields[n++][len] = '\0';
        if (*s != ',')
            return *s ? -1 : n;
        s++;
    }
}

/* Reads the next non-blank, non-comment line into *line; returns its field count, 0 at EOF, -1
 * on a malformed line. */
static int next_row(FILE *f, char **line, size_t *cap, int *lineno)
{
    ssize_t got;
    while ((got = getline(line, cap, f)) >= 0) {
        (*lineno)++;
        while (got > 0 && ((*line)[got - 1] == '\n' || (*line)[got - 1] == '\r'))
            (*line)[--got] = '\0';
        char *s = *line;
        if (*lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
            memmove(s, s + 3, strlen(s + 3) + 1);
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '\0' || *s == '#')
            continue;
        return split(*line);
    }
    return 0;
}

static int push(table *t, size_t *cap, int64_t ts, int v)
{
    if (t->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        int64_t *nts = realloc(t->ts, nc * sizeof *nts);
        if (nts)
            t->ts = nts;
        int *nv = realloc(t->val, nc * sizeof *nv);
        if (nv)
            t->val = nv;
        if (!nts || !nv)
            return -1;
        *cap = nc;
    }
    t->ts[t->n] = ts;
    t->val[t->n++] = v;
    return 0;
}

/* Loads a labels file (flags = 0) or a FLAGS.csv (flags = 1) into t. */
static int load(const char *path, int flags, table *t)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "suido-score: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, tcap = 0;
    int lineno = 0, rc = -1, col = -1;
    int n = next_row(f, &line, &cap, &lineno);
    if (n <= 0) {
        fprintf(stderr, "suido-score: %s:%d: missing or malformed header\n", path, lineno);
        goto done;
    }
    int width = n;
    if (flags) {
        if (n != 3 || strcmp(fields[0], "timestamp") || strcmp(fields[1], "flag") ||
            strcmp(fields[2], "score")) {
            fprintf(stderr, "suido-score: %s:%d: header must be timestamp,flag,score\n", path,
                    lineno);
            goto done;
        }
        col = 1;
    } else {
        for (int i = 1; i < n; i++)
            if (strcasecmp(fields[i], "ATT_FLAG") == 0 || strcasecmp(fields[i], "label") == 0)
                col = i;
        if (col < 0) {
            fprintf(stderr, "suido-score: %s:%d: no ATT_FLAG or label column\n", path, lineno);
            goto done;
        }
    }
    while ((n = next_row(f, &line, &cap, &lineno)) != 0) {
        if (n != width) {
            fprintf(stderr, "suido-score: %s:%d: expected %d fields, got %d\n", path, lineno,
                    width, n);
            goto done;
        }
        int64_t ts;
        if (parse_time(fields[0], &ts) != 0) {
            fprintf(stderr, "suido-score: %s:%d: bad timestamp '%s'\n", path, lineno, fields[0]);
            goto done;
        }
        char *e;
        double v = strtod(fields[col], &e);
        int val;
        if (!flags && (fields[col][0] == '\0' || (e != fields[col] && !*e && v == -999)))
            val = -1;
        else if (e != fields[col] && !*e && (v == 0 || v == 1))
            val = (int)v;
        else {
            fprintf(stderr, "suido-score: %s:%d: %s '%s' is not 0 or 1%s\n", path, lineno,
                    flags ? "flag" : "label", fields[col], flags ? "" : " (or -999)");
            goto done;
        }
        if (push(t, &tcap, ts, val) != 0) {
            fprintf(stderr, "suido-score: out of memory\n");
            goto done;
        }
    }
    rc = 0;
done:
    free(line);
    fclose(f);
    return rc;
}

typedef struct window {
    int64_t start, end; /* inclusive */
} window;

/* Loads attack windows from a file with start and end columns. Returns the count or -1. */
static int load_attacks(const char *path, window *w)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "suido-score: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, count = -1, cs = -1, ce = -1;
    int n = next_row(f, &line, &cap, &lineno);
    for (int i = 0; i < n; i++) {
        if (strcasecmp(fields[i], "start") == 0)
            cs = i;
        if (strcasecmp(fields[i], "end") == 0)
            ce = i;
    }
    if (cs < 0 || ce < 0) {
        fprintf(stderr, "suido-score: %s:%d: header needs columns start and end\n", path, lineno);
        goto done;
    }
    int k = 0;
    while ((n = next_row(f, &line, &cap, &lineno)) != 0) {
        if (n < 0 || n <= cs || n <= ce || k >= MAX_ATTACKS ||
            parse_time(fields[cs], &w[k].start) || parse_time(fields[ce], &w[k].end) ||
            w[k].end < w[k].start) {
            fprintf(stderr, "suido-score: %s:%d: bad attack window\n", path, lineno);
            goto done;
        }
        k++;
    }
    count = k;
done:
    free(line);
    fclose(f);
    return count;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void fmt_time(int64_t t, char out[20])
{
    int64_t z = t / 86400 + 719468, sec = t % 86400;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097, doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1), m = (int)(mp < 10 ? mp + 3 : mp - 9);
    int64_t y = yoe + era * 400 + (m <= 2);
    snprintf(out, 20, "%04d-%02d-%02d %02d:%02d:%02d", (int)(y % 10000), m, d,
             (int)(sec / 3600), (int)(sec / 60 % 60), (int)(sec % 60));
}

int main(int argc, char **argv)
{
    const char *labels = NULL, *flagsp = NULL, *attacks = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--labels") == 0)
            labels = argv[i + 1];
        else if (strcmp(argv[i], "--flags") == 0)
            flagsp = argv[i + 1];
        else if (strcmp(argv[i], "--attacks") == 0)
            attacks = argv[i + 1];
        else
            labels = NULL, i = argc;
    }
    if (!labels || !flagsp || argc % 2 == 0) {
        fprintf(stderr, "usage: suido-score --labels LABELS.csv --flags FLAGS.csv "
                        "[--attacks ATTACKS.csv]\n");
        return 2;
    }
    table lab = {0}, fl = {0};
    window *w = calloc(MAX_ATTACKS, sizeof *w);
    int rc = 1;
    if (!w || load(labels, 0, &lab) != 0 || load(flagsp, 1, &fl) != 0)
        goto done;
    if (lab.n != fl.n) {
        fprintf(stderr, "suido-score: %s has %zu rows, %s has %zu: one flag per row expected\n",
                labels, lab.n, flagsp, fl.n);
        goto done;
    }
    for (size_t t = 0; t < lab.n; t++)
        if (lab.ts[t] != fl.ts[t]) {
            char a[20], b[20];
            fmt_time(lab.ts[t], a);
            fmt_time(fl.ts[t], b);
            fprintf(stderr, "suido-score: row %zu: labels at %s but flag at %s\n", t + 1, a, b);
            goto done;
        }
    if (lab.n < 2) {
        fprintf(stderr, "suido-score: need at least two rows\n");
        goto done;
    }
    /* The sampling period: the median step. */
    int64_t *steps = malloc((lab.n - 1) * sizeof *steps);
    if (!steps)
        goto done;
    for (size_t t = 1; t < lab.n; t++)
        steps[t - 1] = lab.ts[t] - lab.ts[t - 1];
    qsort(steps, lab.n - 1, sizeof *steps, cmp_i64);
    int64_t period = steps[(lab.n - 1) / 2];
    free(steps);
    if (period <= 0) {
        fprintf(stderr, "suido-score: timestamps do not increase\n");
        goto done;
    }

    int na = 0;
    if (attacks) {
        if ((na = load_attacks(attacks, w)) < 0)
            goto done;
    } else {
        for (size_t t = 0; t < lab.n; t++) {
            if (lab.val[t] != 1 || (t > 0 && lab.val[t - 1] == 1))
                continue;
            size_t e = t;
            while (e + 1 < lab.n && lab.val[e + 1] == 1)
                e++;
            if (na >= MAX_ATTACKS)
                break;
            w[na++] = (window){lab.ts[t], lab.ts[e]};
        }
    }
    size_t pos = 0, neg = 0, tp = 0, tn = 0;
    for (size_t t = 0; t < lab.n; t++) {
        pos += lab.val[t] == 1;
        neg += lab.val[t] == 0;
        tp += lab.val[t] == 1 && fl.val[t] == 1;
        tn += lab.val[t] == 0 && fl.val[t] == 0;
    }
    if (na == 0 || pos == 0 || neg == 0) {
        fprintf(stderr, "suido-score: the score needs at least one attack, one attack row and "
                        "one normal row (got %d attacks, %zu attack rows, %zu normal rows)\n",
                na, pos, neg);
        goto done;
    }
    double tpr = (double)tp / (double)pos, tnr = (double)tn / (double)neg;
    double s_cm = (tpr + tnr) / 2, sum_ratio = 0;
    char lines[MAX_ATTACKS > 64 ? 64 : MAX_ATTACKS][160];
    int shown = 0;
    for (int i = 0; i < na; i++) {
        double dur_h = (double)(w[i].end - w[i].start + period) / 3600.0;
        double ttd_h = dur_h;
        for (size_t t = 0; t < lab.n; t++)
            if (lab.ts[t] >= w[i].start && lab.ts[t] <= w[i].end && fl.val[t]) {
                ttd_h = (double)(lab.ts[t] - w[i].start) / 3600.0;
                break;
            }
        sum_ratio += ttd_h / dur_h;
        if (shown < 64) {
            char st[20];
            fmt_time(w[i].start, st);
            snprintf(lines[shown++], sizeof lines[0],
                     "attack %d start %s duration_h %g ttd_h %g ttd_ratio %.4f%s", i + 1, st,
                     dur_h, ttd_h, ttd_h / dur_h, ttd_h >= dur_h ? " missed" : "");
        }
    }
    double s_ttd = 1 - sum_ratio / na;
    printf("S %.4f\nS_TTD %.4f\nS_CM %.4f\nTPR %.4f\nTNR %.4f\n", 0.5 * s_ttd + 0.5 * s_cm,
           s_ttd, s_cm, tpr, tnr);
    printf("rows %zu attack_rows %zu normal_rows %zu unknown_rows %zu attacks %d\n", lab.n, pos,
           neg, lab.n - pos - neg, na);
    for (int i = 0; i < shown; i++)
        printf("%s\n", lines[i]);
    rc = 0;
done:
    free(lab.ts);
    free(lab.val);
    free(fl.ts);
    free(fl.val);
    free(w);
    return rc;
}
