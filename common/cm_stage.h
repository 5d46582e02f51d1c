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
} cm_stage_ctx;

/* Kind of a StageMessage for dispatch: "alert", "audit" or "command" if it carries one, "reject" if verify
 * refused it, else the topic's last level ("data", "birth", ...). */
const char *cm_stage_kind(const Suido__StageMessage *m);

/* Runs until cm_daemon_stopping. */
void cm_stage_run(cm_stage_ctx *c);

/* Sends m on sock, blocking while the next stage is at its high-water mark (back-pressure);
 * gives up only when the daemon is stopping. */
cm_err cm_stage_send(void *sock, const Suido__StageMessage *m);

/* Sends a security event to the audit log (the archive) on sock. Never blocks: an audit event
 * that cannot be queued is counted by the caller's log line, not waited for. */
cm_err cm_stage_audit(void *sock, const char *source, const char *event, const char *subject,
                      const char *actor, const char *detail);

/* Sends this process's own security events (cm_svc_on_security: refused handshakes) to the
 * audit log through sock, a PUSH to the archive. */
void cm_stage_audit_security(cm_svc *s, void *sock);

#endif
