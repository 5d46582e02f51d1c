/* Fuzz target: cm_conf, the INI parser of every configuration file, data profile and backup
 * manifest (common/cm_conf.c). Parses the input, then walks what it accepted the way daemons do:
 * the spec check, every section, the typed getters and the list splitter. */
#include <stdio.h>

#include "cm_conf.h"
#include "fuzz_util.h"

static const cm_conf_spec SPEC[] = {
    {"service", "bind", 1, ""},
    {"service", "threads", 0, ""},
    {"gateway", "*", 0, ""},
    {"x", "ratio", 0, ""},
    {NULL, NULL, 0, NULL},
};

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
    cm_conf *c = NULL;
    if (cm_conf_parse("fuzz.conf", (const char *)data, size, &c, err) != CM_OK)
        return 0;
    (void)cm_conf_check(c, SPEC, err);
    for (size_t i = 0; i < cm_conf_section_count(c); i++) {
        const char *s = cm_conf_section(c, i);
        (void)cm_conf_section_name(s, "gateway");
        const char *v = NULL;
        long l;
        double d;
        (void)cm_conf_req(c, s, "bind", &v, err);
        (void)cm_conf_long(c, s, "threads", 1, 0, 64, &l, err);
        (void)cm_conf_double(c, s, "ratio", 0.5, &d, err);
        (void)cm_conf_line(c, s, "bind");
        const char *list = cm_conf_get(c, s, "list");
        if (list) {
            char buf[256];
            const char *items[8];
            (void)cm_conf_split(list, buf, sizeof buf, items, 8);
        }
    }
    cm_conf_destroy(&c);
    return 0;
}
