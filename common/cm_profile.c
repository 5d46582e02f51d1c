/* cm_profile: loading and looking up the data profile — channels, actuators, interlocks and
 * relations — and its content digest. Channels are parsed first, then actuators (which name
 * channels), interlocks (which name actuators and channels), relations; every reference is
 * resolved and checked at load, so users of a loaded profile never meet a dangling id. */
#include "cm_profile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define MAX_CHANNELS 4096
#define MAX_ACTUATORS 1024
#define MAX_INTERLOCKS 4096
#define MAX_RELATIONS 1024
#define MAX_FILE (4u << 20) /* the same limit as cm_conf_load */

struct cm_profile {
    char name[128];
    long version;
    size_t n;
    cm_channel *channels;
    size_t n_act;
    cm_actuator *actuators;
    size_t n_ilk;
    cm_interlock *interlocks;
    size_t n_rel;
    cm_relation *relations;
    int has_digest;
    char digest[65];
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
    {"channel", "deviation", 0, "yes|no: judge statistical deviation (single-regime channels)"},
    {"actuator", "quantity", 1, "what is commanded"},
    {"actuator", "unit", 1, "unit of commanded values"},
    {"actuator", "range", 1, "operating envelope min, max"},
    {"actuator", "max_step", 0, "largest change from the current value in one command"},
    {"actuator", "min_interval_s", 0, "shortest time between two commands"},
    {"actuator", "feedback", 0, "channel that follows the command"},
    {"actuator", "tolerance", 0, "with feedback: |feedback - commanded| allowed once settled"},
    {"actuator", "settle_s", 0, "with feedback: time the plant may take to follow"},
    {"interlock", "actuator", 1, "actuator id the interlock guards"},
    {"interlock", "refuse_if", 1, "conditions that must all hold to refuse a command"},
    {"interlock", "reason", 1, "why, for the operator"},
    {"relation", "type", 1, "tank_balance|pump_flow"},
    {"relation", "level", 0, "tank_balance: level channel"},
    {"relation", "inflow", 0, "tank_balance: inflow channel"},
    {"relation", "outflow", 0, "tank_balance: outflow channel"},
    {"relation", "area_m2", 0, "tank_balance: tank surface area"},
    {"relation", "status", 0, "pump_flow: 1 to 4 pump status channels"},
    {"relation", "flow", 0, "pump_flow: flow channel"},
    {"relation", "min_flow", 0, "pump_flow: least flow while a pump runs"},
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

/* Splits "<kind>.<name>" into valid words. 0, or -1 with a reason in why. */
static int split_id(const char *what, const char *id, char kind[32], char name[64], char *why,
                    size_t wl)
{
    const char *dot = strchr(id, '.');
    if (!dot || strchr(dot + 1, '.') || (size_t)(dot - id) >= 32 || strlen(dot + 1) >= 64) {
        snprintf(why, wl, "%s id '%s' must be <site kind>.<name>", what, id);
        return -1;
    }
    snprintf(kind, 32, "%.*s", (int)(dot - id), id);
    snprintf(name, 64, "%s", dot + 1);
    if (!valid_word(kind, 32) || !valid_word(name, 64)) {
        snprintf(why, wl, "%s id '%s' must be lowercase words of [a-z0-9_-]", what, id);
        return -1;
    }
    return 0;
}

/* The channel `id` if it exists and is of site kind `kind`; else NULL and a reason in why. */
static const cm_channel *channel_ref(const cm_profile *p, const char *kind, const char *id,
                                     char *why, size_t wl)
{
    char k[32], n[64];
    if (split_id("channel", id, k, n, why, wl) != 0)
        return NULL;
    if (strcmp(k, kind) != 0) {
        snprintf(why, wl, "channel '%s' is not of site kind '%s'", id, kind);
        return NULL;
    }
    const cm_channel *c = cm_profile_channel(p, k, n);
    if (!c)
        snprintf(why, wl, "unknown channel '%s' (no [channel %s] in the profile)", id, id);
    return c;
}

/* Copies a required string of at most size-1 characters. */
static int copy_word(char *dst, size_t size, const char *src)
{
    if (!src || !*src || strlen(src) >= size)
        return -1;
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static size_t count_sections(const cm_conf *conf, const char *type)
{
    size_t n = 0;
    for (size_t i = 0; i < cm_conf_section_count(conf); i++)
        if (cm_conf_section_name(cm_conf_section(conf, i), type))
            n++;
    return n;
}

static int parse_actuators(const cm_conf *conf, cm_profile *p, char err[CM_CONF_ERRLEN])
{
    const char *sec = NULL;
    char why[256];
    size_t total = count_sections(conf, "actuator");
    if (total == 0)
        return 0;
    if (total > MAX_ACTUATORS) {
        snprintf(err, CM_CONF_ERRLEN, "%s: more than %d actuators", cm_conf_name(conf),
                 MAX_ACTUATORS);
        return -1;
    }
    if (!(p->actuators = calloc(total, sizeof *p->actuators))) {
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", cm_conf_name(conf));
        return -1;
    }
    for (size_t i = 0; i < cm_conf_section_count(conf); i++) {
        sec = cm_conf_section(conf, i);
        const char *id = cm_conf_section_name(sec, "actuator");
        if (!id)
            continue;
        cm_actuator *a = &p->actuators[p->n_act];
        if (split_id("actuator", id, a->kind, a->name, why, sizeof why) != 0)
            BAD("quantity", "%s", why);
        snprintf(a->id, sizeof a->id, "%s", id);
        if (copy_word(a->quantity, sizeof a->quantity, cm_conf_get(conf, sec, "quantity")))
            BAD("quantity", "quantity must be at most %zu characters", sizeof a->quantity - 1);
        if (copy_word(a->unit, sizeof a->unit, cm_conf_get(conf, sec, "unit")))
            BAD("unit", "unit must be at most %zu characters", sizeof a->unit - 1);
        double r[2];
        if (parse_numbers(cm_conf_get(conf, sec, "range"), r, 2) != 0 || r[0] >= r[1])
            BAD("range", "range must be 'min, max' with min < max");
        a->range_min = r[0];
        a->range_max = r[1];
        if (cm_conf_double(conf, sec, "max_step", 0, &a->max_step, err) ||
            cm_conf_double(conf, sec, "min_interval_s", 0, &a->min_interval_s, err) ||
            cm_conf_double(conf, sec, "tolerance", 0, &a->tolerance, err) ||
            cm_conf_double(conf, sec, "settle_s", 0, &a->settle_s, err))
            return -1;
        if (cm_conf_get(conf, sec, "max_step") && !(a->max_step > 0))
            BAD("max_step", "max_step must be > 0 (leave it out for no step check)");
        if (cm_conf_get(conf, sec, "min_interval_s") && !(a->min_interval_s > 0))
            BAD("min_interval_s",
                "min_interval_s must be > 0 (leave it out for no interval check)");
        const char *fb = cm_conf_get(conf, sec, "feedback");
        if (fb) {
            const cm_channel *c = channel_ref(p, a->kind, fb, why, sizeof why);
            if (!c)
                BAD("feedback", "feedback: %s", why);
            double x;
            if (cm_unit_convert(c->unit, a->unit, 0, &x) != CM_OK)
                BAD("feedback", "feedback channel '%s' is in '%s', which does not convert to the "
                    "actuator's unit '%s'", fb, c->unit, a->unit);
            snprintf(a->feedback, sizeof a->feedback, "%s", fb);
            if (!cm_conf_get(conf, sec, "tolerance") || !cm_conf_get(conf, sec, "settle_s"))
                BAD("feedback", "feedback needs tolerance and settle_s");
            if (!(a->tolerance > 0))
                BAD("tolerance", "tolerance must be > 0");
            if (!(a->settle_s > 0))
                BAD("settle_s", "settle_s must be > 0");
        } else {
            if (cm_conf_get(conf, sec, "tolerance"))
                BAD("tolerance", "tolerance applies only with feedback");
            if (cm_conf_get(conf, sec, "settle_s"))
                BAD("settle_s", "settle_s applies only with feedback");
        }
        p->n_act++;
    }
    return 0;
fail:
    return -1;
}

static const char *const CMP_NAMES[] = {"<", "<=", ">", ">=", "==", "!="};
static const char *const LIMIT_NAMES[] = {"LL", "L", "H", "HH", "MIN", "MAX"};

const char *cm_cmp_name(cm_cmp op)
{
    return (unsigned)op < sizeof CMP_NAMES / sizeof CMP_NAMES[0] ? CMP_NAMES[op] : "?";
}

const char *cm_limit_name(cm_limit l)
{
    return (unsigned)l < sizeof LIMIT_NAMES / sizeof LIMIT_NAMES[0] ? LIMIT_NAMES[l] : "?";
}

/* One operand of a condition of an interlock on actuator a. left is the parsed left operand when
 * parsing the right one, else NULL. */
static int parse_operand(const cm_profile *p, const cm_actuator *a, const char *s,
                         const cm_operand *left, cm_operand *o, char *why, size_t wl)
{
    memset(o, 0, sizeof *o);
    if (strcmp(s, "value") == 0) {
        o->kind = CM_OPERAND_VALUE;
        return 0;
    }
    for (size_t i = 0; i < sizeof LIMIT_NAMES / sizeof LIMIT_NAMES[0]; i++) {
        if (strcmp(s, LIMIT_NAMES[i]) != 0)
            continue;
        if (!left) {
            snprintf(why, wl, "a limit name (%s) is allowed only on the right of a condition", s);
            return -1;
        }
        if (left->kind != CM_OPERAND_CHANNEL) {
            snprintf(why, wl, "limit name %s needs a channel on the left", s);
            return -1;
        }
        const cm_channel *c = cm_profile_channel_by_id(p, left->channel);
        o->kind = CM_OPERAND_LIMIT;
        o->limit = (cm_limit)i;
        if (o->limit <= CM_LIMIT_HH && !c->has_limits) {
            snprintf(why, wl, "channel '%s' has no limits for %s", c->id, s);
            return -1;
        }
        const double v[] = {c->ll, c->l, c->h, c->hh, c->range_min, c->range_max};
        o->number = v[i];
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end != s && *end == '\0') {
        if (!isfinite(d) || errno == ERANGE) {
            snprintf(why, wl, "'%s' is not a finite number", s);
            return -1;
        }
        o->kind = CM_OPERAND_NUMBER;
        o->number = d;
        return 0;
    }
    if (strchr(s, '.')) {
        if (!channel_ref(p, a->kind, s, why, wl))
            return -1;
        o->kind = CM_OPERAND_CHANNEL;
        snprintf(o->channel, sizeof o->channel, "%s", s);
        return 0;
    }
    snprintf(why, wl,
             "unknown operand '%s' (value, a channel %s.<name>, a number, or on the right LL, L, "
             "H, HH, MIN, MAX)",
             s, a->kind);
    return -1;
}

/* Unit of an operand that is a quantity (value or channel); NULL for numbers. */
static const char *operand_unit(const cm_profile *p, const cm_actuator *a, const cm_operand *o)
{
    if (o->kind == CM_OPERAND_VALUE)
        return a->unit;
    if (o->kind == CM_OPERAND_CHANNEL)
        return cm_profile_channel_by_id(p, o->channel)->unit;
    return NULL;
}

/* "<operand> <op> <operand>" into c. */
static int parse_condition(const cm_profile *p, const cm_actuator *a, const char *text,
                           cm_condition *c, char *why, size_t wl)
{
    static const char OPCHARS[] = "<>=!";
    size_t pos = strcspn(text, OPCHARS);
    if (!text[pos]) {
        snprintf(why, wl, "condition '%s' has no operator (< <= > >= == !=)", text);
        return -1;
    }
    const char *o = text + pos;
    size_t oplen = o[1] == '=' ? 2 : 1;
    if (oplen == 1 && o[0] == '<')
        c->op = CM_CMP_LT;
    else if (oplen == 1 && o[0] == '>')
        c->op = CM_CMP_GT;
    else if (oplen == 2 && o[0] == '<')
        c->op = CM_CMP_LE;
    else if (oplen == 2 && o[0] == '>')
        c->op = CM_CMP_GE;
    else if (oplen == 2 && o[0] == '=')
        c->op = CM_CMP_EQ;
    else if (oplen == 2 && o[0] == '!')
        c->op = CM_CMP_NE;
    else {
        snprintf(why, wl, "bad operator in condition '%s' (< <= > >= == !=)", text);
        return -1;
    }
    const char *rest = o + oplen;
    if (rest[strcspn(rest, OPCHARS)]) {
        snprintf(why, wl, "bad operator in condition '%s' (< <= > >= == !=)", text);
        return -1;
    }
    char l[128], r[128];
    size_t ll = pos, rl = strlen(rest);
    while (ll > 0 && (text[ll - 1] == ' ' || text[ll - 1] == '\t'))
        ll--;
    while (*rest == ' ' || *rest == '\t')
        rest++, rl--;
    if (ll == 0 || rl == 0) {
        snprintf(why, wl, "condition '%s' needs an operand on each side", text);
        return -1;
    }
    if (ll >= sizeof l || rl >= sizeof r) {
        snprintf(why, wl, "operand too long in condition '%s'", text);
        return -1;
    }
    snprintf(l, sizeof l, "%.*s", (int)ll, text);
    snprintf(r, sizeof r, "%s", rest); /* already trimmed at both ends by cm_conf_split */
    if (parse_operand(p, a, l, NULL, &c->left, why, wl) != 0 ||
        parse_operand(p, a, r, &c->left, &c->right, why, wl) != 0)
        return -1;
    const char *lu = operand_unit(p, a, &c->left), *ru = operand_unit(p, a, &c->right);
    if (!lu && !ru) {
        snprintf(why, wl, "condition '%s' compares two numbers", text);
        return -1;
    }
    if (strcmp(l, r) == 0) {
        snprintf(why, wl, "condition '%s' compares %s with itself", text, l);
        return -1;
    }
    if (lu && ru && strcmp(lu, ru) != 0) {
        snprintf(why, wl, "condition '%s' compares '%s' in %s with '%s' in %s", text, l, lu, r,
                 ru);
        return -1;
    }
    return 0;
}

static int parse_interlocks(const cm_conf *conf, cm_profile *p, char err[CM_CONF_ERRLEN])
{
    const char *sec = NULL;
    char why[512];
    size_t total = count_sections(conf, "interlock");
    if (total == 0)
        return 0;
    if (total > MAX_INTERLOCKS) {
        snprintf(err, CM_CONF_ERRLEN, "%s: more than %d interlocks", cm_conf_name(conf),
                 MAX_INTERLOCKS);
        return -1;
    }
    if (!(p->interlocks = calloc(total, sizeof *p->interlocks))) {
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", cm_conf_name(conf));
        return -1;
    }
    for (size_t i = 0; i < cm_conf_section_count(conf); i++) {
        sec = cm_conf_section(conf, i);
        const char *id = cm_conf_section_name(sec, "interlock");
        if (!id)
            continue;
        cm_interlock *il = &p->interlocks[p->n_ilk];
        if (split_id("interlock", id, il->kind, il->name, why, sizeof why) != 0)
            BAD("actuator", "%s", why);
        snprintf(il->id, sizeof il->id, "%s", id);
        const char *act = cm_conf_get(conf, sec, "actuator");
        char ak[32], an[64];
        if (split_id("actuator", act, ak, an, why, sizeof why) != 0)
            BAD("actuator", "%s", why);
        if (strcmp(ak, il->kind) != 0)
            BAD("actuator", "actuator '%s' is not of site kind '%s'", act, il->kind);
        const cm_actuator *a = cm_profile_actuator(p, ak, an);
        if (!a)
            BAD("actuator", "unknown actuator '%s' (no [actuator %s] in the profile)", act, act);
        snprintf(il->actuator, sizeof il->actuator, "%s", a->id);

        /* cm_conf_split skips empty items; an empty condition is a mistake, so look first */
        const char *list = cm_conf_get(conf, sec, "refuse_if");
        size_t items = 1;
        const char *seg = list;
        for (;;) {
            size_t len = strcspn(seg, ",");
            size_t k = 0;
            while (k < len && (seg[k] == ' ' || seg[k] == '\t'))
                k++;
            if (k == len)
                BAD("refuse_if", "empty condition (item %zu of refuse_if)", items);
            if (!seg[len])
                break;
            seg += len + 1;
            items++;
        }
        if (items > CM_INTERLOCK_MAX_CONDS)
            BAD("refuse_if", "more than %d conditions (%zu)", CM_INTERLOCK_MAX_CONDS, items);
        char buf[4200];
        const char *conds[CM_INTERLOCK_MAX_CONDS];
        int n = cm_conf_split(list, buf, sizeof buf, conds, CM_INTERLOCK_MAX_CONDS);
        if (n < 1)
            BAD("refuse_if", "refuse_if must be 1 to %d conditions", CM_INTERLOCK_MAX_CONDS);
        for (int k = 0; k < n; k++)
            if (parse_condition(p, a, conds[k], &il->conds[k], why, sizeof why) != 0)
                BAD("refuse_if", "%s", why);
        il->n_conds = (size_t)n;
        if (copy_word(il->reason, sizeof il->reason, cm_conf_get(conf, sec, "reason")))
            BAD("reason", "reason must be at most %zu characters", sizeof il->reason - 1);
        p->n_ilk++;
    }
    return 0;
fail:
    return -1;
}

const char *cm_relation_type_name(cm_relation_type t)
{
    return t == CM_RELATION_TANK_BALANCE ? "tank_balance"
           : t == CM_RELATION_PUMP_FLOW  ? "pump_flow"
                                         : "?";
}

/* Channel `id` of relation r's site kind into dst (96 bytes), in a unit that converts to
 * want_unit (NULL: any). */
static int relation_channel(const cm_profile *p, const cm_relation *r, const char *id,
                            const char *want_unit, char dst[96], char *why, size_t wl)
{
    const cm_channel *c = channel_ref(p, r->kind, id, why, wl);
    if (!c)
        return -1;
    double x;
    if (want_unit && cm_unit_convert(c->unit, want_unit, 0, &x) != CM_OK) {
        snprintf(why, wl, "channel '%s' is in '%s', which does not convert to %s", id, c->unit,
                 want_unit);
        return -1;
    }
    snprintf(dst, 96, "%s", id);
    return 0;
}

static int parse_relations(const cm_conf *conf, cm_profile *p, char err[CM_CONF_ERRLEN])
{
    static const char *const TANK_KEYS[] = {"level", "inflow", "outflow", "area_m2"};
    static const char *const PUMP_KEYS[] = {"status", "flow", "min_flow"};
    const char *sec = NULL;
    char why[256];
    size_t total = count_sections(conf, "relation");
    if (total == 0)
        return 0;
    if (total > MAX_RELATIONS) {
        snprintf(err, CM_CONF_ERRLEN, "%s: more than %d relations", cm_conf_name(conf),
                 MAX_RELATIONS);
        return -1;
    }
    if (!(p->relations = calloc(total, sizeof *p->relations))) {
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", cm_conf_name(conf));
        return -1;
    }
    for (size_t i = 0; i < cm_conf_section_count(conf); i++) {
        sec = cm_conf_section(conf, i);
        const char *id = cm_conf_section_name(sec, "relation");
        if (!id)
            continue;
        cm_relation *r = &p->relations[p->n_rel];
        if (split_id("relation", id, r->kind, r->name, why, sizeof why) != 0)
            BAD("type", "%s", why);
        snprintf(r->id, sizeof r->id, "%s", id);
        const char *type = cm_conf_get(conf, sec, "type");
        if (strcmp(type, "tank_balance") == 0)
            r->type = CM_RELATION_TANK_BALANCE;
        else if (strcmp(type, "pump_flow") == 0)
            r->type = CM_RELATION_PUMP_FLOW;
        else
            BAD("type", "type must be tank_balance or pump_flow");
        int tank = r->type == CM_RELATION_TANK_BALANCE;
        const char *const *need = tank ? TANK_KEYS : PUMP_KEYS;
        size_t n_need = tank ? 4 : 3;
        const char *const *other = tank ? PUMP_KEYS : TANK_KEYS;
        size_t n_other = tank ? 3 : 4;
        for (size_t k = 0; k < n_other; k++)
            if (cm_conf_get(conf, sec, other[k]))
                BAD(other[k], "'%s' does not apply to a %s relation", other[k], type);
        for (size_t k = 0; k < n_need; k++)
            if (!cm_conf_get(conf, sec, need[k]) || !*cm_conf_get(conf, sec, need[k]))
                BAD("type", "a %s relation needs '%s'", type, need[k]);
        if (tank) {
            if (relation_channel(p, r, cm_conf_get(conf, sec, "level"), "m", r->level, why,
                                 sizeof why))
                BAD("level", "level: %s", why);
            if (relation_channel(p, r, cm_conf_get(conf, sec, "inflow"), "L/s", r->inflow, why,
                                 sizeof why))
                BAD("inflow", "inflow: %s", why);
            if (relation_channel(p, r, cm_conf_get(conf, sec, "outflow"), "L/s", r->outflow,
                                 why, sizeof why))
                BAD("outflow", "outflow: %s", why);
            if (strcmp(r->level, r->inflow) == 0 || strcmp(r->level, r->outflow) == 0)
                BAD("level", "level, inflow and outflow must be three different channels");
            if (strcmp(r->inflow, r->outflow) == 0)
                BAD("outflow", "level, inflow and outflow must be three different channels");
            if (cm_conf_double(conf, sec, "area_m2", 0, &r->area_m2, err))
                return -1;
            if (!(r->area_m2 > 0))
                BAD("area_m2", "area_m2 must be > 0");
        } else {
            char buf[1024];
            const char *items[CM_RELATION_MAX_STATUS];
            int n = cm_conf_split(cm_conf_get(conf, sec, "status"), buf, sizeof buf, items,
                                  CM_RELATION_MAX_STATUS);
            if (n < 1)
                BAD("status", "status must be 1 to %d channels", CM_RELATION_MAX_STATUS);
            for (int k = 0; k < n; k++) {
                if (relation_channel(p, r, items[k], NULL, r->status[k], why, sizeof why))
                    BAD("status", "status: %s", why);
                for (int j = 0; j < k; j++)
                    if (strcmp(r->status[j], r->status[k]) == 0)
                        BAD("status", "status channel '%s' repeated", items[k]);
            }
            r->n_status = (size_t)n;
            if (relation_channel(p, r, cm_conf_get(conf, sec, "flow"), NULL, r->flow, why,
                                 sizeof why))
                BAD("flow", "flow: %s", why);
            for (size_t k = 0; k < r->n_status; k++)
                if (strcmp(r->status[k], r->flow) == 0)
                    BAD("flow", "flow channel '%s' is also a status channel", r->flow);
            if (cm_conf_double(conf, sec, "min_flow", 0, &r->min_flow, err))
                return -1;
            if (!(r->min_flow > 0))
                BAD("min_flow", "min_flow must be > 0");
        }
        p->n_rel++;
    }
    return 0;
fail:
    return -1;
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
        const char *dev_s = cm_conf_get(conf, sec, "deviation");
        if (dev_s && strcmp(dev_s, "yes") != 0 && strcmp(dev_s, "no") != 0)
            BAD("deviation", "deviation must be yes or no");
        c->deviation = dev_s && strcmp(dev_s, "yes") == 0;
        p->n++;
    }
    if (p->n == 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s: profile defines no [channel ...]", cm_conf_name(conf));
        goto fail;
    }
    if (parse_actuators(conf, p, err) || parse_interlocks(conf, p, err) ||
        parse_relations(conf, p, err))
        goto fail;
    *out = p;
    return CM_OK;
fail:
    cm_profile_destroy(&p);
    return CM_ERR_CONFIG;
}

cm_err cm_profile_load_text(const char *name, const char *text, size_t len, cm_profile **out,
                            char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    if (len > MAX_FILE) {
        snprintf(err, CM_CONF_ERRLEN, "%s: larger than %u bytes", name, MAX_FILE);
        return CM_ERR_CONFIG;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        snprintf(err, CM_CONF_ERRLEN, "%s: SHA-256 failed", name);
        return CM_ERR_CRYPTO;
    }
    cm_conf *c = NULL;
    cm_err rc = cm_conf_parse(name, text, len, &c, err);
    if (rc == CM_OK)
        rc = cm_profile_parse(c, out, err);
    cm_conf_destroy(&c);
    if (rc == CM_OK) {
        static const char HEX[] = "0123456789abcdef";
        for (unsigned i = 0; i < mdlen; i++) {
            (*out)->digest[2 * i] = HEX[md[i] >> 4];
            (*out)->digest[2 * i + 1] = HEX[md[i] & 15];
        }
        (*out)->digest[64] = '\0';
        (*out)->has_digest = 1;
    }
    return rc;
}

/* Reads the file itself (rather than through cm_conf_load) to keep the bytes for the digest. */
cm_err cm_profile_load(const char *path, cm_profile **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    char *buf;
    size_t n;
    cm_err rc = cm_conf_read_file(path, &buf, &n, err);
    if (rc != CM_OK)
        return rc;
    rc = cm_profile_load_text(path, buf, n, out, err);
    free(buf);
    return rc;
}

cm_err cm_profile_digest(const cm_profile *p, char out[65])
{
    if (!p->has_digest) {
        out[0] = '\0';
        return CM_ERR_INVAL;
    }
    memcpy(out, p->digest, 65);
    return CM_OK;
}

void cm_profile_destroy(cm_profile **pp)
{
    if (!pp || !*pp)
        return;
    free((*pp)->channels);
    free((*pp)->actuators);
    free((*pp)->interlocks);
    free((*pp)->relations);
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

const cm_channel *cm_profile_channel_by_id(const cm_profile *p, const char *id)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->channels[i].id, id) == 0)
            return &p->channels[i];
    return NULL;
}

size_t cm_profile_actuator_count(const cm_profile *p) { return p->n_act; }
const cm_actuator *cm_profile_actuator_at(const cm_profile *p, size_t i)
{
    return i < p->n_act ? &p->actuators[i] : NULL;
}

const cm_actuator *cm_profile_actuator(const cm_profile *p, const char *kind, const char *name)
{
    for (size_t i = 0; i < p->n_act; i++)
        if (strcmp(p->actuators[i].name, name) == 0 && strcmp(p->actuators[i].kind, kind) == 0)
            return &p->actuators[i];
    return NULL;
}

size_t cm_profile_interlock_count(const cm_profile *p) { return p->n_ilk; }
const cm_interlock *cm_profile_interlock_at(const cm_profile *p, size_t i)
{
    return i < p->n_ilk ? &p->interlocks[i] : NULL;
}

const cm_interlock *cm_profile_interlock_next(const cm_profile *p, const cm_actuator *a,
                                              const cm_interlock *prev)
{
    size_t i = prev ? (size_t)(prev - p->interlocks) + 1 : 0;
    for (; i < p->n_ilk; i++)
        if (strcmp(p->interlocks[i].actuator, a->id) == 0)
            return &p->interlocks[i];
    return NULL;
}

size_t cm_profile_relation_count(const cm_profile *p) { return p->n_rel; }
const cm_relation *cm_profile_relation_at(const cm_profile *p, size_t i)
{
    return i < p->n_rel ? &p->relations[i] : NULL;
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
