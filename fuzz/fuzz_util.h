/* fuzz_util: what every libFuzzer target of suido shares (fuzz/README.md). Header only: each
 * target is one .c file. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cm_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Refusals are logged by the code under test; one line per input would only slow the fuzzer and
 * bury its own output, so nothing is logged (a level above every real one). */
static inline void fuzz_quiet(void) { cm_log_init("fuzz", (enum cm_log_level)(CM_LOG_ERROR + 1)); }

/* The input as a NUL-terminated copy (the parsers take text and a length; the copy lets ASan see
 * a read past len). Caller frees. */
static inline char *fuzz_text(const uint8_t *data, size_t size)
{
    char *t = malloc(size + 1);
    if (t) {
        memcpy(t, data, size);
        t[size] = '\0';
    }
    return t;
}

#endif
