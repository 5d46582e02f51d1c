/* signals: the process models behind the simulated sites (see signals.h). Units: flows in L/s,
 * levels in m, time steps in s. Hidden state holds true values; v[] adds measurement noise and
 * clamps to what a real instrument would report. */
#include "signals.h"

#include <math.h>
#include <string.h>

#define SUBSTEP_S 5.0          /* integration step */
#define MAX_GAP_S 3600.0       /* longer gaps restart the integration instead */
#define PI 3.14159265358979323846

static const sig_channel treatment_ch[] = {
    {"raw_flow", "L/s"},       {"treated_flow", "L/s"}, {"raw_turbidity", "NTU"},
    {"treated_turbidity", "NTU"}, {"chlorine", "mg/L"}, {"ph", "pH"},
    {"clearwell_level", "m"},  {"dosing_rate", "L/h"},
};
static const sig_channel reservoir_ch[] = {
    {"level", "m"}, {"inflow", "L/s"}, {"outflow", "L/s"}, {"chlorine", "mg/L"},
};
static const sig_channel pumping_ch[] = {
    {"pump1_status", "1"},        {"pump2_status", "1"},         {"flow", "L/s"},
    {"suction_pressure", "bar"}, {"discharge_pressure", "bar"}, {"power", "kW"},
};

/* channel indices, per kind */
enum { T_RAW_FLOW, T_TREATED_FLOW, T_RAW_TURB, T_TREATED_TURB, T_CHLORINE, T_PH, T_CLEARWELL,
       T_DOSING };
enum { R_LEVEL, R_INFLOW, R_OUTFLOW, R_CHLORINE };
enum { P_PUMP1, P_PUMP2, P_FLOW, P_SUCTION, P_DISCHARGE, P_POWER };

/* nominal sizes of a site with scale 1 */
#define RES_DEMAND_LS 80.0
#define RES_FEED_LS 150.0
#define RES_FEED_ON_M 4.0      /* feed pump starts below this level */
#define RES_FEED_OFF_M 8.5     /* and stops above this one */
#define RES_CL_IN 1.15         /* chlorine of the water fed in, mg/L */
#define CL_DECAY_PER_S (0.05 / 3600.0) /* bulk decay of free chlorine, first order */
#define TRT_DEMAND_LS 120.0
#define TRT_LEVEL_SET_M 3.0
#define PMP_DEMAND_LS 70.0
#define PMP_ONE_LS 95.0
#define PMP_TWO_LS 160.0
#define PMP_TANK_HEIGHT_M 8.0
#define PMP_LEAD_ON_M 3.0
#define PMP_ALL_OFF_M 6.5

size_t sig_channels(sig_kind k, const sig_channel **out)
{
    switch (k) {
    case SIG_TREATMENT:
        *out = treatment_ch;
        return sizeof treatment_ch / sizeof treatment_ch[0];
    case SIG_RESERVOIR:
        *out = reservoir_ch;
        return sizeof reservoir_ch / sizeof reservoir_ch[0];
    case SIG_PUMPING:
        *out = pumping_ch;
        return sizeof pumping_ch / sizeof pumping_ch[0];
    default:
        *out = NULL;
        return 0;
    }
}

static const char *const kind_names[SIG__KINDS] = {"treatment", "reservoir", "pumping"};

int sig_kind_parse(const char *s, sig_kind *out)
{
    for (int i = 0; i < SIG__KINDS; i++)
        if (s && strcmp(s, kind_names[i]) == 0) {
            *out = (sig_kind)i;
            return 0;
        }
    return -1;
}

const char *sig_kind_name(sig_kind k)
{
    return (unsigned)k < SIG__KINDS ? kind_names[k] : "unknown";
}

/* ------------------------------------------------------------------ random numbers */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(sig_state *s)
{
    uint64_t *r = s->rng;
    uint64_t out = rotl(r[1] * 5, 7) * 9;
    uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = rotl(r[3], 45);
    return out;
}

double sig_uniform(sig_state *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

double sig_gauss(sig_state *s)
{
    /* Box-Muller; one variate per call keeps the stream simple to reason about */
    double u1 = sig_uniform(s), u2 = sig_uniform(s);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * PI * u2);
}

uint64_t sig_site_seed(uint64_t run_seed, const char *gateway_id)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)gateway_id; p && *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    uint64_t x = run_seed ^ h;
    return splitmix64(&x);
}

/* ------------------------------------------------------------------ demand */

static double circ_dist(double a, double b)
{
    double d = fmod(fabs(a - b), 24.0);
    return d > 12.0 ? 24.0 - d : d;
}

static double bump(double h, double centre, double width)
{
    double d = circ_dist(h, centre);
    return exp(-0.5 * (d / width) * (d / width));
}

double sig_demand(double hour)
{
    double h = fmod(hour, 24.0);
    if (h < 0)
        h += 24.0;
    /* daytime plateau: smooth step up after 06:00, down after 22:00 */
    double day = 1.0 / (1.0 + exp(-(h - 6.5) * 1.5)) * (1.0 / (1.0 + exp((h - 22.0) * 1.5)));
    return 0.30 + 0.28 * day + 0.62 * bump(h, 7.25, 1.2) + 0.55 * bump(h, 19.0, 1.5);
}

double sig_local_hour(const sig_state *s, uint64_t t_ms)
{
    double h = (double)(t_ms % 86400000ull) / 3600000.0 + s->phase_h;
    h = fmod(h, 24.0);
    return h < 0 ? h + 24.0 : h;
}

/* ------------------------------------------------------------------ model */

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

/* first-order approach of x to target with time constant tau */
static double lag(double x, double target, double dt, double tau)
{
    double a = dt >= tau ? 1.0 : dt / tau;
    return x + (target - x) * a;
}

void sig_init(sig_state *s, sig_kind kind, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    s->phase_h = -0.75 + 1.5 * sig_uniform(s);
    s->scale = 0.7 + 0.6 * sig_uniform(s);
    s->lead = sig_uniform(s) < 0.5 ? 0 : 1;
    s->chlorine = 0.85 + 0.2 * sig_uniform(s);
    s->ph_drift = 0.0;
    switch (kind) {
    case SIG_TREATMENT:
        s->level_m = 2.5 + sig_uniform(s);
        s->inflow_ls = TRT_DEMAND_LS * s->scale * 0.7;
        break;
    case SIG_RESERVOIR:
        s->level_m = 4.5 + 3.5 * sig_uniform(s);
        s->pump_on[0] = sig_uniform(s) < 0.5;
        s->inflow_ls = s->pump_on[0] ? RES_FEED_LS * s->scale : 0.0;
        break;
    case SIG_PUMPING:
        s->level_m = 3.5 + 2.5 * sig_uniform(s);
        break;
    default:
        break;
    }
}

static void step_reservoir(sig_state *s, double dt, double d)
{
    if (s->pump_on[0] && s->level_m > RES_FEED_OFF_M)
        s->pump_on[0] = 0;
    else if (!s->pump_on[0] && s->level_m < RES_FEED_ON_M) {
        s->pump_on[0] = 1;
        s->starts++;
    }
    s->outflow_ls = RES_DEMAND_LS * s->scale * d;
    s->inflow_ls = lag(s->inflow_ls, s->pump_on[0] ? RES_FEED_LS * s->scale : 0.0, dt, 30.0);
    s->level_m += (s->inflow_ls - s->outflow_ls) / 1000.0 * dt / SIG_RESERVOIR_AREA_M2;
    s->level_m = clampd(s->level_m, 0.0, SIG_RESERVOIR_HEIGHT_M);
    /* fully mixed tank: fresh water dilutes towards the feed concentration, bulk decay always */
    double vol = s->level_m * SIG_RESERVOIR_AREA_M2;
    if (vol < 1.0)
        vol = 1.0;
    double q = s->inflow_ls / 1000.0;
    s->chlorine += dt * (q / vol * (RES_CL_IN - s->chlorine) - CL_DECAY_PER_S * s->chlorine);
}

static void step_treatment(sig_state *s, double dt, double d)
{
    s->outflow_ls = TRT_DEMAND_LS * s->scale * d;
    /* production follows the clearwell level (proportional control) with a 15 min lag */
    double target = TRT_DEMAND_LS * s->scale *
                    clampd(0.70 + 0.35 * (TRT_LEVEL_SET_M - s->level_m), 0.30, 1.30);
    s->inflow_ls = lag(s->inflow_ls, target, dt, 900.0);
    s->level_m += (s->inflow_ls - s->outflow_ls) / 1000.0 * dt / SIG_CLEARWELL_AREA_M2;
    s->level_m = clampd(s->level_m, 0.0, SIG_CLEARWELL_HEIGHT_M);
    /* rain events: about one every two days, a few NTU decaying over hours */
    if (sig_uniform(s) < dt / (2.0 * 86400.0))
        s->turb_spike += 4.0 + 8.0 * sig_uniform(s);
    s->turb_spike *= exp(-dt / (3.0 * 3600.0));
    s->ph_drift = clampd(s->ph_drift + 0.002 * sqrt(dt) * sig_gauss(s), -0.3, 0.3);
}

static int pumps_running(const sig_state *s) { return s->pump_on[0] + s->pump_on[1]; }

static void step_pumping(sig_state *s, double dt, double d)
{
    int lead = s->lead, lagp = 1 - s->lead;
    if (pumps_running(s) && s->level_m > PMP_ALL_OFF_M) {
        s->pump_on[0] = s->pump_on[1] = 0;
        s->lead = lagp; /* duty rotation: the other pump leads the next cycle */
    } else {
        if (!s->pump_on[lead] && s->level_m < PMP_LEAD_ON_M) {
            s->pump_on[lead] = 1;
            s->starts++;
        }
        /* assist pump for high demand or a low tank, with its own hysteresis */
        if (s->pump_on[lead] && !s->pump_on[lagp] && (d > 1.0 || s->level_m < 2.0) &&
            s->level_m < 5.0) {
            s->pump_on[lagp] = 1;
            s->starts++;
        } else if (s->pump_on[lagp] && (d < 0.8 || s->level_m > 5.5) && s->level_m >= 2.0)
            s->pump_on[lagp] = 0;
    }
    int n = pumps_running(s);
    double target = n == 0 ? 0.0 : n == 1 ? PMP_ONE_LS * s->scale : PMP_TWO_LS * s->scale;
    s->inflow_ls = lag(s->inflow_ls, target, dt, 20.0); /* station flow into the tank */
    s->outflow_ls = PMP_DEMAND_LS * s->scale * d;
    s->level_m += (s->inflow_ls - s->outflow_ls) / 1000.0 * dt / SIG_PUMPING_TANK_AREA_M2;
    s->level_m = clampd(s->level_m, 0.0, PMP_TANK_HEIGHT_M);
}

/* Measurement noise of channel c: an Ornstein-Uhlenbeck process (stationary deviation sigma,
 * correlation time NOISE_TAU_S), so that two readings taken moments apart differ by little, as
 * with a real, band-limited instrument, and never suggest an impossible rate of change. */
#define NOISE_TAU_S 20.0
static double noisy(sig_state *s, int c, double truth, double sigma, double dt)
{
    double a = exp(-dt / NOISE_TAU_S);
    double g = sig_gauss(s); /* drawn every time: the stream does not depend on dt */
    s->noise[c] = s->noise[c] * a + sigma * sqrt(1.0 - a * a) * g;
    return truth + s->noise[c];
}

static void report(sig_state *s, double h, double dt)
{
    double *v = s->v;
    switch (s->kind) {
    case SIG_TREATMENT: {
        double prod = s->inflow_ls;
        v[T_TREATED_FLOW] = fmax(0.0, noisy(s, T_TREATED_FLOW, prod, 0.6, dt));
        v[T_RAW_FLOW] = fmax(0.0, noisy(s, T_RAW_FLOW, prod * 1.04, 0.8, dt)); /* backwash */
        double raw = 3.0 + 0.8 * sin(2.0 * PI * h / 24.0) + s->turb_spike;
        v[T_RAW_TURB] = clampd(noisy(s, T_RAW_TURB, raw, 0.15, dt), 1.0, 20.0);
        v[T_TREATED_TURB] =
            clampd(noisy(s, T_TREATED_TURB, 0.08 + 0.012 * raw, 0.01, dt), 0.05, 0.5);
        double cl = 1.0 + 0.08 * sin(2.0 * PI * (h - 3.0) / 24.0);
        v[T_CHLORINE] = clampd(noisy(s, T_CHLORINE, cl, 0.02, dt), 0.4, 1.2);
        v[T_PH] = clampd(noisy(s, T_PH, 7.4 + s->ph_drift + 0.05 * sin(2.0 * PI * h / 24.0),
                               0.02, dt),
                         6.5, 8.5);
        v[T_CLEARWELL] =
            clampd(noisy(s, T_CLEARWELL, s->level_m, 0.004, dt), 0.0, SIG_CLEARWELL_HEIGHT_M);
        /* sodium hypochlorite at 125 g/L; dose = residual + about 0.6 mg/L demand */
        v[T_DOSING] =
            fmax(0.0, noisy(s, T_DOSING, prod * 3600.0 * (cl + 0.6) / 125000.0, 0.05, dt));
        break;
    }
    case SIG_RESERVOIR:
        v[R_LEVEL] = clampd(noisy(s, R_LEVEL, s->level_m, 0.005, dt), 0.5, 9.5);
        /* a stopped feed reads exactly zero (the meter has a low-flow cut-off) */
        v[R_INFLOW] = s->inflow_ls > 1.0 ? fmax(0.0, noisy(s, R_INFLOW, s->inflow_ls, 0.6, dt))
                                         : 0.0;
        v[R_OUTFLOW] = fmax(0.0, noisy(s, R_OUTFLOW, s->outflow_ls, 0.6, dt));
        v[R_CHLORINE] = clampd(noisy(s, R_CHLORINE, s->chlorine, 0.01, dt), 0.2, 2.0);
        break;
    case SIG_PUMPING: {
        int n = pumps_running(s);
        double flow = s->inflow_ls;
        v[P_PUMP1] = s->pump_on[0];
        v[P_PUMP2] = s->pump_on[1];
        v[P_FLOW] = flow > 1.0 ? fmax(0.0, noisy(s, P_FLOW, flow, 0.5, dt)) : 0.0;
        double suction = 1.5 - 0.003 * flow / s->scale;
        double fr = flow / (PMP_TWO_LS * s->scale);
        double discharge = 2.0 + 0.0981 * s->level_m + (n ? 0.3 + 2.0 * fr * fr : 0.0);
        v[P_SUCTION] = clampd(noisy(s, P_SUCTION, suction, 0.02, dt), 0.5, 6.0);
        v[P_DISCHARGE] = clampd(noisy(s, P_DISCHARGE, discharge, 0.03, dt), 0.5, 6.0);
        /* hydraulic power over a 70 % wire-to-water efficiency, plus the controls */
        double kw = flow / 1000.0 * (discharge - suction) * 1e5 / 0.70 / 1000.0;
        v[P_POWER] = n ? fmax(0.0, noisy(s, P_POWER, kw + 0.5, 0.4, dt)) : 0.3;
        break;
    }
    default:
        break;
    }
}

static void step_kind(sig_state *s, double dt, uint64_t t)
{
    double d = sig_demand(sig_local_hour(s, t));
    switch (s->kind) {
    case SIG_TREATMENT:
        step_treatment(s, dt, d);
        break;
    case SIG_RESERVOIR:
        step_reservoir(s, dt, d);
        break;
    case SIG_PUMPING:
        step_pumping(s, dt, d);
        break;
    default:
        break;
    }
}

void sig_step(sig_state *s, uint64_t t_ms)
{
    double dt = (double)(t_ms > s->t_ms ? t_ms - s->t_ms : 0) / 1000.0;
    if (s->t_ms == 0 || t_ms > s->t_ms + (uint64_t)(MAX_GAP_S * 1000.0)) {
        /* start (or restart after a long gap) here; a zero step sets the flows of this moment */
        s->t_ms = t_ms;
        step_kind(s, 0.0, t_ms);
        dt = 1e9; /* fresh, stationary noise */
    }
    uint64_t t = s->t_ms;
    while (t < t_ms) {
        uint64_t step = (uint64_t)(SUBSTEP_S * 1000.0);
        if (t_ms - t < step)
            step = t_ms - t;
        t += step;
        step_kind(s, (double)step / 1000.0, t);
    }
    if (t > s->t_ms)
        s->t_ms = t;
    report(s, sig_local_hour(s, s->t_ms), dt);
}
