/* Fuzz target: cm_profile, the data profile parser (common/cm_profile.c) the registry loads and
 * every service receives: channels, actuators, interlocks and relations, with their cross
 * references, units and limits. The whole text path: cm_profile_load_text (digest, cm_conf,
 * cm_profile_parse), then the accessors over what was accepted. */
#include "cm_profile.h"
#include "fuzz_util.h"

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
    cm_profile *p = NULL;
    if (cm_profile_load_text("fuzz.profile", (const char *)data, size, &p, err) != CM_OK)
        return 0;
    char digest[65];
    (void)cm_profile_digest(p, digest);
    (void)cm_profile_name(p);
    (void)cm_profile_version(p);
    for (size_t i = 0; i < cm_profile_channel_count(p); i++) {
        const cm_channel *ch = cm_profile_channel_at(p, i);
        if (cm_profile_channel(p, ch->kind, ch->name) == NULL ||
            cm_profile_channel_by_id(p, ch->id) == NULL)
            abort(); /* an accepted channel must be found by its own names */
    }
    for (size_t i = 0; i < cm_profile_actuator_count(p); i++) {
        const cm_actuator *a = cm_profile_actuator_at(p, i);
        if (cm_profile_actuator(p, a->kind, a->name) == NULL)
            abort();
        for (const cm_interlock *il = NULL; (il = cm_profile_interlock_next(p, a, il));)
            for (size_t k = 0; k < il->n_conds; k++)
                (void)cm_cmp_name(il->conds[k].op);
    }
    for (size_t i = 0; i < cm_profile_relation_count(p); i++)
        (void)cm_relation_type_name(cm_profile_relation_at(p, i)->type);
    cm_profile_destroy(&p);
    return 0;
}
