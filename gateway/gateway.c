/* gateway: state and publishing of one field gateway (see gateway.h): births, the readings its
 * driver submits cut into signed (and optionally encrypted) telemetry batches, the simulator's
 * attack variants, last will, ack tracking, commands (queued from Paho's thread, decided by
 * commands.c, carried out by the driver, answered with a signed command result), and with a state
 * directory the outbox (outbox.c) that keeps every batch on disk until the platform's end-to-end
 * ack covers it. */
#include "gateway.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_time.h"
#include "outbox.h"
#include "suido.pb-c.h"

#define HEADER_CAP 640         /* packed Header: ids, IV and a 256-byte wrapped key fit easily */
#define ACK_RING 2048          /* send times kept for latency; older unacked ones go untimed */
#define LAT_KEEP 65536         /* latency samples kept per gateway (reservoir sample beyond) */
#define POLL_BUDGET 16         /* publishes per poll, so one fast gateway cannot starve others */
#define SESSION_KEY_LEN 32
#define MAX_WINDOW_MS 60000    /* a batch never covers more than this much time */
#define CMD_QUEUE 16           /* commands waiting for the main thread, per gateway */
#define LIVE_MAX_AGE_MS 120000 /* a stored batch older than this is first published as backfill
                                * (the verifier takes live data within +-300 s only) */
#define RESEND_GRACE_MS 1000   /* after a reconnect, acks queued for us arrive before resends */
#define CRES_KEEP 8            /* command results kept in memory until acked (outbox mode) */
#define STALL_BASE_MS 30000    /* no ack progress this long: republish what is unacked ... */
#define STALL_MAX_MS 300000    /* ... doubling the wait each time, up to this */
#define OLD_ACKS 16            /* acks of earlier boot epochs waiting for the main thread */

/* A number of the run's seed and a gateway id (FNV-1a), to stagger gateways and seed sampling. */
static uint64_t gw_site_hash(uint64_t seed, const char *id)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const unsigned char *c = (const unsigned char *)id; *c; c++)
        h = (h ^ *c) * 1099511628211ull;
    return h;
}

static const char *const attack_names[GW_ATTACK__COUNT] = {
    "none", "tampered", "replay", "wrong-key", "skew", "malformed", "flood", "oversize",
};

int gw_attack_parse(const char *s, gw_attack *out)
{
    for (int i = 1; i < GW_ATTACK__COUNT; i++)
        if (s && strcmp(s, attack_names[i]) == 0) {
            *out = (gw_attack)i;
            return 0;
        }
    return -1;
}

const char *gw_attack_name(gw_attack a)
{
    return (unsigned)a < GW_ATTACK__COUNT ? attack_names[a] : "unknown";
}

/* The next data batch: its readings are fixed when it is taken, its envelope is (re)built when it
 * is published (again, if the session key changed meanwhile). */
typedef struct pending {
    int active;
    gw_attack attack;        /* GW_ATTACK_NONE for a legitimate batch */
    uint64_t seq;            /* 0 for a replay */
    uint64_t ts_ms;          /* header timestamp (gateway clock), before any skew */
    uint32_t n;
    int built;               /* env holds this batch's envelope */
    uint32_t built_key_seq;
    uint32_t ch[GW_MAX_BATCH];
    uint32_t off[GW_MAX_BATCH];
    double val[GW_MAX_BATCH];
    uint8_t quality[GW_MAX_BATCH];
} pending;

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

/* A command as received, waiting for the main thread. */
typedef struct cmd_msg {
    uint8_t *p;              /* malloc'd copy of the payload (NULL when empty or oversize) */
    size_t len;
} cmd_msg;

/* The result of the last decided command, until it is published. Its envelope is (re)built when
 * it is published (again, if the session key changed meanwhile), with the same seq. */
typedef struct cmd_result {
    int active;
    int built;               /* env holds this result's envelope */
    uint32_t built_key_seq;
    uint64_t seq;
    cmd_reason reason;
    char command_id[CMD_ID_MAX + 1];
    char channel[CMD_NAME_MAX + 1];
    double value;            /* in force on the actuator after the decision */
    uint64_t ts_ms;          /* gateway clock at the decision */
} cmd_result;

typedef struct seq_list {
    uint64_t *v;
    size_t n, cap;
} seq_list;

/* An ack of an earlier boot epoch (for the outbox), handed from Paho's thread. */
typedef struct old_ack {
    uint64_t epoch, seq;
} old_ack;

struct gateway {
    const gw_settings *set;
    char *id, *site, *model, *firmware, *kind;
    gw_channel *ch;          /* owned copies of the declared channels */
    size_t nch;
    gw_field field;
    uint64_t boot_epoch;
    char t_data[128], t_birth[128], t_death[128], t_ack[128], t_cmd[128], t_cmdres[128];
    char t_backfill[128];
    cm_signer *signer, *wrong_signer;
    cm_mqtt *mqtt;

    /* session encryption (set->wrap != NULL) */
    uint32_t key_seq;
    cm_aead *aead;
    uint8_t wrapped[CM_WRAPPED_LEN];
    size_t wrapped_len;
    uint8_t iv_salt[4];
    uint64_t iv_ctr;

    /* birth of the current connection */
    unsigned birth_gen;      /* connection generation the last birth was made for */
    int birth_pending;
    buf birth;

    /* schedule (monotonic) */
    uint64_t next_due_us;
    uint64_t interval_us;    /* 0 with rate 0 */

    /* readings submitted and not yet in a batch: a ring of q_cap from q_head (main thread) */
    gw_reading *q;
    size_t q_cap, q_head, q_len;
    uint64_t q_oldest_ms;    /* monotonic ms the oldest queued reading was submitted */
    uint64_t readings_refused, readings_dropped;
    size_t flush_upto;       /* gateway_flush: this many queued readings go out, full or not */

    /* sequence numbers and counters (main thread) */
    uint64_t next_seq, first_seq, last_seq, last_legit_seq;
    uint64_t batches_made, legit_sent, attacked_sent, readings_sent, births_sent, attack_drops;
    uint64_t attacks_made;
    seq_list att;            /* attacked seqs, increasing */
    pending pend;
    buf env, body, ct, replay;
    Suido__Reading rd[GW_MAX_BATCH];
    Suido__Reading *rdp[GW_MAX_BATCH];
    Suido__ChannelDecl *decl;
    Suido__ChannelDecl **declp;

    int stopped;             /* gateway_stop_taking was called */
    int key_announced;       /* a birth announced the current session key */

    /* outbox (NULL without one; main thread) */
    outbox *ob;
    buf obuf, dcopy;         /* an envelope read back; the DATA copy while BACKFILL is sealed */
    size_t rec_bound;        /* no batch record of this gateway is larger on disk */
    uint64_t first_pub;      /* highest seq of this epoch first published from the outbox */
    uint64_t ob_unpub;       /* stored batches of this epoch not yet first published */
    uint64_t ob_acked;       /* this epoch's ack as last applied to the outbox */
    int ob_full;             /* the alarm stands: no room for another batch */
    uint64_t not_taken, full_events, resent, first_as_backfill, epochs_skipped;
    uint64_t skip_below;     /* older epochs below this are not waited for in this run */
    uint64_t bar_epoch;      /* the older epoch live data waits for (0: none) */
    uint64_t bar_since_ms;   /* since when nothing moved for it (while connected) */
    uint64_t bar_ack;        /* highest ack seen for it (bar_ack_seen) */
    int bar_ack_seen;
    uint64_t bar_sent_upto;  /* highest seq of it republished in this run */
    int rs_on;               /* a republishing pass: keys from (rs_epoch, rs_seq) to rs_until */
    uint64_t rs_epoch, rs_seq, rs_until_epoch, rs_until_seq, rs_not_before_ms;
    unsigned rs_gen;         /* connection generation the last reconnect pass was for */
    uint64_t stall_ms, ack_wait_since_ms;
    uint64_t ack_gap_seq;    /* this epoch's ack is stuck below this seq (0: no such gap) */

    /* commands (main thread) */
    cmd_actuator *act;       /* owned copies of the declared actuators */
    size_t nact;
    cmd_state cst;
    cmd_keys ckeys;          /* its RSA command key (cmdwrap.key) and the cached session key */
    cm_rsa *cmd_unwrap;      /* owned; NULL when the gateway was made without one */
    cmd_result cres;
    seq_list cres_seqs;      /* every seq a command result took, increasing */
    seq_list cres_unsent;    /* those that never left */
    uint64_t cmd_applied, cmd_refused[CMD__REASONS], cres_sent;
    /* With an outbox: the results that left but are not acked yet, oldest first, their exact
     * envelopes. A result is not stored in the outbox (it is live-only: the verifier refuses a
     * late or out-of-order copy), so one lost with a connection would hold this epoch's ack
     * below its seq for ever; after a reconnect these go out again before any new live data. */
    struct {
        uint64_t seq;
        buf env;
    } kept[CRES_KEEP];
    size_t n_kept;
    int kept_resend;         /* after a reconnect: the kept results go out before live data */
    uint64_t kept_not_before_ms, kept_resent_upto, cres_resent;

    /* shared with Paho's thread */
    atomic_uint conn_gen;    /* successful connections so far */
    atomic_ullong acked_seq; /* highest seq acked for our boot epoch */
    pthread_mutex_t mu;      /* guards ring_*, lat* and the command queue (cq*, cmd_*) */
    uint64_t *ring_seq, *ring_us;
    float *lat;
    size_t n_lat;
    uint64_t lat_total, lat_rng;
    cmd_msg cq[CMD_QUEUE];   /* ring: cq_len commands from cq_head */
    size_t cq_head, cq_len;
    uint64_t cmd_received, cmd_dropped;
    atomic_uint cq_count;    /* cq_len, readable without the mutex (scheduling only) */
    old_ack oacks[OLD_ACKS]; /* acks of earlier epochs for the outbox (guarded by mu) */
    size_t n_oacks;
};

/* ------------------------------------------------------------------ small helpers */

static int buf_reserve(buf *b, size_t need)
{
    if (need <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 1024;
    while (nc < need)
        nc *= 2;
    uint8_t *p = realloc(b->p, nc);
    if (!p)
        return -1;
    b->p = p;
    b->cap = nc;
    return 0;
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static char *xstrdup(const char *s, int *fail)
{
    char *d = strdup(s ? s : "");
    if (!d)
        *fail = 1;
    return d;
}

/* Boot epoch: with a state directory max(stored + 1, now, above + 1) written back atomically
 * (temp file, fsync, rename, fsync of the directory), so it strictly increases across runs even
 * when two runs start within the same second or the clock steps back; `above` is the highest
 * epoch the outbox knows (so that an epoch file lost or restored from an old copy cannot make a
 * new run reuse an epoch whose batches are stored). */
static cm_err boot_epoch_next(const char *dir, const char *id, uint64_t above, uint64_t *out)
{
    uint64_t now = (uint64_t)time(NULL);
    *out = now;
    if (!dir)
        return CM_OK;
    char path[4096], tmp[4200];
    if (snprintf(path, sizeof path, "%s/%s.epoch", dir, id) >= (int)sizeof path)
        return CM_ERR_INVAL;
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long stored = 0;
        int ok = fscanf(f, "%llu", &stored) == 1;
        fclose(f);
        if (!ok) {
            cm_error("gw=%s path=%s error=\"unreadable boot epoch\"", id, path);
            return CM_ERR_CONFIG;
        }
        if (stored + 1 > now)
            *out = stored + 1;
    } else if (errno != ENOENT) {
        cm_error("gw=%s path=%s error=\"%s\"", id, path, strerror(errno));
        return CM_ERR_IO;
    }
    if (above && above + 1 > *out)
        *out = above + 1;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        cm_error("gw=%s path=%s error=\"%s\"", id, tmp, strerror(errno));
        return CM_ERR_IO;
    }
    char line[32];
    int n = snprintf(line, sizeof line, "%" PRIu64 "\n", *out);
    int ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        cm_error("gw=%s path=%s error=\"cannot store boot epoch: %s\"", id, path, strerror(errno));
        unlink(tmp);
        return CM_ERR_IO;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return CM_OK;
}

/* ------------------------------------------------------------------ envelopes */

/* Packs a header. iv/wrapped are set only for an encrypted body. */
static cm_err pack_header(gateway *g, Suido__Kind kind, uint64_t seq, uint64_t ts,
                          uint32_t reading_count, const uint8_t *iv, uint8_t *out, size_t *len)
{
    Suido__Header h = SUIDO__HEADER__INIT;
    h.version = 1;
    h.gateway_id = g->id;
    h.boot_epoch = g->boot_epoch;
    h.seq = seq;
    h.timestamp_ms = ts;
    h.key_id = (char *)cm_signer_key_id(g->signer);
    h.kind = kind;
    h.reading_count = reading_count;
    h.key_seq = g->key_seq;
    if (iv) {
        h.cipher = SUIDO__CIPHER__CIPHER_AES_256_GCM;
        h.iv.data = (uint8_t *)iv;
        h.iv.len = CM_GCM_IV_LEN;
        h.wrapped_key.data = g->wrapped;
        h.wrapped_key.len = g->wrapped_len;
    }
    if (suido__header__get_packed_size(&h) > HEADER_CAP)
        return CM_ERR_TOO_BIG;
    *len = suido__header__pack(&h, out);
    return CM_OK;
}

/* Signs header||body and packs the envelope into g->env. flip: index of a body byte to flip
 * after signing (tampered attack), or SIZE_MAX. */
static cm_err seal_envelope(gateway *g, cm_signer *signer, const uint8_t *hdr, size_t hlen,
                            uint8_t *body, size_t blen, size_t flip)
{
    uint8_t sig[CM_SIG_MAX];
    size_t siglen = 0;
    cm_err e = cm_signer_sign(signer, hdr, hlen, body, blen, sig, &siglen);
    if (e != CM_OK)
        return e;
    if (flip < blen)
        body[flip] ^= 0x20;
    Suido__SignedEnvelope env = SUIDO__SIGNED_ENVELOPE__INIT;
    env.header.data = (uint8_t *)hdr;
    env.header.len = hlen;
    env.body.data = body;
    env.body.len = blen;
    env.signature.data = sig;
    env.signature.len = siglen;
    size_t need = suido__signed_envelope__get_packed_size(&env);
    if (buf_reserve(&g->env, need))
        return CM_ERR_NOMEM;
    g->env.len = suido__signed_envelope__pack(&env, g->env.p);
    if (flip < blen)
        body[flip] ^= 0x20; /* leave the caller's buffer as it was */
    return CM_OK;
}

/* The path of every sequenced envelope (data, command result): packs the header of kind with
 * seq, ts and count; with a session key in use, encrypts the plaintext g->body.p[0..blen) with
 * AES-GCM (a fresh IV in the header, those exact header bytes as the AAD); then signs and packs
 * the envelope into g->env. tamper: flip one body byte after signing (tampered attack). */
static cm_err seal_body(gateway *g, Suido__Kind kind, uint64_t seq, uint64_t ts, uint32_t count,
                        size_t blen, cm_signer *signer, int tamper)
{
    uint8_t hdr[HEADER_CAP], iv[CM_GCM_IV_LEN];
    size_t hlen;
    uint8_t *body = g->body.p;
    cm_err e;
    if (g->set->wrap) {
        /* unique per key: 4 random salt bytes of the session || 64-bit message counter */
        memcpy(iv, g->iv_salt, 4);
        uint64_t c = g->iv_ctr++;
        for (int i = 0; i < 8; i++)
            iv[4 + i] = (uint8_t)(c >> (56 - 8 * i));
        /* the header is packed first, with the IV in it: those exact bytes are the AAD */
        e = pack_header(g, kind, seq, ts, count, iv, hdr, &hlen);
        if (e != CM_OK)
            return e;
        if (buf_reserve(&g->ct, blen + CM_GCM_TAG_LEN))
            return CM_ERR_NOMEM;
        e = cm_aead_seal(g->aead, iv, hdr, hlen, g->body.p, blen, g->ct.p);
        if (e != CM_OK)
            return e;
        body = g->ct.p;
        blen += CM_GCM_TAG_LEN;
    } else {
        e = pack_header(g, kind, seq, ts, count, NULL, hdr, &hlen);
        if (e != CM_OK)
            return e;
    }
    return seal_envelope(g, signer, hdr, hlen, body, blen, tamper ? blen / 2 : SIZE_MAX);
}

/* A signed envelope whose body is a packed message (birth, death); never encrypted. */
static cm_err envelope_of(gateway *g, Suido__Kind kind, const ProtobufCMessage *msg)
{
    g->pend.built = 0; /* g->env is about to hold something else */
    g->cres.built = 0;
    uint8_t hdr[HEADER_CAP];
    size_t hlen;
    cm_err e = pack_header(g, kind, 0, cm_now_ms(), 0, NULL, hdr, &hlen);
    if (e != CM_OK)
        return e;
    size_t blen = protobuf_c_message_get_packed_size(msg);
    if (buf_reserve(&g->body, blen + 1))
        return CM_ERR_NOMEM;
    blen = protobuf_c_message_pack(msg, g->body.p);
    return seal_envelope(g, g->signer, hdr, hlen, g->body.p, blen, SIZE_MAX);
}

static cm_err death_envelope(gateway *g, const char *reason)
{
    Suido__Death d = SUIDO__DEATH__INIT;
    d.reason = (char *)reason;
    return envelope_of(g, SUIDO__KIND__KIND_DEATH, &d.base);
}

/* A fresh session key: new AEAD context (key schedule once per session), wrapped to the
 * platform, a fresh IV salt. The plain key exists only on this stack frame. */
static cm_err new_session_key(gateway *g)
{
    uint8_t key[SESSION_KEY_LEN];
    cm_err e = cm_random(key, sizeof key);
    cm_aead *a = NULL;
    size_t wl = 0;
    if (e == CM_OK)
        e = cm_aead_new(key, sizeof key, &a);
    if (e == CM_OK)
        e = cm_rsa_wrap(g->set->wrap, key, sizeof key, g->wrapped, &wl);
    if (e == CM_OK)
        e = cm_random(g->iv_salt, sizeof g->iv_salt);
    explicit_bzero(key, sizeof key);
    if (e != CM_OK) {
        cm_aead_destroy(&a);
        return e;
    }
    cm_aead_destroy(&g->aead);
    g->aead = a;
    g->wrapped_len = wl;
    g->iv_ctr = 0;
    g->key_seq++;
    return CM_OK;
}

/* A birth after every (re)connect, with a fresh session key under --encrypt — unless the
 * current key has not been announced yet (the outbox sealed batches under it before the first
 * connection): then this birth announces it. */
static cm_err make_birth(gateway *g)
{
    if (g->set->wrap && (!g->aead || g->key_announced)) {
        cm_err e = new_session_key(g);
        if (e != CM_OK)
            return e;
    }
    Suido__Birth b = SUIDO__BIRTH__INIT;
    b.model = g->model;
    b.firmware = g->firmware;
    b.site = g->site;
    b.n_channels = g->nch;
    b.channels = g->declp;
    if (g->set->wrap) {
        b.cipher = SUIDO__CIPHER__CIPHER_AES_256_GCM;
        b.wrapped_key.data = g->wrapped;
        b.wrapped_key.len = g->wrapped_len;
    }
    cm_err e = envelope_of(g, SUIDO__KIND__KIND_BIRTH, &b.base);
    if (e != CM_OK)
        return e;
    if (buf_reserve(&g->birth, g->env.len))
        return CM_ERR_NOMEM;
    memcpy(g->birth.p, g->env.p, g->env.len);
    g->birth.len = g->env.len;
    g->key_announced = 1;
    return CM_OK;
}

static cm_err build_data_kind(gateway *g, Suido__Kind kind);

/* Data envelope of the pending batch into g->env, with the batch's attack applied. */
static cm_err build_data(gateway *g)
{
    return build_data_kind(g, SUIDO__KIND__KIND_DATA);
}

/* The pending batch's envelope of kind DATA or BACKFILL (same epoch, seq, timestamp, readings)
 * into g->env, with the batch's attack applied. */
static cm_err build_data_kind(gateway *g, Suido__Kind kind)
{
    pending *p = &g->pend;
    const gw_settings *set = g->set;
    if (p->attack == GW_ATTACK_REPLAY) {
        if (buf_reserve(&g->env, g->replay.len))
            return CM_ERR_NOMEM;
        memcpy(g->env.p, g->replay.p, g->replay.len);
        g->env.len = g->replay.len;
        return CM_OK;
    }
    if (p->attack == GW_ATTACK_MALFORMED && g->attacks_made % 2 == 1) {
        /* random bytes of a random length: not even a protobuf */
        uint8_t r[2];
        if (cm_random(r, 2) != CM_OK)
            return CM_ERR_CRYPTO;
        size_t n = 1 + (((size_t)r[0] << 8 | r[1]) % 400);
        if (buf_reserve(&g->env, n) || cm_random(g->env.p, n) != CM_OK)
            return CM_ERR_CRYPTO;
        g->env.len = n;
        return CM_OK;
    }

    /* body: the packed batch (or, for oversize, filler past the broker's limit) */
    size_t blen;
    if (p->attack == GW_ATTACK_OVERSIZE) {
        blen = GW_OVERSIZE_BYTES + 100;
        if (buf_reserve(&g->body, blen))
            return CM_ERR_NOMEM;
        for (size_t i = 0; i < blen; i++)
            g->body.p[i] = (uint8_t)(i * 131u + 7u);
    } else {
        for (uint32_t i = 0; i < p->n; i++) {
            g->rd[i].channel = (char *)g->ch[p->ch[i]].name;
            g->rd[i].value = p->val[i];
            g->rd[i].offset_ms = p->off[i];
            g->rd[i].quality = (Suido__Quality)p->quality[i];
        }
        Suido__TelemetryBatch tb = SUIDO__TELEMETRY_BATCH__INIT;
        tb.n_readings = p->n;
        tb.readings = g->rdp;
        blen = suido__telemetry_batch__get_packed_size(&tb);
        if (buf_reserve(&g->body, blen + 1))
            return CM_ERR_NOMEM;
        blen = suido__telemetry_batch__pack(&tb, g->body.p);
    }

    uint64_t ts = p->ts_ms;
    if (p->attack == GW_ATTACK_SKEW)
        ts = (uint64_t)((int64_t)ts + (int64_t)set->skew_s * 1000);
    cm_signer *signer = p->attack == GW_ATTACK_WRONG_KEY ? g->wrong_signer : g->signer;
    cm_err e = seal_body(g, kind, p->seq, ts, p->n, blen, signer, p->attack == GW_ATTACK_TAMPERED);
    if (e != CM_OK)
        return e;
    if (p->attack == GW_ATTACK_MALFORMED)
        g->env.len /= 2; /* a valid envelope cut in half */
    return CM_OK;
}

/* Envelope of the pending command result into g->env: the packed CommandResult, sealed like a
 * data batch (encrypted under the session key when one is in use) with the result's own seq. */
static cm_err build_cmdres(gateway *g)
{
    cmd_result *r = &g->cres;
    g->pend.built = 0; /* g->env is about to hold something else */
    Suido__CommandResult cr = SUIDO__COMMAND_RESULT__INIT;
    cr.command_id = r->command_id;
    cr.outcome = r->reason == CMD_OK       ? SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED
                 : r->reason == CMD_FAILED ? SUIDO__COMMAND_OUTCOME__OUTCOME_FAILED
                                           : SUIDO__COMMAND_OUTCOME__OUTCOME_REFUSED;
    cr.reason = (char *)cmd_reason_name(r->reason);
    cr.channel = r->channel;
    cr.value = r->value;
    cr.ts_ms = r->ts_ms;
    size_t blen = suido__command_result__get_packed_size(&cr);
    if (buf_reserve(&g->body, blen + 1))
        return CM_ERR_NOMEM;
    blen = suido__command_result__pack(&cr, g->body.p);
    return seal_body(g, SUIDO__KIND__KIND_CMDRES, r->seq, cm_now_ms(), 0, blen, g->signer, 0);
}

/* ------------------------------------------------------------------ MQTT callbacks (Paho) */

static void record_latency(gateway *g, double ms)
{
    g->lat_total++;
    if (g->n_lat < LAT_KEEP) {
        g->lat[g->n_lat++] = (float)ms;
        return;
    }
    /* reservoir sampling keeps an unbiased sample of every measurement */
    g->lat_rng = g->lat_rng * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t j = (g->lat_rng >> 11) % g->lat_total;
    if (j < LAT_KEEP)
        g->lat[j] = (float)ms;
}

/* A command arrived (Paho's thread): copy it into the queue for the main thread, which decides
 * on it in gateway_poll. Never blocks Paho: a full queue drops the command, with a log line and
 * a counter. An oversize payload is queued without its bytes and decided as malformed. */
static void enqueue_command(gateway *g, const void *payload, size_t len)
{
    cmd_msg m = {NULL, 0};
    int nomem = 0;
    if (len > 0 && len <= CMD_MAX_PAYLOAD) {
        if ((m.p = malloc(len)) != NULL) {
            memcpy(m.p, payload, len);
            m.len = len;
        } else
            nomem = 1;
    }
    pthread_mutex_lock(&g->mu);
    g->cmd_received++;
    int full = g->cq_len == CMD_QUEUE;
    if (full || nomem)
        g->cmd_dropped++;
    else {
        g->cq[(g->cq_head + g->cq_len) % CMD_QUEUE] = m;
        g->cq_len++;
        atomic_store(&g->cq_count, (unsigned)g->cq_len);
    }
    uint64_t dropped = g->cmd_dropped;
    pthread_mutex_unlock(&g->mu);
    if (full || nomem) {
        free(m.p);
        cm_warn("gw=%s len=%zu event=command_dropped reason=%s dropped=%" PRIu64, g->id, len,
                nomem ? "out_of_memory" : "queue_full", dropped);
    }
}

/* Keeps the highest ack per earlier epoch for the main thread (Paho's thread). With more
 * epochs than slots the newest ack replaces the oldest epoch's: an ack that is lost here only
 * means the batches it covered are backfilled again and deduplicated. */
static void note_old_ack(gateway *g, uint64_t epoch, uint64_t seq)
{
    pthread_mutex_lock(&g->mu);
    size_t i = 0, low = 0;
    while (i < g->n_oacks && g->oacks[i].epoch != epoch) {
        if (g->oacks[i].epoch < g->oacks[low].epoch)
            low = i;
        i++;
    }
    if (i < g->n_oacks) {
        if (seq > g->oacks[i].seq)
            g->oacks[i].seq = seq;
    } else if (g->n_oacks < OLD_ACKS) {
        g->oacks[g->n_oacks++] = (old_ack){epoch, seq};
    } else if (epoch > g->oacks[low].epoch) {
        g->oacks[low] = (old_ack){epoch, seq};
    }
    pthread_mutex_unlock(&g->mu);
}

static int on_message(void *ctx, const char *topic, const void *payload, size_t len)
{
    gateway *g = ctx;
    if (strcmp(topic, g->t_cmd) == 0) {
        /* without a gate key we never subscribe; a subscription left in the persistent session
         * by an earlier run can still deliver, and such commands are ignored */
        if (g->set->cmd_key)
            enqueue_command(g, payload, len);
        return 1;
    }
    if (strcmp(topic, g->t_ack) != 0)
        return 1;
    Suido__Ack *a = suido__ack__unpack(NULL, len, payload);
    if (!a) {
        cm_warn("gw=%s topic=%s error=\"undecodable ack\" len=%zu", g->id, topic, len);
        return 1;
    }
    /* acks of an earlier boot epoch (queued in our persistent session, or answering a backfill)
     * concern only the outbox */
    if (g->ob && a->gateway_id && strcmp(a->gateway_id, g->id) == 0 &&
        a->boot_epoch < g->boot_epoch)
        note_old_ack(g, a->boot_epoch, a->seq);
    if (a->gateway_id && strcmp(a->gateway_id, g->id) == 0 && a->boot_epoch == g->boot_epoch) {
        uint64_t now = cm_mono_us();
        pthread_mutex_lock(&g->mu);
        uint64_t prev = atomic_load(&g->acked_seq);
        if (a->seq > prev) {
            /* only the last ACK_RING seqs can still be in the ring; counting (rather than
             * comparing with a->seq) also survives a bogus seq near UINT64_MAX */
            uint64_t count = a->seq - prev > ACK_RING ? ACK_RING : a->seq - prev;
            for (uint64_t k = 0, s = a->seq - count + 1; k < count; k++, s++) {
                size_t i = s % ACK_RING;
                if (g->ring_seq[i] == s && g->ring_us[i]) {
                    record_latency(g, (double)(now - g->ring_us[i]) / 1000.0);
                    g->ring_us[i] = 0;
                }
            }
            atomic_store(&g->acked_seq, a->seq);
        }
        pthread_mutex_unlock(&g->mu);
    }
    suido__ack__free_unpacked(a, NULL);
    return 1;
}

static void on_connected(void *ctx, int reconnect)
{
    (void)reconnect;
    gateway *g = ctx;
    /* the main thread sees the new generation and publishes a birth before any more data */
    atomic_fetch_add(&g->conn_gen, 1);
}

/* ------------------------------------------------------------------ life cycle */

/* Opens the gateway's outbox in the state directory and fixes the size bound of its records:
 * two envelopes (DATA and BACKFILL) of at most a full header, a batch body of set->batch
 * readings of the longest channel name, the GCM tag, a signature and the envelope's framing. */
static cm_err open_outbox(gateway *g)
{
    const gw_settings *set = g->set;
    size_t name_max = 0;
    for (size_t i = 0; i < g->nch; i++)
        if (strlen(g->ch[i].name) > name_max)
            name_max = strlen(g->ch[i].name);
    /* a reading: tag+len, name, tag+double, tag+varint offset; its own tag+len in the batch */
    size_t body = (size_t)set->batch * (name_max + 2 + 9 + 6 + 3) + 16;
    size_t env = HEADER_CAP + body + CM_GCM_TAG_LEN + CM_SIG_MAX + 3 * 6;
    g->rec_bound = outbox_record_size(env, env);
    cm_err e = outbox_open(set->state_dir, g->id, set->outbox_max_bytes, &g->ob);
    if (e != CM_OK) {
        cm_error("gw=%s dir=%s error=\"cannot open the outbox: %s\"", g->id, set->state_dir,
                 cm_strerror(e));
        return e;
    }
    if (g->rec_bound > set->outbox_max_bytes / 2) {
        cm_error("gw=%s max_bytes=%" PRIu64 " record_bound=%zu error=\"outbox too small for "
                 "this batch size\"",
                 g->id, set->outbox_max_bytes, g->rec_bound);
        return CM_ERR_CONFIG;
    }
    const ob_stats *st = outbox_stats(g->ob);
    cm_info("gw=%s path=%s batches=%zu bytes=%" PRIu64 " torn=%" PRIu64 " corrupt=%" PRIu64
            " event=outbox_opened",
            g->id, outbox_path(g->ob), outbox_count(g->ob), outbox_bytes(g->ob), st->torn_tail,
            st->corrupt);
    g->stall_ms = STALL_BASE_MS;
    return CM_OK;
}

cm_err gateway_new(const gw_settings *set, const gw_identity *idn, gateway **out)
{
    *out = NULL;
    if (!set || !idn || !idn->id || set->batch < 1 || set->batch > GW_MAX_BATCH ||
        set->attack_every < 1 || !idn->nch || idn->nch > GW_MAX_CHANNELS ||
        idn->nact > GW_MAX_CHANNELS || (idn->nact && !idn->field.apply) || !idn->files.cert ||
        !idn->files.key || !idn->files.sign_key || !idn->files.ca)
        return CM_ERR_INVAL;
    gateway *g = calloc(1, sizeof *g);
    if (!g)
        return CM_ERR_NOMEM;
    int fail = 0;
    g->set = set;
    g->id = xstrdup(idn->id, &fail);
    g->site = xstrdup(idn->site, &fail);
    g->model = xstrdup(idn->model, &fail);
    g->firmware = xstrdup(idn->firmware, &fail);
    g->kind = xstrdup(idn->kind, &fail);
    g->ring_seq = calloc(ACK_RING, sizeof *g->ring_seq);
    g->ring_us = calloc(ACK_RING, sizeof *g->ring_us);
    g->lat = malloc(LAT_KEEP * sizeof *g->lat);
    if (fail || !g->ring_seq || !g->ring_us || !g->lat || pthread_mutex_init(&g->mu, NULL)) {
        /* gateway_destroy needs the mutex, so nothing before this point goes through it */
        free(g->id);
        free(g->site);
        free(g->model);
        free(g->firmware);
        free(g->kind);
        free(g->ring_seq);
        free(g->ring_us);
        free(g->lat);
        free(g);
        return CM_ERR_NOMEM;
    }
    atomic_init(&g->conn_gen, 0);
    atomic_init(&g->acked_seq, 0);
    atomic_init(&g->cq_count, 0);
    g->field = idn->field;
    g->lat_rng = gw_site_hash(set->seed ^ 0x5157u, idn->id);
    /* from here on gateway_destroy frees whatever was made */
    g->nch = idn->nch;
    g->ch = calloc(g->nch, sizeof *g->ch);
    g->decl = calloc(g->nch, sizeof *g->decl);
    g->declp = calloc(g->nch, sizeof *g->declp);
    g->nact = idn->nact;
    g->act = idn->nact ? calloc(idn->nact, sizeof *g->act) : NULL;
    g->q_cap = set->queue_max ? set->queue_max : (size_t)set->batch * POLL_BUDGET * 2;
    g->q = calloc(g->q_cap, sizeof *g->q);
    if (!g->ch || !g->decl || !g->declp || (g->nact && !g->act) || !g->q) {
        gateway_destroy(&g);
        return CM_ERR_NOMEM;
    }
    for (size_t i = 0; i < g->nch; i++) {
        g->ch[i].name = xstrdup(idn->ch[i].name, &fail);
        g->ch[i].unit = xstrdup(idn->ch[i].unit, &fail);
        suido__channel_decl__init(&g->decl[i]);
        g->decl[i].name = (char *)g->ch[i].name;
        g->decl[i].unit = (char *)g->ch[i].unit;
        g->declp[i] = &g->decl[i];
    }
    for (size_t i = 0; i < g->nact; i++) {
        g->act[i] = idn->act[i];
        g->act[i].name = xstrdup(idn->act[i].name, &fail);
        g->act[i].unit = xstrdup(idn->act[i].unit, &fail);
    }
    if (fail) {
        gateway_destroy(&g);
        return CM_ERR_NOMEM;
    }
    for (int i = 0; i < GW_MAX_BATCH; i++) {
        suido__reading__init(&g->rd[i]);
        g->rdp[i] = &g->rd[i];
    }
    g->next_seq = 1;
    g->interval_us = set->rate > 0 ? (uint64_t)(1e6 / set->rate) : 0;
    if (set->rate > 0 && g->interval_us == 0)
        g->interval_us = 1;
    snprintf(g->t_data, sizeof g->t_data, "suido/v1/%s/data", g->id);
    snprintf(g->t_birth, sizeof g->t_birth, "suido/v1/%s/birth", g->id);
    snprintf(g->t_death, sizeof g->t_death, "suido/v1/%s/death", g->id);
    snprintf(g->t_ack, sizeof g->t_ack, "suido/v1/%s/ack", g->id);
    snprintf(g->t_cmd, sizeof g->t_cmd, "suido/v1/%s/cmd", g->id);
    snprintf(g->t_cmdres, sizeof g->t_cmdres, "suido/v1/%s/cmdres", g->id);
    snprintf(g->t_backfill, sizeof g->t_backfill, "suido/v1/%s/backfill", g->id);

    const gw_files *fs = &idn->files;
    cm_err e = cm_signer_load(fs->sign_key, &g->signer);
    if (e != CM_OK)
        cm_error("gw=%s path=%s error=\"cannot load signing key: %s\"", g->id, fs->sign_key,
                 cm_strerror(e));
    if (e == CM_OK && set->attack == GW_ATTACK_WRONG_KEY) {
        if (!idn->wrong_key) {
            cm_error("gw=%s error=\"wrong-key attack needs another gateway's sign.key\"", g->id);
            e = CM_ERR_CONFIG;
        } else if ((e = cm_signer_load(idn->wrong_key, &g->wrong_signer)) != CM_OK)
            cm_error("gw=%s path=%s error=\"cannot load the other key: %s\"", g->id,
                     idn->wrong_key, cm_strerror(e));
    }
    /* every command arrives encrypted to this gateway's own RSA key: without one (a gateway
     * made before command encryption) every command is refused as "decrypt", and the gate, which
     * finds no key in the registry for it, sends none */
    const char *unwrap = fs->cmd_unwrap_key;
    if (e == CM_OK && set->cmd_key) {
        if (!unwrap || access(unwrap, F_OK) != 0)
            cm_warn("gw=%s path=%s event=no_command_key detail=\"commands cannot be opened\"",
                    g->id, unwrap ? unwrap : "-");
        else if ((e = cm_rsa_load_private(unwrap, &g->cmd_unwrap)) != CM_OK)
            cm_error("gw=%s path=%s error=\"cannot load the command key: %s\"", g->id, unwrap,
                     cm_strerror(e));
        g->ckeys.unwrap = g->cmd_unwrap;
    }
    if (e == CM_OK && set->state_dir && set->outbox_max_bytes)
        e = open_outbox(g);
    if (e == CM_OK)
        e = boot_epoch_next(set->state_dir, g->id, g->ob ? outbox_max_epoch(g->ob) : 0,
                            &g->boot_epoch);
    if (e == CM_OK && g->ob && outbox_count(g->ob)) {
        /* what an earlier run left unacked is backfilled first, oldest first */
        g->rs_on = 1;
        g->rs_until_epoch = g->boot_epoch - 1;
        g->rs_until_seq = UINT64_MAX;
        cm_info("gw=%s batches=%zu oldest_epoch=%" PRIu64 " event=outbox_backfill_pending", g->id,
                outbox_count(g->ob), outbox_entry(g->ob, 0)->epoch);
    }
    /* the will is fixed at connect time, so it is signed now, with seq 0 */
    if (e == CM_OK)
        e = death_envelope(g, "connection lost");
    if (e == CM_OK) {
        cm_mqtt_opts o = {
            .uri = set->broker,
            .client_id = g->id,
            .ca_file = fs->ca,
            .cert_file = fs->cert,
            .key_file = fs->key,
            .clean_session = 0,
            .keepalive_s = 30,
            .max_inflight = set->max_inflight,
            .verify_hostname = 1,
            /* with an outbox, what was in flight when a connection is lost is resent from the
             * outbox (poll_outbox), not replayed by Paho */
            .renew_on_loss = g->ob != NULL,
            .will_topic = g->t_death,
            .will_payload = g->env.p,
            .will_len = g->env.len,
            .on_message = on_message,
            .on_connected = on_connected,
            .ctx = g,
        };
        e = cm_mqtt_new(&o, &g->mqtt);
    }
    /* like the acks: QoS 1 in the persistent session, subscribed again after every reconnect */
    if (e == CM_OK)
        e = cm_mqtt_subscribe(g->mqtt, g->t_ack, 1);
    if (e == CM_OK && set->cmd_key)
        e = cm_mqtt_subscribe(g->mqtt, g->t_cmd, 1);
    if (e != CM_OK) {
        gateway_destroy(&g);
        return e;
    }
    *out = g;
    return CM_OK;
}

cm_err gateway_start(gateway *g)
{
    /* stagger the first batches of all gateways over one interval */
    uint64_t now = cm_mono_us();
    uint64_t h = gw_site_hash(g->set->seed, g->id);
    g->next_due_us = now + (g->interval_us ? h % g->interval_us : 0);
    return cm_mqtt_connect(g->mqtt, 0);
}

/* ------------------------------------------------------------------ publishing */

/* 1 while --max-batches still allows another batch. */
static int may_take(const gateway *g)
{
    return !g->set->max_batches || g->batches_made < g->set->max_batches;
}

/* The attack the next batch carries (GW_ATTACK_NONE: legitimate). */
static gw_attack next_attack(const gateway *g)
{
    const gw_settings *set = g->set;
    uint64_t n = g->batches_made + 1;
    gw_attack a = GW_ATTACK_NONE;
    if (set->attack != GW_ATTACK_NONE && n % (uint64_t)set->attack_every == 0)
        a = set->attack;
    if (a == GW_ATTACK_REPLAY && g->replay.len == 0)
        a = GW_ATTACK_NONE; /* nothing sent yet to replay: this one goes out legitimately */
    return a;
}

static int scheduled(const gateway *g, gw_attack a)
{
    return g->interval_us && a != GW_ATTACK_FLOOD;
}

/* 1 when a batch with attack a is due at now_us. */
static int batch_due(const gateway *g, uint64_t now_us, gw_attack a)
{
    return !scheduled(g, a) || now_us >= g->next_due_us;
}

/* Uses up the batch's slot in the schedule (taken or, with a full outbox, not). */
static void consume_slot(gateway *g, uint64_t now_us, gw_attack a)
{
    if (!scheduled(g, a))
        return;
    g->next_due_us += g->interval_us;
    if (g->next_due_us <= now_us) /* fell behind (window, outage): no catch-up burst */
        g->next_due_us = now_us + g->interval_us;
}

/* How many queued readings the next batch takes (0: none is ready): a full batch, or with
 * linger_ms set what has waited that long (the batch is then cut short); the readings of one batch
 * never span more than MAX_WINDOW_MS. */
static size_t batch_ready(const gateway *g)
{
    size_t full = (size_t)g->set->batch;
    size_t n = g->q_len < full ? g->q_len : full;
    if (n == 0)
        return 0;
    if (n < full && !g->flush_upto &&
        !(g->set->linger_ms && cm_mono_ms() - g->q_oldest_ms >= g->set->linger_ms))
        return 0;
    uint64_t lo = g->q[g->q_head].ts_ms, hi = lo;
    for (size_t i = 1; i < n; i++) {
        uint64_t t = g->q[(g->q_head + i) % g->q_cap].ts_ms;
        uint64_t nlo = t < lo ? t : lo, nhi = t > hi ? t : hi;
        if (nhi - nlo > MAX_WINDOW_MS)
            return i;
        lo = nlo;
        hi = nhi;
    }
    return n;
}

/* Fixes the next batch into g->pend: attack a, sequence number, and the first n queued readings
 * (the header carries the earliest time, each reading its offset from it). */
static void fill_batch(gateway *g, gw_attack a, size_t n)
{
    g->batches_made++;
    pending *p = &g->pend;
    p->active = 1;
    p->built = 0;
    p->attack = a;
    p->seq = a == GW_ATTACK_REPLAY ? 0 : g->next_seq++;
    if (a != GW_ATTACK_NONE)
        g->attacks_made++;
    uint64_t start = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        uint64_t t = g->q[(g->q_head + i) % g->q_cap].ts_ms;
        if (t < start)
            start = t;
    }
    p->ts_ms = start;
    p->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        const gw_reading *r = &g->q[(g->q_head + i) % g->q_cap];
        p->ch[i] = r->channel;
        p->off[i] = (uint32_t)(r->ts_ms - start);
        p->val[i] = r->value;
        p->quality[i] = (uint8_t)r->quality;
    }
}

/* The first n queued readings are in a batch that was kept: they leave the queue. */
static void consume_queued(gateway *g, size_t n)
{
    g->q_head = (g->q_head + n) % g->q_cap;
    g->q_len -= n;
    g->flush_upto = g->flush_upto > n ? g->flush_upto - n : 0;
    if (g->q_len)
        g->q_oldest_ms = cm_mono_ms(); /* the rest starts its own wait */
}

/* Fixes the next batch when one is due (attack choice, sequence number, readings); 0 when
 * nothing is due or no batch of readings is ready. */
static int take_batch(gateway *g, uint64_t now_us)
{
    if (!may_take(g))
        return 0;
    gw_attack a = next_attack(g);
    if (!batch_due(g, now_us, a))
        return 0;
    size_t n = batch_ready(g);
    if (!n)
        return 0;
    consume_slot(g, now_us, a);
    fill_batch(g, a, n);
    consume_queued(g, n);
    return 1;
}

size_t gateway_submit(gateway *g, const gw_reading *r, size_t n)
{
    size_t taken = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].channel >= g->nch || !isfinite(r[i].value) ||
            (unsigned)r[i].quality > GW_QUALITY_BAD) {
            if (g->readings_refused++ == 0)
                cm_warn("gw=%s channel=%u event=reading_refused detail=\"unknown channel, "
                        "non-finite value or bad quality code\"",
                        g->id, r[i].channel);
            continue;
        }
        if (g->q_len == g->q_cap) {
            g->readings_dropped += n - i;
            break;
        }
        if (g->q_len == 0)
            g->q_oldest_ms = cm_mono_ms();
        g->q[(g->q_head + g->q_len) % g->q_cap] = r[i];
        g->q_len++;
        taken++;
    }
    return taken;
}

void gateway_flush(gateway *g) { g->flush_upto = g->q_len; }

size_t gateway_wanted(const gateway *g)
{
    if (g->stopped || !may_take(g) || (!g->ob && g->pend.active))
        return 0;
    if (!batch_due(g, cm_mono_us(), next_attack(g)))
        return 0;
    uint64_t batches = g->interval_us ? 1 : POLL_BUDGET;
    if (g->ob && !g->interval_us) {
        /* unpaced, with an outbox: only as fast as what is stored drains into the window */
        uint64_t window = (uint64_t)g->set->max_inflight;
        uint64_t room = g->ob_unpub < window ? window - g->ob_unpub : 0;
        if (room < batches)
            batches = room;
    }
    if (g->set->max_batches && g->set->max_batches - g->batches_made < batches)
        batches = g->set->max_batches - g->batches_made;
    size_t want = (size_t)batches * (size_t)g->set->batch;
    if (want > g->q_cap)
        want = g->q_cap;
    return want > g->q_len ? want - g->q_len : 0;
}

/* Appends seq to a report list (what a list is for says its caller). */
static void note_seq(gateway *g, seq_list *l, const char *what, uint64_t seq)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        uint64_t *p = realloc(l->v, nc * sizeof *p);
        if (!p) {
            cm_error("gw=%s error=\"out of memory recording %s seq %" PRIu64 "\"", g->id, what,
                     seq);
            return;
        }
        l->v = p;
        l->cap = nc;
    }
    l->v[l->n++] = seq;
}

/* Number of entries <= x in an increasing list. */
static size_t count_le(const seq_list *l, uint64_t x)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->v[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A legitimate batch with seq and n readings has left (first publish). */
static void legit_published(gateway *g, uint64_t seq, uint32_t n)
{
    if (!g->first_seq)
        g->first_seq = seq;
    g->last_seq = seq;
    g->legit_sent++;
    g->readings_sent += n;
    g->last_legit_seq = seq;
}

/* The pending batch has left (published, or an attack the client refused): account for it. */
static void batch_done(gateway *g, int published)
{
    pending *p = &g->pend;
    if (p->attack == GW_ATTACK_NONE) {
        legit_published(g, p->seq, p->n);
    } else {
        if (p->seq) {
            if (!g->first_seq)
                g->first_seq = p->seq;
            g->last_seq = p->seq;
            note_seq(g, &g->att, "attacked", p->seq);
        }
        if (published)
            g->attacked_sent++;
        else
            g->attack_drops++;
    }
    p->active = 0;
}

/* Remembers when seq was handed to MQTT, for its ack latency. Called before publishing: the ack
 * may come back before cm_mqtt_publish returns. */
static void note_send_time(gateway *g, uint64_t seq)
{
    pthread_mutex_lock(&g->mu);
    g->ring_seq[seq % ACK_RING] = seq;
    g->ring_us[seq % ACK_RING] = cm_mono_us();
    pthread_mutex_unlock(&g->mu);
}

/* Publishes the pending batch. CM_ERR_UNAVAILABLE: try again later. */
static cm_err send_pending(gateway *g)
{
    pending *p = &g->pend;
    if (!p->built || (g->set->wrap && p->built_key_seq != g->key_seq)) {
        cm_err e = build_data(g);
        if (e != CM_OK) {
            cm_error("gw=%s seq=%" PRIu64 " error=\"cannot build batch: %s\"", g->id, p->seq,
                     cm_strerror(e));
            return e;
        }
        p->built = 1;
        p->built_key_seq = g->key_seq;
    }
    if (p->attack == GW_ATTACK_NONE)
        note_send_time(g, p->seq);
    /* QoS 0 for the oversize attack: the broker drops the connection over it, and a QoS 1
     * message would be resent on every reconnect of the persistent session */
    int qos = p->attack == GW_ATTACK_OVERSIZE ? 0 : 1;
    cm_err e = cm_mqtt_publish(g->mqtt, g->t_data, g->env.p, g->env.len, qos, 0);
    if (e == CM_OK) {
        if (p->attack == GW_ATTACK_NONE && g->set->attack == GW_ATTACK_REPLAY &&
            buf_reserve(&g->replay, g->env.len) == 0) {
            memcpy(g->replay.p, g->env.p, g->env.len);
            g->replay.len = g->env.len;
        }
        batch_done(g, 1);
        return CM_OK;
    }
    if (e != CM_ERR_UNAVAILABLE && p->attack != GW_ATTACK_NONE) {
        /* an attack the client itself refuses is counted as dropped, never retried forever */
        cm_warn("gw=%s seq=%" PRIu64 " attack=%s error=\"publish refused: %s\"", g->id, p->seq,
                gw_attack_name(p->attack), cm_strerror(e));
        batch_done(g, 0);
        return CM_OK;
    }
    return e; /* a legitimate batch stays pending until it goes out */
}

/* ------------------------------------------------------------------ commands (main thread) */

static int can_publish(const gateway *g)
{
    return cm_mqtt_is_connected(g->mqtt) && cm_mqtt_inflight(g->mqtt) < g->set->max_inflight;
}

/* The oldest queued command into *m (the caller frees m->p); 0 when none waits. */
static int dequeue_command(gateway *g, cmd_msg *m)
{
    pthread_mutex_lock(&g->mu);
    int got = g->cq_len > 0;
    if (got) {
        *m = g->cq[g->cq_head];
        g->cq[g->cq_head] = (cmd_msg){NULL, 0};
        g->cq_head = (g->cq_head + 1) % CMD_QUEUE;
        g->cq_len--;
        atomic_store(&g->cq_count, (unsigned)g->cq_len);
    }
    pthread_mutex_unlock(&g->mu);
    return got;
}

/* Decides on one command, acts on it if accepted (the signal model shows it from the next scan),
 * and makes its result pending with the next sequence number. Only called when no data batch
 * holds a sequence number, so results and batches leave in the order of their numbers. */
static void decide_command(gateway *g, const cmd_msg *m)
{
    cmd_decision d;
    uint64_t now = cm_now_ms();
    /* an oversize payload was queued without its bytes: cmd_check refuses it as malformed */
    cmd_check(&g->cst, g->set->cmd_key, &g->ckeys, g->id, now, g->act, g->nact, m->p, m->len,
              &d);
    double in_force = NAN;
    if (d.reason == CMD_OK) {
        /* verified: the driver carries it out within its own limits and reads it back */
        d.reason = g->field.apply(g->field.ctx, (size_t)d.actuator, d.value, &in_force);
        if ((unsigned)d.reason >= CMD__REASONS)
            d.reason = CMD_FAILED;
    } else if (d.actuator >= 0 && g->field.current)
        in_force = g->field.current(g->field.ctx, (size_t)d.actuator);
    if (d.reason == CMD_OK)
        g->cmd_applied++;
    else
        g->cmd_refused[d.reason]++;
    cmd_result *r = &g->cres;
    memset(r, 0, sizeof *r);
    r->active = 1;
    r->seq = g->next_seq++;
    r->reason = d.reason;
    snprintf(r->command_id, sizeof r->command_id, "%s", d.command_id);
    snprintf(r->channel, sizeof r->channel, "%s", d.channel);
    /* the platform takes finite values only: an unknown value in force is reported as 0, and
     * the reason (a refusal before any actuator was named, or "failed") says it is not known */
    r->value = isfinite(in_force) ? in_force : 0.0;
    r->ts_ms = now;
    /* the strings of a decision are restricted to printable ASCII without quotes: safe to log */
    if (d.reason == CMD_OK)
        cm_info("gw=%s command=%s channel=%s value=%g in_force=%g seq=%" PRIu64
                " event=command_applied",
                g->id, d.command_id, d.channel, d.value, in_force, r->seq);
    else if (d.reason == CMD_FAILED)
        cm_error("gw=%s command=%s channel=%s value=%g in_force=%g seq=%" PRIu64
                 " event=command_failed alarm=1",
                 g->id, d.command_id, d.channel, d.value, in_force, r->seq);
    else
        cm_warn("gw=%s command=%s channel=%s len=%zu reason=%s seq=%" PRIu64
                " event=command_refused",
                g->id, d.command_id[0] ? d.command_id : "-", d.channel[0] ? d.channel : "-",
                m->len, cmd_reason_name(d.reason), r->seq);
}

/* The pending result has left, or never will: account for its seq either way. */
static void cmdres_done(gateway *g, int published)
{
    note_seq(g, &g->cres_seqs, "cmdres", g->cres.seq);
    if (published)
        g->cres_sent++;
    else
        note_seq(g, &g->cres_unsent, "unsent cmdres", g->cres.seq);
    g->cres.active = 0;
}

/* Drops the oldest kept result; its buffer goes to the end, for reuse. */
static void drop_oldest_kept(gateway *g)
{
    buf b = g->kept[0].env;
    memmove(&g->kept[0], &g->kept[1], (CRES_KEEP - 1) * sizeof g->kept[0]);
    g->kept[CRES_KEEP - 1].env = b;
    g->n_kept--;
}

/* Keeps the result just published (g->env) until an ack covers it. */
static void keep_cmdres(gateway *g, uint64_t seq)
{
    if (g->n_kept == CRES_KEEP) {
        /* never with a live platform (results are rare and acked within a second) */
        cm_warn("gw=%s seq=%" PRIu64 " event=command_result_not_kept alarm=1", g->id,
                g->kept[0].seq);
        drop_oldest_kept(g);
    }
    buf *b = &g->kept[g->n_kept].env;
    if (buf_reserve(b, g->env.len)) {
        cm_error("gw=%s seq=%" PRIu64 " error=\"out of memory keeping a command result\"", g->id,
                 seq);
        return;
    }
    memcpy(b->p, g->env.p, g->env.len);
    b->len = g->env.len;
    g->kept[g->n_kept++].seq = seq;
}

/* Forgets the kept results an ack of this epoch up to acked_seq covers. */
static void unkeep_cmdres(gateway *g, uint64_t acked_seq)
{
    while (g->n_kept && g->kept[0].seq <= acked_seq)
        drop_oldest_kept(g);
}

/* After a reconnect, once the acks queued for us had their grace: the kept results again, in
 * seq order, before any new live data (the verifier takes a live envelope only above the last
 * seq it saw). Returns the number handed to MQTT; kept_resend ends when all have left. */
static int resend_kept(gateway *g, uint64_t now_ms)
{
    int sent = 0;
    if (now_ms < g->kept_not_before_ms)
        return 0;
    for (size_t i = 0; i < g->n_kept; i++) {
        uint64_t seq = g->kept[i].seq;
        if (seq <= g->kept_resent_upto)
            continue;
        if (!can_publish(g))
            return sent;
        const buf *b = &g->kept[i].env;
        cm_err e = cm_mqtt_publish(g->mqtt, g->t_cmdres, b->p, b->len, 1, 0);
        if (e == CM_ERR_UNAVAILABLE)
            return sent; /* the window: next poll */
        if (e != CM_OK) {
            cm_error("gw=%s seq=%" PRIu64 " error=\"kept command result refused: %s\"", g->id,
                     seq, cm_strerror(e));
        } else {
            cm_info("gw=%s seq=%" PRIu64 " event=command_result_resent", g->id, seq);
            g->cres_resent++;
            sent++;
        }
        g->kept_resent_upto = seq;
    }
    g->kept_resend = 0;
    return sent;
}

/* Publishes the pending command result. CM_ERR_UNAVAILABLE: try again later (same seq). */
static cm_err send_cmdres(gateway *g)
{
    cmd_result *r = &g->cres;
    if (!r->built || (g->set->wrap && r->built_key_seq != g->key_seq)) {
        cm_err e = build_cmdres(g);
        if (e != CM_OK) {
            cm_error("gw=%s seq=%" PRIu64 " error=\"cannot build command result: %s\"", g->id,
                     r->seq, cm_strerror(e));
            cmdres_done(g, 0);
            return CM_OK;
        }
        r->built = 1;
        r->built_key_seq = g->key_seq;
    }
    cm_err e = cm_mqtt_publish(g->mqtt, g->t_cmdres, g->env.p, g->env.len, 1, 0);
    if (e == CM_ERR_UNAVAILABLE)
        return e;
    if (e != CM_OK)
        cm_error("gw=%s seq=%" PRIu64 " error=\"command result refused: %s\"", g->id, r->seq,
                 cm_strerror(e));
    else if (g->ob)
        keep_cmdres(g, r->seq);
    cmdres_done(g, e == CM_OK);
    return CM_OK;
}

/* Works through the command queue: one result at a time is pending, and the next command is
 * decided only once it has left (and only with decide set: otherwise a result already pending
 * is sent, nothing more). Returns the number of results handed to MQTT. */
static int poll_commands(gateway *g, int decide)
{
    int sent = 0;
    for (int budget = CMD_QUEUE; budget > 0; budget--) {
        if (!g->cres.active) {
            cmd_msg m;
            if (!decide || !dequeue_command(g, &m))
                break;
            decide_command(g, &m);
            free(m.p);
        }
        if (!can_publish(g) || send_cmdres(g) != CM_OK)
            break;
        sent++;
    }
    return sent;
}

/* ------------------------------------------------------------------ outbox (main thread) */

static uint64_t acked(const gateway *g);

static int key_cmp(uint64_t e1, uint64_t s1, uint64_t e2, uint64_t s2)
{
    if (e1 != e2)
        return e1 < e2 ? -1 : 1;
    return s1 < s2 ? -1 : s1 > s2;
}

/* Seals the pending legitimate batch twice — DATA, exactly as it will first be published, and
 * a BACKFILL copy with the same epoch, seq, timestamp and readings (the verifier wants the
 * header's kind to match the topic, and the signature covers the header) — and appends both to
 * the outbox, not yet synced. Before the first connection there is no session key yet under
 * --encrypt: one is made here and the first birth announces it. */
static cm_err store_batch(gateway *g)
{
    pending *p = &g->pend;
    cm_err e = CM_OK;
    if (g->set->wrap && !g->aead) {
        e = new_session_key(g);
        g->key_announced = 0;
    }
    if (e == CM_OK)
        e = build_data_kind(g, SUIDO__KIND__KIND_DATA);
    if (e == CM_OK && buf_reserve(&g->dcopy, g->env.len))
        e = CM_ERR_NOMEM;
    if (e == CM_OK) {
        memcpy(g->dcopy.p, g->env.p, g->env.len);
        g->dcopy.len = g->env.len;
        e = build_data_kind(g, SUIDO__KIND__KIND_BACKFILL);
    }
    p->built = 0; /* g->env holds the backfill copy */
    if (e == CM_OK)
        e = outbox_append(g->ob, g->boot_epoch, p->seq, p->ts_ms, g->dcopy.p, g->dcopy.len,
                          g->env.p, g->env.len);
    return e;
}

/* Takes the batches that are due into the outbox and makes them durable with one sync; only
 * then may they be published. An attacked batch is never stored: it is left in g->pend, taken
 * only when everything stored has left (seq order on the wire). A full outbox raises the alarm
 * once and skips the batch's slot (batches_not_taken) without using a sequence number; a batch
 * that cannot be stored gives its number back. live_ok: sequenced envelopes may go out now. */
static void take_into_outbox(gateway *g, uint64_t now_us, int live_ok)
{
    int taken = 0;
    uint64_t seq0 = g->next_seq;
    for (int budget = POLL_BUDGET; budget > 0 && may_take(g); budget--) {
        gw_attack a = next_attack(g);
        if (!batch_due(g, now_us, a))
            break;
        size_t n = batch_ready(g);
        if (!n)
            break;
        if (a != GW_ATTACK_NONE) {
            if (taken || g->ob_unpub || g->cres.active || !live_ok)
                break;
            consume_slot(g, now_us, a);
            fill_batch(g, a, n);
            consume_queued(g, n);
            break;
        }
        ob_room r = outbox_room(g->ob, g->rec_bound);
        if (r == OB_LATER)
            break;
        if (r == OB_FULL) {
            if (!g->ob_full) {
                g->ob_full = 1;
                g->full_events++;
                cm_warn("gw=%s path=%s batches=%zu bytes=%" PRIu64 " max_bytes=%" PRIu64
                        " event=outbox_full alarm=1",
                        g->id, outbox_path(g->ob), outbox_count(g->ob), outbox_bytes(g->ob),
                        outbox_max_bytes(g->ob));
            }
            consume_slot(g, now_us, a);
            g->not_taken++;
            break;
        }
        if (g->ob_full) {
            g->ob_full = 0;
            cm_info("gw=%s batches=%zu not_taken=%" PRIu64 " event=outbox_room_again", g->id,
                    outbox_count(g->ob), g->not_taken);
        }
        consume_slot(g, now_us, a);
        fill_batch(g, a, n);
        g->pend.active = 0;
        cm_err e = store_batch(g);
        if (e != CM_OK) { /* its readings stay queued */
            cm_error("gw=%s seq=%" PRIu64 " error=\"cannot store batch: %s\" alarm=1", g->id,
                     g->pend.seq, cm_strerror(e));
            g->next_seq--;
            g->batches_made--;
            g->not_taken++;
            break;
        }
        consume_queued(g, n);
        taken++;
    }
    if (taken && outbox_sync(g->ob) != CM_OK) {
        cm_error("gw=%s first_seq=%" PRIu64 " batches=%d error=\"outbox sync failed: batches not "
                 "taken\" alarm=1",
                 g->id, seq0, taken);
        g->next_seq = seq0;
        g->batches_made -= (uint64_t)taken;
        g->not_taken += (uint64_t)taken;
        taken = 0;
    }
    g->ob_unpub += (uint64_t)taken;
}

/* The stored envelope of e (DATA or its BACKFILL copy) into g->obuf. */
static cm_err read_stored(gateway *g, const ob_entry *e, int backfill)
{
    size_t len = backfill ? e->bf_len : e->data_len;
    if (buf_reserve(&g->obuf, len))
        return CM_ERR_NOMEM;
    return outbox_read(g->ob, e, backfill, g->obuf.p, g->obuf.cap, &g->obuf.len);
}

/* First publishes of the stored batches of this epoch, in seq order, with their original
 * bytes: as DATA while fresh, as their BACKFILL copy once older than LIVE_MAX_AGE_MS (taken
 * while the broker was out of reach or while live data waited for an older epoch), which the
 * verifier would refuse as live data. Returns the number handed to MQTT. */
static int publish_stored(gateway *g)
{
    int sent = 0;
    for (int budget = POLL_BUDGET; budget > 0 && g->ob_unpub && can_publish(g); budget--) {
        const ob_entry *e =
            outbox_entry(g->ob, outbox_find(g->ob, g->boot_epoch, g->first_pub + 1));
        if (!e || e->epoch != g->boot_epoch) {
            cm_error("gw=%s error=\"stored batches missing from the outbox index\"", g->id);
            g->ob_unpub = 0; /* cannot happen: acks never pass what has left */
            break;
        }
        uint64_t now = cm_now_ms();
        int stale = now > e->ts_ms && now - e->ts_ms > LIVE_MAX_AGE_MS;
        cm_err rc = read_stored(g, e, stale);
        if (rc != CM_OK) {
            /* the disk lost it after the sync: said loudly, and the rest still goes out */
            cm_error("gw=%s seq=%" PRIu64 " error=\"stored batch unreadable: %s\" alarm=1",
                     g->id, e->seq, cm_strerror(rc));
            g->first_pub = e->seq;
            g->ob_unpub--;
            continue;
        }
        uint64_t seq = e->seq;
        note_send_time(g, seq);
        if (cm_mqtt_publish(g->mqtt, stale ? g->t_backfill : g->t_data, g->obuf.p, g->obuf.len,
                            1, 0) != CM_OK)
            break;
        if (!stale && g->set->attack == GW_ATTACK_REPLAY &&
            buf_reserve(&g->replay, g->obuf.len) == 0) {
            memcpy(g->replay.p, g->obuf.p, g->obuf.len);
            g->replay.len = g->obuf.len;
        }
        g->first_pub = seq;
        g->ob_unpub--;
        g->first_as_backfill += (uint64_t)stale;
        legit_published(g, seq, (uint32_t)g->set->batch);
        sent++;
    }
    return sent;
}

/* Starts (or restarts from the oldest batch) a republishing pass covering every stored batch up
 * to (until_epoch, until_seq), from monotonic time not_before_ms. */
static void start_pass(gateway *g, uint64_t until_epoch, uint64_t until_seq,
                       uint64_t not_before_ms)
{
    if (!g->rs_on || key_cmp(until_epoch, until_seq, g->rs_until_epoch, g->rs_until_seq) > 0) {
        g->rs_until_epoch = until_epoch;
        g->rs_until_seq = until_seq;
    }
    g->rs_on = 1;
    g->rs_epoch = g->rs_seq = 0;
    g->rs_not_before_ms = not_before_ms;
}

/* The republishing pass: stored batches, oldest first, as their exact BACKFILL copies, only
 * while fewer than backfill_inflight publishes are in flight (live data has already had its
 * turn in this poll and keeps the rest of the window). bar: an older epoch still waiting for its
 * acks; nothing later goes out before it is done. Returns the number handed to MQTT. */
static int republish(gateway *g, uint64_t now_ms, uint64_t bar)
{
    int sent = 0;
    for (int budget = POLL_BUDGET; budget > 0 && g->rs_on && now_ms >= g->rs_not_before_ms;
         budget--) {
        if (!cm_mqtt_is_connected(g->mqtt) ||
            cm_mqtt_inflight(g->mqtt) >= g->set->backfill_inflight)
            break;
        size_t i = outbox_find(g->ob, g->rs_epoch, g->rs_seq);
        const ob_entry *e = outbox_entry(g->ob, i);
        if (e && e->epoch < g->skip_below)
            e = outbox_entry(g->ob, outbox_find(g->ob, g->skip_below, 0));
        if (!e || key_cmp(e->epoch, e->seq, g->rs_until_epoch, g->rs_until_seq) > 0 ||
            (e->epoch == g->boot_epoch && e->seq > g->first_pub)) {
            g->rs_on = 0; /* pass complete */
            break;
        }
        if (bar && e->epoch > bar)
            break; /* later epochs wait until the older one is acked (or given up) */
        uint64_t epoch = e->epoch, seq = e->seq;
        if (epoch == g->bar_epoch && seq > g->bar_sent_upto)
            g->bar_sent_upto = seq;
        if (read_stored(g, e, 1) == CM_OK) {
            if (cm_mqtt_publish(g->mqtt, g->t_backfill, g->obuf.p, g->obuf.len, 1, 0) != CM_OK)
                break;
            g->resent++;
            sent++;
        } else {
            cm_error("gw=%s epoch=%" PRIu64 " seq=%" PRIu64 " error=\"stored batch unreadable\" "
                     "alarm=1",
                     g->id, epoch, seq);
        }
        g->rs_epoch = epoch;
        g->rs_seq = seq + 1;
    }
    return sent;
}

/* Applies the acks received since the last poll: those of earlier epochs (from Paho's thread)
 * and this epoch's, which can never remove a batch that has not been published yet. */
static void apply_acks(gateway *g, uint64_t now_ms)
{
    old_ack oa[OLD_ACKS];
    pthread_mutex_lock(&g->mu);
    size_t n = g->n_oacks;
    memcpy(oa, g->oacks, n * sizeof *oa);
    g->n_oacks = 0;
    pthread_mutex_unlock(&g->mu);
    size_t removed = 0;
    for (size_t i = 0; i < n; i++) {
        size_t r = outbox_ack(g->ob, oa[i].epoch, oa[i].seq);
        removed += r;
        if (oa[i].epoch == g->bar_epoch) {
            if (!g->bar_ack_seen || oa[i].seq > g->bar_ack)
                g->bar_ack = oa[i].seq;
            g->bar_ack_seen = 1;
            if (r)
                g->bar_since_ms = now_ms;
        }
    }
    uint64_t a = acked(g);
    unkeep_cmdres(g, a);
    if (g->ack_gap_seq && a >= g->ack_gap_seq)
        g->ack_gap_seq = 0; /* it was stored after all */
    if (a > g->first_pub)
        a = g->first_pub;
    if (a > g->ob_acked) {
        removed += outbox_ack(g->ob, g->boot_epoch, a);
        g->ob_acked = a;
    }
    if (removed) {
        g->ack_wait_since_ms = now_ms;
        g->stall_ms = STALL_BASE_MS;
    }
}

/* The older boot epoch live data must wait for (0: none). The archive acknowledges only the
 * newest epoch it has seen of a gateway, so an older epoch's backfill is acked only if it is
 * stored before anything of a newer epoch: its batches go first, and this epoch's sequenced
 * envelopes wait. An epoch is given up on for this run (its batches stay stored, for the next
 * run) once every one of its batches has been republished in this run and either its acks
 * reveal a gap that no stored batch can fill (a number that never reached the archive: an
 * attacked batch, a lost command result) or backfill_hold_ms passed, connected, without any of
 * its batches being acked. */
static uint64_t barrier(gateway *g, uint64_t now_ms)
{
    for (;;) {
        size_t i = outbox_find(g->ob, g->skip_below, 0);
        const ob_entry *e = outbox_entry(g->ob, i);
        if (!e || e->epoch >= g->boot_epoch) {
            g->bar_epoch = 0;
            return 0;
        }
        if (e->epoch != g->bar_epoch) {
            g->bar_epoch = e->epoch;
            g->bar_since_ms = now_ms;
            g->bar_ack_seen = 0;
            g->bar_ack = 0;
            g->bar_sent_upto = 0;
        }
        if (!cm_mqtt_is_connected(g->mqtt))
            g->bar_since_ms = now_ms; /* an outage is not the archive's silence */
        size_t end = outbox_find(g->ob, e->epoch + 1, 0), left = end - i;
        int all_sent = g->bar_sent_upto >= outbox_entry(g->ob, end - 1)->seq;
        int gap = g->bar_ack_seen && e->seq > g->bar_ack + 1;
        if (!all_sent || (!gap && now_ms - g->bar_since_ms < g->set->backfill_hold_ms))
            return e->epoch;
        cm_warn("gw=%s epoch=%" PRIu64 " batches=%zu first_seq=%" PRIu64 " acked_seq=%" PRIu64
                " reason=%s event=backfill_epoch_given_up alarm=1",
                g->id, e->epoch, left, e->seq, g->bar_ack, gap ? "gap" : "no_ack");
        g->epochs_skipped++;
        g->skip_below = e->epoch + 1;
    }
}

/* Stored batches that are out and unacked (those of given-up epochs aside). */
static size_t waiting_acks(const gateway *g)
{
    size_t from = outbox_find(g->ob, g->skip_below, 0);
    return outbox_count(g->ob) - from - (size_t)g->ob_unpub;
}

/* No ack progress for stall_ms while connected: republish everything unacked (a loss behind the
 * broker's PUBACK: a broker or service crash), then wait twice as long before the next pass —
 * unless this epoch's ack is stuck just below a number that left but is no stored batch (an
 * attacked batch the platform refused, or a command result lost on the way, which cannot be
 * resent): the archive's contiguous ack can never pass it, republishing cannot help, and the
 * batches above it stay stored (alarm once per gap). */
static void check_stall(gateway *g, uint64_t now_ms)
{
    size_t waiting = waiting_acks(g);
    if (!waiting || !cm_mqtt_is_connected(g->mqtt)) {
        g->ack_wait_since_ms = now_ms;
        return;
    }
    if (now_ms - g->ack_wait_since_ms < g->stall_ms)
        return;
    uint64_t a = acked(g);
    const ob_entry *e = outbox_entry(g->ob, outbox_find(g->ob, g->boot_epoch, 0));
    if (e && e->epoch == g->boot_epoch && e->seq > a + 1 && a + 1 <= g->first_pub) {
        if (g->ack_gap_seq != a + 1) {
            g->ack_gap_seq = a + 1;
            cm_warn("gw=%s seq=%" PRIu64 " kind=%s batches_above=%zu event=ack_gap alarm=1",
                    g->id, a + 1,
                    count_le(&g->att, a + 1) > count_le(&g->att, a) ? "attacked"
                    : count_le(&g->cres_seqs, a + 1) > count_le(&g->cres_seqs, a)
                        ? "command_result"
                        : "unknown",
                    waiting);
        }
        g->ack_wait_since_ms = now_ms;
        return;
    }
    cm_info("gw=%s batches=%zu waited_ms=%" PRIu64 " event=acks_stalled_republishing", g->id,
            waiting, now_ms - g->ack_wait_since_ms);
    start_pass(g, g->boot_epoch, g->first_pub, now_ms);
    g->ack_wait_since_ms = now_ms;
    g->stall_ms = g->stall_ms * 2 > STALL_MAX_MS ? STALL_MAX_MS : g->stall_ms * 2;
}

/* gateway_poll with an outbox. Batches are taken on schedule whether or not the broker is
 * reachable (they wait in the outbox); everything sequenced leaves in seq order after the birth
 * of the connection; republishing comes last in each poll. */
static int poll_outbox(gateway *g, uint64_t now_ms)
{
    int sent = 0;
    /* A lost connection: start over with a new client on the same session, so that what was in
     * flight is resent once, by the republishing pass below, and not replayed by the client
     * library too (cm_mqtt_renew says why that matters). */
    if (!cm_mqtt_is_connected(g->mqtt)) {
        cm_err e = cm_mqtt_renew(g->mqtt);
        if (e != CM_OK)
            cm_error("gw=%s error=\"cannot start a new client: %s\" alarm=1", g->id,
                     cm_strerror(e));
    }
    unsigned gen = atomic_load(&g->conn_gen);
    (void)barrier(g, now_ms); /* so that acks of the epoch we wait for are recognised */
    apply_acks(g, now_ms);
    if (gen > 1 && gen != g->rs_gen) {
        /* reconnected: what left before may have been lost with the connection (or a broker
         * crash); once the acks queued for us have arrived, republish what is still unacked */
        g->rs_gen = gen;
        start_pass(g, g->boot_epoch, g->first_pub, now_ms + RESEND_GRACE_MS);
    }
    if (gen != 0 && gen != g->birth_gen) {
        cm_err e = make_birth(g);
        if (e != CM_OK)
            cm_error("gw=%s error=\"cannot make birth: %s\"", g->id, cm_strerror(e));
        else {
            g->birth_gen = gen;
            g->birth_pending = 1;
            if (g->n_kept) {
                /* results that may have been lost with the last connection go first */
                g->kept_resend = 1;
                g->kept_resent_upto = 0;
                g->kept_not_before_ms = now_ms + RESEND_GRACE_MS;
            }
        }
    }
    if (g->birth_pending &&
        cm_mqtt_publish(g->mqtt, g->t_birth, g->birth.p, g->birth.len, 1, 0) == CM_OK) {
        g->birth_pending = 0;
        g->births_sent++;
        sent++;
    }
    if (g->kept_resend && !g->birth_pending && cm_mqtt_is_connected(g->mqtt))
        sent += resend_kept(g, now_ms);
    int can_send = gen != 0 && gen == g->birth_gen && !g->birth_pending && !g->kept_resend &&
                   cm_mqtt_is_connected(g->mqtt);
    uint64_t bar = barrier(g, now_ms);
    check_stall(g, now_ms);
    int live_ok = !bar;
    for (int round = 0; round < 2; round++) {
        if (can_send && live_ok) {
            if (g->pend.active && can_publish(g) && send_pending(g) == CM_OK)
                sent++;
            if (!g->pend.active) {
                /* a pending result holds a lower seq than anything stored since; new commands
                 * are decided only once everything stored has left */
                sent += poll_commands(g, !g->stopped && !g->ob_unpub);
                if (!g->cres.active)
                    sent += publish_stored(g);
            }
        }
        if (round == 1 || g->stopped || g->pend.active)
            break;
        take_into_outbox(g, cm_mono_us(), live_ok);
    }
    if (can_send)
        sent += republish(g, now_ms, bar);
    return sent;
}

int gateway_poll(gateway *g, uint64_t now_ms)
{
    if (g->ob)
        return poll_outbox(g, now_ms);
    if (g->stopped)
        return 0;
    (void)now_ms; /* the schedule runs in microseconds */
    int sent = 0;
    unsigned gen = atomic_load(&g->conn_gen);
    if (gen == 0)
        return 0; /* never connected yet */
    if (gen != g->birth_gen) {
        cm_err e = make_birth(g);
        if (e != CM_OK) {
            cm_error("gw=%s error=\"cannot make birth: %s\"", g->id, cm_strerror(e));
            return 0;
        }
        g->birth_gen = gen;
        g->birth_pending = 1;
    }
    if (g->birth_pending) {
        cm_err e = cm_mqtt_publish(g->mqtt, g->t_birth, g->birth.p, g->birth.len, 1, 0);
        if (e != CM_OK)
            return 0;
        g->birth_pending = 0;
        g->births_sent++;
        sent++;
    }
    /* Envelopes leave in the order of their sequence numbers: the batch that already holds one
     * first, then command results, which take theirs when decided; no new batch while a result
     * waits. */
    if (g->pend.active) {
        if (!can_publish(g) || send_pending(g) != CM_OK)
            return sent;
        sent++;
    }
    sent += poll_commands(g, 1);
    if (g->cres.active)
        return sent;
    uint64_t now_us = cm_mono_us();
    for (int budget = POLL_BUDGET; budget > 0; budget--) {
        if (!g->pend.active && !take_batch(g, now_us))
            break;
        if (!can_publish(g))
            break;
        if (send_pending(g) != CM_OK)
            break;
        sent++;
    }
    return sent;
}

void gateway_stop_taking(gateway *g) { g->stopped = 1; }

size_t gateway_queued(const gateway *g) { return g->q_len; }

static uint64_t next_wake_outbox(const gateway *g, uint64_t now_ms)
{
    uint64_t w = now_ms + 50; /* acks to apply, stall and hold timers */
    if (cm_mqtt_is_connected(g->mqtt)) {
        if (g->birth_pending || atomic_load(&((gateway *)g)->conn_gen) != g->birth_gen ||
            g->pend.active || g->cres.active || (g->ob_unpub && !g->bar_epoch) ||
            (!g->stopped && atomic_load(&((gateway *)g)->cq_count)))
            w = now_ms + 1;
        if (g->rs_on) {
            /* waiting for an older epoch's acks is no reason to spin */
            uint64_t r = g->rs_not_before_ms > now_ms ? g->rs_not_before_ms
                                                      : now_ms + (g->bar_epoch ? 10 : 1);
            if (r < w)
                w = r;
        }
    }
    if (!g->stopped && may_take(g)) {
        uint64_t d;
        if (!g->interval_us && !g->set->fed_on_demand) {
            /* readings come when they are measured: wake for a batch that is ready, or for the
             * oldest reading's linger to run out; the driver's own wake-up brings the rest */
            if (batch_ready(g))
                d = now_ms + (g->ob_full ? 10 : 0);
            else if (g->q_len && g->set->linger_ms) {
                uint64_t due = g->q_oldest_ms + g->set->linger_ms, mono = cm_mono_ms();
                d = due > mono ? now_ms + (due - mono) : now_ms;
            } else
                d = UINT64_MAX;
        } else if (!g->interval_us) {
            d = now_ms + (g->ob_full ? 10 : 1);
        } else {
            uint64_t now_us = cm_mono_us();
            d = g->next_due_us <= now_us ? now_ms
                                         : now_ms + (g->next_due_us - now_us + 999) / 1000;
        }
        if (d < w)
            w = d;
    }
    return w;
}

uint64_t gateway_next_wake(const gateway *g, uint64_t now_ms)
{
    if (g->ob)
        return next_wake_outbox(g, now_ms);
    if (g->cres.active || atomic_load(&((gateway *)g)->cq_count))
        return !cm_mqtt_is_connected(g->mqtt) ? now_ms + 20 : g->cres.active ? now_ms + 1 : now_ms;
    if (gateway_done(g))
        return now_ms + 1000;
    if (!cm_mqtt_is_connected(g->mqtt))
        return now_ms + 20;
    if (g->birth_pending || g->pend.active || g->interval_us == 0 ||
        atomic_load(&((gateway *)g)->conn_gen) != g->birth_gen)
        return now_ms + 1; /* waiting for room in the window */
    uint64_t now_us = cm_mono_us();
    if (g->next_due_us <= now_us)
        return now_ms;
    return now_ms + (g->next_due_us - now_us + 999) / 1000;
}

int gateway_done(const gateway *g)
{
    return g->set->max_batches && g->batches_made >= g->set->max_batches && !g->pend.active &&
           !g->cres.active && !g->ob_unpub;
}

void gateway_goodbye(gateway *g)
{
    if (!cm_mqtt_is_connected(g->mqtt))
        return;
    if (death_envelope(g, "shutdown") == CM_OK)
        (void)cm_mqtt_publish(g->mqtt, g->t_death, g->env.p, g->env.len, 1, 0);
}

/* ------------------------------------------------------------------ accessors and report */

const char *gateway_id(const gateway *g) { return g->id; }
int gateway_connected(const gateway *g) { return cm_mqtt_is_connected(g->mqtt); }
int gateway_inflight(const gateway *g) { return cm_mqtt_inflight(g->mqtt); }
uint64_t gateway_sent(const gateway *g) { return g->legit_sent + g->attacked_sent; }
uint64_t gateway_legit_sent(const gateway *g) { return g->legit_sent; }
uint64_t gateway_readings_sent(const gateway *g) { return g->readings_sent; }

static uint64_t acked(const gateway *g)
{
    return atomic_load(&((gateway *)g)->acked_seq);
}

uint64_t gateway_acked_batches(const gateway *g)
{
    uint64_t a = acked(g);
    if (a > g->last_seq)
        a = g->last_seq;
    if (!g->first_seq || a < g->first_seq)
        return 0;
    /* attacked seqs (all >= first_seq) and command results are not legitimate batches; both
     * lists are in increasing order */
    size_t not_data = count_le(&g->att, a) + count_le(&g->cres_seqs, a) -
                      count_le(&g->cres_seqs, g->first_seq - 1);
    return a - g->first_seq + 1 - not_data;
}

int gateway_all_acked(const gateway *g)
{
    if (g->ob)
        return outbox_count(g->ob) == outbox_find(g->ob, g->skip_below, 0);
    return g->legit_sent == 0 || acked(g) >= g->last_legit_seq;
}

size_t gateway_latency_count(gateway *g)
{
    pthread_mutex_lock(&g->mu);
    size_t n = g->n_lat;
    pthread_mutex_unlock(&g->mu);
    return n;
}

size_t gateway_latencies(gateway *g, double *dst, size_t cap, uint64_t *total)
{
    pthread_mutex_lock(&g->mu);
    size_t n = g->n_lat < cap ? g->n_lat : cap;
    for (size_t i = 0; i < n; i++)
        dst[i] = g->lat[i];
    *total = g->lat_total;
    pthread_mutex_unlock(&g->mu);
    return n;
}

void gateway_command_counts(gateway *g, gw_cmd_counts *acc)
{
    pthread_mutex_lock(&g->mu);
    acc->received += g->cmd_received;
    acc->dropped += g->cmd_dropped;
    acc->pending += g->cq_len;
    pthread_mutex_unlock(&g->mu);
    acc->applied += g->cmd_applied;
    for (int i = 0; i < CMD__REASONS; i++) {
        acc->by_reason[i] += g->cmd_refused[i];
        acc->refused += g->cmd_refused[i];
    }
    acc->results_sent += g->cres_sent;
    acc->results_unsent += g->cres_unsent.n + (uint64_t)g->cres.active;
    acc->results_resent += g->cres_resent;
}

void gw_cmd_counts_json(const gw_cmd_counts *c, FILE *f)
{
    fprintf(f,
            "{\"received\":%" PRIu64 ",\"applied\":%" PRIu64 ",\"refused\":%" PRIu64
            ",\"refused_by_reason\":{",
            c->received, c->applied, c->refused);
    for (int i = CMD_OK + 1; i < CMD__REASONS; i++)
        fprintf(f, "%s\"%s\":%" PRIu64, i > CMD_OK + 1 ? "," : "", cmd_reason_name((cmd_reason)i),
                c->by_reason[i]);
    fprintf(f,
            "},\"dropped_queue_full\":%" PRIu64 ",\"pending_at_exit\":%" PRIu64
            ",\"results_sent\":%" PRIu64 ",\"results_unsent\":%" PRIu64
            ",\"results_resent\":%" PRIu64 "}",
            c->dropped, c->pending, c->results_sent, c->results_unsent, c->results_resent);
}

static void json_seqs(FILE *f, const seq_list *l, const cmd_result *extra)
{
    fputc('[', f);
    for (size_t i = 0; i < l->n; i++)
        fprintf(f, "%s%" PRIu64, i ? "," : "", l->v[i]);
    if (extra && extra->active)
        fprintf(f, "%s%" PRIu64, l->n ? "," : "", extra->seq);
    fputc(']', f);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_range(FILE *f, int *first, uint64_t epoch, uint64_t lo, uint64_t hi)
{
    fprintf(f, "%s{\"boot_epoch\":%" PRIu64 ",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64
               "}",
            *first ? "" : ",", epoch, lo, hi);
    *first = 0;
}

/* Every legitimate data batch's (epoch, seq) as ranges: with an outbox, all those ever stored
 * in it, across runs (read back from the state directory); without, this run's published ones:
 * first_seq..last_seq minus attacked and command-result seqs. */
static void json_sent_ranges(const gateway *g, FILE *f)
{
    int first = 1;
    if (g->ob) {
        const ob_range *r;
        size_t n = outbox_ranges(g->ob, &r);
        for (size_t i = 0; i < n; i++)
            json_range(f, &first, r[i].epoch, r[i].first, r[i].last);
        return;
    }
    if (!g->legit_sent)
        return;
    uint64_t cur = g->first_seq;
    size_t i = 0, j = 0;
    while (cur <= g->last_seq) {
        /* the next excluded seq: smallest of the two increasing lists' heads */
        while (i < g->att.n && g->att.v[i] < cur)
            i++;
        while (j < g->cres_seqs.n && g->cres_seqs.v[j] < cur)
            j++;
        uint64_t x = UINT64_MAX;
        if (i < g->att.n)
            x = g->att.v[i];
        if (j < g->cres_seqs.n && g->cres_seqs.v[j] < x)
            x = g->cres_seqs.v[j];
        if (x > g->last_seq) {
            json_range(f, &first, g->boot_epoch, cur, g->last_seq);
            break;
        }
        if (x > cur)
            json_range(f, &first, g->boot_epoch, cur, x - 1);
        cur = x + 1;
    }
}

void gateway_write_json(gateway *g, FILE *f)
{
    fputs("{\"id\":", f);
    json_str(f, g->id);
    fputs(",\"kind\":", f);
    json_str(f, g->kind);
    fprintf(f,
            ",\"boot_epoch\":%" PRIu64 ",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64
            ",\"legit_sent\":%" PRIu64 ",\"attacked_sent\":%" PRIu64 ",\"attacked_seqs\":[",
            g->boot_epoch, g->first_seq, g->last_seq, g->legit_sent, g->attacked_sent);
    for (size_t i = 0; i < g->att.n; i++)
        fprintf(f, "%s%" PRIu64, i ? "," : "", g->att.v[i]);
    fprintf(f,
            "],\"attack_dropped\":%" PRIu64 ",\"acked_seq\":%" PRIu64
            ",\"acked_batches\":%" PRIu64 ",\"readings_sent\":%" PRIu64
            ",\"births_sent\":%" PRIu64 ",\"key_seq\":%u,\"connections\":%u,"
            "\"unsent_at_exit\":%d",
            g->attack_drops, acked(g), gateway_acked_batches(g), g->readings_sent,
            g->births_sent, g->key_seq, atomic_load(&g->conn_gen),
            g->pend.active && g->pend.attack == GW_ATTACK_NONE);
    /* a result still pending at exit took its seq and never left: listed in both */
    fputs(",\"cmdres_seqs\":", f);
    json_seqs(f, &g->cres_seqs, &g->cres);
    fputs(",\"cmdres_unsent_seqs\":", f);
    json_seqs(f, &g->cres_unsent, &g->cres);
    gw_cmd_counts c;
    memset(&c, 0, sizeof c);
    gateway_command_counts(g, &c);
    fputs(",\"commands\":", f);
    gw_cmd_counts_json(&c, f);
    fprintf(f, ",\"batches_not_taken\":%" PRIu64 ",\"outbox_full\":%s,\"outbox\":",
            g->not_taken, g->ob_full ? "true" : "false");
    if (g->ob) {
        const ob_stats *st = outbox_stats(g->ob);
        fputs("{\"path\":", f);
        json_str(f, outbox_path(g->ob));
        fprintf(f,
                ",\"stored\":%" PRIu64 ",\"resent\":%" PRIu64 ",\"acked_removed\":%" PRIu64
                ",\"full_events\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"max_bytes\":%" PRIu64
                ",\"records\":%zu,\"unpublished\":%" PRIu64 ",\"loaded\":%" PRIu64
                ",\"first_as_backfill\":%" PRIu64 ",\"epochs_given_up\":%" PRIu64
                ",\"torn_records\":%" PRIu64 ",\"corrupt_records\":%" PRIu64
                ",\"write_errors\":%" PRIu64 ",\"ack_gap_seq\":%" PRIu64 "}",
                st->stored, g->resent, st->acked_removed, g->full_events, outbox_bytes(g->ob),
                outbox_max_bytes(g->ob), outbox_count(g->ob), g->ob_unpub, st->loaded,
                g->first_as_backfill, g->epochs_skipped, st->torn_tail, st->corrupt,
                st->write_errors, g->ack_gap_seq);
    } else {
        fputs("null", f);
    }
    fputs(",\"sent_ranges\":[", f);
    json_sent_ranges(g, f);
    fputs("]}", f);
}

void gateway_destroy(gateway **gp)
{
    if (!gp || !*gp)
        return;
    gateway *g = *gp;
    *gp = NULL;
    /* first the client: after this no Paho thread touches g */
    cm_mqtt_destroy(&g->mqtt);
    if (g->pend.active && g->pend.attack == GW_ATTACK_NONE)
        cm_warn("gw=%s seq=%" PRIu64 " event=unsent_batch_discarded", g->id, g->pend.seq);
    if (g->cres.active)
        cm_warn("gw=%s seq=%" PRIu64 " event=unsent_command_result_discarded", g->id,
                g->cres.seq);
    if (g->cq_len)
        cm_warn("gw=%s commands=%zu event=undecided_commands_discarded", g->id, g->cq_len);
    for (size_t i = 0; i < g->cq_len; i++)
        free(g->cq[(g->cq_head + i) % CMD_QUEUE].p);
    if (g->ob) {
        if (outbox_count(g->ob))
            cm_info("gw=%s batches=%zu unpublished=%" PRIu64 " event=outbox_kept", g->id,
                    outbox_count(g->ob), g->ob_unpub);
        outbox_destroy(&g->ob);
    }
    buf_free(&g->obuf);
    buf_free(&g->dcopy);
    cm_signer_destroy(&g->signer);
    cm_signer_destroy(&g->wrong_signer);
    cm_aead_destroy(&g->aead);
    cmd_keys_clear(&g->ckeys);
    cm_rsa_destroy(&g->cmd_unwrap);
    buf_free(&g->birth);
    buf_free(&g->env);
    buf_free(&g->body);
    buf_free(&g->ct);
    buf_free(&g->replay);
    pthread_mutex_destroy(&g->mu);
    free(g->att.v);
    free(g->cres_seqs.v);
    free(g->cres_unsent.v);
    for (size_t i = 0; i < CRES_KEEP; i++)
        buf_free(&g->kept[i].env);
    free(g->ring_seq);
    free(g->ring_us);
    free(g->lat);
    for (size_t i = 0; g->ch && i < g->nch; i++) {
        free((char *)g->ch[i].name);
        free((char *)g->ch[i].unit);
    }
    for (size_t i = 0; g->act && i < g->nact; i++) {
        free((char *)g->act[i].name);
        free((char *)g->act[i].unit);
    }
    free(g->ch);
    free(g->decl);
    free(g->declp);
    free(g->act);
    free(g->q);
    free(g->id);
    free(g->site);
    free(g->model);
    free(g->firmware);
    free(g->kind);
    free(g);
}
