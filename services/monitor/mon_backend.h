/* mon_backend: the monitor's ways into the rest of suido, all over CURVE-authenticated ZeroMQ
 * as the identity "monitor", none into a database file:
 *
 *   registry  [registry] DEALER: operators' login, session checks (never cached: a logout or a
 *             suspension counts at once), logout, the gateway list, the signed data profile;
 *   archive   [archive] DEALER to the archive's API: alert cases and the monitor's reads; every
 *             request carries the operator's registry token, and the archive checks it again;
 *   audit     the monitor's own audit events, through the process's audit output
 *             (cm_audit_out: [output archive], spooled while the archive is away).
 *
 * Requests are answered within the configured timeouts or fail closed (CM_ERR_UNAVAILABLE).
 * Archive replies carry the request's number, so a late answer to a request that timed out is
 * never taken for another's. Used from one thread. */
#ifndef MON_BACKEND_H
#define MON_BACKEND_H
#include <stdint.h>

#include "cm_profile.h"
#include "cm_svc.h"
#include "suido.pb-c.h"

typedef struct mon_backend mon_backend;

/* Config rows of the sections this module reads. */
#define MON_BACKEND_SPEC_ROWS                                                                      \
    CM_ZSOCK_CLIENT_ROWS("archive"), {"archive", "timeout_ms", 0, "archive API timeout (10000)"},  \
        CM_ZSOCK_CLIENT_ROWS("output"),                                                            \
        {"profile", "registry_key", 1, "the registry's profile signing public key (PEM)"}

cm_err mon_backend_new(cm_svc *svc, mon_backend **out, char err[CM_CONF_ERRLEN]);
void mon_backend_destroy(mon_backend **b);

typedef struct mon_login_result {
    cm_err status;            /* CM_OK, CM_ERR_DENIED, CM_ERR_REVOKED (locked out),
                               * CM_ERR_UNAVAILABLE */
    char token[65];           /* the registry's session token */
    char role[16];
    uint64_t expires_ms;
    uint64_t retry_after_ms;  /* locked out: when to try again */
} mon_login_result;

/* Password and TOTP through the registry's own login (lockout applies, keyed by source). The
 * token is then checked to belong to op before it is used. */
void mon_backend_login(mon_backend *b, const char *op, const char *password, const char *totp,
                       const char *source, mon_login_result *res);
/* The operator and role of a registry token now: CM_OK, CM_ERR_DENIED, CM_ERR_UNAVAILABLE. */
cm_err mon_backend_session(mon_backend *b, const char *token, char who[65], char role[16]);
void mon_backend_logout(mon_backend *b, const char *token);

/* Every gateway the registry knows (for a viewer's token), cached for a few seconds. The reply
 * is borrowed until the next call. */
cm_err mon_backend_gateways(mon_backend *b, const char *token, const Suido__RegistryReply **out);
/* One gateway from that list, or NULL. */
const Suido__GatewayInfo *mon_backend_gateway(const Suido__RegistryReply *list, const char *id);

/* The data profile in force, fetched with the operator's token, its signature checked with the
 * registry's profile key, cached for a while. Borrowed until the next call. */
cm_err mon_backend_profile(mon_backend *b, const char *token, const cm_profile **out);

/* One request to the archive's API (token and request number filled in here). CM_OK with *rep
 * (the caller frees it with suido__archive_reply__free_unpacked; its status may be a refusal),
 * or CM_ERR_UNAVAILABLE when the archive did not answer in time. */
cm_err mon_backend_archive(mon_backend *b, const char *token, Suido__ArchiveRequest *req,
                           Suido__ArchiveReply **rep);

/* An audit event. Strings are copied; detail should come from mon_safe'd parts. */
void mon_backend_audit(mon_backend *b, const char *event, const char *subject, const char *actor,
                       const char *detail);
/* The same for events whose rate an outsider controls (unauthenticated or malformed requests):
 * at most 30 per 10 s, the rest counted and summed up in one event. */
void mon_backend_audit_outsider(mon_backend *b, const char *event, const char *subject,
                                const char *actor, const char *detail);

#endif
