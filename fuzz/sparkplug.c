/* Fuzz target: the Sparkplug B host's logic (services/sparkplug/spb_host.c), which decodes what
 * any edge node publishes. Every input gets a fresh host on a small fixed map; a valid NBIRTH and
 * DBIRTH start the node's session (built here with protobuf-c), then the input's bytes are the
 * payload of one message, whose kind the first byte chooses, and a few valid messages follow
 * (data, a device's death, the node's death) so that what the fuzzed message left behind is used.
 *
 * Input = one selector byte, then the payload:
 *   bits 0-2  0 NBIRTH, 1 NDATA, 2 NDEATH, 3 DBIRTH, 4 DDATA, 5 DDEATH of gw-fuzz (group G);
 *             6 NCMD (DCMD with bit 3), which the host ignores; 7 a topic of the input's own:
 *             the payload up to its first NUL byte (at most 255 bytes) is the topic, the rest
 *             the payload
 *   bit 3     device messages for Tank2 (never born) instead of Tank1
 *   bit 4     no DBIRTH before the message
 *   bit 5     no NBIRTH either (the node is offline)
 *   bit 6     two commands awaiting their result first (Speed = 42 on the node, Tank1's
 *             Valve = 1), so that a value the message carries for them settles them
 *   bit 7     the message twice, 1 ms apart (seq gaps, rebirth rate limit, duplicate births)
 *
 * Invariants checked on every result (abort on a breach, so libFuzzer keeps the input):
 *   - a refusal reason is one of spb_host.h's list (plus "unknown_metric" and "no_unit", which
 *     the code gives and the list omits: reported); an ignored message has no refusal, record,
 *     or rebirth request; the type is "" exactly for bad_topic;
 *   - a refused message has no record, no values record and no command result;
 *   - every record (birth, data, death, cmdres) packs, unpacks again to the same size, is filed
 *     under suido/v1/<node>/<its kind> with provenance SPARKPLUG and the payload as envelope;
 *     a data record's reading_count equals its readings, each of a mapped channel, finite, GOOD
 *     or BAD (then 0); res.readings counts them; a birth declares mapped channels with a unit;
 *   - an accepted NBIRTH, DBIRTH or NDEATH has its record; boot epochs strictly increase; the
 *     records of a session (data, a birth's values, command results and refusals) are numbered
 *     1, 2, 3, ... without a hole;
 *   - a rebirth request only with a seq gap or a refusal a rebirth repairs.
 *
 * Seeds: fuzz/corpus/sparkplug/, written by fuzz/seed_sparkplug.py (fuzz/README.md).
 * FUZZ_SPARKPLUG_TRACE=1 prints each message's verdict (to check that the seeds get through). */
#include <math.h>
#include <stdio.h>

#include "fuzz_util.h"
#include "sparkplug_b.pb-c.h"
#include "spb_host.h"
#include "spb_map.h"

typedef Org__Eclipse__Tahu__Protobuf__Payload Payload;
typedef Org__Eclipse__Tahu__Protobuf__Payload__Metric Metric;
#define VALUE(x) ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_##x

#define NOW 1800000000000ull
#define NODE "gw-fuzz"

static const char MAP[] = "[node gw-fuzz]\ngroup = G\n"
                          "[channels gw-fuzz]\n"
                          "flow = Flow\nrunning = Running\ni8 = I8\nnull = Nothing\n"
                          "level = Tank1::Level\ntemp = Tank1::Temp\nlevel2 = Tank2::Level\n"
                          "[units gw-fuzz]\nflow = L/s\ni8 = 1\nlevel = m\nlevel2 = m\n"
                          "[actuators gw-fuzz]\nspeed = Speed\nvalve = Tank1::Valve\n"
                          "[node gw-fuzz-2]\ngroup = H\n[channels gw-fuzz-2]\nx = X\n";

static cm_conf *conf;
static spb_map *map;

static const char *const ALLOWED[] = {
    "bad_topic", "unknown_node", "oversize", "malformed", "too_many_metrics", "no_bdseq",
    "rebirth_storm", "data_before_birth", "unknown_alias", "missing_alias", "unnamed_metric",
    "duplicate_alias", "datatype_mismatch", "timestamp_ahead", "stale_death",
    /* given by spb_host.c, missing from spb_host.h's list */
    "unknown_metric", "no_unit",
};
static const char *const REBIRTH_REASONS[] = {"data_before_birth", "unknown_alias",
                                              "missing_alias", "unknown_metric"};

#define CHECK(c)                                                                                  \
    do {                                                                                          \
        if (!(c)) {                                                                               \
            fprintf(stderr, "sparkplug: invariant broken: %s (%s:%d)\n", #c, __FILE__, __LINE__); \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[CM_CONF_ERRLEN];
    if (cm_conf_parse("fuzz.map", MAP, sizeof MAP - 1, &conf, err) != CM_OK ||
        spb_map_load(conf, &map, err) != CM_OK || !spb_map_find(map, NODE) || map->n_nodes != 2) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    return 0;
}

/* ---- the fixed messages ------------------------------------------------------------------- */

static Metric metrics[8];
static Metric *mptr[8];
static Org__Eclipse__Tahu__Protobuf__Payload__PropertySet unit_set;
static Org__Eclipse__Tahu__Protobuf__Payload__PropertyValue unit_value;
static Org__Eclipse__Tahu__Protobuf__Payload__PropertyValue *unit_values[1] = {&unit_value};
static char *unit_keys[1] = {"engUnit"};

static Metric *metric(size_t i, const char *name, int64_t alias, uint32_t dt)
{
    Metric *m = &metrics[i];
    org__eclipse__tahu__protobuf__payload__metric__init(m);
    mptr[i] = m;
    m->name = (char *)name;
    m->has_alias = alias >= 0;
    m->alias = alias >= 0 ? (uint64_t)alias : 0;
    m->has_datatype = dt != 0;
    m->datatype = dt;
    return m;
}

/* Packs a payload of the first n metrics; malloc'd. */
static uint8_t *pack(size_t n, int64_t seq, size_t *len)
{
    Payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
    p.has_timestamp = 1;
    p.timestamp = NOW;
    p.has_seq = seq >= 0;
    p.seq = seq >= 0 ? (uint64_t)seq : 0;
    p.metrics = mptr;
    p.n_metrics = n;
    *len = org__eclipse__tahu__protobuf__payload__get_packed_size(&p);
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b)
        abort();
    org__eclipse__tahu__protobuf__payload__pack(&p, b);
    return b;
}

enum { DT_INT8 = 1, DT_INT32 = 3, DT_INT64 = 4, DT_FLOAT = 9, DT_DOUBLE = 10, DT_BOOLEAN = 11 };

/* NBIRTH, bdSeq 5: Flow (Float, alias 1), Running (Boolean, 2), I8 (Int8, 3), Speed (Int32, 4,
 * the actuator), Nothing (Float, 5, mapped, engUnit "x", null). */
static uint8_t *nbirth(size_t *len)
{
    metric(0, "bdSeq", -1, DT_INT64)->value_case = VALUE(LONG_VALUE);
    metrics[0].long_value = 5;
    metric(1, "Flow", 1, DT_FLOAT)->value_case = VALUE(FLOAT_VALUE);
    metrics[1].float_value = 1.5f;
    metric(2, "Running", 2, DT_BOOLEAN)->value_case = VALUE(BOOLEAN_VALUE);
    metrics[2].boolean_value = 1;
    metric(3, "I8", 3, DT_INT8)->value_case = VALUE(INT_VALUE);
    metrics[3].int_value = 0xFFFFFFFFu;
    metric(4, "Speed", 4, DT_INT32)->value_case = VALUE(INT_VALUE);
    metrics[4].int_value = 0;
    Metric *m = metric(5, "Nothing", 5, DT_FLOAT);
    m->has_is_null = m->is_null = 1;
    org__eclipse__tahu__protobuf__payload__property_set__init(&unit_set);
    org__eclipse__tahu__protobuf__payload__property_value__init(&unit_value);
    unit_value.value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__PROPERTY_VALUE__VALUE_STRING_VALUE;
    unit_value.string_value = "x";
    unit_set.n_keys = unit_set.n_values = 1;
    unit_set.keys = unit_keys;
    unit_set.values = unit_values;
    m->properties = &unit_set;
    return pack(6, 0, len);
}

/* DBIRTH of Tank1: Level (Double, alias 10), Temp (Float, 11, engUnit), Valve (Boolean, 12). */
static uint8_t *dbirth(size_t *len)
{
    metric(0, "Level", 10, DT_DOUBLE)->value_case = VALUE(DOUBLE_VALUE);
    metrics[0].double_value = 2.0;
    metric(1, "Temp", 11, DT_FLOAT)->value_case = VALUE(FLOAT_VALUE);
    metrics[1].float_value = 11.0f;
    org__eclipse__tahu__protobuf__payload__property_set__init(&unit_set);
    org__eclipse__tahu__protobuf__payload__property_value__init(&unit_value);
    unit_value.value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__PROPERTY_VALUE__VALUE_STRING_VALUE;
    unit_value.string_value = "degC";
    unit_set.n_keys = unit_set.n_values = 1;
    unit_set.keys = unit_keys;
    unit_set.values = unit_values;
    metrics[1].properties = &unit_set;
    metric(2, "Valve", 12, DT_BOOLEAN)->value_case = VALUE(BOOLEAN_VALUE);
    return pack(3, 1, len);
}

/* NDATA (seq 200): Flow 2.5, Speed 42 */
static uint8_t *ndata(size_t *len)
{
    metric(0, NULL, 1, 0)->value_case = VALUE(FLOAT_VALUE);
    metrics[0].float_value = 2.5f;
    metric(1, NULL, 4, 0)->value_case = VALUE(INT_VALUE);
    metrics[1].int_value = 42;
    return pack(2, 200, len);
}

/* DDATA of Tank1 (seq 201): Level 3, Valve true */
static uint8_t *ddata(size_t *len)
{
    metric(0, NULL, 10, 0)->value_case = VALUE(DOUBLE_VALUE);
    metrics[0].double_value = 3.0;
    metric(1, NULL, 12, 0)->value_case = VALUE(BOOLEAN_VALUE);
    metrics[1].boolean_value = 1;
    return pack(2, 201, len);
}

/* NDEATH: bdSeq 5; DDEATH: no metrics (seq 202) */
static uint8_t *ndeath(size_t *len)
{
    metric(0, "bdSeq", -1, DT_INT64)->value_case = VALUE(LONG_VALUE);
    metrics[0].long_value = 5;
    return pack(1, -1, len);
}

static uint8_t *ddeath(size_t *len) { return pack(0, 202, len); }

/* ---- invariants ---------------------------------------------------------------------------- */

/* The numbering: the last boot epoch given (host-wide), and per node of the map its session's
 * epoch and the next record number expected. */
static uint64_t last_epoch;
static struct {
    uint64_t epoch, next_seq;
} sess[2];

static int in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return 1;
    return 0;
}

static int mapped_channel(size_t node, const char *ch)
{
    const spb_map_node *n = &map->nodes[node];
    for (size_t i = 0; i < n->n_channels; i++)
        if (strcmp(n->channels[i].channel, ch) == 0)
            return 1;
    return 0;
}

static size_t node_index(const char *id)
{
    const spb_map_node *n = spb_map_find(map, id);
    CHECK(n);
    return (size_t)(n - map->nodes);
}

/* One record of node: what every record holds, then by its kind. Returns its readings. */
static unsigned check_record(size_t node, const Suido__StageMessage *r, const uint8_t *payload,
                             size_t len, int from_handle)
{
    const char *id = map->nodes[node].id;
    size_t n = suido__stage_message__get_packed_size(r);
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf);
    CHECK(suido__stage_message__pack(r, buf) == n);
    Suido__StageMessage *back = suido__stage_message__unpack(NULL, n, buf);
    CHECK(back);
    CHECK(suido__stage_message__get_packed_size(back) == n);
    suido__stage_message__free_unpacked(back, NULL);
    free(buf);

    CHECK(r->header && r->header->gateway_id && strcmp(r->header->gateway_id, id) == 0);
    CHECK(r->provenance == SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG);
    CHECK(r->status == SUIDO__VERIFY_STATUS__VERIFY_OK);
    if (from_handle)
        CHECK(r->envelope.len == len && (len == 0 || memcmp(r->envelope.data, payload, len) == 0));
    const char *kind = r->header->kind == SUIDO__KIND__KIND_BIRTH    ? "birth"
                       : r->header->kind == SUIDO__KIND__KIND_DATA   ? "data"
                       : r->header->kind == SUIDO__KIND__KIND_DEATH  ? "death"
                       : r->header->kind == SUIDO__KIND__KIND_CMDRES ? "cmdres"
                                                                     : NULL;
    CHECK(kind);
    char topic[64];
    snprintf(topic, sizeof topic, "suido/v1/%s/%s", id, kind);
    CHECK(r->topic && strcmp(r->topic, topic) == 0);
    unsigned readings = 0;
    if (r->header->kind == SUIDO__KIND__KIND_DATA) {
        CHECK(r->batch && r->batch->n_readings > 0);
        CHECK(r->header->reading_count == r->batch->n_readings);
        for (size_t i = 0; i < r->batch->n_readings; i++) {
            const Suido__Reading *rd = r->batch->readings[i];
            CHECK(rd->channel && mapped_channel(node, rd->channel));
            CHECK(isfinite(rd->value));
            CHECK(rd->quality == SUIDO__QUALITY__QUALITY_GOOD ||
                  (rd->quality == SUIDO__QUALITY__QUALITY_BAD && rd->value == 0));
        }
        readings = (unsigned)r->batch->n_readings;
    } else {
        CHECK(!r->batch);
    }
    if (r->header->kind == SUIDO__KIND__KIND_BIRTH) {
        CHECK(r->birth);
        for (size_t i = 0; i < r->birth->n_channels; i++) {
            CHECK(mapped_channel(node, r->birth->channels[i]->name));
            CHECK(r->birth->channels[i]->unit && *r->birth->channels[i]->unit);
            for (size_t k = 0; k < i; k++)
                CHECK(strcmp(r->birth->channels[k]->name, r->birth->channels[i]->name) != 0);
        }
        CHECK(r->header->boot_epoch == sess[node].epoch);
    }
    if (r->header->kind == SUIDO__KIND__KIND_DEATH)
        CHECK(r->header->boot_epoch == sess[node].epoch);
    if (r->header->kind == SUIDO__KIND__KIND_CMDRES)
        CHECK(r->cmdres && r->cmdres->command_id && r->cmdres->channel);
    /* births and deaths carry the session's epoch; data and results a number in it too */
    if (r->header->kind == SUIDO__KIND__KIND_DATA || r->header->kind == SUIDO__KIND__KIND_CMDRES) {
        CHECK(r->header->boot_epoch == sess[node].epoch);
        CHECK(r->header->seq >= 1);
    }
    return readings;
}

/* The numbers the records of one message took (data, values, a command's result: in whatever
 * order the host numbers them) follow the session's last one without a hole. */
static void check_numbers(size_t node, const Suido__StageMessage *const *recs, size_t n)
{
    uint64_t seq[3];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (recs[i] && (recs[i]->header->kind == SUIDO__KIND__KIND_DATA ||
                        recs[i]->header->kind == SUIDO__KIND__KIND_CMDRES))
            seq[k++] = recs[i]->header->seq;
    for (size_t i = 1; i < k; i++) /* sort the (at most 3) numbers */
        for (size_t j = i; j > 0 && seq[j] < seq[j - 1]; j--) {
            uint64_t t = seq[j];
            seq[j] = seq[j - 1];
            seq[j - 1] = t;
        }
    for (size_t i = 0; i < k; i++) {
        CHECK(seq[i] == sess[node].next_seq);
        sess[node].next_seq = seq[i] + 1;
    }
}

static void check_result(const spb_result *res, const char *kind, const uint8_t *payload,
                         size_t len)
{
    if (getenv("FUZZ_SPARKPLUG_TRACE"))
        fprintf(stderr, "sparkplug: %s -> %s%s%s rec=%d values=%d result=%d readings=%u gap=%d "
                "rebirth=%d\n",
                kind, res->ignored ? "ignored" : res->refused ? res->refused : "accepted",
                res->detail[0] ? " " : "", res->detail, res->record != NULL, res->values != NULL,
                res->result != NULL, res->readings, res->seq_gap, res->rebirth);
    int is_birth = strcmp(res->type, "NBIRTH") == 0 || strcmp(res->type, "DBIRTH") == 0;
    if (res->ignored) {
        CHECK(!res->refused && !res->record && !res->values && !res->result && !res->rebirth);
        return;
    }
    if (res->refused) {
        CHECK(in_list(res->refused, ALLOWED, sizeof ALLOWED / sizeof ALLOWED[0]));
        CHECK((strcmp(res->refused, "bad_topic") == 0) == (res->type[0] == '\0'));
        CHECK(!res->record && !res->values && !res->result);
    } else {
        CHECK(res->type[0]);
    }
    if (res->rebirth)
        CHECK(res->seq_gap ||
              (res->refused && in_list(res->refused, REBIRTH_REASONS,
                                       sizeof REBIRTH_REASONS / sizeof REBIRTH_REASONS[0])));
    if (!res->record && !res->result) {
        CHECK(!res->values && res->readings == 0);
        return;
    }
    size_t node = node_index(res->node);
    if (res->record && strcmp(res->type, "NBIRTH") == 0) {
        /* a new session: its epoch above every earlier one, numbered from 1 */
        CHECK(res->record->header && res->record->header->boot_epoch > last_epoch);
        last_epoch = sess[node].epoch = res->record->header->boot_epoch;
        sess[node].next_seq = 1;
    }
    unsigned readings = 0;
    if (res->result) {
        CHECK(strcmp(res->type, "NDATA") == 0 || strcmp(res->type, "DDATA") == 0);
        readings += check_record(node, res->result, payload, len, 1);
    }
    if (res->record)
        readings += check_record(node, res->record, payload, len, 1);
    if (res->values) {
        CHECK(is_birth && res->record);
        readings += check_record(node, res->values, payload, len, 1);
    }
    CHECK(res->readings == readings);
    const Suido__StageMessage *recs[3] = {res->record, res->values, res->result};
    check_numbers(node, recs, 3);
    if (!res->refused && (is_birth || strcmp(res->type, "NDEATH") == 0))
        CHECK(res->record);
}

/* ---- one input -------------------------------------------------------------------------- */

static void deliver(spb_host *h, const char *topic, const uint8_t *payload, size_t len,
                    uint64_t now, const char *kind)
{
    spb_result res;
    unsigned before = spb_host_online(h);
    spb_host_handle(h, topic, payload, len, now, &res);
    check_result(&res, kind, payload, len);
    unsigned after = spb_host_online(h);
    CHECK(after <= map->n_nodes);
    if (!res.refused && !res.ignored) {
        if (strcmp(res.type, "NBIRTH") == 0)
            CHECK(after >= 1);
        if (strcmp(res.type, "NDEATH") == 0)
            CHECK(after + 1 == before);
    }
    spb_result_clear(&res);
}

static void deliver_fixed(spb_host *h, const char *topic, uint8_t *(*make)(size_t *), uint64_t now,
                          const char *kind)
{
    size_t len;
    uint8_t *b = make(&len);
    deliver(h, topic, b, len, now, kind);
    free(b);
}

/* A command from the gate; its refusal record, if any, is checked and freed. */
static void command(spb_host *h, const char *actuator, double value)
{
    Suido__Command c = SUIDO__COMMAND__INIT;
    char id[64];
    snprintf(id, sizeof id, "%s-%s", NODE, actuator);
    c.command_id = id;
    c.gateway_id = NODE;
    c.channel = (char *)actuator;
    c.value = value;
    c.unit = "1";
    c.issued_ms = NOW + 5;
    c.expires_ms = NOW + 30000;
    spb_write w;
    Suido__StageMessage *refused = NULL;
    cm_err rc = spb_host_command(h, &c, NOW + 5, &w, &refused);
    if (rc == CM_OK) {
        CHECK(w.payload && !refused);
        Payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, w.len, w.payload);
        CHECK(p && p->n_metrics == 1);
        org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
        free(w.payload);
    } else if (refused) {
        CHECK(refused->cmdres &&
              refused->cmdres->outcome == SUIDO__COMMAND_OUTCOME__OUTCOME_REFUSED);
        const Suido__StageMessage *recs[1] = {refused};
        check_record(node_index(NODE), refused, NULL, 0, 0);
        check_numbers(node_index(NODE), recs, 1);
        spb_record_free(&refused);
    }
}

static const char *const KINDS[] = {"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const uint8_t *payload = data + 1;
    size_t len = size - 1;
    unsigned kind = sel & 7;
    const char *dev = sel & 0x08 ? "Tank2" : "Tank1";
    char topic[300];
    if (kind < 6)
        snprintf(topic, sizeof topic, "spBv1.0/G/%s/%s%s%s", KINDS[kind], NODE, kind >= 3 ? "/" : "",
                 kind >= 3 ? dev : "");
    else if (kind == 6 && (sel & 0x08))
        snprintf(topic, sizeof topic, "spBv1.0/G/DCMD/%s/Tank1", NODE);
    else if (kind == 6)
        snprintf(topic, sizeof topic, "spBv1.0/G/NCMD/%s", NODE);
    else {
        const uint8_t *nul = memchr(payload, 0, len < 256 ? len : 256);
        if (!nul)
            return 0;
        size_t tl = (size_t)(nul - payload);
        memcpy(topic, payload, tl);
        topic[tl] = '\0';
        payload = nul + 1;
        len -= tl + 1;
    }
    /* the payload in a buffer of its own size, so that ASan sees a read past it */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    memcpy(copy, payload, len);

    spb_limits lim = {0};
    spb_host *h = spb_host_new(map, &lim);
    if (!h)
        abort();
    last_epoch = 0;
    memset(sess, 0, sizeof sess);
    if (!(sel & 0x20)) {
        deliver_fixed(h, "spBv1.0/G/NBIRTH/" NODE, nbirth, NOW, "setup NBIRTH");
        if (!(sel & 0x10))
            deliver_fixed(h, "spBv1.0/G/DBIRTH/" NODE "/Tank1", dbirth, NOW + 1, "setup DBIRTH");
        if (sel & 0x40) {
            command(h, "speed", 42);
            command(h, "valve", 1);
        }
    }
    deliver(h, topic, copy, len, NOW + 10, "fuzzed");
    if (sel & 0x80)
        deliver(h, topic, copy, len, NOW + 11, "fuzzed again");
    deliver_fixed(h, "spBv1.0/G/NDATA/" NODE, ndata, NOW + 20, "NDATA");
    deliver_fixed(h, "spBv1.0/G/DDATA/" NODE "/Tank1", ddata, NOW + 21, "DDATA");
    deliver_fixed(h, "spBv1.0/G/DDEATH/" NODE "/Tank1", ddeath, NOW + 22, "DDEATH");
    deliver_fixed(h, "spBv1.0/G/NDEATH/" NODE, ndeath, NOW + 23, "NDEATH");
    spb_host_destroy(&h);
    free(copy);
    return 0;
}
