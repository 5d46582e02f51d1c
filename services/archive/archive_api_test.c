/* archive_api: the API's one table of rights. Every operation refuses every role below its own
 * (and no session at all, and a peer not on its row) before its handler runs, and each refusal
 * reaches the denied hook (the archive counts and audits it); a standby answers only what its row
 * allows; every ArchiveOp has a row, with the roles the monitor gives its pages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "archive_api.h"
#include "archive_store.h"
#include "cm_audit.h"

typedef struct fake {
    int changes, promotes, statuses, denied;
    char op[32], reason[32], who[65];
} fake;

static cm_err fake_session(void *ctx, const char *token, char who[65], char role[16])
{
    (void)ctx;
    if (!token || (strcmp(token, "viewer") && strcmp(token, "operator") && strcmp(token, "admin")))
        return CM_ERR_DENIED;
    snprintf(who, 65, "op-%s", token);
    snprintf(role, 16, "%s", token);
    return CM_OK;
}

static cm_err fake_change(void *ctx, Suido__ArchiveRequest *q, const char *who)
{
    (void)q;
    (void)who;
    ((fake *)ctx)->changes++;
    return CM_ERR_UNKNOWN;
}

static void fake_status(void *ctx, Suido__ReplicationStatus **st)
{
    static Suido__ReplicationStatus s = SUIDO__REPLICATION_STATUS__INIT;
    ((fake *)ctx)->statuses++;
    *st = &s;
}

static cm_err fake_promote(void *ctx, int force, const char *who, char *why, size_t len)
{
    (void)force;
    (void)who;
    snprintf(why, len, "not following");
    ((fake *)ctx)->promotes++;
    return CM_ERR_INVAL;
}

static void fake_denied(void *ctx, const char *op, const char *peer, const char *who,
                        const char *reason)
{
    (void)peer;
    fake *f = ctx;
    f->denied++;
    snprintf(f->op, sizeof f->op, "%s", op);
    snprintf(f->reason, sizeof f->reason, "%s", reason);
    snprintf(f->who, sizeof f->who, "%s", who);
}

static cm_sql *open_db(char *path)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    cm_sql *db = NULL;
    assert_int_equal(cm_sql_open_as(CM_SQL_SQLITE, path, 0, &db, NULL, 0), CM_OK);
    assert_int_equal(archive_store_create_schema(db, "test"), CM_OK);
    return db;
}

static void close_db(cm_sql **db, const char *path)
{
    cm_sql_close(db);
    char side[64];
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

/* The first peer of a row's list. */
static const char *first_peer(const archive_api_op *row, char out[32])
{
    snprintf(out, 32, "%s", row->peers);
    char *comma = strchr(out, ',');
    if (comma)
        *comma = '\0';
    return out;
}

/* Asks op as token from peer; returns the code; *handled: whether any handler left a trace. */
static cm_err ask(const archive_api_hooks *h, cm_sql *db, const char *peer, int standby,
                  const archive_api_op *row, const char *token, int *handled)
{
    fake *f = h->ctx;
    fake before = *f;
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = row->op;
    q.token = (char *)token;
    q.case_id = 1;
    q.from_ms = 1795708800000ull;
    q.to_ms = q.from_ms + 3600000;
    q.gateway_id = "gw-0001";
    q.channel = "reservoir.level";
    q.cause = "c";
    q.action = "a";
    Suido__ArchiveReply rep = SUIDO__ARCHIVE_REPLY__INIT;
    char why[400];
    cm_err rc = archive_api_dispatch(h, db, peer, standby, &q, q.from_ms + 7200000, &rep, why,
                                     sizeof why);
    /* a handler that ran answered something, or asked the archive to act */
    *handled = suido__archive_reply__get_packed_size(&rep) > 0 || f->changes != before.changes ||
               f->promotes != before.promotes || f->statuses != before.statuses;
    rep.replication = NULL; /* the replica's */
    archive_api_free(&rep);
    return rc;
}

static void test_every_operation_refuses_roles_below_its_own(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-api-test-XXXXXX";
    cm_sql *db = open_db(path);
    fake f = {0};
    archive_api_hooks h = {.ctx = &f, .session = fake_session, .change_case = fake_change,
                           .repl_status = fake_status, .repl_promote = fake_promote,
                           .denied = fake_denied};
    static const char *const TOKENS[] = {"expired", "viewer", "operator", "admin"};
    size_t n = 0;
    const archive_api_op *t = archive_api_table(&n);
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        char peer[32];
        first_peer(&t[i], peer);
        for (archive_role r = ARCHIVE_ROLE_NONE; r <= ARCHIVE_ROLE_ADMIN; r++) {
            int denied = f.denied, handled = 0;
            cm_err rc = ask(&h, db, peer, 0, &t[i], TOKENS[r], &handled);
            if (r < t[i].min_role) {
                assert_int_equal(rc, CM_ERR_DENIED);
                assert_false(handled);
                assert_int_equal(f.denied, denied + 1); /* counted and audited, once */
                assert_string_equal(f.op, t[i].name);
                assert_string_equal(f.reason, r == ARCHIVE_ROLE_NONE ? "no_session" : "role");
            } else {
                assert_int_equal(f.denied, denied);
                assert_int_not_equal(rc, CM_ERR_DENIED);
            }
        }
        /* a peer that is not on the row, even with an admin's session */
        int handled = 0, denied = f.denied;
        const char *other = strstr(t[i].peers, "monitor") ? "gate" : "monitor";
        assert_int_equal(ask(&h, db, other, 0, &t[i], "admin", &handled), CM_ERR_DENIED);
        assert_false(handled);
        assert_int_equal(f.denied, denied + 1);
        assert_string_equal(f.reason, "peer");
        /* a standby answers only what its row says */
        cm_err rc = ask(&h, db, peer, 1, &t[i], "admin", &handled);
        if (!t[i].on_standby) {
            assert_int_equal(rc, CM_ERR_UNAVAILABLE);
            assert_false(handled);
        }
    }
    /* an operation nobody defined */
    archive_api_op unknown = {99, "x", "monitor", ARCHIVE_ROLE_VIEWER, 0, NULL};
    int handled = 0, denied = f.denied;
    assert_int_equal(ask(&h, db, "monitor", 0, &unknown, "admin", &handled), CM_ERR_INVAL);
    assert_int_equal(f.denied, denied + 1);
    assert_string_equal(f.reason, "unknown_op");
    close_db(&db, path);
}

/* The rights themselves: every ArchiveOp has exactly one row, with the monitor's page rights
 * (viewer: overview, trends, alerts, planning; operator: changing cases, the command log; admin:
 * the audit log and its chain check, promotion). */
static void test_the_table_covers_every_op_with_the_monitors_rights(void **state)
{
    (void)state;
    static const struct {
        int op;
        archive_role role;
    } WANT[] = {
        {SUIDO__ARCHIVE_OP__ALERT_LIST, ARCHIVE_ROLE_VIEWER},
        {SUIDO__ARCHIVE_OP__ALERT_SHOW, ARCHIVE_ROLE_VIEWER},
        {SUIDO__ARCHIVE_OP__ALERT_ACK, ARCHIVE_ROLE_OPERATOR},
        {SUIDO__ARCHIVE_OP__ALERT_CLOSE, ARCHIVE_ROLE_OPERATOR},
        {SUIDO__ARCHIVE_OP__REPL_STATUS, ARCHIVE_ROLE_VIEWER},
        {SUIDO__ARCHIVE_OP__REPL_PROMOTE, ARCHIVE_ROLE_ADMIN},
        {SUIDO__ARCHIVE_OP__TREND, ARCHIVE_ROLE_VIEWER},
        {SUIDO__ARCHIVE_OP__GATEWAY_STATS, ARCHIVE_ROLE_VIEWER},
        {SUIDO__ARCHIVE_OP__COMMAND_LOG, ARCHIVE_ROLE_OPERATOR},
        {SUIDO__ARCHIVE_OP__AUDIT_LIST, ARCHIVE_ROLE_ADMIN},
        {SUIDO__ARCHIVE_OP__AUDIT_VERIFY, ARCHIVE_ROLE_ADMIN},
        {SUIDO__ARCHIVE_OP__PLANNING, ARCHIVE_ROLE_VIEWER},
    };
    size_t n = 0;
    const archive_api_op *t = archive_api_table(&n);
    /* every value of the enum but UNSPECIFIED */
    assert_int_equal(n, suido__archive_op__descriptor.n_values - 1);
    assert_int_equal(n, sizeof WANT / sizeof WANT[0]);
    for (size_t k = 0; k < n; k++) {
        int rows = 0;
        for (size_t i = 0; i < n; i++)
            if (t[i].op == WANT[k].op) {
                rows++;
                assert_int_equal(t[i].min_role, WANT[k].role);
                assert_non_null(t[i].handler);
            }
        assert_int_equal(rows, 1);
    }
}

static uint8_t g_head[CM_AUDIT_HASH_LEN];
static uint64_t g_head_seq;

static cm_err fake_checkpoint(void *ctx, Suido__AuditCheckpoint **cp)
{
    (void)ctx;
    Suido__AuditCheckpoint *c = calloc(1, sizeof *c);
    assert_non_null(c);
    suido__audit_checkpoint__init(c);
    c->seq = g_head_seq;
    c->ts_ms = 1795708800000ull;
    c->head_sha256.data = malloc(CM_AUDIT_HASH_LEN);
    memcpy(c->head_sha256.data, g_head, CM_AUDIT_HASH_LEN);
    c->head_sha256.len = CM_AUDIT_HASH_LEN;
    *cp = c;
    return CM_OK;
}

/* The chain check compares the log with the registry's checkpoint: a log cut at its end is a good
 * chain, and only the checkpoint shows that entries are missing. */
static void test_audit_verify_reports_a_log_cut_short_of_the_checkpoint(void **state)
{
    (void)state;
    char path[] = "/tmp/suido-api-test-XXXXXX";
    cm_sql *db = open_db(path);
    uint8_t prev[CM_AUDIT_HASH_LEN] = {0};
    for (uint64_t seq = 1; seq <= 5; seq++) {
        cm_audit_entry e = {seq, 1000 + seq, "archive", "request_denied", "x", "x", "d"};
        assert_int_equal(cm_audit_hash(prev, &e, prev), CM_OK);
        cm_sql_stmt *st = NULL;
        assert_int_equal(cm_sql_prepare(db, "INSERT INTO audit(seq,ts_ms,source,event,subject,"
                                            "actor,detail,hash) VALUES(?,?,?,?,?,?,?,?)", &st),
                         CM_OK);
        cm_sql_bind_int64(st, 1, (int64_t)seq);
        cm_sql_bind_int64(st, 2, (int64_t)e.ts_ms);
        cm_sql_bind_text(st, 3, e.source);
        cm_sql_bind_text(st, 4, e.event);
        cm_sql_bind_text(st, 5, e.subject);
        cm_sql_bind_text(st, 6, e.actor);
        cm_sql_bind_text(st, 7, e.detail);
        cm_sql_bind_blob(st, 8, prev, sizeof prev);
        assert_int_equal(cm_sql_step(st), CM_SQL_DONE);
        cm_sql_finalize(&st);
        if (seq == 4) {
            memcpy(g_head, prev, sizeof prev);
            g_head_seq = 4;
        }
    }
    fake f = {0};
    archive_api_hooks h = {.ctx = &f, .session = fake_session, .change_case = fake_change,
                           .repl_status = fake_status, .repl_promote = fake_promote,
                           .denied = fake_denied, .checkpoint = fake_checkpoint};
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__AUDIT_VERIFY;
    q.token = "admin";
    for (int cut = 0; cut < 2; cut++) {
        if (cut) /* the two newest entries removed: what is left is still a good chain */
            assert_int_equal(cm_sql_exec(db, "DELETE FROM audit WHERE seq >= 4"), CM_OK);
        Suido__ArchiveReply rep = SUIDO__ARCHIVE_REPLY__INIT;
        char why[400];
        assert_int_equal(archive_api_dispatch(&h, db, "monitor", 0, &q, 2000, &rep, why,
                                              sizeof why),
                         CM_OK);
        const Suido__AuditCheck *c = rep.audit_check;
        assert_non_null(c);
        assert_int_equal(c->checkpoint_seq, 4);
        assert_int_equal(c->first_bad_seq, 0); /* the chain itself is whole */
        if (!cut) {
            assert_true(c->intact);
            assert_string_equal(c->checkpoint, "verified");
        } else {
            assert_false(c->intact);
            assert_string_equal(c->checkpoint, "truncated");
            assert_non_null(strstr(c->problem, "ends at entry 3"));
        }
        archive_api_free(&rep);
    }
    close_db(&db, path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_operation_refuses_roles_below_its_own),
        cmocka_unit_test(test_the_table_covers_every_op_with_the_monitors_rights),
        cmocka_unit_test(test_audit_verify_reports_a_log_cut_short_of_the_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
