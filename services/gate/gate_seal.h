/* gate_seal: how the command gate puts a command on the wire. Every command is encrypted to its
 * gateway (the water CPS profile's item 5: important data encrypted by itself, under a new key
 * per session, that key RSA-OAEP-2048 wrapped and sent with the data) and signed:
 *
 *   SignedCommand{header = CommandHeader{version 1, gateway_id, command_id, AES-256-GCM, a fresh
 *                 12-byte IV, the session key wrapped to the gateway's RSA command key, the
 *                 session key's id},
 *                 command = AES-256-GCM(session key, IV, AAD = header bytes, Command bytes),
 *                 signature = cm_command_sign(header, command)}
 *
 * The session key is one per (gate process, gateway): made from the system's random source on the
 * first command to that gateway, wrapped once (RSA-OAEP, SHA-256, MGF1-SHA-256) and sent with
 * every command, so that the gateway unwraps it once and caches it by its id. A gateway whose
 * RSA key changes (a new key in the registry) gets a new session key. IVs are 4 random bytes and
 * a 64-bit counter per session: never repeated under one key.
 *
 * Owns the session keys (wiped on destroy); borrows the signer. One thread (the gate's). */
#ifndef GATE_SEAL_H
#define GATE_SEAL_H
#include <stddef.h>
#include <stdint.h>

#include "cm_crypto.h"
#include "cm_err.h"
#include "suido.pb-c.h"

#define GATE_SEAL_MAX (CM_CMD_MAX + CM_CMD_HEADER_MAX + CM_SIG_MAX + 32) /* a packed command */

typedef struct gate_seal gate_seal;

/* signer: the gate's command key (borrowed, must outlive the gate_seal). NULL on no memory. */
gate_seal *gate_seal_new(cm_signer *signer);
void gate_seal_destroy(gate_seal **s);

/* Seals and signs c for its gateway c->gateway_id, whose RSA-2048 command key is to (borrowed;
 * NULL: the gateway has none, CM_ERR_KEY and nothing is made: a command is never sent in
 * clear). out (cap bytes, GATE_SEAL_MAX suffice) gets the packed SignedCommand, *len its size.
 * CM_ERR_TOO_BIG for a Command over CM_CMD_MAX, CM_ERR_CRYPTO when a primitive fails. */
cm_err gate_seal_command(gate_seal *s, cm_rsa *to, const Suido__Command *c, uint8_t *out,
                         size_t cap, size_t *len);

/* RSA wraps done (one per gateway and gateway key, for the life of the process). */
uint64_t gate_seal_wraps(const gate_seal *s);

#endif
