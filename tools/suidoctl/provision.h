/* provision: `suidoctl gateway provision` — issues a new gateway's credentials from the
 * deployment PKI (keys/mkpki.sh --add-gateway, so the CA's database stays the one record of what
 * it issued), registers the gateway with the registry (state "provisioned") and writes the field
 * bundle: everything the gateway needs and nothing else. */
#ifndef SUIDOCTL_PROVISION_H
#define SUIDOCTL_PROVISION_H
#include "cm_conf.h"
#include "suido.pb-c.h"

typedef struct provision_request {
    const char *id, *site, *kind, *model, *firmware;
    const char *protocol; /* NULL: a suido gateway; "sparkplug": a Sparkplug B edge node */
    const char *out; /* bundle directory to create; must not exist */
} provision_request;

/* Registers the gateway: sends req (op ADD_GATEWAY) and returns 0, or prints why and returns
 * non-zero. Supplied by the caller so that this module needs no registry connection of its own. */
typedef int (*provision_register_fn)(void *ctx, const Suido__RegistryRequest *req);

/* Runs the whole provisioning. conf: suidoctl's configuration ([pki] dir, script, broker).
 * Returns 0 on success; on failure prints the reason on stderr and returns 1 (2 for a usage
 * problem). A certificate issued for a gateway the registry then refuses is revoked again. */
int provision_gateway(const cm_conf *conf, const provision_request *r, provision_register_fn reg,
                      void *ctx);

#endif
