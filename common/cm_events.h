/* cm_events: a service's subscription to the registry's events (SUB over CURVE), so that a
 * change of state reaches every process at once instead of when a cache expires.
 *
 * A service identity that is no longer active is cut off here: its CURVE key is refused by every
 * socket of this process (cm_zap_set_revoked) and messages on its established connections are
 * ignored (cm_svc_set_peer_revoked). Gateway events go to the caller's callback (the verifier
 * drops its cached key). Config section keys: connect, server_key (see CM_ZSOCK_CLIENT_ROWS). */
#ifndef CM_EVENTS_H
#define CM_EVENTS_H
#include "cm_svc.h"

typedef struct cm_events cm_events;

typedef void (*cm_events_gateway_fn)(void *ctx, const char *id, int state);

/* Connects and subscribes. A missing section means no subscription (*out NULL, CM_OK). */
cm_err cm_events_new(cm_svc *s, const char *section, cm_events_gateway_fn on_gateway,
                     void *ctx, cm_events **out, char err[CM_CONF_ERRLEN]);
void cm_events_destroy(cm_events **e);
/* Called for the other events: kind "profile" (id: the new version in force) and "channels"
 * (id: a gateway whose declared channels changed). NULL-safe. */
void cm_events_on_other(cm_events *e, void (*fn)(void *ctx, const char *kind, const char *id),
                        void *ctx);
/* The SUB socket, for the caller's zmq_poll (NULL-safe). */
void *cm_events_socket(const cm_events *e);
/* Handles every pending event (NULL-safe). */
void cm_events_drain(cm_events *e);

#endif
