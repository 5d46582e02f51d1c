/* registry_store: the registry's SQLite database, the single source of truth for the identities
 * of gateways (state, site, kind, signing key, certificate facts) and services (state, CURVE
 * key, certificate facts). Owned by the registry daemon only; other processes ask the registry
 * over ZeroMQ.
 *
 * Lifecycle: provisioned -> active <-> suspended; any of those -> revoked -> disposed. A disposed
 * identity keeps its row forever (its id is never reused) but loses its keys. */
#ifndef REGISTRY_STORE_H
#define REGISTRY_STORE_H
#include <stdint.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_err.h"
#include "suido.pb-c.h"

typedef struct registry_store registry_store;

/* Opens (creating if needed) path; refuses a database of another schema version. */
cm_err registry_store_open(const char *path, registry_store **out);
void registry_store_close(registry_store **s);
/* Imports every [gateway ID] and [service ID] of an inventory file; new identities become
 * active, existing ones keep their state (a disposed id is never brought back). Returns the number of new gateways in *added. Any bad entry refuses the
 * whole import with "file:line: reason" in err. */
cm_err registry_store_import(registry_store *s, const cm_conf *inventory, int *added,
                             char err[CM_CONF_ERRLEN]);
/* Fills info (strings and key bytes malloc'd; free with registry_info_clear).
 * CM_ERR_UNKNOWN if absent. */
/* A gateway to add: every string borrowed; the certificate facts already checked. */
typedef struct registry_new_gateway {
    const char *id, *site, *kind, *model, *firmware;
    const uint8_t *sign_pub_der;
    size_t sign_pub_len;
    const cm_cert_info *cert;
    int state;
    const uint8_t *cmd_pub_der; /* RSA-2048 command key (SPKI DER); NULL/0: none */
    size_t cmd_pub_len;
    const char *protocol; /* "suido" (NULL, ""), or "sparkplug": a Sparkplug B edge node */
} registry_new_gateway;

/* Adds a gateway (provisioning). CM_ERR_DUPLICATE when the id was ever used, disposed ids
 * included: an id is never reused. CM_ERR_KEY: the signing key is not a P-256 public key, or a
 * command key is given that is not an RSA-2048 public key. */
cm_err registry_store_add_gateway(registry_store *s, const registry_new_gateway *g);

/* What gateway gw declared in its birth of boot epoch boot_epoch (replaces what it declared
 * before). CM_ERR_STALE, and nothing changed, when a birth of a newer boot epoch has already
 * declared gw's channels: an old birth (a replay, or one delivered late) never takes back what a
 * newer boot declared. The same epoch again is accepted (a gateway re-announces itself after
 * every reconnect). The newest epoch is stored with the channels, so it survives a restart. */
cm_err registry_store_set_channels(registry_store *s, const char *gw, uint64_t boot_epoch,
                                   Suido__ChannelDecl *const *decl, size_t n);
cm_err registry_store_get_channels(registry_store *s, const char *gw,
                                   void (*fn)(void *ctx, const char *channel, const char *unit),
                                   void *ctx);

cm_err registry_store_get(registry_store *s, const char *id, Suido__GatewayInfo *info);
void registry_info_clear(Suido__GatewayInfo *info);
/* Calls fn for each gateway in id order. */
cm_err registry_store_each(registry_store *s, void (*fn)(void *ctx, Suido__GatewayInfo *info),
                           void *ctx);
int registry_store_count(registry_store *s);

/* Moves gateway or service `id` (kind "gateway" or "service") to `state` if the lifecycle
 * allows it; *old gets the previous state. CM_ERR_UNKNOWN, or CM_ERR_INVAL for a move the
 * lifecycle forbids. Disposal destroys the stored keys. For a service, curve_pub (41 bytes) gets
 * its CURVE public key as it was before the change. */
cm_err registry_store_set_state(registry_store *s, const char *kind, const char *id, int state,
                                int *old, char curve_pub[41]);
/* Writes every identity and its state, one "<id> <state>" line each, to path (tmp + rename):
 * the broker plugin's view of who may connect. */
cm_err registry_store_write_identities(registry_store *s, const char *path);
const char *registry_state_name(int state);
/* Certificates of active gateways and services that crossed a warning threshold (days before
 * expiry, descending, e.g. 30, 7, 1) since they were last reported: fn is called once per
 * identity and threshold crossed, and the crossing is stored, so a restart does not repeat it.
 * A renewed certificate starts afresh. */
typedef void (*registry_expiry_fn)(void *ctx, const char *kind, const char *id, const char *site,
                                   long days_left, long threshold);
cm_err registry_store_expiry(registry_store *s, uint64_t now_ms, const long thresholds[3],
                             registry_expiry_fn fn, void *ctx);

/* Records that these gateways sent verified data at now_ms (the inventory's "last seen"). */
cm_err registry_store_seen(registry_store *s, char **ids, size_t n, uint64_t now_ms);

/* The lifecycle, for every kind of identity: 1 if from -> to is allowed. */
int registry_lifecycle_allows(int from, int to);
/* The database handle, shared with registry_operators (same file, same transactions). */
struct sqlite3;
struct sqlite3 *registry_store_db(registry_store *s);

#endif
