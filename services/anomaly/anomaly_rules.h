/* anomaly_rules: streaming checks of one channel of one gateway against its profile entry —
 * physical range (sensor fault), alarm limits LL/L/H/HH with deadband hysteresis, and rate of
 * change. Pure functions on a small state, shared by the live service and its tests.
 *
 * An alert is raised on entering a state and cleared on leaving it; staying in a state raises
 * nothing more (de-duplication). The limit family (range, LL, L, H, HH) shares one alert id per
 * channel so that escalation L -> LL updates one alert instead of opening another. */
#ifndef ANOMALY_RULES_H
#define ANOMALY_RULES_H
#include <stdint.h>
#include "cm_profile.h"

typedef enum anomaly_level {
    LEVEL_NORMAL = 0,
    LEVEL_L,
    LEVEL_LL,
    LEVEL_H,
    LEVEL_HH,
    LEVEL_RANGE, /* outside the physical range: the sensor, not the plant, is suspect */
} anomaly_level;

typedef struct anomaly_state {
    anomaly_level level;
    int rate_alarm;
    int has_last;
    double last_value;
    uint64_t last_ms;
} anomaly_state;

typedef struct anomaly_event {
    const char *rule;   /* "limit_l", "limit_ll", "limit_h", "limit_hh", "physical_range", "rate" */
    const char *family; /* "limit" or "rate": part of the alert id */
    int severity;       /* Suido__Severity */
    int cleared;
    double limit;
    char evidence[160];
} anomaly_event;

/* Evaluates value at ts_ms; writes up to 3 events and returns how many. */
int anomaly_eval(anomaly_state *s, const cm_channel *c, double value, uint64_t ts_ms,
                 anomaly_event ev[3]);

const char *anomaly_level_name(anomaly_level l);

#endif
