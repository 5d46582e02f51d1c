/* cm_profile: loading and looking up the data profile. */
#include "cm_profile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 4096

struct cm_profile {
    char name[128];
    long version;
    size_t n;
    cm_channel *channels;
};

static const cm_conf_spec SPEC[] = {
    {"profile", "name", 1, "profile name"},
    {"profile", "version", 1, "integer version, increases with every change"},
    {"channel", "quantity", 1, "what is measured"},
    {"channel", "unit", 1, "unit of the stored value"},
    {"channel", "range", 1, "physical min, max"},
    {"channel", "limits", 0, "LL, L, H, HH alarm limits"},
    {"channel", "deadband", 0, "hysteresis for clearing alarms"},
    {"channel", "max_rate", 0, "largest credible change per second"},
    {"channel", "period_s", 0, "expected reporting period"},
    {"channel", "confidential", 0, "yes|no"},
    {NULL, NULL, 0, NULL},
};

/* Parses "a, b, ..." into exactly n finite numbers. */
static int parse_numbers(const char *value, double *out, int n)
{
    char buf[256];
    const char *items[8];
    int got = cm_conf_split(value, buf, sizeof buf, items, 8);
    if (got != n)
        return -1;
    for (int i = 0; i < n; i++) {
        char *end;
        out[i] = strtod(items[i], &end);
        if (end == items[i] || *end || !isfinite(out[i]))
            return -1;
    }
    return 0;
}

#define BAD(key, ...)                                                                              \
    do {                                                                                           \
        char why_[256];                                                                            \
        snprintf(why_, sizeof why_, __VA_ARGS__);                                                  \
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] %s", cm_conf_name(conf),                        \
                 cm_conf_line(conf, sec, key), sec, why_);                                         \
        goto fail;                                                                                 \
    } while (0)

static int valid_word(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n >= max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-'))
            return 0;
    return 1;
}

cm_err cm_profile_parse(const cm_conf *conf, cm_profile **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    if (cm_conf_check(conf, SPEC, err) != CM_OK)
        return CM_ERR_CONFIG;
    cm_profile *p = calloc(1, sizeof *p);
    if (!p)
        return CM_ERR_NOMEM;
    const char *sec = "profile";
    const char *name = cm_conf_get(conf, "profile", "name");
    if (!name)
        BAD("name", "missing [profile] section with name and version");
    snprintf(p->name, sizeof p->name, "%s", name);
    if (cm_conf_long(conf, "profile", "version", 0, 1, 1000000000, &p->version, err) != CM_OK)
        goto fail;
    size_t total = cm_conf_section_count(conf);
    p->channels = calloc(total ? total : 1, sizeof *p->channels);
    if (!p->channels)
        goto fail;
    for (size_t i = 0; i < total; i++) {
        sec = cm_conf_section(conf, i);
        const char *id = cm_conf_section_name(sec, "channel");
        if (!id)
            continue;
        if (p->n >= MAX_CHANNELS)
            BAD("unit", "more than %d channels", MAX_CHANNELS);
        cm_channel *c = &p->channels[p->n];
        const char *dot = strchr(id, '.');
        if (!dot || strchr(dot + 1, '.'))
            BAD("unit", "channel id must be <site kind>.<channel name>");
        snprintf(c->id, sizeof c->id, "%s", id);
        snprintf(c->kind, sizeof c->kind, "%.*s", (int)(dot - id), id);
        snprintf(c->name, sizeof c->name, "%s", dot + 1);
        if (!valid_word(c->kind, sizeof c->kind) || !valid_word(c->name, sizeof c->name))
            BAD("unit", "channel id must be lowercase words of [a-z0-9_-]");
        for (size_t j = 0; j < p->n; j++)
            if (strcmp(p->channels[j].id, c->id) == 0)
                BAD("unit", "channel repeated");
        snprintf(c->quantity, sizeof c->quantity, "%s", cm_conf_get(conf, sec, "quantity"));
        snprintf(c->unit, sizeof c->unit, "%s", cm_conf_get(conf, sec, "unit"));
        double r[4];
        if (parse_numbers(cm_conf_get(conf, sec, "range"), r, 2) != 0 || r[0] >= r[1])
            BAD("range", "range must be 'min, max' with min < max");
        c->range_min = r[0];
        c->range_max = r[1];
        const char *lim = cm_conf_get(conf, sec, "limits");
        if (lim) {
            if (parse_numbers(lim, r, 4) != 0)
                BAD("limits", "limits must be 'LL, L, H, HH'");
            if (!(r[0] <= r[1] && r[1] < r[2] && r[2] <= r[3]))
                BAD("limits", "limits must satisfy LL <= L < H <= HH");
            if (r[0] < c->range_min || r[3] > c->range_max)
                BAD("limits", "limits must lie within the physical range");
            c->has_limits = 1;
            c->ll = r[0];
            c->l = r[1];
            c->h = r[2];
            c->hh = r[3];
        }
        if (cm_conf_double(conf, sec, "deadband", 0, &c->deadband, err) ||
            cm_conf_double(conf, sec, "max_rate", 0, &c->max_rate, err) ||
            cm_conf_double(conf, sec, "period_s", 1, &c->period_s, err))
            goto fail;
        if (c->deadband < 0 || c->max_rate < 0 || c->period_s <= 0)
            BAD("deadband", "deadband and max_rate must be >= 0, period_s > 0");
        if (c->has_limits && c->deadband >= (c->h - c->l) / 2)
            BAD("deadband", "deadband must be smaller than half the normal band");
        const char *conf_s = cm_conf_get(conf, sec, "confidential");
        if (conf_s && strcmp(conf_s, "yes") != 0 && strcmp(conf_s, "no") != 0)
            BAD("confidential", "confidential must be yes or no");
        c->confidential = conf_s && strcmp(conf_s, "yes") == 0;
        p->n++;
    }
    if (p->n == 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s: profile defines no [channel ...]", cm_conf_name(conf));
        goto fail;
    }
    *out = p;
    return CM_OK;
fail:
    cm_profile_destroy(&p);
    return CM_ERR_CONFIG;
}

cm_err cm_profile_load(const char *path, cm_profile **out, char err[CM_CONF_ERRLEN])
{
    cm_conf *c = NULL;
    cm_err rc = cm_conf_load(path, &c, err);
    if (rc == CM_OK)
        rc = cm_profile_parse(c, out, err);
    cm_conf_destroy(&c);
    return rc;
}

void cm_profile_destroy(cm_profile **pp)
{
    if (!pp || !*pp)
        return;
    free((*pp)->channels);
    free(*pp);
    *pp = NULL;
}

const char *cm_profile_name(const cm_profile *p) { return p->name; }
long cm_profile_version(const cm_profile *p) { return p->version; }
size_t cm_profile_channel_count(const cm_profile *p) { return p->n; }
const cm_channel *cm_profile_channel_at(const cm_profile *p, size_t i)
{
    return i < p->n ? &p->channels[i] : NULL;
}

const cm_channel *cm_profile_channel(const cm_profile *p, const char *kind, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->channels[i].name, name) == 0 && strcmp(p->channels[i].kind, kind) == 0)
            return &p->channels[i];
    return NULL;
}

typedef struct unit_rule {
    const char *from, *to;
    double scale, offset; /* to = from * scale + offset */
} unit_rule;

static const unit_rule UNITS[] = {
    {"kPa", "bar", 0.01, 0},     {"bar", "kPa", 100, 0},      {"psi", "bar", 0.0689476, 0},
    {"m3/h", "L/s", 1 / 3.6, 0}, {"L/s", "m3/h", 3.6, 0},     {"L/min", "L/s", 1 / 60.0, 0},
    {"cm", "m", 0.01, 0},        {"mm", "m", 0.001, 0},       {"ft", "m", 0.3048, 0},
    {"degF", "degC", 5 / 9.0, -160 / 9.0},                    {"ppm", "mg/L", 1, 0},
    {"W", "kW", 0.001, 0},
};

cm_err cm_unit_convert(const char *from, const char *to, double v, double *out)
{
    if (strcmp(from, to) == 0) {
        *out = v;
        return CM_OK;
    }
    for (size_t i = 0; i < sizeof UNITS / sizeof UNITS[0]; i++)
        if (strcmp(UNITS[i].from, from) == 0 && strcmp(UNITS[i].to, to) == 0) {
            *out = v * UNITS[i].scale + UNITS[i].offset;
            return CM_OK;
        }
    return CM_ERR_INVAL;
}
