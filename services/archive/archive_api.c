/* archive_api: see archive_api.h. */
#include "archive_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive_cases.h"
#include "archive_query.h"
#include "cm_audit_checkpoint.h"
#include "cm_svc.h"

archive_role archive_role_parse(const char *s)
{
    if (!s)
        return ARCHIVE_ROLE_NONE;
    return strcmp(s, "admin") == 0      ? ARCHIVE_ROLE_ADMIN
           : strcmp(s, "operator") == 0 ? ARCHIVE_ROLE_OPERATOR
           : strcmp(s, "viewer") == 0   ? ARCHIVE_ROLE_VIEWER
                                        : ARCHIVE_ROLE_NONE;
}

const char *archive_role_name(archive_role r)
{
    static const char *const NAMES[] = {"none", "viewer", "operator", "admin"};
    return r <= ARCHIVE_ROLE_ADMIN ? NAMES[r] : "none";
}

/* ------------------------------------------------------------------ alert cases */

typedef struct case_list {
    Suido__AlertCase **items;
    size_t n, cap;
} case_list;

static char *dup_text(const char *s) { return strdup(s ? s : ""); }

static void case_collect(void *ctx, const Suido__AlertCase *c)
{
    case_list *l = ctx;
    if (l->n == l->cap)
        return;
    Suido__AlertCase *d = malloc(sizeof *d);
    if (!d)
        return;
    *d = *c;
    d->alert_id = dup_text(c->alert_id);
    d->gateway_id = dup_text(c->gateway_id);
    d->site = dup_text(c->site);
    d->channel = dup_text(c->channel);
    d->rule = dup_text(c->rule);
    d->state = dup_text(c->state);
    d->evidence = dup_text(c->evidence);
    d->acked_by = dup_text(c->acked_by);
    d->closed_by = dup_text(c->closed_by);
    d->cause = dup_text(c->cause);
    d->action = dup_text(c->action);
    l->items[l->n++] = d;
}

static void case_list_free(Suido__AlertCase **items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        Suido__AlertCase *c = items[i];
        char *strs[] = {c->alert_id, c->gateway_id, c->site, c->channel, c->rule, c->state,
                        c->evidence, c->acked_by, c->closed_by, c->cause, c->action};
        for (size_t k = 0; k < sizeof strs / sizeof strs[0]; k++)
            free(strs[k]);
        free(c);
    }
    free(items);
}

/* A list of at most cap cases for rep (its items owned by rep once answered). */
static int case_list_init(case_list *l, size_t cap)
{
    l->n = 0;
    l->items = calloc(cap, sizeof *l->items);
    l->cap = l->items ? cap : 0;
    return l->items != NULL;
}

static size_t case_cap(const Suido__ArchiveRequest *q)
{
    return q->limit && q->limit < 1000 ? q->limit : 100;
}

static cm_err alert_list(archive_api_call *c)
{
    case_list l;
    if (!case_list_init(&l, case_cap(c->q)))
        return CM_ERR_NOMEM;
    cm_err rc = archive_cases_list(c->db, c->q->all, (unsigned)l.cap, case_collect, &l);
    c->rep->cases = l.items;
    c->rep->n_cases = l.n;
    return rc;
}

/* The case and the closed cases of its kind on its asset. */
static cm_err alert_show(archive_api_call *c)
{
    case_list l, past = {0};
    if (!case_list_init(&l, 1))
        return CM_ERR_NOMEM;
    cm_err rc = archive_cases_get(c->db, c->q->case_id, case_collect, &l);
    if (rc == CM_OK && l.n == 1) {
        if (!case_list_init(&past, 20))
            rc = CM_ERR_NOMEM;
        else
            rc = archive_cases_past(c->db, l.items[0]->alert_id, c->q->case_id, 20, case_collect,
                                    &past);
    }
    c->rep->cases = l.items;
    c->rep->n_cases = l.n;
    c->rep->past = past.items;
    c->rep->n_past = past.n;
    return rc;
}

/* Acknowledge or close; the case as it is afterwards. */
static cm_err alert_change(archive_api_call *c)
{
    cm_err rc = c->hooks->change_case(c->hooks->ctx, c->q, c->who);
    if (rc == CM_ERR_DENIED && c->q->op == SUIDO__ARCHIVE_OP__ALERT_CLOSE)
        snprintf(c->why, c->why_len, "the condition is still active: acknowledge it now, close "
                                     "it with cause and action once it has cleared (or once "
                                     "its gateway is revoked or disposed)");
    if (rc != CM_OK)
        return rc;
    case_list l;
    if (!case_list_init(&l, 1))
        return CM_ERR_NOMEM;
    rc = archive_cases_get(c->db, c->q->case_id, case_collect, &l);
    c->rep->cases = l.items;
    c->rep->n_cases = l.n;
    return rc;
}

/* ------------------------------------------------------------------ replication */

static cm_err repl_status(archive_api_call *c)
{
    c->hooks->repl_status(c->hooks->ctx, &c->rep->replication);
    return CM_OK;
}

static cm_err repl_promote(archive_api_call *c)
{
    cm_err rc = c->hooks->repl_promote(c->hooks->ctx, c->q->force, c->who, c->why, c->why_len);
    c->hooks->repl_status(c->hooks->ctx, &c->rep->replication);
    return rc;
}

/* ------------------------------------------------------------------ the monitor's reads */

static cm_err read_op(archive_api_call *c)
{
    return archive_query_answer(c->db, c->q, c->now_ms, c->rep);
}

/* The chain, then whether it reaches the registry's latest signed checkpoint: a log cut at its
 * end is still a good chain, and only the checkpoint shows it (cm_audit_checkpoint.h). */
static cm_err audit_verify(archive_api_call *c)
{
    cm_err rc = archive_query_answer(c->db, c->q, c->now_ms, c->rep);
    Suido__AuditCheck *chk = c->rep->audit_check;
    if (rc != CM_OK || !chk)
        return rc;
    const char *state = "not_configured";
    Suido__AuditCheckpoint *cp = NULL;
    cm_err got = c->hooks->checkpoint ? c->hooks->checkpoint(c->hooks->ctx, &cp) : CM_ERR_CONFIG;
    char why[400] = "";
    if (got == CM_OK) {
        cm_audit_check_result chain = {.entries = chk->entries};
        int reached = cm_audit_checkpoint_reached(c->db, &chain, cp, why, sizeof why);
        chk->checkpoint_seq = cp->seq;
        chk->checkpoint_ms = cp->ts_ms;
        if (reached < 0) {
            rc = CM_ERR_DB;
            state = "unavailable";
        } else {
            state = reached ? "verified" : "truncated";
        }
        if (reached == 0) {
            chk->intact = 0;
            if (!*chk->problem) { /* a broken chain's own problem comes first */
                char *p = strdup(why);
                if (p) {
                    free(chk->problem);
                    chk->problem = p;
                }
            }
        }
        suido__audit_checkpoint__free_unpacked(cp, NULL);
    } else {
        state = got == CM_ERR_UNKNOWN       ? "none"
                : got == CM_ERR_SIGNATURE   ? "bad_signature"
                : got == CM_ERR_CONFIG      ? "not_configured"
                                            : "unavailable";
        if (got == CM_ERR_SIGNATURE)
            chk->intact = 0;
    }
    char *st = strdup(state);
    if (!st)
        return CM_ERR_NOMEM;
    free(chk->checkpoint);
    chk->checkpoint = st;
    return rc;
}

/* ------------------------------------------------------------------ the table */

static const archive_api_op TABLE[] = {
    {SUIDO__ARCHIVE_OP__ALERT_LIST, "alert_list", "suidoctl,monitor", ARCHIVE_ROLE_VIEWER, 0,
     alert_list},
    {SUIDO__ARCHIVE_OP__ALERT_SHOW, "alert_show", "suidoctl,monitor", ARCHIVE_ROLE_VIEWER, 0,
     alert_show},
    {SUIDO__ARCHIVE_OP__ALERT_ACK, "alert_ack", "suidoctl,monitor", ARCHIVE_ROLE_OPERATOR, 0,
     alert_change},
    {SUIDO__ARCHIVE_OP__ALERT_CLOSE, "alert_close", "suidoctl,monitor", ARCHIVE_ROLE_OPERATOR, 0,
     alert_change},
    {SUIDO__ARCHIVE_OP__REPL_STATUS, "repl_status", "suidoctl", ARCHIVE_ROLE_VIEWER, 1,
     repl_status},
    {SUIDO__ARCHIVE_OP__REPL_PROMOTE, "repl_promote", "suidoctl", ARCHIVE_ROLE_ADMIN, 1,
     repl_promote},
    {SUIDO__ARCHIVE_OP__TREND, "trend", "monitor", ARCHIVE_ROLE_VIEWER, 0, read_op},
    {SUIDO__ARCHIVE_OP__GATEWAY_STATS, "gateway_stats", "monitor", ARCHIVE_ROLE_VIEWER, 0,
     read_op},
    {SUIDO__ARCHIVE_OP__PLANNING, "planning", "monitor", ARCHIVE_ROLE_VIEWER, 0, read_op},
    {SUIDO__ARCHIVE_OP__COMMAND_LOG, "command_log", "monitor", ARCHIVE_ROLE_OPERATOR, 0,
     read_op},
    {SUIDO__ARCHIVE_OP__AUDIT_LIST, "audit_list", "monitor", ARCHIVE_ROLE_ADMIN, 0, read_op},
    {SUIDO__ARCHIVE_OP__AUDIT_VERIFY, "audit_verify", "monitor", ARCHIVE_ROLE_ADMIN, 0,
     audit_verify},
};

const archive_api_op *archive_api_table(size_t *n)
{
    *n = sizeof TABLE / sizeof TABLE[0];
    return TABLE;
}

cm_err archive_api_dispatch(const archive_api_hooks *h, cm_sql *db, const char *peer,
                            int standby, Suido__ArchiveRequest *q, uint64_t now_ms,
                            Suido__ArchiveReply *rep, char *why, size_t why_len)
{
    const archive_api_op *row = NULL;
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0] && !row; i++)
        if (TABLE[i].op == (int)q->op)
            row = &TABLE[i];
    why[0] = '\0';
    if (!row) {
        h->denied(h->ctx, "unknown", peer, "", "unknown_op");
        return CM_ERR_INVAL;
    }
    cm_dispatch allowed = {row->name, row->peers, NULL};
    if (!cm_dispatch_peer_ok(&allowed, peer)) {
        h->denied(h->ctx, row->name, peer, "", "peer");
        return CM_ERR_DENIED;
    }
    char who[65] = "", role[16] = "";
    cm_err rc = h->session(h->ctx, q->token, who, role);
    if (rc == CM_ERR_UNAVAILABLE) /* the registry's outage, not the caller's doing */
        return CM_ERR_UNAVAILABLE;
    if (rc != CM_OK) {
        h->denied(h->ctx, row->name, peer, "", "no_session");
        return CM_ERR_DENIED;
    }
    if (archive_role_parse(role) < row->min_role) {
        h->denied(h->ctx, row->name, peer, who, "role");
        return CM_ERR_DENIED;
    }
    if (standby && !row->on_standby) {
        snprintf(why, why_len, "this archive is a standby: ask the primary, or promote this one "
                               "(suidoctl archive promote)");
        return CM_ERR_UNAVAILABLE;
    }
    archive_api_call c = {.hooks = h, .db = db, .q = q, .who = who, .now_ms = now_ms,
                          .rep = rep, .why = why, .why_len = why_len};
    return row->handler(&c);
}

void archive_api_free(Suido__ArchiveReply *rep)
{
    archive_query_free(rep);
    case_list_free(rep->cases, rep->n_cases);
    case_list_free(rep->past, rep->n_past);
    rep->cases = rep->past = NULL;
    rep->n_cases = rep->n_past = 0;
}
