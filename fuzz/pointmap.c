/* Fuzz target: the field agent's point map (gateway/agent/pointmap.c), a file an engineer writes
 * on a field box. Parses the input; for a map it accepts, every point is decoded from registers
 * the input also supplies and its limits are encoded back, as a poll and a command write do. */
#include <string.h>

#include "fuzz_util.h"
#include "pointmap.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[CM_CONF_ERRLEN];
    pm_map m;
    if (pm_parse("fuzz.map", (const char *)data, size, &m, err) != CM_OK)
        return 0;
    uint16_t regs[2] = {0, 0};
    if (size >= 4)
        memcpy(regs, data + size - 4, 4);
    for (size_t i = 0; i < m.npt; i++) {
        const pm_point *p = &m.pt[i];
        (void)pm_register_count(p);
        (void)pm_decode(p, regs);
        (void)pm_register_name(p->reg);
        (void)pm_type_name(p->type);
        if (p->writable) {
            uint16_t out[2];
            (void)pm_encode(p, p->lo, out);
            (void)pm_encode(p, p->hi, out);
            (void)pm_encode(p, (p->lo + p->hi) / 2, out);
        }
    }
    pm_free(&m);
    return 0;
}
