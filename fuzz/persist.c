/* Fuzz target: the broker's persistence check (broker/start/persist_check.c), run on
 * mosquitto.db before the broker starts: a file a crash or a full disk may have cut anywhere.
 * The public function takes a path, so each input is written to a private temporary file. */
#include <stdio.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "persist_check.h"

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%.40s/fuzz-persist-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    char why[256];
    int r = persist_check_file(path, why, sizeof why);
    if (r != PERSIST_OK && r != PERSIST_DAMAGED && r != PERSIST_UNREADABLE)
        abort();
    unlink(path);
    return 0;
}
