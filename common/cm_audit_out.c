/* cm_audit_out: a process's audit events to the archive, spooled on disk while they cannot be
 * sent (see cm_audit_out.h for the contract). Owns the PUSH socket it sends them on, the spool
 * (a SQLite file, table audit_spool, one row per event, oldest first by id), the file lock that
 * keeps the spool to one process, and the lock that lets any thread record. */
#include "cm_audit_out.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_log.h"
#include "cm_sql.h"
#include "cm_time.h"
#include "suido.pb-c.h"

#define SPOOL_VERSION 1
#define FLUSH_BUDGET_US 50000 /* of one flush: the caller's loop keeps its rhythm */

/* AUTOINCREMENT: ids are never reused, so every event appended has a higher id than any sent
 * before it (flush_one reads after the last one sent), even once the table was empty. */
static const char SCHEMA[] = "CREATE TABLE IF NOT EXISTS audit_spool("
                             " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                             " ts_ms INTEGER NOT NULL, source TEXT NOT NULL, event TEXT NOT NULL,"
                             " subject TEXT NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL)";

enum { ST_APPEND, ST_OLDEST, ST_DELETE, ST__COUNT };
static const char *const STMT[ST__COUNT] = {
    [ST_APPEND] = "INSERT INTO audit_spool(ts_ms, source, event, subject, actor, detail) "
                  "VALUES(?, ?, ?, ?, ?, ?)",
    [ST_OLDEST] = "SELECT id, ts_ms, source, event, subject, actor, detail FROM audit_spool "
                  "WHERE id > ? ORDER BY id LIMIT 1",
    [ST_DELETE] = "DELETE FROM audit_spool WHERE id <= ?",
};

struct cm_audit_out {
    pthread_mutex_t mu; /* everything below */
    void *sock;
    cm_sql *db;
    cm_sql_stmt *st[ST__COUNT];
    char *path;
    int lock_fd;
    uint64_t max_events;
    uint64_t n;         /* events in the spool waiting to be sent */
    int64_t sent_upto;  /* rows up to this id were sent (deleted, or still to be) */
    int undeleted;      /* sent rows could not be deleted: tried again at each flush */
    int unreadable;     /* the last read of the spool failed (logged once) */
    uint64_t delivered; /* spooled events sent since the spool last started holding */
    int holding;        /* the spool has held events since it was last empty */
    cm_metric *spooled, *dropped, *late;
};

/* ------------------------------------------------------------------ sending */

/* The frame of one event. received_ms is the time it is handed over (the archive's pipeline age
 * measures this hop); the event keeps the time it was made. */
static cm_err send_event(cm_audit_out *a, const Suido__AuditEvent *e)
{
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.received_ms = cm_now_ms();
    m.audit = (Suido__AuditEvent *)e;
    return cm_zsend_pb(a->sock, &m.base, ZMQ_DONTWAIT);
}

/* What a StageMessage carrying e takes packed, with room for received_ms: over CM_ZMQ_MAX_MSG it
 * could never be sent, and must not stay first in the spool. */
static int sendable(const Suido__AuditEvent *e)
{
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.received_ms = UINT64_MAX;
    m.audit = (Suido__AuditEvent *)e;
    return protobuf_c_message_get_packed_size(&m.base) <= CM_ZMQ_MAX_MSG;
}

/* An event that is lost: counted and logged with its fields, the only trace left of it. */
static void refuse(cm_audit_out *a, const Suido__AuditEvent *e, const char *why)
{
    cm_metric_inc(a->dropped);
    char event[100], subject[200], actor[200], detail[600];
    cm_error("path=%s audit_event=\"%s\" subject=\"%s\" actor=\"%s\" ts_ms=%" PRIu64
             " detail=\"%s\" error=\"audit event dropped: %s\" alarm=1",
             a->path, cm_log_escape(event, sizeof event, e->event),
             cm_log_escape(subject, sizeof subject, e->subject),
             cm_log_escape(actor, sizeof actor, e->actor), e->ts_ms,
             cm_log_escape(detail, sizeof detail, e->detail), why);
}

static void set_count(cm_audit_out *a, uint64_t n)
{
    a->n = n;
    cm_metric_set(a->spooled, (int64_t)n);
}

/* ------------------------------------------------------------------ the spool */

static cm_err append(cm_audit_out *a, const Suido__AuditEvent *e)
{
    cm_sql_stmt *st = a->st[ST_APPEND];
    cm_sql_bind_int64(st, 1, (int64_t)e->ts_ms);
    cm_sql_bind_text(st, 2, e->source);
    cm_sql_bind_text(st, 3, e->event);
    cm_sql_bind_text(st, 4, e->subject);
    cm_sql_bind_text(st, 5, e->actor);
    cm_sql_bind_text(st, 6, e->detail);
    int rc = cm_sql_step(st);
    cm_sql_reset(st);
    return rc == CM_SQL_DONE ? CM_OK : CM_ERR_DB;
}

/* Deletes the rows sent (id <= sent_upto). A row that cannot be deleted is not sent again by
 * this process (rows are read after sent_upto); a restart before its deletion sends it again. */
static void delete_sent(cm_audit_out *a)
{
    cm_sql_stmt *st = a->st[ST_DELETE];
    cm_sql_bind_int64(st, 1, a->sent_upto);
    int failed = cm_sql_step(st) != CM_SQL_DONE;
    cm_sql_reset(st);
    if (failed && !a->undeleted)
        cm_error("path=%s id=%" PRId64 " error=\"audit spool: cannot delete sent events, they "
                 "are sent again after a restart: %s\" alarm=1",
                 a->path, a->sent_upto, cm_sql_error(a->db));
    else if (!failed && a->undeleted)
        cm_info("path=%s event=audit_spool_deletes_resumed", a->path);
    a->undeleted = failed;
}

cm_err cm_audit_out_record(cm_audit_out *a, const char *source, const char *event,
                           const char *subject, const char *actor, const char *detail)
{
    if (!a)
        return CM_OK;
    assert(source && event);
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = cm_now_ms();
    e.source = (char *)source;
    e.event = (char *)event;
    e.subject = (char *)(subject ? subject : "");
    e.actor = (char *)(actor ? actor : source);
    e.detail = (char *)(detail ? detail : "");
    if (!sendable(&e)) {
        pthread_mutex_lock(&a->mu);
        refuse(a, &e, "too big to send");
        pthread_mutex_unlock(&a->mu);
        return CM_ERR_TOO_BIG;
    }
    cm_err rc = CM_OK;
    pthread_mutex_lock(&a->mu);
    if (a->n == 0 && send_event(a, &e) == CM_OK)
        goto out;
    if (a->n >= a->max_events) {
        refuse(a, &e, "spool full");
        rc = CM_ERR_DB;
    } else if (append(a, &e) != CM_OK) {
        refuse(a, &e, cm_sql_error(a->db));
        rc = CM_ERR_DB;
    } else {
        if (!a->holding) {
            a->holding = 1;
            a->delivered = 0;
            cm_warn("path=%s event=audit_spool_holding reason=\"the archive is not connected or "
                    "not taking events\"",
                    a->path);
        }
        set_count(a, a->n + 1);
        if (a->n == a->max_events)
            cm_error("path=%s events=%" PRIu64 " error=\"audit spool full: new audit events are "
                     "refused until the archive takes the waiting ones\" alarm=1",
                     a->path, a->n);
    }
out:
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* Sends the oldest spooled event and deletes it. 1: done (delivered, or an unsendable one
 * dropped), 0: nothing to send or the send failed, -1: the spool failed. */
static int flush_one(cm_audit_out *a)
{
    cm_sql_stmt *st = a->st[ST_OLDEST];
    cm_sql_bind_int64(st, 1, a->sent_upto);
    int step = cm_sql_step(st);
    if (step == CM_SQL_FAIL && !a->unreadable)
        cm_error("path=%s error=\"audit spool cannot be read: %s\" alarm=1", a->path,
                 cm_sql_error(a->db));
    a->unreadable = step == CM_SQL_FAIL;
    if (step != CM_SQL_ROW) {
        cm_sql_reset(st);
        if (step == CM_SQL_DONE) { /* cannot happen: said loudly; the spool is what it holds */
            cm_error("path=%s events=%" PRIu64 " after_id=%" PRId64 " error=\"audit spool holds "
                     "fewer events than counted\" alarm=1",
                     a->path, a->n, a->sent_upto);
            set_count(a, 0);
        }
        return step == CM_SQL_DONE ? 0 : -1;
    }
    int64_t id = cm_sql_column_int64(st, 0);
    Suido__AuditEvent e = SUIDO__AUDIT_EVENT__INIT;
    e.ts_ms = (uint64_t)cm_sql_column_int64(st, 1);
    e.source = (char *)cm_sql_column_text(st, 2);
    e.event = (char *)cm_sql_column_text(st, 3);
    e.subject = (char *)cm_sql_column_text(st, 4);
    e.actor = (char *)cm_sql_column_text(st, 5);
    e.detail = (char *)cm_sql_column_text(st, 6);
    int sent = 0;
    if (!sendable(&e))
        refuse(a, &e, "too big to send"); /* written by something else: it would block the rest */
    else if (send_event(a, &e) == CM_OK)
        sent = 1;
    else {
        cm_sql_reset(st);
        return 0;
    }
    cm_sql_reset(st); /* the row's text is not used after this */
    a->sent_upto = id;
    set_count(a, a->n ? a->n - 1 : 0);
    if (sent) {
        cm_metric_inc(a->late);
        a->delivered++;
    }
    delete_sent(a);
    return 1;
}

size_t cm_audit_out_flush(cm_audit_out *a)
{
    if (!a)
        return 0;
    pthread_mutex_lock(&a->mu);
    uint64_t before = a->delivered;
    if (a->n > 0 || a->undeleted) {
        /* Deletions are not fsynced (synchronous=NORMAL): losing one to a power failure sends an
         * event twice. Appends are (FULL), and each fsync also keeps the deletions before it. */
        (void)cm_sql_exec(a->db, "PRAGMA synchronous=NORMAL");
        if (a->undeleted)
            delete_sent(a);
        uint64_t t0 = cm_mono_us();
        while (a->n > 0 && cm_mono_us() - t0 < FLUSH_BUDGET_US) {
            if (flush_one(a) != 1)
                break;
        }
        if (cm_sql_exec(a->db, "PRAGMA synchronous=FULL") != CM_OK)
            cm_error("path=%s error=\"audit spool: cannot make appends durable again: %s\" "
                     "alarm=1",
                     a->path, cm_sql_error(a->db));
    }
    size_t done = (size_t)(a->delivered - before);
    if (a->holding && a->n == 0) {
        a->holding = 0;
        cm_info("path=%s event=audit_spool_drained delivered=%" PRIu64, a->path, a->delivered);
    }
    pthread_mutex_unlock(&a->mu);
    return done;
}

uint64_t cm_audit_out_spooled(cm_audit_out *a)
{
    pthread_mutex_lock(&a->mu);
    uint64_t n = a->n;
    pthread_mutex_unlock(&a->mu);
    return n;
}

const char *cm_audit_out_path(const cm_audit_out *a) { return a->path; }

/* ------------------------------------------------------------------ opening, closing */

/* Creates the file (0600: events name operators and sources) and locks it for this process:
 * two processes on one spool would send each other's events. The lock is a flock on a
 * descriptor of our own, held until the spool is closed; SQLite's own locks are fcntl locks,
 * which this descriptor does not touch as long as it outlives the connection. */
static cm_err lock_file(cm_audit_out *a, char *why, size_t len)
{
    a->lock_fd = open(a->path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (a->lock_fd < 0) {
        snprintf(why, len, "%s", strerror(errno));
        return CM_ERR_IO;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(why, len, "%s",
                 errno == EWOULDBLOCK ? "in use by another process (each process needs a spool "
                                        "of its own: its own state_dir or [audit] spool)"
                                      : strerror(errno));
        return errno == EWOULDBLOCK ? CM_ERR_DENIED : CM_ERR_IO;
    }
    return CM_OK;
}

/* The one integer a query answers. */
static cm_err count_rows(cm_audit_out *a, const char *sql, int64_t *n)
{
    cm_sql_stmt *st = NULL;
    cm_err rc = cm_sql_prepare(a->db, sql, &st);
    if (rc == CM_OK && cm_sql_step(st) != CM_SQL_ROW)
        rc = CM_ERR_DB;
    if (rc == CM_OK)
        *n = cm_sql_column_int64(st, 0);
    cm_sql_finalize(&st);
    return rc;
}

static cm_err open_db(cm_audit_out *a, char *why, size_t len)
{
    if (cm_sql_open_as(CM_SQL_SQLITE, a->path, 0, &a->db, why, len) != CM_OK)
        return CM_ERR_DB;
    int64_t version = 0, foreign = 0;
    if (cm_sql_get_version(a->db, &version) != CM_OK ||
        count_rows(a, "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'audit_spool%' "
                      "AND name NOT LIKE 'sqlite_%'", &foreign) != CM_OK) {
        snprintf(why, len, "%s", cm_sql_error(a->db));
        return CM_ERR_DB;
    }
    if (version > SPOOL_VERSION || foreign) {
        /* a newer program's spool, or another database named by mistake: neither is touched */
        if (foreign)
            snprintf(why, len, "a database of something else, not an audit spool");
        else
            snprintf(why, len, "spool format %" PRId64 " is newer than this program's (%d)",
                     version, SPOOL_VERSION);
        return CM_ERR_DB;
    }
    if (cm_sql_exec(a->db, SCHEMA) != CM_OK ||
        (version < SPOOL_VERSION && cm_sql_set_version(a->db, SPOOL_VERSION) != CM_OK)) {
        snprintf(why, len, "%s", cm_sql_error(a->db));
        return CM_ERR_DB;
    }
    for (int i = 0; i < ST__COUNT; i++)
        if (cm_sql_prepare(a->db, STMT[i], &a->st[i]) != CM_OK) {
            snprintf(why, len, "%s", cm_sql_error(a->db));
            return CM_ERR_DB;
        }
    int64_t n = 0;
    if (count_rows(a, "SELECT count(*) FROM audit_spool", &n) != CM_OK) {
        snprintf(why, len, "%s", cm_sql_error(a->db));
        return CM_ERR_DB;
    }
    set_count(a, (uint64_t)n);
    return CM_OK;
}

cm_err cm_audit_out_open(void **sock, const char *path, uint64_t max_events, cm_metrics *mx,
                         cm_audit_out **out, char *why, size_t len)
{
    char scratch[1];
    if (!why || !len) {
        why = scratch;
        len = sizeof scratch;
    }
    why[0] = '\0';
    *out = NULL;
    cm_audit_out *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        cm_zsock_close(sock);
        snprintf(why, len, "out of memory");
        return CM_ERR_NOMEM;
    }
    pthread_mutex_init(&a->mu, NULL);
    a->lock_fd = -1;
    a->sock = *sock;
    *sock = NULL;
    a->max_events = max_events ? max_events : 1;
    a->spooled = cm_metric_gauge(mx, "suido_audit_spooled",
                                 "audit events waiting in the spool for the archive");
    a->dropped = cm_metric_counter(mx, "suido_audit_spool_dropped_total",
                                   "audit events lost: the spool was full or could not store them");
    a->late = cm_metric_counter(mx, "suido_audit_delivered_late_total",
                                "audit events sent from the spool, after the archive was away");
    cm_err rc = lock_file(a, why, len);
    if (rc == CM_OK)
        rc = open_db(a, why, len);
    if (rc != CM_OK) {
        cm_audit_out_destroy(&a);
        return rc;
    }
    if (a->n > 0) {
        a->holding = 1;
        cm_info("path=%s events=%" PRIu64 " event=audit_spool_loaded", a->path, a->n);
    }
    *out = a;
    return CM_OK;
}

void cm_audit_out_destroy(cm_audit_out **ap)
{
    if (!ap || !*ap)
        return;
    cm_audit_out *a = *ap;
    *ap = NULL;
    if (a->db && a->sock) {
        cm_audit_out_flush(a);
        if (a->n > 0)
            cm_info("path=%s events=%" PRIu64 " event=audit_spool_kept", a->path, a->n);
    }
    cm_zsock_close(&a->sock); /* the socket's linger lets what was sent go out */
    for (int i = 0; i < ST__COUNT; i++)
        cm_sql_finalize(&a->st[i]);
    cm_sql_close(&a->db);
    if (a->lock_fd >= 0)
        close(a->lock_fd); /* after the connection: closing it releases no lock of SQLite's */
    pthread_mutex_destroy(&a->mu);
    free(a->path);
    free(a);
}

/* ------------------------------------------------------------------ the service's output */

/* cm_svc_on_security: refused handshakes (source and actor "zmq") and refusals of the metrics
 * endpoint ("https"). */
static void security_event(void *ctx, const char *event, const char *subject, const char *detail)
{
    const char *via = cm_svc_security_via(event);
    cm_audit_out_record(ctx, via, event, subject, via, detail);
}

void cm_audit_out_start(cm_svc *s)
{
    if (!cm_conf_get(s->conf, "output archive", "connect")) {
        cm_warn("event=audit_off reason=\"no [output archive]: this process audits nothing\"");
        return;
    }
    char err[CM_CONF_ERRLEN], path[4096], why[512];
    void *sock = NULL;
    if (cm_zsock_push_conf_immediate(s->zctx, s->conf, "output archive", &s->keys, &sock, err))
        cm_svc_die(s, "%s", err);
    cm_svc_path(s, "audit", "spool", "audit-spool.db", path, sizeof path);
    cm_err rc = cm_audit_out_open(&sock, path, CM_AUDIT_OUT_MAX_EVENTS, s->metrics,
                                  &s->audit_out, why, sizeof why);
    if (rc != CM_OK)
        cm_svc_die(s, "%s: cannot open the audit spool: %s", path, why);
    cm_svc_on_security(s, security_event, s->audit_out);
}
