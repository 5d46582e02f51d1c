/* registry_operators: operator (user) accounts of the registry — password hashes (Argon2id),
 * TOTP second factor (RFC 6238, liboath), lockout with growing back-off, session tokens, and the
 * access history with its suspicious-access findings. Tables live in the registry's database.
 *
 * Lockout is keyed by (operator, source), where the source is the authenticated peer, never a
 * name the client chooses: the CURVE identity that sent the login (suidoctl), or for the monitor,
 * which authenticates browsers itself, "monitor/" and the browser address it saw. Five failures
 * from one source lock that operator for that source only, for 1 min, then 2, 4, ... up to 24 h,
 * and the lock survives restarts. So an attacker at one source cannot lock every operator out
 * everywhere; a source that fails against many accounts is itself blocked (20 failures in
 * 10 min) without touching the accounts. Against guessing spread over many sources, an account
 * that fails 20 times in a row (all sources, since its last success) is locked everywhere for
 * 15 min, then 30, ... up to 24 h, kept across restarts too.
 * Tokens are 256-bit random values; only their SHA-256 is stored. A TOTP code is accepted once
 * (its time step must be newer than the last one used). */
#ifndef REGISTRY_OPERATORS_H
#define REGISTRY_OPERATORS_H
#include <sqlite3.h>
#include <stdint.h>
#include "cm_err.h"
#include "suido.pb-c.h"

#define OP_MAX_FAILURES 5
#define OP_ACCOUNT_MAX_FAILURES 20 /* consecutive, across all sources */
#define OP_SOURCE_LEN 96
#define OP_SESSION_MS (30u * 60u * 1000u)

typedef enum op_role { ROLE_NONE = 0, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN } op_role;
op_role op_role_parse(const char *s);
const char *op_role_name(op_role r);

typedef struct registry_operators registry_operators;

/* TOTP seeds are stored sealed (AES-256-GCM under seal_key, 32 bytes, kept outside the
 * database; AAD = the operator id). Seeds found in clear (older databases) are sealed here;
 * *sealed_now says how many. */
#define OP_SEAL_KEY_LEN 32
cm_err registry_operators_open(sqlite3 *db, const uint8_t seal_key[OP_SEAL_KEY_LEN],
                               int *sealed_now, registry_operators **out);
void registry_operators_close(registry_operators **o);
int registry_operators_count(registry_operators *o);

/* New active operator; secret_b32 gets the TOTP secret in base32 (shown once to the operator).
 * CM_ERR_DUPLICATE if the id exists (even disposed: ids are never reused), CM_ERR_INVAL for a bad
 * id, role or a password shorter than 12 characters. */
cm_err registry_operators_add(registry_operators *o, const char *id, const char *role,
                              const char *password, char secret_b32[64]);

typedef struct op_login {
    cm_err status;           /* CM_OK, CM_ERR_DENIED, CM_ERR_REVOKED (locked out) */
    const char *reason;      /* for the audit log: ok, bad_password, bad_totp, totp_reused, ... */
    char token[65];          /* hex, on success */
    uint64_t expires_ms;
    uint64_t retry_after_ms; /* when locked out */
    op_role role;
    char source[OP_SOURCE_LEN]; /* the source the login was keyed on (see above) */
    int locked_now;          /* this failure started a lockout for this source */
    int account_locked_now;  /* this failure locked the account for every source */
    int new_source;          /* first successful login from this source */
    int unusual_hour;        /* no earlier success at this hour of day (with enough history) */
    int failure_burst;       /* 3 or more failures of this operator within a minute */
} op_login;

/* The source a login from `peer` (the ZAP peer name) is keyed on: the peer itself, except for
 * the monitor, whose `claimed` browser address (1-64 of [A-Za-z0-9.:_-]) is appended as
 * "monitor/ADDRESS". Any other peer's claimed source is ignored. */
void registry_operators_source_key(const char *peer, const char *claimed,
                                   char out[OP_SOURCE_LEN]);
/* One login attempt by operator `id` from `peer`, `claimed` being the request's source field
 * (see registry_operators_source_key). */
void registry_operators_login(registry_operators *o, const char *id, const char *password,
                              const char *totp, const char *peer, const char *claimed,
                              uint64_t now_ms, op_login *res);
/* Operator and role of a live session. CM_ERR_DENIED when unknown, expired or the operator is
 * no longer active. */
cm_err registry_operators_session(registry_operators *o, const char *token, uint64_t now_ms,
                                  char op[65], op_role *role, uint64_t *expires_ms);
cm_err registry_operators_logout(registry_operators *o, const char *token);
/* Lifecycle as for gateways; disposal wipes the password hash and TOTP secret. Ends the
 * operator's sessions unless the new state is active. */
cm_err registry_operators_set_state(registry_operators *o, const char *id, int state, int *old);
/* Each operator, in id order, and the latest access entries (newest first, at most limit),
 * optionally of one operator. */
cm_err registry_operators_each(registry_operators *o,
                               void (*fn)(void *ctx, const Suido__OperatorInfo *op), void *ctx);
cm_err registry_operators_access(registry_operators *o, const char *op, int limit,
                                 void (*fn)(void *ctx, const Suido__AccessEntry *e), void *ctx);
/* Records one access-history entry. */
void registry_operators_record(registry_operators *o, uint64_t now_ms, const char *op,
                               const char *source, const char *action, const char *result);

#endif
