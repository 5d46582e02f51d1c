/* registry_store: the registry's SQLite database, the single source of truth for gateway
 * identities (state, site, kind, signing key, certificate facts). Owned by the registry daemon
 * only; other processes ask the registry over ZeroMQ. */
#ifndef REGISTRY_STORE_H
#define REGISTRY_STORE_H
#include "cm_conf.h"
#include "cm_err.h"
#include "suido.pb-c.h"

typedef struct registry_store registry_store;

/* Opens (creating if needed) path; refuses a database of another schema version. */
cm_err registry_store_open(const char *path, registry_store **out);
void registry_store_close(registry_store **s);
/* Imports every [gateway ID] of an inventory file; new gateways become active, existing ones
 * keep their state. Returns the number of new gateways in *added. Any bad entry refuses the
 * whole import with "file:line: reason" in err. */
cm_err registry_store_import(registry_store *s, const cm_conf *inventory, int *added,
                             char err[CM_CONF_ERRLEN]);
/* Fills info (strings and key bytes malloc'd; free with registry_info_clear).
 * CM_ERR_UNKNOWN if absent. */
cm_err registry_store_get(registry_store *s, const char *id, Suido__GatewayInfo *info);
void registry_info_clear(Suido__GatewayInfo *info);
/* Calls fn for each gateway in id order. */
cm_err registry_store_each(registry_store *s, void (*fn)(void *ctx, Suido__GatewayInfo *info),
                           void *ctx);
int registry_store_count(registry_store *s);

#endif
