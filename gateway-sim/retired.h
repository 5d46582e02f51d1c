/* retired: whether a gateway of a deployment can no longer run, from the deployment's own files:
 * its private keys were destroyed (`suidoctl gateway dispose`) or its certificate is on the CA's
 * revocation list (`suidoctl gateway revoke`, keys/mkpki.sh --revoke). The simulator skips such
 * gateways with one line instead of failing at start or reconnecting for ever. */
#ifndef GATEWAY_SIM_RETIRED_H
#define GATEWAY_SIM_RETIRED_H
#include <stddef.h>

/* 1 and a short reason in why ("disposed: ..." / "revoked: ...") when gateway id of deploy_dir
 * is retired; 0 when it can run (or the CRL cannot be read: the broker then decides). */
int gateway_retired(const char *deploy_dir, const char *id, char *why, size_t cap);

#endif
