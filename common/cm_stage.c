/* cm_stage: the pipeline services' receive loop and back-pressured send. */
#include "cm_stage.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "cm_log.h"
#include "cm_time.h"

/* Process-wide send counters (cm_stage_metrics), written once before any send. */
static cm_metric *stage_sent, *stage_send_waits, *stage_send_blocked;

const char *cm_stage_kind(const Suido__StageMessage *m)
{
    if (m->alert)
        return "alert";
    if (m->audit)
        return "audit";
    if (m->command)
        return "command";
    if (m->status == SUIDO__VERIFY_STATUS__VERIFY_REJECTED)
        return "reject";
    const char *slash = m->topic ? strrchr(m->topic, '/') : NULL;
    return slash ? slash + 1 : "";
}

static void handle(cm_stage_ctx *c)
{
    zmq_msg_t msg;
    char peer[64];
    zmq_msg_init(&msg);
    cm_err rc = cm_zrecv(c->input, &msg, peer, sizeof peer, ZMQ_DONTWAIT);
    if (rc == CM_ERR_UNAVAILABLE || rc == CM_ERR_IO) {
        zmq_msg_close(&msg);
        return;
    }
    cm_metric_inc(c->received);
    uint64_t t0 = cm_mono_us();
    Suido__StageMessage *m =
        rc == CM_OK ? suido__stage_message__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg))
                    : NULL;
    if (!m) {
        cm_metric_inc(c->malformed);
        cm_svc_reject(c->svc, "malformed");
        cm_warn("peer=%s size=%zu error=\"malformed stage message\"", peer, zmq_msg_size(&msg));
        zmq_msg_close(&msg);
        return;
    }
    const char *kind = cm_stage_kind(m);
    const cm_dispatch *row = cm_dispatch_find(c->table, kind);
    uint64_t now_ms = cm_now_ms();
    if (m->received_ms && m->received_ms <= now_ms)
        cm_metric_observe_us(c->pipeline_seconds, (now_ms - m->received_ms) * 1000u);
    if (cm_svc_peer_revoked(c->svc, peer)) {
        cm_metric_inc(c->denied);
        cm_svc_reject(c->svc, "peer_revoked");
        cm_warn("peer=%s kind=%s error=\"peer identity revoked\"", peer, kind);
    } else if (!row || !cm_dispatch_peer_ok(row, peer)) {
        cm_metric_inc(c->denied);
        cm_svc_reject(c->svc, "kind_not_allowed");
        cm_warn("peer=%s kind=%s error=\"message kind not accepted from this peer\"", peer, kind);
    } else {
        row->handler(c->handler_ctx, m, peer);
    }
    cm_metric_observe_us(c->handle_seconds, cm_mono_us() - t0);
    suido__stage_message__free_unpacked(m, NULL);
    zmq_msg_close(&msg);
}

static int readable(void *sock)
{
    int ev = 0;
    size_t len = sizeof ev;
    return zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &len) == 0 && (ev & ZMQ_POLLIN);
}

void cm_stage_run(cm_stage_ctx *c)
{
    cm_metrics *mx = c->svc->metrics;
    c->received = cm_metric_counter(mx, "suido_stage_received_total", "frames received");
    c->malformed = cm_metric_counter(mx, "suido_stage_malformed_total", "frames not decodable");
    c->denied = cm_metric_counter(mx, "suido_stage_denied_total",
                                  "frames of a kind the sending peer may not send");
    c->handle_seconds = cm_metric_histogram(mx, "suido_stage_handle_seconds",
                                            "time to decode, check and handle one input frame");
    c->pipeline_seconds = cm_metric_histogram(
        mx, "suido_stage_pipeline_seconds", "age of an input frame since ingest received it");
    c->burst = cm_metric_gauge(mx, "suido_stage_input_burst",
                               "input frames taken in the last round (512: more were waiting)");
    c->full_bursts = cm_metric_counter(mx, "suido_stage_input_full_bursts_total",
                                       "rounds that left input frames waiting");
    cm_stage_metrics(c->svc);
    while (!cm_daemon_stopping) {
        int hold = c->hold_input && c->hold_input(c->handler_ctx);
        zmq_pollitem_t it[3] = {{.socket = c->input, .events = hold ? 0 : ZMQ_POLLIN}};
        int n_it = 1, ev_at = -1, side_at = -1;
        if (c->events) {
            ev_at = n_it;
            it[n_it++] = (zmq_pollitem_t){.socket = cm_events_socket(c->events),
                                          .events = ZMQ_POLLIN};
        }
        if (c->side) {
            side_at = n_it;
            it[n_it++] = (zmq_pollitem_t){.socket = c->side, .events = ZMQ_POLLIN};
        }
        int n = zmq_poll(it, n_it, 100);
        if (n > 0 && ev_at >= 0 && (it[ev_at].revents & ZMQ_POLLIN))
            cm_events_drain(c->events);
        if (n > 0 && side_at >= 0 && (it[side_at].revents & ZMQ_POLLIN))
            for (int i = 0; i < 64 && readable(c->side); i++)
                c->on_side(c->handler_ctx);
        int i = 0;
        if (n > 0 && (it[0].revents & ZMQ_POLLIN)) {
            /* a burst at most, so timers and group commits keep their rhythm */
            for (; i < 512 && !(c->hold_input && c->hold_input(c->handler_ctx)) &&
                   readable(c->input);
                 i++)
                handle(c);
            if (i == 512)
                cm_metric_inc(c->full_bursts);
        }
        cm_metric_set(c->burst, i);
        if (c->on_tick)
            c->on_tick(c->handler_ctx);
        cm_svc_tick(c->svc);
    }
}

void cm_stage_metrics(cm_svc *s)
{
    stage_sent = cm_metric_counter(s->metrics, "suido_stage_sent_total",
                                   "frames handed to the next stage");
    stage_send_waits = cm_metric_counter(s->metrics, "suido_stage_send_waits_total",
                                         "sends that found the next stage full and waited");
    stage_send_blocked = cm_metric_gauge(s->metrics, "suido_stage_send_blocked",
                                         "senders waiting for the next stage now");
}

cm_err cm_stage_send(void *sock, const Suido__StageMessage *m)
{
    cm_err rc = cm_zsend_pb(sock, &m->base, ZMQ_DONTWAIT);
    if (rc == CM_ERR_UNAVAILABLE) { /* at the high-water mark: wait for the next stage */
        cm_metric_inc(stage_send_waits);
        cm_metric_add(stage_send_blocked, 1);
        for (;;) {
            rc = cm_zsend_pb(sock, &m->base, 0);
            if (rc != CM_ERR_IO || errno != EINTR || cm_daemon_stopping)
                break;
        }
        cm_metric_add(stage_send_blocked, (uint64_t)-1); /* the gauge's int64, back down by 1 */
    }
    if (rc == CM_OK)
        cm_metric_inc(stage_sent);
    return rc;
}
