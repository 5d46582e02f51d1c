/* gate_check: everything the command gate decides about one command, without I/O, so that the
 * daemon and its tests share it. The daemon keeps one gate_plant per gateway (the latest reading
 * of each channel and the last command sent to each actuator, by profile id, in profile units),
 * asks gate_decide before it signs and sends a command, records what it sent with
 * gate_plant_commanded, and afterwards asks gate_follow_check whether the plant followed.
 *
 * Order of checks in gate_decide (the first that fails is the reason; exact strings):
 *   "role"                   only "operator" and "admin" may command
 *   "unknown_actuator"       no [actuator <site kind>.<name>] in the profile
 *   "not_finite"             NaN or infinite value
 *   "wrong_unit"             the request's unit does not convert (cm_unit_convert) to the
 *                            actuator's unit
 *   "out_of_range"           outside the actuator's range, after conversion
 *   "max_step"               |value - current| > max_step; current is the feedback channel's
 *                            reading if fresh, else the last commanded value, else no check
 *   "min_interval"           less than min_interval_s after the last command to the actuator
 *   "interlock:<id>"         the first interlock (file order) whose conditions all hold
 *   "interlock_data_missing" no interlock holds for sure, but one might: a channel it needs has
 *                            no fresh reading and its other conditions hold (fail safe)
 * A reading is fresh while now - ts <= max(3 * the channel's period_s, 10 s) and no reading of
 * quality BAD came after it (gate_plant_bad_at). An interlock with
 * a condition that is false on fresh data cannot hold, so stale data elsewhere in it does not
 * block the command. */
#ifndef GATE_CHECK_H
#define GATE_CHECK_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"
#include "cm_profile.h"

#define GATE_MAX_CHANNELS 128   /* per gateway */
#define GATE_MAX_ACTUATORS 32   /* per gateway */
#define GATE_FRESH_MIN_MS 10000 /* a reading is fresh for max(3 * period_s, this) */

typedef struct gate_reading {
    char channel[96];   /* profile channel id */
    double value;       /* in the profile's unit: always a measurement (never a BAD reading's) */
    uint64_t ts_ms;
    uint64_t bad_ms;    /* the newest BAD reading (device not answering), 0: none; while it is
                         * newer than ts_ms the reading is not fresh (gate_plant_bad_at) */
} gate_reading;

typedef struct gate_sent {
    char actuator[96];  /* profile actuator id */
    double value;       /* in the actuator's unit */
    uint64_t ts_ms;
} gate_sent;

/* The plant as the gate knows it, for one gateway. Plain data: embed it, zero it with
 * gate_plant_init, no destructor. */
typedef struct gate_plant {
    size_t n_readings;
    gate_reading readings[GATE_MAX_CHANNELS];
    size_t n_sent;
    gate_sent sent[GATE_MAX_ACTUATORS];
} gate_plant;

void gate_plant_init(gate_plant *pl);
/* Records a reading of channel id (profile id and unit). An older reading than the one held is
 * ignored (back-fill never hides newer data). CM_ERR_INVAL for a non-finite value or an id that
 * does not fit, CM_ERR_TOO_BIG when the table is full. */
cm_err gate_plant_reading(gate_plant *pl, const char *channel, double value, uint64_t ts_ms);
/* What the daemon records a reading with: gate_plant_reading, except that a reading stamped more
 * than CM_MAX_AHEAD_MS (cm_time.h) ahead of now_ms, the gate clock, is ignored (CM_ERR_STALE; the
 * caller counts it). Kept, it would be the channel's latest reading until the clock caught up:
 * every later reading dropped as older, the interlock input and the feedback frozen, and stale
 * data never failing safe. The verifier refuses such readings; this holds if one gets through. */
cm_err gate_plant_reading_at(gate_plant *pl, const char *channel, double value, uint64_t ts_ms,
                             uint64_t now_ms);
/* Records a reading of channel id of quality BAD at ts_ms: the gateway reports its device did
 * not answer, so the reading's value is no measurement and is never recorded. The channel's held
 * reading, if older, stops being fresh: an interlock that needs it fails safe
 * (interlock_data_missing), max_step falls back to the last command, until a valid reading newer
 * than ts_ms comes. Without a held reading there is nothing to mark (the channel has no reading
 * either way). CM_ERR_STALE for ts_ms more than CM_MAX_AHEAD_MS ahead of now_ms (ignored, as
 * gate_plant_reading_at does); CM_ERR_INVAL for an id that does not fit. */
cm_err gate_plant_bad_at(gate_plant *pl, const char *channel, uint64_t ts_ms, uint64_t now_ms);
/* Records a command sent to actuator id (value in the actuator's unit). Same errors. */
cm_err gate_plant_commanded(gate_plant *pl, const char *actuator, double value, uint64_t ts_ms);
/* The latest reading of channel id / the last command to actuator id, or NULL. */
const gate_reading *gate_plant_get_reading(const gate_plant *pl, const char *channel);
const gate_sent *gate_plant_get_sent(const gate_plant *pl, const char *actuator);

typedef struct gate_request {
    const char *actuator;   /* name without the site kind, as in Command.channel: "pump1" */
    double value;
    const char *unit;       /* unit of value */
    const char *role;       /* requester's role: "viewer", "operator", "admin" */
} gate_request;

typedef enum gate_verdict { GATE_REFUSE = 0, GATE_ALLOW = 1 } gate_verdict;

typedef struct gate_decision {
    gate_verdict verdict;
    char reason[112];       /* "ok" or a refusal reason above */
    char detail[320];       /* one line for the operator and the audit log */
    const cm_actuator *actuator; /* from the profile, NULL if unknown */
    double value;           /* in the actuator's unit, once converted (on allow: to send) */
} gate_decision;

/* Decides req for a gateway of site kind site_kind whose plant state is plant, at now_ms (gate
 * clock, the clock of the readings' and commands' ts_ms). Fills out; returns out->verdict. */
gate_verdict gate_decide(const cm_profile *p, const char *site_kind, const gate_plant *plant,
                         const gate_request *req, uint64_t now_ms, gate_decision *out);

typedef enum gate_follow_state {
    GATE_FOLLOW_NONE = 0,   /* the actuator has no feedback channel: nothing to compare */
    GATE_FOLLOW_PENDING,    /* not yet settled, or waiting for a reading after settle_s */
    GATE_FOLLOW_OK,         /* a reading since the command is within tolerance */
    GATE_FOLLOW_MISMATCH,   /* after settle_s the feedback is out of tolerance, or silent */
} gate_follow_state;

typedef struct gate_follow {
    gate_follow_state state;
    double commanded;       /* actuator unit */
    double actual;          /* the feedback reading in the actuator unit; NAN if none */
    uint64_t actual_ts_ms;  /* 0 if none */
    double tolerance;
    double settle_s;
    char detail[256];
} gate_follow;

/* Compares the command `commanded` (actuator unit) sent at sent_ms with the plant's feedback
 * reading at now_ms. Only readings taken at or after sent_ms count. OK as soon as one is within
 * tolerance; MISMATCH once a reading taken after sent_ms + settle_s is out of tolerance, or when
 * no reading has come by sent_ms + settle_s + the channel's freshness window; else PENDING.
 * p gives the feedback channel's unit and period. Returns out->state. */
gate_follow_state gate_follow_check(const cm_profile *p, const cm_actuator *a, double commanded,
                                    uint64_t sent_ms, const gate_plant *plant, uint64_t now_ms,
                                    gate_follow *out);

const char *gate_follow_state_name(gate_follow_state s);

#endif
