/* site: the simulator's driver side of one gateway (see site.h). */
#include "site.h"

#include <math.h>
#include <string.h>

#include "cm_time.h"

#define MAX_WINDOW_MS 60000 /* the library never puts more than this much time in one batch */
#define FEED_MAX (GW_MAX_BATCH * 32)

void site_init(site *s, sig_kind kind, uint64_t run_seed, const char *id, double rate)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    sig_init(&s->sig, kind, sig_site_seed(run_seed, id));
    const sig_channel *ch;
    s->nch = sig_channels(kind, &ch);
    for (size_t i = 0; i < s->nch; i++)
        s->ch[i] = (gw_channel){ch[i].name, ch[i].unit};
    const sig_actuator *act;
    s->nact = sig_actuators(kind, &act);
    for (size_t i = 0; i < s->nact; i++)
        s->act[i] = (cmd_actuator){act[i].name, act[i].unit, act[i].lo, act[i].hi};
    s->interval_ms = rate > 0 ? (uint64_t)(1000.0 / rate) : 0;
}

static cmd_reason apply(void *ctx, size_t actuator, double value, double *in_force)
{
    site *s = ctx;
    *in_force = sig_actuate(&s->sig, actuator, value);
    return CMD_OK;
}

static double current(void *ctx, size_t actuator)
{
    const site *s = ctx;
    return sig_actuator_value(&s->sig, actuator);
}

void site_identity(site *s, gw_identity *id)
{
    id->ch = s->ch;
    id->nch = s->nch;
    id->act = s->act;
    id->nact = s->nact;
    id->field = (gw_field){apply, current, s};
}

void site_feed(site *s, gateway *g)
{
    size_t n = gateway_wanted(g);
    if (n == 0)
        return;
    if (n > FEED_MAX)
        n = FEED_MAX;
    uint64_t wall = cm_now_ms();
    uint64_t start = s->window_end_ms ? s->window_end_ms : wall - s->interval_ms;
    if (start > wall)
        start = wall;
    if (wall - start > MAX_WINDOW_MS)
        start = wall - MAX_WINDOW_MS;
    uint64_t span = wall - start;
    s->window_end_ms = wall;
    gw_reading r[64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t t = start + span * i / n;
        size_t c = (size_t)(s->rr++ % s->nch);
        if (c == 0 || s->sig.t_ms == 0)
            sig_step(&s->sig, t); /* a new scan of all channels */
        r[k++] = (gw_reading){(uint32_t)c, GW_QUALITY_GOOD, t, s->sig.v[c]};
        if (k == sizeof r / sizeof r[0] || i + 1 == n) {
            gateway_submit(g, r, k);
            k = 0;
        }
    }
}
