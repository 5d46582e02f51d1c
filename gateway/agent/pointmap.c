/* pointmap: parsing and checking the point map (pointmap.h), and the register encodings. */
#include "pointmap.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_log.h"

/* The whole configuration surface of a map. Serial settings are listed for every device; a TCP
 * device that names one is refused by parse_device with a message saying why. */
static const cm_conf_spec map_spec[] = {
    {"device", "address", 1, "tcp:HOST:PORT or rtu:/dev/PATH"},
    {"device", "unit_id", 1, "Modbus unit (slave) id"},
    {"device", "timeout_ms", 0, "response and connect timeout, 10..60000 (default 1000)"},
    {"device", "baud", 0, "rtu: line speed (default 9600)"},
    {"device", "parity", 0, "rtu: N, E or O (default N)"},
    {"device", "data_bits", 0, "rtu: 7 or 8 (default 8)"},
    {"device", "stop_bits", 0, "rtu: 1 or 2 (default 1)"},
    {"point", "device", 1, "the [device] the point is read from"},
    {"point", "register", 1, "holding, input, coil or discrete"},
    {"point", "address", 1, "protocol address 0..65535"},
    {"point", "type", 0, "u16, i16, u32, i32 or f32 (default u16)"},
    {"point", "word_order", 0, "32-bit types: big or little (default big)"},
    {"point", "scale", 0, "engineering = raw * scale + offset (default 1)"},
    {"point", "offset", 0, "default 0"},
    {"point", "unit", 1, "engineering unit, 1..16 printable characters"},
    {"point", "period_ms", 0, "poll period, 100..3600000 (default 1000)"},
    {"point", "deadband", 0, "smallest change reported before the heartbeat (default 0)"},
    {"point", "writable", 0, "yes or no (default no); holding and coil only"},
    {"point", "limits", 0, "writable points: lo, hi in engineering units"},
    {NULL, NULL, 0, NULL},
};

static const int serial_speeds[] = {1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400};

/* Where a section's lines are in the text: from its header to the next header. */
typedef struct section_span {
    size_t off, len;
    int line; /* of the header */
} section_span;

/* The spans of the n sections of a text that cm_conf_parse accepted, in file order (the order
 * of cm_conf_section): in such a text every line that starts with '[' after white space is a
 * header. NULL when out of memory or when the count disagrees (then the caller fails). */
static section_span *section_spans(const char *text, size_t len, size_t n)
{
    section_span *sp = calloc(n ? n : 1, sizeof *sp);
    if (!sp)
        return NULL;
    size_t pos = 0, found = 0;
    int lineno = 0;
    while (pos < len) {
        lineno++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        size_t i = 0;
        while (i < ll && isspace((unsigned char)text[pos + i]))
            i++;
        if (i < ll && text[pos + i] == '[') {
            if (found == n) {
                free(sp);
                return NULL;
            }
            if (found > 0)
                sp[found - 1].len = pos - sp[found - 1].off;
            sp[found].off = pos;
            sp[found].line = lineno;
            found++;
        }
        pos += ll + (nl ? 1 : 0);
    }
    if (found != n) {
        free(sp);
        return NULL;
    }
    if (found > 0)
        sp[found - 1].len = len - sp[found - 1].off;
    return sp;
}

/* One section being read. Its keys are looked up in a cm_conf of that section alone:
 * cm_conf_get scans every entry of its conf, which over a whole map of 4096 points made
 * loading quadratic (seconds); per section it is linear. */
typedef struct sec_ctx {
    const cm_conf *conf; /* the section alone; its line 1 is the header */
    const char *section; /* "point flow" */
    const char *kind;    /* "device" or "point" */
    const char *id;      /* the name after the kind */
    const char *file;
    int header_line; /* the header's line in the file */
    char *err;
} sec_ctx;

static const char *get(const sec_ctx *s, const char *key)
{
    return cm_conf_get(s->conf, s->section, key);
}

/* Line of key in the file; the header's when key is NULL or absent. */
static int key_line(const sec_ctx *s, const char *key)
{
    int l = key ? cm_conf_line(s->conf, s->section, key) : 0;
    return l ? s->header_line + l - 1 : s->header_line;
}

/* Writes "file:line: <kind> '<id>': <reason>" naming the line of key (see key_line). Returns
 * CM_ERR_CONFIG for the caller to return. */
__attribute__((format(printf, 3, 4))) static cm_err fail(const sec_ctx *s, const char *key,
                                                         const char *fmt, ...)
{
    char reason[CM_CONF_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    char id_q[80];
    cm_log_escape(id_q, sizeof id_q, s->id);
    snprintf(s->err, CM_CONF_ERRLEN, "%s:%d: %s '%s': %s", s->file, key_line(s, key), s->kind, id_q,
             reason);
    return CM_ERR_CONFIG;
}

/* A value as it may appear inside a message: escaped (it is file content) and cut short. */
static const char *shown(char buf[48], const char *value) { return cm_log_escape(buf, 48, value); }

/* A base-10 integer with nothing before or after it, in [min, max]. */
static int parse_int(const char *s, long min, long max, long *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A finite decimal number ("1", "-0.5", "2.5e-3"). strtod alone would also take "nan", "inf"
 * and hexadecimal floats, which have no place in a map. */
static int parse_real(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p) && !strchr("+-.eE", *p))
            return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE || end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Optional integer key: absent -> dflt; present -> must lie in [min, max]. */
static cm_err int_key(const sec_ctx *s, const char *key, long dflt, long min, long max, long *out)
{
    const char *v = get(s, key);
    if (!v) {
        *out = dflt;
        return CM_OK;
    }
    char vb[48];
    if (parse_int(v, min, max, out) != 0)
        return fail(s, key, "'%s' must be an integer in [%ld, %ld], not '%s'", key, min, max,
                    shown(vb, v));
    return CM_OK;
}

/* Optional number key: absent -> dflt; present -> a finite decimal number. */
static cm_err real_key(const sec_ctx *s, const char *key, double dflt, double *out)
{
    const char *v = get(s, key);
    if (!v) {
        *out = dflt;
        return CM_OK;
    }
    char vb[48];
    if (parse_real(v, out) != 0)
        return fail(s, key, "'%s' must be a finite number, not '%s'", key, shown(vb, v));
    return CM_OK;
}

/* tcp:HOST:PORT (HOST a DNS name or IPv4 address, or an IPv6 address in brackets) or
 * rtu:/PATH; fills the device's host and port, or serial. */
static cm_err parse_address(const sec_ctx *s, pm_device *d)
{
    const char *v = get(s, "address");
    char vb[48];
    if (strncmp(v, "tcp:", 4) == 0) {
        const char *hp = v + 4;
        const char *colon = strrchr(hp, ':');
        long port;
        if (!colon || parse_int(colon + 1, 1, 65535, &port) != 0)
            return fail(s, "address", "address '%s' needs a port 1..65535 (tcp:HOST:PORT)",
                        shown(vb, v));
        const char *h = hp, *he = colon;
        int bracketed = h < he && *h == '[';
        if (bracketed) {
            if (he - h < 3 || he[-1] != ']')
                return fail(s, "address", "address '%s': an IPv6 host is written [ADDRESS]",
                            shown(vb, v));
            h++;
            he--;
        }
        size_t hl = (size_t)(he - h);
        int ok = hl > 0 && hl < sizeof d->host;
        for (const char *c = h; ok && c < he; c++)
            ok = bracketed ? (isxdigit((unsigned char)*c) || *c == ':' || *c == '.')
                           : (isalnum((unsigned char)*c) || *c == '.' || *c == '-');
        if (!ok)
            return fail(s, "address", "address '%s': bad host (a name, an IPv4 address or [IPv6])",
                        shown(vb, v));
        memcpy(d->host, h, hl);
        d->host[hl] = '\0';
        d->port = (int)port;
        d->rtu = 0;
        return CM_OK;
    }
    if (strncmp(v, "rtu:", 4) == 0) {
        const char *path = v + 4;
        size_t pl = strlen(path);
        int ok = pl > 1 && pl < sizeof d->serial && path[0] == '/';
        for (const char *c = path; ok && *c; c++)
            ok = *c > ' ' && *c < 0x7f;
        if (!ok)
            return fail(s, "address", "address '%s': bad serial device (rtu:/dev/NAME)",
                        shown(vb, v));
        memcpy(d->serial, path, pl + 1);
        d->rtu = 1;
        return CM_OK;
    }
    return fail(s, "address", "bad address '%s' (tcp:HOST:PORT or rtu:/dev/NAME)", shown(vb, v));
}

static cm_err parse_device(const sec_ctx *s, pm_device *d)
{
    memset(d, 0, sizeof *d);
    if (!cm_valid_label(s->id))
        return fail(s, NULL, "a device name is 1 to %d of [A-Za-z0-9._-]", PM_NAME_MAX);
    snprintf(d->name, sizeof d->name, "%s", s->id);
    d->line = s->header_line;
    cm_err rc = parse_address(s, d);
    if (rc != CM_OK)
        return rc;
    long v;
    const char *uv = get(s, "unit_id");
    char vb[48];
    /* libmodbus takes 0..247 on a serial line, and 0..247 or 255 (MODBUS_TCP_SLAVE) on TCP */
    if (parse_int(uv, 0, 255, &v) != 0 || (d->rtu && v > 247) || (!d->rtu && v > 247 && v != 255))
        return fail(s, "unit_id",
                    d->rtu ? "'unit_id' must be an integer in [0, 247], not '%s'"
                           : "'unit_id' must be an integer in [0, 247] or 255, not '%s'",
                    shown(vb, uv));
    d->unit_id = (int)v;
    if ((rc = int_key(s, "timeout_ms", 1000, 10, 60000, &v)) != CM_OK)
        return rc;
    d->timeout_ms = (int)v;

    static const char *const serial_keys[] = {"baud", "parity", "data_bits", "stop_bits"};
    if (!d->rtu) {
        for (size_t i = 0; i < sizeof serial_keys / sizeof serial_keys[0]; i++)
            if (get(s, serial_keys[i]))
                return fail(s, serial_keys[i], "'%s' applies to rtu devices only", serial_keys[i]);
        return CM_OK;
    }
    if ((rc = int_key(s, "baud", 9600, 1, INT_MAX, &v)) != CM_OK)
        return rc;
    int speed_ok = 0;
    for (size_t i = 0; i < sizeof serial_speeds / sizeof serial_speeds[0]; i++)
        speed_ok |= v == serial_speeds[i];
    if (!speed_ok)
        return fail(s, "baud", "'baud' %ld is not a standard speed (1200 ... 230400)", v);
    d->baud = (int)v;
    const char *par = get(s, "parity");
    if (par && (strlen(par) != 1 || !strchr("NEO", par[0])))
        return fail(s, "parity", "'parity' must be N, E or O, not '%s'", shown(vb, par));
    d->parity = par ? par[0] : 'N';
    if ((rc = int_key(s, "data_bits", 8, 7, 8, &v)) != CM_OK)
        return rc;
    d->data_bits = (int)v;
    if ((rc = int_key(s, "stop_bits", 1, 1, 2, &v)) != CM_OK)
        return rc;
    d->stop_bits = (int)v;
    return CM_OK;
}

static const char *const register_names[] = {"holding", "input", "coil", "discrete"};
static const char *const type_names[] = {"u16", "i16", "u32", "i32", "f32"};

const char *pm_register_name(pm_register r) { return (unsigned)r < 4 ? register_names[r] : "?"; }

const char *pm_type_name(pm_type t) { return (unsigned)t < 5 ? type_names[t] : "?"; }

static int is_bit_register(pm_register r) { return r == PM_COIL || r == PM_DISCRETE; }

/* limits = LO, HI: exactly two finite numbers separated by one comma. */
static int parse_limits(const char *v, double *lo, double *hi)
{
    const char *comma = strchr(v, ',');
    if (!comma || strchr(comma + 1, ','))
        return -1;
    char a[64], b[64];
    size_t al = (size_t)(comma - v);
    if (al >= sizeof a || strlen(comma + 1) >= sizeof b)
        return -1;
    memcpy(a, v, al);
    a[al] = '\0';
    snprintf(b, sizeof b, "%s", comma + 1);
    char *as = a, *bs = b;
    while (isspace((unsigned char)*as))
        as++;
    while (isspace((unsigned char)*bs))
        bs++;
    for (char *e = as + strlen(as); e > as && isspace((unsigned char)e[-1]);)
        *--e = '\0';
    for (char *e = bs + strlen(bs); e > bs && isspace((unsigned char)e[-1]);)
        *--e = '\0';
    return parse_real(as, lo) == 0 && parse_real(bs, hi) == 0 ? 0 : -1;
}

static cm_err parse_point(const sec_ctx *s, const pm_map *m, pm_point *p)
{
    memset(p, 0, sizeof *p);
    if (!cm_valid_label(s->id))
        return fail(s, NULL, "a channel id is 1 to %d of [A-Za-z0-9._-]", PM_NAME_MAX);
    snprintf(p->channel, sizeof p->channel, "%s", s->id);
    p->line = s->header_line;
    char vb[48];
    cm_err rc;

    const char *dv = get(s, "device");
    size_t di = 0;
    while (di < m->ndev && strcmp(m->dev[di].name, dv) != 0)
        di++;
    if (di == m->ndev)
        return fail(s, "device", "unknown device '%s'", shown(vb, dv));
    p->device = di;

    const char *rv = get(s, "register");
    size_t ri = 0;
    while (ri < 4 && strcmp(register_names[ri], rv) != 0)
        ri++;
    if (ri == 4)
        return fail(s, "register", "unknown register '%s' (holding, input, coil, discrete)",
                    shown(vb, rv));
    p->reg = (pm_register)ri;

    const char *tv = get(s, "type");
    size_t ti = 0;
    if (tv) {
        while (ti < 5 && strcmp(type_names[ti], tv) != 0)
            ti++;
        if (ti == 5)
            return fail(s, "type", "unknown type '%s' (u16, i16, u32, i32, f32)", shown(vb, tv));
    }
    p->type = (pm_type)ti;
    if (is_bit_register(p->reg) && p->type != PM_U16)
        return fail(s, "type", "a %s point is u16 (0/1), not %s", pm_register_name(p->reg),
                    pm_type_name(p->type));

    long v;
    const char *av = get(s, "address");
    if (parse_int(av, 0, 65535, &v) != 0)
        return fail(s, "address", "'address' must be an integer in [0, 65535], not '%s'",
                    shown(vb, av));
    if (v + pm_register_count(p) - 1 > 65535)
        return fail(s, "address", "address %ld: a %s takes two registers (address + 1 <= 65535)", v,
                    pm_type_name(p->type));
    p->address = (int)v;

    const char *wo = get(s, "word_order");
    if (wo && pm_register_count(p) != 2)
        return fail(s, "word_order", "'word_order' applies to 32-bit types only, not %s",
                    pm_type_name(p->type));
    if (wo && strcmp(wo, "big") != 0 && strcmp(wo, "little") != 0)
        return fail(s, "word_order", "unknown word order '%s' (big, little)", shown(vb, wo));
    p->word_little = wo && strcmp(wo, "little") == 0;

    if ((rc = real_key(s, "scale", 1.0, &p->scale)) != CM_OK)
        return rc;
    if (p->scale == 0.0)
        return fail(s, "scale", "'scale' must not be 0");
    if ((rc = real_key(s, "offset", 0.0, &p->offset)) != CM_OK)
        return rc;

    const char *uv = get(s, "unit");
    size_t ul = strlen(uv);
    int unit_ok = ul >= 1 && ul <= PM_UNIT_MAX;
    for (const char *c = uv; unit_ok && *c; c++)
        unit_ok = *c > ' ' && *c < 0x7f;
    if (!unit_ok)
        return fail(s, "unit", "bad unit '%s' (1 to %d printable characters, no space)",
                    shown(vb, uv), PM_UNIT_MAX);
    memcpy(p->unit, uv, ul + 1);

    if ((rc = int_key(s, "period_ms", 1000, 100, 3600000, &v)) != CM_OK)
        return rc;
    p->period_ms = (int)v;
    if ((rc = real_key(s, "deadband", 0.0, &p->deadband)) != CM_OK)
        return rc;
    if (p->deadband < 0)
        return fail(s, "deadband", "'deadband' must be >= 0");

    const char *wv = get(s, "writable");
    if (wv && strcmp(wv, "yes") != 0 && strcmp(wv, "no") != 0)
        return fail(s, "writable", "'writable' must be yes or no, not '%s'", shown(vb, wv));
    p->writable = wv && strcmp(wv, "yes") == 0;
    const char *lv = get(s, "limits");
    if (!p->writable) {
        if (lv)
            return fail(s, "limits", "'limits' applies to writable points only");
        return CM_OK;
    }
    if (p->reg != PM_HOLDING && p->reg != PM_COIL)
        return fail(s, "writable", "only holding and coil points are writable, not %s",
                    pm_register_name(p->reg));
    if (!lv || !*lv)
        return fail(s, "writable", "a writable point needs 'limits = lo, hi'");
    if (parse_limits(lv, &p->lo, &p->hi) != 0)
        return fail(s, "limits", "'limits' must be two finite numbers 'lo, hi', not '%s'",
                    shown(vb, lv));
    if (p->lo > p->hi)
        return fail(s, "limits", "'limits': lo %g is above hi %g", p->lo, p->hi);
    /* raw is monotonic in the value, so both ends fitting means every value between fits */
    uint16_t regs[2];
    if (pm_encode(p, p->lo, regs) != 0 || pm_encode(p, p->hi, regs) != 0)
        return fail(s, "limits", "'limits' %g, %g do not fit a %s %s with scale %g and offset %g",
                    p->lo, p->hi, pm_register_name(p->reg), pm_type_name(p->type), p->scale,
                    p->offset);
    return CM_OK;
}

/* Two writable points sharing a register would let one actuator's command move another.
 * address_line[i]: the line of point i's 'address' key. */
static cm_err check_writable_overlaps(const pm_map *m, const int *address_line, const char *file,
                                      char err[CM_CONF_ERRLEN])
{
    for (size_t i = 0; i < m->npt; i++) {
        const pm_point *a = &m->pt[i];
        if (!a->writable)
            continue;
        for (size_t j = 0; j < i; j++) {
            const pm_point *b = &m->pt[j];
            if (!b->writable || b->device != a->device || b->reg != a->reg)
                continue;
            int a_end = a->address + pm_register_count(a) - 1;
            int b_end = b->address + pm_register_count(b) - 1;
            if (a->address <= b_end && b->address <= a_end) {
                snprintf(err, CM_CONF_ERRLEN,
                         "%s:%d: point '%s': writes %s %d of device '%s', which writable point "
                         "'%s' (line %d) also writes",
                         file, address_line[i], a->channel, pm_register_name(a->reg), a->address,
                         m->dev[a->device].name, b->channel, b->line);
                return CM_ERR_CONFIG;
            }
        }
    }
    return CM_OK;
}

/* Reads section i of c (its span sp) as a device or a point into m. */
static cm_err read_section(const cm_conf *c, const char *text, const section_span *sp,
                           const char *sec, int want_device, pm_map *m, int *address_line,
                           char err[CM_CONF_ERRLEN])
{
    const char *file = cm_conf_name(c);
    cm_conf *one = NULL;
    cm_err rc = cm_conf_parse(file, text + sp->off, sp->len, &one, err);
    if (rc != CM_OK) /* the whole text parsed: only memory can fail here */
        return rc;
    sec_ctx s = {.conf = one, .section = sec, .file = file, .header_line = sp->line, .err = err};
    if (want_device) {
        s.kind = "device";
        s.id = cm_conf_section_name(sec, "device");
        pm_device *d = &m->dev[m->ndev];
        rc = parse_device(&s, d);
        for (size_t j = 0; rc == CM_OK && j < m->ndev; j++)
            if (d->rtu && m->dev[j].rtu && strcmp(m->dev[j].serial, d->serial) == 0)
                rc = fail(&s, "address",
                          "serial line %s is already device '%s' (line %d): one device per "
                          "serial line",
                          d->serial, m->dev[j].name, m->dev[j].line);
        if (rc == CM_OK)
            m->ndev++;
    } else {
        s.kind = "point";
        s.id = cm_conf_section_name(sec, "point");
        rc = parse_point(&s, m, &m->pt[m->npt]);
        if (rc == CM_OK)
            address_line[m->npt++] = key_line(&s, "address");
    }
    cm_conf_destroy(&one);
    return rc;
}

static cm_err build_map(const cm_conf *c, const char *text, size_t len, pm_map *m,
                        char err[CM_CONF_ERRLEN])
{
    const char *file = cm_conf_name(c);
    size_t nsec = cm_conf_section_count(c), ndev = 0, npt = 0;
    section_span *spans = section_spans(text, len, nsec);
    if (!spans) {
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", file);
        return CM_ERR_NOMEM;
    }
    cm_err rc = CM_OK;
    int *address_line = NULL;
    for (size_t i = 0; i < nsec && rc == CM_OK; i++) {
        const char *sec = cm_conf_section(c, i);
        const char *id;
        if ((id = cm_conf_section_name(sec, "device"))) {
            if (++ndev > PM_MAX_DEVICES) {
                char q[80];
                snprintf(err, CM_CONF_ERRLEN, "%s:%d: device '%s': more than %d devices in one map",
                         file, spans[i].line, cm_log_escape(q, sizeof q, id), PM_MAX_DEVICES);
                rc = CM_ERR_CONFIG;
            }
        } else if ((id = cm_conf_section_name(sec, "point"))) {
            if (++npt > PM_MAX_POINTS) {
                char q[80];
                snprintf(err, CM_CONF_ERRLEN, "%s:%d: point '%s': more than %d points in one map",
                         file, spans[i].line, cm_log_escape(q, sizeof q, id), PM_MAX_POINTS);
                rc = CM_ERR_CONFIG;
            }
        } else {
            /* cm_conf_check only sees sections that hold keys */
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: unknown section [%s]", file, spans[i].line, sec);
            rc = CM_ERR_CONFIG;
        }
    }
    if (rc == CM_OK && npt == 0) {
        /* a whole-file refusal: there is no line to name */
        snprintf(err, CM_CONF_ERRLEN, "%s: no [point ...] section: a map needs points", file);
        rc = CM_ERR_CONFIG;
    }
    if (rc == CM_OK) {
        m->dev = calloc(ndev ? ndev : 1, sizeof *m->dev);
        m->pt = calloc(npt, sizeof *m->pt);
        address_line = calloc(npt, sizeof *address_line);
        if (!m->dev || !m->pt || !address_line) {
            snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", file);
            rc = CM_ERR_NOMEM;
        }
    }
    /* devices first, so that a point may name a device declared after it */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < nsec && rc == CM_OK; i++) {
            const char *sec = cm_conf_section(c, i);
            if (cm_conf_section_name(sec, pass == 0 ? "device" : "point"))
                rc = read_section(c, text, &spans[i], sec, pass == 0, m, address_line, err);
        }
    for (size_t d = 0; d < m->ndev && rc == CM_OK; d++) {
        size_t used = 0;
        for (size_t i = 0; i < m->npt && !used; i++)
            used = m->pt[i].device == d;
        if (!used) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: device '%s': no point reads this device", file,
                     m->dev[d].line, m->dev[d].name);
            rc = CM_ERR_CONFIG;
        }
    }
    if (rc == CM_OK)
        rc = check_writable_overlaps(m, address_line, file, err);
    free(address_line);
    free(spans);
    return rc;
}

cm_err pm_parse(const char *name, const char *text, size_t len, pm_map *out,
                char err[CM_CONF_ERRLEN])
{
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    cm_conf *c = NULL;
    cm_err rc = cm_conf_parse(name, text, len, &c, err);
    if (rc != CM_OK)
        return rc;
    rc = cm_conf_check(c, map_spec, err);
    if (rc == CM_OK)
        rc = build_map(c, text, len, out, err);
    cm_conf_destroy(&c);
    if (rc != CM_OK)
        pm_free(out);
    return rc;
}

cm_err pm_load(const char *path, pm_map *out, char err[CM_CONF_ERRLEN])
{
    memset(out, 0, sizeof *out);
    char *text;
    size_t len;
    cm_err rc = cm_conf_read_file(path, &text, &len, err);
    if (rc != CM_OK)
        return rc;
    rc = pm_parse(path, text, len, out, err);
    free(text);
    return rc;
}

void pm_free(pm_map *m)
{
    if (!m)
        return;
    free(m->dev);
    free(m->pt);
    memset(m, 0, sizeof *m);
}

int pm_register_count(const pm_point *p)
{
    return p->type == PM_U32 || p->type == PM_I32 || p->type == PM_F32 ? 2 : 1;
}

/* The 32-bit word of a two-register point, high word first unless word_little. */
static uint32_t join_words(const pm_point *p, const uint16_t regs[2])
{
    uint16_t hi = p->word_little ? regs[1] : regs[0];
    uint16_t lo = p->word_little ? regs[0] : regs[1];
    return (uint32_t)hi << 16 | lo;
}

static void split_words(const pm_point *p, uint32_t w, uint16_t regs[2])
{
    uint16_t hi = (uint16_t)(w >> 16), lo = (uint16_t)(w & 0xffffu);
    regs[0] = p->word_little ? lo : hi;
    regs[1] = p->word_little ? hi : lo;
}

double pm_decode(const pm_point *p, const uint16_t regs[2])
{
    double raw;
    if (is_bit_register(p->reg)) {
        raw = regs[0] ? 1.0 : 0.0;
    } else {
        switch (p->type) {
        case PM_I16:
            raw = (int16_t)regs[0];
            break;
        case PM_U32:
            raw = join_words(p, regs);
            break;
        case PM_I32:
            raw = (int32_t)join_words(p, regs);
            break;
        case PM_F32: {
            uint32_t w = join_words(p, regs);
            float f;
            memcpy(&f, &w, sizeof f);
            raw = f;
            break;
        }
        case PM_U16:
        default:
            raw = regs[0];
            break;
        }
    }
    return raw * p->scale + p->offset;
}

int pm_encode(const pm_point *p, double value, uint16_t regs[2])
{
    if (!isfinite(value))
        return -1;
    double raw = (value - p->offset) / p->scale;
    if (!isfinite(raw))
        return -1;
    if (is_bit_register(p->reg)) {
        if (raw < 0.0 || raw > 1.0)
            return -1;
        regs[0] = raw >= 0.5 ? 1 : 0;
        return 0;
    }
    if (p->type == PM_F32) {
        if (fabs(raw) > FLT_MAX)
            return -1;
        float f = (float)raw;
        uint32_t w;
        memcpy(&w, &f, sizeof w);
        split_words(p, w, regs);
        return 0;
    }
    double r = round(raw);
    switch (p->type) {
    case PM_U16:
        if (r < 0 || r > 65535)
            return -1;
        regs[0] = (uint16_t)r;
        return 0;
    case PM_I16:
        if (r < -32768 || r > 32767)
            return -1;
        regs[0] = (uint16_t)(int16_t)r;
        return 0;
    case PM_U32:
        if (r < 0 || r > 4294967295.0)
            return -1;
        split_words(p, (uint32_t)r, regs);
        return 0;
    case PM_I32:
        if (r < -2147483648.0 || r > 2147483647.0)
            return -1;
        split_words(p, (uint32_t)(int32_t)r, regs);
        return 0;
    default:
        return -1;
    }
}
