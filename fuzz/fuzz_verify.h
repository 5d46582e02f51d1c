/* fuzz_verify: what the verify fuzz target (verify.c) and its seed maker (seed_verify.c) agree
 * on: the input layout, the gateway and the clock. */
#ifndef FUZZ_VERIFY_H
#define FUZZ_VERIFY_H
#include <stdint.h>

/* Input = one selector byte, then the bytes of a SignedEnvelope as published.
 *   bit 0     1: re-sign header and body with the gateway's key before verifying (see verify.c)
 *   bits 1-3  topic kind, an index into FUZZ_KINDS (5..7: a kind the verifier does not know) */
#define FUZZ_RESIGN 0x01u
static const char *const FUZZ_KINDS[8] = {"data",   "backfill", "birth", "death",
                                          "cmdres", "cmd",      "ack",   "data/x"};
#define FUZZ_GATEWAY "gw-fuzz"
/* The verifier's clock: the seeds carry timestamps near it, so that live data is fresh. */
#define FUZZ_NOW_MS 1800000000000ull

#endif
