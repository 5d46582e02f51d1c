/* seed_verify: writes the seed corpus of the verify fuzz target (fuzz/corpus/verify/): real
 * envelopes as a gateway publishes them, signed with the fixed test key of fuzz_keys.h and, for
 * the encrypted ones, with a session key wrapped to its RSA key. Run once by hand after a change
 * of keys or wire format (fuzz/README.md); its output is committed:
 *
 *   make fuzz-build && build/fuzz/bin/seed_verify fuzz/corpus/verify
 *
 * RSA-OAEP and the signatures are randomized, so each run writes different bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_crypto.h"
#include "fuzz_keys.h"
#include "fuzz_verify.h"
#include "suido.pb-c.h"

static cm_signer *signer;
static cm_rsa *rsa;

/* Loads a key from text through a private temporary file (the loaders read files). */
static char *key_file(const char *pem)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/seed-verify-key-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, pem, strlen(pem)) < 0)
        exit(1);
    close(fd);
    return path;
}
static const char *outdir;
static uint8_t session_key[32] = {7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                  16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static uint8_t wrapped[CM_WRAPPED_LEN];
static size_t wrapped_len;

static void die(const char *what)
{
    fprintf(stderr, "seed_verify: %s\n", what);
    exit(1);
}

/* Writes selector || SignedEnvelope(header, body) to outdir/name. */
static void emit(const char *name, unsigned kind_index, Suido__Header *h, const uint8_t *body,
                 size_t blen, int encrypt)
{
    uint8_t hdr[2048], sig[CM_SIG_MAX], ct[8192], iv[CM_GCM_IV_LEN] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
    if (encrypt) {
        h->cipher = SUIDO__CIPHER__CIPHER_AES_256_GCM;
        h->iv.data = iv;
        h->iv.len = sizeof iv;
        h->wrapped_key.data = wrapped;
        h->wrapped_key.len = wrapped_len;
    }
    size_t hlen = suido__header__pack(h, hdr);
    if (encrypt) {
        cm_aead *a = NULL;
        if (blen + CM_GCM_TAG_LEN > sizeof ct || cm_aead_new(session_key, 32, &a) != CM_OK ||
            cm_aead_seal(a, iv, hdr, hlen, body, blen, ct) != CM_OK)
            die("seal");
        cm_aead_destroy(&a);
        body = ct;
        blen += CM_GCM_TAG_LEN;
    }
    size_t slen = 0;
    if (cm_signer_sign(signer, hdr, hlen, body, blen, sig, &slen) != CM_OK)
        die("sign");
    Suido__SignedEnvelope e = SUIDO__SIGNED_ENVELOPE__INIT;
    e.header.data = hdr;
    e.header.len = hlen;
    e.body.data = (uint8_t *)body;
    e.body.len = blen;
    e.signature.data = sig;
    e.signature.len = slen;
    size_t n = suido__signed_envelope__get_packed_size(&e);
    uint8_t *out = malloc(n + 1);
    if (!out)
        die("memory");
    out[0] = (uint8_t)(kind_index << 1); /* as published: not re-signed */
    suido__signed_envelope__pack(&e, out + 1);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(out, 1, n + 1, f) != n + 1 || fclose(f) != 0)
        die(strerror(errno));
    free(out);
    /* the same bytes with the re-sign bit, the form most mutations take */
    out = malloc(n + 1);
    out[0] = (uint8_t)(kind_index << 1 | FUZZ_RESIGN);
    suido__signed_envelope__pack(&e, out + 1);
    snprintf(path, sizeof path, "%s/%s-resign", outdir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(out, 1, n + 1, f) != n + 1 || fclose(f) != 0)
        die(strerror(errno));
    free(out);
}

static Suido__Header header(Suido__Kind kind, uint64_t seq, uint32_t count)
{
    Suido__Header h = SUIDO__HEADER__INIT;
    h.version = 1;
    h.gateway_id = FUZZ_GATEWAY;
    h.boot_epoch = 3;
    h.seq = seq;
    h.timestamp_ms = FUZZ_NOW_MS - 1000;
    h.key_id = (char *)cm_signer_key_id(signer);
    h.kind = kind;
    h.reading_count = count;
    h.key_seq = 1;
    return h;
}

static size_t batch(uint8_t *buf, size_t n)
{
    static const char *names[] = {"level", "inflow", "outflow", "chlorine"};
    Suido__Reading r[4], *rp[4];
    for (size_t i = 0; i < n && i < 4; i++) {
        suido__reading__init(&r[i]);
        r[i].channel = (char *)names[i];
        r[i].value = 1.5 * (double)(i + 1);
        r[i].offset_ms = (uint32_t)(250 * i);
        r[i].quality = i == 3 ? SUIDO__QUALITY__QUALITY_UNCERTAIN : SUIDO__QUALITY__QUALITY_GOOD;
        rp[i] = &r[i];
    }
    Suido__TelemetryBatch b = SUIDO__TELEMETRY_BATCH__INIT;
    b.n_readings = n;
    b.readings = rp;
    return suido__telemetry_batch__pack(&b, buf);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: seed_verify OUTDIR");
    outdir = argv[1];
    char *path = key_file(FUZZ_EC_PRIVATE_PEM);
    cm_err rc = cm_signer_load(path, &signer);
    unlink(path);
    if (rc != CM_OK)
        die("signing key");
    path = key_file(FUZZ_RSA_PUBLIC_PEM);
    rc = cm_rsa_load_public(path, &rsa);
    unlink(path);
    if (rc != CM_OK || cm_rsa_wrap(rsa, session_key, 32, wrapped, &wrapped_len) != CM_OK)
        die("wrap key");

    uint8_t body[4096];
    size_t blen;
    Suido__Header h;

    h = header(SUIDO__KIND__KIND_DATA, 10, 3);
    blen = batch(body, 3);
    emit("data-plain", 0, &h, body, blen, 0);
    h = header(SUIDO__KIND__KIND_DATA, 11, 4);
    blen = batch(body, 4);
    emit("data-aes256", 0, &h, body, blen, 1);
    h = header(SUIDO__KIND__KIND_BACKFILL, 5, 2);
    h.timestamp_ms = FUZZ_NOW_MS - 86400000ull; /* backfill is old by nature */
    blen = batch(body, 2);
    emit("backfill-plain", 1, &h, body, blen, 0);

    Suido__ChannelDecl c1 = SUIDO__CHANNEL_DECL__INIT, c2 = SUIDO__CHANNEL_DECL__INIT;
    c1.name = "level";
    c1.unit = "m";
    c2.name = "inflow";
    c2.unit = "L/s";
    Suido__ChannelDecl *cs[] = {&c1, &c2};
    Suido__Birth b = SUIDO__BIRTH__INIT;
    b.model = "rtu-x";
    b.firmware = "1.2.3";
    b.n_channels = 2;
    b.channels = cs;
    b.site = "reservoir-01";
    h = header(SUIDO__KIND__KIND_BIRTH, 0, 0);
    blen = suido__birth__pack(&b, body);
    emit("birth-plain", 2, &h, body, blen, 0);
    b.cipher = SUIDO__CIPHER__CIPHER_AES_256_GCM;
    b.wrapped_key.data = wrapped;
    b.wrapped_key.len = wrapped_len;
    blen = suido__birth__pack(&b, body);
    emit("birth-session-key", 2, &h, body, blen, 0);

    Suido__Death d = SUIDO__DEATH__INIT;
    d.reason = "shutdown";
    h = header(SUIDO__KIND__KIND_DEATH, 0, 0);
    blen = suido__death__pack(&d, body);
    emit("death", 3, &h, body, blen, 0);

    Suido__CommandResult cr = SUIDO__COMMAND_RESULT__INIT;
    cr.command_id = "gw-fuzz-1799999990000-abcdef";
    cr.outcome = SUIDO__COMMAND_OUTCOME__OUTCOME_APPLIED;
    cr.reason = "ok";
    cr.channel = "pump1";
    cr.value = 1;
    cr.ts_ms = FUZZ_NOW_MS - 500;
    h = header(SUIDO__KIND__KIND_CMDRES, 12, 0);
    blen = suido__command_result__pack(&cr, body);
    emit("cmdres-plain", 4, &h, body, blen, 0);
    h = header(SUIDO__KIND__KIND_CMDRES, 13, 0);
    emit("cmdres-aes256", 4, &h, body, blen, 1);

    cm_signer_destroy(&signer);
    cm_rsa_destroy(&rsa);
    return 0;
}
