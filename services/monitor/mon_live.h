/* mon_live: the live alert stream as operators' browsers see it. The monitor subscribes to
 * suido/v1/alerts/# (MQTT/TLS, identity "monitor"): every alert the archive has committed and
 * published lands here, numbered, in a ring of the latest MON_LIVE_MAX; pages ask for those after
 * the last number they saw.
 *
 * mon_live_add runs on the MQTT client's thread, mon_live_since on the HTTP thread: a mutex
 * guards the ring. Payloads are decoded and checked (sizes, fields) before they are kept. */
#ifndef MON_LIVE_H
#define MON_LIVE_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"

#define MON_LIVE_MAX 256
#define MON_LIVE_PAST 3

typedef struct mon_live_alert {
    uint64_t seq;             /* 1, 2, 3, ... since the monitor started */
    uint64_t received_ms;
    char id[160], gateway[65], site[64], channel[96], rule[64];
    int severity;             /* Suido__Severity */
    double value, limit;
    uint64_t ts_ms;
    int cleared;
    char evidence[256];
    size_t n_past;
    char past[MON_LIVE_PAST][320]; /* what operators found the last times (the archive adds it) */
} mon_live_alert;

typedef struct mon_live mon_live;

mon_live *mon_live_new(void);
void mon_live_destroy(mon_live **l);
/* Decodes an Alert published on topic (suido/v1/alerts/<site>) and keeps it. CM_ERR_DECODE for
 * a payload that is not an Alert, CM_ERR_INVAL for a wrong topic or missing fields. */
cm_err mon_live_add(mon_live *l, const char *topic, const void *payload, size_t len,
                    uint64_t now_ms);
/* Copies the alerts numbered after `after` (oldest first, at most max) into out; returns how many.
 * *last gets the newest number kept (0: none yet). */
size_t mon_live_since(mon_live *l, uint64_t after, mon_live_alert *out, size_t max,
                      uint64_t *last);

#endif
