/* suido-archive: commits every verified batch (the exact signed bytes), every birth/death,
 * refusal and alert to its database (SQLite, or PostgreSQL with [archive] postgresql), and only
 * then acknowledges end to end: it publishes
 * suido/v1/<gw>/ack with the highest contiguous sequence stored, and publishes alerts on
 * suido/v1/alerts/<site>.
 *
 * Writes are group-committed: records of up to commit_ms (or max_batch records) share one
 * transaction. A failed commit acknowledges nothing; the gateways resend what was not acked.
 *
 * It also keeps the tamper-evident audit log (hash-chained, cm_audit): every refusal it stores,
 * every replay, and the security events other services send it.
 *
 * Sockets: [input] PULL, CURVE server, allow-list: verify, profile, anomaly, registry.
 *          [api] ROUTER, CURVE server, allow-list: suidoctl, monitor: alert cases, the
 *          monitor's reads (archive_query.c), replication status and promotion, for a valid
 *          operator session (registry); every operation's peers and least role are in one table
 *          (archive_api.c), checked before its handler runs.
 *          [replication] primary: ROUTER, CURVE server, allow-list: the standbys; standby:
 *          DEALER to the primary's (archive_replica.h).
 *          [registry] DEALER to the registry (session checks; the audit log's head, which the
 *          registry signs and keeps: cm_audit_checkpoint.h).
 *          [mqtt] MQTT/TLS client "archive": publishes acks and alerts only.
 *
 * Every input (a pipeline frame, an audit entry the archive makes itself, an operator's change
 * of a case) goes through one path that takes its time from the input, never from the clock:
 * input_begin, then the kind's handler. A primary logs each input for its standbys in the
 * transaction that stores it (archive_replica); a standby applies the logged inputs through the
 * same handlers (apply_logged) and so stores the same rows and the same audit chain. A standby
 * binds no input, has no MQTT session and answers only the replication part of its API (status,
 * promote); promoted, it goes on as a primary. */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "archive_acked.h"
#include "archive_acks.h"
#include "archive_replica.h"
#include "archive_store.h"
#include "archive_cases.h"
#include "archive_api.h"
#include "archive_query.h"
#include "cm_audit.h"
#include "cm_audit_checkpoint.h"
#include "cm_log.h"
#include "cm_crypto.h"
#include "cm_registry.h"
#include "cm_mqtt.h"
#include "cm_stage.h"
#include "cm_time.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_CLIENT_ROWS("events"),
    CM_ZSOCK_SERVER_ROWS("input"),
    CM_ZSOCK_SERVER_ROWS("api"),
    CM_REGISTRY_SPEC_ROWS("registry"),
    {"registry", "checkpoint_key", 0,
     "the registry's profile public key (PEM): checks its signed audit checkpoints"},
    {"archive", "database", 0, "SQLite file (default state_dir/archive.db)"},
    {"archive", "postgresql", 0,
     "file (mode 0600) holding the libpq connection string of a PostgreSQL archive, instead of "
     "database"},
    {"archive", "commit_ms", 0, "longest wait before a group commit (50)"},
    {"archive", "max_batch", 0, "most records per commit (500)"},
    CM_MQTT_SPEC_ROWS("mqtt"),
    ARCHIVE_REPL_SPEC_ROWS,
    {NULL, NULL, 0, NULL},
};

#define MAX_PENDING_ALERTS 4096

typedef struct pending_alert {
    char topic[128];
    uint8_t *payload;
    size_t len;
} pending_alert;

typedef struct archiver {
    cm_svc *svc;
    archive_store *store;
    archive_acks *acks;
    archive_replica *repl;
    cm_mqtt *mqtt;
    cm_registry *reg;
    void *api;
    long commit_ms, max_batch;
    int in_tx;
    int tx_failed; /* an input of the open transaction could not be stored: roll it back */
    long tx_records;
    uint64_t tx_started_ms;
    /* the input being applied: its time (every time stored with it), whether it is a logged
     * input a standby replays, and the first database error while applying it */
    uint64_t input_ms;
    int replaying;
    cm_err input_rc;
    int ack_all; /* promoted: acknowledge what is stored of every gateway once connected */
    pending_alert alerts[MAX_PENDING_ALERTS];
    size_t n_alerts;
    cm_metric *batches, *readings, *duplicates, *rejects, *events, *alerts_stored;
    cm_metric *audited;
    cm_metric *commits, *commit_failures, *acks_sent, *acks_unsent, *alerts_unpublished;
    /* the database connection (PostgreSQL): lost, made again with backoff (db_watch) */
    cm_metric *db_lost, *db_reconnects, *db_connected;
    int db_down;
    uint64_t db_down_since_ms, db_retry_at_ms;
    long db_backoff_ms, db_lost_records;
    cm_metric *pending_records, *pending_alerts; /* the open transaction: what waits for commit */
    archive_api_hooks api_hooks;
    cm_metric *api_denied;
    /* the audit log's head, sent to the registry to be signed (cm_audit_checkpoint.h) */
    cm_pubkey *checkpoint_key; /* the registry's: checks what it signed; NULL: not configured */
    uint64_t cp_seq;  /* the registry's latest head, from its last answer (0: none) */
    int cp_known;     /* cp_seq is the registry's answer, not just unknown */
    uint64_t cp_next_ms;
    cm_metric *cp_sent, *cp_unsent;
    /* the published acks, handed to the registry; compared with what is held at start
     * (archive_acked.h) */
    archive_acked *acked;
    int acked_compared;             /* the comparison at start has run */
    uint64_t acked_hold_until_ms;   /* input waits for that comparison until then at most */
    uint64_t acked_retry_ms, acked_next_ms;
    cm_metric *acked_lost, *acked_waiting, *acked_unrecorded;
} archiver;

static int tx_open(archiver *a)
{
    if (a->in_tx)
        return 1;
    if (archive_store_begin(a->store) != CM_OK)
        return 0;
    a->in_tx = 1;
    a->tx_failed = 0;
    a->tx_records = 0;
    a->tx_started_ms = cm_mono_ms();
    return 1;
}

static void publish_ack_now(void *ctx, const char *gw, uint64_t epoch, uint64_t seq)
{
    archiver *a = ctx;
    char topic[96];
    uint8_t buf[128];
    Suido__Ack ack = SUIDO__ACK__INIT;
    ack.gateway_id = (char *)gw;
    ack.boot_epoch = epoch;
    ack.seq = seq;
    size_t n = suido__ack__pack(&ack, buf);
    snprintf(topic, sizeof topic, "suido/v1/%s/ack", gw);
    if (cm_mqtt_publish(a->mqtt, topic, buf, n, 1, 0) == CM_OK) {
        cm_metric_inc(a->acks_sent);
        archive_acked_note(a->acked, gw, epoch, seq); /* the registry keeps it apart */
    } else
        cm_metric_inc(a->acks_unsent); /* the next commit acks a later point; nothing is lost */
}

/* After a commit: while a standby is live, the ack waits until it has the records. */
static void publish_ack(void *ctx, const char *gw, uint64_t epoch, uint64_t seq)
{
    archiver *a = ctx;
    if (!archive_replica_hold_ack(a->repl, gw, epoch, seq))
        publish_ack_now(a, gw, epoch, seq);
}

static void drop_alerts(archiver *a)
{
    for (size_t i = 0; i < a->n_alerts; i++)
        free(a->alerts[i].payload);
    a->n_alerts = 0;
}

/* Commits the open transaction; acknowledges and publishes only on success. */
static cm_err tx_commit(archiver *a)
{
    if (!a->in_tx)
        return CM_OK;
    a->in_tx = 0;
    if (a->tx_failed || archive_store_commit(a->store) != CM_OK) {
        archive_store_rollback(a->store);
        archive_replica_rolled_back(a->repl);
        archive_acks_reset(a->acks);
        drop_alerts(a);
        cm_metric_inc(a->commit_failures);
        cm_error("records=%ld error=\"%s: nothing acknowledged\" alarm=1", a->tx_records,
                 a->tx_failed ? "an input could not be stored" : "commit failed");
        return CM_ERR_DB;
    }
    cm_metric_inc(a->commits);
    archive_replica_committed(a->repl);
    archive_acks_each_changed(a->acks, publish_ack, a);
    for (size_t i = 0; i < a->n_alerts; i++)
        if (cm_mqtt_publish(a->mqtt, a->alerts[i].topic, a->alerts[i].payload, a->alerts[i].len,
                            1, 0) != CM_OK)
            cm_metric_inc(a->alerts_unpublished);
    drop_alerts(a);
    return CM_OK;
}

static void tx_rollback(archiver *a)
{
    if (!a->in_tx)
        return;
    a->in_tx = 0;
    archive_store_rollback(a->store);
    archive_replica_rolled_back(a->repl);
    archive_acks_reset(a->acks);
    drop_alerts(a);
}

/* What the archive holds of every gateway, acknowledged once (a promoted standby: the gateways
 * drop what it has and resend what it lacks). */
static void ack_everything(archiver *a)
{
    cm_sql_stmt *st = NULL;
    if (cm_sql_prepare(archive_store_db(a->store),
                       "SELECT gateway, boot_epoch, max(seq) FROM batches"
                       " GROUP BY gateway, boot_epoch ORDER BY gateway, boot_epoch DESC",
                       &st) != CM_OK) {
        cm_error("error=\"cannot list the stored epochs: %s\"",
                 cm_sql_error(archive_store_db(a->store)));
        return;
    }
    long n = 0;
    /* newest epoch first: it becomes the tracked one; the older ones are worked out from the
     * database, at most 256 per round (archive_acks_mark) */
    while (cm_sql_step(st) == CM_SQL_ROW) {
        archive_acks_mark(a->acks, cm_sql_column_text(st, 0),
                          (uint64_t)cm_sql_column_int64(st, 1),
                          (uint64_t)cm_sql_column_int64(st, 2));
        if (++n % 200 == 0)
            archive_acks_each_changed(a->acks, publish_ack, a);
    }
    cm_sql_finalize(&st);
    archive_acks_each_changed(a->acks, publish_ack, a);
    cm_info("epochs=%ld event=acknowledged_everything", n);
}

#define CHECKPOINT_EVERY_MS 2000  /* at most one head per this long */
#define CHECKPOINT_RETRY_MS 10000 /* after the registry did not answer (6x: refused) */

/* The hash of audit entry seq as committed; 0 when there is no such entry. */
static int audit_hash_at(archiver *a, uint64_t seq, uint8_t out[CM_AUDIT_HASH_LEN],
                         uint64_t *last_seq)
{
    cm_sql_stmt *st = NULL;
    const char *sql = seq ? "SELECT seq, hash FROM audit WHERE seq=?"
                          : "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";
    if (cm_sql_prepare(archive_store_db(a->store), sql, &st) != CM_OK)
        return 0;
    if (seq)
        cm_sql_bind_int64(st, 1, (int64_t)seq);
    int found = 0;
    if (cm_sql_step(st) == CM_SQL_ROW) {
        size_t hl = 0;
        const void *h = cm_sql_column_blob(st, 1, &hl);
        if (h && hl == CM_AUDIT_HASH_LEN) {
            memcpy(out, h, hl);
            if (last_seq)
                *last_seq = (uint64_t)cm_sql_column_int64(st, 0);
            found = 1;
        }
    }
    cm_sql_finalize(&st);
    return found;
}

/* Hands the audit log's committed head to the registry, which signs and keeps it
 * (cm_audit_checkpoint.h), with this log's hash of the registry's latest head as proof that the
 * log still holds it: when the head moved and CHECKPOINT_EVERY_MS have passed, or now (final: at
 * shutdown). Never inside a transaction (its entries may yet be rolled back), never on a standby
 * that follows (its log is its primary's). The answer names the registry's latest head, proved
 * next time; a refusal is logged (the registry audits it and raises the alarm). */
static void send_checkpoint(archiver *a, int final)
{
    uint64_t now = cm_mono_ms();
    if (a->in_tx || archive_replica_following(a->repl) || (!final && now < a->cp_next_ms))
        return;
    uint8_t head[CM_AUDIT_HASH_LEN], prev[CM_AUDIT_HASH_LEN];
    uint64_t seq = 0;
    if (!audit_hash_at(a, 0, head, &seq) || (seq == a->cp_seq && a->cp_known))
        return;
    Suido__AuditCheckpoint cp = SUIDO__AUDIT_CHECKPOINT__INIT;
    cp.seq = seq;
    cp.head_sha256.data = head;
    cp.head_sha256.len = sizeof head;
    cp.prev_seq = a->cp_seq; /* a log without that entry proves nothing: refused */
    if (a->cp_seq && audit_hash_at(a, a->cp_seq, prev, NULL)) {
        cp.prev_sha256.data = prev;
        cp.prev_sha256.len = sizeof prev;
    }
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_AUDIT_CHECKPOINT;
    req.checkpoint = &cp;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(a->reg, &req, &rep);
    a->cp_next_ms = now + (rc == CM_OK ? CHECKPOINT_EVERY_MS : CHECKPOINT_RETRY_MS);
    if (rc == CM_OK) {
        rc = (cm_err)rep->status;
        if (rc != CM_OK && rc != CM_ERR_UNKNOWN) /* refused until someone looks: not every 2 s */
            a->cp_next_ms = now + 6 * CHECKPOINT_RETRY_MS;
        /* the registry's latest head, whatever became of this one */
        a->cp_seq = rep->checkpoint ? rep->checkpoint->seq : 0;
        a->cp_known = 1;
    }
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    if (rc == CM_OK) {
        cm_metric_inc(a->cp_sent);
    } else if (rc != CM_ERR_UNKNOWN) { /* UNKNOWN: it told us its latest; proved next time */
        cm_metric_inc(a->cp_unsent);
        cm_warn("seq=%llu registry_seq=%llu error=\"audit checkpoint not taken by the "
                "registry: %s\"%s",
                (unsigned long long)seq, (unsigned long long)a->cp_seq, cm_strerror(rc),
                rc == CM_ERR_REPLAY ? " alarm=1" : "");
    }
}

/* archive_api hook: the registry's latest checkpoint, its signature checked. */
static cm_err api_checkpoint(void *ctx, Suido__AuditCheckpoint **out)
{
    archiver *a = ctx;
    *out = NULL;
    if (!a->checkpoint_key)
        return CM_ERR_CONFIG;
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_AUDIT_CHECKPOINT;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(a->reg, &req, &rep);
    if (rc == CM_OK && rep->status != CM_OK)
        rc = rep->status == CM_ERR_UNKNOWN ? CM_ERR_UNKNOWN : CM_ERR_UNAVAILABLE;
    else if (rc == CM_OK && cm_audit_checkpoint_verify(a->checkpoint_key, rep->checkpoint) != CM_OK)
        rc = CM_ERR_SIGNATURE;
    if (rc == CM_OK) {
        *out = rep->checkpoint; /* moved out of the reply */
        rep->checkpoint = NULL;
    }
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    return rc;
}

static void db_watch(archiver *a);
static void acked_tick(archiver *a);

static void on_tick(void *ctx)
{
    archiver *a = ctx;
    db_watch(a);
    if (a->in_tx && (a->tx_records >= a->max_batch ||
                     cm_mono_ms() - a->tx_started_ms >= (uint64_t)a->commit_ms))
        tx_commit(a);
    send_checkpoint(a, 0);
    acked_tick(a);
    cm_metric_set(a->pending_records, a->in_tx ? a->tx_records : 0);
    cm_metric_set(a->pending_alerts, (int64_t)a->n_alerts);
    archive_replica_serve(a->repl);
    archive_replica_tick(a->repl);
    if (a->ack_all && a->mqtt && cm_mqtt_is_connected(a->mqtt)) {
        a->ack_all = 0;
        ack_everything(a);
    }
}

static void after_record(archiver *a)
{
    /* a standby commits a whole answer with its position, never a part of it */
    if (++a->tx_records >= a->max_batch && !a->replaying)
        tx_commit(a);
}

/* ------------------------------------------------------- inputs: applied, logged, replayed */

/* Starts applying an input: sets its time and, live, opens the transaction and logs the input
 * for the standbys in it (msg packed again: the same fields, the same meaning). Returns 0 when
 * the input cannot be taken (nothing of it is stored). */
static int input_begin(archiver *a, const char *kind, const char *peer,
                       const ProtobufCMessage *msg)
{
    a->input_rc = CM_OK;
    if (a->replaying)
        return tx_open(a);
    a->input_ms = cm_now_ms();
    if (!tx_open(a))
        return 0;
    if (!archive_replica_logging(a->repl))
        return 1;
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    cm_err rc = buf ? CM_OK : CM_ERR_NOMEM;
    if (buf) {
        protobuf_c_message_pack(msg, buf);
        rc = archive_replica_log(a->repl, kind, peer, a->input_ms, buf, n);
    }
    free(buf);
    if (rc != CM_OK)
        a->tx_failed = 1; /* stored without its log entry, it would never reach the standby */
    return rc == CM_OK;
}

/* A database error while applying the input: live, the transaction is rolled back (nothing of it
 * acknowledged, the gateways resend); replayed, the standby applies the answer again later. */
static void input_failed(archiver *a)
{
    a->input_rc = CM_ERR_DB;
    if (!a->replaying)
        a->tx_failed = 1;
}

/* Stores an audit entry the archive makes itself (source "archive"). */
static void store_own_audit(archiver *a, const Suido__AuditEvent *e)
{
    if (archive_store_audit(a->store, "archive", e) == CM_OK) {
        cm_metric_inc(a->audited);
        after_record(a);
    } else {
        input_failed(a);
    }
}

/* An audit entry the archive makes itself, as an input (logged for the standbys). A standby that
 * follows its primary writes nothing of its own (its audit chain is the primary's): the event is
 * logged only. */
static void archive_audit_self(archiver *a, const char *event, const char *subject,
                               const char *actor, const char *detail)
{
    if (archive_replica_following(a->repl)) {
        cm_warn("event=%s subject=%s actor=%s detail=\"%s\" audit=primary_only", event, subject,
                actor, detail);
        return;
    }
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.event = (char *)event;
    e.subject = (char *)subject;
    e.actor = (char *)actor;
    e.detail = (char *)detail;
    if (!input_begin(a, "audit", "archive", &e.base))
        return;
    e.ts_ms = a->input_ms;
    store_own_audit(a, &e);
}

/* The archive's own refused handshakes go straight into its audit log. */
static void own_security_event(void *ctx, const char *event, const char *subject,
                               const char *detail)
{
    archive_audit_self(ctx, event, subject, cm_svc_security_via(event),
                       detail);
}

/* ------------------------------------------- acknowledged, kept apart, and lost to a restore */

/* Records one run the registry says was acknowledged and that is not held (archive_acked.h):
 * its row and an audit entry, in the transaction of its input (live or replayed). */
static void apply_acked_lost(archiver *a, const Suido__AckedLost *run)
{
    if (archive_acked_record_lost(archive_store_db(a->store), run, a->input_ms) != CM_OK) {
        input_failed(a);
        return;
    }
    uint64_t n = run->last_seq - run->first_seq + 1;
    char detail[200];
    snprintf(detail, sizeof detail, "boot_epoch=%llu first_seq=%llu last_seq=%llu batches=%llu",
             (unsigned long long)run->boot_epoch, (unsigned long long)run->first_seq,
             (unsigned long long)run->last_seq, (unsigned long long)n);
    cm_error("gateway=%s %s error=\"acknowledged to the gateway and not held: lost (the archive "
             "was restored from an older backup?)\" alarm=1",
             run->gateway_id, detail);
    cm_metric_add(a->acked_lost, n);
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = a->input_ms;
    e.event = "acknowledged_data_lost";
    e.subject = run->gateway_id;
    e.actor = "archive";
    e.detail = detail;
    store_own_audit(a, &e);
}

typedef struct lost_runs {
    Suido__AckedLost *v;
    size_t n, cap;
    const Suido__Ack *point; /* the point being compared */
} lost_runs;

static void collect_lost(void *ctx, uint64_t first, uint64_t last)
{
    lost_runs *l = ctx;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        Suido__AckedLost *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv)
            return; /* not recorded now: found again at the next start */
        l->v = nv;
        l->cap = nc;
    }
    Suido__AckedLost *r = &l->v[l->n++];
    suido__acked_lost__init(r);
    r->gateway_id = l->point->gateway_id;
    r->boot_epoch = l->point->boot_epoch;
    r->first_seq = first;
    r->last_seq = last;
}

/* The comparison at start: the registry's ack points against what is held. Returns 0 when the
 * registry could not be asked (tried again later). */
static int acked_compare(archiver *a)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_ACKED_POINTS;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(a->reg, &req, &rep);
    if (rc == CM_OK && rep->status != CM_OK)
        rc = (cm_err)rep->status;
    if (rc != CM_OK) {
        if (rep)
            suido__registry_reply__free_unpacked(rep, NULL);
        cm_warn("error=\"the registry's ack points cannot be fetched: %s; what a restore lost is "
                "not known yet (asking again)\"", cm_strerror(rc));
        return 0;
    }
    lost_runs l = {0};
    int db_ok = 1;
    for (size_t i = 0; i < rep->n_acked && db_ok; i++) {
        l.point = rep->acked[i];
        if (!l.point->gateway_id || !*l.point->gateway_id)
            continue;
        db_ok = archive_acked_find_lost(archive_store_db(a->store), l.point->gateway_id,
                                        l.point->boot_epoch, l.point->seq, collect_lost,
                                        &l) == CM_OK;
    }
    uint64_t lost = 0;
    for (size_t i = 0; i < l.n && db_ok; i++) {
        if (!input_begin(a, "acked_lost", "archive", &l.v[i].base))
            break;
        apply_acked_lost(a, &l.v[i]);
        lost += l.v[i].last_seq - l.v[i].first_seq + 1;
    }
    int recorded = db_ok && (l.n == 0 || tx_commit(a) == CM_OK);
    if (recorded && l.n)
        archive_acks_reset(a->acks); /* the lost runs now count as held: worked out again */
    if (recorded)
        cm_info("points=%zu lost_runs=%zu lost_batches=%llu event=acked_points_compared",
                rep->n_acked, l.n, (unsigned long long)lost);
    else
        cm_error("error=\"comparing the registry's ack points with the archive failed: %s\"",
                 cm_sql_error(archive_store_db(a->store)));
    free(l.v);
    suido__registry_reply__free_unpacked(rep, NULL);
    return recorded;
}

/* Hands the ack points published since the last call to the registry (one request). */
static void acked_flush(archiver *a)
{
    static Suido__Ack *pts[4096];
    size_t n = archive_acked_take(a->acked, pts, sizeof pts / sizeof pts[0]);
    if (n == 0)
        return;
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_ACKED_POINTS;
    req.acked = pts;
    req.n_acked = n;
    Suido__RegistryReply *rep = NULL;
    cm_err rc = cm_registry_call(a->reg, &req, &rep);
    if (rc == CM_OK && rep->status != CM_OK)
        rc = (cm_err)rep->status;
    if (rep)
        suido__registry_reply__free_unpacked(rep, NULL);
    if (rc == CM_OK)
        archive_acked_taken(a->acked);
    else
        cm_metric_inc(a->acked_unrecorded); /* they wait: handed over with the next ones */
    a->acked_next_ms = cm_mono_ms() + (rc == CM_OK ? ACKED_FLUSH_MS : 5 * ACKED_FLUSH_MS);
    cm_metric_set(a->acked_waiting, (int64_t)archive_acked_waiting(a->acked));
}

static void acked_tick(archiver *a)
{
    if (archive_replica_following(a->repl))
        return;
    uint64_t now = cm_mono_ms();
    if (!a->acked_compared) {
        if (now >= a->acked_retry_ms) {
            a->acked_retry_ms = now + 5000;
            a->acked_compared = acked_compare(a);
        }
        return; /* nothing handed over before the comparison: it would be compared with itself */
    }
    if (now >= a->acked_next_ms)
        acked_flush(a);
}

/* The database connection (PostgreSQL; a SQLite file is always there). A lost connection costs
 * the open transaction: rolled back, nothing of it acknowledged (the gateways' outboxes resend
 * its batches). While it is down the input is held (hold_input: the stages before wait at their
 * high-water marks) and the connection is made again every 0.5 s, doubling to 30 s. Back, it
 * is counted and audited with how long it was away. */
static void db_watch(archiver *a)
{
    if (archive_store_connected(a->store)) {
        if (!a->db_down)
            return;
    } else if (!a->db_down) {
        a->db_down = 1;
        a->db_down_since_ms = cm_mono_ms();
        a->db_backoff_ms = 500;
        a->db_retry_at_ms = a->db_down_since_ms + (uint64_t)a->db_backoff_ms;
        a->db_lost_records = a->in_tx ? a->tx_records : 0;
        cm_metric_inc(a->db_lost);
        cm_metric_set(a->db_connected, 0);
        if (a->in_tx) {
            a->in_tx = 0;
            archive_store_rollback(a->store);
            archive_replica_rolled_back(a->repl);
            archive_acks_reset(a->acks);
            drop_alerts(a);
            cm_metric_inc(a->commit_failures);
        }
        cm_error("records=%ld error=\"database connection lost: %s; nothing acknowledged, "
                 "input held, reconnecting\" alarm=1",
                 a->db_lost_records, cm_sql_error(archive_store_db(a->store)));
        return;
    } else if (cm_mono_ms() < a->db_retry_at_ms) {
        return;
    } else if (archive_store_reconnect(a->store) != CM_OK) {
        a->db_backoff_ms = a->db_backoff_ms * 2 > 30000 ? 30000 : a->db_backoff_ms * 2;
        a->db_retry_at_ms = cm_mono_ms() + (uint64_t)a->db_backoff_ms;
        cm_warn("retry_ms=%ld error=\"database still unreachable: %s\"", a->db_backoff_ms,
                cm_sql_error(archive_store_db(a->store)));
        return;
    }
    uint64_t down_ms = cm_mono_ms() - a->db_down_since_ms;
    a->db_down = 0;
    cm_metric_inc(a->db_reconnects);
    cm_metric_set(a->db_connected, 1);
    archive_acks_reset(a->acks);
    char detail[160];
    snprintf(detail, sizeof detail, "engine=%s down_ms=%llu rolled_back_records=%ld",
             cm_sql_engine_name(cm_sql_engine_of(archive_store_db(a->store))),
             (unsigned long long)down_ms, a->db_lost_records);
    cm_info("event=database_reconnected %s", detail);
    archive_audit_self(a, "archive_database_reconnected", "archive", "archive", detail);
}

static int hold_input(void *ctx)
{
    archiver *a = ctx;
    /* at start, input waits (at most a few seconds) for the comparison of the registry's ack
     * points, so that a restore's losses are recorded before the gateways' resends arrive */
    return a->db_down || !archive_store_connected(a->store) ||
           (!a->acked_compared && cm_mono_ms() < a->acked_hold_until_ms);
}

/* A refused message becomes an audit event: what was refused, from whom, why. */
static void audit_refusal(archiver *a, const Suido__StageMessage *m, const char *reason)
{
    char detail[256], gw[65] = "", kind[16] = "";
    if (cm_topic_parse(m->topic ? m->topic : "", gw, kind) != CM_OK && m->header &&
        m->header->gateway_id) /* a Sparkplug topic: the host names the node */
        snprintf(gw, sizeof gw, "%s", m->header->gateway_id);
    snprintf(detail, sizeof detail, "reason=%s topic=%s epoch=%llu seq=%llu", reason,
             m->topic ? m->topic : "",
             m->header ? (unsigned long long)m->header->boot_epoch : 0ULL,
             m->header ? (unsigned long long)m->header->seq : 0ULL);
    const char *event = strcmp(reason, "bad_signature") == 0 ? "signature_rejected"
                        : strcmp(reason, "replay") == 0 || strcmp(reason, "duplicate") == 0
                            ? "replay"
                        : strcmp(reason, "outside_time_window") == 0 ? "stale_data"
                                                                     : "message_refused";
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = m->received_ms ? m->received_ms : a->input_ms;
    e.event = (char *)event;
    e.subject = gw;
    e.actor = gw;
    e.detail = detail;
    if (archive_store_audit(a->store, "archive", &e) == CM_OK)
        cm_metric_inc(a->audited);
    else
        input_failed(a);
}

static void on_batch(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!input_begin(a, "stage", peer, &m->base))
        return;
    if (!m->header || !m->header->gateway_id || m->status != SUIDO__VERIFY_STATUS__VERIFY_OK) {
        cm_svc_reject(a->svc, "unverified_batch");
        cm_warn("topic=%s error=\"unverified batch refused\"", m->topic ? m->topic : "");
        return;
    }
    cm_err rc = archive_store_batch(a->store, m);
    if (rc == CM_ERR_DUPLICATE) {
        /* stored before: a retransmission or a replay; never a second row */
        cm_metric_inc(a->duplicates);
        cm_svc_reject(a->svc, "duplicate");
        if (archive_store_reject(a->store, m, "duplicate") != CM_OK)
            input_failed(a);
        audit_refusal(a, m, "duplicate");
        cm_info("gateway=%s epoch=%llu seq=%llu result=duplicate", m->header->gateway_id,
                (unsigned long long)m->header->boot_epoch, (unsigned long long)m->header->seq);
    } else if (rc != CM_OK) {
        input_failed(a);
        return;
    } else {
        cm_metric_inc(a->batches);
        cm_metric_add(a->readings, m->header->reading_count);
    }
    /* a standby acknowledges nothing; nor does anyone a Sparkplug node (it has no outbox and
     * listens for no ack) */
    if (!archive_replica_following(a->repl) &&
        m->provenance != SUIDO__PROVENANCE__PROVENANCE_SPARKPLUG) {
        archive_acks_mark(a->acks, m->header->gateway_id, m->header->boot_epoch, m->header->seq);
        if (rc == CM_ERR_DUPLICATE)
            archive_acks_rereport(a->acks, m->header->gateway_id);
    }
    after_record(a);
}

static void on_event(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!input_begin(a, "stage", peer, &m->base) || !m->header || !m->header->gateway_id)
        return;
    if (archive_store_event(a->store, m) == CM_OK)
        cm_metric_inc(a->events);
    else
        input_failed(a);
    after_record(a);
}

static int text_ok(const char *s, size_t max) { return s && *s && strlen(s) <= max; }

static void on_command(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    const Suido__Command *c = m->command;
    if (!input_begin(a, "stage", peer, &m->base))
        return;
    if (!c || !text_ok(c->command_id, 128) || !text_ok(c->gateway_id, 64) ||
        !text_ok(c->channel, 64) || !c->unit || !c->requested_by || !text_ok(m->decision, 128)) {
        cm_svc_reject(a->svc, "incomplete_command");
        cm_warn("peer=%s error=\"incomplete command record refused\"", peer);
        return;
    }
    if (archive_store_command(a->store, m, a->input_ms) == CM_OK)
        cm_metric_inc(a->events);
    else
        input_failed(a);
    after_record(a);
}

static void on_reject(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!input_begin(a, "stage", peer, &m->base))
        return;
    const char *reason = m->reason ? m->reason : "unspecified";
    if (archive_store_reject(a->store, m, reason) == CM_OK)
        cm_metric_inc(a->rejects);
    else
        input_failed(a);
    audit_refusal(a, m, reason);
    after_record(a);
}

static void on_audit(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!input_begin(a, "stage", peer, &m->base) || !m->audit || !m->audit->event ||
        !*m->audit->event)
        return;
    /* the source is the authenticated peer, never what the event says about itself */
    if (archive_store_audit(a->store, peer, m->audit) == CM_OK)
        cm_metric_inc(a->audited);
    else
        input_failed(a);
    after_record(a);
}

typedef struct past_collect {
    char (*text)[640];
    size_t n;
} past_collect;

static void collect_past(void *ctx, const Suido__AlertCase *c)
{
    past_collect *p = ctx;
    if (p->n >= 3)
        return;
    char when[32];
    cm_time_iso(c->closed_ms, when, sizeof when);
    snprintf(p->text[p->n++], 640, "%s by %s: cause: %s; action: %s", when, c->closed_by,
             c->cause, c->action);
}

static void on_alert(void *ctx, void *arg, const char *peer)
{
    archiver *a = ctx;
    Suido__StageMessage *m = arg;
    if (!input_begin(a, "stage", peer, &m->base) || !m->topic ||
        strncmp(m->topic, "suido/v1/alerts/", 16) != 0)
        return;
    if (archive_store_alert(a->store, m) != CM_OK ||
        archive_cases_record(archive_store_db(a->store), m->alert, a->input_ms) != CM_OK) {
        input_failed(a);
        return;
    }
    if (archive_replica_following(a->repl)) { /* a standby publishes nothing */
        cm_metric_inc(a->alerts_stored);
        after_record(a);
        return;
    }
    /* a raised alert carries what operators found and did the last times */
    char past_text[3][640];
    char *past[3];
    past_collect pc = {past_text, 0};
    if (!m->alert->cleared && m->alert->id)
        archive_cases_past(archive_store_db(a->store), m->alert->id, 0, 3, collect_past, &pc);
    for (size_t i = 0; i < pc.n; i++)
        past[i] = past_text[i];
    /* the sender's own past_cases (if any) are never published: ours replace them while
     * packing, then the message is given back as it came (the loop frees it) */
    size_t their_n = m->alert->n_past_cases;
    char **theirs = m->alert->past_cases;
    m->alert->n_past_cases = pc.n;
    m->alert->past_cases = past;
    cm_metric_inc(a->alerts_stored);
    if (a->n_alerts < MAX_PENDING_ALERTS) {
        pending_alert *p = &a->alerts[a->n_alerts];
        p->len = suido__alert__get_packed_size(m->alert);
        p->payload = malloc(p->len ? p->len : 1);
        if (p->payload) {
            suido__alert__pack(m->alert, p->payload);
            snprintf(p->topic, sizeof p->topic, "%s", m->topic);
            a->n_alerts++;
        }
    } else {
        cm_metric_inc(a->alerts_unpublished);
    }
    m->alert->n_past_cases = their_n;
    m->alert->past_cases = theirs;
    after_record(a);
}

/* An operator's acknowledgement or closing of a case (q: op, case_id, cause, action, no token;
 * who: the operator): the change and its audit entry, as one input. *result: the outcome. */
static void alert_change(archiver *a, const Suido__ArchiveRequest *q, const char *who,
                         cm_err *result)
{
    int ack = q->op == SUIDO__ARCHIVE_OP__ALERT_ACK;
    if (!input_begin(a, ack ? "alert_ack" : "alert_close", who, &q->base)) {
        *result = CM_ERR_DB;
        return;
    }
    cm_sql *db = archive_store_db(a->store);
    cm_err rc = ack ? archive_cases_ack(db, q->case_id, who, a->input_ms)
                    : archive_cases_close(db, q->case_id, who, q->cause, q->action, q->retired,
                                          a->input_ms);
    if (rc == CM_ERR_DB)
        input_failed(a);
    char detail[2200], subject[32], cause[1000], action[1000];
    snprintf(subject, sizeof subject, "case-%llu", (unsigned long long)q->case_id);
    snprintf(detail, sizeof detail, "result=%s cause=\"%s\" action=\"%s\"%s%s", cm_strerror(rc),
             cm_log_escape(cause, sizeof cause, ack ? NULL : q->cause),
             cm_log_escape(action, sizeof action, ack ? NULL : q->action),
             !ack && q->retired && *q->retired ? " gateway=" : "",
             !ack && q->retired && *q->retired ? q->retired : "");
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = a->input_ms;
    e.event = rc != CM_OK ? "alert_change_refused" : ack ? "alert_acknowledged" : "alert_closed";
    e.subject = subject;
    e.actor = (char *)who;
    e.detail = detail;
    store_own_audit(a, &e);
    *result = rc;
}

static const cm_dispatch DISPATCH[];

/* archive_repl_hooks apply: one input logged by the primary, replayed through the handlers that
 * applied it there. What the primary could not have accepted is refused. */
static cm_err apply_logged(void *ctx, const archive_repl_input *in)
{
    archiver *a = ctx;
    cm_err rc = CM_OK;
    a->replaying = 1;
    a->input_ms = in->ts_ms;
    a->input_rc = CM_OK;
    if (strcmp(in->kind, "stage") == 0) {
        Suido__StageMessage *m = suido__stage_message__unpack(NULL, in->len, in->body);
        const cm_dispatch *row = m ? cm_dispatch_find(DISPATCH, cm_stage_kind(m)) : NULL;
        if (!m)
            rc = CM_ERR_DECODE;
        else if (!row || !cm_dispatch_peer_ok(row, in->peer))
            rc = CM_ERR_DENIED;
        else
            row->handler(a, m, in->peer);
        if (m)
            suido__stage_message__free_unpacked(m, NULL);
    } else if (strcmp(in->kind, "audit") == 0) {
        Suido__AuditEvent *e = suido__audit_event__unpack(NULL, in->len, in->body);
        if (!e || !e->event || !*e->event || strcmp(in->peer, "archive") != 0) {
            rc = CM_ERR_DECODE;
        } else if (tx_open(a)) {
            e->ts_ms = in->ts_ms;
            store_own_audit(a, e);
        } else {
            a->input_rc = CM_ERR_DB;
        }
        if (e)
            suido__audit_event__free_unpacked(e, NULL);
    } else if (strcmp(in->kind, "alert_ack") == 0 || strcmp(in->kind, "alert_close") == 0) {
        Suido__ArchiveRequest *q = suido__archive_request__unpack(NULL, in->len, in->body);
        int ack = strcmp(in->kind, "alert_ack") == 0;
        cm_err result;
        if (!q || q->op != (ack ? SUIDO__ARCHIVE_OP__ALERT_ACK : SUIDO__ARCHIVE_OP__ALERT_CLOSE) ||
            !text_ok(in->peer, 64))
            rc = CM_ERR_DECODE;
        else
            alert_change(a, q, in->peer, &result);
        if (q)
            suido__archive_request__free_unpacked(q, NULL);
    } else if (strcmp(in->kind, "acked_lost") == 0) {
        Suido__AckedLost *run = suido__acked_lost__unpack(NULL, in->len, in->body);
        if (!run || strcmp(in->peer, "archive") != 0)
            rc = CM_ERR_DECODE;
        else if (tx_open(a))
            apply_acked_lost(a, run);
        else
            a->input_rc = CM_ERR_DB;
        if (run)
            suido__acked_lost__free_unpacked(run, NULL);
    } else {
        rc = CM_ERR_DECODE;
    }
    a->replaying = 0;
    return rc != CM_OK ? rc : a->input_rc;
}

static cm_err hook_begin(void *ctx) { return tx_open(ctx) ? CM_OK : CM_ERR_DB; }
static cm_err hook_commit(void *ctx) { return tx_commit(ctx); }
static void hook_rollback(void *ctx) { tx_rollback(ctx); }

/* archive_repl_hooks audit: an entry of this archive's own (a standby's refusal of an answer, its
 * promotion), not an input of its primary's. */
static void hook_audit(void *ctx, const char *event, const char *subject, const char *detail)
{
    archiver *a = ctx;
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = cm_now_ms();
    e.event = (char *)event;
    e.subject = (char *)subject;
    e.actor = "archive";
    e.detail = (char *)detail;
    if (tx_open(a))
        store_own_audit(a, &e);
}

/* ------------------------------------------------------------------ the operators' API */

/* archive_api hooks: what the API's handlers need of the archive beyond its database. */

static cm_err api_session(void *ctx, const char *token, char who[65], char role[16])
{
    archiver *a = ctx;
    return cm_registry_session(a->reg, token, who, role);
}

/* A gateway changed state: the registry record cached for it (closing its cases) is dropped. */
static void on_gateway_event(void *ctx, const char *id, int state)
{
    (void)state;
    cm_registry_forget(((archiver *)ctx)->reg, id);
}

typedef struct case_gateway {
    char id[65];
} case_gateway;

static void note_gateway(void *ctx, const Suido__AlertCase *c)
{
    snprintf(((case_gateway *)ctx)->id, sizeof ((case_gateway *)ctx)->id, "%s",
             c->gateway_id ? c->gateway_id : "");
}

/* The state of the case's gateway when it will never report again (revoked, disposed), else
 * "": asked of the registry at the operator's request, then logged with it. */
static const char *retired_gateway(archiver *a, uint64_t case_id)
{
    case_gateway cg = {""};
    const cm_gateway *gw = NULL;
    if (archive_cases_get(archive_store_db(a->store), case_id, note_gateway, &cg) != CM_OK ||
        !*cg.id || cm_registry_gateway(a->reg, cg.id, &gw) != CM_OK)
        return "";
    return gw->state == SUIDO__ENTITY_STATE__STATE_REVOKED    ? "revoked"
           : gw->state == SUIDO__ENTITY_STATE__STATE_DISPOSED ? "disposed"
                                                              : "";
}

static cm_err api_change_case(void *ctx, Suido__ArchiveRequest *q, const char *who)
{
    archiver *a = ctx;
    cm_err rc = CM_OK;
    /* logged for the standbys without the token, the operator as the sender; whether the
     * case's gateway is retired is the archive's to say, never the client's */
    char *token = q->token, *retired = q->retired;
    q->token = "";
    q->retired = q->op == SUIDO__ARCHIVE_OP__ALERT_CLOSE ? (char *)retired_gateway(a, q->case_id)
                                                          : "";
    alert_change(a, q, who, &rc);
    q->token = token;
    q->retired = retired;
    if (tx_commit(a) != CM_OK) /* the operator's change is on disk before the answer */
        rc = CM_ERR_DB;
    return rc;
}

static void api_repl_status(void *ctx, Suido__ReplicationStatus **st)
{
    archiver *a = ctx;
    archive_replica_status(a->repl, st);
}

static cm_err api_repl_promote(void *ctx, int force, const char *who, char *why, size_t len)
{
    archiver *a = ctx;
    cm_err rc = archive_replica_promote(a->repl, force, cm_now_ms(), why, len);
    if (rc == CM_OK)
        cm_info("operator=%s forced=%d event=promoted", who, force);
    else
        cm_warn("operator=%s forced=%d error=\"promotion refused: %s\"", who, force, why);
    return rc;
}

/* A refused API request: counted and audited (who asked, for what, why not). */
static void api_denied(void *ctx, const char *op, const char *peer, const char *who,
                       const char *reason)
{
    archiver *a = ctx;
    char detail[160];
    snprintf(detail, sizeof detail, "op=%s peer=%s reason=%s", op, peer, reason);
    cm_metric_inc(a->api_denied);
    cm_svc_reject(a->svc, strcmp(reason, "role") == 0 ? "api_role" : "api_not_allowed");
    cm_warn("peer=%s operator=%s op=%s reason=%s error=\"request refused\"", peer, who, op,
            reason);
    archive_audit_self(a, "request_denied", *who ? who : peer, *who ? who : peer, detail);
}

static void on_api(void *ctx)
{
    archiver *a = ctx;
    zmq_msg_t route, body;
    char peer[64], why[400] = "";
    zmq_msg_init(&route);
    zmq_msg_init(&body);
    Suido__ArchiveRequest *q = NULL;
    Suido__ArchiveReply rep = SUIDO__ARCHIVE_REPLY__INIT;
    if (zmq_msg_recv(&route, a->api, ZMQ_DONTWAIT) < 0)
        goto out;
    if (!zmq_msg_more(&route) || cm_zrecv(a->api, &body, peer, sizeof peer, 0) != CM_OK)
        goto out;
    q = suido__archive_request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
    cm_err rc;
    if (!q) {
        rc = CM_ERR_DECODE;
        api_denied(a, "unknown", peer, "", "malformed");
    } else if (cm_svc_peer_revoked(a->svc, peer)) {
        rc = CM_ERR_DENIED;
        api_denied(a, "any", peer, "", "peer_revoked");
    } else {
        /* every operation's rights: archive_api.c's table */
        rc = archive_api_dispatch(&a->api_hooks, archive_store_db(a->store), peer,
                                  archive_replica_following(a->repl), q, cm_now_ms(), &rep, why,
                                  sizeof why);
    }
    rep.request_id = q ? q->request_id : 0;
    rep.status = (uint32_t)rc;
    rep.error = (char *)(why[0] ? why : cm_strerror(rc));
    cm_zreply(a->api, &route, &rep.base);
out:
    archive_api_free(&rep);
    if (q)
        suido__archive_request__free_unpacked(q, NULL);
    zmq_msg_close(&route);
    zmq_msg_close(&body);
}

/* A standby: applies what its primary sends and answers its API (status, promote) until it is
 * promoted or stopped. */
static void follow_primary(archiver *a, cm_events *events)
{
    while (!cm_daemon_stopping && archive_replica_following(a->repl)) {
        zmq_pollitem_t it[3] = {
            {.socket = archive_replica_socket(a->repl), .events = ZMQ_POLLIN},
            {.socket = a->api, .events = ZMQ_POLLIN},
        };
        int n = 2;
        if (cm_events_socket(events))
            it[n++] = (zmq_pollitem_t){.socket = cm_events_socket(events), .events = ZMQ_POLLIN};
        if (zmq_poll(it, n, 100) > 0) {
            if (n > 2 && (it[2].revents & ZMQ_POLLIN))
                cm_events_drain(events);
            for (int i = 0; i < 16 && (it[1].revents & ZMQ_POLLIN); i++)
                on_api(a);
        }
        archive_replica_follow(a->repl);
        on_tick(a);
        cm_svc_tick(a->svc);
    }
}

/* The archive's attack surface: who may hand it what. Every handler begins with input_begin. */
static const cm_dispatch DISPATCH[] = {
    {"data", "profile", on_batch},
    {"backfill", "profile", on_batch},
    {"birth", "profile", on_event},
    {"death", "profile", on_event},
    {"cmdres", "profile", on_batch}, /* numbered like data: stored, deduplicated and acked */
    {"command", "gate", on_command},
    {"reject", "verify,profile,sparkplug", on_reject},
    {"alert", "anomaly,registry,gate", on_alert},
    {"audit", "ingest,verify,profile,anomaly,registry,gate,monitor,sparkplug", on_audit},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    archiver a = {0};
    a.svc = cm_svc_start("archive", argc, argv, SPEC);
    cm_svc_claim_state(a.svc); /* one writer of the archive database (replicas: the standby) */
    cm_svc *s = a.svc;
    char err[CM_CONF_ERRLEN];
    if (cm_conf_long(s->conf, "archive", "commit_ms", 50, 1, 10000, &a.commit_ms, err) ||
        cm_conf_long(s->conf, "archive", "max_batch", 500, 1, 100000, &a.max_batch, err))
        cm_svc_die(s, "%s", err);
    /* PostgreSQL instead of the SQLite file: the connection string may hold a password, so it
     * is named by a file only its owner reads, never given in the configuration or logged */
    static char conninfo[8192];
    const char *pgfile = cm_conf_get(s->conf, "archive", "postgresql");
    if (pgfile && *pgfile) {
        char why[600];
        if (cm_conf_get(s->conf, "archive", "database"))
            cm_svc_die(s, "%s: [archive] names both database and postgresql: give one",
                       cm_conf_name(s->conf));
        if (cm_sql_read_conninfo(pgfile, conninfo, sizeof conninfo, why, sizeof why) != CM_OK)
            cm_svc_die(s, "[archive] postgresql %s", why);
    }
    cm_mqtt_opts mo = {.clean_session = 1, .max_inflight = 1024, .verify_hostname = 1};
    if (cm_mqtt_opts_from_conf(s->conf, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(s->conf));
    const char *cpkey = cm_conf_get(s->conf, "registry", "checkpoint_key");
    if (cpkey && cm_pubkey_load_pem(cpkey, &a.checkpoint_key) != CM_OK)
        cm_svc_die(s, "%s: [registry] checkpoint_key %s: not a P-256 public key (PEM)",
                   cm_conf_name(s->conf), cpkey);
    cm_svc_ready(s);

    char db[4096];
    if (pgfile && *pgfile) {
        cm_sql *sql = NULL;
        char why[600];
        cm_err orc = cm_sql_open_as(CM_SQL_POSTGRESQL, conninfo, 0, &sql, why, sizeof why);
        explicit_bzero(conninfo, sizeof conninfo); /* cm_sql keeps its own copy to reconnect */
        if (orc != CM_OK)
            cm_svc_die(s, "PostgreSQL archive (%s) unreachable or refused: %s", pgfile, why);
        if (archive_store_open_db(&sql, pgfile, &a.store) != CM_OK)
            cm_svc_die(s, "%s: cannot use the PostgreSQL archive database", pgfile);
    } else {
        cm_svc_path(s, "archive", "database", "archive.db", db, sizeof db);
        if (archive_store_open(db, &a.store) != CM_OK)
            cm_svc_die(s, "%s: cannot open the archive database", db);
    }
    a.acks = archive_acks_new(a.store);
    a.acked = archive_acked_new();
    if (!a.acks || !a.acked)
        cm_svc_die(s, "out of memory");
    archive_repl_hooks hooks = {.ctx = &a, .begin = hook_begin, .commit = hook_commit,
                                .rollback = hook_rollback, .apply = apply_logged,
                                .audit = hook_audit, .release_ack = publish_ack_now};
    if (archive_replica_new(s, archive_store_db(a.store), &hooks, &a.repl, err) != CM_OK ||
        cm_zsock_server_conf(s->zctx, s->zap, s->conf, "api", ZMQ_ROUTER, &s->keys, &a.api, err) ||
        cm_registry_new(s->zctx, s->conf, "registry", &s->keys, &a.reg, err))
        cm_svc_die(s, "%s", err);

    cm_metrics *mx = s->metrics;
    a.batches = cm_metric_counter(mx, "suido_archive_batches_total", "batches stored");
    a.readings = cm_metric_counter(mx, "suido_archive_readings_total", "readings stored");
    a.duplicates = cm_metric_counter(mx, "suido_archive_duplicates_total",
                                     "batches already stored (retransmission or replay)");
    a.rejects = cm_metric_counter(mx, "suido_archive_refusals_total", "refusals recorded");
    a.events = cm_metric_counter(mx, "suido_archive_events_total", "births, deaths, results");
    a.alerts_stored = cm_metric_counter(mx, "suido_archive_alerts_total", "alerts stored");
    a.commits = cm_metric_counter(mx, "suido_archive_commits_total", "group commits");
    a.audited = cm_metric_counter(mx, "suido_archive_audit_events_total",
                                  "entries appended to the audit log");
    a.commit_failures = cm_metric_counter(mx, "suido_archive_commit_failures_total",
                                          "failed commits (nothing acknowledged)");
    a.acks_sent = cm_metric_counter(mx, "suido_archive_acks_total", "acks published");
    a.acks_unsent = cm_metric_counter(mx, "suido_archive_acks_unsent_total",
                                      "acks not published (broker unavailable)");
    a.alerts_unpublished = cm_metric_counter(mx, "suido_archive_alerts_unpublished_total",
                                             "stored alerts not published");
    a.db_lost = cm_metric_counter(mx, "suido_archive_db_connection_lost_total",
                                  "database connections lost (open transaction rolled back)");
    a.db_reconnects = cm_metric_counter(mx, "suido_archive_db_reconnects_total",
                                        "database connections made again after a loss");
    a.db_connected = cm_metric_gauge(mx, "suido_archive_db_connected",
                                     "1 while the database connection is usable");
    cm_metric_set(a.db_connected, 1);
    a.pending_records = cm_metric_gauge(mx, "suido_archive_pending_records",
                                        "records in the open transaction, not yet committed");
    a.pending_alerts = cm_metric_gauge(mx, "suido_archive_pending_alerts",
                                       "alerts waiting for their commit to be published");
    a.api_denied = cm_metric_counter(mx, "suido_archive_api_denied_total",
                                     "API requests refused (peer, session, role, malformed)");
    a.api_hooks = (archive_api_hooks){.ctx = &a, .session = api_session,
                                      .change_case = api_change_case,
                                      .repl_status = api_repl_status,
                                      .repl_promote = api_repl_promote, .denied = api_denied,
                                      .checkpoint = api_checkpoint};
    a.cp_sent = cm_metric_counter(mx, "suido_archive_audit_checkpoints_total",
                                  "audit-log heads handed to the registry to be signed");
    a.cp_unsent = cm_metric_counter(mx, "suido_archive_audit_checkpoints_unsent_total",
                                    "audit-log heads the registry did not take");
    a.acked_lost = cm_metric_counter(mx, "suido_archive_acked_lost_batches_total",
                                     "batches acknowledged to their gateway and found not held "
                                     "at start (restored from an older backup)");
    a.acked_waiting = cm_metric_gauge(mx, "suido_archive_ack_points_waiting",
                                      "published ack points not yet kept by the registry");
    a.acked_unrecorded = cm_metric_counter(mx, "suido_archive_ack_points_unrecorded_total",
                                           "hand-overs of ack points the registry did not take");

    cm_events *events = NULL;
    if (cm_events_new(s, "events", on_gateway_event, &a, &events, err))
        cm_svc_die(s, "%s", err);
    if (archive_replica_following(a.repl)) {
        follow_primary(&a, events);
        a.ack_all = !cm_daemon_stopping; /* promoted */
    }
    void *input = NULL;
    if (!cm_daemon_stopping) {
        /* a primary, or a standby just promoted: the broker, the pipeline's input */
        if (cm_mqtt_new(&mo, &a.mqtt) != CM_OK)
            cm_svc_die(s, "cannot create the MQTT client for %s", mo.uri);
        if (cm_mqtt_connect(a.mqtt, 0) != CM_OK)
            cm_warn("uri=%s error=\"broker not reachable yet; retrying\"", mo.uri);
        if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "input", ZMQ_PULL, &s->keys, &input,
                                 err))
            cm_svc_die(s, "%s", err);
        cm_svc_on_security(s, own_security_event, &a);
        a.acked_hold_until_ms = cm_mono_ms() + 15000;
        cm_stage_ctx stage = {.svc = s, .input = input, .table = DISPATCH, .handler_ctx = &a,
                              .on_tick = on_tick, .events = events, .side = a.api,
                              .on_side = on_api, .hold_input = hold_input};
        cm_stage_run(&stage);
    }
    cm_events_destroy(&events);

    cm_info("event=stopping");
    tx_commit(&a);
    send_checkpoint(&a, 1); /* the head as it is left */
    if (a.acked_compared)
        acked_flush(&a); /* the last acks published */
    if (input)
        zmq_close(input);
    zmq_close(a.api);
    archive_replica_destroy(&a.repl);
    cm_registry_destroy(&a.reg);
    cm_pubkey_destroy(&a.checkpoint_key);
    cm_mqtt_destroy(&a.mqtt);
    archive_acks_destroy(&a.acks);
    archive_acked_destroy(&a.acked);
    archive_store_close(&a.store);
    cm_svc_destroy(&a.svc);
    return 0;
}
