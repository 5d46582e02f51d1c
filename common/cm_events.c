/* cm_events: registry event subscriber. */
#include "cm_events.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_log.h"
#include "suido.pb-c.h"

struct cm_events {
    cm_svc *svc;
    void *sock;
    cm_events_gateway_fn on_gateway;
    void *ctx;
    void (*on_other)(void *ctx, const char *kind, const char *id);
    void *other_ctx;
    cm_metric *received;
};

void cm_events_on_other(cm_events *e, void (*fn)(void *ctx, const char *kind, const char *id),
                        void *ctx)
{
    if (!e)
        return;
    e->on_other = fn;
    e->other_ctx = ctx;
}

cm_err cm_events_new(cm_svc *s, const char *section, cm_events_gateway_fn on_gateway,
                     void *ctx, cm_events **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    if (!cm_conf_get(s->conf, section, "connect"))
        return CM_OK;
    cm_events *e = calloc(1, sizeof *e);
    if (!e)
        return CM_ERR_NOMEM;
    cm_err rc = cm_zsock_client_conf(s->zctx, s->conf, section, ZMQ_SUB, &s->keys, &e->sock, err);
    if (rc != CM_OK) {
        free(e);
        return rc;
    }
    zmq_setsockopt(e->sock, ZMQ_SUBSCRIBE, "", 0);
    e->svc = s;
    e->on_gateway = on_gateway;
    e->ctx = ctx;
    e->received = cm_metric_counter(s->metrics, "suido_registry_events_total",
                                    "identity changes received from the registry");
    *out = e;
    return CM_OK;
}

void cm_events_destroy(cm_events **ep)
{
    if (!ep || !*ep)
        return;
    zmq_close((*ep)->sock);
    free(*ep);
    *ep = NULL;
}

void *cm_events_socket(const cm_events *e) { return e ? e->sock : NULL; }

static void handle(cm_events *e, const Suido__RegistryEvent *ev)
{
    int active = ev->state == SUIDO__ENTITY_STATE__STATE_ACTIVE;
    cm_metric_inc(e->received);
    cm_info("kind=%s id=%s state=%d", ev->kind, ev->id, ev->state);
    if (strcmp(ev->kind, "service") == 0) {
        if (ev->curve_pub && strlen(ev->curve_pub) == CM_Z85_LEN)
            cm_zap_set_revoked(e->svc->zap, ev->curve_pub, !active);
        cm_svc_set_peer_revoked(e->svc, ev->id, !active);
    } else if (strcmp(ev->kind, "gateway") == 0 && e->on_gateway) {
        e->on_gateway(e->ctx, ev->id, ev->state);
    } else if (e->on_other) {
        e->on_other(e->other_ctx, ev->kind, ev->id);
    }
}

void cm_events_drain(cm_events *e)
{
    if (!e)
        return;
    for (int i = 0; i < 1024; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (cm_zrecv(e->sock, &m, NULL, 0, ZMQ_DONTWAIT) != CM_OK) {
            zmq_msg_close(&m);
            return;
        }
        Suido__RegistryEvent *ev =
            suido__registry_event__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        if (!ev || !ev->kind || !ev->id) {
            cm_warn("error=\"malformed registry event\"");
        } else {
            handle(e, ev);
        }
        if (ev)
            suido__registry_event__free_unpacked(ev, NULL);
    }
}
