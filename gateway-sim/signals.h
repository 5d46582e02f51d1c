/* signals: plausible process values of one simulated water-utility site, as pure functions of a
 * state struct, so that they can be unit-tested without a network.
 *
 * A site is one of three kinds, each with a fixed channel list (name, unit). A diurnal demand
 * curve (peaks near 07:00 and 19:00 UTC, shifted by up to 45 min per site; low at night) drives
 * the flows; tanks integrate inflow minus outflow; pumps switch with hysteresis on tank level and
 * demand; pressures follow the pumps; residual chlorine decays with residence time; turbidity has
 * small noise and occasional spikes. Every reported value carries small Gaussian measurement
 * noise, correlated over about 20 s like a real instrument's, so that readings taken moments
 * apart differ by little.
 *
 * Actuators: each kind has a few actuators that a command can move (sig_actuators): pumps of a
 * pumping station (manual run/stop overriding the automatic control), the chlorine dosing
 * setpoint of a treatment plant, the inlet valve of a reservoir. Until commanded, every actuator
 * is under automatic control; a commanded value stays in force until commanded otherwise.
 *
 * Determinism: the same seed and the same sequence of sig_step() times (and of sig_actuate()
 * calls between the same steps) give the same values, bit for bit (the random generator is our
 * own, not rand(); sig_actuate draws no random numbers). */
#ifndef GW_SIGNALS_H
#define GW_SIGNALS_H
#include <stddef.h>
#include <stdint.h>

typedef enum sig_kind { SIG_TREATMENT = 0, SIG_RESERVOIR, SIG_PUMPING, SIG__KINDS } sig_kind;

typedef struct sig_channel {
    const char *name;
    const char *unit;
} sig_channel;

#define SIG_MAX_CHANNELS 8

/* Geometry the tests check the mass balance against. */
#define SIG_RESERVOIR_HEIGHT_M 10.0
#define SIG_RESERVOIR_AREA_M2 400.0
#define SIG_CLEARWELL_HEIGHT_M 5.0
#define SIG_CLEARWELL_AREA_M2 600.0
#define SIG_PUMPING_TANK_AREA_M2 150.0 /* the tank a pumping station fills (tank_level) */
#define SIG_PUMPING_TANK_HEIGHT_M 6.0  /* its overflow: the modelled level stays in 0..6 m */

typedef struct sig_state {
    sig_kind kind;
    uint64_t rng[4];      /* xoshiro256** state */
    double phase_h;       /* this site's shift of the demand curve, hours */
    double scale;         /* this site's size relative to a nominal site */
    uint64_t t_ms;        /* model time of the last step (0 before the first) */

    /* hidden process state (true values, before measurement noise) */
    double level_m;       /* reservoir level, clearwell level, or downstream tank (pumping) */
    double inflow_ls;     /* reservoir inflow, or treated (production) flow */
    double outflow_ls;    /* demand drawn from the tank */
    double chlorine;      /* mg/L at the outlet */
    double turb_spike;    /* current extra raw turbidity, NTU, decaying */
    double ph_drift;
    int pump_on[2];       /* pumps (pumping) or the reservoir feed pump (pump_on[0]) */
    int lead;             /* which pump starts first next time (duty rotation) */
    uint32_t starts;      /* pump starts so far, for tests */

    /* actuators (see sig_actuate); zero after sig_init means automatic control */
    int pump_manual[2];   /* pumping: 1 once the pump was commanded (pump_on is then fixed) */
    int dose_manual;      /* treatment: 1 once the dosing setpoint was commanded */
    double dose_set_mgl;  /* treatment: the commanded chlorine dose, mg/L */
    double dose_mgl;      /* treatment: chlorine dose applied now (automatic or commanded) */
    double valve_pct;     /* reservoir: inlet valve position, % open (100 after sig_init) */

    double noise[SIG_MAX_CHANNELS]; /* current measurement error per channel */
    double v[SIG_MAX_CHANNELS];     /* last reported values, in channel order */
} sig_state;

/* Channel list of kind; returns the count (<= SIG_MAX_CHANNELS). */
size_t sig_channels(sig_kind k, const sig_channel **out);
/* "treatment" | "reservoir" | "pumping" -> 0 and *out; -1 for anything else. */
int sig_kind_parse(const char *s, sig_kind *out);
const char *sig_kind_name(sig_kind k);

/* Seed of one site: mixes the run's seed with the gateway id, so a site behaves the same whichever
 * other gateways run beside it. */
uint64_t sig_site_seed(uint64_t run_seed, const char *gateway_id);

/* Diurnal demand factor at local hour h (0..24, wraps): about 0.3 at night, about 1.2 at the
 * 07:00 and 19:00 peaks, about 0.6 around midday. Pure. */
double sig_demand(double hour);

/* Initialises a site: per-site phase, size and initial tank levels come from seed. */
void sig_init(sig_state *s, sig_kind kind, uint64_t seed);
/* Advances the model to wall-clock time t_ms (Unix ms) and refreshes v[]. Time never goes
 * backwards (an earlier t_ms only re-samples the noise); a jump of more than an hour restarts the
 * integration there instead of simulating the whole gap. */
void sig_step(sig_state *s, uint64_t t_ms);
/* Local hour of day (0..24) of the site at t_ms, including its phase. */
double sig_local_hour(const sig_state *s, uint64_t t_ms);

/* One actuator of a site kind: its name as commands address it, its unit, and the range the
 * gateway itself considers safe (inclusive). */
typedef struct sig_actuator {
    const char *name;
    const char *unit;
    double lo, hi;
} sig_actuator;

#define SIG_MAX_ACTUATORS 2

/* Actuator list of kind; returns the count (<= SIG_MAX_ACTUATORS):
 *   pumping:   "pump1", "pump2"  unit "1",    0..1   (>= 0.5 runs the pump, below stops it)
 *   treatment: "dosing"          unit "mg/L", 0..4   (chlorine dose; drives dosing_rate, chlorine)
 *   reservoir: "inlet_valve"     unit "%",    0..100 (scales the feed into the tank) */
size_t sig_actuators(sig_kind k, const sig_actuator **out);
/* Index of the actuator called name for kind, or -1. */
int sig_actuator_find(sig_kind k, const char *name);
/* Puts actuator a (an index into sig_actuators(s->kind)) to value, which the caller has checked
 * against the actuator's range; from then on that value is in force (the automatic control no
 * longer moves that actuator) and later sig_step()s show its effect. Draws no random numbers.
 * Returns the value now in force (a pump: 1 running, 0 stopped). */
double sig_actuate(sig_state *s, size_t a, double value);
/* Value in force on actuator a: the commanded one, or what the automatic control does now (a
 * pump's run state, the automatic chlorine dose, the valve position). */
double sig_actuator_value(const sig_state *s, size_t a);

/* Uniform double in [0,1) and standard normal variate from the state's generator (also used by
 * the simulator for attack randomness, so one seed fixes a whole run). */
double sig_uniform(sig_state *s);
double sig_gauss(sig_state *s);

#endif
