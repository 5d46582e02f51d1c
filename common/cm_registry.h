/* cm_registry: a service's client of the registry, with a small cache of gateway identities.
 *
 * Fail closed: when the registry does not answer within the timeout, look-ups return
 * CM_ERR_UNAVAILABLE and callers must refuse the data (never accept it as verified). From then on
 * calls return CM_ERR_UNAVAILABLE at once (one of them per second goes out as a probe) until
 * the registry is heard from again: an outage costs each caller one timeout, not one per call. Cached
 * entries live for ttl_ms (a revoked gateway is refused at the latest after that). Not
 * thread-safe: one client per thread. */
#ifndef CM_REGISTRY_H
#define CM_REGISTRY_H
#include <stdint.h>
#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_zmq.h"
#include "suido.pb-c.h"

typedef struct cm_registry cm_registry;
struct cm_profile;

typedef struct cm_gateway {
    char id[65];
    int state;               /* Suido__EntityState */
    char site[64];
    char kind[32];
    char key_id[CM_KEY_ID_LEN + 1];
    cm_pubkey *key;          /* signing key, owned by the cache */
    cm_rsa *cmd_key;         /* RSA-2048 command key (commands are encrypted to it), owned by
                              * the cache; NULL: the gateway has none and gets no command */
    uint64_t cert_not_after_ms;
    int sparkplug;           /* 1: a Sparkplug B edge node (protocol "sparkplug"), fed through the
                              * Sparkplug host; its commands go out through it */
} cm_gateway;

/* Config section keys: connect, server_key (see cm_zsock_client_conf), timeout_ms (1000),
 * cache_ttl_ms (10000). */
cm_err cm_registry_new(void *zctx, const cm_conf *conf, const char *section,
                       const cm_curve_keypair *own, cm_registry **out, char err[CM_CONF_ERRLEN]);
void cm_registry_destroy(cm_registry **r);
/* Looks up id (cache first). *out is borrowed until the next call. CM_ERR_UNKNOWN if the
 * registry does not know it, CM_ERR_UNAVAILABLE if the registry did not answer. */
cm_err cm_registry_gateway(cm_registry *r, const char *id, const cm_gateway **out);

/* One request and its reply (caller frees *rep with suido__registry_reply__free_unpacked).
 * Replies that arrive after their request timed out are dropped. CM_ERR_UNAVAILABLE when the
 * registry does not answer within the timeout. */
cm_err cm_registry_call(cm_registry *r, const Suido__RegistryRequest *req,
                        Suido__RegistryReply **rep);

/* Sends req without waiting for the answer (which the next call drops): for reports that need
 * no reply. CM_ERR_UNAVAILABLE when it cannot even be queued. */
cm_err cm_registry_notify(cm_registry *r, const Suido__RegistryRequest *req);

/* The data profile a service works with: [section] file, a local file (tools, tests), or
 * [section] registry_key, the registry's profile key: then the version in force is fetched from
 * the registry (REG_GET_PROFILE), its signature checked and its text parsed. One of the two keys
 * is needed (CM_ERR_CONFIG); CM_ERR_UNAVAILABLE when the registry does not answer or has no
 * profile, CM_ERR_SIGNATURE when the signature is not the registry's; err says why. */
cm_err cm_registry_profile(cm_registry *r, const cm_conf *conf, const char *section,
                           struct cm_profile **out, char err[CM_CONF_ERRLEN]);
/* The same at a service's start: while the registry does not answer (it may be starting too),
 * tries again for up to wait_ms. */
cm_err cm_registry_profile_wait(cm_registry *r, const cm_conf *conf, const char *section,
                                long wait_ms, struct cm_profile **out, char err[CM_CONF_ERRLEN]);
#define CM_PROFILE_SPEC_ROWS(section)                                                              \
    {section, "file", 0, "data profile file (else fetched from the registry)"},                    \
        {section, "registry_key", 0, "the registry's profile signing public key (PEM)"}

/* The operator a session token belongs to and their role ("viewer", "operator", "admin"), from
 * the registry (never cached: a logout or suspension counts at once). CM_ERR_DENIED for an
 * unknown or expired token, CM_ERR_UNAVAILABLE when the registry does not answer. */
cm_err cm_registry_session(cm_registry *r, const char *token, char who[65], char role[16]);

/* Drops what is cached about id, so the next look-up asks the registry (after a registry event
 * announcing a change of state). */
void cm_registry_forget(cm_registry *r, const char *id);

#define CM_REGISTRY_SPEC_ROWS(section)                                                             \
    {section, "connect", 1, "registry endpoint"},                                                  \
        {section, "server_key", 1, "registry CURVE public key file"},                              \
        {section, "timeout_ms", 0, "look-up timeout (1000)"},                                      \
        {section, "cache_ttl_ms", 0, "how long an answer is reused (10000)"}

#endif
