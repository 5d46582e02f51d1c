/* Fuzz target: the verifier's path for a gateway message (services/verify/verify_check.c,
 * verify_message): topic, envelope and header decoding, registry lookup, ECDSA signature,
 * freshness and replay, session key unwrap and AES-GCM, and the body parsers of every kind.
 *
 * The lookup returns one fixed active gateway (FUZZ_GATEWAY) whose key is the fixed test key of
 * fuzz_keys.h, and the verifier holds the matching RSA unwrap key, so that the signed seeds
 * (fuzz/corpus/verify/, made by seed_verify.c) pass the signature check as they are.
 *
 * A mutated input no longer verifies, so half of the inputs (selector bit FUZZ_RESIGN) are
 * re-signed: if the bytes decode as a SignedEnvelope, its signature is replaced by a fresh one
 * over its header and body before verify_message sees them. This is how mutated headers and
 * plaintext bodies reach the checks past the signature (freshness, replay, decryption, the
 * TelemetryBatch / Birth / CommandResult parsers). An encrypted body that was mutated still
 * fails AES-GCM: the body parsers are reached through the plaintext seeds, the decryption path
 * through the encrypted ones. Inputs without the bit test the unsigned surface as an attacker
 * without the key has it.
 *
 * A crash must reproduce from its input alone, so no input may see what an earlier one left in the
 * verifier. A fresh verifier per input costs more than the check itself (its session cache and
 * replay table are megabytes), so one verifier is kept while inputs are refused and replaced
 * after every accepted one: only an accepted message leaves a trace that changes a later
 * verdict (its sequence in the replay table); a cached session key gives the same verdict as
 * unwrapping it again. */
#include <stdio.h>
#include <unistd.h>

#include "cm_crypto.h"
#include "fuzz_keys.h"
#include "fuzz_util.h"
#include "fuzz_verify.h"
#include "verify_check.h"

static cm_gateway gw;
static cm_signer *signer;
static cm_rsa *unwrap;
static verify_ctx *verifier; /* see above: replaced after every accepted input */

static cm_err lookup(void *ctx, const char *id, const cm_gateway **out)
{
    (void)ctx;
    if (strcmp(id, FUZZ_GATEWAY) != 0)
        return CM_ERR_UNKNOWN;
    *out = &gw;
    return CM_OK;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    snprintf(gw.id, sizeof gw.id, FUZZ_GATEWAY);
    gw.state = SUIDO__ENTITY_STATE__STATE_ACTIVE;
    snprintf(gw.site, sizeof gw.site, "reservoir-01");
    snprintf(gw.kind, sizeof gw.kind, "reservoir");
    if (cm_pubkey_from_der(FUZZ_EC_PUBLIC_DER, sizeof FUZZ_EC_PUBLIC_DER, &gw.key) != CM_OK ||
        cm_rsa_from_private_der(FUZZ_RSA_PRIVATE_DER, sizeof FUZZ_RSA_PRIVATE_DER, &unwrap) !=
            CM_OK)
        abort();
    /* cm_signer_load reads a key file (mode 0600): a private temporary one */
    char path[] = "/tmp/fuzz-verify-key-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, FUZZ_EC_PRIVATE_PEM, sizeof FUZZ_EC_PRIVATE_PEM - 1) !=
                      (ssize_t)(sizeof FUZZ_EC_PRIVATE_PEM - 1))
        abort();
    close(fd);
    cm_err rc = cm_signer_load(path, &signer);
    unlink(path);
    if (rc != CM_OK)
        abort();
    return 0;
}

/* The envelope with a fresh signature over its header and body, or NULL when the bytes are not
 * a SignedEnvelope. Caller frees. */
static uint8_t *resign(const uint8_t *msg, size_t len, size_t *outlen)
{
    Suido__SignedEnvelope *e = suido__signed_envelope__unpack(NULL, len, msg);
    if (!e)
        return NULL;
    uint8_t sig[CM_SIG_MAX], *out = NULL;
    size_t slen = 0;
    if (cm_signer_sign(signer, e->header.data, e->header.len, e->body.data, e->body.len, sig,
                       &slen) == CM_OK) {
        Suido__SignedEnvelope n = *e;
        n.signature.data = sig;
        n.signature.len = slen;
        *outlen = suido__signed_envelope__get_packed_size(&n);
        if ((out = malloc(*outlen ? *outlen : 1)))
            suido__signed_envelope__pack(&n, out);
    }
    suido__signed_envelope__free_unpacked(e, NULL);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    const uint8_t *msg = data + 1;
    size_t len = size - 1;
    uint8_t *signed_copy = NULL;
    if (sel & FUZZ_RESIGN) {
        size_t n = 0;
        if ((signed_copy = resign(msg, len, &n))) {
            msg = signed_copy;
            len = n;
        }
    }
    char topic[64];
    snprintf(topic, sizeof topic, "suido/v1/%s/%s", FUZZ_GATEWAY, FUZZ_KINDS[(sel >> 1) & 7]);
    if (!verifier && !(verifier = verify_new(unwrap, lookup, NULL, 300000)))
        abort();
    verify_ctx *v = verifier;
    verify_result res;
    cm_err rc = verify_message(v, topic, FUZZ_NOW_MS, msg, len, &res);
    if (getenv("FUZZ_VERIFY_TRACE")) /* how far an input gets: for checking seeds */
        fprintf(stderr, "verify: topic=%s result=%s\n", topic, res.reason);
    if (rc == CM_OK) {
        /* what the daemon relies on after an accepted message */
        if (!res.header || strcmp(res.header->gateway_id, FUZZ_GATEWAY) != 0)
            abort();
        if (res.batch && (res.batch->n_readings == 0 || res.batch->n_readings > VERIFY_MAX_READINGS))
            abort();
        /* what the daemon forwards to the profile stage must decode there (services/verify/
         * main.c): a decoded field that protobuf-c re-packs into bytes it cannot read back
         * would lose an accepted message at the next hop */
        Suido__StageMessage out = SUIDO__STAGE_MESSAGE__INIT;
        out.topic = topic;
        out.status = SUIDO__VERIFY_STATUS__VERIFY_OK;
        out.header = res.header;
        out.batch = res.batch;
        out.birth = res.birth;
        out.cmdres = res.cmdres;
        size_t n = suido__stage_message__get_packed_size(&out);
        uint8_t *buf = malloc(n ? n : 1);
        if (!buf)
            abort();
        suido__stage_message__pack(&out, buf);
        Suido__StageMessage *back = suido__stage_message__unpack(NULL, n, buf);
        if (!back)
            abort();
        suido__stage_message__free_unpacked(back, NULL);
        free(buf);
        /* the same message again is a replay for live kinds, never a crash */
        verify_result again;
        verify_message(v, topic, FUZZ_NOW_MS, msg, len, &again);
        verify_result_clear(&again);
    }
    verify_result_clear(&res);
    if (rc == CM_OK)
        verify_destroy(&verifier);
    free(signed_copy);
    return 0;
}
