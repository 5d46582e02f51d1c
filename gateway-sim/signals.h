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
 * Determinism: the same seed and the same sequence of sig_step() times give the same values,
 * bit for bit (the random generator is our own, not rand()). */
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
#define SIG_PUMPING_TANK_AREA_M2 150.0 /* the tank a pumping station fills (not reported) */

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

/* Uniform double in [0,1) and standard normal variate from the state's generator (also used by
 * the simulator for attack randomness, so one seed fixes a whole run). */
double sig_uniform(sig_state *s);
double sig_gauss(sig_state *s);

#endif
