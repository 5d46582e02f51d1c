/* site: one simulated site as a driver of the gateway library — the signal model of its kind
 * (signals.c) makes the readings the gateway's batches take, and the commands the gateway has
 * verified act on that model. */
#ifndef GW_SITE_H
#define GW_SITE_H
#include <stdint.h>

#include "gateway.h"
#include "signals.h"

typedef struct site {
    sig_kind kind;
    sig_state sig;
    gw_channel ch[SIG_MAX_CHANNELS];
    size_t nch;
    cmd_actuator act[SIG_MAX_ACTUATORS];
    size_t nact;
    uint64_t window_end_ms;   /* wall time the last readings reached */
    uint64_t interval_ms;     /* nominal time between batches (0: as fast as possible) */
    uint64_t rr;              /* round-robin channel counter across batches */
} site;

/* A site of kind for gateway id; run_seed makes the run reproducible; rate is batches/s. */
void site_init(site *s, sig_kind kind, uint64_t run_seed, const char *id, double rate);
/* Fills the channel, actuator and field parts of an identity from the site. */
void site_identity(site *s, gw_identity *id);
/* Submits the readings the gateway's due batches want: the time since the previous ones (at most
 * 60 s) spread over them, a new scan of every channel each time the round robin wraps. */
void site_feed(site *s, gateway *g);

#endif
