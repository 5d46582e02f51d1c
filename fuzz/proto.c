/* Fuzz target: the protobuf messages of the internal hops (proto/suido.proto), each decoded the
 * way its receiver decodes it and, where the receiver's checks are a public function, passed to
 * them.
 *
 * Input = one selector byte, then the message bytes. The selector picks the message type:
 *   0  StageMessage  -> the archive's dispatch (cm_stage_kind) and the guard of its handler
 *                       (services/archive/main.c on_batch, on_event, on_command, on_reject,
 *                       on_alert, on_audit), then archive_store_* and archive_cases_record on an
 *                       in-memory archive, in a transaction rolled back after each input
 *   1  ArchiveRequest -> archive_query_answer (the monitor's reads) on the same archive, as an
 *                       admin when the selector's top bit is set, else as a viewer
 *   2  AuditEvent     -> archive_store_audit
 *   3  Alert          -> inside a StageMessage on the alerts topic, as selector 0
 *   4  GateRequest    -> the guard of the gate's command handler (services/gate/main.c
 *                       on_command_request), then gate_decide against a small fixed profile and
 *                       plant; the requester's role (the registry session's in the gate), the
 *                       site kind and the plant come from the selector's top bits
 *   5.. the other messages that cross a socket (registry, gate reply, replication, MQTT ack and
 *       command): decoded, re-encoded and decoded again (the bytes protobuf-c writes must read
 *       back, to the same size). Their receivers' checks live inside the services' main.c
 *       handlers, not in a public function (fuzz/README.md, "gaps").
 * Messages with unknown fields are still processed: the receivers above do not refuse them. */
#include <math.h>
#include <stdio.h>

#include "archive_cases.h"
#include "archive_query.h"
#include "archive_store.h"
#include "cm_profile.h"
#include "cm_stage.h"
#include "cm_svc.h"
#include "fuzz_util.h"
#include "gate_check.h"
#include "suido.pb-c.h"

#define FUZZ_NOW_MS 1800000000000ull

static archive_store *store;
static cm_profile *profile;
static gate_plant plant;

/* The part of examples/sim-utility/profile.conf the gate needs for its interlocks. */
static const char PROFILE[] =
    "[profile]\nname = fuzz\nversion = 1\n"
    "[channel treatment.raw_flow]\nquantity = flow\nunit = L/s\nrange = 0, 600\n"
    "limits = 5, 20, 450, 550\ndeadband = 5\nperiod_s = 1\n"
    "[channel pumping.pump1_status]\nquantity = run_status\nunit = 1\nrange = 0, 1\nperiod_s = 1\n"
    "[channel pumping.pump2_status]\nquantity = run_status\nunit = 1\nrange = 0, 1\nperiod_s = 1\n"
    "[channel pumping.tank_level]\nquantity = level\nunit = m\nrange = 0, 6\n"
    "limits = 0.5, 1.0, 5.0, 5.5\ndeadband = 0.05\nperiod_s = 1\n"
    "[actuator pumping.pump1]\nquantity = run_command\nunit = 1\nrange = 0, 1\n"
    "min_interval_s = 5\nfeedback = pumping.pump1_status\ntolerance = 0.5\nsettle_s = 10\n"
    "[actuator pumping.pump2]\nquantity = run_command\nunit = 1\nrange = 0, 1\n"
    "min_interval_s = 5\nfeedback = pumping.pump2_status\ntolerance = 0.5\nsettle_s = 10\n"
    "[actuator treatment.dosing]\nquantity = chlorine_dose\nunit = mg/L\nrange = 0, 4\n"
    "max_step = 1\n"
    "[interlock pumping.last_pump_1]\nactuator = pumping.pump1\n"
    "refuse_if = value == 0, pumping.pump2_status < 0.5, pumping.tank_level < LL\nreason = x\n"
    "[interlock treatment.no_dose_without_flow]\nactuator = treatment.dosing\n"
    "refuse_if = value > 0, treatment.raw_flow < 5\nreason = y\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    char err[CM_CONF_ERRLEN];
    if (archive_store_open(":memory:", &store) != CM_OK ||
        cm_profile_load_text("fuzz.profile", PROFILE, sizeof PROFILE - 1, &profile, err) != CM_OK)
        abort();
    gate_plant_init(&plant);
    if (gate_plant_reading(&plant, "pumping.pump2_status", 0, FUZZ_NOW_MS - 1000) != CM_OK ||
        gate_plant_reading(&plant, "pumping.tank_level", 0.3, FUZZ_NOW_MS - 1000) != CM_OK ||
        gate_plant_reading(&plant, "treatment.raw_flow", 3, FUZZ_NOW_MS - 1000) != CM_OK ||
        gate_plant_commanded(&plant, "pumping.pump2", 1, FUZZ_NOW_MS - 2000) != CM_OK)
        abort();
    return 0;
}

static int text_ok(const char *s, size_t max) { return s && *s && strlen(s) <= max; }

/* The archive's handlers, each behind the guard its main.c handler applies first. */
static void stage(const Suido__StageMessage *m)
{
    const char *kind = cm_stage_kind(m);
    if (strcmp(kind, "data") == 0 || strcmp(kind, "backfill") == 0 ||
        strcmp(kind, "cmdres") == 0) {
        if (!m->header || !m->header->gateway_id ||
            m->status != SUIDO__VERIFY_STATUS__VERIFY_OK)
            return;
        cm_err rc = archive_store_batch(store, m);
        if (getenv("FUZZ_PROTO_TRACE")) /* how far an input gets: for checking seeds */
            fprintf(stderr, "proto: batch rc=%s\n", cm_strerror(rc));
        if (rc == CM_ERR_DUPLICATE)
            (void)archive_store_reject(store, m, "duplicate");
    } else if (strcmp(kind, "birth") == 0 || strcmp(kind, "death") == 0) {
        if (m->header && m->header->gateway_id)
            (void)archive_store_event(store, m);
    } else if (strcmp(kind, "command") == 0) {
        const Suido__Command *c = m->command;
        if (!c || !text_ok(c->command_id, 128) || !text_ok(c->gateway_id, 64) ||
            !text_ok(c->channel, 64) || !c->unit || !c->requested_by ||
            !text_ok(m->decision, 128))
            return;
        (void)archive_store_command(store, m, FUZZ_NOW_MS);
    } else if (strcmp(kind, "reject") == 0) {
        (void)archive_store_reject(store, m, m->reason ? m->reason : "unspecified");
    } else if (strcmp(kind, "alert") == 0) {
        if (!m->topic || strncmp(m->topic, "suido/v1/alerts/", 16) != 0)
            return;
        if (archive_store_alert(store, m) == CM_OK)
            (void)archive_cases_record(archive_store_db(store), m->alert, FUZZ_NOW_MS);
    } else if (strcmp(kind, "audit") == 0) {
        if (m->audit && m->audit->event && *m->audit->event)
            (void)archive_store_audit(store, "profile", m->audit);
    }
}

/* 1 when m or a message inside it holds fields the schema does not know. */
static int has_unknown(const ProtobufCMessage *m)
{
    if (!m)
        return 0;
    if (m->n_unknown_fields)
        return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (has_unknown(v[k]))
                    return 1;
        } else if (has_unknown(*(ProtobufCMessage *const *)(base + f->offset))) {
            return 1;
        }
    }
    return 0;
}

/* The gate's command handler up to its decision, behind the handler's own guard. */
static void gate(const Suido__GateRequest *q, unsigned top)
{
    if (q->op != SUIDO__GATE_OP__GATE_COMMAND)
        return;
    char topic[160], gwid[65], kind_[16];
    snprintf(topic, sizeof topic, "suido/v1/%s/cmd", q->gateway_id ? q->gateway_id : "");
    if (cm_topic_parse(topic, gwid, kind_) != CM_OK || strcmp(gwid, q->gateway_id) != 0 ||
        !q->actuator || !*q->actuator || strlen(q->actuator) > 63 || !q->unit ||
        strlen(q->unit) > 15)
        return;
    /* selector bits 4-5: role, 6: site kind, 7: plant with readings (they leave sel % 16 alone) */
    static const char *const roles[] = {"viewer", "operator", "admin", "operator"};
    gate_request req = {.actuator = q->actuator, .value = q->value, .unit = q->unit,
                        .role = roles[(top >> 4) & 3]};
    gate_decision dec;
    static gate_plant empty; /* a gateway the gate has no data of (yet) */
    const char *kind = top & 0x40 ? "treatment" : "pumping";
    gate_verdict v = gate_decide(profile, kind, top & 0x80 ? &plant : &empty, &req, FUZZ_NOW_MS,
                                 &dec);
    if (getenv("FUZZ_PROTO_TRACE"))
        fprintf(stderr, "proto: gate verdict=%d reason=%s\n", (int)v, dec.reason);
    if (v == GATE_ALLOW && (!dec.actuator || !isfinite(dec.value)))
        abort(); /* an allowed command names its actuator and a finite value */
}

/* Decodes, re-encodes and decodes again one message of a type whose checks are not public: what
 * a service re-encodes (the archive's replication log, verify's StageMessage) must read back the
 * same. Only for messages without unknown fields: protobuf-c keeps an unknown field number 0
 * written as an overlong tag but refuses the one-byte tag it re-packs it with, a library quirk
 * that the verifier guards against (unknown fields refused at every level of a gateway's
 * message) and that docs/security.md lists for the internal hops. */
static void roundtrip(const ProtobufCMessageDescriptor *d, const uint8_t *msg, size_t len)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, msg);
    if (!m)
        return;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        abort();
    if (protobuf_c_message_pack(m, buf) != n)
        abort();
    if (!has_unknown(m)) {
        ProtobufCMessage *again = protobuf_c_message_unpack(d, NULL, n, buf);
        if (!again || protobuf_c_message_get_packed_size(again) != n)
            abort(); /* what was written must read back */
        protobuf_c_message_free_unpacked(again, NULL);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
}

static const ProtobufCMessageDescriptor *const OTHERS[] = {
    &suido__registry_request__descriptor, &suido__registry_reply__descriptor,
    &suido__registry_event__descriptor,   &suido__gate_reply__descriptor,
    &suido__archive_reply__descriptor,    &suido__repl_request__descriptor,
    &suido__repl_reply__descriptor,       &suido__ack__descriptor,
    &suido__signed_command__descriptor,   &suido__command__descriptor,
    &suido__stage_message__descriptor,
};
#define N_OTHERS (sizeof OTHERS / sizeof OTHERS[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0] % (5 + N_OTHERS);
    const uint8_t *msg = data + 1;
    size_t len = size - 1;
    if (sel >= 5) {
        roundtrip(OTHERS[sel - 5], msg, len);
        return 0;
    }
    if (sel == 4) {
        Suido__GateRequest *q = suido__gate_request__unpack(NULL, len, msg);
        if (q) {
            gate(q, data[0]);
            suido__gate_request__free_unpacked(q, NULL);
        }
        roundtrip(&suido__gate_request__descriptor, msg, len);
        return 0;
    }
    if (archive_store_begin(store) != CM_OK)
        abort();
    if (sel == 0) {
        Suido__StageMessage *m = suido__stage_message__unpack(NULL, len, msg);
        if (m) {
            stage(m);
            suido__stage_message__free_unpacked(m, NULL);
        }
    } else if (sel == 1) {
        Suido__ArchiveRequest *q = suido__archive_request__unpack(NULL, len, msg);
        if (q) {
            Suido__ArchiveReply rep = SUIDO__ARCHIVE_REPLY__INIT;
            /* rights are the archive API table's, checked before (archive_api.c); ops that are
             * not reads are refused here with CM_ERR_INVAL */
            cm_err rc = archive_query_answer(archive_store_db(store), q, FUZZ_NOW_MS, &rep);
            if (getenv("FUZZ_PROTO_TRACE"))
                fprintf(stderr, "proto: query op=%d rc=%s\n", q->op, cm_strerror(rc));
            archive_query_free(&rep);
        }
        if (q)
            suido__archive_request__free_unpacked(q, NULL);
    } else if (sel == 2) {
        Suido__AuditEvent *e = suido__audit_event__unpack(NULL, len, msg);
        if (e && e->event && *e->event)
            (void)archive_store_audit(store, "verify", e);
        if (e)
            suido__audit_event__free_unpacked(e, NULL);
    } else {
        /* as the anomaly checker sends it: inside a StageMessage on the alerts topic */
        Suido__Alert *a = suido__alert__unpack(NULL, len, msg);
        if (a) {
            Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
            m.topic = "suido/v1/alerts/fuzz";
            m.alert = a;
            stage(&m);
            suido__alert__free_unpacked(a, NULL);
        }
    }
    /* nothing kept: every input sees the same empty archive */
    archive_store_rollback(store);
    return 0;
}
