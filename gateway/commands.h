/* commands: the gateway's decision on one command from the command gate, as a pure function of
 * the received bytes, the gate's public key, the gateway's own id, its clock, its actuators and a
 * small per-gateway memory (cmd_state) — no MQTT, no threads, so that every refusal can be tested
 * directly (commands_test.c). The gateway (gateway.c) acts on an accepted command and reports the
 * decision as a KIND_CMDRES envelope.
 *
 * Wire format (proto/suido.proto): the payload on suido/v1/<gw>/cmd is a SignedCommand
 * {header = serialized CommandHeader (cipher, IV, command id, the session key RSA-OAEP wrapped to
 * this gateway's RSA command key, its key id), command = AES-GCM ciphertext || tag of the exact
 * serialized Command with the header as AAD, signature = ECDSA P-256/SHA-256 DER over
 * "suido-cmd-v2" || 0x00 || be32(len(header)) || header || command}. Every command is encrypted:
 * every command moves the plant, so the gateway needs no profile to know which must be.
 *
 * Checks, in this order; the first that fails is the reason:
 *   malformed         payload over CMD_MAX_PAYLOAD, not a SignedCommand, empty signature or
 *                     command, unknown fields; a header that does not decode, of another
 *                     version, with a cipher other than AES-GCM or NONE, an IV not of 12 bytes, a
 *                     wrapped key not of 256 bytes, a missing or bad key_id or command_id
 *   plaintext_command no header, or cipher NONE: a command in clear is refused whoever signed it
 *   bad_signature     the signature is not valid under the gate's key (or there is no key)
 *   decrypt           the session key does not unwrap with this gateway's RSA key (or it has
 *                     none), is not the size the cipher names, or the GCM tag does not verify
 *   malformed         (again, once opened) the Command does not decode, has unknown fields, a
 *                     missing field (command_id, gateway_id, channel, unit, issued_ms,
 *                     expires_ms), a field over its length limit or with characters other than
 *                     printable ASCII without space, '"' and '\', expires_ms < issued_ms, or a
 *                     command_id other than the header's
 *   wrong_gateway     gateway_id is not this gateway's id
 *   expired           now_ms > expires_ms, or issued_ms > now_ms + CMD_MAX_SKEW_MS
 *   replayed          command_id among the last CMD_SEEN_MAX accepted ids, or issued_ms <= the
 *                     issued_ms of the last accepted command
 *   unknown_actuator  channel is not one of this site's actuators
 *   wrong_unit        unit is not that actuator's unit
 *   out_of_range      value NaN or infinite, or outside the actuator's safe range
 * No RSA work is done for a command whose signature is not the gate's. Only an accepted command
 * changes cmd_state; a refused one changes nothing. The seen-id memory is bounded: an id older
 * than the last CMD_SEEN_MAX accepted ones is forgotten, and the strictly increasing issued_ms
 * rule still refuses the exact replay of such a command. */
#ifndef GW_COMMANDS_H
#define GW_COMMANDS_H
#include <stddef.h>
#include <stdint.h>

#include "cm_crypto.h"

#define CMD_DOMAIN CM_CMD_DOMAIN      /* signed as these 12 bytes and a 0x00 (cm_crypto.h) */
#define CMD_MAX_PAYLOAD CM_CMD_MAX    /* bytes of SignedCommand; a real one is about 250 */
#define CMD_MAX_SKEW_MS 300000u       /* issued_ms may lie this far in the future */
#define CMD_SEEN_MAX 256              /* accepted command ids remembered */
#define CMD_ID_MAX 128                /* longest command_id */
#define CMD_NAME_MAX 64               /* longest gateway_id and channel */
#define CMD_UNIT_MAX 16               /* longest unit */
#define CMD_ID_HASH 16                /* bytes of SHA-256(command_id) kept per seen id */
#define CMD_KEY_ID_MAX 16             /* session key id: 16 hex chars */

typedef enum cmd_reason {
    CMD_OK = 0,
    CMD_MALFORMED,
    CMD_BAD_SIGNATURE,
    CMD_WRONG_GATEWAY,
    CMD_EXPIRED,
    CMD_REPLAYED,
    CMD_UNKNOWN_ACTUATOR,
    CMD_WRONG_UNIT,
    CMD_OUT_OF_RANGE,
    CMD_PLAINTEXT,
    CMD_DECRYPT,
    CMD_FAILED,       /* never from cmd_check: accepted, but the field device did not take it */
    CMD__REASONS
} cmd_reason;

/* "ok", "malformed", "bad_signature", ... (the CommandResult.reason strings); static. */
const char *cmd_reason_name(cmd_reason r);

/* Per-gateway memory of accepted commands. Zero-initialised (memset or calloc) it is the state
 * of a gateway that has accepted nothing yet. Owned by the caller; used by one thread. */
typedef struct cmd_state {
    uint64_t last_issued_ms;                     /* of the last accepted command, 0: none */
    uint8_t seen[CMD_SEEN_MAX][CMD_ID_HASH];     /* ring of accepted ids (hashed) */
    uint32_t n_seen;                             /* valid entries, <= CMD_SEEN_MAX */
    uint32_t next;                               /* ring slot the next accepted id goes to */
} cmd_state;

/* The gateway's RSA-2048 command key and the one session key it last unwrapped (the gate keeps
 * one session key per gateway for as long as it runs, so one entry costs one unwrap per gate
 * start). Zero-initialised with unwrap set; cmd_keys_clear frees the cached session. */
typedef struct cmd_keys {
    cm_rsa *unwrap;                 /* private, borrowed; NULL: every command is "decrypt" */
    char key_id[CMD_KEY_ID_MAX + 1]; /* of the cached session key ("" : none) */
    uint8_t wrapped_hash[32];       /* SHA-256 of the wrapped bytes it came from */
    size_t key_len;
    cm_aead *aead;                  /* owned */
    uint64_t unwraps;               /* RSA unwraps attempted */
} cmd_keys;

void cmd_keys_clear(cmd_keys *k);

/* What was decided, and what the result report needs. Strings are empty when the command did
 * not decode that far (or the field broke its limits); they only ever hold characters allowed by
 * the malformed check, so they are safe to log. */
/* One actuator a command may address: its name (the channel a command names), its unit, and the
 * range the gateway itself considers safe (inclusive), whatever the gate allowed. */
typedef struct cmd_actuator {
    const char *name;
    const char *unit;
    double lo, hi;
} cmd_actuator;

typedef struct cmd_decision {
    cmd_reason reason;
    int actuator;                     /* index into the actuator table, -1 if unknown */
    double value;                     /* the requested value (meaningful for CMD_OK) */
    char command_id[CMD_ID_MAX + 1];
    char channel[CMD_NAME_MAX + 1];
} cmd_decision;

/* Decides on the payload received on the gateway's command topic. key: the gate's public key
 * (NULL refuses everything as bad_signature); keys: this gateway's command key and session cache
 * (updated when a new session key unwraps, whatever the decision); own_id: this gateway's id;
 * now_ms: gateway wall clock; act/n_act: this gateway's actuators. On CMD_OK the
 * command's id and issued_ms are recorded in st; otherwise st is not touched. Fills *out and
 * returns its reason. */
cmd_reason cmd_check(cmd_state *st, const cm_pubkey *key, cmd_keys *keys, const char *own_id,
                     uint64_t now_ms, const cmd_actuator *act, size_t n_act,
                     const uint8_t *payload, size_t len, cmd_decision *out);

#endif
