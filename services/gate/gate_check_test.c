/* Unit tests of gate_check: one test per refusal reason, the order of the checks, unit
 * conversion, interlocks with limit names, stale data and readings of quality BAD failing safe,
 * and the commanded-vs-actual follow check; plus the example profile's interlocks as the gate
 * applies them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cm_time.h"
#include "gate_check.h"

static const char PROFILE[] =
    "[profile]\nname = gate test\nversion = 1\n"
    "[channel pumping.pump1_status]\nquantity = run_status\nunit = 1\nrange = 0, 1\n"
    "[channel pumping.pump2_status]\nquantity = run_status\nunit = 1\nrange = 0, 1\n"
    "[channel pumping.tank_level]\nquantity = level\nunit = m\nrange = 0, 6\n"
    "limits = 0.5, 1.0, 5.0, 5.5\ndeadband = 0.05\nperiod_s = 1\n"
    "[channel pumping.pressure]\nquantity = pressure\nunit = kPa\nrange = 0, 1000\n"
    "[channel treatment.raw_flow]\nquantity = flow\nunit = L/s\nrange = 0, 600\nperiod_s = 10\n"
    "[channel treatment.dose]\nquantity = chlorine_dose\nunit = mg/L\nrange = 0, 10\n"
    "period_s = 60\n"
    "[actuator pumping.pump1]\nquantity = run_command\nunit = 1\nrange = 0, 1\n"
    "min_interval_s = 5\nfeedback = pumping.pump1_status\ntolerance = 0.5\nsettle_s = 10\n"
    "[actuator pumping.pump2]\nquantity = run_command\nunit = 1\nrange = 0, 1\n"
    "[actuator pumping.pressure_set]\nquantity = pressure\nunit = bar\nrange = 0, 10\n"
    "feedback = pumping.pressure\ntolerance = 0.2\nsettle_s = 30\n"
    "[actuator treatment.dosing]\nquantity = chlorine_dose\nunit = mg/L\nrange = 0, 4\n"
    "max_step = 1\nfeedback = treatment.dose\ntolerance = 0.2\nsettle_s = 60\n"
    "[actuator reservoir.inlet_valve]\nquantity = valve_position\nunit = %\nrange = 0, 100\n"
    "max_step = 25\n"
    "[interlock pumping.last_pump_1]\nactuator = pumping.pump1\n"
    "refuse_if = value == 0, pumping.pump2_status < 0.5, pumping.tank_level < LL\n"
    "reason = never stop the last running pump while the tank is below its low-low level\n"
    "[interlock pumping.tank_full]\nactuator = pumping.pump1\n"
    "refuse_if = value == 1, pumping.tank_level >= HH\n"
    "reason = do not start a pump into a full tank\n"
    "[interlock treatment.no_flow]\nactuator = treatment.dosing\n"
    "refuse_if = value > 0, treatment.raw_flow < 5\n"
    "reason = no dosing without flow\n";

#define T0 1700000000000ull /* an arbitrary gate clock, ms */

static cm_profile *prof;

static int setup(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    if (cm_profile_load_text("gate.conf", PROFILE, strlen(PROFILE), &prof, err) != CM_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cm_profile_destroy(&prof);
    return 0;
}

/* A plant where nothing blocks the usual commands: both pumps running, the tank in its normal
 * band, flow through the plant; every reading taken at now. */
static void normal_plant(gate_plant *pl, uint64_t now)
{
    gate_plant_init(pl);
    assert_int_equal(gate_plant_reading(pl, "pumping.pump1_status", 1, now), CM_OK);
    assert_int_equal(gate_plant_reading(pl, "pumping.pump2_status", 1, now), CM_OK);
    assert_int_equal(gate_plant_reading(pl, "pumping.tank_level", 3.0, now), CM_OK);
    assert_int_equal(gate_plant_reading(pl, "treatment.raw_flow", 120, now), CM_OK);
}

static gate_decision dec;

static const char *decide(const char *site, const gate_plant *pl, const char *actuator,
                          double value, const char *unit, const char *role, uint64_t now)
{
    gate_request req = {actuator, value, unit, role};
    gate_verdict v = gate_decide(prof, site, pl, &req, now, &dec);
    assert_int_equal(v, dec.verdict);
    assert_true(strcmp(dec.reason, "ok") == 0 ? v == GATE_ALLOW : v == GATE_REFUSE);
    assert_true(dec.detail[0] != '\0');
    return dec.reason;
}

static void test_role(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "viewer", T0), "role");
    assert_string_equal(dec.detail, "role 'viewer' may not command (operator or admin only)");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "Operator", T0), "role");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "", T0), "role");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", NULL, T0), "role");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "operator", T0), "ok");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "admin", T0), "ok");
    assert_string_equal(dec.actuator->id, "pumping.pump2");
    assert_true(dec.value == 1);
}

static void test_unknown_actuator(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump3", 1, "1", "operator", T0),
                        "unknown_actuator");
    assert_null(dec.actuator);
    /* the name is without the site kind, and the actuator must be of the gateway's kind */
    assert_string_equal(decide("pumping", &pl, "pumping.pump2", 1, "1", "operator", T0),
                        "unknown_actuator");
    assert_string_equal(decide("reservoir", &pl, "pump2", 1, "1", "operator", T0),
                        "unknown_actuator");
    assert_string_equal(decide(NULL, &pl, "pump2", 1, "1", "operator", T0), "unknown_actuator");
    assert_string_equal(decide("pumping", &pl, NULL, 1, "1", "operator", T0), "unknown_actuator");
}

static void test_not_finite(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump2", NAN, "1", "operator", T0), "not_finite");
    assert_string_equal(decide("pumping", &pl, "pump2", INFINITY, "1", "operator", T0),
                        "not_finite");
    assert_string_equal(decide("pumping", &pl, "pump2", -INFINITY, "1", "operator", T0),
                        "not_finite");
}

static void test_units(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "L/s", "operator", T0), "wrong_unit");
    assert_string_equal(dec.detail, "unit 'L/s' does not convert to pumping.pump2's unit '1'");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "", "operator", T0), "wrong_unit");
    assert_string_equal(decide("pumping", &pl, "pump2", 1, NULL, "operator", T0), "wrong_unit");
    /* a dose given in ppm is a dose in mg/L */
    assert_string_equal(decide("treatment", &pl, "dosing", 0.5, "ppm", "operator", T0), "ok");
    assert_true(dec.value == 0.5);
    /* 900 kPa is 9 bar: in range once converted, though 900 is not */
    assert_string_equal(decide("pumping", &pl, "pressure_set", 900, "kPa", "admin", T0), "ok");
    assert_true(fabs(dec.value - 9.0) < 1e-9);
    assert_string_equal(decide("pumping", &pl, "pressure_set", 1100, "kPa", "admin", T0),
                        "out_of_range");
    assert_true(fabs(dec.value - 11.0) < 1e-9);
    /* a unit cm_unit_convert does not know */
    assert_string_equal(decide("pumping", &pl, "pressure_set", 2, "mbar", "admin", T0),
                        "wrong_unit");
}

static void test_out_of_range(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump2", 2, "1", "operator", T0), "out_of_range");
    assert_string_equal(dec.detail, "2 1 is outside the range 0 to 1 1 of pumping.pump2");
    assert_string_equal(decide("pumping", &pl, "pump2", -0.001, "1", "operator", T0),
                        "out_of_range");
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 100.5, "%", "operator", T0),
                        "out_of_range");
    /* the bounds themselves are inside */
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 100, "%", "operator", T0), "ok");
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 0, "%", "operator", T0), "ok");
    /* a huge value, converted, is still out of range */
    assert_string_equal(decide("pumping", &pl, "pressure_set", 1e308, "kPa", "admin", T0),
                        "out_of_range");
}

static void test_max_step(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    /* no feedback, no previous command: nothing to step from */
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 100, "%", "operator", T0), "ok");
    assert_int_equal(gate_plant_commanded(&pl, "reservoir.inlet_valve", 50, T0), CM_OK);
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 80, "%", "operator", T0 + 1000),
                        "max_step");
    assert_non_null(strstr(dec.detail, "from 50 (the last command) to 80 %"));
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 24.9, "%", "operator", T0 + 1000),
                        "max_step");
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 75, "%", "operator", T0 + 1000),
                        "ok");
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 25, "%", "operator", T0 + 1000),
                        "ok");

    /* with feedback: a fresh reading is the current value, before the last command */
    assert_int_equal(gate_plant_commanded(&pl, "treatment.dosing", 3.0, T0 - 600000), CM_OK);
    assert_int_equal(gate_plant_reading(&pl, "treatment.dose", 1.0, T0), CM_OK);
    assert_string_equal(decide("treatment", &pl, "dosing", 3.5, "mg/L", "operator", T0),
                        "max_step");
    assert_non_null(strstr(dec.detail, "from 1 (treatment.dose) to 3.5 mg/L"));
    assert_string_equal(decide("treatment", &pl, "dosing", 2.0, "mg/L", "operator", T0), "ok");
    /* the dose channel reports every 60 s: its reading is fresh for 180 s, then the last
     * command (3.0) is the current value (raw_flow is refreshed for the no_flow interlock) */
    gate_plant_reading(&pl, "treatment.raw_flow", 120, T0 + 180000);
    assert_string_equal(decide("treatment", &pl, "dosing", 2.5, "mg/L", "operator", T0 + 180000),
                        "max_step");
    assert_string_equal(decide("treatment", &pl, "dosing", 2.5, "mg/L", "operator", T0 + 180001),
                        "ok");
    assert_string_equal(decide("treatment", &pl, "dosing", 1.5, "mg/L", "operator", T0 + 180001),
                        "max_step");
    assert_non_null(strstr(dec.detail, "(the last command)"));
}

static void test_min_interval(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0), "ok");
    assert_int_equal(gate_plant_commanded(&pl, "pumping.pump1", 1, T0), CM_OK);
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0 + 4999),
                        "min_interval");
    assert_string_equal(dec.detail, "4.999 s since the last command to pumping.pump1; at least "
                                    "5 s between commands");
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0 + 5000), "ok");
    /* a gate clock that went back counts as no time at all */
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0 - 60000),
                        "min_interval");
    /* another actuator is not affected; one without min_interval_s never is */
    assert_string_equal(decide("pumping", &pl, "pump2", 0, "1", "operator", T0 + 1), "ok");
    assert_int_equal(gate_plant_commanded(&pl, "pumping.pump2", 0, T0 + 1), CM_OK);
    assert_string_equal(decide("pumping", &pl, "pump2", 1, "1", "operator", T0 + 2), "ok");
}

static void test_interlock_with_limit_names(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    /* pump 2 stopped, tank below LL (0.5 m): pump 1 must not stop */
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0);
    gate_plant_reading(&pl, "pumping.tank_level", 0.45, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0),
                        "interlock:pumping.last_pump_1");
    assert_string_equal(dec.detail,
                        "never stop the last running pump while the tank is below its low-low "
                        "level");
    assert_true(dec.value == 0);
    /* an admin is held by interlocks too */
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "admin", T0),
                        "interlock:pumping.last_pump_1");
    /* at LL exactly the condition "< LL" does not hold */
    gate_plant_reading(&pl, "pumping.tank_level", 0.5, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0), "ok");
    /* pump 2 running: pump 1 is not the last one */
    gate_plant_reading(&pl, "pumping.tank_level", 0.45, T0);
    gate_plant_reading(&pl, "pumping.pump2_status", 1, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0), "ok");
    /* starting is fine with a low tank, not into a tank at or above HH (5.5 m) */
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0), "ok");
    gate_plant_reading(&pl, "pumping.tank_level", 5.5, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0),
                        "interlock:pumping.tank_full");
    assert_string_equal(dec.detail, "do not start a pump into a full tank");
    /* the other interlock: no dosing without flow, but a zero dose is fine */
    gate_plant_reading(&pl, "treatment.raw_flow", 4.9, T0);
    assert_string_equal(decide("treatment", &pl, "dosing", 0.5, "mg/L", "operator", T0),
                        "interlock:treatment.no_flow");
    assert_string_equal(decide("treatment", &pl, "dosing", 0, "mg/L", "operator", T0), "ok");
}

static void test_stale_data_fails_safe(void **state)
{
    (void)state;
    gate_plant pl;
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0);
    /* no tank reading at all: stopping pump 1 might be what the interlock forbids */
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0),
                        "interlock_data_missing");
    assert_string_equal(dec.detail,
                        "interlock pumping.last_pump_1 needs pumping.tank_level, which has no "
                        "reading");
    /* period_s 1: fresh for max(3 s, 10 s) = 10 s */
    gate_plant_reading(&pl, "pumping.tank_level", 0.2, T0 - 10001);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0),
                        "interlock_data_missing");
    assert_string_equal(dec.detail,
                        "interlock pumping.last_pump_1 needs pumping.tank_level, whose last "
                        "reading is 10.0 s old (fresh for 10.0 s)");
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 - 1),
                        "interlock:pumping.last_pump_1");
    /* a stale reading of pump 2 too: missing, whichever channel it is */
    gate_plant_reading(&pl, "pumping.tank_level", 3.0, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 10001),
                        "interlock_data_missing");
    /* a condition that is false on fresh data settles it: pump 2 is running, so stopping
     * pump 1 is allowed whatever the (stale) tank level */
    gate_plant_reading(&pl, "pumping.pump2_status", 1, T0 + 20000);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 20000), "ok");
    /* starting pump 1 with the tank level stale: tank_full cannot be ruled out */
    assert_string_equal(decide("pumping", &pl, "pump1", 1, "1", "operator", T0 + 20000),
                        "interlock_data_missing");
    assert_non_null(strstr(dec.detail, "interlock pumping.tank_full needs pumping.tank_level"));
    /* period_s 10: fresh for 30 s */
    gate_plant_reading(&pl, "treatment.raw_flow", 100, T0);
    assert_string_equal(decide("treatment", &pl, "dosing", 0.5, "mg/L", "operator", T0 + 30000),
                        "ok");
    assert_string_equal(decide("treatment", &pl, "dosing", 0.5, "mg/L", "operator", T0 + 30001),
                        "interlock_data_missing");
    /* a zero dose needs no flow reading */
    assert_string_equal(decide("treatment", &pl, "dosing", 0, "mg/L", "operator", T0 + 30001),
                        "ok");
}

/* A reading of quality BAD (the device did not answer) is no interlock input: the value held
 * before it stops being fresh, so the interlock fails safe as on missing data until a newer
 * valid reading comes; max_step steps from the last command instead of the feedback. */
static void test_bad_reading_fails_safe(void **state)
{
    (void)state;
    gate_plant pl;
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0);
    gate_plant_reading(&pl, "pumping.tank_level", 3.0, T0);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0), "ok");
    assert_int_equal(gate_plant_bad_at(&pl, "pumping.tank_level", T0 + 1000, T0 + 1000), CM_OK);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 1000),
                        "interlock_data_missing");
    assert_string_equal(dec.detail,
                        "interlock pumping.last_pump_1 needs pumping.tank_level, whose device is "
                        "not answering (reading of quality BAD 0.0 s ago; last valid reading "
                        "1.0 s old)");
    /* the BAD reading's value was never taken */
    const gate_reading *r = gate_plant_get_reading(&pl, "pumping.tank_level");
    assert_true(r->value == 3.0 && r->ts_ms == T0 && r->bad_ms == T0 + 1000);
    /* a condition false on fresh data still settles it: pump 2 runs */
    gate_plant_reading(&pl, "pumping.pump2_status", 1, T0 + 1000);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 1000), "ok");
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0 + 1000);
    /* a back-filled valid reading older than the BAD one does not make it current */
    gate_plant_reading(&pl, "pumping.tank_level", 3.0, T0 + 500);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 1000),
                        "interlock_data_missing");
    /* a newer valid reading does; a late BAD reading older than it changes nothing */
    gate_plant_reading(&pl, "pumping.tank_level", 0.3, T0 + 2000);
    assert_int_equal(gate_plant_bad_at(&pl, "pumping.tank_level", T0 + 1500, T0 + 2000), CM_OK);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 2000),
                        "interlock:pumping.last_pump_1");
    /* only BAD readings, never a valid one: as missing as no reading at all */
    gate_plant pl2;
    gate_plant_init(&pl2);
    gate_plant_reading(&pl2, "pumping.pump2_status", 0, T0);
    assert_int_equal(gate_plant_bad_at(&pl2, "pumping.tank_level", T0, T0), CM_OK);
    assert_null(gate_plant_get_reading(&pl2, "pumping.tank_level"));
    assert_string_equal(decide("pumping", &pl2, "pump1", 0, "1", "operator", T0),
                        "interlock_data_missing");
    assert_string_equal(dec.detail,
                        "interlock pumping.last_pump_1 needs pumping.tank_level, which has no "
                        "reading");
    /* stamped far ahead: ignored like any such reading; an id that does not fit */
    assert_int_equal(gate_plant_bad_at(&pl, "pumping.tank_level", T0 + 3600000, T0 + 2000),
                     CM_ERR_STALE);
    assert_true(gate_plant_get_reading(&pl, "pumping.tank_level")->bad_ms == T0 + 1500);
    assert_int_equal(gate_plant_bad_at(&pl, "", T0, T0), CM_ERR_INVAL);

    /* feedback: the dose reads 1.0, the last command was 3.0; once the dose meter stops
     * answering the step is measured from the command */
    normal_plant(&pl, T0);
    assert_int_equal(gate_plant_commanded(&pl, "treatment.dosing", 3.0, T0 - 600000), CM_OK);
    assert_int_equal(gate_plant_reading(&pl, "treatment.dose", 1.0, T0), CM_OK);
    assert_string_equal(decide("treatment", &pl, "dosing", 2.5, "mg/L", "operator", T0),
                        "max_step");
    assert_int_equal(gate_plant_bad_at(&pl, "treatment.dose", T0 + 1, T0 + 1), CM_OK);
    assert_string_equal(decide("treatment", &pl, "dosing", 2.5, "mg/L", "operator", T0 + 1),
                        "ok");
}

/* Each check wins over every later one: a request failing checks k and k+1 gets reason k. */
static void test_order_of_checks(void **state)
{
    (void)state;
    gate_plant pl;
    normal_plant(&pl, T0);
    assert_string_equal(decide("pumping", &pl, "pump9", NAN, "x", "viewer", T0), "role");
    assert_string_equal(decide("pumping", &pl, "pump9", NAN, "x", "operator", T0),
                        "unknown_actuator");
    assert_string_equal(decide("pumping", &pl, "pump1", NAN, "x", "operator", T0), "not_finite");
    assert_string_equal(decide("pumping", &pl, "pump1", 7, "x", "operator", T0), "wrong_unit");
    /* out of range and a too large step */
    gate_plant_commanded(&pl, "reservoir.inlet_valve", 0, T0 - 1000);
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 101, "%", "operator", T0),
                        "out_of_range");
    /* a too large step (the valve has no min_interval_s; pump 1 below has no max_step) */
    assert_string_equal(decide("reservoir", &pl, "inlet_valve", 30, "%", "operator", T0),
                        "max_step");
    /* too soon, and an interlock that holds */
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0);
    gate_plant_reading(&pl, "pumping.tank_level", 0.3, T0);
    gate_plant_commanded(&pl, "pumping.pump1", 1, T0 - 1000);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0), "min_interval");
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 5000),
                        "interlock:pumping.last_pump_1");
}

static void test_order_of_interlocks(void **state)
{
    (void)state;
    static const char text[] =
        "[profile]\nname = o\nversion = 1\n"
        "[channel pumping.a]\nquantity = q\nunit = 1\nrange = 0, 10\n"
        "[channel pumping.b]\nquantity = q\nunit = 1\nrange = 0, 10\n"
        "[actuator pumping.p]\nquantity = q\nunit = 1\nrange = 0, 10\n"
        "[interlock pumping.first]\nactuator = pumping.p\nrefuse_if = value > 5, pumping.a > 1\n"
        "reason = first\n"
        "[interlock pumping.second]\nactuator = pumping.p\nrefuse_if = value > 5, pumping.b > 1\n"
        "reason = second\n"
        "[interlock pumping.third]\nactuator = pumping.p\nrefuse_if = value > 2\n"
        "reason = third\n";
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    assert_int_equal(cm_profile_load_text("o.conf", text, strlen(text), &p, err), CM_OK);
    gate_plant pl;
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.a", 2, T0);
    gate_plant_reading(&pl, "pumping.b", 2, T0);
    gate_request req = {"p", 6, "1", "operator"};
    gate_decision d;
    /* all three hold: the first in file order */
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.first");
    gate_plant_reading(&pl, "pumping.a", 0, T0);
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.second");
    /* an interlock that holds for sure is named before one that only might */
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.b", 2, T0);
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.second");
    gate_plant_reading(&pl, "pumping.b", 0, T0);
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.third");
    req.value = 2;
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_ALLOW);
    assert_string_equal(d.reason, "ok");
    assert_string_equal(d.detail, "pumping.p to 2 1");
    /* no data at all: first and second might hold, third holds for sure */
    gate_plant_init(&pl);
    req.value = 6;
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.third");
    /* without third, the first that might hold is named */
    req.value = 1;
    assert_int_equal(gate_decide(p, "pumping", &pl, &req, T0, &d), GATE_ALLOW);
    cm_profile_destroy(&p);
}

/* A reading stamped an hour ahead (a gateway clock gone wrong) is not kept: the readings after
 * it still count, so the interlock sees the tank drop below LL, the feedback shows the pump did
 * not start, and once they stop the data goes stale and the gate fails safe. */
static void test_future_reading_does_not_freeze_the_plant(void **state)
{
    (void)state;
    const uint64_t hour = 3600000;
    gate_plant pl;
    gate_plant_init(&pl);
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.pump2_status", 0, T0, T0), CM_OK);
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.tank_level", 3.0, T0, T0), CM_OK);
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.tank_level", 3.0, T0 + hour, T0 + 500),
                     CM_ERR_STALE);
    /* within the skew: taken */
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.tank_level", 2.9,
                                           T0 + 1000 + CM_MAX_AHEAD_MS, T0 + 1000),
                     CM_OK);
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.tank_level", 0.3, T0 + 12000, T0 + 12000),
                     CM_OK);
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.pump2_status", 0, T0 + 12000, T0 + 12000),
                     CM_OK);
    assert_true(gate_plant_get_reading(&pl, "pumping.tank_level")->value == 0.3);
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 13000),
                        "interlock:pumping.last_pump_1");
    /* nothing since: stale after 10 s, and stopping pump 1 is refused for want of data */
    assert_string_equal(decide("pumping", &pl, "pump1", 0, "1", "operator", T0 + 23000),
                        "interlock_data_missing");

    /* feedback: pump 1 commanded on at T0 + 12000; a status of 1 from the future does not
     * count as the pump following, the real readings of 0 do */
    const cm_actuator *pump1 = cm_profile_actuator(prof, "pumping", "pump1");
    gate_follow f;
    assert_int_equal(gate_plant_reading_at(&pl, "pumping.pump1_status", 1, T0 + hour, T0 + 12500),
                     CM_ERR_STALE);
    for (uint64_t t = T0 + 13000; t <= T0 + 25000; t += 1000)
        assert_int_equal(gate_plant_reading_at(&pl, "pumping.pump1_status", 0, t, t), CM_OK);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0 + 12000, &pl, T0 + 25000, &f),
                     GATE_FOLLOW_MISMATCH);
}

static void test_plant_state(void **state)
{
    (void)state;
    gate_plant pl;
    gate_plant_init(&pl);
    assert_null(gate_plant_get_reading(&pl, "pumping.flow"));
    assert_int_equal(gate_plant_reading(&pl, "pumping.flow", 10, T0), CM_OK);
    assert_int_equal(gate_plant_reading(&pl, "pumping.flow", 5, T0 - 1), CM_OK); /* back-fill */
    const gate_reading *r = gate_plant_get_reading(&pl, "pumping.flow");
    assert_true(r->value == 10 && r->ts_ms == T0);
    assert_int_equal(gate_plant_reading(&pl, "pumping.flow", 12, T0 + 1), CM_OK);
    assert_true(r->value == 12 && r->ts_ms == T0 + 1);
    assert_int_equal(gate_plant_reading(&pl, "pumping.flow", NAN, T0 + 2), CM_ERR_INVAL);
    assert_true(r->value == 12);
    assert_int_equal(gate_plant_reading(&pl, "", 1, T0), CM_ERR_INVAL);
    char longid[200];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    assert_int_equal(gate_plant_reading(&pl, longid, 1, T0), CM_ERR_INVAL);
    assert_int_equal(gate_plant_commanded(&pl, longid, 1, T0), CM_ERR_INVAL);
    for (int i = 1; i < GATE_MAX_CHANNELS; i++) {
        char id[32];
        snprintf(id, sizeof id, "k.c%d", i);
        assert_int_equal(gate_plant_reading(&pl, id, i, T0), CM_OK);
    }
    assert_int_equal(gate_plant_reading(&pl, "k.one_too_many", 1, T0), CM_ERR_TOO_BIG);
    assert_int_equal(gate_plant_reading(&pl, "k.c7", 8, T0 + 1), CM_OK); /* updates still fit */
    assert_int_equal(gate_plant_commanded(&pl, "k.p", 1, T0), CM_OK);
    assert_int_equal(gate_plant_commanded(&pl, "k.p", 0, T0 - 5), CM_OK);
    assert_true(gate_plant_get_sent(&pl, "k.p")->value == 1);
    assert_null(gate_plant_get_sent(&pl, "k.q"));
}

static void test_follow_check(void **state)
{
    (void)state;
    const cm_actuator *pump1 = cm_profile_actuator(prof, "pumping", "pump1");
    gate_plant pl;
    gate_plant_init(&pl);
    gate_follow f;
    /* pump 1 commanded on at T0; settle_s 10; the status channel is fresh for 10 s */
    gate_plant_reading(&pl, "pumping.pump1_status", 0, T0 - 500);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 1000, &f),
                     GATE_FOLLOW_PENDING);
    assert_true(isnan(f.actual)); /* a reading from before the command does not count */
    gate_plant_reading(&pl, "pumping.pump1_status", 0, T0 + 3000);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 3000, &f),
                     GATE_FOLLOW_PENDING);
    assert_true(f.actual == 0 && f.actual_ts_ms == T0 + 3000);
    gate_plant_reading(&pl, "pumping.pump1_status", 1, T0 + 4000);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 4000, &f), GATE_FOLLOW_OK);
    assert_true(f.actual == 1 && f.commanded == 1 && f.tolerance == 0.5 && f.settle_s == 10);
    assert_string_equal(gate_follow_state_name(f.state), "ok");

    /* did not follow: off 10.5 s after the command */
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.pump1_status", 0, T0 + 9999);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 10000, &f),
                     GATE_FOLLOW_PENDING); /* settled, but the last reading is from before */
    gate_plant_reading(&pl, "pumping.pump1_status", 0, T0 + 10500);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 11000, &f),
                     GATE_FOLLOW_MISMATCH);
    assert_true(f.actual == 0 && f.commanded == 1 && f.actual_ts_ms == T0 + 10500);
    assert_string_equal(f.detail, "pumping.pump1_status reads 0 1 10.5 s after the command, "
                                  "commanded 1 (tolerance 0.5)");

    /* silent feedback: mismatch once settle_s plus the freshness window have passed */
    gate_plant_init(&pl);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 20000, &f),
                     GATE_FOLLOW_PENDING);
    assert_int_equal(gate_follow_check(prof, pump1, 1, T0, &pl, T0 + 20001, &f),
                     GATE_FOLLOW_MISMATCH);
    assert_true(isnan(f.actual));

    /* feedback in another unit: 240 kPa is 2.4 bar, within 0.2 bar of 2.5 */
    const cm_actuator *ps = cm_profile_actuator(prof, "pumping", "pressure_set");
    gate_plant_reading(&pl, "pumping.pressure", 240, T0 + 1000);
    assert_int_equal(gate_follow_check(prof, ps, 2.5, T0, &pl, T0 + 1000, &f), GATE_FOLLOW_OK);
    assert_true(fabs(f.actual - 2.4) < 1e-9);
    gate_plant_reading(&pl, "pumping.pressure", 200, T0 + 31000);
    assert_int_equal(gate_follow_check(prof, ps, 2.5, T0, &pl, T0 + 31000, &f),
                     GATE_FOLLOW_MISMATCH);
    assert_true(fabs(f.actual - 2.0) < 1e-9);

    /* no feedback channel: nothing to compare */
    const cm_actuator *valve = cm_profile_actuator(prof, "reservoir", "inlet_valve");
    assert_int_equal(gate_follow_check(prof, valve, 50, T0, &pl, T0 + 999999, &f),
                     GATE_FOLLOW_NONE);
}

/* The example profile's interlocks, as the gate applies them. */
static void test_example_profile(void **state)
{
    (void)state;
    char err[CM_CONF_ERRLEN];
    cm_profile *p = NULL;
    if (cm_profile_load("examples/sim-utility/profile.conf", &p, err) != CM_OK)
        fail_msg("%s", err);
    gate_plant pl;
    gate_plant_init(&pl);
    gate_plant_reading(&pl, "pumping.pump1_status", 1, T0);
    gate_plant_reading(&pl, "pumping.pump2_status", 0, T0);
    gate_plant_reading(&pl, "pumping.tank_level", 0.4, T0);
    gate_decision d;
    gate_request stop1 = {"pump1", 0, "1", "operator"};
    assert_int_equal(gate_decide(p, "pumping", &pl, &stop1, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:pumping.last_pump_1");
    gate_request stop2 = {"pump2", 0, "1", "operator"};
    assert_int_equal(gate_decide(p, "pumping", &pl, &stop2, T0, &d), GATE_ALLOW);
    gate_plant_reading(&pl, "pumping.tank_level", 2.0, T0);
    assert_int_equal(gate_decide(p, "pumping", &pl, &stop1, T0, &d), GATE_ALLOW);

    gate_plant_reading(&pl, "treatment.raw_flow", 2, T0);
    gate_request dose = {"dosing", 1.2, "ppm", "operator"};
    assert_int_equal(gate_decide(p, "treatment", &pl, &dose, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "interlock:treatment.no_dose_without_flow");
    gate_plant_reading(&pl, "treatment.raw_flow", 150, T0);
    assert_int_equal(gate_decide(p, "treatment", &pl, &dose, T0, &d), GATE_ALLOW);
    assert_true(d.value == 1.2);
    dose.value = 4.5;
    assert_int_equal(gate_decide(p, "treatment", &pl, &dose, T0, &d), GATE_REFUSE);
    assert_string_equal(d.reason, "out_of_range");
    cm_profile_destroy(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role),
        cmocka_unit_test(test_unknown_actuator),
        cmocka_unit_test(test_not_finite),
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_max_step),
        cmocka_unit_test(test_min_interval),
        cmocka_unit_test(test_interlock_with_limit_names),
        cmocka_unit_test(test_stale_data_fails_safe),
        cmocka_unit_test(test_bad_reading_fails_safe),
        cmocka_unit_test(test_order_of_checks),
        cmocka_unit_test(test_order_of_interlocks),
        cmocka_unit_test(test_future_reading_does_not_freeze_the_plant),
        cmocka_unit_test(test_plant_state),
        cmocka_unit_test(test_follow_check),
        cmocka_unit_test(test_example_profile),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
