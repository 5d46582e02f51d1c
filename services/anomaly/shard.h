/* shard: the checking done by one anomaly shard (suido-anomaly, main.c), without sockets. Given
 * the mapped readings of a gateway's batch, it keeps the state of every (gateway, channel) and
 * (gateway, relation) it has seen and reports each alert event through a callback; main.c only
 * receives batches, calls shard_feed, sends the alerts to the archive, and calls shard_tick every
 * second. The tests drive it the same way.
 *
 * Per reading of a profile channel (readings of unknown channels are skipped, and so are readings
 * stamped more than CM_MAX_AHEAD_MS ahead of now_ms, counted in
 * suido_anomaly_future_readings_total: one of them would otherwise stay every detector's and
 * relation's latest reading until the clock caught up):
 *   - anomaly_rules: physical range, LL/L/H/HH with deadband, rate (families "limit", "rate");
 *   - det_stuck (family "stuck"), with the defaults of detectors.h;
 *   - det_deviation (family "deviation"), only on channels the profile marks `deviation = yes`;
 *   - det_missing_seen with now_ms, the receive time (family "missing"), so that gateway clock
 *     skew is not mistaken for silence; shard_tick(now_ms) raises on silence;
 *   - the learned model, if the shard has one (family "learned", see live_rows.h).
 * A reading of quality BAD (the gateway reports that the device did not answer: its value is no
 * measurement) goes to none of these, nor becomes the channel's latest reading, so a channel
 * with only BAD readings also goes silent for the missing-data check and for its relations; it
 * is counted (suido_anomaly_bad_quality_readings_total) and the first of an episode raises
 * rule "bad_quality" (family "bad_quality", severity ALARM, evidence naming channel and gateway;
 * value: the channel's last valid reading, 0 if none; limit NAN); further BAD readings raise
 * nothing until a GOOD reading of the channel ends the episode (cleared, INFO, with that
 * reading's value); UNCERTAIN readings are checked as GOOD ones but end no episode.
 * After the batch, for each relation of the batch's site kind whose channels all have a latest
 * reading (none of them older than that channel's missing-data limit before the newest), and if
 * one of them is newer than what the relation last saw: det_balance_update (family "balance")
 * with the level in m and the flows in L/s, or det_pumpflow_update (family "pump_flow") with the
 * number of statuses >= 0.5 and the relation's min_flow; at the newest of those timestamps.
 *
 * Alert ids are "<gateway>/<subject>/<family>", the subject being the channel id, the relation id,
 * or for "learned" the model's site kind (one flag per gateway); the subject is also the alert's
 * channel. Severities are those of the detectors (the learned flag: ALARM when it rises).
 *
 * Bounds: at most 3/4 of limits.channel_slots (gateway, channel) states and 3/4 of
 * limits.relation_slots (gateway, relation) states; at most limits.learned_gateways gateways
 * judged by the model. States are never evicted (a gateway keeps its slots until restart); what
 * does not fit is not checked and is counted (suido_anomaly_untracked_total,
 * suido_anomaly_relations_untracked_total, suido_anomaly_learned_untracked_total). */
#ifndef SHARD_H
#define SHARD_H
#include <stddef.h>
#include <stdint.h>
#include "anomaly_rules.h"
#include "cm_err.h"
#include "cm_metrics.h"
#include "cm_profile.h"
#include "learned.h"
#include "suido.pb-c.h"

#define SHARD_ERRLEN 512
#define SHARD_GW_MAX 64 /* longest gateway id (the topic's limit); longer ones are untracked */

typedef struct shard shard;

typedef struct shard_limits {
    size_t channel_slots;    /* power of two, 4..2^24; 3/4 usable (65536) */
    size_t relation_slots;   /* power of two, 4..2^24; 3/4 usable (16384) */
    size_t learned_gateways; /* 1..2^20, with a model (1024) */
} shard_limits;

void shard_limits_default(shard_limits *l);

/* One gateway's batch, as the profile stage maps it. Borrowed for the call. */
typedef struct shard_batch {
    const char *gateway_id;
    const char *site;       /* for the alert topic; NULL or "" if unknown */
    const char *site_kind;  /* selects the relations and the learned model */
    Suido__MappedReading *const *readings;
    size_t n_readings;
    uint64_t received_ms;   /* ingest's receive time, passed through to the alerts */
} shard_batch;

/* One alert event. Pointers live until the callback returns. */
typedef struct shard_alert {
    const char *id;           /* "<gateway>/<subject>/<family>" */
    const char *gateway_id;
    const char *site;         /* "" if unknown */
    const char *subject;      /* channel id, relation id, or the model's site kind */
    const anomaly_event *ev;  /* rule, family, severity, cleared, limit, evidence */
    double value;             /* the reading; a relation: its level or flow; learned: score */
    uint64_t timestamp_ms;    /* the reading's; missing data: now_ms of the tick */
    uint64_t received_ms;     /* the batch's; missing data: now_ms of the tick */
} shard_alert;

typedef void (*shard_alert_fn)(void *ctx, const shard_alert *a);

/* p (and model, optional: NULL for none) are borrowed and must outlive the shard; the model must
 * have been checked against p (learned_load does). lim NULL: shard_limits_default. mx (optional)
 * receives the shard's counters. fn gets every alert event. Caller frees with shard_destroy. */
cm_err shard_new(const cm_profile *p, const learned_model *model, const shard_limits *lim,
                 cm_metrics *mx, shard_alert_fn fn, void *ctx, shard **out,
                 char err[SHARD_ERRLEN]);
void shard_destroy(shard **s);

/* Checks one batch; now_ms is the receive time on the clock shard_tick is given. */
void shard_feed(shard *s, const shard_batch *b, uint64_t now_ms);

/* Time-driven checks (missing data); call about every second. */
void shard_tick(shard *s, uint64_t now_ms);
/* gateway_id announced an orderly stop (death): its channels are not reported missing until it
 * sends again, and missing-data alerts already raised for it are cleared. */
void shard_gateway_stopped(shard *s, const char *gateway_id, uint64_t now_ms);

#endif
