/* mon_text: see mon_text.h. */
#include "mon_text.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int all_of(const char *s, size_t min, size_t max, const char *extra)
{
    size_t n = s ? strlen(s) : 0;
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return 0;
    }
    return 1;
}

int mon_valid_gateway(const char *s) { return all_of(s, 1, 64, "-"); }

int mon_valid_operator(const char *s) { return all_of(s, 1, 64, "-._"); }

int mon_valid_channel(const char *s)
{
    if (!all_of(s, 3, 95, "-._"))
        return 0;
    const char *dot = strchr(s, '.');
    return dot && dot != s && dot[1] != '\0';
}

int mon_valid_totp(const char *s)
{
    if (!s || strlen(s) != 6)
        return 0;
    for (int i = 0; i < 6; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

int mon_valid_text(const char *s, size_t len, size_t max)
{
    if (!s || len == 0 || len > max || strlen(s) != len)
        return 0;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p, need;
        uint32_t cp;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return 0;
            p++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if ((size_t)(end - p) <= need)
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if ((p[k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 ||
            cp == 0x2029)
            return 0;
        p += need + 1;
    }
    return 1;
}

int mon_valid_password(const char *s, size_t len, size_t max)
{
    return s && len > 0 && len <= max && strlen(s) == len;
}

int mon_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 20)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return 0;
    *out = v;
    return 1;
}

int mon_parse_date(const char *s, uint64_t *ms)
{
    if (!s || strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return 0;
    int v[3] = {0, 0, 0};
    const int at[3] = {0, 5, 8}, len[3] = {4, 2, 2};
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < len[f]; i++) {
            char c = s[at[f] + i];
            if (c < '0' || c > '9')
                return 0;
            v[f] = v[f] * 10 + (c - '0');
        }
    int y = v[0], m = v[1], d = v[2];
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 2000 || y > 2199 || m < 1 || m > 12 || d < 1 ||
        d > days[m - 1] + (m == 2 && leap))
        return 0;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    time_t t = timegm(&tm);
    if (t < 0)
        return 0;
    *ms = (uint64_t)t * 1000u;
    return 1;
}

void mon_format_date(uint64_t ms, char out[11])
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, 11, "%Y-%m-%d", &tm) == 0)
        snprintf(out, 11, "?");
}

char *mon_safe(char *dst, size_t n, const char *src)
{
    size_t k = 0;
    for (const char *p = src ? src : ""; *p && k + 1 < n; p++)
        dst[k++] = (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') ? *p : '?';
    if (n)
        dst[k] = '\0';
    return dst;
}

static int put(char *buf, size_t n, size_t *pos, char c)
{
    if (*pos + 1 >= n)
        return 0;
    buf[(*pos)++] = c;
    buf[*pos] = '\0';
    return 1;
}

int mon_csv_text(char *buf, size_t n, size_t *pos, const char *cell, int first)
{
    size_t start = *pos;
    const char *c = cell ? cell : "";
    int ok = (first || put(buf, n, pos, ',')) && put(buf, n, pos, '"');
    if (ok && (*c == '=' || *c == '+' || *c == '-' || *c == '@' || *c == '\t' || *c == '\r'))
        ok = put(buf, n, pos, '\'');
    for (; ok && *c; c++)
        ok = (*c != '"' || put(buf, n, pos, '"')) && put(buf, n, pos, *c);
    ok = ok && put(buf, n, pos, '"');
    if (!ok && start < n) {
        *pos = start;
        buf[start] = '\0';
    }
    return ok;
}

int mon_csv_number(char *buf, size_t n, size_t *pos, double v, int decimals, int first)
{
    /* any finite double in fixed notation: sign, 309 digits, point, at most 9 decimals */
    char num[MON_CSV_NUMBER_MAX + 1] = "";
    if (isfinite(v)) {
        int len = snprintf(num, sizeof num, "%.*f", decimals < 0 ? 0 : decimals > 9 ? 9 : decimals,
                           v);
        if (len < 0 || (size_t)len >= sizeof num)
            return 0; /* never a number cut short */
    }
    size_t start = *pos;
    int ok = first || put(buf, n, pos, ',');
    for (const char *c = num; ok && *c; c++)
        ok = put(buf, n, pos, *c);
    if (!ok && start < n) {
        *pos = start;
        buf[start] = '\0';
    }
    return ok;
}
