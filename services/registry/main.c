/* suido-registry: the auth/ID service. Owns the identity database (SQLite): answers look-ups of
 * gateways (state, site, kind, signing key) from the other services, and carries out changes of
 * state (suspend, activate, revoke, dispose) asked for by suidoctl. A change reaches everything
 * at once: the broker plugin's identity file is rewritten (the live MQTT session is cut), every
 * service hears a RegistryEvent (caches dropped, revoked service keys refused), and the audit log
 * gets an entry.
 *
 * Sockets: [api] ROUTER, CURVE server; its allow-list names every service that may ask.
 *          Clients use DEALER and send one RegistryRequest frame; the reply is one frame.
 *          [events] PUB, CURVE server: RegistryEvent to every subscribed service.
 *          [output archive] PUSH: alerts; audit events go through cm_audit_out (its own
 *          connection, spooled while the archive is away). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include <openssl/crypto.h>

#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_svc.h"
#include "cm_time.h"
#include "cm_profile.h"
#include "registry_acked.h"
#include "registry_checkpoint.h"
#include "registry_operators.h"
#include "registry_profile.h"
#include "registry_store.h"
#include "suido.pb-c.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_ZSOCK_SERVER_ROWS("api"),
    CM_ZSOCK_SERVER_ROWS("events"),
    CM_ZSOCK_CLIENT_ROWS("output"),
    CM_AUDIT_OUT_SPEC_ROWS,
    {"broker", "state_file", 0, "identity file read by the broker plugin, rewritten on changes"},
    {"registry", "expiry_warn_days", 0, "certificate warnings, days before expiry (30, 7, 1)"},
    {"registry", "database", 0, "SQLite file (default state_dir/registry.db)"},
    {"registry", "inventory", 1, "gateway inventory to import at start"},
    {"registry", "ca", 0, "deployment CA certificate: provisioned gateways' certificates must chain to it"},
    {"registry", "seal_key", 1,
     "32 random bytes (0600) sealing the operators' TOTP seeds, kept outside the database"},
    {"profile", "file", 0, "the data profile engineers edit; re-read when it changes"},
    {"profile", "signing_key", 0, "P-256 key that signs each profile version (0600)"},
    {NULL, NULL, 0, NULL},
};

typedef struct registry {
    cm_svc *svc;
    registry_store *store;
    registry_operators *ops;
    void *api;
    void *events;     /* PUB, may be NULL */
    void *to_archive; /* alerts, may be NULL */
    const char *state_file;
    const char *ca; /* NULL: provisioning is refused */
    const char *profile_file; /* NULL: no profile distribution */
    cm_signer *profile_signer;
    struct stat profile_stat; /* of the version last offered, to notice a change */
    uint64_t next_profile_check_ms;
    cm_metric *profile_version, *profile_refusals;
    long warn_days[3];
    uint64_t next_expiry_check_ms;
    cm_metric *expiry_alerts;
    cm_metric *requests, *rejected, *unknown;
    uint64_t request_id; /* of the request being answered: every reply echoes it */
} registry;

typedef struct request {
    zmq_msg_t *route;
    const Suido__RegistryRequest *req;
    const char *peer;
    char actor[65];  /* the operator acting, when a session token was required */
    op_role role;    /* and that session's role */
} request;

static void reply(registry *r, zmq_msg_t *route, Suido__RegistryReply *rep)
{
    rep->request_id = r->request_id;
    cm_zreply(r->api, route, &rep->base);
}

static void reply_error(registry *r, zmq_msg_t *route, cm_err e)
{
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.status = (uint32_t)e;
    rep.error = (char *)cm_strerror(e);
    reply(r, route, &rep);
}

static void on_get_gateway(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    Suido__GatewayInfo info = SUIDO__GATEWAY_INFO__INIT;
    cm_err e = registry_store_get(r->store, q->req->id, &info);
    if (e != CM_OK) {
        if (e == CM_ERR_UNKNOWN)
            cm_metric_inc(r->unknown);
        cm_info("peer=%s op=get_gateway id=%s result=%s", q->peer, q->req->id, cm_strerror(e));
        reply_error(r, q->route, e);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.gateway = &info;
    reply(r, q->route, &rep);
    registry_info_clear(&info);
}

typedef struct list_ctx {
    Suido__GatewayInfo **items;
    size_t n, cap;
} list_ctx;

static void collect(void *ctx, Suido__GatewayInfo *info)
{
    list_ctx *l = ctx;
    if (l->n == l->cap)
        return;
    Suido__GatewayInfo *c = malloc(sizeof *c);
    if (!c)
        return;
    *c = *info;
    memset(info, 0, sizeof *info); /* ownership moved to c */
    l->items[l->n++] = c;
}

static void on_list_gateways(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    list_ctx l = {.cap = 4096};
    l.items = calloc(l.cap, sizeof *l.items);
    if (!l.items || registry_store_each(r->store, collect, &l) != CM_OK) {
        reply_error(r, q->route, CM_ERR_DB);
    } else {
        Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
        rep.n_gateways = l.n;
        rep.gateways = l.items;
        reply(r, q->route, &rep);
    }
    for (size_t i = 0; i < l.n; i++) {
        registry_info_clear(l.items[i]);
        free(l.items[i]);
    }
    free(l.items);
}

static void audit(registry *r, const char *event, const char *subject, const char *actor,
                  const char *detail)
{
    cm_audit_out_record(r->svc->audit_out, r->svc->name, event, subject, actor, detail);
}

/* Rewrites the broker's identity file; failing to is an alarm (the broker keeps the old one). */
static void publish_identities(registry *r)
{
    if (r->state_file && registry_store_write_identities(r->store, r->state_file) != CM_OK)
        cm_error("path=%s error=\"cannot write the broker identity file\" alarm=1", r->state_file);
}

static void announce(registry *r, const char *kind, const char *id, int state,
                     const char *curve_pub)
{
    Suido__RegistryEvent ev = SUIDO__REGISTRY_EVENT__INIT;
    ev.kind = (char *)kind;
    ev.id = (char *)id;
    ev.state = state;
    ev.ts_ms = cm_now_ms();
    ev.curve_pub = (char *)(curve_pub ? curve_pub : "");
    if (r->events && cm_zsend_pb(r->events, &ev.base, ZMQ_DONTWAIT) != CM_OK)
        cm_error("kind=%s id=%s error=\"registry event not sent\"", kind, id);
}

/* suspend / activate / revoke / dispose a gateway or a service */
static void set_state(registry *r, request *q, const char *kind)
{
    int old = 0;
    char curve[41] = "";
    int state = q->req->state;
    cm_err e = registry_store_set_state(r->store, kind, q->req->id, state, &old, curve);
    char detail[512], reason[400];
    snprintf(detail, sizeof detail, "from=%s to=%s result=%s reason=\"%s\"",
             registry_state_name(old), registry_state_name(state), cm_strerror(e),
             cm_log_escape(reason, sizeof reason, q->req->reason));
    char id_esc[140];
    cm_info("peer=%s kind=%s id=\"%s\" %s", q->peer, kind,
            cm_log_escape(id_esc, sizeof id_esc, q->req->id), detail);
    audit(r, e == CM_OK ? "identity_state_changed" : "identity_state_refused", q->req->id,
          *q->actor ? q->actor : q->peer, detail);
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    publish_identities(r);
    announce(r, kind, q->req->id, state, curve);
    if (strcmp(kind, "service") == 0) {
        /* this process's own sockets follow at once too */
        int active = state == SUIDO__ENTITY_STATE__STATE_ACTIVE;
        if (*curve)
            cm_zap_set_revoked(r->svc->zap, curve, !active);
        cm_svc_set_peer_revoked(r->svc, q->req->id, !active);
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    Suido__GatewayInfo info;
    if (strcmp(kind, "gateway") == 0 && registry_store_get(r->store, q->req->id, &info) == CM_OK)
        rep.gateway = &info;
    reply(r, q->route, &rep);
    if (rep.gateway)
        registry_info_clear(&info);
}

static void on_set_gateway_state(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    set_state(ctx, arg, "gateway");
}

static void on_set_service_state(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    set_state(ctx, arg, "service");
}

/* Provisioning: a new gateway whose certificate the deployment CA issued (CN = id) and whose
 * signing key is P-256 enters the registry as "provisioned": the broker refuses it until an
 * administrator activates it. An id ever used before, disposed ones included, is refused. */
static void on_add_gateway(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    const Suido__GatewayInfo *g = q->req->gateway;
    cm_cert_info ci;
    cm_err e = CM_OK;
    const char *why = "ok";
    if (!r->ca) {
        e = CM_ERR_CONFIG;
        why = "no [registry] ca configured";
    } else if (!g || !g->id || !*g->id || !g->site || !*g->site || !g->kind || !*g->kind ||
               g->sign_pub_der.len == 0 || q->req->cert_pem.len == 0) {
        e = CM_ERR_INVAL;
        why = "id, site, kind, signing key and certificate are required";
    } else if (!cm_valid_label(g->site) || !cm_valid_label(g->kind) ||
               (g->model && *g->model && !cm_valid_label(g->model)) ||
               (g->firmware && *g->firmware && !cm_valid_label(g->firmware))) {
        /* they reach MQTT topics, gateway.conf and log lines */
        e = CM_ERR_INVAL;
        why = "site, kind, model and firmware must be 1-64 of [A-Za-z0-9._-]";
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "bad_name");
    } else if (g->protocol && *g->protocol && strcmp(g->protocol, "suido") != 0 &&
               strcmp(g->protocol, "sparkplug") != 0) {
        e = CM_ERR_INVAL;
        why = "protocol must be suido or sparkplug";
    } else if ((e = cm_cert_check(q->req->cert_pem.data, q->req->cert_pem.len, r->ca,
                                  cm_now_ms(), &ci)) != CM_OK) {
        why = "certificate not issued by the deployment CA, or not valid now";
    } else if (strcmp(ci.subject_cn, g->id) != 0) {
        e = CM_ERR_INVAL;
        why = "certificate CN is not the gateway id";
    } else {
        registry_new_gateway ng = {g->id, g->site, g->kind, g->model, g->firmware,
                                   g->sign_pub_der.data, g->sign_pub_der.len, &ci,
                                   SUIDO__ENTITY_STATE__STATE_PROVISIONED,
                                   g->cmd_pub_der.data, g->cmd_pub_der.len, g->protocol};
        e = registry_store_add_gateway(r->store, &ng);
        why = e == CM_ERR_DUPLICATE ? "id already used (ids are never reused)"
              : e == CM_ERR_KEY     ? "signing key not P-256, or command key not RSA-2048"
              : e == CM_OK          ? "ok"
                                    : "refused";
    }
    char detail[512], site[120], kind[120], id_esc[120];
    char proto[40];
    snprintf(detail, sizeof detail, "site=\"%s\" kind=\"%s\" protocol=%s result=%s why=\"%s\"",
             cm_log_escape(site, sizeof site, g ? g->site : NULL),
             cm_log_escape(kind, sizeof kind, g ? g->kind : NULL),
             cm_log_escape(proto, sizeof proto, g && g->protocol && *g->protocol ? g->protocol
                                                                                  : "suido"),
             cm_strerror(e), why);
    const char *id = g && g->id ? g->id : "";
    cm_info("peer=%s gateway=\"%s\" %s", peer, cm_log_escape(id_esc, sizeof id_esc, id), detail);
    audit(r, e == CM_OK ? "gateway_provisioned" : "gateway_provision_refused", id,
          *q->actor ? q->actor : peer, detail);
    registry_operators_record(r->ops, cm_now_ms(), q->actor, peer, "add_gateway", cm_strerror(e));
    if (e != CM_OK) {
        Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
        rep.status = e;
        rep.error = (char *)why;
        reply(r, q->route, &rep);
        return;
    }
    publish_identities(r);
    announce(r, "gateway", id, SUIDO__ENTITY_STATE__STATE_PROVISIONED, "");
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    Suido__GatewayInfo info;
    if (registry_store_get(r->store, id, &info) == CM_OK)
        rep.gateway = &info;
    reply(r, q->route, &rep);
    if (rep.gateway)
        registry_info_clear(&info);
}

/* Offers the profile file when it changed since the last look (or when forced): a good new
 * version is stored, audited and announced; a bad one is refused, audited, and the version in
 * force stays. Returns the offer's code. */
static cm_err check_profile(registry *r, int force)
{
    struct stat st;
    if (!r->profile_file)
        return CM_OK;
    if (stat(r->profile_file, &st) == 0 && !force && st.st_dev == r->profile_stat.st_dev &&
        st.st_ino == r->profile_stat.st_ino && st.st_size == r->profile_stat.st_size &&
        st.st_mtim.tv_sec == r->profile_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == r->profile_stat.st_mtim.tv_nsec)
        return CM_OK;
    r->profile_stat = st;
    registry_profile_offer o;
    cm_err rc = registry_profile_offer_file(registry_store_db(r->store), r->profile_signer,
                                            r->profile_file, cm_now_ms(), &o);
    char detail[CM_CONF_ERRLEN + 128];
    if (rc != CM_OK) {
        cm_metric_inc(r->profile_refusals);
        cm_error("profile=%s in_force=%ld error=\"%s\"", r->profile_file, o.old_version, o.why);
        char why[CM_CONF_ERRLEN];
        snprintf(detail, sizeof detail, "in_force=%ld why=\"%s\"", o.old_version,
                 cm_log_escape(why, sizeof why, o.why));
        audit(r, "profile_refused", "profile", "registry", detail);
        return rc;
    }
    cm_metric_set(r->profile_version, o.new_version);
    if (!o.changed)
        return CM_OK;
    cm_info("profile=%s from=%ld to=%ld digest=%s", r->profile_file, o.old_version,
            o.new_version, o.digest);
    snprintf(detail, sizeof detail, "from=%ld to=%ld sha256=%s", o.old_version, o.new_version,
             o.digest);
    audit(r, "profile_changed", "profile", "registry", detail);
    char v[32];
    snprintf(v, sizeof v, "%ld", o.new_version);
    announce(r, "profile", v, 0, "");
    return CM_OK;
}

static void on_set_channels(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    cm_err rc = registry_store_set_channels(r->store, q->req->id, q->req->boot_epoch,
                                            q->req->channels, q->req->n_channels);
    if (rc != CM_OK) {
        reply_error(r, q->route, rc);
        return;
    }
    announce(r, "channels", q->req->id, 0, "");
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    reply(r, q->route, &rep);
}

typedef struct decls {
    Suido__ChannelDecl items[256], *ptrs[256];
    char names[256][65], units[256][16];
    size_t n;
} decls;

static void collect_decl(void *ctx, const char *channel, const char *unit)
{
    decls *d = ctx;
    if (d->n >= 256)
        return;
    suido__channel_decl__init(&d->items[d->n]);
    snprintf(d->names[d->n], sizeof d->names[0], "%s", channel);
    snprintf(d->units[d->n], sizeof d->units[0], "%s", unit);
    d->items[d->n].name = d->names[d->n];
    d->items[d->n].unit = d->units[d->n];
    d->ptrs[d->n] = &d->items[d->n];
    d->n++;
}

static void on_get_channels(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    static decls d;
    d.n = 0;
    cm_err rc = registry_store_get_channels(r->store, q->req->id, collect_decl, &d);
    if (rc != CM_OK) {
        reply_error(r, q->route, rc);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.n_channels = d.n;
    rep.channels = d.ptrs;
    reply(r, q->route, &rep);
}

static void on_get_profile(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    long version = 0;
    uint8_t *text = NULL, *sig = NULL;
    size_t len = 0, siglen = 0;
    cm_err rc = registry_profile_current(registry_store_db(r->store), &version, &text, &len,
                                         &sig, &siglen);
    if (rc != CM_OK) {
        reply_error(r, q->route, rc == CM_ERR_UNKNOWN ? CM_ERR_UNAVAILABLE : rc);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.profile_text.data = text;
    rep.profile_text.len = len;
    rep.profile_signature.data = sig;
    rep.profile_signature.len = siglen;
    rep.profile_version = (uint64_t)version;
    reply(r, q->route, &rep);
    free(text);
    free(sig);
}

/* Lockouts are keyed on the authenticated peer, never on a name the client chooses: the
 * request's source counts only when the monitor relays a browser's address
 * (registry_operators_source_key); anyone else's claim is only recorded, escaped. */
static void on_login(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    op_login res;
    uint64_t now = cm_now_ms();
    registry_operators_login(r->ops, q->req->id, q->req->password, q->req->totp, peer,
                             q->req->source, now, &res);
    char detail[400], claimed[160] = "";
    if (strcmp(peer, "monitor") != 0 && q->req->source && *q->req->source) {
        char esc[128];
        snprintf(claimed, sizeof claimed, " claimed=\"%s\"",
                 cm_log_escape(esc, sizeof esc, q->req->source));
    }
    snprintf(detail, sizeof detail, "source=%s via=%s result=%s%s", res.source, peer, res.reason,
             claimed);
    audit(r, res.status == CM_OK ? "login" : "login_failed", q->req->id, q->req->id, detail);
    if (res.locked_now)
        audit(r, "lockout", q->req->id, q->req->id, detail);
    if (res.account_locked_now) {
        char adetail[480];
        snprintf(adetail, sizeof adetail, "scope=account failures=%d %s", OP_ACCOUNT_MAX_FAILURES,
                 detail);
        cm_warn("operator=%s scope=account event=lockout", q->req->id);
        audit(r, "lockout", q->req->id, q->req->id, adetail);
    }
    if (res.new_source)
        audit(r, "suspicious_access", q->req->id, q->req->id, "finding=new_source");
    if (res.unusual_hour)
        audit(r, "suspicious_access", q->req->id, q->req->id, "finding=unusual_hour");
    if (res.failure_burst)
        audit(r, "suspicious_access", q->req->id, q->req->id, "finding=failure_burst");
    char who[140];
    cm_info("operator=\"%s\" %s", cm_log_escape(who, sizeof who, q->req->id), detail);
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    if (res.status != CM_OK) {
        /* one answer for every wrong credential: the reason stays in the audit log */
        rep.status = (uint32_t)(res.status == CM_ERR_REVOKED ? CM_ERR_REVOKED : CM_ERR_DENIED);
        rep.error = res.status == CM_ERR_REVOKED ? "locked_out" : "denied";
        rep.retry_after_ms = res.retry_after_ms;
    } else {
        rep.token = res.token;
        rep.expires_ms = res.expires_ms;
    }
    reply(r, q->route, &rep);
    OPENSSL_cleanse(res.token, sizeof res.token);
}

static void on_session_check(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    (void)peer;
    char op[65];
    op_role role;
    uint64_t exp;
    if (registry_operators_session(r->ops, q->req->token, cm_now_ms(), op, &role, &exp) != CM_OK) {
        reply_error(r, q->route, CM_ERR_DENIED);
        return;
    }
    Suido__OperatorInfo info = SUIDO__OPERATOR_INFO__INIT;
    info.id = op;
    info.role = (char *)op_role_name(role);
    info.state = SUIDO__ENTITY_STATE__STATE_ACTIVE;
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.operator_ = &info;
    rep.expires_ms = exp;
    reply(r, q->route, &rep);
}

/* suidoctl is about to run a command that reads the deployment's state itself (the archive's or
 * registry's database, a backup): authorize() has checked the session against that command's
 * least role (CTL_COMMANDS); the access is audited and kept in the access history. */
static void on_ctl_access(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    char detail[160];
    snprintf(detail, sizeof detail, "role=%s command=\"%s\"", op_role_name(q->role),
             q->req->command);
    cm_info("peer=%s operator=%s %s event=ctl_access", peer, q->actor, detail);
    audit(r, "ctl_access", q->req->command, q->actor, detail);
    registry_operators_record(r->ops, cm_now_ms(), q->actor, peer, q->req->command, "ok");
    Suido__OperatorInfo info = SUIDO__OPERATOR_INFO__INIT;
    info.id = q->actor;
    info.role = (char *)op_role_name(q->role);
    info.state = SUIDO__ENTITY_STATE__STATE_ACTIVE;
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.operator_ = &info;
    reply(r, q->route, &rep);
}

static void on_logout(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    (void)peer;
    registry_operators_logout(r->ops, q->req->token);
    registry_operators_record(r->ops, cm_now_ms(), q->actor, peer, "logout", "ok");
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    reply(r, q->route, &rep);
}

static void on_operator_add(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    char secret[64] = "";
    cm_err e = registry_operators_add(r->ops, q->req->id, q->req->role, q->req->password, secret);
    char detail[128];
    snprintf(detail, sizeof detail, "role=%s result=%s", q->req->role ? q->req->role : "",
             cm_strerror(e));
    audit(r, "operator_added", q->req->id, *q->actor ? q->actor : peer, detail);
    registry_operators_record(r->ops, cm_now_ms(), q->actor, peer, "operator_add", cm_strerror(e));
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.totp_secret = secret;
    reply(r, q->route, &rep);
    OPENSSL_cleanse(secret, sizeof secret);
}

static void on_set_operator_state(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    int old = 0;
    cm_err e = registry_operators_set_state(r->ops, q->req->id, q->req->state, &old);
    char detail[160];
    snprintf(detail, sizeof detail, "from=%s to=%s result=%s", registry_state_name(old),
             registry_state_name(q->req->state), cm_strerror(e));
    audit(r, e == CM_OK ? "identity_state_changed" : "identity_state_refused", q->req->id,
          q->actor, detail);
    registry_operators_record(r->ops, cm_now_ms(), q->actor, peer, "set_operator_state",
                              cm_strerror(e));
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    announce(r, "operator", q->req->id, q->req->state, NULL);
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    reply(r, q->route, &rep);
}

typedef struct ops_list {
    Suido__OperatorInfo **op;
    Suido__AccessEntry **acc;
    size_t n, cap;
} ops_list;

static char *dupstr(const char *s) { return strdup(s ? s : ""); }

static void collect_op(void *ctx, const Suido__OperatorInfo *o)
{
    ops_list *l = ctx;
    Suido__OperatorInfo *c = l->n < l->cap ? malloc(sizeof *c) : NULL;
    if (!c)
        return;
    *c = *o;
    c->id = dupstr(o->id);
    c->role = dupstr(o->role);
    l->op[l->n++] = c;
}

static void collect_access(void *ctx, const Suido__AccessEntry *e)
{
    ops_list *l = ctx;
    Suido__AccessEntry *c = l->n < l->cap ? malloc(sizeof *c) : NULL;
    if (!c)
        return;
    *c = *e;
    c->operator_ = dupstr(e->operator_);
    c->source = dupstr(e->source);
    c->action = dupstr(e->action);
    c->result = dupstr(e->result);
    l->acc[l->n++] = c;
}

static void on_list_operators(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    (void)peer;
    ops_list l = {.cap = 1024};
    l.op = calloc(l.cap, sizeof *l.op);
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    if (l.op && registry_operators_each(r->ops, collect_op, &l) == CM_OK) {
        rep.n_operators = l.n;
        rep.operators = l.op;
        reply(r, q->route, &rep);
    } else {
        reply_error(r, q->route, CM_ERR_DB);
    }
    for (size_t i = 0; i < l.n; i++) {
        free(l.op[i]->id);
        free(l.op[i]->role);
        free(l.op[i]);
    }
    free(l.op);
}

static void on_access_history(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    (void)peer;
    ops_list l = {.cap = 500};
    l.acc = calloc(l.cap, sizeof *l.acc);
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    const char *who = q->req->id && strcmp(q->req->id, "*") != 0 ? q->req->id : "";
    if (l.acc && registry_operators_access(r->ops, who, (int)l.cap, collect_access, &l) == CM_OK) {
        rep.n_access = l.n;
        rep.access = l.acc;
        reply(r, q->route, &rep);
    } else {
        reply_error(r, q->route, CM_ERR_DB);
    }
    for (size_t i = 0; i < l.n; i++) {
        free(l.acc[i]->operator_);
        free(l.acc[i]->source);
        free(l.acc[i]->action);
        free(l.acc[i]->result);
        free(l.acc[i]);
    }
    free(l.acc);
}

static void on_seen(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    (void)peer;
    size_t n = q->req->n_ids < 4096 ? q->req->n_ids : 4096;
    registry_store_seen(r->store, q->req->ids, n, cm_now_ms());
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    reply(r, q->route, &rep);
}

/* The archive's audit-log head after a commit: signed with the profile key and kept
 * (registry_checkpoint.h). A head that goes back, or from a log that no longer holds the latest,
 * is refused, audited and an alarm. Every answer carries the latest head kept, so the archive
 * learns which entry to prove next time. */
static void on_audit_checkpoint(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    const Suido__AuditCheckpoint *cp = q->req->checkpoint;
    int stored = 0;
    sqlite3 *db = registry_store_db(r->store);
    cm_err e = registry_checkpoint_put(db, r->profile_signer, cp, cm_now_ms(), &stored);
    if (e != CM_OK && e != CM_ERR_UNKNOWN) {
        char detail[160];
        snprintf(detail, sizeof detail, "seq=%llu prev_seq=%llu result=%s",
                 cp ? (unsigned long long)cp->seq : 0ULL,
                 cp ? (unsigned long long)cp->prev_seq : 0ULL, cm_strerror(e));
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "audit_checkpoint");
        cm_error("peer=%s %s error=\"audit checkpoint refused\"%s", peer, detail,
                 e == CM_ERR_REPLAY ? " alarm=1" : "");
        audit(r, "audit_checkpoint_refused", "audit", peer, detail);
    } else if (stored) {
        cm_debug("peer=%s seq=%llu event=audit_checkpoint", peer, (unsigned long long)cp->seq);
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    Suido__AuditCheckpoint latest;
    int have = registry_checkpoint_latest(db, &latest) == CM_OK;
    rep.status = (uint32_t)e;
    rep.error = (char *)cm_strerror(e);
    if (have)
        rep.checkpoint = &latest;
    reply(r, q->route, &rep);
    if (have)
        registry_checkpoint_clear(&latest);
}

/* The archive's published acks (registry_acked.h): kept so that a restore of the archive shows
 * what was acknowledged and is no longer held. */
static void on_acked_points(void *ctx, void *arg, const char *peer)
{
    registry *r = ctx;
    request *q = arg;
    size_t skipped = 0;
    cm_err e = registry_acked_put(registry_store_db(r->store), q->req->acked, q->req->n_acked,
                                  cm_now_ms(), &skipped);
    if (e != CM_OK)
        cm_error("peer=%s points=%zu error=\"ack points not recorded: %s\"", peer,
                 q->req->n_acked, cm_strerror(e));
    if (skipped) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "malformed");
        cm_warn("peer=%s skipped=%zu error=\"malformed ack points\"", peer, skipped);
    }
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    reply(r, q->route, &rep);
}

static void on_get_acked_points(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    Suido__Ack **pts = NULL;
    size_t n = 0;
    cm_err e = registry_acked_list(registry_store_db(r->store), &pts, &n);
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.acked = pts;
    rep.n_acked = n;
    reply(r, q->route, &rep);
    registry_acked_free(pts, n);
}

static void on_get_audit_checkpoint(void *ctx, void *arg, const char *peer)
{
    (void)peer;
    registry *r = ctx;
    request *q = arg;
    Suido__AuditCheckpoint cp;
    cm_err e = registry_checkpoint_latest(registry_store_db(r->store), &cp);
    if (e != CM_OK) {
        reply_error(r, q->route, e);
        return;
    }
    Suido__RegistryReply rep = SUIDO__REGISTRY_REPLY__INIT;
    rep.checkpoint = &cp;
    reply(r, q->route, &rep);
    registry_checkpoint_clear(&cp);
}

/* A certificate crossed a warning threshold: an alert operators see, and an audit entry. */
static void on_cert_expiring(void *ctx, const char *kind, const char *id, const char *site,
                             long days_left, long threshold)
{
    registry *r = ctx;
    char detail[200], alert_id[160], topic[128];
    snprintf(detail, sizeof detail, "kind=%s days_left=%ld threshold=%ld", kind, days_left,
             threshold);
    cm_warn("%s=%s certificate_days_left=%ld threshold=%ld", kind, id, days_left, threshold);
    audit(r, "certificate_expiring", id, r->svc->name, detail);
    cm_metric_inc(r->expiry_alerts);
    if (!r->to_archive)
        return;
    snprintf(alert_id, sizeof alert_id, "%s/certificate/expiry", id);
    snprintf(topic, sizeof topic, "suido/v1/alerts/%s", *site ? site : "platform");
    Suido__Alert a = SUIDO__ALERT__INIT;
    a.id = alert_id;
    a.gateway_id = strcmp(kind, "gateway") == 0 ? (char *)id : "";
    a.site = (char *)(*site ? site : "platform");
    a.channel = "certificate";
    a.rule = "certificate_expiry";
    a.severity = threshold <= r->warn_days[2]   ? SUIDO__SEVERITY__SEVERITY_CRITICAL
                 : threshold <= r->warn_days[1] ? SUIDO__SEVERITY__SEVERITY_ALARM
                                                : SUIDO__SEVERITY__SEVERITY_WARNING;
    a.value = (double)days_left;
    a.limit = (double)threshold;
    a.timestamp_ms = cm_now_ms();
    a.evidence = detail;
    Suido__StageMessage m = SUIDO__STAGE_MESSAGE__INIT;
    m.topic = topic;
    m.received_ms = a.timestamp_ms;
    m.site = a.site;
    m.alert = &a;
    if (cm_zsend_pb(r->to_archive, &m.base, ZMQ_DONTWAIT) != CM_OK)
        cm_error("id=%s error=\"certificate alert not queued\"", id);
}

/* Every minute: certificates near their end (A16). */
static void check_expiry(registry *r)
{
    uint64_t now = cm_mono_ms();
    if (now < r->next_expiry_check_ms)
        return;
    r->next_expiry_check_ms = now + 60000;
    if (registry_store_expiry(r->store, cm_now_ms(), r->warn_days, on_cert_expiring, r) != CM_OK)
        cm_error("error=\"certificate expiry check failed\"");
}

/* The registry's whole attack surface: which peer may ask what. */
static const cm_dispatch DISPATCH[] = {
    {"get_gateway", "verify,profile,anomaly,archive,suidoctl,monitor,gate,sparkplug", on_get_gateway},
    {"list_gateways", "archive,suidoctl,monitor,gate", on_list_gateways},
    {"set_gateway_state", "suidoctl", on_set_gateway_state},
    {"add_gateway", "suidoctl", on_add_gateway},
    {"set_service_state", "suidoctl", on_set_service_state},
    {"seen", "verify,sparkplug", on_seen},
    {"get_profile", "profile,anomaly,gate,verify,suidoctl,monitor", on_get_profile},
    {"set_channels", "profile", on_set_channels},
    {"get_channels", "profile,suidoctl,monitor", on_get_channels},
    {"login", "suidoctl,monitor", on_login},
    {"session_check", "suidoctl,monitor,gate,archive,archive-standby", on_session_check},
    {"logout", "suidoctl,monitor", on_logout},
    {"operator_add", "suidoctl", on_operator_add},
    {"set_operator_state", "suidoctl", on_set_operator_state},
    {"list_operators", "suidoctl", on_list_operators},
    {"access_history", "suidoctl", on_access_history},
    {"audit_checkpoint", "archive,archive-standby", on_audit_checkpoint},
    {"get_audit_checkpoint", "suidoctl,monitor,archive,archive-standby", on_get_audit_checkpoint},
    {"ctl_access", "suidoctl", on_ctl_access},
    {"acked_points", "archive,archive-standby", on_acked_points},
    {"get_acked_points", "archive,archive-standby", on_get_acked_points},
    {NULL, NULL, NULL},
};

/* Rights of operators (A8: administration apart from daily use). Human-facing peers (suidoctl,
 * monitor) must present a live session of at least this role for the operation; services ask
 * with their CURVE identity alone. -1: no session needed (logging in). */
static const struct {
    const char *op;
    int min_role;
} RIGHTS[] = {
    {"login", -1},
    {"session_check", -1},
    {"get_audit_checkpoint", ROLE_ADMIN}, /* `audit verify`, after its ctl_access */
    {"get_gateway", ROLE_VIEWER},
    {"get_profile", ROLE_VIEWER},
    {"get_channels", ROLE_VIEWER},
    {"list_gateways", ROLE_VIEWER},
    {"logout", ROLE_VIEWER},
    {"set_gateway_state", ROLE_ADMIN},
    {"add_gateway", ROLE_ADMIN},
    {"set_service_state", ROLE_ADMIN},
    {"operator_add", ROLE_ADMIN},
    {"set_operator_state", ROLE_ADMIN},
    {"list_operators", ROLE_ADMIN},
    {"access_history", ROLE_ADMIN},
    /* ctl_access: the least role of the command it names (CTL_COMMANDS) */
};

/* The suidoctl commands that read the deployment's state files themselves rather than ask a
 * service, and the least role each needs (ctl_access). A command not listed is refused. */
static const struct {
    const char *command;
    int min_role;
} CTL_COMMANDS[] = {
    {"archive gaps", ROLE_VIEWER},   /* sequence numbers and counts per gateway, as the overview */
    {"archive verify", ROLE_ADMIN},  /* includes the audit chain check; reads every batch */
    {"audit verify", ROLE_ADMIN},    /* the audit log's chain check, admin in the monitor too */
    {"backup create", ROLE_ADMIN},   /* copies password hashes and sealed TOTP seeds */
    {"backup verify", ROLE_ADMIN},   /* reads a backup's every database */
};

/* The least role op needs from a human-facing peer; -1: none; above ROLE_ADMIN: nobody. */
static int min_role(const char *op, const Suido__RegistryRequest *req)
{
    if (strcmp(op, "ctl_access") == 0) {
        for (size_t i = 0; i < sizeof CTL_COMMANDS / sizeof CTL_COMMANDS[0]; i++)
            if (req->command && strcmp(CTL_COMMANDS[i].command, req->command) == 0)
                return CTL_COMMANDS[i].min_role;
        return ROLE_ADMIN + 1;
    }
    for (size_t i = 0; i < sizeof RIGHTS / sizeof RIGHTS[0]; i++)
        if (strcmp(RIGHTS[i].op, op) == 0)
            return RIGHTS[i].min_role;
    return ROLE_ADMIN;
}

/* CM_OK when the request may go ahead; fills q->actor with the operator acting. The very first
 * operator of a deployment may be added without a session (there is nobody to log in yet). */
static cm_err authorize(registry *r, request *q, const char *op)
{
    if (strcmp(q->peer, "suidoctl") != 0 && strcmp(q->peer, "monitor") != 0)
        return CM_OK;
    int need = min_role(op, q->req);
    if (need < 0)
        return CM_OK;
    if (strcmp(op, "operator_add") == 0 && registry_operators_count(r->ops) == 0) {
        snprintf(q->actor, sizeof q->actor, "bootstrap");
        return CM_OK;
    }
    uint64_t exp;
    if (registry_operators_session(r->ops, q->req->token, cm_now_ms(), q->actor, &q->role, &exp) !=
        CM_OK)
        return CM_ERR_DENIED;
    return (int)q->role >= need ? CM_OK : CM_ERR_DENIED;
}

static const char *op_name(int op)
{
    switch (op) {
    case SUIDO__REGISTRY_OP__REG_GET_GATEWAY:
        return "get_gateway";
    case SUIDO__REGISTRY_OP__REG_LIST_GATEWAYS:
        return "list_gateways";
    case SUIDO__REGISTRY_OP__REG_SET_GATEWAY_STATE:
        return "set_gateway_state";
    case SUIDO__REGISTRY_OP__REG_SET_SERVICE_STATE:
        return "set_service_state";
    case SUIDO__REGISTRY_OP__REG_ADD_GATEWAY:
        return "add_gateway";
    case SUIDO__REGISTRY_OP__REG_SEEN:
        return "seen";
    case SUIDO__REGISTRY_OP__REG_GET_PROFILE:
        return "get_profile";
    case SUIDO__REGISTRY_OP__REG_SET_CHANNELS:
        return "set_channels";
    case SUIDO__REGISTRY_OP__REG_GET_CHANNELS:
        return "get_channels";
    case SUIDO__REGISTRY_OP__REG_LOGIN:
        return "login";
    case SUIDO__REGISTRY_OP__REG_SESSION_CHECK:
        return "session_check";
    case SUIDO__REGISTRY_OP__REG_LOGOUT:
        return "logout";
    case SUIDO__REGISTRY_OP__REG_OPERATOR_ADD:
        return "operator_add";
    case SUIDO__REGISTRY_OP__REG_SET_OPERATOR_STATE:
        return "set_operator_state";
    case SUIDO__REGISTRY_OP__REG_LIST_OPERATORS:
        return "list_operators";
    case SUIDO__REGISTRY_OP__REG_ACCESS_HISTORY:
        return "access_history";
    case SUIDO__REGISTRY_OP__REG_AUDIT_CHECKPOINT:
        return "audit_checkpoint";
    case SUIDO__REGISTRY_OP__REG_GET_AUDIT_CHECKPOINT:
        return "get_audit_checkpoint";
    case SUIDO__REGISTRY_OP__REG_CTL_ACCESS:
        return "ctl_access";
    case SUIDO__REGISTRY_OP__REG_ACKED_POINTS:
        return "acked_points";
    case SUIDO__REGISTRY_OP__REG_GET_ACKED_POINTS:
        return "get_acked_points";
    default:
        return "unknown";
    }
}

static void handle_one(registry *r)
{
    zmq_msg_t route, body;
    char peer[64];
    zmq_msg_init(&route);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&route, r->api, ZMQ_DONTWAIT) < 0)
        goto out;
    if (!zmq_msg_more(&route) || cm_zrecv(r->api, &body, peer, sizeof peer, 0) != CM_OK) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "malformed");
        goto out;
    }
    cm_metric_inc(r->requests);
    r->request_id = 0;
    Suido__RegistryRequest *req =
        suido__registry_request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
    if (req)
        r->request_id = req->request_id;
    if (!req) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "malformed");
        cm_warn("peer=%s error=\"malformed request\" size=%zu", peer, zmq_msg_size(&body));
        reply_error(r, &route, CM_ERR_DECODE);
        goto out;
    }
    const char *op = op_name(req->op);
    const cm_dispatch *row = cm_dispatch_find(DISPATCH, op);
    request q = {.route = &route, .req = req, .peer = peer};
    /* the operations about one identity need a well-formed id */
    static const char *const NEEDS_ID[] = {"get_gateway", "set_gateway_state", "set_channels",
                                           "get_channels",
                                           "set_service_state", "login", "operator_add",
                                           "set_operator_state"};
    int needs_id = 0;
    for (size_t i = 0; i < sizeof NEEDS_ID / sizeof NEEDS_ID[0]; i++)
        needs_id |= strcmp(op, NEEDS_ID[i]) == 0;
    if (!row || !cm_dispatch_peer_ok(row, peer) || cm_svc_peer_revoked(r->svc, peer)) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "not_allowed");
        cm_warn("peer=%s op=%s error=\"not allowed\"", peer, op);
        audit(r, "request_denied", peer, peer, op);
        reply_error(r, &route, CM_ERR_DENIED);
    } else if (needs_id && (!req->id || !*req->id || strlen(req->id) > 64)) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "bad_id");
        reply_error(r, &route, CM_ERR_INVAL);
    } else if (authorize(r, &q, op) != CM_OK) {
        cm_metric_inc(r->rejected);
        cm_svc_reject(r->svc, "no_session");
        cm_warn("peer=%s op=%s error=\"no session with the rights for this\"", peer, op);
        /* a session too low for it names its role; ctl_access names the command asked for */
        char detail[240], role[32] = "", cmd[96] = "", subject[72];
        if (*q.actor)
            snprintf(role, sizeof role, " role=%s", op_role_name(q.role));
        cm_log_escape(subject, sizeof subject, req->command);
        if (req->command && *req->command)
            snprintf(cmd, sizeof cmd, " command=\"%s\"", subject);
        snprintf(detail, sizeof detail, "op=%s reason=no_session_or_role%s%s", op, role, cmd);
        audit(r, "request_denied", *cmd ? subject : req->id ? req->id : "",
              *q.actor ? q.actor : peer, detail);
        reply_error(r, &route, CM_ERR_DENIED);
    } else {
        row->handler(r, &q, peer);
    }
    /* the credentials a login or operator_add carried leave no copy behind */
    if (req->password)
        OPENSSL_cleanse(req->password, strlen(req->password));
    if (req->totp)
        OPENSSL_cleanse(req->totp, strlen(req->totp));
    suido__registry_request__free_unpacked(req, NULL);
out:
    if (zmq_msg_size(&body))
        OPENSSL_cleanse(zmq_msg_data(&body), zmq_msg_size(&body));
    zmq_msg_close(&route);
    zmq_msg_close(&body);
}

/* Reads the seed-sealing key: a regular file, 0600, of exactly OP_SEAL_KEY_LEN bytes. */
static cm_err load_seal_key(const char *path, uint8_t key[OP_SEAL_KEY_LEN])
{
    if (!path || cm_key_file_check(path) != CM_OK)
        return CM_ERR_KEY;
    FILE *f = fopen(path, "rb");
    if (!f)
        return CM_ERR_KEY;
    uint8_t extra;
    size_t n = fread(key, 1, OP_SEAL_KEY_LEN, f);
    int more = fread(&extra, 1, 1, f) == 1;
    fclose(f);
    if (n != OP_SEAL_KEY_LEN || more) {
        OPENSSL_cleanse(key, OP_SEAL_KEY_LEN);
        return CM_ERR_KEY;
    }
    return CM_OK;
}

int main(int argc, char **argv)
{
    registry r = {0};
    r.svc = cm_svc_start("registry", argc, argv, SPEC);
    cm_svc_claim_state(r.svc); /* one writer of the registry database */
    cm_svc *s = r.svc;
    char err[CM_CONF_ERRLEN];
    const char *inv_path = cm_conf_get(s->conf, "registry", "inventory");
    cm_conf *inv = NULL;
    if (cm_conf_load(inv_path, &inv, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    const char *warn = cm_conf_get(s->conf, "registry", "expiry_warn_days");
    char wbuf[128];
    const char *witems[3];
    r.warn_days[0] = 30;
    r.warn_days[1] = 7;
    r.warn_days[2] = 1;
    if (warn) {
        char *end;
        if (cm_conf_split(warn, wbuf, sizeof wbuf, witems, 3) != 3)
            cm_svc_die(s, "%s:%d: expiry_warn_days needs three numbers of days, e.g. 30, 7, 1",
                       cm_conf_name(s->conf), cm_conf_line(s->conf, "registry", "expiry_warn_days"));
        for (int i = 0; i < 3; i++) {
            r.warn_days[i] = strtol(witems[i], &end, 10);
            if (*end || r.warn_days[i] < 0 || (i && r.warn_days[i] >= r.warn_days[i - 1]))
                cm_svc_die(s, "%s:%d: expiry_warn_days must be decreasing whole days",
                           cm_conf_name(s->conf),
                           cm_conf_line(s->conf, "registry", "expiry_warn_days"));
        }
    }
    /* the whole inventory is checked before start (and by -n): imported once into a scratch
     * in-memory database, by the very code that imports it for real */
    registry_store *scratch = NULL;
    int added = 0;
    if (registry_store_open(":memory:", &scratch) != CM_OK)
        cm_svc_die(s, "cannot open a scratch database");
    if (registry_store_import(scratch, inv, &added, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    registry_store_close(&scratch);
    const char *pfile = cm_conf_get(s->conf, "profile", "file");
    const char *pkey = cm_conf_get(s->conf, "profile", "signing_key");
    if (pfile && (!pkey || cm_key_file_check(pkey) != CM_OK ||
                  cm_signer_load(pkey, &r.profile_signer) != CM_OK))
        cm_svc_die(s, "%s: [profile] file needs signing_key, a P-256 private key (0600)",
                   cm_conf_name(s->conf));
    if (pfile) {
        /* refused by -n; at run time a refused file leaves the version in force (if any) */
        cm_profile *check = NULL;
        if (cm_profile_load(pfile, &check, err) != CM_OK) {
            if (s->check_only)
                cm_svc_die(s, "%s", err);
            cm_warn("profile=%s error=\"%s\"", pfile, err);
        }
        cm_profile_destroy(&check);
    }
    /* the key sealing the TOTP seeds is checked by -n too: without it no operator could log in */
    const char *seal_path = cm_conf_get(s->conf, "registry", "seal_key");
    uint8_t seal_key[OP_SEAL_KEY_LEN];
    if (load_seal_key(seal_path, seal_key) != CM_OK)
        cm_svc_die(s,
                   "%s: [registry] seal_key %s must be a file of exactly %d random bytes, mode 0600",
                   cm_conf_name(s->conf), seal_path ? seal_path : "(missing)", OP_SEAL_KEY_LEN);
    cm_svc_ready(s);

    char db[4096];
    cm_svc_path(s, "registry", "database", "registry.db", db, sizeof db);
    if (registry_store_open(db, &r.store) != CM_OK)
        cm_svc_die(s, "%s: cannot open the registry database", db);
    if (registry_store_import(r.store, inv, &added, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_conf_destroy(&inv);
    cm_info("inventory=%s added=%d gateways=%d", inv_path, added, registry_store_count(r.store));
    int sealed_now = 0;
    cm_err ops_rc = registry_operators_open(registry_store_db(r.store), seal_key, &sealed_now,
                                            &r.ops);
    OPENSSL_cleanse(seal_key, sizeof seal_key);
    if (ops_rc != CM_OK)
        cm_svc_die(s, "%s: cannot open the operator tables", db);

    if (cm_zsock_server_conf(s->zctx, s->zap, s->conf, "api", ZMQ_ROUTER, &s->keys, &r.api, err))
        cm_svc_die(s, "%s", err);
    if (cm_conf_get(s->conf, "events", "bind") &&
        cm_zsock_server_conf(s->zctx, s->zap, s->conf, "events", ZMQ_PUB, &s->keys, &r.events,
                             err))
        cm_svc_die(s, "%s", err);
    if (cm_conf_get(s->conf, "output archive", "connect") &&
        cm_zsock_client_conf(s->zctx, s->conf, "output archive", ZMQ_PUSH, &s->keys,
                             &r.to_archive, err))
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    if (sealed_now > 0) {
        char sdetail[64];
        snprintf(sdetail, sizeof sdetail, "operators=%d", sealed_now);
        cm_info("event=totp_seeds_sealed operators=%d", sealed_now);
        audit(&r, "totp_seeds_sealed", "operators", "registry", sdetail);
    }
    r.state_file = cm_conf_get(s->conf, "broker", "state_file");
    r.ca = cm_conf_get(s->conf, "registry", "ca");
    r.profile_version = cm_metric_gauge(s->metrics, "suido_registry_profile_version",
                                        "data profile version in force");
    r.profile_refusals = cm_metric_counter(s->metrics, "suido_registry_profile_refusals_total",
                                           "profile files refused (the version in force stays)");
    if (registry_profile_init(registry_store_db(r.store)) != CM_OK ||
        registry_checkpoint_init(registry_store_db(r.store)) != CM_OK ||
        registry_acked_init(registry_store_db(r.store)) != CM_OK)
        cm_svc_die(s, "%s: cannot create the profile, audit checkpoint and ack point tables", db);
    r.profile_file = cm_conf_get(s->conf, "profile", "file");
    if (r.profile_file) {
        long v;
        uint8_t *t = NULL, *g = NULL;
        size_t tl, gl;
        int have = registry_profile_current(registry_store_db(r.store), &v, &t, &tl, &g, &gl) ==
                   CM_OK;
        free(t);
        free(g);
        /* a profile that cannot be taken is fatal only when there is no version to keep */
        if (check_profile(&r, 1) != CM_OK && !have)
            cm_svc_die(s, "%s: no profile version in force and this one is refused (see the log)",
                       r.profile_file);
    }
    publish_identities(&r);
    r.requests = cm_metric_counter(s->metrics, "suido_registry_requests_total", "look-ups received");
    r.rejected = cm_metric_counter(s->metrics, "suido_registry_rejected_total",
                                   "malformed or not allowed requests");
    r.unknown = cm_metric_counter(s->metrics, "suido_registry_unknown_total",
                                  "look-ups of unknown identities");
    r.expiry_alerts = cm_metric_counter(s->metrics, "suido_registry_certificate_alerts_total",
                                        "certificates that crossed an expiry warning");
    cm_metric *gw = cm_metric_gauge(s->metrics, "suido_registry_gateways", "gateways known");
    cm_metric_set(gw, registry_store_count(r.store));
    cm_metric *handle_seconds = cm_metric_histogram(s->metrics, "suido_registry_request_seconds",
                                                    "time to answer one request");

    while (!cm_daemon_stopping) {
        zmq_pollitem_t it = {.socket = r.api, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 100) > 0)
            for (int i = 0; i < 256 && (it.revents & ZMQ_POLLIN); i++) {
                uint64_t t0 = cm_mono_us();
                handle_one(&r);
                cm_metric_observe_us(handle_seconds, cm_mono_us() - t0);
                int ev = 0;
                size_t len = sizeof ev;
                zmq_getsockopt(r.api, ZMQ_EVENTS, &ev, &len);
                it.revents = (short)ev;
            }
        check_expiry(&r);
        if (cm_mono_ms() >= r.next_profile_check_ms) {
            check_profile(&r, 0);
            r.next_profile_check_ms = cm_mono_ms() + 1000;
        }
        cm_svc_tick(s);
    }
    cm_info("event=stopping");
    zmq_close(r.api);
    if (r.events)
        zmq_close(r.events);
    if (r.to_archive)
        zmq_close(r.to_archive);
    cm_signer_destroy(&r.profile_signer);
    registry_operators_close(&r.ops);
    registry_store_close(&r.store);
    cm_svc_destroy(&r.svc);
    return 0;
}
