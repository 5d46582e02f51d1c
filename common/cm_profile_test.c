/* Unit tests of cm_profile: the example profiles load; actuators, interlocks and relations are
 * parsed and every malformed one is refused with the file, the right line and a useful reason;
 * the digest is the SHA-256 of the exact bytes. Profiles are embedded texts (a base profile plus
 * one section under test), so that the expected line numbers are computed, not copied. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cm_profile.h"

static const char BASE[] = "[profile]\n"
                           "name = t\n"
                           "version = 1\n"
                           "[channel pumping.pump1_status]\n"
                           "quantity = run_status\n"
                           "unit = 1\n"
                           "range = 0, 1\n"
                           "[channel pumping.pump2_status]\n"
                           "quantity = run_status\n"
                           "unit = 1\n"
                           "range = 0, 1\n"
                           "[channel pumping.flow]\n"
                           "quantity = flow\n"
                           "unit = L/s\n"
                           "range = 0, 500\n"
                           "[channel pumping.tank_level]\n"
                           "quantity = level\n"
                           "unit = m\n"
                           "range = 0, 6\n"
                           "limits = 0.5, 1.0, 5.0, 5.5\n"
                           "[channel reservoir.level]\n"
                           "quantity = level\n"
                           "unit = m\n"
                           "range = 0, 10\n"
                           "[channel reservoir.inflow]\n"
                           "quantity = flow\n"
                           "unit = L/s\n"
                           "range = 0, 400\n"
                           "[channel reservoir.outflow]\n"
                           "quantity = flow\n"
                           "unit = m3/h\n"
                           "range = 0, 1400\n"
                           "[channel treatment.dosing_rate]\n"
                           "quantity = dosing_rate\n"
                           "unit = L/h\n"
                           "range = 0, 50\n"
                           "[actuator pumping.pump1]\n"
                           "quantity = run_command\n"
                           "unit = 1\n"
                           "range = 0, 1\n"
                           "feedback = pumping.pump1_status\n"
                           "tolerance = 0.5\n"
                           "settle_s = 10\n";

static int base_lines(void)
{
    int n = 0;
    for (const char *s = BASE; *s; s++)
        n += *s == '\n';
    return n;
}

/* Parses BASE followed by extra; NULL on refusal (err then holds the reason). */
static cm_profile *with(const char *extra, char err[CM_CONF_ERRLEN])
{
    size_t bl = strlen(BASE), el = strlen(extra);
    char *text = malloc(bl + el + 1);
    assert_non_null(text);
    memcpy(text, BASE, bl);
    memcpy(text + bl, extra, el + 1);
    cm_profile *p = NULL;
    err[0] = '\0';
    cm_err rc = cm_profile_load_text("t.conf", text, bl + el, &p, err);
    free(text);
    if (rc != CM_OK)
        assert_null(p);
    return p;
}

/* extra must be refused with exactly "t.conf:<line>: [<section>] <reason>", line counted within
 * extra from 1. */
static void refused(const char *extra, int line, const char *section, const char *reason)
{
    char err[CM_CONF_ERRLEN], want[CM_CONF_ERRLEN];
    cm_profile *p = with(extra, err);
    if (p) {
        cm_profile_destroy(&p);
        fail_msg("accepted: %s", extra);
    }
    snprintf(want, sizeof want, "t.conf:%d: [%s] %s", base_lines() + line, section, reason);
    assert_string_equal(err, want);
}

/* For messages made by cm_conf (unknown key, repeated section): the line and a fragment. */
static void refused_like(const char *extra, int line, const char *fragment)
{
    char err[CM_CONF_ERRLEN], want[64];
    cm_profile *p = with(extra, err);
    if (p) {
        cm_profile_destroy(&p);
        fail_msg("accepted: %s", extra);
    }
    snprintf(want, sizeof want, "t.conf:%d: ", base_lines() + line);
    if (strncmp(err, want, strlen(want)) != 0 || !strstr(err, fragment))
        fail_msg("got '%s', want '%s...%s'", err, want, fragment);
}

static void test_example_profiles_load(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    if (cm_profile_load("examples/sim-utility/profile.conf", &p, err) != CM_OK)
        fail_msg("%s", err);
    const cm_channel *tl = cm_profile_channel(p, "pumping", "tank_level");
    assert_non_null(tl);
    assert_true(tl->has_limits && tl->ll == 0.5 && tl->hh == 5.5);
    assert_int_equal(cm_profile_actuator_count(p), 4);
    const cm_actuator *pump1 = cm_profile_actuator(p, "pumping", "pump1");
    assert_non_null(pump1);
    assert_string_equal(pump1->feedback, "pumping.pump1_status");
    assert_true(pump1->tolerance == 0.5 && pump1->settle_s == 10 && pump1->min_interval_s == 5);
    assert_true(pump1->max_step == 0);
    const cm_actuator *dosing = cm_profile_actuator(p, "treatment", "dosing");
    assert_non_null(dosing);
    assert_string_equal(dosing->unit, "mg/L");
    assert_string_equal(dosing->feedback, "");
    assert_true(dosing->range_max == 4 && dosing->max_step == 1);
    assert_non_null(cm_profile_actuator(p, "reservoir", "inlet_valve"));
    assert_null(cm_profile_actuator(p, "pumping", "inlet_valve"));

    assert_int_equal(cm_profile_interlock_count(p), 3);
    const cm_interlock *il = cm_profile_interlock_next(p, pump1, NULL);
    assert_non_null(il);
    assert_string_equal(il->id, "pumping.last_pump_1");
    assert_null(cm_profile_interlock_next(p, pump1, il));
    assert_int_equal(il->n_conds, 3);
    assert_int_equal(il->conds[0].left.kind, CM_OPERAND_VALUE);
    assert_int_equal(il->conds[0].op, CM_CMP_EQ);
    assert_int_equal(il->conds[0].right.kind, CM_OPERAND_NUMBER);
    assert_true(il->conds[0].right.number == 0);
    assert_string_equal(il->conds[1].left.channel, "pumping.pump2_status");
    assert_int_equal(il->conds[2].right.kind, CM_OPERAND_LIMIT);
    assert_int_equal(il->conds[2].right.limit, CM_LIMIT_LL);
    assert_true(il->conds[2].right.number == 0.5);
    assert_non_null(strstr(il->reason, "last running pump"));

    assert_int_equal(cm_profile_relation_count(p), 2);
    const cm_relation *r = cm_profile_relation_at(p, 0);
    assert_int_equal(r->type, CM_RELATION_TANK_BALANCE);
    assert_string_equal(r->level, "reservoir.level");
    assert_true(r->area_m2 == 400);
    r = cm_profile_relation_at(p, 1);
    assert_int_equal(r->type, CM_RELATION_PUMP_FLOW);
    assert_int_equal(r->n_status, 2);
    assert_string_equal(r->status[1], "pumping.pump2_status");
    assert_string_equal(cm_relation_type_name(r->type), "pump_flow");
    assert_null(cm_profile_relation_at(p, 2));
    char d[65];
    assert_int_equal(cm_profile_digest(p, d), CM_OK);
    assert_int_equal(strlen(d), 64);
    cm_profile_destroy(&p);
    assert_null(p);

    if (cm_profile_load("examples/ctown/profile.conf", &p, err) != CM_OK)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_channel_count(p), 43);
    assert_int_equal(cm_profile_actuator_count(p), 0);
    assert_int_equal(cm_profile_relation_count(p), 11);
    for (size_t i = 0; i < cm_profile_relation_count(p); i++) {
        r = cm_profile_relation_at(p, i);
        assert_int_equal(r->type, CM_RELATION_PUMP_FLOW);
        assert_non_null(cm_profile_channel_by_id(p, r->flow));
        assert_non_null(cm_profile_channel_by_id(p, r->status[0]));
    }
    cm_profile_destroy(&p);
}

static void test_actuators_and_accessors(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_profile *p = with("[actuator treatment.dosing]\n"
                         "quantity = chlorine_dose\n"
                         "unit = mg/L\n"
                         "range = 0, 4\n"
                         "max_step = 1\n"
                         "min_interval_s = 30\n"
                         "[interlock treatment.a]\n"
                         "actuator = treatment.dosing\n"
                         "refuse_if = value > 3\n"
                         "reason = a\n"
                         "[interlock pumping.b]\n"
                         "actuator = pumping.pump1\n"
                         "refuse_if = value == 0, pumping.flow >= MAX, pumping.tank_level != HH\n"
                         "reason = b\n"
                         "[interlock treatment.c]\n"
                         "actuator = treatment.dosing\n"
                         "refuse_if = 0.5 < value, value <= -1e-3\n"
                         "reason = c\n",
                         err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_actuator_count(p), 2);
    assert_string_equal(cm_profile_actuator_at(p, 0)->id, "pumping.pump1");
    assert_null(cm_profile_actuator_at(p, 2));
    const cm_actuator *a = cm_profile_actuator(p, "treatment", "dosing");
    assert_true(a->min_interval_s == 30 && a->max_step == 1 && a->feedback[0] == '\0');
    /* the interlocks of one actuator in file order, skipping the others' */
    const cm_interlock *il = cm_profile_interlock_next(p, a, NULL);
    assert_string_equal(il->id, "treatment.a");
    il = cm_profile_interlock_next(p, a, il);
    assert_string_equal(il->id, "treatment.c");
    assert_null(cm_profile_interlock_next(p, a, il));
    assert_int_equal(il->conds[0].left.kind, CM_OPERAND_NUMBER);
    assert_int_equal(il->conds[0].op, CM_CMP_LT);
    assert_int_equal(il->conds[1].op, CM_CMP_LE);
    assert_true(il->conds[1].right.number == -1e-3);
    il = cm_profile_interlock_at(p, 1);
    assert_string_equal(il->actuator, "pumping.pump1");
    assert_int_equal(il->conds[1].op, CM_CMP_GE);
    assert_int_equal(il->conds[1].right.limit, CM_LIMIT_MAX); /* a range needs no limits */
    assert_true(il->conds[1].right.number == 500);
    assert_int_equal(il->conds[2].op, CM_CMP_NE);
    assert_true(il->conds[2].right.number == 5.5);
    assert_string_equal(cm_cmp_name(il->conds[2].op), "!=");
    assert_string_equal(cm_limit_name(il->conds[2].right.limit), "HH");
    assert_non_null(cm_profile_channel_by_id(p, "pumping.flow"));
    assert_null(cm_profile_channel_by_id(p, "pumping"));
    cm_profile_destroy(&p);
}

static const char PUMP2[] = "[actuator pumping.pump2]\n" /* 1 */
                            "quantity = run_command\n"   /* 2 */
                            "unit = 1\n"                 /* 3 */
                            "range = 0, 1\n";            /* 4 */

static void test_bad_actuators(void **state)
{
    (void)state;
    char buf[1024];
    snprintf(buf, sizeof buf, "%sfeedback = pumping.pump9_status\ntolerance = 0.5\nsettle_s = 1\n",
             PUMP2);
    refused(buf, 5, "actuator pumping.pump2",
            "feedback: unknown channel 'pumping.pump9_status' (no [channel "
            "pumping.pump9_status] in the profile)");
    snprintf(buf, sizeof buf, "%sfeedback = reservoir.level\ntolerance = 0.5\nsettle_s = 1\n",
             PUMP2);
    refused(buf, 5, "actuator pumping.pump2",
            "feedback: channel 'reservoir.level' is not of site kind 'pumping'");
    snprintf(buf, sizeof buf, "%ssettle_s = 10\nfeedback = pumping.pump2_status\n", PUMP2);
    refused(buf, 6, "actuator pumping.pump2", "feedback needs tolerance and settle_s");
    snprintf(buf, sizeof buf, "%sfeedback = pumping.pump2_status\ntolerance = 0.5\n", PUMP2);
    refused(buf, 5, "actuator pumping.pump2", "feedback needs tolerance and settle_s");
    snprintf(buf, sizeof buf, "%stolerance = 0.5\n", PUMP2);
    refused(buf, 5, "actuator pumping.pump2", "tolerance applies only with feedback");
    snprintf(buf, sizeof buf,
             "%sfeedback = pumping.pump2_status\ntolerance = 0\nsettle_s = 1\n", PUMP2);
    refused(buf, 6, "actuator pumping.pump2", "tolerance must be > 0");
    refused("[actuator treatment.dosing]\nquantity = d\nunit = mg/L\nrange = 0, 4\n"
            "feedback = treatment.dosing_rate\ntolerance = 1\nsettle_s = 60\n",
            5, "actuator treatment.dosing",
            "feedback channel 'treatment.dosing_rate' is in 'L/h', which does not convert to "
            "the actuator's unit 'mg/L'");
    refused("[actuator pumping.pump2]\nquantity = run_command\nunit = 1\nrange = 1, 1\n", 4,
            "actuator pumping.pump2", "range must be 'min, max' with min < max");
    refused("[actuator pumping.pump2]\nquantity = run_command\nunit = 1\nrange = 1, 0\n", 4,
            "actuator pumping.pump2", "range must be 'min, max' with min < max");
    snprintf(buf, sizeof buf, "%smax_step = 0\n", PUMP2);
    refused(buf, 5, "actuator pumping.pump2",
            "max_step must be > 0 (leave it out for no step check)");
    snprintf(buf, sizeof buf, "%smin_interval_s = -5\n", PUMP2);
    refused(buf, 5, "actuator pumping.pump2",
            "min_interval_s must be > 0 (leave it out for no interval check)");
    refused("[actuator pumping]\nquantity = q\nunit = 1\nrange = 0, 1\n", 2, "actuator pumping",
            "actuator id 'pumping' must be <site kind>.<name>");
    refused("[actuator pumping.Pump3]\nquantity = q\nunit = 1\nrange = 0, 1\n", 2,
            "actuator pumping.Pump3",
            "actuator id 'pumping.Pump3' must be lowercase words of [a-z0-9_-]");
    refused("[actuator pumping.p3]\nquantity = q\nunit = this_unit_is_too_long\nrange = 0, 1\n",
            3, "actuator pumping.p3", "unit must be at most 15 characters");
    /* unknown keys, missing keys and repeated ids are caught by cm_conf */
    snprintf(buf, sizeof buf, "%smax_stpe = 1\n", PUMP2);
    refused_like(buf, 5, "unknown key 'max_stpe' in [actuator pumping.pump2]");
    refused_like("[actuator pumping.pump2]\nunit = 1\nrange = 0, 1\n", 1,
                 "[actuator pumping.pump2] missing required key 'quantity'");
    refused_like("[actuator pumping.pump1]\nquantity = q\n", 1,
                 "section [actuator pumping.pump1] repeated (first at line 37)");
}

static const char IL[] = "[interlock pumping.x]\n"   /* 1 */
                         "actuator = pumping.pump1\n" /* 2 */
                         "reason = r\n";              /* 3 */

static void bad_condition(const char *refuse_if, const char *reason)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%srefuse_if = %s\n", IL, refuse_if);
    refused(buf, 4, "interlock pumping.x", reason);
}

static void test_bad_interlocks(void **state)
{
    (void)state;
    bad_condition("value == 0, pumping.pump3_status < 0.5",
                  "unknown channel 'pumping.pump3_status' (no [channel pumping.pump3_status] in "
                  "the profile)");
    bad_condition("reservoir.level < 1", "channel 'reservoir.level' is not of site kind 'pumping'");
    bad_condition("pumping.flow < LL", "channel 'pumping.flow' has no limits for LL");
    bad_condition("pumping.flow > HH", "channel 'pumping.flow' has no limits for HH");
    bad_condition("LL > pumping.tank_level",
                  "a limit name (LL) is allowed only on the right of a condition");
    bad_condition("value < MAX", "limit name MAX needs a channel on the left");
    bad_condition("value => 1", "bad operator in condition 'value => 1' (< <= > >= == !=)");
    bad_condition("value = 1", "bad operator in condition 'value = 1' (< <= > >= == !=)");
    bad_condition("value <> 1", "bad operator in condition 'value <> 1' (< <= > >= == !=)");
    bad_condition("value < 1 < 2", "bad operator in condition 'value < 1 < 2' (< <= > >= == !=)");
    bad_condition("value ~ 1", "condition 'value ~ 1' has no operator (< <= > >= == !=)");
    bad_condition("value ==", "condition 'value ==' needs an operand on each side");
    bad_condition("value == 0, , pumping.flow < 1", "empty condition (item 2 of refuse_if)");
    bad_condition("value == 0,", "empty condition (item 2 of refuse_if)");
    bad_condition(", value == 0", "empty condition (item 1 of refuse_if)");
    bad_condition("value == 0, value == 1, value == 2, value == 3, value == 4, value == 5, "
                  "value == 6, value == 7, value == 8",
                  "more than 8 conditions (9)");
    bad_condition("1 < 2", "condition '1 < 2' compares two numbers");
    bad_condition("value < value", "condition 'value < value' compares value with itself");
    bad_condition("value < pumping.flow",
                  "condition 'value < pumping.flow' compares 'value' in 1 with 'pumping.flow' in "
                  "L/s");
    bad_condition("value < inf", "'inf' is not a finite number");
    bad_condition("value < 1e999", "'1e999' is not a finite number");
    bad_condition("value < level",
                  "unknown operand 'level' (value, a channel pumping.<name>, a number, or on the "
                  "right LL, L, H, HH, MIN, MAX)");

    refused("[interlock reservoir.x]\nactuator = pumping.pump1\nrefuse_if = value == 0\n"
            "reason = r\n",
            2, "interlock reservoir.x", "actuator 'pumping.pump1' is not of site kind 'reservoir'");
    refused("[interlock pumping.x]\nactuator = pumping.pump7\nrefuse_if = value == 0\n"
            "reason = r\n",
            2, "interlock pumping.x",
            "unknown actuator 'pumping.pump7' (no [actuator pumping.pump7] in the profile)");
    refused_like("[interlock pumping.x]\nactuator = pumping.pump1\nrefuse_if = value == 0\n", 1,
                 "[interlock pumping.x] missing required key 'reason'");
    refused_like("[interlock pumping.x]\nactuator = pumping.pump1\nrefuse_if = value == 0\n"
                 "reason = r\nwhen = always\n",
                 5, "unknown key 'when' in [interlock pumping.x]");

    /* exactly eight conditions are accepted */
    char err[CM_CONF_ERRLEN], buf[1024];
    snprintf(buf, sizeof buf, "%srefuse_if = %s\n", IL,
             "value == 0, value != 1, value < 2, value <= 3, value > -1, value >= -2, "
             "pumping.flow < 1, pumping.tank_level < L");
    cm_profile *p = with(buf, err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_interlock_at(p, 0)->n_conds, 8);
    cm_profile_destroy(&p);
}

static const char TANK[] = "[relation reservoir.balance]\n" /* 1 */
                           "type = tank_balance\n";         /* 2 */

static void test_relations(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN], buf[1024];
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inflow\noutflow = reservoir.outflow\n"
             "area_m2 = 400\n"
             "[relation pumping.pumps]\ntype = pump_flow\n"
             "status = pumping.pump1_status, pumping.pump2_status\nflow = pumping.flow\n"
             "min_flow = 5\n",
             TANK);
    cm_profile *p = with(buf, err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_relation_count(p), 2);
    const cm_relation *r = cm_profile_relation_at(p, 0);
    assert_string_equal(r->id, "reservoir.balance");
    assert_string_equal(r->kind, "reservoir");
    assert_string_equal(r->outflow, "reservoir.outflow"); /* m3/h converts to L/s */
    assert_true(r->area_m2 == 400);
    r = cm_profile_relation_at(p, 1);
    assert_int_equal(r->n_status, 2);
    assert_string_equal(r->flow, "pumping.flow");
    assert_true(r->min_flow == 5);
    cm_profile_destroy(&p);

    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inlet\noutflow = reservoir.outflow\n"
             "area_m2 = 400\n",
             TANK);
    refused(buf, 4, "relation reservoir.balance",
            "inflow: unknown channel 'reservoir.inlet' (no [channel reservoir.inlet] in the "
            "profile)");
    snprintf(buf, sizeof buf,
             "%slevel = pumping.tank_level\ninflow = reservoir.inflow\n"
             "outflow = reservoir.outflow\narea_m2 = 400\n",
             TANK);
    refused(buf, 3, "relation reservoir.balance",
            "level: channel 'pumping.tank_level' is not of site kind 'reservoir'");
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.inflow\ninflow = reservoir.level\noutflow = reservoir.outflow\n"
             "area_m2 = 400\n",
             TANK);
    refused(buf, 3, "relation reservoir.balance",
            "level: channel 'reservoir.inflow' is in 'L/s', which does not convert to m");
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inflow\noutflow = reservoir.inflow\n"
             "area_m2 = 400\n",
             TANK);
    refused(buf, 5, "relation reservoir.balance",
            "level, inflow and outflow must be three different channels");
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inflow\noutflow = reservoir.outflow\n",
             TANK);
    refused(buf, 2, "relation reservoir.balance", "a tank_balance relation needs 'area_m2'");
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inflow\noutflow = reservoir.outflow\n"
             "area_m2 = 0\n",
             TANK);
    refused(buf, 6, "relation reservoir.balance", "area_m2 must be > 0");
    snprintf(buf, sizeof buf,
             "%slevel = reservoir.level\ninflow = reservoir.inflow\noutflow = reservoir.outflow\n"
             "area_m2 = 400\nmin_flow = 3\n",
             TANK);
    refused(buf, 7, "relation reservoir.balance",
            "'min_flow' does not apply to a tank_balance relation");
    refused("[relation pumping.p]\ntype = pump_balance\n", 2, "relation pumping.p",
            "type must be tank_balance or pump_flow");
    refused("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status, "
            "pumping.pump1_status\nflow = pumping.flow\nmin_flow = 5\n",
            3, "relation pumping.p", "status channel 'pumping.pump1_status' repeated");
    refused("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status, "
            "pumping.pump2_status, pumping.flow, pumping.tank_level, pumping.pump1_status\n"
            "flow = pumping.flow\nmin_flow = 5\n",
            3, "relation pumping.p", "status must be 1 to 4 channels");
    refused("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status\n"
            "flow = reservoir.inflow\nmin_flow = 5\n",
            4, "relation pumping.p",
            "flow: channel 'reservoir.inflow' is not of site kind 'pumping'");
    refused("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status\n"
            "flow = pumping.pump1_status\nmin_flow = 5\n",
            4, "relation pumping.p",
            "flow channel 'pumping.pump1_status' is also a status channel");
    refused("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status\n"
            "flow = pumping.flow\nmin_flow = 0\n",
            5, "relation pumping.p", "min_flow must be > 0");
    refused("[relation nodot]\ntype = pump_flow\n", 2, "relation nodot",
            "relation id 'nodot' must be <site kind>.<name>");
    refused_like("[relation pumping.p]\ntype = pump_flow\nstatus = pumping.pump1_status\n"
                 "flow = pumping.flow\nmin_flow = 5\narea = 3\n",
                 6, "unknown key 'area' in [relation pumping.p]");
}

/* `deviation = yes|no` on a channel: optional, default no, anything else refused with its line. */
static void test_channel_deviation(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    static const char PRESSURE[] = "[channel reservoir.pressure]\n" /* 1 */
                                   "quantity = pressure\n"          /* 2 */
                                   "unit = bar\n"                   /* 3 */
                                   "range = 0, 10\n";               /* 4 */
    char buf[512];
    snprintf(buf, sizeof buf, "%sdeviation = yes\n", PRESSURE);
    cm_profile *p = with(buf, err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_channel(p, "reservoir", "pressure")->deviation, 1);
    assert_int_equal(cm_profile_channel(p, "reservoir", "level")->deviation, 0); /* default */
    cm_profile_destroy(&p);
    snprintf(buf, sizeof buf, "%sdeviation = no\n", PRESSURE);
    p = with(buf, err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(cm_profile_channel(p, "reservoir", "pressure")->deviation, 0);
    cm_profile_destroy(&p);
    const char *bad[] = {"Yes", "1", "true", "yes please"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, "%sdeviation = %s\n", PRESSURE, bad[i]);
        refused(buf, 5, "channel reservoir.pressure", "deviation must be yes or no");
    }
    snprintf(buf, sizeof buf, "%sdeviation =\n", PRESSURE);
    refused(buf, 5, "channel reservoir.pressure", "deviation must be yes or no");

    /* the simulated utility marks its single-regime channels only */
    assert_int_equal(cm_profile_load("examples/sim-utility/profile.conf", &p, err), CM_OK);
    assert_int_equal(cm_profile_channel(p, "treatment", "chlorine")->deviation, 1);
    assert_int_equal(cm_profile_channel(p, "treatment", "ph")->deviation, 1);
    assert_int_equal(cm_profile_channel(p, "treatment", "treated_turbidity")->deviation, 1);
    assert_int_equal(cm_profile_channel(p, "treatment", "raw_turbidity")->deviation, 0);
    assert_int_equal(cm_profile_channel(p, "reservoir", "chlorine")->deviation, 1);
    assert_int_equal(cm_profile_channel(p, "pumping", "flow")->deviation, 0);
    assert_int_equal(cm_profile_channel(p, "pumping", "pump1_status")->deviation, 0);
    cm_profile_destroy(&p);
}

/* SHA-256 of the 80 bytes below, from `printf '...' | sha256sum`. */
static const char SMALL[] = "[profile]\nname = s\nversion = 1\n"
                            "[channel a.b]\nquantity = q\nunit = m\nrange = 0, 1\n";
static const char SMALL_SHA256[] =
    "1c0991b0224ad32bc5c4344f531546f890ee8c0d2350c5dcc69d3855362b422a";

static void test_digest(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN], d1[65], d2[65], d3[65];
    cm_profile *p = NULL;
    size_t len = strlen(SMALL);
    assert_int_equal(cm_profile_load_text("s.conf", SMALL, len, &p, err), CM_OK);
    assert_int_equal(cm_profile_digest(p, d1), CM_OK);
    assert_string_equal(d1, SMALL_SHA256);
    cm_profile_destroy(&p);

    /* the same bytes give the same digest; one byte changed (the last newline into a space,
     * which leaves the parsed profile the same) gives another */
    char *copy = strdup(SMALL);
    assert_non_null(copy);
    assert_int_equal(cm_profile_load_text("s.conf", copy, len, &p, err), CM_OK);
    assert_int_equal(cm_profile_digest(p, d2), CM_OK);
    assert_string_equal(d1, d2);
    cm_profile_destroy(&p);
    copy[len - 1] = ' ';
    assert_int_equal(cm_profile_load_text("s.conf", copy, len, &p, err), CM_OK);
    assert_int_equal(cm_profile_digest(p, d3), CM_OK);
    assert_string_not_equal(d1, d3);
    assert_true(cm_profile_channel(p, "a", "b")->range_max == 1);
    cm_profile_destroy(&p);
    free(copy);

    /* from a file: the digest of the file's bytes */
    char path[] = "/tmp/suido-profile-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, SMALL, len), (ssize_t)len);
    close(fd);
    assert_int_equal(cm_profile_load(path, &p, err), CM_OK);
    assert_int_equal(cm_profile_digest(p, d2), CM_OK);
    assert_string_equal(d2, SMALL_SHA256);
    cm_profile_destroy(&p);
    unlink(path);
    assert_int_equal(cm_profile_load(path, &p, err), CM_ERR_CONFIG);
    assert_non_null(strstr(err, "cannot open"));

    /* from a parsed cm_conf there are no bytes, hence no digest */
    cm_conf *c = NULL;
    assert_int_equal(cm_conf_parse("s.conf", SMALL, len, &c, err), CM_OK);
    assert_int_equal(cm_profile_parse(c, &p, err), CM_OK);
    assert_int_equal(cm_profile_digest(p, d1), CM_ERR_INVAL);
    assert_string_equal(d1, "");
    cm_profile_destroy(&p);
    cm_conf_destroy(&c);
}

static void test_unit_convert(void **state)
{
    (void)state;
    double v;
    assert_int_equal(cm_unit_convert("ppm", "mg/L", 2, &v), CM_OK);
    assert_true(v == 2);
    assert_int_equal(cm_unit_convert("m3/h", "L/s", 36, &v), CM_OK);
    assert_true(v > 9.999 && v < 10.001);
    assert_int_equal(cm_unit_convert("L/h", "mg/L", 1, &v), CM_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_profiles_load),
        cmocka_unit_test(test_actuators_and_accessors),
        cmocka_unit_test(test_bad_actuators),
        cmocka_unit_test(test_bad_interlocks),
        cmocka_unit_test(test_relations),
        cmocka_unit_test(test_channel_deviation),
        cmocka_unit_test(test_digest),
        cmocka_unit_test(test_unit_convert),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
