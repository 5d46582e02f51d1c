/* mon_report: see mon_report.h. */
#include "mon_report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mon_text.h"

static mon_report_site *site_of(mon_report *r, const char *site, const char *kind)
{
    for (size_t i = 0; i < r->n_sites; i++)
        if (strcmp(r->sites[i].site, site) == 0)
            return &r->sites[i];
    mon_report_site *s = &r->sites[r->n_sites++];
    memset(s, 0, sizeof *s);
    snprintf(s->site, sizeof s->site, "%s", site);
    snprintf(s->kind, sizeof s->kind, "%s", kind);
    return s;
}

static int by_site(const void *a, const void *b)
{
    return strcmp(((const mon_report_site *)a)->site, ((const mon_report_site *)b)->site);
}

static const Suido__GatewayInfo *gateway(const Suido__RegistryReply *g, const char *id)
{
    for (size_t i = 0; g && i < g->n_gateways; i++)
        if (g->gateways[i]->id && strcmp(g->gateways[i]->id, id) == 0)
            return g->gateways[i];
    return NULL;
}

static void add_flow(mon_report_site *s, const cm_channel *c, const Suido__ChannelSummary *x)
{
    double integral, peak, cap; /* L/s x minutes, L/s, L/s */
    if (cm_unit_convert(c->unit, "L/s", x->integral, &integral) != CM_OK ||
        cm_unit_convert(c->unit, "L/s", x->max, &peak) != CM_OK ||
        cm_unit_convert(c->unit, "L/s", c->range_max, &cap) != CM_OK)
        return; /* a flow in a unit that is not a volume rate */
    mon_report_flow *f = NULL;
    for (size_t i = 0; i < s->n_flows && !f; i++)
        if (strcmp(s->flows[i].channel, c->id) == 0)
            f = &s->flows[i];
    if (!f) {
        if (s->n_flows == MON_REPORT_MAX_FLOWS)
            return;
        f = &s->flows[s->n_flows++];
        memset(f, 0, sizeof *f);
        snprintf(f->channel, sizeof f->channel, "%s", c->id);
    }
    /* another gateway at the same site: volumes and capacities add up */
    double hours = (double)x->minutes / 60.0;
    double mean = x->minutes ? integral / (double)x->minutes : 0;
    f->volume_m3 += integral * 60.0 / 1000.0;
    f->mean_ls += mean;
    f->peak_ls += peak;
    f->capacity_ls += cap > 0 ? cap : 0;
    if (hours > f->hours)
        f->hours = hours;
}

cm_err mon_report_build(const cm_profile *p, const Suido__RegistryReply *gateways,
                        const Suido__ArchiveReply *planning, uint64_t from_ms, uint64_t to_ms,
                        mon_report *out)
{
    memset(out, 0, sizeof *out);
    out->from_ms = from_ms;
    out->to_ms = to_ms;
    out->period_hours = to_ms > from_ms ? (double)(to_ms - from_ms) / 3600000.0 : 0;
    size_t ng = gateways ? gateways->n_gateways : 0;
    out->sites = calloc(ng ? ng : 1, sizeof *out->sites);
    if (!out->sites)
        return CM_ERR_NOMEM;
    /* every site the registry knows appears, with or without data */
    for (size_t i = 0; i < ng; i++) {
        const Suido__GatewayInfo *g = gateways->gateways[i];
        if (!g->site || !*g->site || g->state == SUIDO__ENTITY_STATE__STATE_DISPOSED)
            continue;
        site_of(out, g->site, g->kind ? g->kind : "")->gateways++;
    }
    for (size_t i = 0; planning && i < planning->n_summaries; i++) {
        const Suido__ChannelSummary *x = planning->summaries[i];
        const Suido__GatewayInfo *g = gateway(gateways, x->gateway_id ? x->gateway_id : "");
        const cm_channel *c = p && x->channel ? cm_profile_channel_by_id(p, x->channel) : NULL;
        if (!g || !g->site || !*g->site || !c)
            continue;
        mon_report_site *s = site_of(out, g->site, g->kind ? g->kind : "");
        if ((double)x->minutes / 60.0 > s->data_hours)
            s->data_hours = (double)x->minutes / 60.0;
        if (strcmp(c->quantity, "flow") == 0) {
            add_flow(s, c, x);
        } else if (strcmp(c->quantity, "run_status") == 0) {
            s->has_pumps = 1;
            s->pump_hours += x->integral / 60.0; /* running fraction x minutes */
        } else if (strcmp(c->quantity, "power") == 0) {
            double kw;
            if (cm_unit_convert(c->unit, "kW", x->integral, &kw) == CM_OK) {
                s->has_energy = 1;
                s->energy_kwh += kw / 60.0; /* kW x minutes */
            }
        }
    }
    for (size_t i = 0; planning && i < planning->n_alarms; i++) {
        const Suido__GatewayAlarms *a = planning->alarms[i];
        const Suido__GatewayInfo *g = gateway(gateways, a->gateway_id ? a->gateway_id : "");
        if (!g || !g->site || !*g->site)
            continue;
        mon_report_site *s = site_of(out, g->site, g->kind ? g->kind : "");
        s->alarms += a->raised;
        s->severe += a->critical;
    }
    qsort(out->sites, out->n_sites, sizeof *out->sites, by_site);
    return CM_OK;
}

void mon_report_free(mon_report *r)
{
    free(r->sites);
    memset(r, 0, sizeof *r);
}

double mon_report_util_mean(const mon_report_flow *f)
{
    return f->capacity_ls > 0 ? f->mean_ls / f->capacity_ls : NAN;
}

double mon_report_util_peak(const mon_report_flow *f)
{
    return f->capacity_ls > 0 ? f->peak_ls / f->capacity_ls : NAN;
}

/* The flow that carries most water at a site (for kWh per m3), or NULL. */
static const mon_report_flow *main_flow(const mon_report_site *s)
{
    const mon_report_flow *best = NULL;
    for (size_t i = 0; i < s->n_flows; i++)
        if (!best || s->flows[i].volume_m3 > best->volume_m3)
            best = &s->flows[i];
    return best;
}

static double round_to(double v, int decimals)
{
    double k = pow(10, decimals);
    return isfinite(v) ? round(v * k) / k : v;
}

static json_t *num(double v, int decimals)
{
    return isfinite(v) ? json_real(round_to(v, decimals)) : json_null();
}

json_t *mon_report_json(const mon_report *r)
{
    json_t *sites = json_array();
    for (size_t i = 0; i < r->n_sites; i++) {
        const mon_report_site *s = &r->sites[i];
        json_t *flows = json_array();
        for (size_t k = 0; k < s->n_flows; k++) {
            const mon_report_flow *f = &s->flows[k];
            json_array_append_new(
                flows, json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "channel",
                                 f->channel, "hours", num(f->hours, 2), "volume_m3",
                                 num(f->volume_m3, 1), "mean_ls", num(f->mean_ls, 2), "peak_ls",
                                 num(f->peak_ls, 2), "capacity_ls", num(f->capacity_ls, 1),
                                 "util_mean", num(mon_report_util_mean(f), 4), "util_peak",
                                 num(mon_report_util_peak(f), 4)));
        }
        const mon_report_flow *mf = main_flow(s);
        double per_m3 = s->has_energy && mf && mf->volume_m3 > 0 ? s->energy_kwh / mf->volume_m3
                                                                 : NAN;
        json_array_append_new(
            sites,
            json_pack("{s:s, s:s, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I}", "site", s->site,
                      "kind", s->kind, "gateways", (int)s->gateways, "data_hours",
                      num(s->data_hours, 2), "coverage",
                      num(r->period_hours > 0 ? s->data_hours / r->period_hours : NAN, 4),
                      "flows", flows, "pump_hours",
                      s->has_pumps ? num(s->pump_hours, 2) : json_null(), "energy_kwh",
                      s->has_energy ? num(s->energy_kwh, 1) : json_null(), "kwh_per_m3",
                      num(per_m3, 4), "alarms", (json_int_t)s->alarms, "severe_alarms",
                      (json_int_t)s->severe));
    }
    char from[11], to[11];
    mon_format_date(r->from_ms, from);
    mon_format_date(r->to_ms ? r->to_ms - 1 : 0, to); /* the last day the period includes */
    return json_pack("{s:s, s:s, s:I, s:I, s:o, s:o}", "from", from, "to", to, "from_ms",
                     (json_int_t)r->from_ms, "to_ms", (json_int_t)r->to_ms, "period_hours",
                     num(r->period_hours, 2), "sites", sites);
}

static const char *const CSV_HEADER[] = {
    "from", "to", "site", "kind", "gateways", "coverage_pct", "channel", "hours_with_data",
    "volume_m3", "mean_flow_l_s", "peak_flow_l_s", "capacity_l_s", "mean_utilisation_pct",
    "peak_utilisation_pct", "pump_run_hours", "energy_kwh", "kwh_per_m3", "alarms_raised",
    "alarms_alarm_or_critical",
};

/* Room one row may need: 4 text cells of at most 95 characters (every one a quote, so doubled)
 * with their quotes, apostrophe and comma, 2 dates, 15 numbers and the CRLF. The buffer is grown
 * to hold that much more before each row, so a row is never refused for want of space; a row that
 * still does not fit is an error (the whole file is refused), never a cell cut short. */
#define CSV_ROW_MAX (4 * (2 * 95 + 4) + 2 * 16 + 15 * (MON_CSV_NUMBER_MAX + 1) + 4)
#define CSV_MAX_BYTES (256u << 20) /* a report larger than this is refused */

/* Makes room for one more row (CRLF included) after *pos. 0 when out of memory or too large. */
static int csv_reserve(char **buf, size_t *cap, size_t pos)
{
    if (*cap - pos > CSV_ROW_MAX)
        return 1;
    size_t want = *cap * 2 > pos + CSV_ROW_MAX + 1 ? *cap * 2 : pos + CSV_ROW_MAX + 1;
    if (want > CSV_MAX_BYTES)
        return 0;
    char *nb = realloc(*buf, want);
    if (!nb)
        return 0;
    *buf = nb;
    *cap = want;
    return 1;
}

/* Ends the row at *pos with CRLF, within n bytes (a NUL after it). 0 when it does not fit. */
static int csv_crlf(char *buf, size_t n, size_t *pos)
{
    if (*pos + 3 > n)
        return 0;
    buf[(*pos)++] = '\r';
    buf[(*pos)++] = '\n';
    buf[*pos] = '\0';
    return 1;
}

char *mon_report_csv(const mon_report *r, size_t *len)
{
    size_t cap = 4096, pos = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[0] = '\0';
    int ok = 1;
    for (size_t k = 0; k < sizeof CSV_HEADER / sizeof CSV_HEADER[0]; k++)
        ok = ok && mon_csv_text(buf, cap, &pos, CSV_HEADER[k], k == 0);
    ok = ok && csv_crlf(buf, cap, &pos);
    char from[11], to[11];
    mon_format_date(r->from_ms, from);
    mon_format_date(r->to_ms ? r->to_ms - 1 : 0, to);
    for (size_t i = 0; ok && i < r->n_sites; i++) {
        const mon_report_site *s = &r->sites[i];
        const mon_report_flow *mf = main_flow(s);
        double per_m3 = s->has_energy && mf && mf->volume_m3 > 0 ? s->energy_kwh / mf->volume_m3
                                                                 : NAN;
        size_t n = s->n_flows ? s->n_flows : 1;
        for (size_t k = 0; ok && k < n; k++) {
            const mon_report_flow *f = s->n_flows ? &s->flows[k] : NULL;
            ok = csv_reserve(&buf, &cap, pos) && mon_csv_text(buf, cap, &pos, from, 1) &&
                 mon_csv_text(buf, cap, &pos, to, 0) &&
                 mon_csv_text(buf, cap, &pos, s->site, 0) &&
                 mon_csv_text(buf, cap, &pos, s->kind, 0) &&
                 mon_csv_number(buf, cap, &pos, s->gateways, 0, 0) &&
                 mon_csv_number(buf, cap, &pos,
                                r->period_hours > 0 ? 100 * s->data_hours / r->period_hours : NAN,
                                1, 0) &&
                 mon_csv_text(buf, cap, &pos, f ? f->channel : "", 0) &&
                 mon_csv_number(buf, cap, &pos, f ? f->hours : NAN, 2, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? f->volume_m3 : NAN, 1, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? f->mean_ls : NAN, 2, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? f->peak_ls : NAN, 2, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? f->capacity_ls : NAN, 1, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? 100 * mon_report_util_mean(f) : NAN, 1, 0) &&
                 mon_csv_number(buf, cap, &pos, f ? 100 * mon_report_util_peak(f) : NAN, 1, 0) &&
                 mon_csv_number(buf, cap, &pos, s->has_pumps ? s->pump_hours : NAN, 2, 0) &&
                 mon_csv_number(buf, cap, &pos, s->has_energy ? s->energy_kwh : NAN, 1, 0) &&
                 mon_csv_number(buf, cap, &pos, per_m3, 4, 0) &&
                 mon_csv_number(buf, cap, &pos, (double)s->alarms, 0, 0) &&
                 mon_csv_number(buf, cap, &pos, (double)s->severe, 0, 0) &&
                 csv_crlf(buf, cap, &pos);
        }
    }
    if (!ok) {
        free(buf);
        return NULL;
    }
    *len = pos;
    return buf;
}
