/* spb_host: see spb_host.h. */
#include "spb_host.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cm_ratelimit.h"
#include "sparkplug_b.pb-c.h"

typedef Org__Eclipse__Tahu__Protobuf__Payload Payload;
typedef Org__Eclipse__Tahu__Protobuf__Payload__Metric Metric;
#define VALUE(x) ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_##x

enum { DT_INT8 = 1, DT_INT16, DT_INT32, DT_INT64, DT_UINT8, DT_UINT16, DT_UINT32, DT_UINT64,
       DT_FLOAT, DT_DOUBLE, DT_BOOLEAN, DT_STRING, DT_DATETIME, DT_TEXT, DT_UUID };

typedef struct metric_def {
    char name[SPB_NAME_MAX + 1];
    uint64_t alias;
    int has_alias;
    uint32_t datatype;
    const spb_point *point; /* the channel it carries, or NULL */
    char unit[16];          /* engUnit from the birth, else the map's */
} metric_def;

typedef struct metric_set {
    metric_def *m;
    size_t n;
} metric_set;

typedef struct spb_device {
    char id[SPB_ID_MAX + 1];
    int online;
    metric_set set;
} spb_device;

#define PENDING_MAX 8 /* commands awaiting their result, per node */

/* A command written to a node, whose result is the next value the node publishes for it. */
typedef struct pending {
    char id[96];
    char actuator[65];
    char device[SPB_ID_MAX + 1];
    char metric[SPB_NAME_MAX + 1];
    double value;
    uint64_t expires_ms;
} pending;

typedef struct node {
    const spb_map_node *map;
    pending pend[PENDING_MAX]; /* id[0] == 0: free */
    int online;
    uint64_t bdseq;
    int expect_seq; /* -1: none yet */
    uint64_t epoch, rec_seq;
    metric_set set;
    spb_device *devs;
    size_t n_devs;
    uint64_t last_rebirth_ms;
    cm_ratelimit births;
} node;

struct spb_host {
    const spb_map *map;
    spb_limits lim;
    node *nodes;
    uint64_t last_epoch;
};

spb_host *spb_host_new(const spb_map *map, const spb_limits *limits)
{
    spb_host *h = calloc(1, sizeof *h);
    if (!h || !(h->nodes = calloc(map->n_nodes ? map->n_nodes : 1, sizeof *h->nodes))) {
        free(h);
        return NULL;
    }
    h->map = map;
    h->lim = *limits;
    if (!h->lim.rebirth_interval_ms)
        h->lim.rebirth_interval_ms = 5000;
    if (!h->lim.births_per_minute)
        h->lim.births_per_minute = 6;
    if (!h->lim.max_ahead_ms)
        h->lim.max_ahead_ms = 10000;
    for (size_t i = 0; i < map->n_nodes; i++) {
        h->nodes[i].map = &map->nodes[i];
        h->nodes[i].expect_seq = -1;
        cm_ratelimit_init(&h->nodes[i].births, 60000, h->lim.births_per_minute);
    }
    return h;
}

static void set_clear(metric_set *s)
{
    free(s->m);
    s->m = NULL;
    s->n = 0;
}

static void node_offline(node *n)
{
    n->online = 0;
    set_clear(&n->set);
    for (size_t i = 0; i < n->n_devs; i++)
        set_clear(&n->devs[i].set);
    free(n->devs);
    n->devs = NULL;
    n->n_devs = 0;
}

void spb_host_destroy(spb_host **hp)
{
    spb_host *h = *hp;
    if (!h)
        return;
    for (size_t i = 0; i < h->map->n_nodes; i++)
        node_offline(&h->nodes[i]);
    free(h->nodes);
    free(h);
    *hp = NULL;
}

unsigned spb_host_online(const spb_host *h)
{
    unsigned n = 0;
    for (size_t i = 0; i < h->map->n_nodes; i++)
        n += h->nodes[i].online != 0;
    return n;
}

void spb_record_free(Suido__StageMessage **rec)
{
    if (*rec)
        suido__stage_message__free_unpacked(*rec, NULL);
    *rec = NULL;
}

void spb_result_clear(spb_result *res)
{
    spb_record_free(&res->record);
    spb_record_free(&res->values);
    spb_record_free(&res->result);
}

/* ---- topic and values ------------------------------------------------------------------- */

typedef struct spb_topic {
    char group[SPB_ID_MAX + 1], type[8], node[SPB_ID_MAX + 1], device[SPB_ID_MAX + 1];
} spb_topic;

/* Copies the next level of *p (up to '/' or the end) into out; 0 when empty or too long. */
static int level(const char **p, char *out, size_t size)
{
    const char *e = strchr(*p, '/');
    size_t n = e ? (size_t)(e - *p) : strlen(*p);
    if (n == 0 || n >= size)
        return 0;
    memcpy(out, *p, n);
    out[n] = '\0';
    *p += n + (e ? 1 : 0);
    return 1;
}

/* spBv1.0/<group>/<type>/<node>[/<device>]: device levels for D-types only. */
static int topic_parse(const char *t, spb_topic *out)
{
    static const char *const node_types[] = {"NBIRTH", "NDATA", "NDEATH"};
    static const char *const dev_types[] = {"DBIRTH", "DDATA", "DDEATH"};
    memset(out, 0, sizeof *out);
    size_t tl = strlen(t);
    if (strncmp(t, "spBv1.0/", 8) != 0 || t[tl - 1] == '/') /* no empty last level */
        return 0;
    const char *p = t + 8;
    if (!level(&p, out->group, sizeof out->group) || !level(&p, out->type, sizeof out->type) ||
        !level(&p, out->node, sizeof out->node))
        return 0;
    int is_dev = 0, known = 0;
    for (size_t i = 0; i < 3; i++) {
        known |= strcmp(out->type, node_types[i]) == 0;
        if (strcmp(out->type, dev_types[i]) == 0)
            known = is_dev = 1;
    }
    if (!known)
        return 0;
    if (is_dev)
        return level(&p, out->device, sizeof out->device) && *p == '\0' &&
               cm_valid_label(out->device);
    return *p == '\0';
}

/* spBv1.0/<group>/NCMD/... or DCMD/...: commands (ours among them), not the nodes' messages */
static int is_command(const char *t)
{
    if (strncmp(t, "spBv1.0/", 8) != 0)
        return 0;
    const char *type = strchr(t + 8, '/');
    return type && (strncmp(type, "/NCMD/", 6) == 0 || strncmp(type, "/DCMD/", 6) == 0);
}

/* The oneof a datatype's value travels in (0: not one of the scalar types handled). */
static int value_case_of(uint32_t dt)
{
    switch (dt) {
    case DT_INT8: case DT_INT16: case DT_INT32: case DT_UINT8: case DT_UINT16: case DT_UINT32:
        return VALUE(INT_VALUE);
    case DT_INT64: case DT_UINT64: case DT_DATETIME:
        return VALUE(LONG_VALUE);
    case DT_FLOAT: return VALUE(FLOAT_VALUE);
    case DT_DOUBLE: return VALUE(DOUBLE_VALUE);
    case DT_BOOLEAN: return VALUE(BOOLEAN_VALUE);
    case DT_STRING: case DT_TEXT: case DT_UUID: return VALUE(STRING_VALUE);
    default: return 0;
    }
}

static int numeric(uint32_t dt) { return dt >= DT_INT8 && dt <= DT_BOOLEAN; }

/* The value of a metric of datatype dt as a number. Signed types narrower than 32 bits are read
 * from the low bits of int_value, so both encodings seen in the field (two's complement in 32
 * bits, or in the type's own width) give the same number. */
static double number(const Metric *m, uint32_t dt)
{
    switch (dt) {
    case DT_INT8: return (int8_t)(uint8_t)m->int_value;
    case DT_INT16: return (int16_t)(uint16_t)m->int_value;
    case DT_INT32: return (int32_t)m->int_value;
    case DT_UINT8: return (uint8_t)m->int_value;
    case DT_UINT16: return (uint16_t)m->int_value;
    case DT_UINT32: return m->int_value;
    case DT_INT64: return (double)(int64_t)m->long_value;
    case DT_UINT64: return (double)m->long_value;
    case DT_FLOAT: return m->float_value;
    case DT_DOUBLE: return m->double_value;
    case DT_BOOLEAN: return m->boolean_value ? 1.0 : 0.0;
    default: return 0;
    }
}

/* A metric's value agrees with dt: a null metric, or the oneof dt travels in. Types this host
 * does not read (datasets, templates, arrays, bytes) are taken as they come. */
static int value_fits(const Metric *m, uint32_t dt)
{
    int want = value_case_of(dt);
    if (!want || (m->has_is_null && m->is_null))
        return 1;
    return (int)m->value_case == want;
}

/* The engUnit property of a birth's metric, or NULL. */
static const char *eng_unit(const Metric *m)
{
    const Org__Eclipse__Tahu__Protobuf__Payload__PropertySet *ps = m->properties;
    if (!ps)
        return NULL;
    for (size_t i = 0; i < ps->n_keys && i < ps->n_values; i++) {
        const Org__Eclipse__Tahu__Protobuf__Payload__PropertyValue *v = ps->values[i];
        if (ps->keys[i] && (strcasecmp(ps->keys[i], "engUnit") == 0 ||
                            strcasecmp(ps->keys[i], "engUnits") == 0) &&
            v && v->value_case ==
                     ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__PROPERTY_VALUE__VALUE_STRING_VALUE)
            return v->string_value;
    }
    return NULL;
}

/* The bdSeq metric of an NBIRTH or NDEATH: 1 and *out, or 0. */
static int bdseq_of(const Payload *p, uint64_t *out)
{
    for (size_t i = 0; i < p->n_metrics; i++) {
        const Metric *m = p->metrics[i];
        if (m->name && strcmp(m->name, "bdSeq") == 0) {
            if (m->value_case == VALUE(LONG_VALUE))
                *out = m->long_value;
            else if (m->value_case == VALUE(INT_VALUE))
                *out = m->int_value;
            else
                return 0;
            return 1;
        }
    }
    return 0;
}

static void set_detail(spb_result *res, const char *s)
{
    snprintf(res->detail, sizeof res->detail, "%s", s ? s : "");
}

/* ---- records ----------------------------------------------------------------------------- */

/* Packs what was built on the stack and unpacks it into a record of its own (NULL: no memory). */
static Suido__StageMessage *own_copy(const Suido__StageMessage *m)
{
    size_t n = suido__stage_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    suido__stage_message__pack(m, buf);
    Suido__StageMessage *out = suido__stage_message__unpack(NULL, n, buf);
    free(buf);
    return out;
}

static void emit(spb_result *res, Suido__StageMessage *m) { res->record = own_copy(m); }

/* What every record of node n's session carries: its suido topic (suido/v1/<gw>/<kind>), the
 * payload as received, provenance SPARKPLUG, and a header of the session's boot epoch; data and
 * results (numbered) also take the session's next seq. */
static void record_base(Suido__StageMessage *m, Suido__Header *hd, char *topic, size_t tsize,
                        node *n, Suido__Kind kind, const uint8_t *payload, size_t len,
                        uint64_t now_ms)
{
    static const char *const names[] = {[SUIDO__KIND__KIND_DATA] = "data",
                                        [SUIDO__KIND__KIND_BIRTH] = "birth",
                                        [SUIDO__KIND__KIND_DEATH] = "death",
                                        [SUIDO__KIND__KIND_CMDRES] = "cmdres"};
    snprintf(topic, tsize, "suido/v1/%s/%s", n->map->id, names[kind]);
    m->topic = topic;
    m->received_ms = now_ms;
    m->envelope.data = (uint8_t *)payload;
    m->envelope.len = len;
    m->status = SUIDO__VERIFY_STATUS__VERIFY_OK;
    m->reason = "ok";
    m->provenance = SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG;
    hd->version = 1;
    hd->gateway_id = (char *)n->map->id;
    hd->key_id = "sparkplug";
    hd->kind = kind;
    hd->boot_epoch = n->epoch;
    if (kind == SUIDO__KIND__KIND_DATA || kind == SUIDO__KIND__KIND_CMDRES)
        hd->seq = ++n->rec_seq;
    m->header = hd;
}

/* A command's result (kind cmdres), numbered in the node's session like its data. */
static Suido__StageMessage *result_record(node *n, const char *command_id, const char *actuator,
                                          int outcome, const char *reason, double value,
                                          uint64_t ts, const uint8_t *payload, size_t len,
                                          uint64_t now_ms)
{
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    Suido__Header hd = SUIDO__HEADER__INIT;
    Suido__CommandResult r = SUIDO__COMMAND_RESULT__INIT;
    char topic[96];
    record_base(&m, &hd, topic, sizeof topic, n, SUIDO__KIND__KIND_CMDRES, payload, len, now_ms);
    hd.timestamp_ms = ts;
    r.command_id = (char *)command_id;
    r.outcome = outcome;
    r.reason = (char *)reason;
    r.channel = (char *)actuator;
    r.value = value;
    r.ts_ms = ts;
    m.cmdres = &r;
    return own_copy(&m);
}

/* A birth declaring every mapped channel of the node's session: the node's and those of its
 * online devices. */
static void emit_birth(spb_result *res, node *n, const uint8_t *payload, size_t len,
                       uint64_t now_ms, uint64_t ts)
{
    size_t total = n->set.n;
    for (size_t d = 0; d < n->n_devs; d++)
        total += n->devs[d].online ? n->devs[d].set.n : 0;
    Suido__ChannelDecl *decl = calloc(total ? total : 1, sizeof *decl);
    Suido__ChannelDecl **ptr = calloc(total ? total : 1, sizeof *ptr);
    if (!decl || !ptr) {
        free(decl);
        free(ptr);
        return;
    }
    size_t k = 0;
    for (size_t d = 0; d <= n->n_devs; d++) {
        const metric_set *s = d == 0 ? &n->set : &n->devs[d - 1].set;
        if (d > 0 && !n->devs[d - 1].online)
            continue;
        for (size_t i = 0; i < s->n; i++) {
            if (!s->m[i].point)
                continue;
            suido__channel_decl__init(&decl[k]);
            decl[k].name = (char *)s->m[i].point->channel;
            decl[k].unit = s->m[i].unit;
            ptr[k] = &decl[k];
            k++;
        }
    }
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    Suido__Header hd = SUIDO__HEADER__INIT;
    Suido__Birth b = SUIDO__BIRTH__INIT;
    char topic[96];
    record_base(&m, &hd, topic, sizeof topic, n, SUIDO__KIND__KIND_BIRTH, payload, len, now_ms);
    hd.timestamp_ms = ts;
    b.model = "sparkplug-b";
    b.channels = ptr;
    b.n_channels = k;
    m.birth = &b;
    emit(res, &m);
    free(decl);
    free(ptr);
}

/* ---- the session ------------------------------------------------------------------------- */

static node *node_of(spb_host *h, const char *id)
{
    for (size_t i = 0; i < h->map->n_nodes; i++)
        if (strcmp(h->nodes[i].map->id, id) == 0)
            return &h->nodes[i];
    return NULL;
}

/* A device of the node's session; with create, a new entry takes the place of a device that is
 * not online (its metrics are gone already), so a node cycling devices grows nothing; NULL past
 * SPB_MAX_DEVICES online devices. */
static spb_device *device_of(node *n, const char *id, int create)
{
    for (size_t i = 0; i < n->n_devs; i++)
        if (strcmp(n->devs[i].id, id) == 0)
            return &n->devs[i];
    if (!create)
        return NULL;
    for (size_t i = 0; i < n->n_devs; i++)
        if (!n->devs[i].online) {
            set_clear(&n->devs[i].set);
            memset(&n->devs[i], 0, sizeof n->devs[i]);
            strcpy(n->devs[i].id, id);
            return &n->devs[i];
        }
    if (n->n_devs >= SPB_MAX_DEVICES)
        return NULL;
    spb_device *d = realloc(n->devs, (n->n_devs + 1) * sizeof *d);
    if (!d)
        return NULL;
    n->devs = d;
    d = &n->devs[n->n_devs++];
    memset(d, 0, sizeof *d);
    strcpy(d->id, id);
    return d;
}

static int want_rebirth(spb_host *h, node *n, uint64_t now_ms)
{
    if (n->last_rebirth_ms && now_ms - n->last_rebirth_ms < h->lim.rebirth_interval_ms)
        return 0;
    n->last_rebirth_ms = now_ms ? now_ms : 1;
    return 1;
}

/* seq of a node's message (not NDEATH, which carries none): a gap is counted, not refused. */
static void check_seq(node *n, const Payload *p, spb_result *res)
{
    if (!p->has_seq || p->seq > 255 || (n->expect_seq >= 0 && (int)p->seq != n->expect_seq))
        res->seq_gap = 1;
    n->expect_seq = p->has_seq ? (int)((p->seq + 1) % 256) : -1;
}

/* Whether alias or name clashes with one already born in the node's session. */
static int alias_taken(const node *n, const metric_set *self, uint64_t alias)
{
    for (size_t d = 0; d <= n->n_devs; d++) {
        const metric_set *s = d == 0 ? &n->set : &n->devs[d - 1].set;
        if (s == self || (d > 0 && !n->devs[d - 1].online))
            continue;
        for (size_t i = 0; i < s->n; i++)
            if (s->m[i].has_alias && s->m[i].alias == alias)
                return 1;
    }
    return 0;
}

/* The metrics of a birth into *out; refuses the birth (reason in res) on a problem. */
static int load_birth(const node *n, const char *device, const Payload *p, metric_set *out,
                      spb_result *res)
{
    out->m = calloc(p->n_metrics ? p->n_metrics : 1, sizeof *out->m);
    out->n = 0;
    if (!out->m) {
        res->refused = "malformed";
        return 0;
    }
    for (size_t i = 0; i < p->n_metrics; i++) {
        const Metric *m = p->metrics[i];
        if (!m->name || !*m->name || strlen(m->name) > SPB_NAME_MAX) {
            res->refused = "unnamed_metric";
            return 0;
        }
        if (strcmp(m->name, "bdSeq") == 0 && !*device)
            continue;
        metric_def *d = &out->m[out->n];
        strcpy(d->name, m->name);
        d->has_alias = m->has_alias;
        d->alias = m->alias;
        d->datatype = m->has_datatype ? m->datatype : 0;
        set_detail(res, m->name);
        if (!m->has_datatype || !value_fits(m, d->datatype)) {
            res->refused = "datatype_mismatch";
            return 0;
        }
        for (size_t k = 0; k < out->n; k++)
            if (strcmp(out->m[k].name, d->name) == 0 ||
                (d->has_alias && out->m[k].has_alias && out->m[k].alias == d->alias)) {
                res->refused = "duplicate_alias";
                return 0;
            }
        if (d->has_alias && alias_taken(n, out, d->alias)) {
            res->refused = "duplicate_alias";
            return 0;
        }
        d->point = spb_map_channel(n->map, device, d->name);
        if (d->point) {
            const char *u = eng_unit(m);
            if (!numeric(d->datatype)) {
                res->refused = "datatype_mismatch"; /* a channel is a number */
                return 0;
            }
            if (u && strlen(u) >= sizeof d->unit) {
                res->refused = "no_unit"; /* no unit the profile knows is that long */
                return 0;
            }
            if (u && *u)
                strcpy(d->unit, u);
            else if (*d->point->unit)
                strcpy(d->unit, d->point->unit);
            else if (d->datatype == DT_BOOLEAN)
                strcpy(d->unit, "1"); /* a state: dimensionless */
            if (!*d->unit) {
                res->refused = "no_unit";
                return 0;
            }
        }
        out->n++;
    }
    res->detail[0] = '\0';
    return 1;
}

static const metric_def *lookup(const metric_set *s, const Metric *m, const char **why)
{
    if (m->has_alias) {
        for (size_t i = 0; i < s->n; i++)
            if (s->m[i].has_alias && s->m[i].alias == m->alias)
                return &s->m[i];
        *why = "unknown_alias";
        return NULL;
    }
    for (size_t i = 0; m->name && i < s->n; i++)
        if (strcmp(s->m[i].name, m->name) == 0) {
            if (s->m[i].has_alias) { /* born with an alias: data must use it */
                *why = "missing_alias";
                return NULL;
            }
            return &s->m[i];
        }
    *why = m->name ? "unknown_metric" : "missing_alias";
    return NULL;
}

/* The device id whose metric set s is ("" for the node's own). */
static const char *device_of_set(const node *n, const metric_set *s)
{
    for (size_t i = 0; i < n->n_devs; i++)
        if (&n->devs[i].set == s)
            return n->devs[i].id;
    return "";
}

/* A command's result found in a message, made into a record only once the whole message is
 * accepted (a refused message settles nothing and takes no number). */
typedef struct settled {
    pending *p; /* NULL: none */
    double value;
    int applied;
    uint64_t ts;
} settled;

/* A value the node published for metric d of device: the result of a command written to it, if
 * one awaits (applied when it is the commanded value, failed otherwise). One result per
 * message; expired commands are dropped here. */
static void settle(node *n, const char *device, const metric_def *d, const Metric *m,
                   uint64_t now_ms, settled *out)
{
    for (size_t i = 0; i < PENDING_MAX && !out->p; i++) {
        pending *p = &n->pend[i];
        if (!p->id[0])
            continue;
        if (now_ms > p->expires_ms) {
            memset(p, 0, sizeof *p);
            continue;
        }
        if (strcmp(p->device, device) != 0 || strcmp(p->metric, d->name) != 0)
            continue;
        int null = m->has_is_null && m->is_null;
        out->p = p;
        out->value = null ? 0 : number(m, d->datatype);
        out->applied = !null && fabs(out->value - p->value) <= 1e-6 * fmax(1.0, fabs(p->value));
        out->ts = m->has_timestamp ? m->timestamp : now_ms;
    }
}

/* What data_record reads: an NDATA/DDATA, the BAD readings of a DDEATH, or the values a birth
 * carries (every metric's current value: a node reporting by exception may send no other). */
typedef enum { FROM_DATA, FROM_DEATH, FROM_BIRTH } data_from;

/* Readings of the mapped metrics of p into a data record: res->record, or res->values for a
 * birth's. */
static void data_record(spb_host *h, node *n, const metric_set *s, const Payload *p,
                        data_from from, const uint8_t *payload, size_t len, uint64_t now_ms,
                        spb_result *res)
{
    int dead = from == FROM_DEATH;
    settled result = {0};
    size_t cap = dead ? s->n : p->n_metrics;
    Suido__Reading *rd = calloc(cap ? cap : 1, sizeof *rd);
    Suido__Reading **ptr = calloc(cap ? cap : 1, sizeof *ptr);
    uint64_t *ts = calloc(cap ? cap : 1, sizeof *ts);
    if (!rd || !ptr || !ts) {
        res->refused = "malformed";
        goto out;
    }
    uint64_t base = p->has_timestamp ? p->timestamp : now_ms;
    uint64_t first = base, last = base;
    size_t k = 0;
    for (size_t i = 0; i < cap; i++) {
        const metric_def *d;
        const Metric *m = NULL;
        if (dead) {
            d = &s->m[i];
        } else {
            m = p->metrics[i];
            const char *why = NULL;
            if (!(d = lookup(s, m, &why))) {
                if (from == FROM_BIRTH)
                    continue; /* bdSeq: the session's, no value of the node's */
                res->refused = why;
                set_detail(res, m->name);
                goto out;
            }
            if ((m->has_datatype && m->datatype != d->datatype) || !value_fits(m, d->datatype)) {
                res->refused = "datatype_mismatch";
                set_detail(res, d->name);
                goto out;
            }
        }
        if (m && from == FROM_DATA)
            settle(n, device_of_set(n, s), d, m, now_ms, &result);
        if (!d->point) {
            res->skipped++;
            continue;
        }
        suido__reading__init(&rd[k]);
        rd[k].channel = (char *)d->point->channel;
        int null = dead || (m->has_is_null && m->is_null);
        rd[k].value = null ? 0 : number(m, d->datatype);
        if (!isfinite(rd[k].value)) {
            res->refused = "datatype_mismatch";
            set_detail(res, d->name);
            goto out;
        }
        rd[k].quality = null ? SUIDO__QUALITY__QUALITY_BAD : SUIDO__QUALITY__QUALITY_GOOD;
        ts[k] = m && m->has_timestamp ? m->timestamp : base;
        first = ts[k] < first ? ts[k] : first;
        last = ts[k] > last ? ts[k] : last;
        ptr[k] = &rd[k];
        k++;
    }
    if (last > now_ms + h->lim.max_ahead_ms) {
        res->refused = "timestamp_ahead";
        goto out;
    }
    if (last - first > UINT32_MAX) {
        res->refused = "malformed";
        set_detail(res, "timestamps span more than 49 days");
        goto out;
    }
    if (k == 0)
        goto out; /* nothing this deployment maps: accepted, no data record */
    for (size_t i = 0; i < k; i++)
        rd[i].offset_ms = (uint32_t)(ts[i] - first);
    Suido__StageMessage rec = SUIDO__STAGE_MESSAGE__INIT;
    Suido__Header hd = SUIDO__HEADER__INIT;
    Suido__TelemetryBatch b = SUIDO__TELEMETRY_BATCH__INIT;
    char topic[96];
    record_base(&rec, &hd, topic, sizeof topic, n, SUIDO__KIND__KIND_DATA, payload, len, now_ms);
    hd.timestamp_ms = first;
    hd.reading_count = (uint32_t)k;
    b.readings = ptr;
    b.n_readings = k;
    rec.batch = &b;
    res->readings += (unsigned)k;
    if (from == FROM_BIRTH)
        res->values = own_copy(&rec);
    else
        emit(res, &rec);
out:
    if (!res->refused && result.p) { /* after the data: numbered in the order they happened */
        res->result = result_record(n, result.p->id, result.p->actuator,
                                    result.applied ? SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED
                                                   : SUIDO__COMMAND_OUTCOME__OUTCOME_FAILED,
                                    result.applied ? "ok" : "failed", result.value, result.ts,
                                    payload, len, now_ms);
        memset(result.p, 0, sizeof *result.p);
    }
    free(rd);
    free(ptr);
    free(ts);
}

static void on_nbirth(spb_host *h, node *n, const Payload *p, const uint8_t *payload, size_t len,
                      uint64_t now_ms, spb_result *res)
{
    uint64_t bd;
    if (!bdseq_of(p, &bd)) {
        res->refused = "no_bdseq";
        return;
    }
    uint64_t suppressed = 0;
    if (!cm_ratelimit_take(&n->births, now_ms, &suppressed)) {
        node_offline(n); /* its aliases may have changed: nothing can be read until a birth */
        res->refused = "rebirth_storm";
        return;
    }
    node_offline(n);
    metric_set s = {0};
    if (!load_birth(n, "", p, &s, res)) {
        set_clear(&s);
        return;
    }
    n->set = s;
    n->online = 1;
    n->bdseq = bd;
    n->expect_seq = p->has_seq ? (int)((p->seq + 1) % 256) : -1;
    n->epoch = now_ms > h->last_epoch ? now_ms : h->last_epoch + 1;
    h->last_epoch = n->epoch;
    n->rec_seq = 0;
    emit_birth(res, n, payload, len, now_ms, p->has_timestamp ? p->timestamp : now_ms);
    data_record(h, n, &n->set, p, FROM_BIRTH, payload, len, now_ms, res);
    if (res->refused) { /* its values do not read: the birth is refused whole */
        spb_record_free(&res->record);
        spb_record_free(&res->values);
        node_offline(n);
    }
}

static void on_dbirth(spb_host *h, node *n, const char *dev_id, const Payload *p,
                      const uint8_t *payload, size_t len, uint64_t now_ms, spb_result *res)
{
    spb_device *d = device_of(n, dev_id, 1);
    if (!d) {
        res->refused = "too_many_metrics"; /* SPB_MAX_DEVICES devices online already */
        return;
    }
    set_clear(&d->set);
    d->online = 0;
    metric_set s = {0};
    if (!load_birth(n, dev_id, p, &s, res)) {
        set_clear(&s);
        return;
    }
    size_t total = s.n + n->set.n;
    for (size_t i = 0; i < n->n_devs; i++)
        total += n->devs[i].online ? n->devs[i].set.n : 0;
    if (total > SPB_MAX_METRICS) { /* the node's whole session, devices included */
        set_clear(&s);
        res->refused = "too_many_metrics";
        return;
    }
    d->set = s;
    d->online = 1;
    emit_birth(res, n, payload, len, now_ms, p->has_timestamp ? p->timestamp : now_ms);
    data_record(h, n, &d->set, p, FROM_BIRTH, payload, len, now_ms, res);
    if (res->refused) {
        spb_record_free(&res->record);
        spb_record_free(&res->values);
        set_clear(&d->set);
        d->online = 0;
    }
}

static void on_ndeath(node *n, const Payload *p, const uint8_t *payload, size_t len,
                      uint64_t now_ms, spb_result *res)
{
    uint64_t bd;
    if (!bdseq_of(p, &bd) || bd != n->bdseq) {
        res->refused = "stale_death"; /* the will of an older connection: the node is online */
        return;
    }
    node_offline(n);
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    Suido__Header hd = SUIDO__HEADER__INIT;
    char topic[96];
    record_base(&m, &hd, topic, sizeof topic, n, SUIDO__KIND__KIND_DEATH, payload, len, now_ms);
    hd.timestamp_ms = p->has_timestamp && p->timestamp <= now_ms ? p->timestamp : now_ms;
    emit(res, &m);
}

void spb_host_handle(spb_host *h, const char *t, const uint8_t *payload, size_t len,
                     uint64_t now_ms, spb_result *res)
{
    memset(res, 0, sizeof *res);
    spb_topic tp;
    if (is_command(t)) {
        res->ignored = 1;
        return;
    }
    if (!topic_parse(t, &tp)) {
        res->refused = "bad_topic";
        return;
    }
    snprintf(res->node, sizeof res->node, "%s", tp.node);
    snprintf(res->type, sizeof res->type, "%s", tp.type);
    node *n = node_of(h, tp.node);
    if (!n || strcmp(n->map->group, tp.group) != 0) {
        res->refused = "unknown_node";
        return;
    }
    if (len > SPB_MAX_PAYLOAD) {
        res->refused = "oversize";
        return;
    }
    Payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, len, payload);
    if (!p) {
        res->refused = "malformed";
        return;
    }
    if (p->n_metrics > SPB_MAX_METRICS) {
        res->refused = "too_many_metrics";
        goto done;
    }
    int is_birth = strcmp(tp.type, "NBIRTH") == 0;
    if (is_birth) {
        on_nbirth(h, n, p, payload, len, now_ms, res);
        goto done;
    }
    if (!n->online) {
        int death = strcmp(tp.type, "NDEATH") == 0;
        res->refused = death ? "stale_death" : "data_before_birth";
        res->rebirth = !death && want_rebirth(h, n, now_ms); /* only a birth repairs it */
        goto done;
    }
    if (strcmp(tp.type, "NDEATH") == 0) {
        on_ndeath(n, p, payload, len, now_ms, res);
        goto done;
    }
    check_seq(n, p, res);
    if (strcmp(tp.type, "DBIRTH") == 0) {
        on_dbirth(h, n, tp.device, p, payload, len, now_ms, res);
    } else if (strcmp(tp.type, "NDATA") == 0) {
        data_record(h, n, &n->set, p, FROM_DATA, payload, len, now_ms, res);
    } else {
        spb_device *d = device_of(n, tp.device, 0);
        if (!d || !d->online)
            res->refused = "data_before_birth";
        else if (strcmp(tp.type, "DDATA") == 0)
            data_record(h, n, &d->set, p, FROM_DATA, payload, len, now_ms, res);
        else { /* DDEATH: its channels read BAD, once, and its session ends */
            data_record(h, n, &d->set, p, FROM_DEATH, payload, len, now_ms, res);
            d->online = 0;
            set_clear(&d->set); /* its aliases are free for another device's birth */
        }
    }
    /* a gap, or a message the session cannot read: the node and the host disagree on the
     * session, which a rebirth repairs */
    if (res->seq_gap ||
        (res->refused && (strcmp(res->refused, "unknown_alias") == 0 ||
                          strcmp(res->refused, "missing_alias") == 0 ||
                          strcmp(res->refused, "unknown_metric") == 0 ||
                          strcmp(res->refused, "data_before_birth") == 0)))
        res->rebirth = want_rebirth(h, n, now_ms);
done:
    org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
}

/* The metric definition a point names in the node's session, or NULL when it is not born. */
static const metric_def *born_metric(node *n, const spb_point *pt)
{
    const metric_set *s = &n->set;
    if (*pt->device) {
        spb_device *d = device_of(n, pt->device, 0);
        if (!d || !d->online)
            return NULL;
        s = &d->set;
    }
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->m[i].name, pt->metric) == 0)
            return &s->m[i];
    return NULL;
}

/* value in metric m as datatype dt; 0 when dt cannot carry it. */
static int put_value(Metric *m, uint32_t dt, double v)
{
    static const double lo[] = {0, -128, -32768, -2147483648.0, -9.2e18, 0, 0, 0, 0};
    static const double hi[] = {0, 127, 32767, 2147483647.0, 9.2e18, 255, 65535, 4294967295.0,
                                1.8e19};
    if (!isfinite(v))
        return 0;
    if (dt >= DT_INT8 && dt <= DT_UINT64) {
        double r = nearbyint(v);
        if (r < lo[dt] || r > hi[dt])
            return 0;
        if (dt == DT_INT64 || dt == DT_UINT64) {
            m->value_case = VALUE(LONG_VALUE);
            m->long_value = dt == DT_INT64 ? (uint64_t)(int64_t)r : (uint64_t)r;
        } else {
            m->value_case = VALUE(INT_VALUE);
            m->int_value = (uint32_t)(int64_t)r; /* two's complement in 32 bits */
        }
    } else if (dt == DT_FLOAT) {
        m->value_case = VALUE(FLOAT_VALUE);
        m->float_value = (float)v;
    } else if (dt == DT_DOUBLE) {
        m->value_case = VALUE(DOUBLE_VALUE);
        m->double_value = v;
    } else if (dt == DT_BOOLEAN && (v == 0 || v == 1)) {
        m->value_case = VALUE(BOOLEAN_VALUE);
        m->boolean_value = v != 0;
    } else {
        return 0;
    }
    return 1;
}

cm_err spb_host_command(spb_host *h, const Suido__Command *c, uint64_t now_ms, spb_write *w,
                        Suido__StageMessage **refused)
{
    memset(w, 0, sizeof *w);
    *refused = NULL;
    node *n = c->gateway_id ? node_of(h, c->gateway_id) : NULL;
    if (!n)
        return CM_ERR_UNKNOWN; /* not one of ours: nothing to report to */
    const spb_point *pt = spb_map_actuator(n->map, c->channel ? c->channel : "");
    const metric_def *d = n->online && pt ? born_metric(n, pt) : NULL;
    const char *why = !n->online            ? "gateway_offline"
                      : !d                  ? "unknown_actuator"
                      : now_ms > c->expires_ms ? "expired"
                                               : NULL;
    Payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
    Metric m = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT;
    if (!why && !put_value(&m, d->datatype, c->value))
        why = "out_of_range";
    size_t slot = PENDING_MAX;
    for (size_t i = 0; !why && i < PENDING_MAX && slot == PENDING_MAX; i++)
        if (!n->pend[i].id[0] || now_ms > n->pend[i].expires_ms)
            slot = i;
    if (!why && slot == PENDING_MAX)
        why = "busy"; /* PENDING_MAX commands unanswered already */
    if (why) {
        *refused = result_record(n, c->command_id ? c->command_id : "", c->channel ? c->channel : "",
                                 SUIDO__COMMAND_OUTCOME__OUTCOME_REFUSED, why, 0, now_ms, NULL, 0,
                                 now_ms);
        return CM_ERR_DENIED;
    }
    Metric *ms[1] = {&m};
    p.has_timestamp = 1;
    p.timestamp = now_ms;
    p.metrics = ms;
    p.n_metrics = 1;
    m.name = (char *)d->name;
    m.has_alias = d->has_alias;
    m.alias = d->alias;
    m.has_datatype = 1;
    m.datatype = d->datatype;
    m.has_timestamp = 1;
    m.timestamp = now_ms;
    if (*pt->device)
        snprintf(w->topic, sizeof w->topic, "spBv1.0/%s/DCMD/%s/%s", n->map->group, n->map->id,
                 pt->device);
    else
        snprintf(w->topic, sizeof w->topic, "spBv1.0/%s/NCMD/%s", n->map->group, n->map->id);
    w->len = org__eclipse__tahu__protobuf__payload__get_packed_size(&p);
    if (!(w->payload = malloc(w->len ? w->len : 1)))
        return CM_ERR_NOMEM;
    org__eclipse__tahu__protobuf__payload__pack(&p, w->payload);
    pending *q = &n->pend[slot];
    memset(q, 0, sizeof *q);
    snprintf(q->id, sizeof q->id, "%s", c->command_id ? c->command_id : "");
    snprintf(q->actuator, sizeof q->actuator, "%s", c->channel);
    snprintf(q->device, sizeof q->device, "%s", pt->device);
    snprintf(q->metric, sizeof q->metric, "%s", d->name);
    q->value = d->datatype == DT_BOOLEAN ? (c->value != 0) : c->value;
    q->expires_ms = c->expires_ms;
    return CM_OK;
}

cm_err spb_rebirth_payload(uint64_t now_ms, uint8_t **out, size_t *len)
{
    Payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
    Metric m = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT;
    Metric *ms[1] = {&m};
    p.has_timestamp = 1;
    p.timestamp = now_ms;
    p.metrics = ms;
    p.n_metrics = 1;
    m.name = "Node Control/Rebirth";
    m.has_datatype = 1;
    m.datatype = DT_BOOLEAN;
    m.has_timestamp = 1;
    m.timestamp = now_ms;
    m.value_case = VALUE(BOOLEAN_VALUE);
    m.boolean_value = 1;
    *len = org__eclipse__tahu__protobuf__payload__get_packed_size(&p);
    if (!(*out = malloc(*len ? *len : 1)))
        return CM_ERR_NOMEM;
    org__eclipse__tahu__protobuf__payload__pack(&p, *out);
    return CM_OK;
}
