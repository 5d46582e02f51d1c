/* mon_app: see mon_app.h. */
#include "mon_app.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "cm_log.h"
#include "cm_time.h"
#include "mon_body.h"
#include "mon_report.h"
#include "mon_session.h"
#include "mon_text.h"

#define MAX_FILES 64
#define MAX_FILE_SIZE (1 << 20)
#define SID_COOKIE "__Host-suido-sid"
#define PRE_COOKIE "__Host-suido-pre"
#define JSON_TYPE "application/json; charset=utf-8"
#define MAX_TEXT 500 /* an operator's cause or action (the archive's limit) */

enum { ROLE_PUBLIC = 0, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN };

typedef struct www_file {
    char name[64];
    const char *type;
    char *data;
    size_t len;
} www_file;

struct mon_app {
    cm_svc *svc;
    mon_backend *b;
    mon_live *live;
    mon_sessions *sessions;
    mon_app_opts o;
    www_file files[MAX_FILES];
    size_t n_files;
    cm_metric *requests, *logins, *logins_failed, *sessions_live;
};

/* One request on its way through the rules and its handler. */
typedef struct call {
    mon_app *a;
    const mon_request *rq;
    mon_response *rs;
    mon_session *s;   /* the live session (routes with a role) */
    char who[65];     /* its operator, "" before login */
    char role[16];
    uint64_t now;
} call;

typedef void (*handler_fn)(call *c);

typedef struct route {
    const char *method;  /* "GET" (HEAD too) or "POST" */
    const char *path;
    int min_role;
    int changes;         /* state-changing: CSRF token and origin checked */
    const char *args;    /* query arguments it takes, comma-separated */
    const char *page;    /* a page: the www file served */
    handler_fn fn;
} route;

static int role_rank(const char *r)
{
    return strcmp(r, "admin") == 0      ? ROLE_ADMIN
           : strcmp(r, "operator") == 0 ? ROLE_OPERATOR
           : strcmp(r, "viewer") == 0   ? ROLE_VIEWER
                                        : ROLE_PUBLIC;
}

/* ------------------------------------------------------------------ responses */

/* A JSON string of s; text that is not valid UTF-8 (never expected) is made safe instead. */
static json_t *js(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (!j) {
        char safe[512];
        j = json_string(mon_safe(safe, sizeof safe, s));
    }
    return j;
}

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *jint(uint64_t v) { return json_integer((json_int_t)(v > INT64_MAX ? INT64_MAX : v)); }

static void reply_json(call *c, unsigned status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(j);
    if (!text) {
        mon_response_text(c->rs, 500, JSON_TYPE, "{\"error\":\"internal error\"}");
        return;
    }
    mon_response_take(c->rs, status, JSON_TYPE, text, strlen(text));
}

static void reply_error(call *c, unsigned status, const char *msg)
{
    reply_json(c, status, json_pack("{s:s, s:i}", "error", msg, "status", (int)status));
}

/* A refusal: answered with status and msg, counted by reason, audited. Refusals of requests
 * without a session are outsider-driven: they pass within the audit budget only. */
static void refuse(call *c, unsigned status, const char *event, const char *reason,
                   const char *msg, int outsider)
{
    char path[96], detail[256];
    mon_safe(path, sizeof path, c->rq->path);
    snprintf(detail, sizeof detail, "reason=%s method=%s path=%s source=%s status=%u", reason,
             c->rq->method, path, c->rq->client, status);
    cm_svc_reject(c->a->svc, reason);
    cm_warn("%s", detail);
    const char *actor = *c->who ? c->who : "anonymous";
    if (outsider && !*c->who)
        mon_backend_audit_outsider(c->a->b, event, c->rq->client, actor, detail);
    else
        mon_backend_audit(c->a->b, event, c->rq->client, actor, detail);
    reply_error(c, status, msg);
}

static void bad_request(call *c, const char *reason, const char *msg)
{
    refuse(c, 400, "monitor_bad_request", reason, msg, 1);
}

/* The answer when a needed service did not answer: nothing is shown that was not confirmed. */
static void unavailable(call *c, const char *what)
{
    cm_svc_reject(c->a->svc, "backend_unavailable");
    char msg[96];
    snprintf(msg, sizeof msg, "the %s did not answer; try again", what);
    reply_error(c, 503, msg);
}

/* A refusal by the archive, as the page should see it. */
static void archive_refused(call *c, const Suido__ArchiveReply *r)
{
    unsigned st = r->status == CM_ERR_DENIED    ? 403
                  : r->status == CM_ERR_UNKNOWN ? 404
                  : r->status == CM_ERR_INVAL   ? 409
                                                : 502;
    reply_error(c, st, r->error && *r->error ? r->error : cm_strerror((cm_err)r->status));
}

static void set_cookie(mon_response *rs, int slot, const char *name, const char *value,
                       uint64_t max_age_s)
{
    snprintf(rs->cookies[slot], sizeof rs->cookies[slot],
             "%s=%s; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=%llu", name, value,
             (unsigned long long)max_age_s);
}

/* ------------------------------------------------------------------ files */

static const char *type_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    static const char *const T[][2] = {
        {".html", "text/html; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"}, {".svg", "image/svg+xml"},
        {".png", "image/png"}, {".ico", "image/x-icon"},
    };
    for (size_t i = 0; dot && i < sizeof T / sizeof T[0]; i++)
        if (strcmp(dot, T[i][0]) == 0)
            return T[i][1];
    return NULL;
}

static int file_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len >= 64 || n[0] == '.' || !type_of(n))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') || n[i] == '-' ||
              n[i] == '_' || n[i] == '.'))
            return 0;
    return 1;
}

/* Reads every page and asset of dir into memory: afterwards nothing is read from disk, and a
 * request can only ever name one of these. */
static cm_err load_www(mon_app *a, const char *dir, char err[CM_CONF_ERRLEN])
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, CM_CONF_ERRLEN, "[http] www %s: not a readable directory", dir);
        return CM_ERR_CONFIG;
    }
    struct dirent *e;
    cm_err rc = CM_OK;
    while (rc == CM_OK && (e = readdir(d))) {
        if (!file_name_ok(e->d_name))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        FILE *f = NULL;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (a->n_files == MAX_FILES || st.st_size > MAX_FILE_SIZE) {
            snprintf(err, CM_CONF_ERRLEN, "[http] www %s: too many or too large files", dir);
            rc = CM_ERR_CONFIG;
            break;
        }
        www_file *w = &a->files[a->n_files];
        w->data = malloc((size_t)st.st_size + 1);
        if (!w->data || !(f = fopen(path, "rb")) ||
            fread(w->data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
            snprintf(err, CM_CONF_ERRLEN, "[http] www %s: cannot read", path);
            free(w->data);
            w->data = NULL;
            rc = CM_ERR_IO;
        } else {
            w->data[st.st_size] = '\0';
            w->len = (size_t)st.st_size;
            w->type = type_of(e->d_name);
            snprintf(w->name, sizeof w->name, "%s", e->d_name);
            a->n_files++;
        }
        if (f)
            fclose(f);
    }
    closedir(d);
    if (rc == CM_OK && a->n_files == 0) {
        snprintf(err, CM_CONF_ERRLEN, "[http] www %s: no pages in it", dir);
        rc = CM_ERR_CONFIG;
    }
    return rc;
}

static const www_file *find_file(const mon_app *a, const char *name)
{
    for (size_t i = 0; i < a->n_files; i++)
        if (strcmp(a->files[i].name, name) == 0)
            return &a->files[i];
    return NULL;
}

/* ------------------------------------------------------------------ JSON bodies */

/* The body as a JSON object with only the keys listed (comma-separated); NULL after answering
 * 400 or 415. */
static json_t *body_object(call *c, const char *keys)
{
    json_t *j = NULL;
    switch (mon_body_object(mon_request_header(c->rq, "Content-Type"), c->rq->body,
                            c->rq->body_len, keys, &j)) {
    case MON_BODY_OK:
        return j;
    case MON_BODY_CONTENT_TYPE:
        refuse(c, 415, "monitor_bad_request", "content_type", "send JSON (application/json)", 1);
        return NULL;
    case MON_BODY_MALFORMED:
        bad_request(c, "malformed_json", "the body is not a JSON object");
        return NULL;
    case MON_BODY_UNKNOWN_FIELD:
    default:
        bad_request(c, "unknown_field", "the body has a field this request does not take");
        return NULL;
    }
}

/* ------------------------------------------------------------------ login and session */

static void on_login_form(call *c)
{
    mon_session *pre = NULL;
    if (mon_session_create(c->a->sessions, MON_PRELOGIN, c->rq->client, c->now, 0, &pre) !=
        CM_OK) {
        reply_error(c, 503, "too many sessions; try again later");
        return;
    }
    set_cookie(c->rs, 0, PRE_COOKIE, pre->id, 600);
    reply_json(c, 200, json_pack("{s:s}", "csrf", pre->csrf));
}

static void login_failed(call *c, const char *op, const char *reason, unsigned status,
                         const char *msg)
{
    char detail[160], who[65];
    snprintf(detail, sizeof detail, "source=%s reason=%s", c->rq->client, reason);
    cm_metric_inc(c->a->logins_failed);
    cm_svc_reject(c->a->svc, "login_failed");
    mon_backend_audit_outsider(c->a->b, "monitor_login_failed", mon_safe(who, sizeof who, op),
                               mon_safe(who, sizeof who, op), detail);
    reply_error(c, status, msg);
}

static void on_login(call *c)
{
    /* the login form's own synchronizer token, bound to its pre-login session */
    mon_session *pre = mon_session_find(c->a->sessions, mon_request_cookie(c->rq, PRE_COOKIE),
                                        c->now, NULL, NULL);
    if (!pre || pre->kind != MON_PRELOGIN ||
        !mon_session_csrf_ok(pre, mon_request_header(c->rq, "X-CSRF-Token"))) {
        refuse(c, 403, "monitor_csrf_rejected", "csrf", "the login form has expired: reload it",
               1);
        return;
    }
    json_t *j = body_object(c, "operator,password,totp");
    if (!j)
        return;
    json_t *pw = json_object_get(j, "password");
    const char *op = json_string_value(json_object_get(j, "operator"));
    const char *totp = json_string_value(json_object_get(j, "totp"));
    if (!mon_valid_operator(op) || !json_is_string(pw) ||
        !mon_valid_password(json_string_value(pw), json_string_length(pw), 256) ||
        !mon_valid_totp(totp)) {
        char who[65];
        snprintf(who, sizeof who, "%s", mon_valid_operator(op) ? op : "-");
        json_decref(j);
        login_failed(c, who, "malformed", 400, "operator, password and a 6-digit code are needed");
        return;
    }
    /* the browser's address: the registry keys lockouts on "monitor/" and this */
    mon_login_result res;
    mon_backend_login(c->a->b, op, json_string_value(pw), totp, c->rq->client, &res);
    char opid[65];
    snprintf(opid, sizeof opid, "%s", op);
    OPENSSL_cleanse((char *)json_string_value(pw), json_string_length(pw));
    json_decref(j);
    if (res.status == CM_ERR_UNAVAILABLE) {
        unavailable(c, "registry");
        return;
    }
    if (res.status == CM_ERR_REVOKED) {
        char msg[128];
        uint64_t wait = res.retry_after_ms > c->now ? (res.retry_after_ms - c->now) / 1000 + 1 : 60;
        snprintf(msg, sizeof msg, "locked out from this address; try again in %llu s",
                 (unsigned long long)wait);
        login_failed(c, opid, "locked_out", 429, msg);
        return;
    }
    if (res.status != CM_OK) {
        login_failed(c, opid, "denied", 401, "wrong operator, password or code");
        return;
    }
    mon_session *s = NULL;
    mon_session_end(c->a->sessions, &pre); /* never promoted: the new session has a new id */
    /* a session this browser still held ends: one browser, one session */
    mon_session *old =
        mon_session_find(c->a->sessions, mon_request_cookie(c->rq, SID_COOKIE), c->now, NULL, NULL);
    if (old && old->kind == MON_LIVE) {
        mon_backend_logout(c->a->b, old->token);
        mon_session_end(c->a->sessions, &old);
    }
    if (mon_session_create(c->a->sessions, MON_LIVE, c->rq->client, c->now, res.expires_ms, &s) !=
        CM_OK) {
        mon_backend_logout(c->a->b, res.token);
        OPENSSL_cleanse(&res, sizeof res);
        reply_error(c, 503, "too many sessions; try again later");
        return;
    }
    snprintf(s->op, sizeof s->op, "%s", opid);
    snprintf(s->role, sizeof s->role, "%s", res.role);
    snprintf(s->token, sizeof s->token, "%s", res.token);
    OPENSSL_cleanse(&res, sizeof res);
    cm_metric_inc(c->a->logins);
    char detail[160];
    snprintf(detail, sizeof detail, "source=%s role=%s", c->rq->client, s->role);
    mon_backend_audit(c->a->b, "monitor_login", s->op, s->op, detail);
    cm_info("operator=%s role=%s source=%s event=login", s->op, s->role, c->rq->client);
    set_cookie(c->rs, 0, SID_COOKIE, s->id, (s->ends_ms - c->now) / 1000);
    set_cookie(c->rs, 1, PRE_COOKIE, "", 0);
    reply_json(c, 200, json_pack("{s:s, s:s, s:s}", "operator", s->op, "role", s->role, "csrf",
                                 s->csrf));
}

static void on_logout(call *c)
{
    char detail[96];
    snprintf(detail, sizeof detail, "source=%s", c->rq->client);
    mon_backend_logout(c->a->b, c->s->token);
    mon_backend_audit(c->a->b, "monitor_logout", c->who, c->who, detail);
    mon_session_end(c->a->sessions, &c->s);
    set_cookie(c->rs, 0, SID_COOKIE, "", 0);
    reply_json(c, 200, json_pack("{s:b}", "ok", 1));
}

static void on_session(call *c)
{
    reply_json(c, 200,
               json_pack("{s:s, s:s, s:s, s:I, s:I}", "operator", c->who, "role", c->role, "csrf",
                         c->s->csrf, "idle_s", (json_int_t)(c->a->o.idle_ms / 1000), "ends_ms",
                         (json_int_t)c->s->ends_ms));
}

/* ------------------------------------------------------------------ overview */

static const char *state_name(int s)
{
    static const char *const N[] = {"unknown", "provisioned", "active", "suspended", "revoked",
                                    "disposed"};
    return s >= 0 && s <= 5 ? N[s] : "unknown";
}

static const char *severity_name(int s)
{
    static const char *const N[] = {"info", "warning", "alarm", "critical"};
    return s >= 0 && s <= 3 ? N[s] : "info";
}

static void on_overview(call *c)
{
    const Suido__RegistryReply *gws = NULL;
    cm_err rc = mon_backend_gateways(c->a->b, c->s->token, &gws);
    if (rc != CM_OK) {
        unavailable(c, "registry");
        return;
    }
    Suido__ArchiveRequest sq = SUIDO__ARCHIVE_REQUEST__INIT, aq = SUIDO__ARCHIVE_REQUEST__INIT;
    sq.op = SUIDO__ARCHIVE_OP__GATEWAY_STATS;
    sq.from_ms = c->now - 24 * 3600 * 1000ull;
    aq.op = SUIDO__ARCHIVE_OP__ALERT_LIST;
    aq.limit = 999;
    Suido__ArchiveReply *stats = NULL, *open = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &sq, &stats) != CM_OK ||
        mon_backend_archive(c->a->b, c->s->token, &aq, &open) != CM_OK) {
        if (stats)
            suido__archive_reply__free_unpacked(stats, NULL);
        unavailable(c, "archive");
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < gws->n_gateways; i++) {
        const Suido__GatewayInfo *g = gws->gateways[i];
        if (!g->id)
            continue;
        const Suido__GatewayStats *st = NULL;
        for (size_t k = 0; stats->status == 0 && k < stats->n_gateway_stats && !st; k++)
            if (strcmp(stats->gateway_stats[k]->gateway_id, g->id) == 0)
                st = stats->gateway_stats[k];
        unsigned open_n = 0, severe = 0;
        for (size_t k = 0; open->status == 0 && k < open->n_cases; k++)
            if (open->cases[k]->gateway_id && strcmp(open->cases[k]->gateway_id, g->id) == 0) {
                open_n++;
                severe += open->cases[k]->severity >= SUIDO__SEVERITY__SEVERITY_ALARM;
            }
        int online = g->state == SUIDO__ENTITY_STATE__STATE_ACTIVE && g->last_seen_ms &&
                     g->last_seen_ms + c->a->o.online_ms >= c->now;
        double days = g->cert_not_after_ms
                          ? ((double)g->cert_not_after_ms - (double)c->now) / 86400000.0
                          : NAN;
        json_array_append_new(
            list,
            json_pack("{s:o, s:o, s:o, s:s, s:o, s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:o, "
                      "s:i, s:i, s:s}",
                      "id", js(g->id), "site", js(g->site), "kind", js(g->kind), "state",
                      state_name(g->state), "model", js(g->model), "firmware", js(g->firmware),
                      "online", online, "last_seen_ms", jint(g->last_seen_ms), "last_reading_ms",
                      jint(st ? st->last_reading_ms : 0), "refusals_24h",
                      jint(st ? st->refusals : 0), "last_refusal", js(st ? st->last_reason : ""),
                      "last_refusal_ms", jint(st ? st->last_refusal_ms : 0), "cert_not_after_ms",
                      jint(g->cert_not_after_ms), "cert_days_left", jnum(floor(days)),
                      "open_alerts", (int)open_n, "severe_alerts", (int)severe,
                      /* what the platform can prove of its data: signed by the gateway, or
                       * only authenticated by its TLS identity (a Sparkplug node) */
                      "provenance",
                      g->protocol && strcmp(g->protocol, "sparkplug") == 0 ? "transport"
                                                                           : "signed"));
    }
    json_t *out = json_pack("{s:I, s:I, s:o, s:b}", "now_ms", (json_int_t)c->now, "online_s",
                            (json_int_t)(c->a->o.online_ms / 1000), "gateways", list,
                            "archive_stats", stats->status == 0);
    suido__archive_reply__free_unpacked(stats, NULL);
    suido__archive_reply__free_unpacked(open, NULL);
    reply_json(c, 200, out);
}

/* ------------------------------------------------------------------ trends */

static json_t *channel_json(const cm_channel *ch)
{
    json_t *limits = ch->has_limits ? json_pack("{s:o, s:o, s:o, s:o}", "ll", jnum(ch->ll), "l",
                                                jnum(ch->l), "h", jnum(ch->h), "hh", jnum(ch->hh))
                                    : json_null();
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:b}", "id", ch->id, "name", ch->name,
                     "quantity", ch->quantity, "unit", ch->unit, "min", jnum(ch->range_min),
                     "max", jnum(ch->range_max), "limits", limits, "confidential",
                     ch->confidential != 0);
}

/* The gateway named by ?gateway= and its kind's profile; NULL after answering. */
static const Suido__GatewayInfo *gateway_arg(call *c, const cm_profile **p)
{
    const char *id = mon_request_arg(c->rq, "gateway");
    if (!mon_valid_gateway(id)) {
        bad_request(c, "bad_gateway", "gateway: 1-64 of a-z, 0-9 and -");
        return NULL;
    }
    const Suido__RegistryReply *gws = NULL;
    cm_err rc = mon_backend_gateways(c->a->b, c->s->token, &gws);
    if (rc == CM_OK)
        rc = mon_backend_profile(c->a->b, c->s->token, p);
    if (rc != CM_OK) {
        unavailable(c, "registry");
        return NULL;
    }
    const Suido__GatewayInfo *g = mon_backend_gateway(gws, id);
    if (!g) {
        reply_error(c, 404, "no such gateway");
        return NULL;
    }
    return g;
}

static void on_channels(call *c)
{
    const cm_profile *p = NULL;
    const Suido__GatewayInfo *g = gateway_arg(c, &p);
    if (!g)
        return;
    json_t *list = json_array();
    for (size_t i = 0; i < cm_profile_channel_count(p); i++) {
        const cm_channel *ch = cm_profile_channel_at(p, i);
        if (g->kind && strcmp(ch->kind, g->kind) == 0)
            json_array_append_new(list, channel_json(ch));
    }
    reply_json(c, 200, json_pack("{s:o, s:o, s:o, s:o}", "gateway", js(g->id), "site",
                                 js(g->site), "kind", js(g->kind), "channels", list));
}

static void on_trend(call *c)
{
    const cm_profile *p = NULL;
    const char *chan = mon_request_arg(c->rq, "channel");
    const char *span_s = mon_request_arg(c->rq, "span");
    uint64_t span = 3600;
    if (!mon_valid_channel(chan)) {
        bad_request(c, "bad_channel", "channel: a profile channel id such as reservoir.level");
        return;
    }
    if (span_s && !mon_parse_u64(span_s, 60, 10ull * 366 * 86400, &span)) {
        bad_request(c, "bad_span", "span: seconds, 60 to ten years");
        return;
    }
    const Suido__GatewayInfo *g = gateway_arg(c, &p);
    if (!g)
        return;
    const cm_channel *ch = cm_profile_channel_by_id(p, chan);
    if (!ch || !g->kind || strcmp(ch->kind, g->kind) != 0) {
        reply_error(c, 404, "this gateway's kind of site has no such channel");
        return;
    }
    if (ch->confidential) {
        /* its readings stay inside their encrypted envelopes: the archive keeps no aggregate of
         * a confidential channel, so there is no trend to ask for, and the page says why */
        reply_json(c, 200, json_pack("{s:o, s:o, s:o, s:b, s:s, s:I, s:I, s:I, s:I, s:o, s:I, "
                                     "s:[]}",
                                     "gateway", js(g->id), "site", js(g->site), "channel",
                                     channel_json(ch), "confidential", 1, "detail",
                                     "confidential channel: its readings are kept only "
                                     "encrypted, so no trend is stored",
                                     "from_ms", (json_int_t)(c->now - span * 1000), "to_ms",
                                     (json_int_t)c->now, "step_s", (json_int_t)0, "readings",
                                     (json_int_t)0, "last", json_null(), "last_ms",
                                     (json_int_t)0, "points"));
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__TREND;
    q.gateway_id = g->id;
    q.channel = (char *)ch->id;
    q.to_ms = c->now + 60000; /* the current minute is part of the picture */
    q.from_ms = c->now - span * 1000;
    q.limit = 360;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0) {
        archive_refused(c, r);
        suido__archive_reply__free_unpacked(r, NULL);
        return;
    }
    json_t *pts = json_array();
    uint64_t total = 0, last_ms = 0;
    double last = NAN;
    for (size_t i = 0; i < r->n_points; i++) {
        const Suido__TrendPoint *t = r->points[i];
        total += t->count;
        if (t->last_ms >= last_ms) {
            last_ms = t->last_ms;
            last = t->last;
        }
        json_array_append_new(pts, json_pack("[I, I, o, o, o, o]", (json_int_t)t->t_ms,
                                             (json_int_t)t->count, jnum(t->min), jnum(t->max),
                                             jnum(t->mean), jnum(t->last)));
    }
    json_t *out = json_pack("{s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o, s:I, s:o}", "gateway",
                            js(g->id), "site", js(g->site), "channel", channel_json(ch), "from_ms",
                            (json_int_t)q.from_ms, "to_ms", (json_int_t)c->now, "step_s",
                            (json_int_t)r->step_s, "readings", (json_int_t)total, "last",
                            jnum(last), "last_ms", (json_int_t)last_ms, "points", pts);
    suido__archive_reply__free_unpacked(r, NULL);
    reply_json(c, 200, out);
}

/* ------------------------------------------------------------------ alerts */

static json_t *case_json(const Suido__AlertCase *k)
{
    return json_pack(
        "{s:I, s:o, s:o, s:o, s:o, s:o, s:s, s:o, s:b, s:I, s:i, s:o, s:o, s:I, s:o, s:I, s:o, "
        "s:o, s:o, s:o}",
        "case_id", (json_int_t)k->case_id, "alert_id", js(k->alert_id), "gateway",
        js(k->gateway_id), "site", js(k->site), "channel", js(k->channel), "rule", js(k->rule),
        "severity", severity_name(k->severity), "state", js(k->state), "active", k->active,
        "raised_ms", (json_int_t)k->raised_ms, "occurrences", (int)k->occurrences, "evidence",
        js(k->evidence), "acked_by", js(k->acked_by), "acked_ms", (json_int_t)k->acked_ms,
        "closed_by", js(k->closed_by), "closed_ms", (json_int_t)k->closed_ms, "cause",
        js(k->cause), "action", js(k->action), "value", jnum(k->value), "limit", jnum(k->limit));
}

static void on_alerts(call *c)
{
    const char *all = mon_request_arg(c->rq, "all");
    if (all && strcmp(all, "0") != 0 && strcmp(all, "1") != 0) {
        bad_request(c, "bad_flag", "all: 0 or 1");
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__ALERT_LIST;
    q.all = all && *all == '1';
    q.limit = 200;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0) {
        archive_refused(c, r);
    } else {
        json_t *list = json_array();
        for (size_t i = 0; i < r->n_cases; i++)
            json_array_append_new(list, case_json(r->cases[i]));
        reply_json(c, 200,
                   json_pack("{s:o, s:b}", "cases", list, "may_change",
                             role_rank(c->role) >= ROLE_OPERATOR));
    }
    suido__archive_reply__free_unpacked(r, NULL);
}

static void on_alert(call *c)
{
    uint64_t id;
    if (!mon_parse_u64(mon_request_arg(c->rq, "id"), 1, INT64_MAX, &id)) {
        bad_request(c, "bad_case_id", "id: a case number");
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__ALERT_SHOW;
    q.case_id = id;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0 || r->n_cases != 1) {
        archive_refused(c, r);
    } else {
        json_t *past = json_array();
        for (size_t i = 0; i < r->n_past; i++)
            json_array_append_new(past, case_json(r->past[i]));
        reply_json(c, 200,
                   json_pack("{s:o, s:o, s:b}", "case", case_json(r->cases[0]), "past", past,
                             "may_change", role_rank(c->role) >= ROLE_OPERATOR));
    }
    suido__archive_reply__free_unpacked(r, NULL);
}

static void alert_change(call *c, int ack)
{
    json_t *j = body_object(c, ack ? "case_id" : "case_id,cause,action");
    if (!j)
        return;
    uint64_t id = 0;
    const char *cause = ack ? "" : mon_body_text(j, "cause", MAX_TEXT);
    const char *action = ack ? "" : mon_body_text(j, "action", MAX_TEXT);
    if (!mon_body_id(j, "case_id", &id) || !cause || !action) {
        json_decref(j);
        bad_request(c, "bad_alert_change",
                    ack ? "case_id: a case number"
                        : "case_id, and cause and action: 1-500 characters of text each");
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = ack ? SUIDO__ARCHIVE_OP__ALERT_ACK : SUIDO__ARCHIVE_OP__ALERT_CLOSE;
    q.case_id = id;
    q.cause = (char *)cause;
    q.action = (char *)action;
    Suido__ArchiveReply *r = NULL;
    cm_err rc = mon_backend_archive(c->a->b, c->s->token, &q, &r);
    char detail[1400], ca[520], ac[520];
    int n = snprintf(detail, sizeof detail, "case=%llu result=%s source=%s",
                     (unsigned long long)id,
                     rc != CM_OK ? "archive_unavailable" : cm_strerror((cm_err)r->status),
                     c->rq->client);
    if (!ack && n > 0 && (size_t)n < sizeof detail)
        snprintf(detail + n, sizeof detail - (size_t)n, " cause=\"%s\" action=\"%s\"",
                 mon_safe(ca, sizeof ca, cause), mon_safe(ac, sizeof ac, action));
    char subject[32];
    snprintf(subject, sizeof subject, "case-%llu", (unsigned long long)id);
    mon_backend_audit(c->a->b, ack ? "monitor_alert_ack" : "monitor_alert_close", subject,
                      c->who, detail);
    json_decref(j);
    if (rc != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0 || r->n_cases != 1)
        archive_refused(c, r);
    else
        reply_json(c, 200, json_pack("{s:o}", "case", case_json(r->cases[0])));
    suido__archive_reply__free_unpacked(r, NULL);
}

static void on_alert_ack(call *c) { alert_change(c, 1); }
static void on_alert_close(call *c) { alert_change(c, 0); }

static void on_live(call *c)
{
    const char *after_s = mon_request_arg(c->rq, "after");
    uint64_t after = 0, last = 0;
    if (after_s && !mon_parse_u64(after_s, 0, INT64_MAX, &after)) {
        bad_request(c, "bad_after", "after: a number");
        return;
    }
    static mon_live_alert buf[50];
    size_t n = mon_live_since(c->a->live, after, buf, 50, &last);
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        const mon_live_alert *x = &buf[i];
        json_t *past = json_array();
        for (size_t k = 0; k < x->n_past; k++)
            json_array_append_new(past, js(x->past[k]));
        json_array_append_new(
            list, json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:s, s:o, s:o, s:I, s:b, s:o, "
                            "s:o}",
                            "seq", (json_int_t)x->seq, "received_ms", (json_int_t)x->received_ms,
                            "id", js(x->id), "gateway", js(x->gateway), "site", js(x->site),
                            "channel", js(x->channel), "rule", js(x->rule), "severity",
                            severity_name(x->severity), "value", jnum(x->value), "limit",
                            jnum(x->limit), "ts_ms", (json_int_t)x->ts_ms, "cleared", x->cleared,
                            "evidence", js(x->evidence), "past_cases", past));
    }
    reply_json(c, 200, json_pack("{s:I, s:o}", "last", (json_int_t)last, "alerts", list));
}

/* ------------------------------------------------------------------ commands and audit */

static void on_commands(call *c)
{
    const char *gw = mon_request_arg(c->rq, "gateway");
    const char *before_s = mon_request_arg(c->rq, "before");
    uint64_t before = 0;
    if ((gw && *gw && !mon_valid_gateway(gw)) ||
        (before_s && !mon_parse_u64(before_s, 0, INT64_MAX, &before))) {
        bad_request(c, "bad_filter", "gateway: a gateway id; before: a record number");
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__COMMAND_LOG;
    q.gateway_id = (char *)(gw ? gw : "");
    q.before = before;
    q.limit = 200;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0) {
        archive_refused(c, r);
    } else {
        json_t *list = json_array();
        for (size_t i = 0; i < r->n_commands; i++) {
            const Suido__CommandRecord *k = r->commands[i];
            json_array_append_new(
                list, json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:o, s:I}",
                                "id", (json_int_t)k->id, "command_id", js(k->command_id),
                                "gateway", js(k->gateway_id), "actuator", js(k->actuator),
                                "value", jnum(k->value), "unit", js(k->unit), "requested_by",
                                js(k->requested_by), "issued_ms", (json_int_t)k->issued_ms,
                                "expires_ms", (json_int_t)k->expires_ms, "decision",
                                js(k->decision), "detail", js(k->detail), "ts_ms",
                                (json_int_t)k->ts_ms));
        }
        reply_json(c, 200, json_pack("{s:o}", "commands", list));
    }
    suido__archive_reply__free_unpacked(r, NULL);
}

static void on_audit(call *c)
{
    const char *before_s = mon_request_arg(c->rq, "before");
    uint64_t before = 0;
    if (before_s && !mon_parse_u64(before_s, 0, INT64_MAX, &before)) {
        bad_request(c, "bad_before", "before: an entry number");
        return;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__AUDIT_LIST;
    q.before = before;
    q.limit = 200;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0) {
        archive_refused(c, r);
    } else {
        json_t *list = json_array();
        for (size_t i = 0; i < r->n_audit; i++) {
            const Suido__AuditRecord *e = r->audit[i];
            json_array_append_new(
                list, json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "seq", (json_int_t)e->seq,
                                "ts_ms", (json_int_t)e->ts_ms, "source", js(e->source), "event",
                                js(e->event), "subject", js(e->subject), "actor", js(e->actor),
                                "detail", js(e->detail)));
        }
        reply_json(c, 200, json_pack("{s:o}", "entries", list));
    }
    suido__archive_reply__free_unpacked(r, NULL);
}

static void on_audit_verify(call *c)
{
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__AUDIT_VERIFY;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return;
    }
    if (r->status != 0 || !r->audit_check) {
        archive_refused(c, r);
    } else {
        const Suido__AuditCheck *k = r->audit_check;
        char detail[256];
        char cp[24];
        mon_safe(cp, sizeof cp, k->checkpoint ? k->checkpoint : "");
        snprintf(detail, sizeof detail,
                 "intact=%d entries=%llu first_bad=%llu head=%s checkpoint=%s checkpoint_seq=%llu",
                 k->intact, (unsigned long long)k->entries,
                 (unsigned long long)k->first_bad_seq, k->head_sha256 ? k->head_sha256 : "", cp,
                 (unsigned long long)k->checkpoint_seq);
        mon_backend_audit(c->a->b, "monitor_audit_checked", "audit", c->who, detail);
        /* checkpoint: whether the log reaches the registry's signed head ("truncated": cut) */
        reply_json(c, 200,
                   json_pack("{s:b, s:I, s:I, s:o, s:o, s:o, s:I}", "intact", k->intact,
                             "entries", (json_int_t)k->entries, "first_bad_seq",
                             (json_int_t)k->first_bad_seq, "problem", js(k->problem), "head",
                             js(k->head_sha256), "checkpoint", js(k->checkpoint),
                             "checkpoint_seq", (json_int_t)k->checkpoint_seq));
    }
    suido__archive_reply__free_unpacked(r, NULL);
}

/* ------------------------------------------------------------------ planning */

/* The report over ?from=&to= (days, to inclusive); NULL after answering. */
static int planning_report(call *c, mon_report *rep)
{
    uint64_t from, to;
    if (!mon_parse_date(mon_request_arg(c->rq, "from"), &from) ||
        !mon_parse_date(mon_request_arg(c->rq, "to"), &to) || to < from ||
        to - from > 3660ull * 86400000ull) {
        bad_request(c, "bad_period", "from and to: days YYYY-MM-DD, from <= to, ten years at most");
        return 0;
    }
    to += 86400000ull; /* through the end of the last day */
    const Suido__RegistryReply *gws = NULL;
    const cm_profile *p = NULL;
    if (mon_backend_gateways(c->a->b, c->s->token, &gws) != CM_OK ||
        mon_backend_profile(c->a->b, c->s->token, &p) != CM_OK) {
        unavailable(c, "registry");
        return 0;
    }
    Suido__ArchiveRequest q = SUIDO__ARCHIVE_REQUEST__INIT;
    q.op = SUIDO__ARCHIVE_OP__PLANNING;
    q.from_ms = from;
    q.to_ms = to;
    Suido__ArchiveReply *r = NULL;
    if (mon_backend_archive(c->a->b, c->s->token, &q, &r) != CM_OK) {
        unavailable(c, "archive");
        return 0;
    }
    int ok = r->status == 0 && mon_report_build(p, gws, r, from, to, rep) == CM_OK;
    if (!ok)
        archive_refused(c, r);
    suido__archive_reply__free_unpacked(r, NULL);
    return ok;
}

static void on_planning(call *c)
{
    mon_report rep;
    if (!planning_report(c, &rep))
        return;
    reply_json(c, 200, mon_report_json(&rep));
    mon_report_free(&rep);
}

static void on_planning_csv(call *c)
{
    mon_report rep;
    if (!planning_report(c, &rep))
        return;
    size_t len = 0;
    char *csv = mon_report_csv(&rep, &len);
    char from[11], to[11];
    mon_format_date(rep.from_ms, from);
    mon_format_date(rep.to_ms - 86400000ull, to);
    char detail[160];
    snprintf(detail, sizeof detail, "from=%s to=%s sites=%zu source=%s", from, to, rep.n_sites,
             c->rq->client);
    mon_report_free(&rep);
    if (!csv) {
        reply_error(c, 500, "the report could not be written");
        return;
    }
    mon_backend_audit(c->a->b, "monitor_report_exported", "planning", c->who, detail);
    snprintf(c->rs->disposition, sizeof c->rs->disposition,
             "attachment; filename=\"suido-planning-%s-%s.csv\"", from, to);
    mon_response_take(c->rs, 200, "text/csv; charset=utf-8", csv, len);
}

/* ------------------------------------------------------------------ pages */

/* What a browser asking for a page it may not have sees: plain text in the page frame. */
static const char REFUSED_PAGE[] =
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<title>suido monitor \xc2\xb7 not for your role</title>\n"
    "<link rel=\"icon\" href=\"/static/favicon.svg\">\n"
    "<link rel=\"stylesheet\" href=\"/static/style.css\">\n</head>\n<body>\n"
    "<header class=\"top\"><div class=\"brand\">suido<small>monitor</small></div></header>\n"
    "<main><div class=\"panel\"><h1>Not for your role</h1>\n"
    "<p id=\"refused\">your role may not see or do this. The attempt is in the audit log.</p>\n"
    "<p><a href=\"/overview\">Back to the overview</a></p></div></main>\n</body>\n</html>\n";

static void on_page(call *c, const route *r)
{
    const www_file *f = find_file(c->a, r->page);
    if (!f) {
        reply_error(c, 404, "no such page");
        return;
    }
    if (*c->who) {
        char detail[96];
        snprintf(detail, sizeof detail, "page=%s source=%s", r->path, c->rq->client);
        mon_backend_audit(c->a->b, "monitor_view", r->path, c->who, detail);
    }
    mon_response_static(c->rs, 200, f->type, f->data, f->len);
}

static void on_root(call *c)
{
    mon_response_text(c->rs, 303, "text/plain; charset=utf-8", "see /overview\n");
    snprintf(c->rs->location, sizeof c->rs->location, "/overview");
}

/* The monitor's whole attack surface: every path it answers and what each needs. */
static const route ROUTES[] = {
    {"GET", "/", ROLE_PUBLIC, 0, "", NULL, on_root},
    {"GET", "/login", ROLE_PUBLIC, 0, "", "login.html", NULL},
    {"GET", "/overview", ROLE_VIEWER, 0, "", "overview.html", NULL},
    {"GET", "/trends", ROLE_VIEWER, 0, "gateway,channel", "trends.html", NULL},
    {"GET", "/alerts", ROLE_VIEWER, 0, "id", "alerts.html", NULL},
    {"GET", "/planning", ROLE_VIEWER, 0, "from,to", "planning.html", NULL},
    {"GET", "/commands", ROLE_OPERATOR, 0, "", "commands.html", NULL},
    {"GET", "/audit", ROLE_ADMIN, 0, "", "audit.html", NULL},
    {"GET", "/api/login", ROLE_PUBLIC, 0, "", NULL, on_login_form},
    {"POST", "/api/login", ROLE_PUBLIC, 1, "", NULL, on_login},
    {"POST", "/api/logout", ROLE_VIEWER, 1, "", NULL, on_logout},
    {"GET", "/api/session", ROLE_VIEWER, 0, "", NULL, on_session},
    {"GET", "/api/overview", ROLE_VIEWER, 0, "", NULL, on_overview},
    {"GET", "/api/channels", ROLE_VIEWER, 0, "gateway", NULL, on_channels},
    {"GET", "/api/trend", ROLE_VIEWER, 0, "gateway,channel,span", NULL, on_trend},
    {"GET", "/api/alerts", ROLE_VIEWER, 0, "all", NULL, on_alerts},
    {"GET", "/api/alerts/live", ROLE_VIEWER, 0, "after", NULL, on_live},
    {"GET", "/api/alert", ROLE_VIEWER, 0, "id", NULL, on_alert},
    {"POST", "/api/alert/ack", ROLE_OPERATOR, 1, "", NULL, on_alert_ack},
    {"POST", "/api/alert/close", ROLE_OPERATOR, 1, "", NULL, on_alert_close},
    {"GET", "/api/planning", ROLE_VIEWER, 0, "from,to", NULL, on_planning},
    {"GET", "/api/planning.csv", ROLE_VIEWER, 0, "from,to", NULL, on_planning_csv},
    {"GET", "/api/commands", ROLE_OPERATOR, 0, "gateway,before", NULL, on_commands},
    {"GET", "/api/audit", ROLE_ADMIN, 0, "before", NULL, on_audit},
    {"GET", "/api/audit/verify", ROLE_ADMIN, 0, "", NULL, on_audit_verify},
};

/* ------------------------------------------------------------------ the rules */

/* The live session of the request, confirmed by the registry; 0 after answering. */
static int need_session(call *c, const route *r)
{
    const char *expired = NULL;
    char expired_op[65] = "";
    const char *cookie = mon_request_cookie(c->rq, SID_COOKIE);
    mon_session *s = mon_session_find(c->a->sessions, cookie, c->now, &expired, expired_op);
    if (s && s->kind != MON_LIVE)
        s = NULL;
    const char *why = NULL;
    if (expired && expired_op[0]) {
        char detail[128];
        snprintf(detail, sizeof detail, "reason=%s source=%s", expired, c->rq->client);
        mon_backend_audit(c->a->b, "monitor_session_expired", expired_op, expired_op, detail);
        why = "your session has expired: log in again";
    }
    if (s) {
        char who[65], role[16];
        cm_err rc = mon_backend_session(c->a->b, s->token, who, role);
        if (rc == CM_ERR_UNAVAILABLE) {
            unavailable(c, "registry");
            return 0;
        }
        if (rc != CM_OK || strcmp(who, s->op) != 0) {
            /* logged out elsewhere, suspended, or the registry's session ran out */
            char detail[128];
            snprintf(detail, sizeof detail, "reason=registry source=%s", c->rq->client);
            mon_backend_audit(c->a->b, "monitor_session_expired", s->op, s->op, detail);
            mon_session_end(c->a->sessions, &s);
            why = "your session has ended: log in again";
        } else {
            snprintf(s->role, sizeof s->role, "%s", role); /* a change of role counts at once */
        }
    }
    if (!s) {
        unsigned status = r->page ? 303 : 401; /* a browser asking for a page is sent to log in */
        if (!why)
            refuse(c, status, "monitor_unauthenticated", "no_session", "log in first", 1);
        else
            reply_error(c, 401, why);
        if (r->page) {
            mon_response_text(c->rs, 303, "text/plain; charset=utf-8", "log in first\n");
            snprintf(c->rs->location, sizeof c->rs->location, "/login");
        }
        if (expired || why)
            set_cookie(c->rs, 0, SID_COOKIE, "", 0);
        return 0;
    }
    c->s = s;
    snprintf(c->who, sizeof c->who, "%s", s->op);
    snprintf(c->role, sizeof c->role, "%s", s->role);
    return 1;
}

static void serve_static(call *c)
{
    const www_file *f = find_file(c->a, c->rq->path + strlen("/static/"));
    if (!f || strcmp(f->type, "text/html; charset=utf-8") == 0 || c->rq->n_args ||
        (strcmp(c->rq->method, "GET") != 0 && strcmp(c->rq->method, "HEAD") != 0)) {
        refuse(c, 404, "monitor_not_found", "not_found", "no such file", 1);
        return;
    }
    mon_response_static(c->rs, 200, f->type, f->data, f->len);
    c->rs->cacheable = 1;
}

void mon_app_handle(void *ctx, const mon_request *rq, mon_response *rs)
{
    mon_app *a = ctx;
    call c = {.a = a, .rq = rq, .rs = rs, .now = cm_now_ms()};
    cm_metric_inc(a->requests);
    /* whose browser asks, as far as its cookie tells (the registry confirms it where the route
     * needs a session): an operator's refusals are audited, never summed up */
    const mon_session *peek =
        mon_session_peek(a->sessions, mon_request_cookie(rq, SID_COOKIE), c.now);
    if (peek)
        snprintf(c.who, sizeof c.who, "%s", peek->op);
    int get = strcmp(rq->method, "GET") == 0 || strcmp(rq->method, "HEAD") == 0;
    int post = strcmp(rq->method, "POST") == 0;
    if (!get && !post) {
        refuse(&c, 405, "monitor_bad_request", "method", "method not allowed", 1);
        return;
    }
    if (rq->body_too_big) {
        refuse(&c, 413, "monitor_bad_request", "body_too_big", "request body too large", 1);
        return;
    }
    if (rq->args_bad) {
        refuse(&c, 400, "monitor_bad_request", "bad_query", "malformed query string", 1);
        return;
    }
    if (!mon_path_ok(rq->path)) {
        refuse(&c, 404, "monitor_not_found", "bad_path", "no such page", 1);
        return;
    }
    if (strncmp(rq->path, "/static/", 8) == 0) {
        serve_static(&c);
        return;
    }
    const route *r = NULL;
    int path_known = 0;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (strcmp(ROUTES[i].path, rq->path) == 0) {
            path_known = 1;
            if ((get && strcmp(ROUTES[i].method, "GET") == 0) ||
                (post && strcmp(ROUTES[i].method, "POST") == 0))
                r = &ROUTES[i];
        }
    if (!r) {
        if (path_known)
            refuse(&c, 405, "monitor_bad_request", "method", "method not allowed here", 1);
        else
            refuse(&c, 404, "monitor_not_found", "not_found", "no such page", 1);
        return;
    }
    if (get && rq->body_len) {
        refuse(&c, 400, "monitor_bad_request", "body_on_get", "GET takes no body", 1);
        return;
    }
    for (size_t i = 0; i < rq->n_args; i++)
        if (!mon_listed(r->args, rq->args[i].key)) {
            refuse(&c, 400, "monitor_bad_request", "unknown_argument",
                   "this request does not take that argument", 1);
            return;
        }
    if (r->min_role > ROLE_PUBLIC) {
        if (!need_session(&c, r))
            return;
        if (role_rank(c.role) < r->min_role) {
            char detail[160], path[96];
            snprintf(detail, sizeof detail, "path=%s role=%s source=%s",
                     mon_safe(path, sizeof path, rq->path), c.role, rq->client);
            cm_svc_reject(a->svc, "role");
            mon_backend_audit(a->b, "monitor_access_denied", rq->path, c.who, detail);
            if (r->page)
                mon_response_static(rs, 403, "text/html; charset=utf-8", REFUSED_PAGE,
                                    sizeof REFUSED_PAGE - 1);
            else
                reply_error(&c, 403, "your role may not see or do this");
            return;
        }
    }
    if (r->changes) {
        if (!mon_same_origin(mon_request_header(rq, "Host"), mon_request_header(rq, "Origin"),
                             mon_request_header(rq, "Sec-Fetch-Site")) ||
            (c.s && !mon_session_csrf_ok(c.s, mon_request_header(rq, "X-CSRF-Token")))) {
            refuse(&c, 403, "monitor_csrf_rejected", "csrf",
                   "this request lacks the page's token; reload the page", 1);
            return;
        }
    }
    if (c.s)
        mon_session_touch(c.s, c.now);
    if (r->page)
        on_page(&c, r);
    else
        r->fn(&c);
    cm_metric_set(a->sessions_live, (int64_t)mon_sessions_count(a->sessions, MON_LIVE));
}

void mon_app_refusal(void *ctx, const char *what)
{
    mon_app *a = ctx;
    char detail[256];
    mon_safe(detail, sizeof detail, what);
    cm_svc_reject(a->svc, "http_protocol");
    cm_warn("error=\"%s\"", detail);
    mon_backend_audit_outsider(a->b, "monitor_http_refused", "http", "anonymous", detail);
}

cm_err mon_app_new(cm_svc *svc, mon_backend *b, mon_live *live, const mon_app_opts *o,
                   mon_app **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    mon_app *a = calloc(1, sizeof *a);
    if (!a)
        return CM_ERR_NOMEM;
    a->svc = svc;
    a->b = b;
    a->live = live;
    a->o = *o;
    cm_err rc = load_www(a, o->www, err);
    if (rc == CM_OK && !(a->sessions = mon_sessions_new(o->max_sessions, o->idle_ms,
                                                        o->absolute_ms, 10 * 60 * 1000)))
        rc = CM_ERR_NOMEM;
    if (rc != CM_OK) {
        mon_app_destroy(&a);
        return rc;
    }
    cm_metrics *mx = svc->metrics;
    a->requests = cm_metric_counter(mx, "suido_monitor_requests_total", "HTTPS requests");
    a->logins = cm_metric_counter(mx, "suido_monitor_logins_total", "operators logged in");
    a->logins_failed = cm_metric_counter(mx, "suido_monitor_logins_failed_total",
                                         "logins refused (credentials, lockout, malformed)");
    a->sessions_live = cm_metric_gauge(mx, "suido_monitor_sessions", "live sessions");
    *out = a;
    return CM_OK;
}

void mon_app_destroy(mon_app **ap)
{
    if (!ap || !*ap)
        return;
    mon_app *a = *ap;
    for (size_t i = 0; i < a->n_files; i++)
        free(a->files[i].data);
    mon_sessions_destroy(&a->sessions);
    free(a);
    *ap = NULL;
}
