/* cm_profile: the utility's data profile — which channels exist for each kind of site, in which
 * unit, with which physical range, alarm limits, deadband, maximum rate of change and expected
 * reporting period. Loaded from an INI-style file (cm_conf) that engineers read and diff:
 *
 *   [profile]
 *   name = Example utility
 *   version = 3
 *
 *   [channel reservoir.level]      # <site kind>.<channel name as the gateway sends it>
 *   quantity = level
 *   unit = m
 *   range = 0, 10                  # physical range: outside it the sensor is faulty
 *   limits = 0.5, 1.0, 9.0, 9.5    # LL, L, H, HH (optional)
 *   deadband = 0.1                 # an alarm clears only this far inside its limit
 *   max_rate = 0.02                # largest credible change per second (optional)
 *   period_s = 1                   # expected reporting period
 *   confidential = no
 *   deviation = no                 # yes: the anomaly checker also judges statistical deviation
 *                                  # from the channel's own recent behaviour; only for channels
 *                                  # with one regime (quality, pressure), not switched flows
 *
 * Actuators, the interlocks that refuse commands to them, and relations between channels follow
 * the channels, one section each, so that every rule is written out in full:
 *
 *   [actuator pumping.pump1]       # <site kind>.<actuator name as the gateway knows it>
 *   quantity = run_command
 *   unit = 1                       # unit of commanded values
 *   range = 0, 1                   # operating envelope: the gate refuses commands outside it
 *   max_step = 1                   # largest change from the current value in one command
 *                                  # (optional)
 *   min_interval_s = 60            # at least this long between two commands to it (optional)
 *   feedback = pumping.pump1_status  # channel that follows the command (optional; same kind,
 *                                  # a unit that converts to the actuator's unit)
 *   tolerance = 0.5                # with feedback: |feedback - commanded| allowed once settled
 *   settle_s = 20                  # with feedback: time the plant may take to follow
 *
 *   [interlock pumping.last_pump_1]
 *   actuator = pumping.pump1
 *   refuse_if = value == 0, pumping.pump2_status < 0.5, pumping.tank_level < LL
 *   reason = never stop the last running pump while the tank is below its low-low level
 *
 * refuse_if lists 1 to CM_INTERLOCK_MAX_CONDS conditions that must ALL hold for a command to be
 * refused. A condition is `<operand> <op> <operand>`, op one of < <= > >= == !=; an operand is
 * `value` (the commanded value, in the actuator's unit), a channel id of the actuator's site kind,
 * a finite number, or — on the right only, after a channel — one of that channel's limits LL, L,
 * H, HH or its range MIN, MAX. `value` and channels compared with each other must share a unit; a
 * number is in the unit of the other operand.
 *
 *   [relation reservoir.balance]   # tank mass balance: area * dlevel/dt = inflow - outflow
 *   type = tank_balance
 *   level = reservoir.level        # a unit that converts to m
 *   inflow = reservoir.inflow      # units that convert to L/s
 *   outflow = reservoir.outflow
 *   area_m2 = 400
 *
 *   [relation pumping.pumps_flow]  # a running pump gives flow
 *   type = pump_flow
 *   status = pumping.pump1_status, pumping.pump2_status   # 1 to CM_RELATION_MAX_STATUS
 *   flow = pumping.flow
 *   min_flow = 5                   # in the flow channel's unit
 *
 * Every channel a section names must exist and be of the section's site kind.
 *
 * A malformed profile is refused whole with file, line and reason. Immutable once loaded; the
 * pointers the accessors return live as long as the profile. */
#ifndef CM_PROFILE_H
#define CM_PROFILE_H
#include "cm_conf.h"
#include "cm_err.h"

typedef struct cm_channel {
    char id[96];            /* "reservoir.level" */
    char kind[32];          /* "reservoir" */
    char name[64];          /* "level" */
    char quantity[32];
    char unit[16];
    double range_min, range_max;
    int has_limits;
    double ll, l, h, hh;
    double deadband;
    double max_rate;        /* 0: no rate check */
    double period_s;
    int confidential;
    int deviation;          /* 1: judge statistical deviation (`deviation = yes`; default no) */
} cm_channel;

#define CM_INTERLOCK_MAX_CONDS 8
#define CM_RELATION_MAX_STATUS 4

typedef struct cm_actuator {
    char id[96];            /* "pumping.pump1" */
    char kind[32];          /* "pumping" */
    char name[64];          /* "pump1", as in Command.channel */
    char quantity[32];
    char unit[16];
    double range_min, range_max;    /* operating envelope */
    double max_step;        /* 0: no step check */
    double min_interval_s;  /* 0: no interval check */
    char feedback[96];      /* channel id, "" for none */
    double tolerance;       /* in the actuator's unit; set iff feedback */
    double settle_s;        /* set iff feedback */
} cm_actuator;

typedef enum cm_cmp { CM_CMP_LT, CM_CMP_LE, CM_CMP_GT, CM_CMP_GE, CM_CMP_EQ, CM_CMP_NE } cm_cmp;

typedef enum cm_operand_kind {
    CM_OPERAND_VALUE,       /* the commanded value */
    CM_OPERAND_CHANNEL,     /* the latest reading of `channel` */
    CM_OPERAND_NUMBER,      /* `number` */
    CM_OPERAND_LIMIT,       /* a limit of the left channel, resolved into `number` at load */
} cm_operand_kind;

typedef enum cm_limit { CM_LIMIT_LL, CM_LIMIT_L, CM_LIMIT_H, CM_LIMIT_HH, CM_LIMIT_MIN,
                        CM_LIMIT_MAX } cm_limit;

typedef struct cm_operand {
    cm_operand_kind kind;
    char channel[96];       /* CM_OPERAND_CHANNEL: channel id */
    double number;          /* CM_OPERAND_NUMBER and CM_OPERAND_LIMIT */
    cm_limit limit;         /* CM_OPERAND_LIMIT: which one, for messages */
} cm_operand;

typedef struct cm_condition {
    cm_operand left;
    cm_cmp op;
    cm_operand right;
} cm_condition;

typedef struct cm_interlock {
    char id[96];            /* "pumping.last_pump_1", the section's name */
    char kind[32];
    char name[64];
    char actuator[96];      /* actuator id, same site kind */
    size_t n_conds;         /* 1..CM_INTERLOCK_MAX_CONDS; all must hold to refuse */
    cm_condition conds[CM_INTERLOCK_MAX_CONDS];
    char reason[256];       /* for the operator */
} cm_interlock;

typedef enum cm_relation_type {
    CM_RELATION_TANK_BALANCE = 1,
    CM_RELATION_PUMP_FLOW,
} cm_relation_type;

typedef struct cm_relation {
    char id[96];            /* "reservoir.balance" */
    char kind[32];
    char name[64];
    cm_relation_type type;
    /* tank_balance */
    char level[96], inflow[96], outflow[96];
    double area_m2;
    /* pump_flow */
    size_t n_status;        /* 1..CM_RELATION_MAX_STATUS */
    char status[CM_RELATION_MAX_STATUS][96];
    char flow[96];
    double min_flow;        /* in the flow channel's unit */
} cm_relation;

typedef struct cm_profile cm_profile;

/* Reads path and parses it (cm_profile_load_text). On error *out is NULL and err holds
 * "file:line: [section] reason". Caller frees with cm_profile_destroy. */
cm_err cm_profile_load(const char *path, cm_profile **out, char err[CM_CONF_ERRLEN]);
/* Parses a profile held in memory (name is used in messages) and keeps the SHA-256 of the bytes
 * for cm_profile_digest. */
cm_err cm_profile_load_text(const char *name, const char *text, size_t len, cm_profile **out,
                            char err[CM_CONF_ERRLEN]);
/* Parses an already parsed file. The profile then has no digest (cm_profile_digest refuses). */
cm_err cm_profile_parse(const cm_conf *conf, cm_profile **out, char err[CM_CONF_ERRLEN]);
void cm_profile_destroy(cm_profile **p);
/* SHA-256 of the exact bytes the profile was loaded from, 64 lowercase hex chars and a NUL: the
 * profile's content version. CM_ERR_INVAL (and out "") for a profile from cm_profile_parse. */
cm_err cm_profile_digest(const cm_profile *p, char out[65]);
const char *cm_profile_name(const cm_profile *p);
long cm_profile_version(const cm_profile *p);
size_t cm_profile_channel_count(const cm_profile *p);
const cm_channel *cm_profile_channel_at(const cm_profile *p, size_t i);
/* The channel `name` of site kind `kind`, or NULL. */
const cm_channel *cm_profile_channel(const cm_profile *p, const char *kind, const char *name);
/* The channel with id "<kind>.<name>", or NULL. */
const cm_channel *cm_profile_channel_by_id(const cm_profile *p, const char *id);

size_t cm_profile_actuator_count(const cm_profile *p);
const cm_actuator *cm_profile_actuator_at(const cm_profile *p, size_t i);
/* The actuator `name` of site kind `kind`, or NULL. */
const cm_actuator *cm_profile_actuator(const cm_profile *p, const char *kind, const char *name);

size_t cm_profile_interlock_count(const cm_profile *p);
const cm_interlock *cm_profile_interlock_at(const cm_profile *p, size_t i);
/* The interlocks of actuator a in file order: the first after prev (NULL: the first), or NULL.
 *   for (const cm_interlock *il = NULL; (il = cm_profile_interlock_next(p, a, il));) */
const cm_interlock *cm_profile_interlock_next(const cm_profile *p, const cm_actuator *a,
                                              const cm_interlock *prev);

size_t cm_profile_relation_count(const cm_profile *p);
const cm_relation *cm_profile_relation_at(const cm_profile *p, size_t i);
/* "tank_balance", "pump_flow"; static. */
const char *cm_relation_type_name(cm_relation_type t);
/* "<", "<=", ...; "LL", "L", ..., "MAX"; static. */
const char *cm_cmp_name(cm_cmp op);
const char *cm_limit_name(cm_limit l);

/* Converts v from unit `from` to unit `to` (identical units, or a known pair such as kPa/bar,
 * m3/h / L/s, degF/degC). CM_ERR_INVAL for units that do not convert. */
cm_err cm_unit_convert(const char *from, const char *to, double v, double *out);

#endif
