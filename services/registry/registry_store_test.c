/* Unit tests of registry_store: the channels a gateway declared in its births, which a birth of
 * an older boot epoch may not replace, on a database that is closed and opened again in between
 * (a registry restart). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "registry_store.h"

static char dir[] = "/tmp/suido-registry-store-test-XXXXXX";
static char db[256];

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(db, sizeof db, "%s/registry.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[300];
    const char *suffix[] = {"", "-journal", "-wal", "-shm"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s%s", db, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

/* gw's declared channels as "name:unit,..." */
static void collect(void *ctx, const char *channel, const char *unit)
{
    char *out = ctx;
    size_t n = strlen(out);
    snprintf(out + n, 256 - n, "%s%s:%s", n ? "," : "", channel, unit);
}

static const char *declared(registry_store *s, const char *gw)
{
    static char out[256];
    out[0] = '\0';
    assert_int_equal(registry_store_get_channels(s, gw, collect, out), CM_OK);
    return out;
}

/* Declares one channel "level" in unit for gw at boot epoch epoch. */
static cm_err birth(registry_store *s, const char *gw, uint64_t epoch, const char *unit)
{
    Suido__ChannelDecl d = SUIDO__CHANNEL_DECL__INIT, *dp = &d;
    d.name = "level";
    d.unit = (char *)unit;
    return registry_store_set_channels(s, gw, epoch, &dp, 1);
}

static void test_births_of_an_older_boot_epoch_are_refused(void **state)
{
    (void)state;
    registry_store *s = NULL;
    assert_int_equal(registry_store_open(db, &s), CM_OK);
    assert_int_equal(birth(s, "gw-0001", 1000, "m"), CM_OK);
    assert_string_equal(declared(s, "gw-0001"), "level:m");
    /* the same boot epoch again: a gateway re-announces itself after a reconnect */
    assert_int_equal(birth(s, "gw-0001", 1000, "cm"), CM_OK);
    assert_string_equal(declared(s, "gw-0001"), "level:cm");
    /* an older boot epoch (a replayed or late birth) changes nothing */
    assert_int_equal(birth(s, "gw-0001", 999, "mm"), CM_ERR_STALE);
    assert_string_equal(declared(s, "gw-0001"), "level:cm");
    assert_int_equal(birth(s, "gw-0001", 0, "mm"), CM_ERR_STALE);
    /* a newer one does */
    assert_int_equal(birth(s, "gw-0001", 1001, "m"), CM_OK);
    assert_string_equal(declared(s, "gw-0001"), "level:m");
    /* gateways are independent */
    assert_int_equal(birth(s, "gw-0002", 5, "cm"), CM_OK);
    assert_string_equal(declared(s, "gw-0002"), "level:cm");
    assert_int_equal(birth(s, "gw-0002", UINT64_MAX, "cm"), CM_ERR_INVAL);
    registry_store_close(&s);
    assert_null(s);

    /* after a restart the newest epoch still holds */
    assert_int_equal(registry_store_open(db, &s), CM_OK);
    assert_int_equal(birth(s, "gw-0001", 1000, "mm"), CM_ERR_STALE);
    assert_string_equal(declared(s, "gw-0001"), "level:m");
    assert_int_equal(birth(s, "gw-0001", 1001, "cm"), CM_OK);
    assert_string_equal(declared(s, "gw-0001"), "level:cm");
    assert_int_equal(birth(s, "gw-0002", 4, "m"), CM_ERR_STALE);
    registry_store_close(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_births_of_an_older_boot_epoch_are_refused),
    };
    return cmocka_run_group_tests_name("registry_store", tests, setup, teardown);
}
