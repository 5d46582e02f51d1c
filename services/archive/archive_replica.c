/* archive_replica: see archive_replica.h. */
#include "archive_replica.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_log.h"
#include "cm_time.h"
#include "cm_zmq.h"

#define MAX_STANDBYS 4
#define LONG_POLL_MS 1000      /* a request with nothing new waits this long for a commit */
#define REQUEST_TIMEOUT_MS 5000 /* the standby asks again when unanswered this long */
#define HEARTBEAT_MS 1000      /* a stopped standby still asks, this often, applying nothing */
#define GUARD_MS 10000         /* promotion refused while the primary answered this recently */
#define PRUNE_EVERY_MS 10000
#define REPLY_BUDGET (768 * 1024) /* bytes of bodies per answer (frames are at most 1 MiB) */
#define MAX_PER_ANSWER 2000
#define HELD_MAX 65536         /* gateway acks waiting for a standby */

enum role { R_NONE, R_PRIMARY, R_STANDBY, R_PROMOTED };

static const char SCHEMA[] =
    /* every input of a primary, in order; body: StageMessage, AuditEvent or ArchiveRequest */
    "CREATE TABLE IF NOT EXISTS replog("
    " id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, peer TEXT NOT NULL, kind TEXT NOT NULL,"
    " body BLOB NOT NULL);"
    /* 'applied': a standby's position; 'promoted': when this standby became the primary */
    "CREATE TABLE IF NOT EXISTS repl_state(key TEXT PRIMARY KEY, value INTEGER NOT NULL);";

typedef struct standby {
    char name[64];
    uint64_t acked;       /* the position it last acknowledged */
    uint64_t asked_mono;  /* when it last asked */
    uint64_t asked_wall;
    int applying;         /* its last request asked for inputs (a stopped standby asks for none) */
    int parked;           /* a request waits for the next commit */
    zmq_msg_t route;
    uint64_t parked_mono;
    uint32_t parked_max;
    cm_metric *m_behind, *m_lag;
} standby;

typedef struct held_ack {
    uint64_t tag; /* the commit (newest input id) a standby must have acknowledged */
    uint64_t epoch, seq;
    char gw[65];
} held_ack;

struct archive_replica {
    cm_svc *svc;
    cm_sql *db;
    archive_repl_hooks hooks;
    enum role role;
    void *sock;
    cm_sql_stmt *st_log, *st_read, *st_ts, *st_prune, *st_state;

    /* primary */
    uint64_t next_id;      /* id of the next input logged */
    uint64_t committed;    /* newest committed input */
    uint64_t committed_ms, pending_ms;
    long retain_s, timeout_ms;
    standby standbys[MAX_STANDBYS];
    held_ack *held;
    size_t held_head, held_n;
    uint64_t pruned_mono;

    /* standby */
    void *mon;             /* handshake events of the DEALER */
    char primary[256];
    uint64_t position, head, head_ms, applied_ms;
    uint64_t answered_mono, answered_wall;
    int outstanding;
    uint64_t sent_mono, next_ask_mono, retry_mono;
    uint32_t batch;
    char stopped[256];
    uint64_t handshakes_refused;

    /* status (valid until the next call) */
    Suido__ReplicationStatus status;
    Suido__StandbyState sb[MAX_STANDBYS];
    Suido__StandbyState *sbp[MAX_STANDBYS];

    uint64_t metrics_mono;
    cm_metric *m_position, *m_live, *m_held, *m_requests, *m_sent, *m_bad_requests, *m_pruned,
        *m_unreplicated, *m_log_failures;
    cm_metric *m_head, *m_behind, *m_applied, *m_refused, *m_silent, *m_handshakes, *m_stopped,
        *m_db_failures, *m_lag_s;
};

static cm_err fail_sql(archive_replica *r, const char *what)
{
    cm_error("what=%s error=\"%s\"", what, cm_sql_error(r->db));
    return CM_ERR_DB;
}

/* repl_state value of key, or dflt. */
static cm_err state_get(archive_replica *r, const char *key, int64_t dflt, int64_t *out)
{
    cm_sql_stmt *st = NULL;
    *out = dflt;
    if (cm_sql_prepare(r->db, "SELECT value FROM repl_state WHERE key = ?", &st) != CM_OK)
        return fail_sql(r, "repl_state");
    cm_sql_bind_text(st, 1, key);
    int rc = cm_sql_step(st);
    if (rc == CM_SQL_ROW)
        *out = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    return rc == CM_SQL_FAIL ? fail_sql(r, "repl_state") : CM_OK;
}

static cm_err state_set(archive_replica *r, const char *key, int64_t value)
{
    cm_sql_reset(r->st_state);
    cm_sql_bind_text(r->st_state, 1, key);
    cm_sql_bind_int64(r->st_state, 2, value);
    int rc = cm_sql_step(r->st_state);
    cm_sql_reset(r->st_state);
    return rc == CM_SQL_DONE ? CM_OK : fail_sql(r, "repl_state");
}

/* One integer from a query without parameters (0 for NULL or no row). */
static cm_err scalar(archive_replica *r, const char *sql, int64_t *out)
{
    cm_sql_stmt *st = NULL;
    *out = 0;
    if (cm_sql_prepare(r->db, sql, &st) != CM_OK)
        return fail_sql(r, "scalar");
    int rc = cm_sql_step(st);
    if (rc == CM_SQL_ROW && !cm_sql_column_is_null(st, 0))
        *out = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    return rc == CM_SQL_FAIL ? fail_sql(r, "scalar") : CM_OK;
}

/* ts_ms of input id (0 if not kept). */
static uint64_t input_ts(archive_replica *r, uint64_t id)
{
    cm_sql_reset(r->st_ts);
    cm_sql_bind_int64(r->st_ts, 1, (int64_t)id);
    uint64_t ts = cm_sql_step(r->st_ts) == CM_SQL_ROW ? (uint64_t)cm_sql_column_int64(r->st_ts, 0)
                                                       : 0;
    cm_sql_reset(r->st_ts);
    return ts;
}

static void register_metrics(archive_replica *r)
{
    cm_metrics *mx = r->svc->metrics;
    r->m_position = cm_metric_gauge(mx, "suido_archive_repl_position",
                                    "primary: newest committed input; standby: last applied");
    if (r->role == R_PRIMARY) {
        r->m_live = cm_metric_gauge(mx, "suido_archive_repl_standbys_live",
                                    "standbys applying that asked within standby_timeout_s "
                                    "(gateway acks wait for them)");
        r->m_held = cm_metric_gauge(mx, "suido_archive_repl_acks_held",
                                    "gateway acks waiting for a standby's acknowledgement");
        r->m_requests = cm_metric_counter(mx, "suido_archive_repl_requests_total",
                                          "requests of standbys (each acknowledges)");
        r->m_sent = cm_metric_counter(mx, "suido_archive_repl_records_sent_total",
                                      "inputs sent to standbys");
        r->m_bad_requests = cm_metric_counter(mx, "suido_archive_repl_bad_requests_total",
                                              "standby requests refused (malformed, ahead)");
        r->m_pruned = cm_metric_counter(mx, "suido_archive_repl_pruned_total",
                                        "replication log rows removed (acknowledged, old)");
        r->m_unreplicated = cm_metric_counter(
            mx, "suido_archive_repl_acks_unreplicated_total",
            "gateway acks published without a standby's acknowledgement (none live)");
        r->m_log_failures = cm_metric_counter(mx, "suido_archive_repl_log_failures_total",
                                              "inputs that could not be logged (not committed)");
    } else {
        r->m_head = cm_metric_gauge(mx, "suido_archive_repl_head",
                                    "newest input of the primary, as last reported");
        r->m_behind = cm_metric_gauge(mx, "suido_archive_repl_behind",
                                      "inputs of the primary not applied yet");
        r->m_lag_s = cm_metric_gauge(mx, "suido_replication_lag_seconds",
                                     "time between the primary's newest input and the newest "
                                     "applied here (whole seconds, rounded up; 0 when none is "
                                     "missing)");
        r->m_applied = cm_metric_counter(mx, "suido_archive_repl_applied_total", "inputs applied");
        r->m_refused = cm_metric_counter(mx, "suido_archive_repl_refused_total",
                                         "answers of the primary refused (applying stopped)");
        r->m_silent = cm_metric_gauge(mx, "suido_archive_repl_primary_silent_ms",
                                      "time since the primary last answered");
        r->m_handshakes = cm_metric_counter(mx, "suido_archive_repl_handshakes_refused_total",
                                            "failed CURVE handshakes with the primary");
        r->m_stopped = cm_metric_gauge(mx, "suido_archive_repl_stopped",
                                       "1 when applying stopped on a refused answer");
        r->m_db_failures = cm_metric_counter(mx, "suido_archive_repl_db_failures_total",
                                             "answers not applied for a local database error "
                                             "(asked again)");
    }
}

/* ------------------------------------------------------------------------------- set-up */

static cm_err open_primary(archive_replica *r, char err[CM_CONF_ERRLEN])
{
    cm_svc *s = r->svc;
    cm_err rc;
    if ((rc = cm_conf_long(s->conf, "replication", "retain_s", 3600, 0, 365L * 86400,
                           &r->retain_s, err)) ||
        (rc = cm_conf_long(s->conf, "replication", "standby_timeout_s", 10, 1, 3600,
                           &r->timeout_ms, err)))
        return rc;
    r->timeout_ms *= 1000;
    int64_t newest = 0, applied = 0;
    /* a primary by configuration is no longer a promoted standby */
    if (scalar(r, "SELECT max(id) FROM replog", &newest) != CM_OK ||
        state_get(r, "applied", 0, &applied) != CM_OK ||
        cm_sql_exec(r->db, "DELETE FROM repl_state WHERE key = 'promoted'") != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "replication: cannot read the replication log");
        return CM_ERR_DB;
    }
    r->committed = (uint64_t)(newest > applied ? newest : applied);
    r->committed_ms = input_ts(r, r->committed);
    r->next_id = r->committed + 1;
    r->held = calloc(HELD_MAX, sizeof *r->held);
    if (!r->held)
        return CM_ERR_NOMEM;
    if (cm_sql_prepare(r->db,
                       "INSERT INTO replog(id, ts_ms, peer, kind, body) VALUES(?,?,?,?,?)",
                       &r->st_log) != CM_OK ||
        cm_sql_prepare(r->db,
                       "SELECT id, ts_ms, peer, kind, body FROM replog"
                       " WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                       &r->st_read) != CM_OK ||
        cm_sql_prepare(r->db, "DELETE FROM replog WHERE id <= ? AND ts_ms < ? AND id < ?",
                       &r->st_prune) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "replication: %s", cm_sql_error(r->db));
        return CM_ERR_DB;
    }
    rc = cm_zsock_server_conf(s->zctx, s->zap, s->conf, "replication", ZMQ_ROUTER, &s->keys,
                              &r->sock, err);
    if (rc == CM_OK)
        cm_info("role=primary position=%llu retain_s=%ld", (unsigned long long)r->committed,
                r->retain_s);
    return rc;
}

static cm_err open_standby(archive_replica *r, char err[CM_CONF_ERRLEN])
{
    cm_svc *s = r->svc;
    const char *ep, *keyf;
    long batch;
    cm_err rc;
    if ((rc = cm_conf_req(s->conf, "replication", "primary", &ep, err)) ||
        (rc = cm_conf_req(s->conf, "replication", "primary_key", &keyf, err)) ||
        (rc = cm_conf_long(s->conf, "replication", "batch", 500, 1, MAX_PER_ANSWER, &batch,
                           err)))
        return rc;
    r->batch = (uint32_t)batch;
    snprintf(r->primary, sizeof r->primary, "%s", ep);
    int64_t promoted = 0, applied = 0, newest = 0;
    if (state_get(r, "promoted", 0, &promoted) != CM_OK ||
        state_get(r, "applied", 0, &applied) != CM_OK ||
        scalar(r, "SELECT max(id) FROM replog", &newest) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "replication: cannot read the replication state");
        return CM_ERR_DB;
    }
    /* restored from a backup of the primary: its replication log says where it stands */
    r->position = (uint64_t)(applied > newest ? applied : newest);
    int64_t applied_ms = 0;
    if (state_get(r, "applied_ms", 0, &applied_ms) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "replication: cannot read the replication state");
        return CM_ERR_DB;
    }
    /* the time of the input at the position identifies it (checked by the primary) */
    r->applied_ms = applied == (int64_t)r->position && applied_ms ? (uint64_t)applied_ms
                                                                   : input_ts(r, r->position);
    if (promoted) {
        r->role = R_PROMOTED;
        cm_warn("role=promoted position=%llu promoted_ms=%lld event=runs_as_primary "
                "hint=\"set [replication] role = primary (or none) in %s\"",
                (unsigned long long)r->position, (long long)promoted, cm_conf_name(s->conf));
        return CM_OK;
    }
    char key[CM_Z85_LEN + 1];
    if (cm_curve_load_public(keyf, key) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [replication] %s: not a readable CURVE public key",
                 cm_conf_name(s->conf), cm_conf_line(s->conf, "replication", "primary_key"), keyf);
        return CM_ERR_CONFIG;
    }
    if (cm_zsock_client(s->zctx, ZMQ_DEALER, ep, key, &s->keys, &r->sock) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [replication] cannot connect to %s",
                 cm_conf_name(s->conf), cm_conf_line(s->conf, "replication", "primary"), ep);
        return CM_ERR_CONFIG;
    }
    /* the handshake's outcome, so that a refused key shows in the status and the metrics */
    char mon_ep[96];
    snprintf(mon_ep, sizeof mon_ep, "inproc://archive-replica-%p", (void *)r);
    int linger = 0;
    if (zmq_socket_monitor(r->sock, mon_ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0 ||
        !(r->mon = zmq_socket(s->zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(r->mon, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(r->mon, mon_ep) != 0)
        cm_warn("error=\"handshakes with the primary are not watched: %s\"", zmq_strerror(errno));
    cm_info("role=standby primary=%s position=%llu", ep, (unsigned long long)r->position);
    return CM_OK;
}

cm_err archive_replica_new(cm_svc *svc, cm_sql *db, const archive_repl_hooks *hooks,
                           archive_replica **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    const char *role = cm_conf_get(svc->conf, "replication", "role");
    enum role want = !role || !*role || strcmp(role, "none") == 0 ? R_NONE
                     : strcmp(role, "primary") == 0               ? R_PRIMARY
                     : strcmp(role, "standby") == 0               ? R_STANDBY
                                                                  : (enum role)-1;
    if ((int)want < 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [replication] role must be none, primary or standby",
                 cm_conf_name(svc->conf), cm_conf_line(svc->conf, "replication", "role"));
        return CM_ERR_CONFIG;
    }
    /* PostgreSQL hands out ids that a rollback does not give back, so a standby applying only
     * the committed inputs would number events and cases differently: such an archive is
     * replicated by PostgreSQL itself */
    if (want != R_NONE && cm_sql_engine_of(db) != CM_SQL_SQLITE) {
        snprintf(err, CM_CONF_ERRLEN,
                 "%s:%d: [replication] is for SQLite archives; replicate a PostgreSQL archive "
                 "with PostgreSQL's own replication",
                 cm_conf_name(svc->conf), cm_conf_line(svc->conf, "replication", "role"));
        return CM_ERR_CONFIG;
    }
    archive_replica *r = calloc(1, sizeof *r);
    if (!r)
        return CM_ERR_NOMEM;
    r->svc = svc;
    r->db = db;
    r->hooks = *hooks;
    r->role = want;
    cm_err rc = CM_OK;
    if (want != R_NONE) {
        if (cm_sql_exec_ddl(db, SCHEMA) != CM_OK ||
            cm_sql_prepare(db, "SELECT ts_ms FROM replog WHERE id = ?", &r->st_ts) != CM_OK ||
            cm_sql_prepare(db,
                           "INSERT INTO repl_state(key, value) VALUES(?, ?)"
                           " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           &r->st_state) != CM_OK) {
            snprintf(err, CM_CONF_ERRLEN, "replication: %s", cm_sql_error(db));
            rc = CM_ERR_DB;
        } else {
            rc = want == R_PRIMARY ? open_primary(r, err) : open_standby(r, err);
        }
    }
    if (rc != CM_OK) {
        archive_replica_destroy(&r);
        return rc;
    }
    if (want != R_NONE)
        register_metrics(r);
    *out = r;
    return CM_OK;
}

static void close_sockets(archive_replica *r)
{
    for (int i = 0; i < MAX_STANDBYS; i++)
        if (r->standbys[i].parked) {
            zmq_msg_close(&r->standbys[i].route);
            r->standbys[i].parked = 0;
        }
    if (r->sock) {
        int linger = 0;
        zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
        if (r->mon)
            zmq_socket_monitor(r->sock, NULL, 0);
        zmq_close(r->sock);
        r->sock = NULL;
    }
    if (r->mon) {
        zmq_close(r->mon);
        r->mon = NULL;
    }
}

void archive_replica_destroy(archive_replica **rp)
{
    if (!rp || !*rp)
        return;
    archive_replica *r = *rp;
    close_sockets(r);
    cm_sql_finalize(&r->st_log);
    cm_sql_finalize(&r->st_read);
    cm_sql_finalize(&r->st_ts);
    cm_sql_finalize(&r->st_prune);
    cm_sql_finalize(&r->st_state);
    free(r->held);
    free(r);
    *rp = NULL;
}

int archive_replica_following(const archive_replica *r) { return r && r->role == R_STANDBY; }

const char *archive_replica_role(const archive_replica *r)
{
    static const char *const NAMES[] = {"none", "primary", "standby", "promoted"};
    return r ? NAMES[r->role] : "none";
}

/* ------------------------------------------------------------------------------ primary */

int archive_replica_logging(const archive_replica *r) { return r && r->role == R_PRIMARY; }

cm_err archive_replica_log(archive_replica *r, const char *kind, const char *peer, uint64_t ts_ms,
                           const uint8_t *body, size_t len)
{
    cm_sql_stmt *st = r->st_log;
    cm_sql_reset(st);
    cm_sql_bind_int64(st, 1, (int64_t)r->next_id);
    cm_sql_bind_int64(st, 2, (int64_t)ts_ms);
    cm_sql_bind_text(st, 3, peer);
    cm_sql_bind_text(st, 4, kind);
    cm_sql_bind_blob(st, 5, body, len);
    int rc = cm_sql_step(st);
    cm_sql_reset(st);
    if (rc != CM_SQL_DONE) {
        cm_metric_inc(r->m_log_failures);
        return fail_sql(r, "replog");
    }
    r->next_id++;
    r->pending_ms = ts_ms;
    return CM_OK;
}

void archive_replica_rolled_back(archive_replica *r)
{
    if (r && r->role == R_PRIMARY)
        r->next_id = r->committed + 1;
}

static standby *standby_for(archive_replica *r, const char *name)
{
    standby *free_slot = NULL;
    for (int i = 0; i < MAX_STANDBYS; i++) {
        standby *s = &r->standbys[i];
        if (s->name[0] && strcmp(s->name, name) == 0)
            return s;
        if (!s->name[0] && !free_slot)
            free_slot = s;
    }
    if (free_slot) {
        char metric[160];
        snprintf(free_slot->name, sizeof free_slot->name, "%s", name);
        snprintf(metric, sizeof metric, "suido_archive_repl_behind{standby=\"%s\"}", name);
        free_slot->m_behind = cm_metric_gauge(r->svc->metrics, metric,
                                              "inputs committed here the standby has not "
                                              "acknowledged");
        snprintf(metric, sizeof metric, "suido_archive_repl_lag_ms{standby=\"%s\"}", name);
        free_slot->m_lag = cm_metric_gauge(r->svc->metrics, metric,
                                           "age of the oldest input the standby has not "
                                           "acknowledged");
    }
    return free_slot;
}

static int standby_live(const archive_replica *r, const standby *s, uint64_t now)
{
    return s->name[0] && s->asked_mono && now - s->asked_mono < (uint64_t)r->timeout_ms;
}

/* The newest position a live standby that applies has acknowledged, and how many there are:
 * gateway acks wait for these only. */
static uint64_t live_acked(const archive_replica *r, int *n_live)
{
    uint64_t best = 0, now = cm_mono_ms();
    *n_live = 0;
    for (int i = 0; i < MAX_STANDBYS; i++)
        if (standby_live(r, &r->standbys[i], now) && r->standbys[i].applying) {
            (*n_live)++;
            if (r->standbys[i].acked > best)
                best = r->standbys[i].acked;
        }
    return best;
}

/* Publishes the held acks a standby now covers (all of them with none live). */
static void release_acks(archive_replica *r)
{
    int n_live;
    uint64_t upto = live_acked(r, &n_live);
    while (r->held_n > 0) {
        held_ack *h = &r->held[r->held_head];
        if (n_live > 0 && h->tag > upto)
            break;
        if (n_live == 0)
            cm_metric_inc(r->m_unreplicated);
        r->hooks.release_ack(r->hooks.ctx, h->gw, h->epoch, h->seq);
        r->held_head = (r->held_head + 1) % HELD_MAX;
        r->held_n--;
    }
}

int archive_replica_hold_ack(archive_replica *r, const char *gw, uint64_t epoch, uint64_t seq)
{
    int n_live = 0;
    if (!r || r->role != R_PRIMARY)
        return 0;
    live_acked(r, &n_live);
    if (n_live == 0 && r->held_n == 0) {
        cm_metric_inc(r->m_unreplicated);
        return 0;
    }
    if (r->held_n == HELD_MAX) { /* never expected: the oldest goes out unconfirmed */
        held_ack *old = &r->held[r->held_head];
        cm_metric_inc(r->m_unreplicated);
        r->hooks.release_ack(r->hooks.ctx, old->gw, old->epoch, old->seq);
        r->held_head = (r->held_head + 1) % HELD_MAX;
        r->held_n--;
    }
    held_ack *h = &r->held[(r->held_head + r->held_n) % HELD_MAX];
    h->tag = r->committed;
    h->epoch = epoch;
    h->seq = seq;
    snprintf(h->gw, sizeof h->gw, "%s", gw);
    r->held_n++;
    release_acks(r);
    return 1;
}

static void reply_error(archive_replica *r, zmq_msg_t *route, uint64_t after, cm_err code,
                        const char *why)
{
    Suido__ReplReply rep = SUIDO__REPL_REPLY__INIT;
    rep.status = (uint32_t)code;
    rep.error = (char *)why;
    rep.after = after;
    rep.head = r->committed;
    rep.head_ms = r->committed_ms;
    cm_zreply(r->sock, route, &rep.base);
}

/* Answers "after, at most max" with what is committed. */
static void reply_records(archive_replica *r, zmq_msg_t *route, const char *who, uint64_t after,
                          uint32_t max)
{
    Suido__ReplReply rep = SUIDO__REPL_REPLY__INIT;
    Suido__ReplRecord *recs = NULL, **ptrs = NULL;
    uint32_t limit = max < MAX_PER_ANSWER ? max : MAX_PER_ANSWER;
    size_t n = 0, bytes = 0;
    const char *problem = NULL;
    cm_err code = CM_OK;
    if (limit && after < r->committed) {
        recs = calloc(limit, sizeof *recs);
        ptrs = calloc(limit, sizeof *ptrs);
        if (!recs || !ptrs) {
            code = CM_ERR_NOMEM;
            problem = "out of memory";
            goto send;
        }
        cm_sql_stmt *st = r->st_read;
        cm_sql_reset(st);
        cm_sql_bind_int64(st, 1, (int64_t)after);
        cm_sql_bind_int64(st, 2, (int64_t)r->committed);
        cm_sql_bind_int64(st, 3, (int64_t)limit);
        int row = CM_SQL_DONE;
        while (n < limit && (row = cm_sql_step(st)) == CM_SQL_ROW) {
            size_t blen = 0;
            const void *body = cm_sql_column_blob(st, 4, &blen);
            if (n > 0 && bytes + blen > REPLY_BUDGET)
                break;
            Suido__ReplRecord *x = &recs[n];
            suido__repl_record__init(x);
            x->id = (uint64_t)cm_sql_column_int64(st, 0);
            x->ts_ms = (uint64_t)cm_sql_column_int64(st, 1);
            x->peer = strdup(cm_sql_column_text(st, 2));
            x->kind = strdup(cm_sql_column_text(st, 3));
            x->body.data = malloc(blen ? blen : 1);
            x->body.len = blen;
            ptrs[n++] = x;
            if (!x->peer || !x->kind || !x->body.data) {
                code = CM_ERR_NOMEM;
                problem = "out of memory";
                break;
            }
            if (blen)
                memcpy(x->body.data, body, blen);
            bytes += blen + strlen(x->peer) + strlen(x->kind) + 32;
        }
        cm_sql_reset(st);
        if (!problem && row == CM_SQL_FAIL) {
            code = CM_ERR_DB;
            problem = cm_sql_error(r->db);
        } else if (!problem && (n == 0 || ptrs[0]->id != after + 1)) {
            code = CM_ERR_UNKNOWN;
            problem = "the inputs after this position are no longer kept (retain_s): seed the "
                      "standby again from a backup of the primary";
        }
    }
send:
    if (problem) {
        cm_metric_inc(r->m_bad_requests);
        cm_error("standby=%s after=%llu error=\"%s\"", who, (unsigned long long)after, problem);
        reply_error(r, route, after, code, problem);
    } else {
        rep.after = after;
        rep.head = r->committed;
        rep.head_ms = r->committed_ms;
        rep.n_records = n;
        rep.records = ptrs;
        cm_zreply(r->sock, route, &rep.base);
        cm_metric_add(r->m_sent, n);
    }
    for (size_t i = 0; i < n; i++) {
        free(ptrs[i]->peer);
        free(ptrs[i]->kind);
        free(ptrs[i]->body.data);
    }
    free(ptrs);
    free(recs);
}

static void unpark(archive_replica *r, standby *s)
{
    if (!s->parked)
        return;
    reply_records(r, &s->route, s->name, s->acked, s->parked_max);
    zmq_msg_close(&s->route);
    s->parked = 0;
}

void archive_replica_committed(archive_replica *r)
{
    if (!r || r->role != R_PRIMARY || r->next_id == r->committed + 1)
        return;
    r->committed = r->next_id - 1;
    r->committed_ms = r->pending_ms;
    for (int i = 0; i < MAX_STANDBYS; i++)
        unpark(r, &r->standbys[i]);
}

static void handle_request(archive_replica *r, zmq_msg_t *route, zmq_msg_t *body, const char *who)
{
    if (cm_svc_peer_revoked(r->svc, who)) {
        cm_metric_inc(r->m_bad_requests);
        cm_warn("standby=%s error=\"identity revoked: request ignored\"", who);
        return;
    }
    standby *s = standby_for(r, who);
    if (!s) {
        cm_metric_inc(r->m_bad_requests);
        reply_error(r, route, 0, CM_ERR_TOO_BIG, "too many standbys");
        return;
    }
    Suido__ReplRequest *q =
        suido__repl_request__unpack(NULL, zmq_msg_size(body), zmq_msg_data(body));
    if (!q) {
        cm_metric_inc(r->m_bad_requests);
        cm_warn("standby=%s size=%zu error=\"malformed replication request\"", who,
                zmq_msg_size(body));
        reply_error(r, route, 0, CM_ERR_DECODE, "malformed request");
        return;
    }
    cm_metric_inc(r->m_requests);
    uint64_t now = cm_mono_ms();
    if (!s->asked_mono || !standby_live(r, s, now))
        cm_info("standby=%s position=%llu event=standby_live", who,
                (unsigned long long)q->after);
    s->asked_mono = now;
    s->asked_wall = cm_now_ms();
    uint64_t mine_ms = q->after && q->after_ms && q->after <= r->committed
                           ? input_ts(r, q->after)
                           : 0;
    if (q->after > r->committed || (mine_ms && mine_ms != q->after_ms)) {
        cm_metric_inc(r->m_bad_requests);
        char why[300];
        if (q->after > r->committed)
            snprintf(why, sizeof why,
                     "the standby is ahead of this primary (%llu > %llu): it follows another "
                     "history; seed it again from a backup of this primary",
                     (unsigned long long)q->after, (unsigned long long)r->committed);
        else
            snprintf(why, sizeof why,
                     "the standby's input %llu is not this primary's (time %llu, here %llu): it "
                     "follows another history; seed it again from a backup of this primary",
                     (unsigned long long)q->after, (unsigned long long)q->after_ms,
                     (unsigned long long)mine_ms);
        cm_error("standby=%s error=\"%s\" alarm=1", who, why);
        s->asked_mono = 0; /* not a standby acks may wait for */
        reply_error(r, route, q->after, CM_ERR_INVAL, why);
        suido__repl_request__free_unpacked(q, NULL);
        return;
    }
    s->acked = q->after;
    if (s->applying && q->max == 0)
        cm_error("standby=%s position=%llu event=standby_not_applying alarm=1", who,
                 (unsigned long long)q->after);
    s->applying = q->max > 0;
    if (s->parked) { /* superseded: the standby no longer waits for that answer */
        zmq_msg_close(&s->route);
        s->parked = 0;
    }
    if (q->max == 0 || q->after < r->committed) {
        reply_records(r, route, who, q->after, q->max);
    } else {
        zmq_msg_init(&s->route);
        zmq_msg_copy(&s->route, route);
        s->parked = 1;
        s->parked_mono = now;
        s->parked_max = q->max;
    }
    suido__repl_request__free_unpacked(q, NULL);
    release_acks(r);
}

void archive_replica_serve(archive_replica *r)
{
    if (!r || r->role != R_PRIMARY)
        return;
    for (int i = 0; i < 64; i++) {
        zmq_msg_t route, body;
        char who[64];
        zmq_msg_init(&route);
        zmq_msg_init(&body);
        int got = zmq_msg_recv(&route, r->sock, ZMQ_DONTWAIT) >= 0;
        if (got && zmq_msg_more(&route) &&
            cm_zrecv(r->sock, &body, who, sizeof who, 0) == CM_OK)
            handle_request(r, &route, &body, who);
        zmq_msg_close(&route);
        zmq_msg_close(&body);
        if (!got)
            break;
    }
}

/* Removes what every standby seen has acknowledged and is older than retain_s (never the newest
 * row: it numbers the next input after a restart). 0 when no standby acknowledged anything yet. */
static int prune(archive_replica *r)
{
    uint64_t upto = UINT64_MAX;
    int seen = 0;
    for (int i = 0; i < MAX_STANDBYS; i++)
        if (r->standbys[i].name[0]) { /* every standby seen in this run, live or not */
            seen = 1;
            if (r->standbys[i].acked < upto)
                upto = r->standbys[i].acked;
        }
    if (!seen || upto == 0)
        return 0;
    cm_sql_stmt *st = r->st_prune;
    cm_sql_reset(st);
    cm_sql_bind_int64(st, 1, (int64_t)upto);
    cm_sql_bind_int64(st, 2, (int64_t)(cm_now_ms() - (uint64_t)r->retain_s * 1000));
    cm_sql_bind_int64(st, 3, (int64_t)r->committed);
    if (cm_sql_step(st) == CM_SQL_DONE)
        cm_metric_add(r->m_pruned, (uint64_t)cm_sql_changes(st));
    else
        fail_sql(r, "replog prune");
    cm_sql_reset(st);
    return 1;
}

static void tick_primary(archive_replica *r, uint64_t now)
{
    for (int i = 0; i < MAX_STANDBYS; i++) {
        standby *s = &r->standbys[i];
        if (s->parked && now - s->parked_mono >= LONG_POLL_MS)
            unpark(r, s);
        if (s->name[0] && s->asked_mono && !standby_live(r, s, now)) {
            cm_warn("standby=%s position=%llu silent_ms=%llu event=standby_lost alarm=1", s->name,
                    (unsigned long long)s->acked, (unsigned long long)(now - s->asked_mono));
            s->asked_mono = 0;
        }
    }
    release_acks(r); /* with none live, everything held goes out */
    if (now - r->pruned_mono >= PRUNE_EVERY_MS && prune(r))
        r->pruned_mono = now;
}

/* ------------------------------------------------------------------------------ standby */

void *archive_replica_socket(const archive_replica *r)
{
    return r && r->role == R_STANDBY ? r->sock : NULL;
}

static void ask(archive_replica *r, uint64_t now)
{
    Suido__ReplRequest q = SUIDO__REPL_REQUEST__INIT;
    q.after = r->position;
    q.after_ms = r->applied_ms;
    q.max = r->stopped[0] ? 0 : r->batch;
    if (cm_zsend_pb(r->sock, &q.base, ZMQ_DONTWAIT) == CM_OK) {
        r->outstanding = 1;
        r->sent_mono = now;
    } else {
        r->next_ask_mono = now + 100;
    }
}

/* Stops applying: the answer is not applied, the reason is kept, counted, logged, audited. */
static void refuse(archive_replica *r, const char *reason)
{
    snprintf(r->stopped, sizeof r->stopped, "%s", reason);
    cm_metric_inc(r->m_refused);
    cm_metric_set(r->m_stopped, 1);
    cm_error("primary=%s position=%llu error=\"%s\" event=replication_stopped alarm=1", r->primary,
             (unsigned long long)r->position, reason);
    char detail[400];
    snprintf(detail, sizeof detail, "position=%llu reason=\"%s\"",
             (unsigned long long)r->position, reason);
    r->hooks.audit(r->hooks.ctx, "replication_refused", r->primary, detail);
}

/* Applies one checked answer in one transaction. 0 done, -1 refused, 1 to be retried. */
static int apply_answer(archive_replica *r, const Suido__ReplReply *rep)
{
    char why[300];
    for (size_t i = 0; i < rep->n_records; i++) {
        const Suido__ReplRecord *x = rep->records[i];
        if (x->id != r->position + 1 + i) {
            snprintf(why, sizeof why, "inputs not contiguous: expected %llu, got %llu",
                     (unsigned long long)(r->position + 1 + i), (unsigned long long)x->id);
            refuse(r, why);
            return -1;
        }
    }
    if (r->hooks.begin(r->hooks.ctx) != CM_OK)
        return 1;
    for (size_t i = 0; i < rep->n_records; i++) {
        const Suido__ReplRecord *x = rep->records[i];
        archive_repl_input in = {.id = x->id, .ts_ms = x->ts_ms, .peer = x->peer ? x->peer : "",
                                 .kind = x->kind ? x->kind : "", .body = x->body.data,
                                 .len = x->body.len};
        cm_err rc = r->hooks.apply(r->hooks.ctx, &in);
        if (rc == CM_ERR_DB || rc == CM_ERR_NOMEM) {
            r->hooks.rollback(r->hooks.ctx);
            return 1;
        }
        if (rc != CM_OK) {
            r->hooks.rollback(r->hooks.ctx);
            snprintf(why, sizeof why, "input %llu (kind %s from %s) refused: %s",
                     (unsigned long long)x->id, in.kind, in.peer, cm_strerror(rc));
            refuse(r, why);
            return -1;
        }
    }
    const Suido__ReplRecord *last = rep->records[rep->n_records - 1];
    if (state_set(r, "applied", (int64_t)last->id) != CM_OK ||
        state_set(r, "applied_ms", (int64_t)last->ts_ms) != CM_OK ||
        r->hooks.commit(r->hooks.ctx) != CM_OK) {
        r->hooks.rollback(r->hooks.ctx);
        return 1;
    }
    r->position = last->id;
    r->applied_ms = last->ts_ms;
    cm_metric_add(r->m_applied, rep->n_records);
    return 0;
}

static void on_answer(archive_replica *r, zmq_msg_t *m, uint64_t now)
{
    Suido__ReplReply *rep = suido__repl_reply__unpack(NULL, zmq_msg_size(m), zmq_msg_data(m));
    if (!rep) {
        r->outstanding = 0;
        r->next_ask_mono = now + HEARTBEAT_MS;
        if (!r->stopped[0])
            refuse(r, "malformed answer from the primary");
        return;
    }
    if (rep->after != r->position) { /* the answer to an earlier request */
        suido__repl_reply__free_unpacked(rep, NULL);
        return;
    }
    r->outstanding = 0;
    r->answered_mono = now;
    r->answered_wall = cm_now_ms();
    r->head = rep->head;
    r->head_ms = rep->head_ms;
    r->next_ask_mono = now;
    if (r->stopped[0]) {
        r->next_ask_mono = now + HEARTBEAT_MS;
    } else if (rep->status != 0) {
        char why[300];
        snprintf(why, sizeof why, "the primary refused: %s",
                 rep->error && *rep->error ? rep->error : cm_strerror(rep->status));
        refuse(r, why);
        r->next_ask_mono = now + HEARTBEAT_MS;
    } else if (rep->n_records > 0) {
        int rc = apply_answer(r, rep);
        if (rc == 1) {
            cm_metric_inc(r->m_db_failures);
            cm_error("position=%llu error=\"inputs not applied: database; asking again\"",
                     (unsigned long long)r->position);
            r->next_ask_mono = now + 1000;
        } else if (rc < 0) {
            r->next_ask_mono = now + HEARTBEAT_MS;
        }
    } else if (rep->head < r->position) {
        char why[200];
        snprintf(why, sizeof why, "the primary's newest input %llu is behind this standby",
                 (unsigned long long)rep->head);
        refuse(r, why);
        r->next_ask_mono = now + HEARTBEAT_MS;
    }
    suido__repl_reply__free_unpacked(rep, NULL);
}

static void drain_monitor(archive_replica *r)
{
    for (int k = 0; r->mon && k < 64; k++) {
        zmq_msg_t head, addr;
        zmq_msg_init(&head);
        zmq_msg_init(&addr);
        int got = zmq_msg_recv(&head, r->mon, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&head) &&
                  zmq_msg_recv(&addr, r->mon, ZMQ_DONTWAIT) >= 0;
        if (got && zmq_msg_size(&head) == 6) {
            uint16_t event;
            memcpy(&event, zmq_msg_data(&head), 2);
            r->handshakes_refused++;
            cm_metric_inc(r->m_handshakes);
            /* the primary refuses an unknown key on every reconnect: log the first of each 100 */
            if (r->handshakes_refused % 100 == 1)
                cm_error("primary=%s reason=%s refused=%llu error=\"handshake with the primary "
                         "failed: is this standby on its [replication] allow-list, and is "
                         "primary_key its key?\"",
                         r->primary,
                         event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH       ? "auth_refused"
                         : event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? "protocol_error"
                                                                        : "handshake_failed",
                         (unsigned long long)r->handshakes_refused);
        }
        zmq_msg_close(&head);
        zmq_msg_close(&addr);
        if (!got)
            break;
    }
}

void archive_replica_follow(archive_replica *r)
{
    if (!r || r->role != R_STANDBY)
        return;
    drain_monitor(r);
    for (int i = 0; i < 16; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        cm_err rc = cm_zrecv(r->sock, &m, NULL, 0, ZMQ_DONTWAIT);
        if (rc == CM_OK)
            on_answer(r, &m, cm_mono_ms());
        zmq_msg_close(&m);
        if (rc == CM_ERR_UNAVAILABLE || rc == CM_ERR_IO)
            break;
    }
    uint64_t now = cm_mono_ms();
    if (r->outstanding && now - r->sent_mono >= REQUEST_TIMEOUT_MS) {
        if (now - r->retry_mono >= 30000) {
            r->retry_mono = now;
            cm_warn("primary=%s position=%llu error=\"the primary does not answer; asking again\"",
                    r->primary, (unsigned long long)r->position);
        }
        r->outstanding = 0;
    }
    if (!r->outstanding && now >= r->next_ask_mono)
        ask(r, now);
}

cm_err archive_replica_promote(archive_replica *r, int force, uint64_t ts_ms, char *why,
                               size_t whylen)
{
    if (!r || r->role != R_STANDBY) {
        snprintf(why, whylen, "this archive is not a standby that follows a primary (role %s)",
                 archive_replica_role(r));
        return CM_ERR_INVAL;
    }
    uint64_t now = cm_mono_ms();
    uint64_t silent = r->answered_mono ? now - r->answered_mono : UINT64_MAX;
    if (!force && silent < GUARD_MS) {
        snprintf(why, whylen,
                 "the primary answered %.1f s ago: stop it first (two primaries would each "
                 "accept different data), or promote with --force",
                 (double)silent / 1000.0);
        return CM_ERR_DENIED;
    }
    char detail[400];
    snprintf(detail, sizeof detail,
             "position=%llu primary_head=%llu primary=%s primary_silent_s=%s%.1f forced=%d%s%s",
             (unsigned long long)r->position, (unsigned long long)r->head, r->primary,
             silent == UINT64_MAX ? "never_answered:" : "",
             silent == UINT64_MAX ? 0.0 : (double)silent / 1000.0, force,
             r->stopped[0] ? " stopped=" : "", r->stopped);
    if (r->hooks.begin(r->hooks.ctx) != CM_OK)
        goto fail;
    if (state_set(r, "promoted", (int64_t)ts_ms) != CM_OK ||
        state_set(r, "applied", (int64_t)r->position) != CM_OK) {
        r->hooks.rollback(r->hooks.ctx);
        goto fail;
    }
    r->hooks.audit(r->hooks.ctx, "archive_promoted", r->svc->name, detail);
    if (r->hooks.commit(r->hooks.ctx) != CM_OK) {
        r->hooks.rollback(r->hooks.ctx);
        goto fail;
    }
    close_sockets(r);
    r->role = R_PROMOTED;
    cm_metric_set(r->m_position, (int64_t)r->position);
    cm_warn("event=archive_promoted %s", detail);
    return CM_OK;
fail:
    snprintf(why, whylen, "the promotion could not be recorded: %s", cm_sql_error(r->db));
    return CM_ERR_DB;
}

/* --------------------------------------------------------------------------------- both */

/* Records behind and age of the oldest of them for a standby at `acked`. */
static void lag_of(archive_replica *r, uint64_t acked, uint64_t *behind, uint64_t *lag_ms)
{
    *behind = r->committed > acked ? r->committed - acked : 0;
    *lag_ms = 0;
    if (*behind) {
        uint64_t ts = input_ts(r, acked + 1);
        if (!ts)
            ts = r->committed_ms;
        uint64_t now = cm_now_ms();
        *lag_ms = now > ts ? now - ts : 0;
    }
}

void archive_replica_tick(archive_replica *r)
{
    if (!r || r->role == R_NONE)
        return;
    uint64_t now = cm_mono_ms();
    if (r->role == R_PRIMARY)
        tick_primary(r, now);
    if (now - r->metrics_mono < 1000)
        return;
    r->metrics_mono = now;
    if (r->role == R_PRIMARY) {
        int n_live;
        live_acked(r, &n_live);
        cm_metric_set(r->m_position, (int64_t)r->committed);
        cm_metric_set(r->m_live, n_live);
        cm_metric_set(r->m_held, (int64_t)r->held_n);
        for (int i = 0; i < MAX_STANDBYS; i++) {
            standby *s = &r->standbys[i];
            if (!s->name[0])
                continue;
            uint64_t behind, lag_ms;
            lag_of(r, s->acked, &behind, &lag_ms);
            cm_metric_set(s->m_behind, (int64_t)behind);
            cm_metric_set(s->m_lag, (int64_t)lag_ms);
        }
    } else {
        cm_metric_set(r->m_position, (int64_t)r->position);
        if (r->role == R_STANDBY) {
            cm_metric_set(r->m_head, (int64_t)r->head);
            uint64_t behind = r->head > r->position ? r->head - r->position : 0;
            /* before the first answer after a restart only "behind" is known: 1 s */
            uint64_t lag_ms = 0;
            if (behind)
                lag_ms = r->applied_ms && r->head_ms > r->applied_ms ? r->head_ms - r->applied_ms
                                                                     : 1;
            cm_metric_set(r->m_behind, (int64_t)behind);
            cm_metric_set(r->m_lag_s, (int64_t)((lag_ms + 999) / 1000));
            cm_metric_set(r->m_silent, r->answered_mono ? (int64_t)(now - r->answered_mono) : -1);
        }
    }
}

void archive_replica_status(archive_replica *r, Suido__ReplicationStatus **out)
{
    Suido__ReplicationStatus *st = &r->status;
    suido__replication_status__init(st);
    st->role = (char *)archive_replica_role(r);
    st->now_ms = cm_now_ms();
    if (r->role == R_PRIMARY) {
        uint64_t now = cm_mono_ms();
        st->position = r->committed;
        size_t n = 0;
        for (int i = 0; i < MAX_STANDBYS; i++) {
            standby *s = &r->standbys[i];
            if (!s->name[0])
                continue;
            Suido__StandbyState *x = &r->sb[n];
            suido__standby_state__init(x);
            uint64_t lag_ms;
            x->name = s->name;
            x->acked = s->acked;
            x->acked_ms = s->asked_wall;
            lag_of(r, s->acked, &x->behind, &lag_ms);
            x->lag_s = (double)lag_ms / 1000.0;
            x->live = standby_live(r, s, now);
            r->sbp[n++] = x;
        }
        st->n_standbys = n;
        st->standbys = r->sbp;
    } else if (r->role != R_NONE) {
        st->position = r->position;
        st->head = r->head;
        st->behind = r->head > r->position ? r->head - r->position : 0;
        st->primary_answered_ms = r->answered_wall;
        st->stopped = r->stopped;
        st->handshakes_refused = r->handshakes_refused;
        st->applied_ms = r->applied_ms;
    }
    *out = st;
}
