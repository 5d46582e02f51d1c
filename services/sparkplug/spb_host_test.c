/* spb_host_test: unit tests of the Sparkplug B host's logic (services/sparkplug/spb_host.c),
 * driven with payloads built here with protobuf-c from proto/sparkplug_b.proto. Each message
 * kind's record (birth and the readings of its values, data, death) field by field; every
 * refusal reason, and which of them ask for a rebirth; seq gaps; the rate limits (rebirth
 * requests, rebirth storms), by passing the time in, so nothing sleeps; both encodings of small
 * negative integers; the rebirth request payload; boot epochs; commands written to a node and
 * their results. Tests marked "Found by this test" failed against the code as first written
 * (commit a0eb72e); each says how, as a regression test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparkplug_b.pb-c.h"
#include "spb_host.h"

typedef Org__Eclipse__Tahu__Protobuf__Payload Payload;
typedef Org__Eclipse__Tahu__Protobuf__Payload__Metric Metric;
typedef Org__Eclipse__Tahu__Protobuf__Payload__PropertySet PropertySet;
typedef Org__Eclipse__Tahu__Protobuf__Payload__PropertyValue PropertyValue;
#define VALUE(x) ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_##x

/* Sparkplug datatypes (proto/sparkplug_b.proto, enum DataType) */
enum { INT8 = 1, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, FLOAT, DOUBLE, BOOLEAN,
       STRING };

#define T0 1800000000000ull /* the host's clock at the first message of a test */
#define NB "spBv1.0/Plant1/NBIRTH/gw-spb-01"
#define ND "spBv1.0/Plant1/NDATA/gw-spb-01"
#define NX "spBv1.0/Plant1/NDEATH/gw-spb-01"
#define DB "spBv1.0/Plant1/DBIRTH/gw-spb-01/Tank1"
#define DD "spBv1.0/Plant1/DDATA/gw-spb-01/Tank1"
#define DX "spBv1.0/Plant1/DDEATH/gw-spb-01/Tank1"

static const char MAP[] =
    "[node gw-spb-01]\n"
    "group = Plant1\n"
    "[channels gw-spb-01]\n"
    "pump1.flow = Pump1/Flow           # Float, engUnit L/s in the birth\n"
    "pump1.running = Pump1/Running     # Boolean: unit 1 by default\n"
    "pump1.pressure = Pump1/Pressure   # Double, born without an alias\n"
    "pump1.level = Pump1/Level         # Float, unit from [units]\n"
    "plant.i8 = Diag/I8\n"
    "plant.i16 = Diag/I16\n"
    "plant.name = Diag/Name            # a String: a birth declaring it is refused\n"
    "plant.nounit = Diag/NoUnit        # no unit anywhere\n"
    "reservoir.level = Tank1::Level    # Double, unit from [units]\n"
    "reservoir.temp = Tank1::Temp      # Float, engUnit degC\n"
    "[units gw-spb-01]\n"
    "pump1.level = m\n"
    "reservoir.level = m\n"
    "plant.i8 = 1\n"
    "plant.i16 = 1\n"
    "[actuators gw-spb-01]\n"
    "pump1.speed = Pump1/Speed         # Int32, alias 7\n"
    "valve1 = Tank1::Valve             # Boolean, alias 13\n"
    "[node gw-spb-02]\n"
    "group = Plant2\n"
    "[channels gw-spb-02]\n"
    "flow = Flow\n";

static cm_conf *conf;
static spb_map *map;
static spb_host *host;
static spb_result R;           /* the last result; cleared before the next message */
static uint8_t *last_buf;      /* the last payload sent */
static size_t last_len;

/* ---- payloads ---------------------------------------------------------------------------- */

#define MAXM 1100
static struct {
    Payload p;
    Metric m[MAXM];
    Metric *mp[MAXM];
    PropertySet ps[MAXM];
    PropertyValue pv[MAXM];
    PropertyValue *pvp[MAXM];
    char *keys[MAXM];
    char names[MAXM][24];
} B;

/* A new payload: seq < 0 and ts 0 leave them out. */
static void pl_begin(int64_t seq, uint64_t ts)
{
    memset(&B, 0, sizeof B);
    org__eclipse__tahu__protobuf__payload__init(&B.p);
    B.p.metrics = B.mp;
    if (seq >= 0) {
        B.p.has_seq = 1;
        B.p.seq = (uint64_t)seq;
    }
    if (ts) {
        B.p.has_timestamp = 1;
        B.p.timestamp = ts;
    }
}

/* A metric: name NULL, alias < 0 and dt 0 leave them out. No value yet (see v_*). */
static Metric *pl_add(const char *name, int64_t alias, uint32_t dt)
{
    assert_true(B.p.n_metrics < MAXM);
    Metric *m = &B.m[B.p.n_metrics];
    org__eclipse__tahu__protobuf__payload__metric__init(m);
    B.mp[B.p.n_metrics++] = m;
    m->name = (char *)name;
    if (alias >= 0) {
        m->has_alias = 1;
        m->alias = (uint64_t)alias;
    }
    if (dt) {
        m->has_datatype = 1;
        m->datatype = dt;
    }
    return m;
}

static Metric *v_int(Metric *m, uint32_t v)
{
    m->value_case = VALUE(INT_VALUE);
    m->int_value = v;
    return m;
}
static Metric *v_long(Metric *m, uint64_t v)
{
    m->value_case = VALUE(LONG_VALUE);
    m->long_value = v;
    return m;
}
static Metric *v_float(Metric *m, float v)
{
    m->value_case = VALUE(FLOAT_VALUE);
    m->float_value = v;
    return m;
}
static Metric *v_double(Metric *m, double v)
{
    m->value_case = VALUE(DOUBLE_VALUE);
    m->double_value = v;
    return m;
}
static Metric *v_bool(Metric *m, int v)
{
    m->value_case = VALUE(BOOLEAN_VALUE);
    m->boolean_value = v != 0;
    return m;
}
static Metric *v_str(Metric *m, const char *v)
{
    m->value_case = VALUE(STRING_VALUE);
    m->string_value = (char *)v;
    return m;
}
static Metric *v_null(Metric *m)
{
    m->has_is_null = 1;
    m->is_null = 1;
    return m;
}
static Metric *at(Metric *m, uint64_t ts)
{
    m->has_timestamp = 1;
    m->timestamp = ts;
    return m;
}

/* The property key = unit (a string) on metric m, as an edge node declares engUnit. */
static Metric *prop(Metric *m, const char *key, const char *unit)
{
    size_t i = (size_t)(m - B.m);
    org__eclipse__tahu__protobuf__payload__property_set__init(&B.ps[i]);
    org__eclipse__tahu__protobuf__payload__property_value__init(&B.pv[i]);
    B.pv[i].has_type = 1;
    B.pv[i].type = STRING;
    B.pv[i].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__PROPERTY_VALUE__VALUE_STRING_VALUE;
    B.pv[i].string_value = (char *)unit;
    B.keys[i] = (char *)key;
    B.pvp[i] = &B.pv[i];
    B.ps[i].n_keys = 1;
    B.ps[i].keys = &B.keys[i];
    B.ps[i].n_values = 1;
    B.ps[i].values = &B.pvp[i];
    m->properties = &B.ps[i];
    return m;
}
static Metric *unit(Metric *m, const char *u) { return prop(m, "engUnit", u); }

/* n metrics "m<i>" (unmapped Int32, aliases from alias0) */
static void pl_many(size_t n, int64_t alias0)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(B.names[B.p.n_metrics], sizeof B.names[0], "m%zu", i);
        v_int(pl_add(B.names[B.p.n_metrics], alias0 + (int64_t)i, INT32), (uint32_t)i);
    }
}

/* Sends raw bytes on topic at now (the previous result is cleared first). */
static void send_raw(const char *topic, const uint8_t *buf, size_t len, uint64_t now)
{
    spb_result_clear(&R);
    spb_host_handle(host, topic, buf, len, now, &R);
}

/* Packs the payload being built and sends it. */
static void send(const char *topic, uint64_t now)
{
    free(last_buf);
    last_len = org__eclipse__tahu__protobuf__payload__get_packed_size(&B.p);
    last_buf = malloc(last_len ? last_len : 1);
    assert_non_null(last_buf);
    org__eclipse__tahu__protobuf__payload__pack(&B.p, last_buf);
    send_raw(topic, last_buf, last_len, now);
}

static void accepted(void)
{
    if (R.refused)
        fail_msg("refused: %s (%s)", R.refused, R.detail);
}

static void refused(const char *reason)
{
    if (!R.refused || strcmp(R.refused, reason) != 0)
        fail_msg("expected a refusal \"%s\", got \"%s\" (%s)", reason,
                 R.refused ? R.refused : "accepted", R.detail);
    assert_null(R.record);
    assert_null(R.values);
    assert_null(R.result);
    assert_int_equal(R.readings, 0);
}

/* The NBIRTH of gw-spb-01 that most tests start from (seq 0, bdSeq 7). Its mapped channels:
 * pump1.flow (alias 1, L/s from engUnit), pump1.running (alias 2, Boolean: "1"),
 * pump1.pressure (no alias, bar), pump1.level (alias 3, m from [units]), plant.i8 (alias 4),
 * plant.i16 (alias 5); unmapped: Node Control/Rebirth (alias 100), Unmapped/Counter (alias 6),
 * and the actuator pump1.speed's Pump1/Speed (alias 7). Its values are 6 readings, which take
 * record number 1 of the session: the node's first data is number 2. */
static void nbirth_payload(uint64_t ts, uint64_t bdseq)
{
    pl_begin(0, ts);
    v_long(pl_add("bdSeq", -1, INT64), bdseq);
    v_bool(pl_add("Node Control/Rebirth", 100, BOOLEAN), 0);
    unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 10.0f), "L/s");
    v_bool(pl_add("Pump1/Running", 2, BOOLEAN), 1);
    unit(v_double(pl_add("Pump1/Pressure", -1, DOUBLE), 2.5), "bar");
    v_float(pl_add("Pump1/Level", 3, FLOAT), 1.0f);
    v_int(pl_add("Diag/I8", 4, INT8), 0);
    v_int(pl_add("Diag/I16", 5, INT16), 0);
    v_long(pl_add("Unmapped/Counter", 6, INT64), 42);
    v_int(pl_add("Pump1/Speed", 7, INT32), 0);
}

static void born(uint64_t now)
{
    nbirth_payload(now - 5, 7);
    send(NB, now);
    accepted();
    assert_non_null(R.record);
}

/* The DBIRTH of Tank1 (seq 1): Level (alias 10, m from [units]), Temp (alias 11, degC), an
 * unmapped String Status (alias 12), and the actuator valve1's Valve (Boolean, alias 13). */
static void dbirth_payload(int64_t seq, uint64_t ts)
{
    pl_begin(seq, ts);
    v_double(pl_add("Level", 10, DOUBLE), 4.0);
    unit(v_float(pl_add("Temp", 11, FLOAT), 12.0f), "degC");
    v_str(pl_add("Status", 12, STRING), "ok");
    v_bool(pl_add("Valve", 13, BOOLEAN), 0);
}

static void dborn(uint64_t now)
{
    dbirth_payload(1, now);
    send(DB, now);
    accepted();
    assert_non_null(R.record);
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    if (cm_conf_parse("t.map", MAP, strlen(MAP), &conf, err) != CM_OK ||
        spb_map_load(conf, &map, err) != CM_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    spb_map_destroy(&map);
    cm_conf_destroy(&conf);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    spb_limits lim = {0}; /* the defaults: 5 s between rebirths, 6 births a minute, 10 s ahead */
    host = spb_host_new(map, &lim);
    memset(&R, 0, sizeof R);
    return host ? 0 : -1;
}

/* a host with limits of its own, replacing the fixture's */
static void host_with(uint64_t interval_ms, unsigned births, uint64_t ahead_ms)
{
    spb_result_clear(&R);
    spb_host_destroy(&host);
    spb_limits lim = {.rebirth_interval_ms = interval_ms, .births_per_minute = births,
                      .max_ahead_ms = ahead_ms};
    host = spb_host_new(map, &lim);
    assert_non_null(host);
}

static int teardown(void **state)
{
    (void)state;
    spb_result_clear(&R);
    spb_host_destroy(&host);
    free(last_buf);
    last_buf = NULL;
    return 0;
}

/* ---- records ------------------------------------------------------------------------------- */

static const Suido__Reading *reading_of(const Suido__StageMessage *rec, size_t i)
{
    assert_non_null(rec);
    assert_non_null(rec->batch);
    assert_true(i < rec->batch->n_readings);
    return rec->batch->readings[i];
}

static void assert_reading_of(const Suido__StageMessage *rec, size_t i, const char *channel,
                              double value, uint32_t offset, Suido__Quality q)
{
    const Suido__Reading *r = reading_of(rec, i);
    assert_string_equal(r->channel, channel);
    if (r->value != value)
        fail_msg("reading %zu (%s): value %.17g, expected %.17g", i, channel, r->value, value);
    assert_int_equal(r->offset_ms, offset);
    assert_int_equal(r->quality, q);
}

static void assert_reading(size_t i, const char *channel, double value, uint32_t offset,
                           Suido__Quality q)
{
    assert_reading_of(R.record, i, channel, value, offset, q);
}

/* What every record has: its suido topic, the payload as received, provenance SPARKPLUG. */
static void assert_record_of(const Suido__StageMessage *rec, const char *kind, Suido__Kind k,
                             uint64_t now)
{
    char topic[64];
    assert_non_null(rec);
    snprintf(topic, sizeof topic, "suido/v1/gw-spb-01/%s", kind);
    assert_string_equal(rec->topic, topic);
    assert_int_equal(rec->received_ms, now);
    assert_int_equal(rec->provenance, SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG);
    assert_int_equal(rec->status, SUIDO__VERIFY_STATUS__VERIFY_OK);
    assert_int_equal(rec->envelope.len, last_len);
    assert_memory_equal(rec->envelope.data, last_buf, last_len);
    assert_non_null(rec->header);
    assert_int_equal(rec->header->kind, k);
    assert_string_equal(rec->header->gateway_id, "gw-spb-01");
    assert_string_equal(rec->header->key_id, "sparkplug");
    assert_int_equal(rec->header->version, 1);
}

static void assert_record(const char *kind, Suido__Kind k, uint64_t now)
{
    assert_record_of(R.record, kind, k, now);
}

static void assert_channel(size_t i, const char *name, const char *unit_)
{
    assert_non_null(R.record->birth);
    assert_true(i < R.record->birth->n_channels);
    assert_string_equal(R.record->birth->channels[i]->name, name);
    assert_string_equal(R.record->birth->channels[i]->unit, unit_);
}

/* ---- births ------------------------------------------------------------------------------- */

/* An NBIRTH becomes a birth record on suido/v1/<gw>/birth declaring every mapped channel with
 * its unit (engUnit, else the map's, else "1" for a Boolean); unmapped metrics and bdSeq are not
 * declared; boot_epoch is the receipt time, the header's time the payload's; the node is online.
 * The values the birth carries become a data record of their own (res.values, number 1). */
static void test_nbirth(void **state)
{
    (void)state;
    assert_int_equal(spb_host_online(host), 0);
    nbirth_payload(T0 - 20, 7);
    send(NB, T0);
    accepted();
    assert_int_equal(R.ignored, 0);
    assert_int_equal(R.seq_gap, 0);
    assert_int_equal(R.rebirth, 0);
    assert_string_equal(R.node, "gw-spb-01");
    assert_string_equal(R.type, "NBIRTH");
    assert_string_equal(R.detail, "");
    assert_record("birth", SUIDO__KIND__KIND_BIRTH, T0);
    assert_int_equal(R.record->header->boot_epoch, T0);
    assert_int_equal(R.record->header->timestamp_ms, T0 - 20);
    assert_null(R.record->batch);
    assert_string_equal(R.record->birth->model, "sparkplug-b");
    assert_int_equal(R.record->birth->n_channels, 6);
    assert_channel(0, "pump1.flow", "L/s");
    assert_channel(1, "pump1.running", "1");
    assert_channel(2, "pump1.pressure", "bar");
    assert_channel(3, "pump1.level", "m");
    assert_channel(4, "plant.i8", "1");
    assert_channel(5, "plant.i16", "1");
    assert_int_equal(spb_host_online(host), 1);

    const Suido__StageMessage *v = R.values;
    assert_record_of(v, "data", SUIDO__KIND__KIND_DATA, T0);
    assert_int_equal(v->header->boot_epoch, T0);
    assert_int_equal(v->header->seq, 1);
    assert_int_equal(v->header->timestamp_ms, T0 - 20);
    assert_int_equal(v->header->reading_count, 6);
    assert_int_equal(R.readings, 6);
    assert_int_equal(R.skipped, 3); /* Node Control/Rebirth, Unmapped/Counter, Pump1/Speed */
    assert_reading_of(v, 0, "pump1.flow", 10.0, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 1, "pump1.running", 1, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 2, "pump1.pressure", 2.5, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 3, "pump1.level", 1.0, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 4, "plant.i8", 0, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 5, "plant.i16", 0, 0, SUIDO__QUALITY__QUALITY_GOOD);

    /* a birth without a timestamp: the header's time is the receipt */
    nbirth_payload(0, 8);
    send(NB, T0 + 1000);
    accepted();
    assert_int_equal(R.record->header->timestamp_ms, T0 + 1000);
    assert_int_equal(R.record->header->boot_epoch, T0 + 1000);
    assert_int_equal(R.values->header->boot_epoch, T0 + 1000);
    assert_int_equal(R.values->header->seq, 1);
    assert_int_equal(R.values->header->timestamp_ms, T0 + 1000);
    assert_int_equal(spb_host_online(host), 1);
}

/* Units: engUnit (or engUnits, any case) before the map's unit; a Boolean without either is
 * "1", with one keeps it; a property of another name is no unit. */
static void test_units(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    prop(v_float(pl_add("Pump1/Flow", 1, FLOAT), 1), "ENGUNITS", "m3/h");
    unit(v_bool(pl_add("Pump1/Running", 2, BOOLEAN), 1), "state");
    unit(v_float(pl_add("Pump1/Level", 3, FLOAT), 1), "cm"); /* the map says m */
    prop(v_int(pl_add("Diag/I8", 4, INT8), 1), "description", "not a unit"); /* map: 1 */
    send(NB, T0);
    accepted();
    assert_int_equal(R.record->birth->n_channels, 4);
    assert_channel(0, "pump1.flow", "m3/h");
    assert_channel(1, "pump1.running", "state");
    assert_channel(2, "pump1.level", "cm");
    assert_channel(3, "plant.i8", "1");
}

/* A mapped metric whose unit is nowhere (no engUnit, nothing in [units], not a Boolean) refuses
 * the birth: "no_unit", the metric named; the node stays offline. */
static void test_no_unit(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    v_int(pl_add("Diag/NoUnit", 1, INT32), 3);
    send(NB, T0);
    refused("no_unit");
    assert_string_equal(R.detail, "Diag/NoUnit");
    assert_int_equal(spb_host_online(host), 0);

    /* a device's mapped metric without one (Tank1's Temp without its engUnit) refuses the
     * DBIRTH */
    born(T0 + 1);
    pl_begin(1, T0 + 2);
    v_double(pl_add("Level", 10, DOUBLE), 4.0);
    v_float(pl_add("Temp", 11, FLOAT), 12.0f);
    send(DB, T0 + 2);
    refused("no_unit");
    assert_string_equal(R.detail, "Temp");
}

/* ---- data ------------------------------------------------------------------------------------ */

/* NDATA by alias: a data record numbered 1, 2, ... in the session, one reading per mapped metric
 * (unmapped ones skipped and counted), offsets from the metrics' own timestamps (the payload's
 * for a metric without one), the header's time the earliest; is_null gives a BAD reading of 0;
 * a metric born without an alias is read by name; a message with nothing mapped is accepted
 * without a record and takes no number. */
static void test_ndata(void **state)
{
    (void)state;
    born(T0);
    uint64_t epoch = R.record->header->boot_epoch;

    pl_begin(1, T0 + 100);
    at(v_float(pl_add(NULL, 1, 0), 12.5f), T0 + 100); /* no datatype: the birth's */
    at(v_bool(pl_add(NULL, 2, 0), 1), T0 + 350);
    v_long(pl_add(NULL, 6, 0), 43);           /* unmapped */
    v_double(pl_add("Pump1/Pressure", -1, DOUBLE), 3.5); /* no timestamp: the payload's */
    send(ND, T0 + 1000);
    accepted();
    assert_int_equal(R.seq_gap, 0);
    assert_int_equal(R.rebirth, 0);
    assert_string_equal(R.type, "NDATA");
    assert_record("data", SUIDO__KIND__KIND_DATA, T0 + 1000);
    assert_int_equal(R.record->header->boot_epoch, epoch);
    assert_int_equal(R.record->header->seq, 2);
    assert_int_equal(R.record->header->timestamp_ms, T0 + 100);
    assert_int_equal(R.record->header->reading_count, 3);
    assert_int_equal(R.record->batch->n_readings, 3);
    assert_int_equal(R.readings, 3);
    assert_int_equal(R.skipped, 1);
    assert_reading(0, "pump1.flow", 12.5, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading(1, "pump1.running", 1, 250, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading(2, "pump1.pressure", 3.5, 0, SUIDO__QUALITY__QUALITY_GOOD);

    /* is_null: BAD; the earliest metric sets the header's time, others are offsets from it */
    pl_begin(2, T0 + 2000);
    at(v_null(pl_add(NULL, 3, FLOAT)), T0 + 1900);
    at(v_float(pl_add(NULL, 1, FLOAT), 13.25f), T0 + 2000);
    send(ND, T0 + 2100);
    accepted();
    assert_int_equal(R.record->header->seq, 3);
    assert_int_equal(R.record->header->timestamp_ms, T0 + 1900);
    assert_reading(0, "pump1.level", 0, 0, SUIDO__QUALITY__QUALITY_BAD);
    assert_reading(1, "pump1.flow", 13.25, 100, SUIDO__QUALITY__QUALITY_GOOD);

    /* nothing mapped: accepted, no record, no number taken */
    pl_begin(3, T0 + 3000);
    v_long(pl_add(NULL, 6, 0), 44);
    v_bool(pl_add(NULL, 100, 0), 0);
    send(ND, T0 + 3000);
    accepted();
    assert_null(R.record);
    assert_int_equal(R.skipped, 2);

    /* no payload timestamp: the receipt time */
    pl_begin(4, 0);
    v_float(pl_add(NULL, 1, 0), 14.0f);
    send(ND, T0 + 4000);
    accepted();
    assert_int_equal(R.record->header->seq, 4);
    assert_int_equal(R.record->header->timestamp_ms, T0 + 4000);
}

/* A device: DBIRTH declares the node's channels and the device's (its values a data record of
 * their own); DDATA by the device's aliases;
 * DDEATH gives one BAD reading per mapped channel of the device and ends its session (its data is
 * then before its birth, and asks for a rebirth); a later birth declares no channel of a dead
 * device; the node's own data goes on. */
static void test_device(void **state)
{
    (void)state;
    born(T0);
    uint64_t epoch = R.record->header->boot_epoch;
    dbirth_payload(1, T0 + 10);
    send(DB, T0 + 20);
    accepted();
    assert_string_equal(R.type, "DBIRTH");
    assert_record("birth", SUIDO__KIND__KIND_BIRTH, T0 + 20);
    assert_int_equal(R.record->header->boot_epoch, epoch);
    assert_int_equal(R.record->header->timestamp_ms, T0 + 10);
    assert_int_equal(R.record->birth->n_channels, 8);
    assert_channel(0, "pump1.flow", "L/s");
    assert_channel(5, "plant.i16", "1");
    assert_channel(6, "reservoir.level", "m");
    assert_channel(7, "reservoir.temp", "degC");
    assert_record_of(R.values, "data", SUIDO__KIND__KIND_DATA, T0 + 20);
    assert_int_equal(R.values->header->seq, 2);
    assert_int_equal(R.values->header->timestamp_ms, T0 + 10);
    assert_int_equal(R.values->header->reading_count, 2);
    assert_reading_of(R.values, 0, "reservoir.level", 4.0, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(R.values, 1, "reservoir.temp", 12.0, 0, SUIDO__QUALITY__QUALITY_GOOD);

    pl_begin(2, T0 + 100);
    v_double(pl_add(NULL, 10, 0), 3.25);
    v_str(pl_add(NULL, 12, 0), "filling"); /* unmapped String: skipped */
    send(DD, T0 + 200);
    accepted();
    assert_string_equal(R.type, "DDATA");
    assert_record("data", SUIDO__KIND__KIND_DATA, T0 + 200);
    assert_int_equal(R.record->header->seq, 3);
    assert_int_equal(R.readings, 1);
    assert_int_equal(R.skipped, 1);
    assert_reading(0, "reservoir.level", 3.25, 0, SUIDO__QUALITY__QUALITY_GOOD);

    pl_begin(3, T0 + 300);
    send(DX, T0 + 300);
    accepted();
    assert_string_equal(R.type, "DDEATH");
    assert_record("data", SUIDO__KIND__KIND_DATA, T0 + 300);
    assert_int_equal(R.record->header->seq, 4);
    assert_int_equal(R.record->header->reading_count, 2);
    assert_reading(0, "reservoir.level", 0, 0, SUIDO__QUALITY__QUALITY_BAD);
    assert_reading(1, "reservoir.temp", 0, 0, SUIDO__QUALITY__QUALITY_BAD);

    pl_begin(4, T0 + 400);
    v_double(pl_add(NULL, 10, 0), 3.5);
    send(DD, T0 + 400);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);

    /* the node's data goes on (seq 5); a birth of another device declares no Tank1 channel */
    pl_begin(5, T0 + 500);
    v_float(pl_add(NULL, 1, 0), 9.0f);
    send(ND, T0 + 500);
    accepted();
    assert_int_equal(R.seq_gap, 0);
    assert_int_equal(R.record->header->seq, 5);
    pl_begin(6, T0 + 600);
    v_double(pl_add("Level", 20, DOUBLE), 1.0);
    send("spBv1.0/Plant1/DBIRTH/gw-spb-01/Tank2", T0 + 600);
    accepted();
    assert_int_equal(R.record->birth->n_channels, 6); /* Tank2's Level is not mapped */
}

/* NDEATH: with another bdSeq than the NBIRTH's (an older connection's will) it is refused
 * ("stale_death") and the node stays online; with the NBIRTH's it becomes a death record of the
 * session and the node goes offline; its data is then before its birth. */
static void test_ndeath(void **state)
{
    (void)state;
    born(T0);
    uint64_t epoch = R.record->header->boot_epoch;

    pl_begin(-1, T0 + 50);
    v_long(pl_add("bdSeq", -1, INT64), 6);
    send(NX, T0 + 100);
    refused("stale_death");
    assert_int_equal(R.rebirth, 0);
    assert_int_equal(spb_host_online(host), 1);
    pl_begin(-1, T0 + 50); /* no bdSeq at all */
    send(NX, T0 + 100);
    refused("stale_death");
    assert_int_equal(spb_host_online(host), 1);
    pl_begin(1, T0 + 150);
    v_float(pl_add(NULL, 1, 0), 9.0f);
    send(ND, T0 + 150);
    accepted();
    assert_non_null(R.record);

    pl_begin(-1, T0 + 180);
    v_long(pl_add("bdSeq", -1, INT64), 7);
    send(NX, T0 + 200);
    accepted();
    assert_string_equal(R.type, "NDEATH");
    assert_record("death", SUIDO__KIND__KIND_DEATH, T0 + 200);
    assert_int_equal(R.record->header->boot_epoch, epoch);
    assert_int_equal(R.record->header->timestamp_ms, T0 + 180);
    assert_int_equal(spb_host_online(host), 0);

    pl_begin(2, T0 + 300);
    v_float(pl_add(NULL, 1, 0), 9.0f);
    send(ND, T0 + 300);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);

    /* a death while offline: stale, and no rebirth asked */
    pl_begin(-1, T0 + 6000);
    v_long(pl_add("bdSeq", -1, INT64), 7);
    send(NX, T0 + 6000);
    refused("stale_death");
    assert_int_equal(R.rebirth, 0);
}

/* seq: a gap (or a missing seq, or one above 255) is counted and asks for a rebirth, and the
 * message is still accepted; seq wraps from 255 to 0; rebirth requests to a node are at most one
 * per rebirth_interval_ms. */
static void test_seq_gap(void **state)
{
    (void)state;
    born(T0);
    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0 + 100);
    accepted();
    assert_int_equal(R.seq_gap, 0);
    assert_int_equal(R.rebirth, 0);

    pl_begin(3, T0); /* 2 lost */
    v_float(pl_add(NULL, 1, 0), 2.0f);
    send(ND, T0 + 200);
    accepted();
    assert_int_equal(R.seq_gap, 1);
    assert_int_equal(R.rebirth, 1);
    assert_non_null(R.record); /* kept */
    assert_int_equal(R.record->header->seq, 3);
    assert_reading(0, "pump1.flow", 2.0, 0, SUIDO__QUALITY__QUALITY_GOOD);

    pl_begin(4, T0); /* in order again */
    v_float(pl_add(NULL, 1, 0), 3.0f);
    send(ND, T0 + 300);
    accepted();
    assert_int_equal(R.seq_gap, 0);
    assert_int_equal(R.rebirth, 0);

    pl_begin(9, T0); /* a gap within the rebirth interval: counted, no second request */
    v_float(pl_add(NULL, 1, 0), 4.0f);
    send(ND, T0 + 1200);
    accepted();
    assert_int_equal(R.seq_gap, 1);
    assert_int_equal(R.rebirth, 0);

    pl_begin(255, T0); /* 5 s after the request: asked again */
    v_float(pl_add(NULL, 1, 0), 5.0f);
    send(ND, T0 + 5200);
    assert_int_equal(R.seq_gap, 1);
    assert_int_equal(R.rebirth, 1);
    pl_begin(0, T0); /* 255 -> 0 */
    v_float(pl_add(NULL, 1, 0), 6.0f);
    send(ND, T0 + 5300);
    accepted();
    assert_int_equal(R.seq_gap, 0);

    pl_begin(-1, T0); /* no seq */
    v_float(pl_add(NULL, 1, 0), 7.0f);
    send(ND, T0 + 5400);
    accepted();
    assert_int_equal(R.seq_gap, 1);
    pl_begin(256, T0); /* out of range */
    v_float(pl_add(NULL, 1, 0), 8.0f);
    send(ND, T0 + 5500);
    accepted();
    assert_int_equal(R.seq_gap, 1);

    /* a gap on a DBIRTH, too */
    dbirth_payload(7, T0);
    send(DB, T0 + 5600);
    accepted();
    assert_int_equal(R.seq_gap, 1);
}

/* Rebirth requests: at most one per rebirth_interval_ms per node (the second within the interval
 * is not asked), per node (another node is asked at once). */
static void test_rebirth_rate_limit(void **state)
{
    (void)state;
    host_with(1000, 0, 0);
    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);
    send(ND, T0 + 999);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 0);
    send("spBv1.0/Plant2/NDATA/gw-spb-02", T0 + 999);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);
    send(ND, T0 + 1000);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);
    send(DD, T0 + 1500);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 0);
}

/* Data before the node's birth (NDATA, DBIRTH, DDATA, DDEATH), or of a device never born, is
 * refused as "data_before_birth" and asks for a rebirth; so is data after a refused NBIRTH
 * (which ends the session: the node's aliases may have changed). */
static void test_data_before_birth(void **state)
{
    (void)state;
    static const char *const topics[] = {ND, DB, DD, DX};
    for (size_t i = 0; i < 4; i++) {
        pl_begin(1, T0);
        v_float(pl_add("Level", 10, DOUBLE), 1.0f);
        send(topics[i], T0 + 10000 * i);
        refused("data_before_birth");
        assert_int_equal(R.rebirth, 1);
    }
    born(T0 + 50000);
    pl_begin(1, T0 + 50000);
    v_double(pl_add(NULL, 10, 0), 1.0);
    send("spBv1.0/Plant1/DDATA/gw-spb-01/Tank9", T0 + 50000);
    refused("data_before_birth");
    assert_int_equal(R.rebirth, 1);

    /* a refused NBIRTH ends the session */
    pl_begin(0, T0 + 60000);
    v_long(pl_add("bdSeq", -1, INT64), 8);
    v_float(pl_add("Pump1/Flow", 1, 0), 1.0f); /* no datatype */
    send(NB, T0 + 60000);
    refused("datatype_mismatch");
    assert_int_equal(spb_host_online(host), 0);
    pl_begin(1, T0 + 60000);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0 + 60000);
    refused("data_before_birth");
}

/* Data the session cannot read is refused whole (no reading of it is kept, no record number
 * taken) and asks for a rebirth: an alias not born ("unknown_alias"), a name for a metric born
 * with an alias or a metric with neither ("missing_alias"), a name not born ("unknown_metric"). */
static void test_unreadable_data(void **state)
{
    (void)state;
    born(T0);
    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f); /* good */
    v_float(pl_add(NULL, 99, 0), 1.0f);
    send(ND, T0 + 10000);
    refused("unknown_alias");
    assert_int_equal(R.rebirth, 1);

    pl_begin(2, T0);
    v_float(pl_add("Pump1/Flow", -1, FLOAT), 1.0f);
    send(ND, T0 + 20000);
    refused("missing_alias");
    assert_string_equal(R.detail, "Pump1/Flow");
    assert_int_equal(R.rebirth, 1);

    pl_begin(3, T0);
    v_float(pl_add(NULL, -1, FLOAT), 1.0f);
    send(ND, T0 + 30000);
    refused("missing_alias");
    assert_int_equal(R.rebirth, 1);

    pl_begin(4, T0);
    v_float(pl_add("Pump1/Nope", -1, FLOAT), 1.0f);
    send(ND, T0 + 40000);
    refused("unknown_metric"); /* not in spb_host.h's list of reasons (reported) */
    assert_string_equal(R.detail, "Pump1/Nope");
    assert_int_equal(R.rebirth, 1);

    /* a device's data by a node alias: unknown to the device */
    dbirth_payload(5, T0);
    send(DB, T0 + 40000);
    accepted();
    pl_begin(6, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(DD, T0 + 50000);
    refused("unknown_alias");
    assert_int_equal(R.rebirth, 1);

    /* none of them took a record number */
    pl_begin(7, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0 + 50001);
    accepted();
    assert_int_equal(R.record->header->seq, 3);
}

/* datatype_mismatch, never a rebirth: in data, a declared datatype other than the birth's or a
 * value in another oneof than the datatype's (or not finite); in a birth, a metric without a
 * datatype or with its value in the wrong oneof, and a mapped metric that is not a number (a
 * String); an unmapped String is fine. */
static void test_datatype_mismatch(void **state)
{
    (void)state;
    born(T0);
    int64_t seq = 1;
    struct {
        int64_t alias;
        uint32_t dt;
        int vcase;
    } bad[] = {
        {1, DOUBLE, VALUE(DOUBLE_VALUE)}, /* Pump1/Flow is a Float */
        {1, FLOAT, VALUE(DOUBLE_VALUE)},
        {1, 0, VALUE(INT_VALUE)},
        {2, 0, VALUE(INT_VALUE)},   /* Pump1/Running is a Boolean */
        {4, 0, VALUE(LONG_VALUE)},  /* Diag/I8 travels in int_value */
        {4, INT16, VALUE(INT_VALUE)},
        {6, 0, VALUE(INT_VALUE)},   /* even unmapped: Unmapped/Counter is an Int64 */
        {1, 0, VALUE(STRING_VALUE)},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pl_begin(seq++, T0);
        Metric *m = pl_add(NULL, bad[i].alias, bad[i].dt);
        m->value_case = bad[i].vcase;
        m->string_value = bad[i].vcase == VALUE(STRING_VALUE) ? "1.5" : NULL;
        send(ND, T0 + 100);
        if (!R.refused || strcmp(R.refused, "datatype_mismatch") != 0)
            fail_msg("case %zu: %s", i, R.refused ? R.refused : "accepted");
        assert_null(R.record);
        assert_int_equal(R.rebirth, 0);
        assert_int_equal(R.seq_gap, 0);
    }
    pl_begin(seq++, T0);
    v_float(pl_add(NULL, 1, 0), NAN);
    send(ND, T0 + 100);
    refused("datatype_mismatch");
    assert_string_equal(R.detail, "Pump1/Flow");
    pl_begin(seq++, T0);
    v_double(pl_add("Pump1/Pressure", -1, 0), INFINITY);
    send(ND, T0 + 100);
    refused("datatype_mismatch");

    /* births */
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    v_float(pl_add("Pump1/Flow", 1, 0), 1.0f);
    send(NB, T0 + 1000);
    refused("datatype_mismatch");
    assert_string_equal(R.detail, "Pump1/Flow");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    v_double(pl_add("Other/Thing", 1, FLOAT), 1.0); /* unmapped, wrong oneof */
    send(NB, T0 + 2000);
    refused("datatype_mismatch");
    assert_string_equal(R.detail, "Other/Thing");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 1.0f), "L/s");
    unit(v_str(pl_add("Diag/Name", 2, STRING), "pump one"), "1");
    send(NB, T0 + 3000);
    refused("datatype_mismatch");
    assert_string_equal(R.detail, "Diag/Name");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    v_str(pl_add("Diag/Label", 2, STRING), "pump one"); /* unmapped: fine */
    v_null(pl_add("Diag/Other", 3, FLOAT));             /* null: any oneof */
    send(NB, T0 + 4000);
    accepted();
    assert_int_equal(R.record->birth->n_channels, 0);
}

/* An NBIRTH without a bdSeq metric (or with one of no integer value) is refused "no_bdseq"; a
 * bdSeq in int_value is taken. */
static void test_no_bdseq(void **state)
{
    (void)state;
    pl_begin(0, T0);
    unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 1.0f), "L/s");
    send(NB, T0);
    refused("no_bdseq");
    assert_int_equal(spb_host_online(host), 0);
    pl_begin(0, T0);
    v_str(pl_add("bdSeq", -1, STRING), "7");
    send(NB, T0);
    refused("no_bdseq");
    pl_begin(0, T0);
    v_null(pl_add("bdSeq", -1, INT64));
    send(NB, T0);
    refused("no_bdseq");

    pl_begin(0, T0);
    v_int(pl_add("bdSeq", -1, INT64), 3);
    send(NB, T0);
    accepted();
    assert_int_equal(spb_host_online(host), 1);
    pl_begin(-1, T0);
    v_long(pl_add("bdSeq", -1, INT64), 3); /* the death matches it */
    send(NX, T0 + 1);
    accepted();
    assert_int_equal(spb_host_online(host), 0);
}

/* duplicate_alias: two metrics of one birth with the same alias or the same name; a device
 * metric with an alias of the node's or of another online device's. A device's own aliases are
 * free again for its rebirth, and a dead device's for others. */
static void test_duplicate_alias(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 1.0f), "L/s");
    v_float(pl_add("Pump1/Level", 1, FLOAT), 1.0f);
    send(NB, T0);
    refused("duplicate_alias");
    assert_string_equal(R.detail, "Pump1/Level");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 1.0f), "L/s");
    unit(v_float(pl_add("Pump1/Flow", 2, FLOAT), 1.0f), "L/s");
    send(NB, T0);
    refused("duplicate_alias");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    v_int(pl_add("A", -1, INT32), 1);
    v_int(pl_add("A", -1, INT32), 1);
    send(NB, T0);
    refused("duplicate_alias");

    born(T0 + 1000);
    pl_begin(1, T0);
    v_double(pl_add("Level", 1, DOUBLE), 4.0); /* alias 1 is the node's Pump1/Flow */
    send(DB, T0 + 1000);
    refused("duplicate_alias");
    assert_string_equal(R.detail, "Level");
    dborn(T0 + 1000);
    pl_begin(2, T0);
    v_double(pl_add("Level", 10, DOUBLE), 4.0); /* Tank1's */
    send("spBv1.0/Plant1/DBIRTH/gw-spb-01/Tank2", T0 + 1000);
    refused("duplicate_alias");
    dbirth_payload(3, T0); /* Tank1 again, same aliases */
    send(DB, T0 + 1000);
    accepted();
    pl_begin(4, T0);
    send(DX, T0 + 1000);
    accepted();
    pl_begin(5, T0);
    v_double(pl_add("Level", 10, DOUBLE), 4.0); /* Tank1 is dead: free */
    send("spBv1.0/Plant1/DBIRTH/gw-spb-01/Tank2", T0 + 1000);
    accepted();
}

/* ---- refusals before decoding ------------------------------------------------------------- */

/* Bytes that are no Payload: "malformed", no rebirth; garbage for an unknown node is refused as
 * unknown_node first. */
static void test_malformed(void **state)
{
    (void)state;
    born(T0);
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                      0xff};
    send_raw(ND, garbage, sizeof garbage, T0 + 1);
    refused("malformed");
    assert_int_equal(R.rebirth, 0);
    send_raw(NB, garbage, sizeof garbage, T0 + 1);
    refused("malformed");
    assert_int_equal(spb_host_online(host), 1); /* a malformed birth leaves the session */

    /* a good payload cut short */
    pl_begin(1, T0);
    v_str(pl_add("Pump1/Flow", 1, FLOAT), "a string long enough to cut");
    send(ND, T0 + 2);
    assert_true(last_len > 10);
    send_raw(ND, last_buf, last_len - 5, T0 + 3);
    refused("malformed");
    static const uint8_t bad_wire_type[] = {0x0f, 0x01};
    send_raw(DD, bad_wire_type, sizeof bad_wire_type, T0 + 4);
    refused("malformed");
    send_raw("spBv1.0/Plant1/NDATA/gw-spb-09", garbage, sizeof garbage, T0 + 5);
    refused("unknown_node");
}

/* A payload above SPB_MAX_PAYLOAD is refused "oversize" before it is decoded; one of exactly
 * SPB_MAX_PAYLOAD is taken. */
static void test_oversize(void **state)
{
    (void)state;
    size_t n = SPB_MAX_PAYLOAD + 1;
    uint8_t *big = calloc(1, n);
    assert_non_null(big);
    send_raw(NB, big, n, T0);
    refused("oversize");
    free(big);

    /* an NBIRTH padded with its body to exactly the limit */
    nbirth_payload(T0, 7);
    static uint8_t pad[SPB_MAX_PAYLOAD];
    B.p.has_body = 1;
    B.p.body.data = pad;
    B.p.body.len = 0;
    size_t base = org__eclipse__tahu__protobuf__payload__get_packed_size(&B.p);
    B.p.body.len = SPB_MAX_PAYLOAD - base - 2; /* the length's varint grows from 1 to 3 bytes */
    assert_int_equal(org__eclipse__tahu__protobuf__payload__get_packed_size(&B.p),
                     SPB_MAX_PAYLOAD);
    send(NB, T0);
    accepted();
    B.p.body.len++;
    send(NB, T0 + 1);
    refused("oversize");
}

/* More than SPB_MAX_METRICS metrics in one message: "too_many_metrics"; exactly that many taken. */
static void test_too_many_metrics(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    pl_many(SPB_MAX_METRICS, 0);
    send(NB, T0);
    refused("too_many_metrics");
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    pl_many(SPB_MAX_METRICS - 1, 0);
    send(NB, T0);
    accepted();
    pl_begin(1, T0);
    pl_many(SPB_MAX_METRICS + 1, 0);
    send(ND, T0);
    refused("too_many_metrics");
    pl_begin(2, T0);
    pl_many(SPB_MAX_METRICS - 1, 0);
    v_int(pl_add(NULL, 0, 0), 5); /* alias 0 again: 1024 metrics, all born */
    send(ND, T0);
    accepted();
    assert_int_equal(R.skipped, SPB_MAX_METRICS);
}

/* A mapped reading more than max_ahead_ms after the host's clock refuses the message
 * ("timestamp_ahead"), by the metric's own timestamp or the payload's; exactly max_ahead_ms is
 * taken; the limit is the host's (here 2 s). */
static void test_timestamp_ahead(void **state)
{
    (void)state;
    born(T0);
    pl_begin(1, T0);
    at(v_float(pl_add(NULL, 1, 0), 1.0f), T0 + 10001);
    send(ND, T0);
    refused("timestamp_ahead");
    assert_int_equal(R.rebirth, 0);
    pl_begin(2, T0 + 10001);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0);
    refused("timestamp_ahead");
    pl_begin(3, T0 + 10000);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0);
    accepted();
    assert_int_equal(R.record->header->timestamp_ms, T0 + 10000);

    host_with(0, 0, 2000);
    born(T0);
    pl_begin(1, T0);
    at(v_float(pl_add(NULL, 1, 0), 1.0f), T0 + 2001);
    send(ND, T0);
    refused("timestamp_ahead");
    pl_begin(2, T0);
    at(v_float(pl_add(NULL, 1, 0), 1.0f), T0 + 2000);
    send(ND, T0);
    accepted();
}

/* Topics that are not spBv1.0/<group>/<type>/<node> (node types) or .../<node>/<device> (device
 * types) are refused "bad_topic", before anything else, with no node or type named. */
static void test_bad_topic(void **state)
{
    (void)state;
    born(T0);
    static const char *const topics[] = {
        "",
        "spBv1.0",
        "spBv1.0/",
        "spBv1.0/Plant1",
        "spBv1.0/Plant1/NDATA",
        "spBv1.0/Plant1/NDATA/",
        "spBv1.0//NDATA/gw-spb-01",
        "spBv1.0/Plant1//gw-spb-01",
        "spBv1.0/Plant1/NDATA/gw-spb-01/Tank1", /* a node type with a device */
        "spBv1.0/Plant1/DDATA/gw-spb-01",       /* a device type without one */
        "spBv1.0/Plant1/DDATA/gw-spb-01/",
        "spBv1.0/Plant1/DDATA/gw-spb-01/Tank1/x",
        "spBv1.0/Plant1/DDATA/gw-spb-01/Tank 1",
        "spBv1.0/Plant1/DDATA/gw-spb-01/Tank+",
        "spBv1.0/Plant1/ndata/gw-spb-01",
        "spBv1.0/Plant1/NDATAX/gw-spb-01",
        "spBv1.0/Plant1/STATE/gw-spb-01",
        "spBv1.0/STATE/suido",
        "spBv1.1/Plant1/NDATA/gw-spb-01",
        "spbv1.0/Plant1/NDATA/gw-spb-01",
        "/spBv1.0/Plant1/NDATA/gw-spb-01",
        "suido/v1/gw-spb-01/data",
        "spBv1.0/Plant1/NCMD",
        "spBv1.0/ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg/NDATA/x",
    };
    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        send(topics[i], T0 + 1);
        if (!R.refused || strcmp(R.refused, "bad_topic") != 0)
            fail_msg("topic \"%s\": %s", topics[i], R.refused ? R.refused : "accepted");
        assert_null(R.record);
        assert_string_equal(R.type, "");
        assert_string_equal(R.node, "");
        assert_int_equal(R.rebirth, 0);
    }
}

/* A topic ending in '/' (an empty last level) is refused as bad_topic. Found by this test
 * (reported): topic_parse took "spBv1.0/Plant1/NDATA/gw-spb-01/" and ".../DDATA/gw-spb-01/Tank1/"
 * as the node's NDATA and Tank1's DDATA, because level() also skips the '/' after a level and
 * `*p == '\0'` then holds. (The broker plugin refuses such topics to a node: defence in depth.) */
static void test_bad_topic_trailing_slash(void **state)
{
    (void)state;
    born(T0);
    dborn(T0);
    static const char *const topics[] = {
        "spBv1.0/Plant1/NDATA/gw-spb-01/",
        "spBv1.0/Plant1/NBIRTH/gw-spb-01/",
        "spBv1.0/Plant1/DDATA/gw-spb-01/Tank1/",
    };
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        pl_begin(2 + (int64_t)i, T0);
        v_float(pl_add(NULL, 1, 0), 1.0f);
        send(topics[i], T0 + 1);
        if (!R.refused || strcmp(R.refused, "bad_topic") != 0)
            fail_msg("topic \"%s\": %s", topics[i], R.refused ? R.refused : "accepted");
    }
}

/* A node not in the map, or a node of the map on another group's topics: "unknown_node", the
 * node and type named; nothing changes for the node of the map. */
static void test_unknown_node(void **state)
{
    (void)state;
    nbirth_payload(T0, 7);
    send("spBv1.0/Plant1/NBIRTH/gw-spb-09", T0);
    refused("unknown_node");
    assert_string_equal(R.node, "gw-spb-09");
    assert_string_equal(R.type, "NBIRTH");
    send("spBv1.0/Plant1/NBIRTH/gw-spb-02", T0); /* gw-spb-02 is of Plant2 */
    refused("unknown_node");
    send("spBv1.0/Plant2/NBIRTH/gw-spb-01", T0); /* gw-spb-01 is of Plant1 */
    refused("unknown_node");
    send("spBv1.0/Plant1/NBIRTH/GW-SPB-01", T0);
    refused("unknown_node");
    assert_int_equal(spb_host_online(host), 0);
    send("spBv1.0/Plant2/DDATA/gw-spb-01/Tank1", T0);
    refused("unknown_node");
    assert_string_equal(R.type, "DDATA");
    assert_int_equal(R.rebirth, 0);
}

/* Commands (NCMD, DCMD: the host's own rebirth requests among them) heard on the group's topics
 * are ignored: no refusal, no record, whatever the payload or the node. */
static void test_commands_ignored(void **state)
{
    (void)state;
    born(T0);
    uint8_t *buf;
    size_t len;
    assert_int_equal(spb_rebirth_payload(T0, &buf, &len), CM_OK);
    static const char *const topics[] = {
        "spBv1.0/Plant1/NCMD/gw-spb-01",
        "spBv1.0/Plant1/DCMD/gw-spb-01/Tank1",
        "spBv1.0/Other/NCMD/gw-spb-09",
        "spBv1.0/Plant1/NCMD/",
    };
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        send_raw(topics[i], buf, len, T0 + 1);
        assert_int_equal(R.ignored, 1);
        assert_null(R.refused);
        assert_null(R.record);
        assert_int_equal(R.rebirth, 0);
        send_raw(topics[i], garbage, sizeof garbage, T0 + 1);
        assert_int_equal(R.ignored, 1);
        assert_null(R.refused);
    }
    free(buf);
    assert_int_equal(spb_host_online(host), 1);
}

/* ---- rate limits, values, epochs --------------------------------------------------------- */

/* NBIRTHs of one node above births_per_minute within a minute are refused ("rebirth_storm"),
 * which ends the session; from the next minute on a birth is taken again. */
static void test_rebirth_storm(void **state)
{
    (void)state;
    for (unsigned i = 0; i < 6; i++) { /* the default: 6 a minute */
        born(T0 + 1000 * i);
        assert_int_equal(spb_host_online(host), 1);
    }
    nbirth_payload(T0, 7);
    send(NB, T0 + 6000);
    refused("rebirth_storm");
    assert_int_equal(spb_host_online(host), 0);
    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0 + 7000);
    refused("data_before_birth");
    nbirth_payload(T0, 7);
    send(NB, T0 + 59999);
    refused("rebirth_storm");
    /* another node is not concerned */
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    send("spBv1.0/Plant2/NBIRTH/gw-spb-02", T0 + 59999);
    accepted();
    born(T0 + 60000);
    assert_int_equal(spb_host_online(host), 2);

    /* a limit of 2 */
    host_with(0, 2, 0);
    born(T0);
    born(T0 + 1);
    nbirth_payload(T0, 7);
    send(NB, T0 + 2);
    refused("rebirth_storm");
    born(T0 + 60000);
}

/* Int8 and Int16 values are read from the low bits of int_value: -1 as 0xFF / 0xFFFF (the
 * type's own width) and as 0xFFFFFFFF (32-bit two's complement) alike; the extremes too. */
static void test_small_negative_ints(void **state)
{
    (void)state;
    born(T0);
    static const struct {
        int64_t alias;
        uint32_t raw;
        double want;
    } cases[] = {
        {4, 0xFFu, -1},        {4, 0xFFFFFFFFu, -1}, {4, 0x80u, -128},   {4, 0xFFFFFF80u, -128},
        {4, 0x7Fu, 127},       {4, 0u, 0},           {5, 0xFFFFu, -1},   {5, 0xFFFFFFFFu, -1},
        {5, 0x8000u, -32768},  {5, 0xFFFF8000u, -32768}, {5, 0x7FFFu, 32767},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pl_begin(1 + (int64_t)i, T0);
        v_int(pl_add(NULL, cases[i].alias, 0), cases[i].raw);
        send(ND, T0 + 1);
        accepted();
        assert_reading(0, cases[i].alias == 4 ? "plant.i8" : "plant.i16", cases[i].want, 0,
                       SUIDO__QUALITY__QUALITY_GOOD);
    }
}

/* spb_rebirth_payload: a Payload with one metric "Node Control/Rebirth", Boolean true, stamped
 * with the time given. */
static void test_rebirth_payload(void **state)
{
    (void)state;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(spb_rebirth_payload(T0 + 42, &buf, &len), CM_OK);
    assert_non_null(buf);
    Payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, len, buf);
    assert_non_null(p);
    assert_true(p->has_timestamp);
    assert_int_equal(p->timestamp, T0 + 42);
    assert_int_equal(p->n_metrics, 1);
    const Metric *m = p->metrics[0];
    assert_string_equal(m->name, "Node Control/Rebirth");
    assert_false(m->has_alias);
    assert_true(m->has_datatype);
    assert_int_equal(m->datatype, BOOLEAN);
    assert_int_equal(m->value_case, VALUE(BOOLEAN_VALUE));
    assert_true(m->boolean_value);
    org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
    free(buf);
}

/* Boot epochs (a session's number for the archive) strictly increase across the host, even for
 * births received in the same millisecond or with the clock gone back; each birth's data is
 * numbered from 1 again under its epoch. */
static void test_boot_epochs(void **state)
{
    (void)state;
    uint64_t e[5];
    born(T0);
    e[0] = R.record->header->boot_epoch;
    born(T0);
    e[1] = R.record->header->boot_epoch;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    send("spBv1.0/Plant2/NBIRTH/gw-spb-02", T0);
    accepted();
    e[2] = R.record->header->boot_epoch;
    born(T0 - 5000);
    e[3] = R.record->header->boot_epoch;
    born(T0 + 10);
    e[4] = R.record->header->boot_epoch;
    assert_int_equal(e[0], T0);
    for (size_t i = 1; i < 5; i++)
        if (e[i] <= e[i - 1])
            fail_msg("epoch %zu: %llu after %llu", i, (unsigned long long)e[i],
                     (unsigned long long)e[i - 1]);
    assert_int_equal(e[4], T0 + 10);

    pl_begin(1, T0);
    v_float(pl_add(NULL, 1, 0), 1.0f);
    send(ND, T0 + 20);
    accepted();
    assert_int_equal(R.record->header->boot_epoch, e[4]);
    assert_int_equal(R.record->header->seq, 2);
}

/* A birth's values are readings (a node reporting by exception may send no others): the
 * metrics' own timestamps give the offsets, is_null a BAD reading; a birth with nothing mapped
 * has no values record and takes no number. */
static void test_birth_values(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    at(unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 7.5f), "L/s"), T0 - 1000);
    at(v_null(pl_add("Pump1/Running", 2, BOOLEAN)), T0 - 400);
    v_int(pl_add("Diag/I8", 4, INT8), 0xFE); /* no timestamp: the payload's */
    send(NB, T0 + 5);
    accepted();
    assert_int_equal(R.record->birth->n_channels, 3);
    const Suido__StageMessage *v = R.values;
    assert_record_of(v, "data", SUIDO__KIND__KIND_DATA, T0 + 5);
    assert_int_equal(v->header->seq, 1);
    assert_int_equal(v->header->timestamp_ms, T0 - 1000);
    assert_reading_of(v, 0, "pump1.flow", 7.5, 0, SUIDO__QUALITY__QUALITY_GOOD);
    assert_reading_of(v, 1, "pump1.running", 0, 600, SUIDO__QUALITY__QUALITY_BAD);
    assert_reading_of(v, 2, "plant.i8", -2, 1000, SUIDO__QUALITY__QUALITY_GOOD);
    assert_int_equal(R.readings, 3);

    /* nothing mapped */
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 2);
    v_long(pl_add("Unmapped/Counter", 6, INT64), 42);
    send(NB, T0 + 10);
    accepted();
    assert_non_null(R.record);
    assert_null(R.values);
    assert_int_equal(R.record->birth->n_channels, 0);
    assert_int_equal(R.skipped, 1);
}

/* A birth is refused whole or taken whole, whatever its values. Found by this test (reported):
 * once a birth's values became readings (data_record(..., FROM_BIRTH) after emit_birth), a value
 * data_record refused left res.refused *and* res.record (the birth) set, the node online under a
 * new boot epoch: the service refuses the message (main.c forwards nothing when refused is set),
 * so the registry and profile never saw the birth while the node's later data went on under its
 * epoch. Inputs: an NBIRTH whose mapped metric carries a timestamp 50 days before the payload's
 * (a setpoint unchanged for weeks: "malformed", "timestamps span more than 49 days"), one whose
 * value is NaN ("datatype_mismatch"), one 20 s ahead ("timestamp_ahead"); a DBIRTH likewise.
 * Either contract passes (refused: no record, no values, no session; or taken, the bad value
 * skipped or BAD); the mixture fails. */
static void test_refused_birth_is_whole(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        teardown(NULL);
        setup(NULL);
        pl_begin(0, T0);
        v_long(pl_add("bdSeq", -1, INT64), 1);
        Metric *m = unit(v_float(pl_add("Pump1/Flow", 1, FLOAT), 7.5f), "L/s");
        if (i == 0)
            at(m, T0 - 50ull * 86400000);
        else if (i == 1)
            m->float_value = NAN;
        else
            at(m, T0 + 20000);
        send(NB, T0);
        if (R.refused) {
            if (R.record || R.values || spb_host_online(host))
                fail_msg("NBIRTH case %d refused (%s: %s) with a birth record %p, values %p and "
                         "the node online (%u)",
                         i, R.refused, R.detail, (void *)R.record, (void *)R.values,
                         spb_host_online(host));
        } else {
            assert_non_null(R.record);
            assert_int_equal(spb_host_online(host), 1);
        }
    }
    born(T0);
    pl_begin(1, T0);
    at(v_double(pl_add("Level", 10, DOUBLE), 4.0), T0 - 50ull * 86400000);
    unit(v_float(pl_add("Temp", 11, FLOAT), 12.0f), "degC");
    send(DB, T0);
    if (R.refused && R.record)
        fail_msg("DBIRTH refused (%s: %s) with a birth record declaring Tank1, which is online",
                 R.refused, R.detail);
}

/* ---- commands ------------------------------------------------------------------------------- */

static spb_write W;
static Suido__StageMessage *REFUSED;
static char cmd_id[48]; /* the last command's id */

/* The gate's command for actuator act of gw: the host's answer (W, REFUSED filled). */
static cm_err command(const char *gw, const char *act, double value, uint64_t now,
                      uint64_t expires)
{
    static unsigned n;
    free(W.payload);
    memset(&W, 0, sizeof W);
    spb_record_free(&REFUSED);
    snprintf(cmd_id, sizeof cmd_id, "%s-%llu-%u", gw, (unsigned long long)now, ++n);
    Suido__Command c = SUIDO__COMMAND__INIT;
    c.command_id = cmd_id;
    c.gateway_id = (char *)gw;
    c.channel = (char *)act;
    c.value = value;
    c.unit = "1";
    c.issued_ms = now;
    c.expires_ms = expires;
    c.requested_by = "alice";
    return spb_host_command(host, &c, now, &W, &REFUSED);
}

static void command_refused(cm_err rc, const char *reason, const char *act)
{
    if (rc != CM_ERR_DENIED)
        fail_msg("%s = %s: expected a refusal \"%s\", got rc %d (%s)", act,
                 W.payload ? "written" : "-", reason, (int)rc, REFUSED ? "refused" : "no record");
    assert_null(W.payload);
    assert_non_null(REFUSED);
    assert_string_equal(REFUSED->topic, "suido/v1/gw-spb-01/cmdres");
    assert_int_equal(REFUSED->provenance, SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG);
    assert_int_equal(REFUSED->header->kind, SUIDO__KIND__KIND_CMDRES);
    assert_non_null(REFUSED->cmdres);
    assert_int_equal(REFUSED->cmdres->outcome, SUIDO__COMMAND_OUTCOME__OUTCOME_REFUSED);
    assert_string_equal(REFUSED->cmdres->reason, reason);
    assert_string_equal(REFUSED->cmdres->channel, act);
    assert_string_equal(REFUSED->cmdres->command_id, cmd_id);
}

static int command_teardown(void **state)
{
    free(W.payload);
    memset(&W, 0, sizeof W);
    spb_record_free(&REFUSED);
    return teardown(state);
}

/* A command is written to the actuator's mapped metric in the datatype the node declared, by
 * name and by its alias: NCMD for a node metric, DCMD for a device's; Int32 in 32-bit two's
 * complement, a Boolean as boolean_value. */
static void test_command_write(void **state)
{
    (void)state;
    born(T0);
    dborn(T0);
    assert_int_equal(command("gw-spb-01", "pump1.speed", 42, T0 + 10, T0 + 30000), CM_OK);
    assert_null(REFUSED);
    assert_string_equal(W.topic, "spBv1.0/Plant1/NCMD/gw-spb-01");
    Payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, W.len, W.payload);
    assert_non_null(p);
    assert_int_equal(p->timestamp, T0 + 10);
    assert_int_equal(p->n_metrics, 1);
    assert_string_equal(p->metrics[0]->name, "Pump1/Speed");
    assert_true(p->metrics[0]->has_alias);
    assert_int_equal(p->metrics[0]->alias, 7);
    assert_int_equal(p->metrics[0]->datatype, INT32);
    assert_int_equal(p->metrics[0]->value_case, VALUE(INT_VALUE));
    assert_int_equal(p->metrics[0]->int_value, 42);
    org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);

    assert_int_equal(command("gw-spb-01", "pump1.speed", -5, T0 + 20, T0 + 30000), CM_OK);
    p = org__eclipse__tahu__protobuf__payload__unpack(NULL, W.len, W.payload);
    assert_int_equal(p->metrics[0]->int_value, 0xFFFFFFFBu);
    org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);

    assert_int_equal(command("gw-spb-01", "valve1", 1, T0 + 30, T0 + 30000), CM_OK);
    assert_string_equal(W.topic, "spBv1.0/Plant1/DCMD/gw-spb-01/Tank1");
    p = org__eclipse__tahu__protobuf__payload__unpack(NULL, W.len, W.payload);
    assert_string_equal(p->metrics[0]->name, "Valve");
    assert_int_equal(p->metrics[0]->alias, 13);
    assert_int_equal(p->metrics[0]->datatype, BOOLEAN);
    assert_int_equal(p->metrics[0]->value_case, VALUE(BOOLEAN_VALUE));
    assert_true(p->metrics[0]->boolean_value);
    org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
}

/* Commands refused by the host, each with a cmdres record of outcome REFUSED: the node offline,
 * an actuator not in the map or not born, expired, a value the datatype cannot carry, more than
 * 8 unanswered ("busy"); a gateway not in the map gets nothing to report to. */
static void test_command_refusals(void **state)
{
    (void)state;
    assert_int_equal(command("gw-spb-09", "pump1.speed", 1, T0, T0 + 30000), CM_ERR_UNKNOWN);
    assert_null(REFUSED);
    command_refused(command("gw-spb-01", "pump1.speed", 1, T0, T0 + 30000), "gateway_offline",
                    "pump1.speed");
    born(T0);
    command_refused(command("gw-spb-01", "pump9", 1, T0, T0 + 30000), "unknown_actuator",
                    "pump9");
    command_refused(command("gw-spb-01", "pump1.flow", 1, T0, T0 + 30000), "unknown_actuator",
                    "pump1.flow"); /* a channel is no actuator */
    command_refused(command("gw-spb-01", "valve1", 1, T0, T0 + 30000), "unknown_actuator",
                    "valve1"); /* Tank1 not born */
    command_refused(command("gw-spb-01", "pump1.speed", 1, T0 + 30001, T0 + 30000), "expired",
                    "pump1.speed");
    command_refused(command("gw-spb-01", "pump1.speed", 3e9, T0, T0 + 30000), "out_of_range",
                    "pump1.speed");
    dborn(T0);
    command_refused(command("gw-spb-01", "valve1", 0.5, T0, T0 + 30000), "out_of_range",
                    "valve1");
    for (int i = 0; i < 8; i++)
        assert_int_equal(command("gw-spb-01", "pump1.speed", i, T0, T0 + 30000), CM_OK);
    command_refused(command("gw-spb-01", "pump1.speed", 9, T0, T0 + 30000), "busy",
                    "pump1.speed");
    /* once they expire there is room again */
    assert_int_equal(command("gw-spb-01", "pump1.speed", 9, T0 + 30001, T0 + 60000), CM_OK);
}

/* A command of NaN is refused out_of_range. Found by this test (reported): put_value()'s range
 * check `r < lo[dt] || r > hi[dt]` is false for NaN, which was then converted to an integer
 * ((uint32_t)(int64_t)r, undefined behaviour; 0 on x86-64): written to the node as 0, with a
 * pending command expecting NaN that no value ever equals. The gate refuses a value that is not
 * finite before it gets here, so this is defence in depth. */
static void test_command_nan_refused(void **state)
{
    (void)state;
    born(T0);
    command_refused(command("gw-spb-01", "pump1.speed", NAN, T0, T0 + 30000), "out_of_range",
                    "pump1.speed");
}

/* The next value the node publishes for a commanded metric is the command's result (a cmdres
 * record numbered in the session): applied when it is the commanded value, failed otherwise;
 * one result per command; an expired command has none. */
static void test_command_result(void **state)
{
    (void)state;
    born(T0);
    assert_int_equal(command("gw-spb-01", "pump1.speed", 42, T0 + 10, T0 + 30000), CM_OK);
    char id[48];
    snprintf(id, sizeof id, "%s", cmd_id);
    pl_begin(1, T0 + 100);
    v_int(pl_add(NULL, 7, 0), 42);
    v_float(pl_add(NULL, 1, 0), 3.0f);
    send(ND, T0 + 100);
    accepted();
    assert_non_null(R.result);
    assert_record_of(R.result, "cmdres", SUIDO__KIND__KIND_CMDRES, T0 + 100);
    assert_int_equal(R.result->cmdres->outcome, SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED);
    assert_string_equal(R.result->cmdres->reason, "ok");
    assert_string_equal(R.result->cmdres->channel, "pump1.speed");
    assert_string_equal(R.result->cmdres->command_id, id);
    assert_true(R.result->cmdres->value == 42);
    /* the result and the data take numbers 2 and 3 (in either order) */
    assert_int_equal(R.result->header->seq + R.record->header->seq, 5);
    assert_int_not_equal(R.result->header->seq, R.record->header->seq);
    assert_reading(0, "pump1.flow", 3.0, 0, SUIDO__QUALITY__QUALITY_GOOD);

    pl_begin(2, T0 + 200); /* answered already: no second result */
    v_int(pl_add(NULL, 7, 0), 42);
    send(ND, T0 + 200);
    accepted();
    assert_null(R.result);

    assert_int_equal(command("gw-spb-01", "pump1.speed", 10, T0 + 300, T0 + 30000), CM_OK);
    pl_begin(3, T0 + 400);
    v_int(pl_add(NULL, 7, 0), 11);
    send(ND, T0 + 400);
    accepted();
    assert_non_null(R.result);
    assert_int_equal(R.result->cmdres->outcome, SUIDO__COMMAND_OUTCOME__OUTCOME_FAILED);
    assert_true(R.result->cmdres->value == 11);

    assert_int_equal(command("gw-spb-01", "pump1.speed", 5, T0 + 500, T0 + 600), CM_OK);
    pl_begin(4, T0 + 700);
    v_int(pl_add(NULL, 7, 0), 5);
    send(ND, T0 + 700);
    accepted();
    assert_null(R.result);
}

/* A refused NDATA takes no record number and settles no command: after it the next record is
 * number 2, and the command is still answered by the next value. Found by this test (reported):
 * settle() ran metric by metric inside data_record, and its result_record() did ++rec_seq before
 * a later metric (here an unknown alias) refused the message; the result was freed but the number
 * stayed taken (records 1, 3, ...: a hole the archive reports as a gap) and the pending command
 * was gone (the gate would report it unanswered although the node applied it). */
static void test_refused_data_keeps_numbering(void **state)
{
    (void)state;
    born(T0);
    assert_int_equal(command("gw-spb-01", "pump1.speed", 42, T0 + 10, T0 + 30000), CM_OK);
    pl_begin(1, T0 + 100);
    v_int(pl_add(NULL, 7, 0), 42);
    v_float(pl_add(NULL, 99, 0), 1.0f);
    send(ND, T0 + 100);
    refused("unknown_alias");
    pl_begin(2, T0 + 200);
    v_float(pl_add(NULL, 1, 0), 3.0f);
    v_int(pl_add(NULL, 7, 0), 42);
    send(ND, T0 + 200);
    accepted();
    assert_non_null(R.record);
    if (R.record->header->seq != 2 && !(R.result && R.result->header->seq == 2))
        fail_msg("records after the refused message: data %llu, result %s: number 2 is lost",
                 (unsigned long long)R.record->header->seq, R.result ? "present" : "none");
    if (!R.result)
        fail_msg("the command's result is lost with the refused message");
}

/* SPB_MAX_METRICS is the limit "per message and per session" (spb_host.h): a session of 1000
 * node metrics refuses a DBIRTH of 100 more as too_many_metrics. Found by this test (reported):
 * only a message's metrics were counted, so a node's session (its NBIRTH and its devices'
 * DBIRTHs) grew without bound, and each birth's alias check walks every metric already born. */
static void test_session_metric_limit(void **state)
{
    (void)state;
    pl_begin(0, T0);
    v_long(pl_add("bdSeq", -1, INT64), 1);
    pl_many(1000, 0);
    send(NB, T0);
    accepted();
    pl_begin(1, T0);
    pl_many(100, 5000);
    send(DB, T0);
    refused("too_many_metrics");
}

/* A node that cycles devices (DBIRTH, DDEATH, each time a new device id) does not grow the host:
 * an offline device's entry is taken by the next one. Online devices are capped. */
static void test_device_churn_is_bounded(void **state)
{
    (void)state;
    born(T0);
    int64_t seq = 1;
    char topic[96];
    for (int i = 0; i < SPB_MAX_DEVICES + 50; i++) {
        snprintf(topic, sizeof topic, "spBv1.0/Plant1/DBIRTH/gw-spb-01/Dev%d", i);
        pl_begin(seq++, T0 + 10);
        v_double(pl_add("Level", 10, DOUBLE), 1.0);
        send(topic, T0 + 20);
        accepted();
        snprintf(topic, sizeof topic, "spBv1.0/Plant1/DDEATH/gw-spb-01/Dev%d", i);
        pl_begin(seq++, T0 + 30);
        send(topic, T0 + 40);
        accepted();
    }
    /* all online at once: the cap holds (metric-free births, so only the device count binds) */
    for (int i = 0; i <= SPB_MAX_DEVICES; i++) {
        snprintf(topic, sizeof topic, "spBv1.0/Plant1/DBIRTH/gw-spb-01/On%d", i);
        pl_begin(seq++, T0 + 50);
        send(topic, T0 + 60);
        if (i < SPB_MAX_DEVICES)
            accepted();
        else
            refused("too_many_metrics");
    }
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_nbirth),
        T(test_units),
        T(test_no_unit),
        T(test_ndata),
        T(test_device),
        T(test_ndeath),
        T(test_seq_gap),
        T(test_rebirth_rate_limit),
        T(test_data_before_birth),
        T(test_unreadable_data),
        T(test_datatype_mismatch),
        T(test_no_bdseq),
        T(test_duplicate_alias),
        T(test_malformed),
        T(test_oversize),
        T(test_too_many_metrics),
        T(test_timestamp_ahead),
        T(test_bad_topic),
        T(test_bad_topic_trailing_slash),
        T(test_unknown_node),
        T(test_commands_ignored),
        T(test_rebirth_storm),
        T(test_small_negative_ints),
        T(test_rebirth_payload),
        T(test_boot_epochs),
        T(test_session_metric_limit),
        T(test_birth_values),
        T(test_refused_birth_is_whole),
        cmocka_unit_test_setup_teardown(test_command_write, setup, command_teardown),
        cmocka_unit_test_setup_teardown(test_command_refusals, setup, command_teardown),
        cmocka_unit_test_setup_teardown(test_command_nan_refused, setup, command_teardown),
        cmocka_unit_test_setup_teardown(test_command_result, setup, command_teardown),
        cmocka_unit_test_setup_teardown(test_device_churn_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_data_keeps_numbering, setup,
                                        command_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
