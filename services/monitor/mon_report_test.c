/* mon_report: the planning figures from hourly summaries (volumes, utilisation, pump hours,
 * energy, alarms, coverage), units converted, several gateways of one site added up, unknown
 * gateways and disposed ones left out; and the CSV and JSON renderings. */
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mon_report.h"

static const char PROFILE[] =
    "[profile]\nname = t\nversion = 1\n"
    "[channel reservoir.inflow]\nquantity = flow\nunit = L/s\nrange = 0, 400\nperiod_s = 1\n"
    "[channel reservoir.level]\nquantity = level\nunit = m\nrange = 0, 10\nperiod_s = 1\n"
    "[channel pumping.flow]\nquantity = flow\nunit = m3/h\nrange = 0, 1800\nperiod_s = 1\n"
    "[channel pumping.pump1_status]\nquantity = run_status\nunit = 1\nrange = 0, 1\n"
    "period_s = 1\n"
    "[channel pumping.power]\nquantity = power\nunit = kW\nrange = 0, 500\nperiod_s = 1\n";

#define HOUR 3600000ull

static Suido__GatewayInfo gw(const char *id, const char *site, const char *kind, int state)
{
    Suido__GatewayInfo g = SUIDO__GATEWAY_INFO__INIT;
    g.id = (char *)id;
    g.site = (char *)site;
    g.kind = (char *)kind;
    g.state = state;
    return g;
}

static Suido__ChannelSummary sum(const char *gwid, const char *ch, uint64_t minutes, double min,
                                 double max, double integral)
{
    Suido__ChannelSummary c = SUIDO__CHANNEL_SUMMARY__INIT;
    c.gateway_id = (char *)gwid;
    c.channel = (char *)ch;
    c.minutes = minutes;
    c.count = minutes * 10;
    c.min = min;
    c.max = max;
    c.integral = integral;
    return c;
}

static int near(double a, double b) { return fabs(a - b) < 1e-6 * (1 + fabs(b)); }

static void test_the_report(void **state)
{
    (void)state;
    char err[512];
    cm_profile *p = NULL;
    assert_int_equal(cm_profile_load_text("t", PROFILE, sizeof PROFILE - 1, &p, err), CM_OK);
    Suido__GatewayInfo g[] = {gw("gw-1", "res-a", "reservoir", 2), gw("gw-2", "pump-b", "pumping", 2),
                              gw("gw-3", "res-a", "reservoir", 3), gw("gw-4", "old", "reservoir", 5)};
    Suido__GatewayInfo *gp[] = {&g[0], &g[1], &g[2], &g[3]};
    Suido__RegistryReply list = SUIDO__REGISTRY_REPLY__INIT;
    list.n_gateways = 4;
    list.gateways = gp;
    Suido__ChannelSummary s[] = {
        sum("gw-1", "reservoir.inflow", 120, 50, 150, 120 * 100.0),
        sum("gw-3", "reservoir.inflow", 60, 40, 60, 60 * 50.0),
        sum("gw-1", "reservoir.level", 120, 1, 2, 180),
        sum("gw-2", "pumping.flow", 60, 0, 720, 60 * 360.0),      /* m3/h */
        sum("gw-2", "pumping.pump1_status", 60, 0, 1, 30),
        sum("gw-2", "pumping.power", 60, 90, 110, 60 * 100.0),
        sum("gw-9", "reservoir.inflow", 60, 1, 1, 60),           /* unknown gateway */
        sum("gw-1", "reservoir.nothing", 60, 1, 1, 60),          /* unknown channel */
    };
    Suido__ChannelSummary *sp[8];
    for (int i = 0; i < 8; i++)
        sp[i] = &s[i];
    Suido__GatewayAlarms a1 = SUIDO__GATEWAY_ALARMS__INIT, a9 = SUIDO__GATEWAY_ALARMS__INIT;
    a1.gateway_id = "gw-1";
    a1.raised = 3;
    a1.critical = 1;
    a9.gateway_id = "gw-9";
    a9.raised = 7;
    Suido__GatewayAlarms *ap[] = {&a1, &a9};
    Suido__ArchiveReply plan = SUIDO__ARCHIVE_REPLY__INIT;
    plan.n_summaries = 8;
    plan.summaries = sp;
    plan.n_alarms = 2;
    plan.alarms = ap;

    mon_report r;
    assert_int_equal(mon_report_build(p, &list, &plan, 1795651200000ull, 1795651200000ull + 24 * HOUR,
                                      &r),
                     CM_OK);
    assert_int_equal(r.n_sites, 2); /* the disposed gateway's site is gone */
    assert_true(near(r.period_hours, 24));
    const mon_report_site *pump = &r.sites[0], *res = &r.sites[1];
    assert_string_equal(pump->site, "pump-b");
    assert_string_equal(res->site, "res-a");
    assert_int_equal(res->gateways, 2);
    assert_true(near(res->data_hours, 2));
    assert_int_equal(res->n_flows, 1);
    const mon_report_flow *f = &res->flows[0];
    assert_true(near(f->volume_m3, 720 + 180));          /* 100 L/s for 2 h, 50 L/s for 1 h */
    assert_true(near(f->mean_ls, 150) && near(f->peak_ls, 210) && near(f->capacity_ls, 800));
    assert_true(near(mon_report_util_mean(f), 150.0 / 800));
    assert_false(res->has_pumps || res->has_energy);
    assert_int_equal(res->alarms, 3);
    assert_int_equal(res->severe, 1);
    /* m3/h converted: 360 m3/h for an hour is 360 m3, 100 L/s */
    f = &pump->flows[0];
    assert_true(near(f->volume_m3, 360) && near(f->mean_ls, 100) && near(f->peak_ls, 200));
    assert_true(near(f->capacity_ls, 500) && near(mon_report_util_peak(f), 0.4));
    assert_true(pump->has_pumps && near(pump->pump_hours, 0.5));
    assert_true(pump->has_energy && near(pump->energy_kwh, 100));

    size_t len = 0;
    char *csv = mon_report_csv(&r, &len);
    assert_non_null(csv);
    assert_int_equal(strlen(csv), len);
    assert_non_null(strstr(csv, "\"from\",\"to\",\"site\""));
    assert_non_null(strstr(csv, "\"2026-11-26\",\"2026-11-26\",\"res-a\",\"reservoir\",2,8.3,"
                                "\"reservoir.inflow\",2.00,900.0,150.00,210.00,800.0,18.8,26.2,,,,3,1\r\n"));
    assert_non_null(strstr(csv, "\"pump-b\",\"pumping\",1,4.2,\"pumping.flow\",1.00,360.0,100.00,"
                                "200.00,500.0,20.0,40.0,0.50,100.0,0.2778,0,0\r\n"));
    free(csv);

    json_t *j = mon_report_json(&r);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "to")), "2026-11-26");
    json_t *sites = json_object_get(j, "sites");
    assert_int_equal(json_array_size(sites), 2);
    json_t *s0 = json_array_get(sites, 0);
    assert_true(near(json_real_value(json_object_get(s0, "pump_hours")), 0.5));
    assert_true(json_is_null(json_object_get(json_array_get(sites, 1), "energy_kwh")));
    json_decref(j);
    mon_report_free(&r);
    cm_profile_destroy(&p);
}

static void test_nothing_to_report(void **state)
{
    (void)state;
    mon_report r;
    assert_int_equal(mon_report_build(NULL, NULL, NULL, 0, HOUR, &r), CM_OK);
    assert_int_equal(r.n_sites, 0);
    size_t len = 0;
    char *csv = mon_report_csv(&r, &len);
    assert_non_null(csv);
    assert_true(strchr(csv, '\n') == csv + len - 1); /* the header row only */
    free(csv);
    mon_report_free(&r);
}

/* Splits one CSV row (RFC 4180: quoted cells, "" for a quote) at *p into cells; *p moves past its
 * CRLF. Returns the number of cells, or -1 when the row is not well-formed. */
static int csv_row(const char **p, char cells[][400], int max)
{
    int n = 0;
    const char *c = *p;
    for (;;) {
        if (n == max)
            return -1;
        size_t k = 0;
        if (*c == '"') {
            for (c++;; c++) {
                if (*c == '\0')
                    return -1;
                if (*c == '"' && c[1] == '"')
                    c++;
                else if (*c == '"')
                    break;
                if (k + 1 >= 400)
                    return -1;
                cells[n][k++] = *c;
            }
            c++;
        } else {
            while (*c && *c != ',' && *c != '\r') {
                if (k + 1 >= 400)
                    return -1;
                cells[n][k++] = *c++;
            }
        }
        cells[n++][k] = '\0';
        if (*c == ',') {
            c++;
            continue;
        }
        if (c[0] != '\r' || c[1] != '\n')
            return -1;
        *p = c + 2;
        return n;
    }
}

static void fill(char *dst, size_t len, const char *start)
{
    size_t n = strlen(start);
    memcpy(dst, start, n < len ? n : len);
    for (size_t i = n; i < len; i++)
        dst[i] = (char)('a' + i % 26);
    dst[len] = '\0';
}

/* Names as long as their fields hold, and values at the ends of the double range: every row is
 * whole, every cell exactly what was put in (no number cut short, no write past the buffer: ASan),
 * and names that look like formulas or hold separators stay one plain text cell. */
static void test_csv_long_names_and_extreme_values(void **state)
{
    (void)state;
    static const double V[] = {DBL_MAX, -DBL_MAX, NAN, 4.9e-324, -DBL_MIN, INFINITY, 1e300, 0};
    static const char *const START[] = {"=HYPERLINK(\"http://x\",\"y\")", "+1,2", "-3\"q\"",
                                        "@SUM(A1)", "plain, \"quoted\"\r\nline"};
    mon_report_site *sites = calloc(3, sizeof *sites);
    assert_non_null(sites);
    static char cells[32][400];
    for (size_t site_len = 1; site_len < sizeof sites->site; site_len += 2)
        for (size_t ch_len = 1; ch_len < sizeof sites->flows[0].channel; ch_len += 3) {
            mon_report r = {.from_ms = 0, .to_ms = HOUR, .period_hours = 1, .n_sites = 3,
                            .sites = sites};
            memset(sites, 0, 3 * sizeof *sites);
            for (size_t i = 0; i < 3; i++) {
                mon_report_site *s = &sites[i];
                fill(s->site, i == 0 ? site_len : sizeof s->site - 1, START[(i + site_len) % 5]);
                fill(s->kind, sizeof s->kind - 1, START[(i + 1) % 5]);
                s->gateways = 1;
                s->data_hours = V[(i + ch_len) % 8];
                s->n_flows = i == 1 ? 0 : MON_REPORT_MAX_FLOWS;
                s->has_pumps = s->has_energy = 1;
                s->pump_hours = V[(i + 1) % 8];
                s->energy_kwh = V[(i + 2) % 8];
                s->alarms = UINT64_MAX;
                for (size_t k = 0; k < s->n_flows; k++) {
                    mon_report_flow *f = &s->flows[k];
                    fill(f->channel, k == s->n_flows - 1 ? ch_len : sizeof f->channel - 1,
                         START[k % 5]);
                    f->hours = V[k % 8];
                    f->volume_m3 = V[(k + 1) % 8];
                    f->mean_ls = V[(k + 2) % 8];
                    f->peak_ls = V[(k + 3) % 8];
                    f->capacity_ls = V[(k + 4) % 8];
                }
            }
            size_t len = 0;
            char *csv = mon_report_csv(&r, &len);
            assert_non_null(csv);
            assert_int_equal(strlen(csv), len);
            const char *p = csv;
            assert_int_equal(csv_row(&p, cells, 32), 19); /* the header */
            for (size_t i = 0; i < 3; i++) {
                const mon_report_site *s = &sites[i];
                for (size_t k = 0; k < (s->n_flows ? s->n_flows : 1); k++) {
                    assert_int_equal(csv_row(&p, cells, 32), 19);
                    /* text: whole, and never a formula (an apostrophe before = + - @) */
                    const char *site = cells[2];
                    if (strchr("=+-@", s->site[0]))
                        assert_int_equal(*site++, '\'');
                    assert_string_equal(site, s->site);
                    const char *kind = cells[3];
                    if (strchr("=+-@", s->kind[0]))
                        assert_int_equal(*kind++, '\'');
                    assert_string_equal(kind, s->kind);
                    /* numbers: whole (the exact decimal of DBL_MAX has 309 digits) */
                    const mon_report_flow *f = s->n_flows ? &s->flows[k] : NULL;
                    double want[] = {f ? f->volume_m3 : NAN, f ? f->peak_ls : NAN,
                                     f ? f->capacity_ls : NAN, s->energy_kwh};
                    const char *got[] = {cells[8], cells[10], cells[11], cells[15]};
                    for (size_t m = 0; m < 4; m++) {
                        if (!isfinite(want[m])) {
                            assert_string_equal(got[m], "");
                        } else if (fabs(want[m]) > 1) {
                            char *end;
                            assert_true(strtod(got[m], &end) == want[m]);
                            assert_true(*end == '\0');
                        }
                    }
                    assert_string_equal(cells[17], "18446744073709551616");
                }
            }
            assert_int_equal(*p, '\0');
            free(csv);
        }
    free(sites);
}

/* Rows far longer than the average a fixed buffer was once sized for, their lengths stepped one
 * character at a time so that one of them ends exactly where the buffer does: every report is
 * written whole (ASan: nothing is written past the buffer, the row end included). */
static void test_csv_rows_of_every_length(void **state)
{
    (void)state;
    mon_report_site sites[2];
    size_t refused = 0;
    for (size_t site_len = 1; site_len < sizeof sites->site; site_len++)
        for (size_t ch_len = 1; ch_len < sizeof sites->flows[0].channel; ch_len++) {
            memset(sites, 0, sizeof sites);
            mon_report r = {.from_ms = 0, .to_ms = HOUR, .period_hours = 1, .n_sites = 2,
                            .sites = sites};
            for (size_t i = 0; i < 2; i++) {
                mon_report_site *s = &sites[i];
                fill(s->site, site_len, "\"site\", \"");
                fill(s->kind, sizeof s->kind - 1, "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"");
                s->n_flows = MON_REPORT_MAX_FLOWS;
                s->has_pumps = s->has_energy = 1;
                s->pump_hours = s->energy_kwh = s->data_hours = -1e60;
                for (size_t k = 0; k < s->n_flows; k++) {
                    mon_report_flow *f = &s->flows[k];
                    fill(f->channel, k == s->n_flows - 1 ? ch_len : sizeof f->channel - 1, "\"");
                    f->hours = f->volume_m3 = f->mean_ls = f->peak_ls = -1e60;
                    f->capacity_ls = -1e60;
                }
            }
            size_t len = 0;
            char *csv = mon_report_csv(&r, &len);
            if (!csv)
                refused++;
            free(csv);
        }
    assert_int_equal(refused, 0);
}

/* Reports whose last whole row ended one or two bytes before the end of a buffer sized at 640
 * bytes a row: the next row's CR, LF and NUL went past it (ASan: heap-buffer-overflow). Found by
 * sweeping the lengths; kept as they are. */
static void test_csv_rows_that_end_at_the_buffers_end(void **state)
{
    (void)state;
    static const struct {
        size_t sites, site_len, ch_len;
    } CASES[] = {{3, 13, 92}, {4, 3, 86}};
    mon_report_site sites[4];
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        memset(sites, 0, sizeof sites);
        mon_report r = {.from_ms = 0, .to_ms = HOUR, .period_hours = 1, .n_sites = CASES[c].sites,
                        .sites = sites};
        for (size_t i = 0; i < CASES[c].sites; i++) {
            mon_report_site *s = &sites[i];
            fill(s->site, i == 0 ? CASES[c].site_len : sizeof s->site - 1, "x");
            fill(s->kind, sizeof s->kind - 1, "k");
            s->n_flows = MON_REPORT_MAX_FLOWS;
            s->has_pumps = s->has_energy = 1;
            s->pump_hours = s->energy_kwh = s->data_hours = -1e60;
            for (size_t k = 0; k < s->n_flows; k++) {
                mon_report_flow *f = &s->flows[k];
                fill(f->channel, k == s->n_flows - 1 ? CASES[c].ch_len : sizeof f->channel - 1,
                     "c");
                f->hours = f->volume_m3 = f->mean_ls = f->peak_ls = f->capacity_ls = -1e60;
            }
        }
        size_t len = 0;
        char *csv = mon_report_csv(&r, &len);
        assert_non_null(csv);
        /* the header and one row per flow, each ended by CRLF */
        size_t rows = 0;
        for (const char *p = csv; (p = strstr(p, "\r\n")); p += 2)
            rows++;
        assert_int_equal(rows, 1 + CASES[c].sites * MON_REPORT_MAX_FLOWS);
        free(csv);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_report),
        cmocka_unit_test(test_nothing_to_report),
        cmocka_unit_test(test_csv_long_names_and_extreme_values),
        cmocka_unit_test(test_csv_rows_of_every_length),
        cmocka_unit_test(test_csv_rows_that_end_at_the_buffers_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
