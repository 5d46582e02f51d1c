/* cm_stage: the loop shared by the pipeline services (verify, profile, anomaly, archive): one
 * bound PULL input whose frames are StageMessages, dispatched by kind through the service's
 * table (which names the peers allowed to send each kind), and a blocking send helper so that a
 * slow stage pushes back on the one before it instead of dropping. */
#ifndef CM_STAGE_H
#define CM_STAGE_H
#include "cm_events.h"
#include "cm_svc.h"
#include "suido.pb-c.h"

/* Handler contract: msg is a Suido__StageMessage owned by the loop (freed after return). */
typedef struct cm_stage_ctx {
    cm_svc *svc;
    void *input;
    const cm_dispatch *table;
    void *handler_ctx;
    cm_metric *received, *malformed, *denied;
    /* called at least every 100 ms and after each burst, for timers and group commits */
    void (*on_tick)(void *handler_ctx);
    cm_events *events; /* optional: the registry's events, handled between bursts */
    /* optional: a request socket (an API) served between bursts: on_side is called when it is
     * readable and receives at most one request per call */
    void *side;
    void (*on_side)(void *handler_ctx);
    /* optional: while it returns 1 the input is left unread, so its senders block at their
     * high-water mark (back-pressure) instead of handing over what cannot be kept, e.g. while
     * the archive's database is unreachable; ticks, events and the side socket go on */
    int (*hold_input)(void *handler_ctx);
    /* set by cm_stage_run: time per frame, frames' age since ingest, input bursts */
    cm_metric *handle_seconds, *pipeline_seconds, *burst, *full_bursts;
} cm_stage_ctx;

/* Kind of a StageMessage for dispatch: "alert", "audit" or "command" if it carries one, "reject" if verify
 * refused it, else the topic's last level ("data", "birth", ...). */
const char *cm_stage_kind(const Suido__StageMessage *m);

/* Runs until cm_daemon_stopping. Counts, besides what cm_stage_metrics does: frames received
 * (suido_stage_received_total), refused (suido_rejected_total{reason=malformed|peer_revoked|
 * kind_not_allowed}), the time to handle each (suido_stage_handle_seconds) and its age since
 * ingest received it (suido_stage_pipeline_seconds), and, as the input's queue depth seen from
 * here, the frames taken in the last round (suido_stage_input_burst; a full round of 512 means
 * more were waiting: suido_stage_input_full_bursts_total). */
void cm_stage_run(cm_stage_ctx *c);

/* Registers this process's send counters (cm_stage_run does it; a process that sends without
 * running the loop calls it once, before sending). */
void cm_stage_metrics(cm_svc *s);

/* Sends m on sock, blocking while the next stage is at its high-water mark (back-pressure);
 * gives up only when the daemon is stopping. Counts what was sent (suido_stage_sent_total),
 * how often the next stage was full (suido_stage_send_waits_total) and how many senders are
 * waiting right now (suido_stage_send_blocked). Any thread. */
cm_err cm_stage_send(void *sock, const Suido__StageMessage *m);

#endif
