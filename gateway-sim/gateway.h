/* gateway: one simulated field gateway — its MQTT session, signing key, optional session
 * encryption, sequence numbers, the next batch to publish and the acknowledgements it received.
 *
 * Threads: everything except the acknowledgement path runs on the simulator's main thread (the
 * signer, the AEAD context and the buffers are not shared). Paho's thread only delivers acks and
 * connection events; the state those touch is atomic or guarded by the gateway's mutex, and the
 * main thread never holds that mutex while calling into MQTT.
 *
 * Sequence contract (what the report promises): every data batch that leaves the gateway with a
 * fresh sequence number takes the next one, starting at 1 in each boot epoch. Legitimate batches
 * are published until accepted (a refusal for a full window or a lost connection only delays
 * them); attacked batches are listed by sequence number. Hence the legitimate sequence numbers
 * are exactly [first_seq, last_seq] minus attacked_seqs. A replayed envelope reuses an earlier
 * sequence number and takes none. */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H
#include <stdint.h>
#include <stdio.h>

#include "cm_crypto.h"
#include "cm_err.h"
#include "signals.h"

#define GW_MAX_BATCH 256
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
 * the gateways. */
typedef struct gw_settings {
    const char *broker;        /* "ssl://127.0.0.1:8883" */
    const char *deploy_dir;    /* DEPLOYDIR with ca/, gateways/<id>/, platform/ */
    const char *state_dir;     /* NULL: boot epoch = Unix seconds now */
    cm_rsa *wrap;              /* platform key-wrap public key; non-NULL enables encryption */
    int batch;                 /* readings per batch, 1..GW_MAX_BATCH */
    double rate;               /* batches per second; 0 = as fast as the window allows */
    uint64_t max_batches;      /* 0 = unlimited */
    gw_attack attack;
    int attack_every;          /* every Nth data batch is attacked, N >= 1 */
    int skew_s;                /* timestamp shift of the skew attack */
    uint64_t seed;             /* signal seed of the run */
    int max_inflight;          /* MQTT in-flight window per gateway */
} gw_settings;

/* One inventory entry. */
typedef struct gw_identity {
    const char *id;            /* also the MQTT client id and certificate CN */
    const char *site;
    const char *model;
    const char *firmware;
    sig_kind kind;
    const char *wrong_key;     /* sign.key of another gateway, for the wrong-key attack */
} gw_identity;

typedef struct gateway gateway;

/* Loads the gateway's keys, fixes its boot epoch (state_dir), signs its last will and creates
 * its MQTT client (no network yet). Strings in id are copied. */
cm_err gateway_new(const gw_settings *set, const gw_identity *id, gateway **out);
/* Starts connecting in the background (never blocks). */
cm_err gateway_start(gateway *g);

/* Does what is due at monotonic time now_ms: a birth after each (re)connect, then data batches
 * while they are due and the in-flight window has room. Never blocks. Returns the number of
 * messages handed to MQTT. */
int gateway_poll(gateway *g, uint64_t now_ms);
/* Monotonic ms at which gateway_poll next has work (<= now_ms: at once). */
uint64_t gateway_next_wake(const gateway *g, uint64_t now_ms);
/* 1 once max_batches data batches have left the gateway. */
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
/* 1 when every legitimate batch published so far is covered by an ack. */
int gateway_all_acked(const gateway *g);
uint64_t gateway_readings_sent(const gateway *g);

/* Copies up to cap ack-latency samples (ms) into dst; returns how many were copied. *total gets
 * the number of samples measured (which can exceed those kept). */
size_t gateway_latencies(gateway *g, double *dst, size_t cap, uint64_t *total);
size_t gateway_latency_count(gateway *g);

/* Writes the gateway's report object (see README.md). */
void gateway_write_json(gateway *g, FILE *f);

/* Disconnects (the broker publishes no will for an orderly disconnect) and frees. */
void gateway_destroy(gateway **g);

#endif
