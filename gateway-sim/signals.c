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
    {"tank_level", "m"},
};

/* actuators, per kind (see signals.h); the ranges are the gateway's own safety limits */
static const sig_actuator treatment_act[] = {{"dosing", "mg/L", 0.0, 4.0}};
static const sig_actuator reservoir_act[] = {{"inlet_valve", "%", 0.0, 100.0}};
static const sig_actuator pumping_act[] = {{"pump1", "1", 0.0, 1.0}, {"pump2", "1", 0.0, 1.0}};

/* channel indices, per kind */
enum { T_RAW_FLOW, T_TREATED_FLOW, T_RAW_TURB, T_TREATED_TURB, T_CHLORINE, T_PH, T_CLEARWELL,
       T_DOSING };
enum { R_LEVEL, R_INFLOW, R_OUTFLOW, R_CHLORINE };
enum { P_PUMP1, P_PUMP2, P_FLOW, P_SUCTION, P_DISCHARGE, P_POWER, P_TANK };

/* nominal sizes of a site with scale 1 */
#define RES_DEMAND_LS 80.0
#define RES_FEED_LS 150.0
#define RES_FEED_ON_M 4.0      /* feed pump starts below this level */
#define RES_FEED_OFF_M 8.5     /* and stops above this one */
#define RES_CL_IN 1.15         /* chlorine of the water fed in, mg/L */
#define CL_DECAY_PER_S (0.05 / 3600.0) /* bulk decay of free chlorine, first order */
#define TRT_DEMAND_LS 120.0
#define TRT_LEVEL_SET_M 3.0
#define TRT_CL_DEMAND_MGL 0.6  /* chlorine the water consumes before the outlet, mg/L */
#define TRT_CONTACT_S 900.0    /* the residual follows a dose change over the contact tank */
#define HYPO_MG_PER_L 125000.0 /* sodium hypochlorite solution, 125 g/L of chlorine */
#define PMP_DEMAND_LS 70.0
#define PMP_ONE_LS 95.0
#define PMP_TWO_LS 160.0
#define PMP_LEAD_ON_M 2.3      /* the lead pump starts below this tank level */
#define PMP_ALL_OFF_M 5.0      /* every pump under automatic control stops above this one */
#define PMP_ASSIST_LOW_M 1.5   /* below this the assist pump runs whatever the demand */
#define PMP_ASSIST_MAX_M 3.8   /* the assist pump starts only below this level */
#define PMP_ASSIST_OFF_M 4.2   /* and stops above this one */
#define EMPTY_M 0.01           /* a tank this low delivers no more than flows into it */

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

size_t sig_actuators(sig_kind k, const sig_actuator **out)
{
    switch (k) {
    case SIG_TREATMENT:
        *out = treatment_act;
        return sizeof treatment_act / sizeof treatment_act[0];
    case SIG_RESERVOIR:
        *out = reservoir_act;
        return sizeof reservoir_act / sizeof reservoir_act[0];
    case SIG_PUMPING:
        *out = pumping_act;
        return sizeof pumping_act / sizeof pumping_act[0];
    default:
        *out = NULL;
        return 0;
    }
}

int sig_actuator_find(sig_kind k, const char *name)
{
    const sig_actuator *a;
    size_t n = sig_actuators(k, &a);
    for (size_t i = 0; name && i < n; i++)
        if (strcmp(a[i].name, name) == 0)
            return (int)i;
    return -1;
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

/* Residual chlorine a treatment plant aims at under automatic dosing, at local hour h. */
static double trt_cl_target(double h) { return 1.0 + 0.08 * sin(2.0 * PI * (h - 3.0) / 24.0); }

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
        s->dose_mgl = s->chlorine + TRT_CL_DEMAND_MGL;
        break;
    case SIG_RESERVOIR:
        s->level_m = 4.5 + 3.5 * sig_uniform(s);
        s->pump_on[0] = sig_uniform(s) < 0.5;
        s->inflow_ls = s->pump_on[0] ? RES_FEED_LS * s->scale : 0.0;
        break;
    case SIG_PUMPING:
        s->level_m = 2.5 + 2.5 * sig_uniform(s);
        break;
    default:
        break;
    }
    s->valve_pct = 100.0;
}

double sig_actuate(sig_state *s, size_t a, double value)
{
    switch (s->kind) {
    case SIG_PUMPING:
        if (a < 2) {
            int on = value >= 0.5;
            if (on && !s->pump_on[a])
                s->starts++;
            s->pump_on[a] = on;
            s->pump_manual[a] = 1;
        }
        break;
    case SIG_TREATMENT:
        if (a == 0) {
            s->dose_manual = 1;
            s->dose_set_mgl = value;
            s->dose_mgl = value; /* the dosing pump follows its setpoint at once */
        }
        break;
    case SIG_RESERVOIR:
        if (a == 0)
            s->valve_pct = value;
        break;
    default:
        break;
    }
    return sig_actuator_value(s, a);
}

double sig_actuator_value(const sig_state *s, size_t a)
{
    switch (s->kind) {
    case SIG_PUMPING:
        return a < 2 ? (double)s->pump_on[a] : 0.0;
    case SIG_TREATMENT:
        return a == 0 ? s->dose_mgl : 0.0;
    case SIG_RESERVOIR:
        return a == 0 ? s->valve_pct : 0.0;
    default:
        return 0.0;
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
    /* the inlet valve throttles the feed in proportion to its opening */
    double feed = s->pump_on[0] ? RES_FEED_LS * s->scale * s->valve_pct / 100.0 : 0.0;
    s->inflow_ls = lag(s->inflow_ls, feed, dt, 30.0);
    s->outflow_ls = RES_DEMAND_LS * s->scale * d;
    if (s->level_m < EMPTY_M && s->outflow_ls > s->inflow_ls)
        s->outflow_ls = s->inflow_ls; /* an empty tank delivers only what comes in */
    s->level_m += (s->inflow_ls - s->outflow_ls) / 1000.0 * dt / SIG_RESERVOIR_AREA_M2;
    s->level_m = clampd(s->level_m, 0.0, SIG_RESERVOIR_HEIGHT_M);
    /* fully mixed tank: fresh water dilutes towards the feed concentration, bulk decay always */
    double vol = s->level_m * SIG_RESERVOIR_AREA_M2;
    if (vol < 1.0)
        vol = 1.0;
    double q = s->inflow_ls / 1000.0;
    s->chlorine += dt * (q / vol * (RES_CL_IN - s->chlorine) - CL_DECAY_PER_S * s->chlorine);
}

static void step_treatment(sig_state *s, double dt, double h, double d)
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
    /* chlorine: the automatic control doses the target residual plus the water's demand; a
     * commanded setpoint replaces that dose. The residual at the outlet follows the dose less
     * the demand, lagging by the contact tank. */
    s->dose_mgl = s->dose_manual ? s->dose_set_mgl : trt_cl_target(h) + TRT_CL_DEMAND_MGL;
    s->chlorine = lag(s->chlorine, fmax(0.0, s->dose_mgl - TRT_CL_DEMAND_MGL), dt, TRT_CONTACT_S);
}

static int pumps_running(const sig_state *s) { return s->pump_on[0] + s->pump_on[1]; }

/* Automatic lead/assist control with hysteresis on the tank level. A commanded pump is out of
 * automatic control: its state stays as commanded, and if it was the lead, the other pump leads
 * alone. Duty rotation happens only while both pumps are automatic. */
static void step_pumping(sig_state *s, double dt, double d)
{
    int lead = s->lead, lagp = 1 - s->lead;
    if (s->pump_manual[lead] && !s->pump_manual[lagp]) {
        lead = lagp;
        lagp = 1 - lead;
    }
    int auto_lead = !s->pump_manual[lead], auto_lag = !s->pump_manual[lagp];
    if (pumps_running(s) && s->level_m > PMP_ALL_OFF_M) {
        if (auto_lead)
            s->pump_on[lead] = 0;
        if (auto_lag)
            s->pump_on[lagp] = 0;
        if (auto_lead && auto_lag)
            s->lead = lagp; /* duty rotation: the other pump leads the next cycle */
    } else {
        if (auto_lead && !s->pump_on[lead] && s->level_m < PMP_LEAD_ON_M) {
            s->pump_on[lead] = 1;
            s->starts++;
        }
        /* assist pump for high demand or a low tank, with its own hysteresis */
        if (auto_lag && s->pump_on[lead] && !s->pump_on[lagp] &&
            (d > 1.0 || s->level_m < PMP_ASSIST_LOW_M) && s->level_m < PMP_ASSIST_MAX_M) {
            s->pump_on[lagp] = 1;
            s->starts++;
        } else if (auto_lag && s->pump_on[lagp] && (d < 0.8 || s->level_m > PMP_ASSIST_OFF_M) &&
                   s->level_m >= PMP_ASSIST_LOW_M)
            s->pump_on[lagp] = 0;
    }
    int n = pumps_running(s);
    double target = n == 0 ? 0.0 : n == 1 ? PMP_ONE_LS * s->scale : PMP_TWO_LS * s->scale;
    s->inflow_ls = lag(s->inflow_ls, target, dt, 20.0); /* station flow into the tank */
    s->outflow_ls = PMP_DEMAND_LS * s->scale * d;
    if (s->level_m < EMPTY_M && s->outflow_ls > s->inflow_ls)
        s->outflow_ls = s->inflow_ls;
    s->level_m += (s->inflow_ls - s->outflow_ls) / 1000.0 * dt / SIG_PUMPING_TANK_AREA_M2;
    /* a pump kept running by command fills the tank to its overflow, and no higher */
    s->level_m = clampd(s->level_m, 0.0, SIG_PUMPING_TANK_HEIGHT_M);
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
        /* the analyser spans 0-5 mg/L */
        v[T_CHLORINE] = clampd(noisy(s, T_CHLORINE, s->chlorine, 0.02, dt), 0.0, 5.0);
        v[T_PH] = clampd(noisy(s, T_PH, 7.4 + s->ph_drift + 0.05 * sin(2.0 * PI * h / 24.0),
                               0.02, dt),
                         6.5, 8.5);
        v[T_CLEARWELL] =
            clampd(noisy(s, T_CLEARWELL, s->level_m, 0.004, dt), 0.0, SIG_CLEARWELL_HEIGHT_M);
        /* hypochlorite solution pumped for the chlorine dose on the production flow; a stopped
         * dosing pump reads exactly zero */
        double lph = prod * 3600.0 * s->dose_mgl / HYPO_MG_PER_L;
        v[T_DOSING] = lph > 0.0 ? fmax(0.0, noisy(s, T_DOSING, lph, 0.05, dt)) : 0.0;
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
        /* stopped: the controls' standby draw, still measured with the meter's noise */
        v[P_POWER] = fmax(0.0, noisy(s, P_POWER, n ? kw + 0.5 : 0.3, n ? 0.4 : 0.02, dt));
        v[P_TANK] = clampd(noisy(s, P_TANK, s->level_m, 0.005, dt), 0.0, SIG_PUMPING_TANK_HEIGHT_M);
        break;
    }
    default:
        break;
    }
}

static void step_kind(sig_state *s, double dt, uint64_t t)
{
    double h = sig_local_hour(s, t), d = sig_demand(h);
    switch (s->kind) {
    case SIG_TREATMENT:
        step_treatment(s, dt, h, d);
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
