/* mon_report: the planning report for facility consolidation, per site over a period, from the
 * archive's hourly aggregates (ArchiveOp PLANNING), the registry's sites and the data profile's
 * meaning of each channel:
 *
 *   flows         each channel of quantity "flow": volume (m3) = each hour's mean (L/s) times the
 *                 seconds of that hour with data, summed; mean and peak flow; capacity = the
 *                 channel's range maximum (the meter's design maximum); utilisation = mean / peak
 *                 against capacity;
 *   pump hours    channels of quantity "run_status" (0 stopped, 1 running): each hour's mean times
 *                 its time with data, summed;
 *   energy        channels of quantity "power": kWh the same way, and kWh per m3 of the site's
 *                 largest flow;
 *   alarms        alerts raised in the period (and those of alarm or critical severity);
 *   coverage      hours with data against the hours of the period, so gaps are visible rather
 *                 than silently averaged over.
 *
 * Several gateways at one site add up. Pure computation; JSON (jansson) and CSV renderings. */
#ifndef MON_REPORT_H
#define MON_REPORT_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "cm_profile.h"
#include "suido.pb-c.h"

#define MON_REPORT_MAX_FLOWS 8

typedef struct mon_report_flow {
    char channel[96];
    double hours;         /* hours with data (minute resolution) */
    double volume_m3, mean_ls, peak_ls, capacity_ls;
} mon_report_flow;

typedef struct mon_report_site {
    char site[64], kind[32];
    unsigned gateways;
    double data_hours;    /* the most hours any of its channels has */
    size_t n_flows;
    mon_report_flow flows[MON_REPORT_MAX_FLOWS];
    int has_pumps, has_energy;
    double pump_hours, energy_kwh;
    uint64_t alarms, severe;
} mon_report_site;

typedef struct mon_report {
    uint64_t from_ms, to_ms;
    double period_hours;
    size_t n_sites;
    mon_report_site *sites; /* by site name */
} mon_report;

/* Builds the report; gateways is the registry's list (REG_LIST_GATEWAYS), planning the archive's
 * answer to PLANNING over [from_ms, to_ms). Series of gateways the registry does not know are
 * left out. */
cm_err mon_report_build(const cm_profile *p, const Suido__RegistryReply *gateways,
                        const Suido__ArchiveReply *planning, uint64_t from_ms, uint64_t to_ms,
                        mon_report *out);
void mon_report_free(mon_report *r);

/* Utilisation (0..1+) of a flow: mean and peak against capacity; NaN without a capacity. */
double mon_report_util_mean(const mon_report_flow *f);
double mon_report_util_peak(const mon_report_flow *f);

/* The report as JSON (caller json_decref's) and as CSV text, one row per site and flow (a site
 * without flows has one row), with a header row, CRLF after each (caller frees; NULL when out of
 * memory or a row cannot be written whole: every cell is complete or there is no file). Text
 * cells are quoted (RFC 4180) and defused against spreadsheet formulas (mon_csv_text). */
json_t *mon_report_json(const mon_report *r);
char *mon_report_csv(const mon_report *r, size_t *len);

#endif
