/* live_rows: per-gateway rows of streaming readings for the learned checker (live_rows.h).
 * Owns one learned_state and one open row per tracked gateway, in a fixed table allocated at
 * creation; borrows the model. */
#include "live_rows.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TRACKED (1u << 20) /* sanity bound on max_gateways */

typedef struct gw_row {
    char id[LIVE_ROWS_GW_MAX + 1];
    learned_state *st;
    double *row;          /* open row, n values */
    uint64_t *row_ts;     /* timestamp of each value taken */
    unsigned char *has;   /* 1: the channel has a reading in the open row */
    uint64_t open, last;  /* open bucket (valid if has_open); last stepped one (if has_last) */
    int has_open, has_last;
    int flag;
} gw_row;

struct live_rows {
    const learned_model *m;
    size_t n;               /* model channels */
    char kind[32];
    uint64_t period_ms;
    live_rows_fn fn;
    void *ctx;
    uint32_t *ch_index;     /* open addressing over channel ids: 0 empty, else column + 1 */
    size_t ch_mask;
    uint32_t *gw_index;     /* open addressing over gateway ids: 0 empty, else gws index + 1 */
    size_t gw_mask;
    gw_row *gws;
    size_t n_gws, max_gws;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Smallest power of two >= 2 x n (a table at most half full). */
static size_t table_size(size_t n)
{
    size_t k = 4;
    while (k < 2 * n)
        k <<= 1;
    return k;
}

cm_err live_rows_new(const learned_model *m, size_t max_gateways, live_rows_fn fn, void *ctx,
                     live_rows **out, char err[LEARNED_ERRLEN])
{
    *out = NULL;
    size_t n = learned_channel_count(m);
    double pms = learned_period(m) * 1000.0;
    if (max_gateways == 0 || max_gateways > MAX_TRACKED) {
        snprintf(err, LEARNED_ERRLEN, "live rows: max_gateways must be 1..%u", MAX_TRACKED);
        return CM_ERR_INVAL;
    }
    if (!(pms >= 1.0) || pms > 1e15) {
        snprintf(err, LEARNED_ERRLEN, "live rows: model period %g s is below 1 ms or absurd",
                 learned_period(m));
        return CM_ERR_INVAL;
    }
    const char *first = learned_channel_id(m, 0);
    size_t kl = strcspn(first, ".");
    for (size_t i = 1; i < n; i++) {
        const char *id = learned_channel_id(m, i);
        if (strncmp(id, first, kl) != 0 || id[kl] != '.') {
            snprintf(err, LEARNED_ERRLEN,
                     "live rows: model channels %s and %s are of different site kinds; a gateway "
                     "reports one site kind, so a live model must cover one",
                     first, id);
            return CM_ERR_INVAL;
        }
    }
    live_rows *lr = calloc(1, sizeof *lr);
    if (!lr)
        goto nomem;
    lr->m = m;
    lr->n = n;
    snprintf(lr->kind, sizeof lr->kind, "%.*s", (int)kl, first);
    lr->period_ms = (uint64_t)llround(pms);
    lr->fn = fn;
    lr->ctx = ctx;
    lr->max_gws = max_gateways;
    size_t cs = table_size(n), gs = table_size(max_gateways);
    lr->ch_mask = cs - 1;
    lr->gw_mask = gs - 1;
    lr->ch_index = calloc(cs, sizeof *lr->ch_index);
    lr->gw_index = calloc(gs, sizeof *lr->gw_index);
    lr->gws = calloc(max_gateways, sizeof *lr->gws);
    if (!lr->ch_index || !lr->gw_index || !lr->gws)
        goto nomem;
    for (size_t i = 0; i < n; i++) { /* ids are unique (learned_load refuses repeats) */
        size_t h = hash_str(learned_channel_id(m, i)) & lr->ch_mask;
        while (lr->ch_index[h])
            h = (h + 1) & lr->ch_mask;
        lr->ch_index[h] = (uint32_t)i + 1;
    }
    *out = lr;
    return CM_OK;
nomem:
    live_rows_destroy(&lr);
    snprintf(err, LEARNED_ERRLEN, "live rows: out of memory");
    return CM_ERR_NOMEM;
}

static void gw_free(gw_row *g)
{
    learned_state_destroy(&g->st);
    free(g->row);
    free(g->row_ts);
    free(g->has);
    memset(g, 0, sizeof *g);
}

void live_rows_destroy(live_rows **lrp)
{
    if (!lrp || !*lrp)
        return;
    live_rows *lr = *lrp;
    for (size_t i = 0; i < lr->n_gws; i++)
        gw_free(&lr->gws[i]);
    free(lr->gws);
    free(lr->ch_index);
    free(lr->gw_index);
    free(lr);
    *lrp = NULL;
}

const char *live_rows_site_kind(const live_rows *lr) { return lr->kind; }
size_t live_rows_gateway_count(const live_rows *lr) { return lr->n_gws; }

/* Column of channel id in the model, or -1. */
static long column_of(const live_rows *lr, const char *id)
{
    for (size_t h = hash_str(id) & lr->ch_mask; lr->ch_index[h]; h = (h + 1) & lr->ch_mask) {
        size_t i = lr->ch_index[h] - 1;
        if (strcmp(learned_channel_id(lr->m, i), id) == 0)
            return (long)i;
    }
    return -1;
}

/* The gateway's entry, created if new and there is room; NULL with *why set otherwise. */
static gw_row *gateway(live_rows *lr, const char *id, live_rows_result *why)
{
    size_t h = hash_str(id) & lr->gw_mask;
    for (; lr->gw_index[h]; h = (h + 1) & lr->gw_mask) {
        gw_row *g = &lr->gws[lr->gw_index[h] - 1];
        if (strcmp(g->id, id) == 0)
            return g;
    }
    if (lr->n_gws >= lr->max_gws) {
        *why = LIVE_ROWS_FULL;
        return NULL;
    }
    gw_row *g = &lr->gws[lr->n_gws];
    snprintf(g->id, sizeof g->id, "%s", id);
    g->row = malloc(lr->n * sizeof *g->row);
    g->row_ts = malloc(lr->n * sizeof *g->row_ts);
    g->has = malloc(lr->n);
    if (!g->row || !g->row_ts || !g->has || learned_state_new(lr->m, &g->st) != CM_OK) {
        gw_free(g);
        *why = LIVE_ROWS_NOMEM;
        return NULL;
    }
    lr->gw_index[h] = (uint32_t)lr->n_gws + 1;
    lr->n_gws++;
    return g;
}

static void open_row(live_rows *lr, gw_row *g, uint64_t bucket)
{
    g->open = bucket;
    for (size_t i = 0; i < lr->n; i++)
        g->row[i] = NAN;
    memset(g->has, 0, lr->n);
}

/* Steps the open row, as replay steps a CSV row (cli.c, replay_rows). */
static void close_row(live_rows *lr, gw_row *g)
{
    int brk = g->has_last && g->open != g->last + 1;
    if (brk)
        learned_state_break(g->st);
    int flag;
    double score;
    learned_step(lr->m, g->st, g->row, &flag, &score);
    int top = learned_state_top(g->st);
    live_rows_row r = {
        .gateway_id = g->id,
        .start_ms = g->open * lr->period_ms,
        .brk = brk,
        .values = g->row,
        .flag = flag,
        .changed = flag != g->flag,
        .score = score,
        .top = top >= 0 ? learned_channel_id(lr->m, (size_t)top) : "",
    };
    g->flag = flag;
    g->last = g->open;
    g->has_last = 1;
    if (lr->fn)
        lr->fn(lr->ctx, &r);
}

live_rows_result live_rows_add(live_rows *lr, const char *gateway_id, const char *site_kind,
                               const char *channel, double value, uint64_t ts_ms)
{
    if (!site_kind || strcmp(site_kind, lr->kind) != 0 || !channel || !isfinite(value) ||
        !gateway_id || !*gateway_id || strlen(gateway_id) > LIVE_ROWS_GW_MAX)
        return LIVE_ROWS_IGNORED;
    long col = column_of(lr, channel);
    if (col < 0)
        return LIVE_ROWS_IGNORED;
    live_rows_result why = LIVE_ROWS_TAKEN;
    gw_row *g = gateway(lr, gateway_id, &why);
    if (!g)
        return why;
    uint64_t bucket = ts_ms / lr->period_ms;
    if (!g->has_open) {
        open_row(lr, g, bucket);
        g->has_open = 1;
    } else if (bucket < g->open) {
        return LIVE_ROWS_LATE;
    } else if (bucket > g->open) {
        close_row(lr, g); /* holds at least the reading that opened it */
        open_row(lr, g, bucket);
    }
    size_t i = (size_t)col;
    if (!g->has[i] || ts_ms >= g->row_ts[i]) {
        g->row[i] = value;
        g->row_ts[i] = ts_ms;
        g->has[i] = 1;
    }
    return LIVE_ROWS_TAKEN;
}
