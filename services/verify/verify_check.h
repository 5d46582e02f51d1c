/* verify_check: everything the verifier decides about one message from a gateway, without
 * sockets, so that it can be tested directly and shared by the daemon and its tests.
 *
 * Order of checks (cheapest and unauthenticated first, RSA last): topic and sizes, decoding,
 * header consistency with the topic, gateway identity and state (registry), ECDSA signature
 * over header and body, freshness (time window, nothing ahead of the receive time, boot epoch
 * and sequence), decryption of the body with the session key (RSA-OAEP unwrap once per session,
 * then cached), body decoding (each reading's own time not ahead of the receive time either).
 * Nothing from the message is trusted before its signature is checked; no RSA work is done for
 * an unsigned message. Last, a data or backfill batch sent in clear may not carry a reading of a
 * channel the profile marks confidential (verify_set_confidential): "plaintext_confidential". */
#ifndef VERIFY_CHECK_H
#define VERIFY_CHECK_H
#include <stdint.h>
#include "cm_crypto.h"
#include "cm_profile.h"
#include "cm_registry.h"
#include "cm_time.h"
#include "suido.pb-c.h"

#define VERIFY_MAX_ENVELOPE 65536
#define VERIFY_MAX_HEADER 2048
#define VERIFY_MAX_READINGS 4096
/* A reading's offset from its batch's timestamp: a batch spans minutes at most, so an hour is
 * generous; more would let one reading carry a date far in the future. */
#define VERIFY_MAX_OFFSET_MS 3600000u
/* How far ahead of the platform clock (the receive time) any message's header timestamp, and any
 * reading's own time (batch timestamp + offset), may be: gateways are NTP-synced, so seconds
 * cover their drift. Anything further ahead is refused ("future_timestamp"), for every kind,
 * backfill included: a reading from the future would pin the gate's and the anomaly checker's
 * latest value until the clock caught up. The gate and the anomaly shards ignore such readings
 * too (CM_MAX_AHEAD_MS, cm_time.h), with the same default. Live data must in addition lie within
 * window_ms on either side. */
#define VERIFY_MAX_AHEAD_MS CM_MAX_AHEAD_MS

typedef cm_err (*verify_lookup_fn)(void *ctx, const char *gateway_id, const cm_gateway **out);

typedef struct verify_ctx verify_ctx;

/* unwrap_key may be NULL (then encrypted messages are refused). window_ms is the freshness
 * window for live data (300000 in production). The context starts with max_ahead_ms =
 * VERIFY_MAX_AHEAD_MS. */
verify_ctx *verify_new(cm_rsa *unwrap_key, verify_lookup_fn lookup, void *lookup_ctx,
                       uint64_t window_ms);
void verify_destroy(verify_ctx **v);
/* How far ahead of the receive time a timestamp may be (see VERIFY_MAX_AHEAD_MS). */
void verify_set_max_ahead(verify_ctx *v, uint64_t max_ahead_ms);

typedef struct verify_result {
    cm_err status;              /* CM_OK or why the message is refused */
    const char *reason;         /* short snake_case reason, static */
    char gateway_id[65];        /* from the topic, even when refused */
    char kind[16];              /* topic kind: data, backfill, birth, death, cmdres */
    Suido__Header *header;      /* decoded, when it got that far */
    Suido__TelemetryBatch *batch; /* decoded (decrypted) body of data/backfill */
    Suido__Birth *birth;        /* decoded body of birth */
    Suido__CommandResult *cmdres; /* decoded body of cmdres */
    char site[64];              /* from the registry */
    char gw_kind[32];           /* site kind from the registry */
} verify_result;

/* Checks one message as received on topic at received_ms. Fills res; the caller clears it with
 * verify_result_clear. Returns res->status. */
cm_err verify_message(verify_ctx *v, const char *topic, uint64_t received_ms,
                      const uint8_t *msg, size_t len, verify_result *res);
void verify_result_clear(verify_result *res);

/* The channels the profile in force marks `confidential = yes` (by site kind and channel name):
 * from now on a plaintext (CIPHER_NONE) data or backfill batch with a reading of one of them, on
 * a gateway of that site kind, is refused with "plaintext_confidential" (CM_ERR_DENIED). p NULL
 * empties the set. The profile is not kept. CM_ERR_NOMEM leaves the set held before. */
cm_err verify_set_confidential(verify_ctx *v, const cm_profile *p);
/* Channels in the set. */
size_t verify_confidential_count(const verify_ctx *v);

/* Sessions whose key is cached, and RSA unwraps done: the once-per-session contract is
 * measurable. */
uint64_t verify_unwraps(const verify_ctx *v);
/* Gateways whose last accepted (boot epoch, sequence) the replay table holds. */
size_t verify_replay_entries(const verify_ctx *v);

#endif
