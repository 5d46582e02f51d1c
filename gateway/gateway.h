/* gateway: the gateway library — one field gateway's MQTT session, signing key, optional
 * session encryption, sequence numbers, the readings its driver submits and the batches cut from
 * them, the acknowledgements it received, and the commands of the command gate (validated by
 * commands.c, carried out by the driver, answered with a signed KIND_CMDRES envelope on
 * suido/v1/<gw>/cmdres). Its drivers are the field agent (gateway/agent: readings from PLCs over
 * Modbus, commands written to them) and the simulator (gateway-sim: synthetic signals, attack and
 * fault modes, many gateways per process), so the code tested end to end is the code in the field.
 *
 * Use: gateway_new with the settings, the identity (ids, key files, channels, actuators and the
 * driver's field callbacks); gateway_start; then, on one thread, gateway_submit readings as they
 * are measured and call gateway_poll until gateway_next_wake; gateway_goodbye and gateway_destroy
 * at the end.
 *
 * Batches: the readings queue in submission order; a batch is cut when `batch` readings wait, or
 * (linger_ms > 0) when the oldest has waited linger_ms, never covering more than 60 s; with a
 * rate the batches are also paced to it (the simulator's schedule). The header carries the
 * earliest reading's time, each reading its offset and quality.
 *
 * Threads: everything except the acknowledgement and command-arrival paths runs on the
 * driver's thread (the signer, the AEAD context, the reading queue and the buffers are not
 * shared). Paho's thread only delivers acks, commands and connection events: an ack updates the
 * ack state, a command is copied into a small bounded queue (a full queue drops it with a log
 * line and a counter rather than block Paho), and gateway_poll decides, acts and reports on the
 * main thread. The state Paho's thread touches is atomic or guarded by the gateway's mutex, and
 * the main thread never holds that mutex while calling into MQTT.
 *
 * Sequence contract (what the report promises): every envelope that leaves the gateway with a
 * fresh sequence number — a data batch or a command result — takes the next one, starting at 1
 * in each boot epoch, and they go out in the order of their numbers (a batch that holds a number
 * is published before a command result takes the next one, a command result before the next
 * batch). Legitimate batches are published until accepted (a refusal for a full window or a lost
 * connection only delays them); attacked batches are listed by sequence number (attacked_seqs),
 * and so are command results (cmdres_seqs; any never published also in cmdres_unsent_seqs).
 * first_seq and last_seq are the numbers of the first and last data batch (a command result may
 * lie outside them). Hence the legitimate data sequence numbers are exactly
 * [first_seq, last_seq] minus attacked_seqs minus cmdres_seqs. A replayed envelope reuses an
 * earlier sequence number and takes none; births and deaths carry seq 0.
 *
 * Outbox (state_dir and outbox_max_bytes set; see outbox.h and README.md "Outbox"): every
 * legitimate data batch is stored on disk, with a signed BACKFILL copy, and synced before it is
 * first published; it stays there until an end-to-end ack covers it. Batches are then taken on
 * schedule whether or not the broker is reachable (the outbox is the queue, published in seq
 * order), a full outbox stops taking (alarm, batches_not_taken) rather than drop anything, and
 * stored batches are republished on suido/v1/<gw>/backfill: those of earlier boot epochs at
 * start, those of this epoch after a reconnect or when acks stall. */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H
#include <stdint.h>
#include <stdio.h>

#include "cm_crypto.h"
#include "cm_err.h"
#include "commands.h"

#define GW_MAX_BATCH 256
#define GW_MAX_CHANNELS 4096
#define GW_OVERSIZE_BYTES (66 * 1024) /* body of an oversize attack: above the broker's 64 KiB */

typedef enum gw_attack {
    GW_ATTACK_NONE = 0,
    GW_ATTACK_TAMPERED,  /* signed correctly, then one body byte flipped */
    GW_ATTACK_REPLAY,    /* the exact bytes of the last legitimate data envelope, again */
    GW_ATTACK_WRONG_KEY, /* signed with another gateway's key (header still names our key) */
    GW_ATTACK_SKEW,      /* timestamp shifted by skew_s, signed correctly */
    GW_ATTACK_MALFORMED, /* alternately random bytes and a truncated envelope */
    GW_ATTACK_FLOOD,     /* legitimate-looking batches sent without waiting for the rate */
    GW_ATTACK_OVERSIZE,  /* a signed envelope bigger than the broker's message limit (QoS 0) */
    GW_ATTACK__COUNT
} gw_attack;

/* "tampered", "replay", ... -> 0 and *out; -1 for an unknown name. */
int gw_attack_parse(const char *s, gw_attack *out);
const char *gw_attack_name(gw_attack a);

/* Run-wide settings, shared read-only by every gateway; owned by the caller and must outlive
 * the gateways. attack, attack_every, skew_s and max_batches are the simulator's: a field agent
 * leaves them 0 (attack_every 1). */
typedef struct gw_settings {
    const char *broker;        /* "ssl://127.0.0.1:8883" */
    const char *state_dir;     /* NULL: boot epoch = Unix seconds now, and no outbox */
    uint64_t outbox_max_bytes; /* with state_dir: each gateway's outbox bound; 0: no outbox */
    int backfill_inflight;     /* stored batches are republished only while fewer publishes than
                                * this are in flight (live data keeps the rest of the window) */
    uint64_t backfill_hold_ms; /* live data waits this long at most for an older epoch's acks */
    cm_rsa *wrap;              /* platform key-wrap public key; non-NULL enables encryption */
    int batch;                 /* readings per batch, 1..GW_MAX_BATCH */
    uint32_t linger_ms;        /* 0: only full batches; else a short one once its oldest reading
                                * has waited this long */
    size_t queue_max;          /* readings waiting for a batch; 0: 32 batches' worth */
    int fed_on_demand;         /* 1: the driver makes readings when gateway_wanted asks (the
                                * simulator); 0: it submits them as they are measured */
    double rate;               /* batches per second; 0 = as fast as the window allows */
    uint64_t max_batches;      /* 0 = unlimited */
    gw_attack attack;
    int attack_every;          /* every Nth data batch is attacked, N >= 1 */
    int skew_s;                /* timestamp shift of the skew attack */
    uint64_t seed;             /* staggers the gateways' first batches */
    int max_inflight;          /* MQTT in-flight window per gateway */
    const cm_pubkey *cmd_key;  /* the command gate's key; NULL: no command subscription */
} gw_settings;

/* A channel the gateway declares in its birth: readings are submitted by its index. */
typedef struct gw_channel {
    const char *name;          /* as the profile knows it under the site's kind ("flow") */
    const char *unit;
} gw_channel;

typedef enum gw_quality {      /* the values of proto Quality */
    GW_QUALITY_GOOD = 0,
    GW_QUALITY_UNCERTAIN = 1,
    GW_QUALITY_BAD = 2,        /* the device did not answer: the value is not a measurement */
} gw_quality;

typedef struct gw_reading {
    uint32_t channel;          /* index into the identity's channels */
    gw_quality quality;
    uint64_t ts_ms;            /* wall clock of the measurement */
    double value;              /* finite */
} gw_reading;

/* The driver's side of commands, called on the driver's thread inside gateway_poll. apply
 * carries out a verified command (signature, gateway id, expiry, replay, actuator, unit and the
 * actuator's own range all checked) and returns CMD_OK with *in_force the value read back, a
 * refusal of its own (CMD_OUT_OF_RANGE) without touching the plant, or CMD_FAILED when the device
 * did not take it (*in_force: what was read back, NaN when unknown; the result then says 0). current (optional) gives the
 * value in force for the result of a refused command (NaN: unknown). */
typedef struct gw_field {
    cmd_reason (*apply)(void *ctx, size_t actuator, double value, double *in_force);
    double (*current)(void *ctx, size_t actuator);
    void *ctx;
} gw_field;

/* The gateway's key and certificate files (a field bundle's, or DEPLOYDIR/gateways/<id>/). */
typedef struct gw_files {
    const char *cert, *key;    /* TLS client certificate and key */
    const char *sign_key;      /* P-256 signing key */
    const char *cmd_unwrap_key;/* RSA key commands are encrypted to; NULL: none */
    const char *ca;            /* the deployment CA */
} gw_files;

/* One gateway. Strings, channels and actuators are copied. */
typedef struct gw_identity {
    const char *id;            /* also the MQTT client id and certificate CN */
    const char *site;
    const char *kind;          /* the site kind: the profile's channels are "<kind>.<channel>" */
    const char *model;
    const char *firmware;
    const gw_channel *ch;      /* 1..GW_MAX_CHANNELS */
    size_t nch;
    const cmd_actuator *act;   /* what commands may address, with the gateway's own limits */
    size_t nact;
    gw_field field;            /* apply is required when nact > 0 */
    gw_files files;
    const char *wrong_key;     /* sign.key of another gateway, for the wrong-key attack */
} gw_identity;

typedef struct gateway gateway;

/* Loads the gateway's keys, fixes its boot epoch (state_dir), signs its last will and creates
 * its MQTT client (no network yet). Strings in id are copied. */
cm_err gateway_new(const gw_settings *set, const gw_identity *id, gateway **out);
/* Starts connecting in the background (never blocks). */
cm_err gateway_start(gateway *g);

/* Queues readings for the next batches; returns how many were taken. A reading of an unknown
 * channel, with a non-finite value or quality is refused (counted, logged once); when the queue is
 * full the rest are dropped and counted (a full outbox, or a driver faster than its rate). */
size_t gateway_submit(gateway *g, const gw_reading *r, size_t n);
/* The readings queued now go into batches at the next polls, full or not (before a stop). */
void gateway_flush(gateway *g);
/* Readings submitted and not yet in a batch. */
size_t gateway_queued(const gateway *g);
/* For a driver that makes readings on demand (the simulator): how many more readings the
 * batches due now would take (0: none is due). */
size_t gateway_wanted(const gateway *g);

/* Does what is due at monotonic time now_ms: a birth after each (re)connect; then the batch that
 * already holds a sequence number, if any; then queued commands (decided, applied, answered with
 * a command result); then data batches while they are due and the in-flight window has room.
 * Never blocks. Returns the number of messages handed to MQTT. */
int gateway_poll(gateway *g, uint64_t now_ms);
/* End of the publishing phase: no more batches are taken and no commands decided. Without an
 * outbox gateway_poll then does nothing; with one it keeps publishing what is stored, applying
 * acks and republishing, so that an ack wait can empty the outbox. */
void gateway_stop_taking(gateway *g);
/* Monotonic ms at which gateway_poll next has work (<= now_ms: at once). */
uint64_t gateway_next_wake(const gateway *g, uint64_t now_ms);
/* 1 once max_batches data batches have left the gateway (and no command result waits). */
int gateway_done(const gateway *g);
/* Publishes an orderly Death{reason="shutdown"} if connected (best effort). */
void gateway_goodbye(gateway *g);

const char *gateway_id(const gateway *g);
int gateway_connected(const gateway *g);
int gateway_inflight(const gateway *g);
/* Data batches published (legitimate + attacked), and the legitimate ones alone. */
uint64_t gateway_sent(const gateway *g);
uint64_t gateway_legit_sent(const gateway *g);
/* Legitimate batches covered by the acks received so far. */
uint64_t gateway_acked_batches(const gateway *g);
/* 1 when every legitimate batch published so far is covered by an ack; with an outbox, when
 * it holds no batch any more (those of older epochs given up on in this run aside). */
int gateway_all_acked(const gateway *g);
uint64_t gateway_readings_sent(const gateway *g);

/* Copies up to cap ack-latency samples (ms) into dst; returns how many were copied. *total gets
 * the number of samples measured (which can exceed those kept). */
size_t gateway_latencies(gateway *g, double *dst, size_t cap, uint64_t *total);
size_t gateway_latency_count(gateway *g);

/* Command counters. received = applied + refused + dropped + pending. */
typedef struct gw_cmd_counts {
    uint64_t received;                 /* messages on the command topic */
    uint64_t applied;
    uint64_t refused;                  /* sum of by_reason */
    uint64_t by_reason[CMD__REASONS];  /* refusals per reason (CMD_OK stays 0) */
    uint64_t dropped;                  /* queue full (or no memory): neither decided nor answered */
    uint64_t pending;                  /* still queued, not decided yet */
    uint64_t results_sent;             /* command results accepted by the MQTT client */
    uint64_t results_unsent;           /* command results that never left */
    uint64_t results_resent;           /* kept results sent again after a reconnect (outbox) */
} gw_cmd_counts;

/* Adds this gateway's command counters to *acc. */
void gateway_command_counts(gateway *g, gw_cmd_counts *acc);
/* Writes counters as the report's "commands" object (see README.md). */
void gw_cmd_counts_json(const gw_cmd_counts *c, FILE *f);

/* Writes the gateway's report object (see README.md). */
void gateway_write_json(gateway *g, FILE *f);

/* Disconnects (the broker publishes no will for an orderly disconnect) and frees. */
void gateway_destroy(gateway **g);

#endif
