/* shard: per-reading, per-relation and time-driven checks of one anomaly shard (shard.h). Owns
 * two fixed tables — (gateway, channel) and (gateway, relation) states — allocated at creation,
 * and the live_rows of the learned model; borrows the profile and the model. */
#include "shard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_time.h"
#include "detectors.h"
#include "live_rows.h"

#define MAX_SLOTS (1u << 24)
#define MAX_LEARNED_GATEWAYS (1u << 20)

/* Alert families, for suido_anomaly_alerts_total{family="..."}. */
static const char *const FAMILIES[] = {"limit",     "rate",    "stuck",     "missing",
                                       "deviation", "balance", "pump_flow", "learned",
                                       "bad_quality"};
#define N_FAMILIES (sizeof FAMILIES / sizeof FAMILIES[0])

/* An open-addressing table of (gateway, subject) keys with dense entries 0..used-1: subject is a
 * profile channel or relation (compared by address, hashed by its id). At most 3/4 full, so a
 * probe always ends on an empty index. */
typedef struct slot_key {
    char gw[SHARD_GW_MAX + 1];
    const void *subject;
} slot_key;

typedef struct table {
    uint32_t *index; /* 0 empty, else entry + 1 */
    slot_key *keys;
    size_t mask, used, cap;
} table;

typedef struct chan_state {
    const cm_channel *ch;
    char site[64];      /* the gateway's site at its last reading, for time-driven alerts */
    anomaly_state rules;
    det_stuck_state stuck;
    det_deviation_state dev;
    det_missing_state missing;
    double last_value;  /* the reading with the latest timestamp, for relations */
    uint64_t last_ms;
    int has_value;
    int bad_raised;     /* a bad_quality episode is open: raised, not yet ended by a GOOD reading */
} chan_state;

typedef struct rel_state {
    const cm_relation *rel;
    uint64_t last_ms; /* newest channel timestamp the relation was fed */
    int fed;
    union {
        det_balance_state balance;
        det_pumpflow_state pumpflow;
    } u;
} rel_state;

struct shard {
    const cm_profile *p;
    const learned_model *model;
    shard_alert_fn fn;
    void *ctx;
    table chans, rels;
    chan_state *chan;
    rel_state *rel;
    live_rows *rows;
    const shard_batch *cur; /* the batch being fed, for the learned callback */
    cm_metric *checked, *raised, *cleared, *untracked, *rel_untracked, *learned_untracked,
        *learned_late, *learned_rows, *future, *bad_quality, *family[N_FAMILIES];
};

void shard_limits_default(shard_limits *l)
{
    l->channel_slots = 1u << 16;
    l->relation_slots = 1u << 14;
    l->learned_gateways = 1024;
}

static int table_init(table *t, size_t slots)
{
    t->mask = slots - 1;
    t->cap = slots / 4 * 3;
    t->used = 0;
    t->index = calloc(slots, sizeof *t->index);
    t->keys = calloc(t->cap, sizeof *t->keys);
    return t->index && t->keys ? 0 : -1;
}

static void table_free(table *t)
{
    free(t->index);
    free(t->keys);
    memset(t, 0, sizeof *t);
}

static uint32_t hash_key(const char *gw, const char *subject_id)
{
    uint32_t h = 2166136261u;
    for (const char *c = gw; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    h = (h ^ (uint8_t)'/') * 16777619u;
    for (const char *c = subject_id; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    return h;
}

/* Entry of (gw, subject), created if create and there is room (*created then 1); -1 if absent
 * or the table is full. gw is at most SHARD_GW_MAX characters. */
static long table_get(table *t, const char *gw, const void *subject, const char *subject_id,
                      int create, int *created)
{
    *created = 0;
    size_t h = hash_key(gw, subject_id) & t->mask;
    for (; t->index[h]; h = (h + 1) & t->mask) {
        const slot_key *k = &t->keys[t->index[h] - 1];
        if (k->subject == subject && strcmp(k->gw, gw) == 0)
            return (long)t->index[h] - 1;
    }
    if (!create || t->used >= t->cap)
        return -1;
    slot_key *k = &t->keys[t->used];
    snprintf(k->gw, sizeof k->gw, "%s", gw);
    k->subject = subject;
    t->index[h] = (uint32_t)++t->used;
    *created = 1;
    return (long)t->used - 1;
}

static int power_of_two_in(size_t n, size_t lo, size_t hi)
{
    return n >= lo && n <= hi && (n & (n - 1)) == 0;
}

static void on_row(void *ctx, const live_rows_row *row);

cm_err shard_new(const cm_profile *p, const learned_model *model, const shard_limits *lim,
                 cm_metrics *mx, shard_alert_fn fn, void *ctx, shard **out,
                 char err[SHARD_ERRLEN])
{
    *out = NULL;
    shard_limits def;
    if (!lim) {
        shard_limits_default(&def);
        lim = &def;
    }
    if (!power_of_two_in(lim->channel_slots, 4, MAX_SLOTS) ||
        !power_of_two_in(lim->relation_slots, 4, MAX_SLOTS) ||
        (model && (lim->learned_gateways < 1 || lim->learned_gateways > MAX_LEARNED_GATEWAYS))) {
        snprintf(err, SHARD_ERRLEN, "shard: slots must be powers of two in 4..%u, learned "
                 "gateways 1..%u", MAX_SLOTS, MAX_LEARNED_GATEWAYS);
        return CM_ERR_INVAL;
    }
    shard *s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->p = p;
    s->model = model;
    s->fn = fn;
    s->ctx = ctx;
    if (table_init(&s->chans, lim->channel_slots) || table_init(&s->rels, lim->relation_slots))
        goto nomem;
    s->chan = calloc(s->chans.cap, sizeof *s->chan);
    s->rel = calloc(s->rels.cap, sizeof *s->rel);
    if (!s->chan || !s->rel)
        goto nomem;
    if (model) {
        char lerr[LEARNED_ERRLEN];
        cm_err rc = live_rows_new(model, lim->learned_gateways, on_row, s, &s->rows, lerr);
        if (rc != CM_OK) {
            snprintf(err, SHARD_ERRLEN, "%s", lerr);
            shard_destroy(&s);
            return rc;
        }
    }
    if (mx) {
        s->checked = cm_metric_counter(mx, "suido_anomaly_checked_total", "readings checked");
        s->raised = cm_metric_counter(mx, "suido_anomaly_alerts_raised_total", "alerts raised");
        s->cleared = cm_metric_counter(mx, "suido_anomaly_alerts_cleared_total",
                                       "alerts cleared");
        for (size_t i = 0; i < N_FAMILIES; i++) {
            char name[96];
            snprintf(name, sizeof name, "suido_anomaly_alerts_total{family=\"%s\"}",
                     FAMILIES[i]);
            s->family[i] = cm_metric_counter(mx, name, "alerts raised, by detector family");
        }
        s->untracked = cm_metric_counter(
            mx, "suido_anomaly_untracked_total",
            "readings not checked because the state table is full (or the gateway id too long)");
        s->rel_untracked =
            cm_metric_counter(mx, "suido_anomaly_relations_untracked_total",
                              "relation checks skipped because the relation table is full");
        s->learned_untracked = cm_metric_counter(
            mx, "suido_anomaly_learned_untracked_total",
            "readings not judged by the learned model because its gateway table is full");
        s->learned_late = cm_metric_counter(
            mx, "suido_anomaly_learned_late_total",
            "readings for a learned row already judged (an earlier bucket), dropped");
        s->learned_rows =
            cm_metric_counter(mx, "suido_anomaly_learned_rows_total", "rows judged by the model");
        s->future = cm_metric_counter(
            mx, "suido_anomaly_future_readings_total",
            "readings ignored because they are stamped ahead of this shard's clock");
        s->bad_quality = cm_metric_counter(
            mx, "suido_anomaly_bad_quality_readings_total",
            "readings of quality BAD (device not answering): judged by no detector");
    }
    *out = s;
    return CM_OK;
nomem:
    shard_destroy(&s);
    snprintf(err, SHARD_ERRLEN, "shard: out of memory");
    return CM_ERR_NOMEM;
}

void shard_destroy(shard **sp)
{
    if (!sp || !*sp)
        return;
    shard *s = *sp;
    live_rows_destroy(&s->rows);
    table_free(&s->chans);
    table_free(&s->rels);
    free(s->chan);
    free(s->rel);
    free(s);
    *sp = NULL;
}

/* Counts and hands one event to the callback. */
static void emit(shard *s, const char *gw, const char *site, const char *subject,
                 const anomaly_event *e, double value, uint64_t ts_ms, uint64_t received_ms)
{
    char id[256];
    snprintf(id, sizeof id, "%s/%s/%s", gw, subject, e->family);
    cm_metric_inc(e->cleared ? s->cleared : s->raised);
    if (!e->cleared)
        for (size_t i = 0; i < N_FAMILIES; i++)
            if (strcmp(e->family, FAMILIES[i]) == 0)
                cm_metric_inc(s->family[i]);
    shard_alert a = {.id = id, .gateway_id = gw, .site = site ? site : "", .subject = subject,
                     .ev = e, .value = value, .timestamp_ms = ts_ms, .received_ms = received_ms};
    if (s->fn)
        s->fn(s->ctx, &a);
}

/* The learned model stepped a row of the batch's gateway: an alert when its flag moves. */
static void on_row(void *ctx, const live_rows_row *row)
{
    shard *s = ctx;
    cm_metric_inc(s->learned_rows);
    if (!row->changed)
        return;
    const learned_params *par = learned_model_params(s->model);
    anomaly_event e = {.rule = "learned", .family = "learned", .cleared = !row->flag};
    e.severity = row->flag ? SUIDO__SEVERITY__SEVERITY_ALARM : SUIDO__SEVERITY__SEVERITY_INFO;
    e.limit = row->flag ? par->on : par->off;
    snprintf(e.evidence, sizeof e.evidence, "score %.2f %s %.2f, top channel %s%s", row->score,
             row->flag ? ">" : "<", e.limit, row->top[0] ? row->top : "none",
             row->brk ? " (after a gap)" : "");
    emit(s, row->gateway_id, s->cur->site, live_rows_site_kind(s->rows), &e, row->score,
         row->start_ms, s->cur->received_ms);
}

/* A reading of quality BAD: its value is no measurement, so no detector sees it and it does not
 * become the channel's latest reading; the first of an episode raises bad_quality (see shard.h). */
static void bad_reading(shard *s, const shard_batch *b, chan_state *cs,
                        const Suido__MappedReading *r)
{
    if (b->site && strcmp(cs->site, b->site) != 0)
        snprintf(cs->site, sizeof cs->site, "%s", b->site);
    if (cs->bad_raised)
        return;
    cs->bad_raised = 1;
    anomaly_event e = {.rule = "bad_quality", .family = "bad_quality",
                       .severity = SUIDO__SEVERITY__SEVERITY_ALARM, .limit = NAN};
    snprintf(e.evidence, sizeof e.evidence,
             "no valid measurement: the gateway reports the device as not answering "
             "(channel %s, gateway %s)", cs->ch->id, b->gateway_id);
    emit(s, b->gateway_id, b->site, cs->ch->id, &e, cs->has_value ? cs->last_value : 0,
         r->timestamp_ms, b->received_ms);
}

/* A GOOD reading after BAD ones: the device answers again, the episode ends. */
static void good_again(shard *s, const shard_batch *b, chan_state *cs,
                       const Suido__MappedReading *r)
{
    cs->bad_raised = 0;
    anomaly_event e = {.rule = "bad_quality", .family = "bad_quality", .cleared = 1,
                       .severity = SUIDO__SEVERITY__SEVERITY_INFO, .limit = NAN};
    snprintf(e.evidence, sizeof e.evidence,
             "valid measurement again: the device answers (channel %s, gateway %s)", cs->ch->id,
             b->gateway_id);
    emit(s, b->gateway_id, b->site, cs->ch->id, &e, r->value, r->timestamp_ms, b->received_ms);
}

/* The per-reading detectors of one (gateway, channel), in the order shard.h lists them; keeps
 * the latest reading for the relations. */
static void check_reading(shard *s, const shard_batch *b, chan_state *cs,
                          const Suido__MappedReading *r, uint64_t now_ms)
{
    const cm_channel *ch = cs->ch;
    double v = r->value;
    uint64_t ts = r->timestamp_ms;
    anomaly_event ev[3];
    if (cs->bad_raised && r->quality == SUIDO__QUALITY__QUALITY_GOOD)
        good_again(s, b, cs, r);
    int n = anomaly_eval(&cs->rules, ch, v, ts, ev);
    for (int k = 0; k < n; k++)
        emit(s, b->gateway_id, b->site, ch->id, &ev[k], v, ts, b->received_ms);
    if (det_stuck_update(&cs->stuck, ch, NULL, ts, v, &ev[0]))
        emit(s, b->gateway_id, b->site, ch->id, &ev[0], v, ts, b->received_ms);
    if (ch->deviation && det_deviation_update(&cs->dev, ch, NULL, ts, v, &ev[0]))
        emit(s, b->gateway_id, b->site, ch->id, &ev[0], v, ts, b->received_ms);
    if (det_missing_seen(&cs->missing, now_ms, &ev[0]))
        emit(s, b->gateway_id, b->site, ch->id, &ev[0], v, ts, b->received_ms);
    if (isfinite(v) && (!cs->has_value || ts >= cs->last_ms)) {
        cs->last_value = v;
        cs->last_ms = ts;
        cs->has_value = 1;
    }
    if (b->site && strcmp(cs->site, b->site) != 0)
        snprintf(cs->site, sizeof cs->site, "%s", b->site);
}

/* The latest reading of channel id for gw: its state, or NULL if none. */
static const chan_state *latest(shard *s, const char *gw, const char *id)
{
    const cm_channel *ch = cm_profile_channel_by_id(s->p, id);
    int created;
    long k = ch ? table_get(&s->chans, gw, ch, ch->id, 0, &created) : -1;
    return k >= 0 && s->chan[k].has_value ? &s->chan[k] : NULL;
}

/* Feeds relation r of the batch's gateway with its channels' latest readings (see shard.h). */
static void check_relation(shard *s, const shard_batch *b, const cm_relation *r)
{
    const char *ids[3 + CM_RELATION_MAX_STATUS];
    size_t n = 0;
    if (r->type == CM_RELATION_TANK_BALANCE) {
        ids[n++] = r->level;
        ids[n++] = r->inflow;
        ids[n++] = r->outflow;
    } else {
        for (size_t i = 0; i < r->n_status; i++)
            ids[n++] = r->status[i];
        ids[n++] = r->flow;
    }
    const chan_state *cs[3 + CM_RELATION_MAX_STATUS];
    uint64_t newest = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(cs[i] = latest(s, b->gateway_id, ids[i])))
            return;
        newest = cs[i]->last_ms > newest ? cs[i]->last_ms : newest;
    }
    for (size_t i = 0; i < n; i++) { /* a stale channel would compare two different instants */
        double limit_s = det_missing_limit_s(cs[i]->ch);
        if (limit_s > 0 && (double)(newest - cs[i]->last_ms) > limit_s * 1000.0)
            return;
    }
    int created;
    long k = table_get(&s->rels, b->gateway_id, r, r->id, 1, &created);
    if (k < 0) {
        cm_metric_inc(s->rel_untracked);
        return;
    }
    rel_state *rs = &s->rel[k];
    if (created)
        rs->rel = r;
    if (rs->fed && newest <= rs->last_ms)
        return; /* nothing new since the last batch */
    rs->fed = 1;
    rs->last_ms = newest;
    anomaly_event ev;
    double value;
    int raised;
    if (r->type == CM_RELATION_TANK_BALANCE) {
        double level, in, out;
        /* the profile checked at load that these units convert */
        if (cm_unit_convert(cs[0]->ch->unit, "m", cs[0]->last_value, &level) != CM_OK ||
            cm_unit_convert(cs[1]->ch->unit, "L/s", cs[1]->last_value, &in) != CM_OK ||
            cm_unit_convert(cs[2]->ch->unit, "L/s", cs[2]->last_value, &out) != CM_OK)
            return;
        det_balance_params bp;
        det_balance_params_default(&bp, r->area_m2);
        value = level;
        raised = det_balance_update(&rs->u.balance, &bp, newest, level, in, out, &ev);
    } else {
        double status[CM_RELATION_MAX_STATUS];
        for (size_t i = 0; i < r->n_status; i++)
            status[i] = cs[i]->last_value;
        const cm_channel *flow = cs[r->n_status]->ch;
        det_pumpflow_params pp;
        det_pumpflow_params_default(&pp, flow->range_max - flow->range_min);
        pp.min_flow = r->min_flow;
        value = cs[r->n_status]->last_value;
        raised = det_pumpflow_update(&rs->u.pumpflow, &pp, newest,
                                     det_pumps_running(status, r->n_status), value, &ev);
    }
    if (raised)
        emit(s, b->gateway_id, b->site, r->id, &ev, value, newest, b->received_ms);
}

void shard_feed(shard *s, const shard_batch *b, uint64_t now_ms)
{
    const char *gw = b->gateway_id;
    if (!gw || !*gw)
        return;
    if (strlen(gw) > SHARD_GW_MAX) {
        cm_metric_add(s->untracked, b->n_readings);
        return;
    }
    s->cur = b;
    for (size_t i = 0; i < b->n_readings; i++) {
        const Suido__MappedReading *r = b->readings[i];
        const cm_channel *ch = r && r->channel ? cm_profile_channel_by_id(s->p, r->channel) : NULL;
        if (!ch)
            continue;
        /* the verifier refuses these; should one pass, it must not become every detector's and
         * relation's latest reading until the clock catches up */
        if (r->timestamp_ms > now_ms && r->timestamp_ms - now_ms > CM_MAX_AHEAD_MS) {
            cm_metric_inc(s->future);
            continue;
        }
        int created;
        long k = table_get(&s->chans, gw, ch, ch->id, 1, &created);
        if (k >= 0 && created)
            s->chan[k].ch = ch;
        if (r->quality == SUIDO__QUALITY__QUALITY_BAD) {
            cm_metric_inc(s->bad_quality);
            if (k < 0)
                cm_metric_inc(s->untracked);
            else
                bad_reading(s, b, &s->chan[k], r);
            continue; /* nor a row of the learned model */
        }
        if (k < 0) {
            cm_metric_inc(s->untracked);
        } else {
            cm_metric_inc(s->checked);
            check_reading(s, b, &s->chan[k], r, now_ms);
        }
        if (s->rows) {
            live_rows_result lr =
                live_rows_add(s->rows, gw, b->site_kind, ch->id, r->value, r->timestamp_ms);
            if (lr == LIVE_ROWS_FULL || lr == LIVE_ROWS_NOMEM)
                cm_metric_inc(s->learned_untracked);
            else if (lr == LIVE_ROWS_LATE)
                cm_metric_inc(s->learned_late);
        }
    }
    if (b->site_kind && *b->site_kind)
        for (size_t i = 0; i < cm_profile_relation_count(s->p); i++) {
            const cm_relation *r = cm_profile_relation_at(s->p, i);
            if (strcmp(r->kind, b->site_kind) == 0)
                check_relation(s, b, r);
        }
    s->cur = NULL;
}

void shard_gateway_stopped(shard *s, const char *gateway_id, uint64_t now_ms)
{
    for (size_t k = 0; k < s->chans.used; k++) {
        if (strcmp(s->chans.keys[k].gw, gateway_id) != 0)
            continue;
        chan_state *cs = &s->chan[k];
        anomaly_event ev;
        if (det_missing_stopped(&cs->missing, &ev))
            emit(s, s->chans.keys[k].gw, cs->site, cs->ch->id, &ev,
                 cs->has_value ? cs->last_value : NAN, now_ms, now_ms);
    }
}

void shard_tick(shard *s, uint64_t now_ms)
{
    for (size_t k = 0; k < s->chans.used; k++) {
        chan_state *cs = &s->chan[k];
        anomaly_event ev;
        if (det_missing_check(&cs->missing, cs->ch, now_ms, &ev))
            emit(s, s->chans.keys[k].gw, cs->site, cs->ch->id, &ev,
                 cs->has_value ? cs->last_value : NAN, now_ms, now_ms);
    }
}
