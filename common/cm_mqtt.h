/* cm_mqtt: one MQTT-over-TLS client on Eclipse Paho MQTT C (async), shared by the gateway
 * simulator, ingest and archive.
 *
 * Contract: TLS >= 1.2 with a client certificate; the server certificate is verified against
 * the deployment CA including its host name; the client id is the certificate's common name.
 * The client reconnects by itself and re-subscribes after a reconnect. Callbacks run on Paho's
 * threads: a callback must not block for long, except on_message, whose blocking is the
 * back-pressure towards the broker. Paho sends a QoS 1 PUBACK before on_message runs: end-to-end
 * reliability must come from the application (suido: the archive's ack to the gateway). */
#ifndef CM_MQTT_H
#define CM_MQTT_H
#include <stddef.h>
#include "cm_err.h"

typedef struct cm_mqtt cm_mqtt;

typedef struct cm_mqtt_opts {
    const char *uri;        /* "ssl://127.0.0.1:8883" */
    const char *client_id;  /* must equal the certificate CN */
    const char *ca_file;    /* deployment CA (PEM) */
    const char *cert_file;  /* client certificate (PEM) */
    const char *key_file;   /* client private key (PEM, mode 0600) */
    int clean_session;      /* 0: persistent session, QoS 1 messages queued while away */
    int keepalive_s;        /* 0 -> 10 */
    int max_inflight;       /* 0 -> 64 */
    int verify_hostname;    /* 1: check the broker's certificate name against the URI host */
    int renew_on_loss;      /* 1: a lost connection is not reconnected by Paho: the application
                             * calls cm_mqtt_renew (see there) */
    const char *will_topic; /* optional last will (QoS 1) */
    const void *will_payload;
    size_t will_len;
    int will_retained;      /* 1: the will is retained (a Sparkplug host's STATE) */
    /* Called for every message on Paho's thread. Return 1 when the message was handed on, 0 to
     * have Paho deliver it again (from its memory). */
    int (*on_message)(void *ctx, const char *topic, const void *payload, size_t len);
    /* Called after every successful (re)connect. */
    void (*on_connected)(void *ctx, int reconnect);
    /* Called when the connection is lost or a connect attempt fails. */
    void (*on_lost)(void *ctx, const char *cause);
    void *ctx;
} cm_mqtt_opts;

/* Config table rows of an [mqtt] section, and the options they give: uri, ca, cert, key (the
 * key file is checked: mode 0600). client_id is the service's name (= certificate CN). */
#define CM_MQTT_SPEC_ROWS(section)                                                                 \
    {section, "uri", 1, "broker, ssl://host:port"},                                                \
        {section, "ca", 1, "deployment CA certificate"},                                           \
        {section, "cert", 1, "this service's client certificate"},                                 \
        {section, "key", 1, "this service's client key (0600)"}
struct cm_conf;
cm_err cm_mqtt_opts_from_conf(const struct cm_conf *c, const char *section,
                              const char *client_id, cm_mqtt_opts *o);

/* Creates the client (no network yet). Strings in o are copied. */
cm_err cm_mqtt_new(const cm_mqtt_opts *o, cm_mqtt **out);
/* Starts connecting; with timeout_ms > 0 waits up to that long for the first connection and
 * returns CM_ERR_TIMEOUT / CM_ERR_DENIED / CM_ERR_IO if it did not succeed. With 0 returns at once;
 * the client keeps retrying in the background either way. */
cm_err cm_mqtt_connect(cm_mqtt *m, int timeout_ms);
/* Subscribes now if connected, and after every reconnect. */
cm_err cm_mqtt_subscribe(cm_mqtt *m, const char *filter, int qos);
/* Queues a publish; CM_ERR_UNAVAILABLE when not connected or the in-flight window is full. */
cm_err cm_mqtt_publish(cm_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                       int retained);
int cm_mqtt_is_connected(const cm_mqtt *m);
/* Number of publishes sent but not yet acknowledged by the broker. */
int cm_mqtt_inflight(const cm_mqtt *m);
/* With renew_on_loss: after a lost connection, starts over with a new Paho client on the same
 * broker session (clean_session 0 keeps subscriptions and the messages queued for us), so
 * publishes still in flight on the old client are dropped instead of replayed on the next
 * connection. For an application that resends from its own store: Paho 1.3 replays its in-flight
 * window on a reconnect, and when the socket fills during that replay it starts again from the
 * first message, so under load one publish can go out dozens of times. Paho's own reconnect is
 * stopped when the loss is reported, so this need not race it. Call it on every poll while not
 * connected: the first call after a loss replaces the client, a later call connects the new one
 * (which then retries by itself), other calls do nothing. The connect comes at once after a rare
 * loss, and after 1, 2, 4, 8 s for a connection lost again within 10 s of the last renewal. The two steps let an application with
 * many clients replace all of them before their TLS handshakes start: a handshake in progress
 * holds Paho's one lock against every replacement. Application thread only, never concurrently
 * with a publish on m. */
cm_err cm_mqtt_renew(cm_mqtt *m);
/* Disconnects (waiting up to 1 s for in-flight messages) and frees. */
void cm_mqtt_destroy(cm_mqtt **m);

#endif
