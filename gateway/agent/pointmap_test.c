/* pointmap_test: unit tests of the point map (gateway/agent/pointmap.c): a full map with every
 * key; each refusal with its exact message (file, line of the offending key, reason); the
 * largest maps accepted and one more refused; decode and encode of every type in both word
 * orders, negative integers, f32 bit patterns, scale and offset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pointmap.h"

static cm_err parse(const char *text, pm_map *m, char err[CM_CONF_ERRLEN])
{
    return pm_parse("t.map", text, strlen(text), m, err);
}

static const char full_map[] = "# a pumping station\n"                      /* 1 */
                               "[device plc1]\n"                            /* 2 */
                               "address = tcp:127.0.0.1:5020   # the PLC\n" /* 3 */
                               "unit_id = 1\n"                              /* 4 */
                               "timeout_ms = 500\n"                         /* 5 */
                               "[device meter]\n"                           /* 6 */
                               "address = rtu:/dev/ttyUSB0\n"               /* 7 */
                               "baud = 19200\n"                             /* 8 */
                               "parity = E\n"                               /* 9 */
                               "data_bits = 7\n"                            /* 10 */
                               "stop_bits = 2\n"                            /* 11 */
                               "unit_id = 247\n"                            /* 12 */
                               "[point flow]\n"                             /* 13 */
                               "device = plc1\n"
                               "register = input\n"
                               "address = 10\n"
                               "type = f32\n"
                               "word_order = little\n"
                               "scale = 0.1\n"
                               "offset = -2.5\n"
                               "unit = L/s\n"
                               "period_ms = 250\n"
                               "deadband = 0.5\n"
                               "[point pump1]\n" /* 24 */
                               "device = plc1\n"
                               "register = coil\n"
                               "address = 0\n"
                               "unit = 1\n"
                               "writable = yes\n"
                               "limits = 0, 1\n"
                               "[point speed_setpoint]\n" /* 31 */
                               "device = plc1\n"
                               "register = holding\n"
                               "address = 0\n"
                               "unit = %\n"
                               "writable = yes\n"
                               "limits = 0, 80\n"
                               "[point speed.readback]\n" /* 38: same register, read only */
                               "device = plc1\n"
                               "register = holding\n"
                               "address = 0\n"
                               "unit = %\n"
                               "[point chlorine]\n"
                               "device = meter\n"
                               "register = holding\n"
                               "address = 65534\n"
                               "type = i32\n"
                               "unit = mg/L\n"
                               "[point level-2]\n"
                               "device = plc1\n"
                               "register = discrete\n"
                               "address = 65535\n"
                               "unit = m\n";

static void test_full_map(void **state)
{
    (void)state;
    pm_map m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(parse(full_map, &m, err), CM_OK);
    assert_string_equal(err, "");
    assert_int_equal(m.ndev, 2);
    assert_int_equal(m.npt, 6);

    const pm_device *d = &m.dev[0];
    assert_string_equal(d->name, "plc1");
    assert_int_equal(d->rtu, 0);
    assert_string_equal(d->host, "127.0.0.1");
    assert_int_equal(d->port, 5020);
    assert_int_equal(d->unit_id, 1);
    assert_int_equal(d->timeout_ms, 500);
    assert_int_equal(d->line, 2);
    d = &m.dev[1];
    assert_int_equal(d->rtu, 1);
    assert_string_equal(d->serial, "/dev/ttyUSB0");
    assert_int_equal(d->baud, 19200);
    assert_int_equal(d->parity, 'E');
    assert_int_equal(d->data_bits, 7);
    assert_int_equal(d->stop_bits, 2);
    assert_int_equal(d->unit_id, 247);
    assert_int_equal(d->timeout_ms, 1000);

    const pm_point *p = &m.pt[0];
    assert_string_equal(p->channel, "flow");
    assert_int_equal(p->device, 0);
    assert_int_equal(p->reg, PM_INPUT);
    assert_int_equal(p->address, 10);
    assert_int_equal(p->type, PM_F32);
    assert_int_equal(p->word_little, 1);
    assert_true(p->scale == 0.1 && p->offset == -2.5);
    assert_string_equal(p->unit, "L/s");
    assert_int_equal(p->period_ms, 250);
    assert_true(p->deadband == 0.5);
    assert_int_equal(p->writable, 0);
    assert_int_equal(p->line, 13);

    p = &m.pt[1];
    assert_string_equal(p->channel, "pump1");
    assert_int_equal(p->reg, PM_COIL);
    assert_int_equal(p->type, PM_U16);
    assert_int_equal(p->writable, 1);
    assert_true(p->lo == 0 && p->hi == 1);
    assert_true(p->scale == 1 && p->offset == 0 && p->deadband == 0);
    assert_int_equal(p->period_ms, 1000);
    assert_int_equal(p->line, 24);

    p = &m.pt[2];
    assert_string_equal(p->unit, "%");
    assert_true(p->lo == 0 && p->hi == 80);
    assert_int_equal(m.pt[3].writable, 0);
    p = &m.pt[4];
    assert_int_equal(p->device, 1);
    assert_int_equal(p->type, PM_I32);
    assert_int_equal(p->word_little, 0);
    assert_int_equal(p->address, 65534);
    assert_int_equal(m.pt[5].reg, PM_DISCRETE);
    pm_free(&m);
    assert_null(m.pt);
    assert_int_equal(m.npt, 0);
    pm_free(&m); /* twice is harmless */
}

static void test_load_from_file(void **state)
{
    (void)state;
    char path[] = "/tmp/pointmap-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, full_map, strlen(full_map)), (ssize_t)strlen(full_map));
    close(fd);
    pm_map m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(pm_load(path, &m, err), CM_OK);
    assert_int_equal(m.npt, 6);
    pm_free(&m);
    unlink(path);
    assert_int_equal(pm_load(path, &m, err), CM_ERR_CONFIG);
    assert_non_null(strstr(err, "cannot open"));
    assert_null(m.pt);
}

/* The example map beside this file (the PLC stand-in's, tests/field/plc.py) stays valid and
 * says what its register table says. Found next to __FILE__: unit tests run from the top of the
 * clone, where the build compiles them. */
static void test_example_map(void **state)
{
    (void)state;
    char path[512];
    const char *slash = strrchr(__FILE__, '/');
    int dir_len = slash ? (int)(slash - __FILE__) : 1;
    snprintf(path, sizeof path, "%.*s/example-pumping.map", dir_len, slash ? __FILE__ : ".");
    pm_map m;
    char err[CM_CONF_ERRLEN];
    if (pm_load(path, &m, err) != CM_OK)
        fail_msg("%s", err);
    assert_int_equal(m.ndev, 1);
    assert_int_equal(m.npt, 10);
    static const struct {
        const char *channel;
        pm_register reg;
        int address;
        pm_type type;
        double scale;
        const char *unit;
        int writable;
        double hi;
    } want[] = {
        {"pump1_status", PM_DISCRETE, 0, PM_U16, 1, "1", 0, 0},
        {"pump2_status", PM_DISCRETE, 1, PM_U16, 1, "1", 0, 0},
        {"flow", PM_INPUT, 0, PM_F32, 1, "L/s", 0, 0},
        {"suction_pressure", PM_INPUT, 2, PM_U16, 0.01, "bar", 0, 0},
        {"discharge_pressure", PM_INPUT, 3, PM_U16, 0.01, "bar", 0, 0},
        {"power", PM_INPUT, 4, PM_U16, 0.1, "kW", 0, 0},
        {"tank_level", PM_INPUT, 5, PM_U16, 0.001, "m", 0, 0},
        {"pump1", PM_COIL, 0, PM_U16, 1, "1", 1, 1},
        {"pump2", PM_COIL, 1, PM_U16, 1, "1", 1, 1},
        {"speed_setpoint", PM_HOLDING, 0, PM_U16, 1, "%", 1, 80},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const pm_point *p = &m.pt[i];
        assert_string_equal(p->channel, want[i].channel);
        assert_int_equal(p->reg, want[i].reg);
        assert_int_equal(p->address, want[i].address);
        assert_int_equal(p->type, want[i].type);
        assert_int_equal(p->word_little, 0);
        assert_true(p->scale == want[i].scale);
        assert_string_equal(p->unit, want[i].unit);
        assert_int_equal(p->writable, want[i].writable);
        if (p->writable)
            assert_true(p->lo == 0 && p->hi == want[i].hi);
    }
    pm_free(&m);
}

/* The device section every refusal case starts with: lines 1 to 3. */
#define DEV "[device plc1]\naddress = tcp:127.0.0.1:5020\nunit_id = 1\n"
/* A point at lines 4 to 8 (its keys at 5, 6, 7, 8): cases append their keys from line 9. */
#define PT "[point flow]\ndevice = plc1\nregister = input\naddress = 10\nunit = L/s\n"

typedef struct refusal {
    const char *text;
    const char *message;
} refusal;

static const refusal refusals[] = {
    /* the spec: unknown keys and sections, missing required keys, repeated sections */
    {DEV PT "colour = red\n", "t.map:9: unknown key 'colour' in [point flow]"},
    {DEV PT "[alarm high]\nlevel = 3\n", "t.map:9: unknown section [alarm high]"},
    {DEV PT "[alarm]\n", "t.map:9: unknown section [alarm]"},
    {DEV "[point flow]\ndevice = plc1\naddress = 10\nunit = L/s\n",
     "t.map:4: [point flow] missing required key 'register'"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 10\nunit =\n",
     "t.map:4: [point flow] missing required key 'unit'"},
    {DEV PT PT, "t.map:9: section [point flow] repeated (first at line 4)"},
    {DEV PT "[device plc1]\naddress = tcp:h:1\nunit_id = 1\n",
     "t.map:9: section [device plc1] repeated (first at line 1)"},
    /* the whole map */
    {DEV, "t.map: no [point ...] section: a map needs points"},
    {DEV PT "[device plc2]\naddress = tcp:10.0.0.2:502\nunit_id = 3\n",
     "t.map:9: device 'plc2': no point reads this device"},
    /* names */
    {DEV "[point a:b]\ndevice = plc1\nregister = input\naddress = 10\nunit = L/s\n",
     "t.map:4: point 'a:b': a channel id is 1 to 64 of [A-Za-z0-9._-]"},
    {DEV "[point a123456789b123456789c123456789d123456789e123456789f123456789g1234]\n"
         "device = plc1\nregister = input\naddress = 10\nunit = L/s\n",
     "t.map:4: point 'a123456789b123456789c123456789d123456789e123456789f123456789g1234': a "
     "channel id is 1 to 64 of [A-Za-z0-9._-]"},
    {"[device]\naddress = tcp:127.0.0.1:5020\nunit_id = 1\n" PT,
     "t.map:1: device '': a device name is 1 to 64 of [A-Za-z0-9._-]"},
    /* device addresses */
    {"[device plc1]\naddress = tcp:127.0.0.1\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:127.0.0.1' needs a port 1..65535 (tcp:HOST:PORT)"},
    {"[device plc1]\naddress = tcp:127.0.0.1:0\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:127.0.0.1:0' needs a port 1..65535 (tcp:HOST:PORT)"},
    {"[device plc1]\naddress = tcp:127.0.0.1:65536\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:127.0.0.1:65536' needs a port 1..65535 "
     "(tcp:HOST:PORT)"},
    {"[device plc1]\naddress = tcp:127.0.0.1:50x\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:127.0.0.1:50x' needs a port 1..65535 "
     "(tcp:HOST:PORT)"},
    {"[device plc1]\naddress = tcp::502\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp::502': bad host (a name, an IPv4 address or [IPv6])"},
    {"[device plc1]\naddress = tcp:plc_1:502\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:plc_1:502': bad host (a name, an IPv4 address or "
     "[IPv6])"},
    {"[device plc1]\naddress = tcp:[::1:502\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'tcp:[::1:502': an IPv6 host is written [ADDRESS]"},
    {"[device plc1]\naddress = udp:127.0.0.1:502\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': bad address 'udp:127.0.0.1:502' (tcp:HOST:PORT or rtu:/dev/NAME)"},
    {"[device plc1]\naddress = rtu:ttyUSB0\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'rtu:ttyUSB0': bad serial device (rtu:/dev/NAME)"},
    {"[device plc1]\naddress = rtu:/\nunit_id = 1\n" PT,
     "t.map:2: device 'plc1': address 'rtu:/': bad serial device (rtu:/dev/NAME)"},
    /* device settings */
    {"[device plc1]\naddress = tcp:127.0.0.1:5020\nunit_id = 248\n" PT,
     "t.map:3: device 'plc1': 'unit_id' must be an integer in [0, 247] or 255, not '248'"},
    {"[device plc1]\naddress = rtu:/dev/ttyS0\nunit_id = 255\n" PT,
     "t.map:3: device 'plc1': 'unit_id' must be an integer in [0, 247], not '255'"},
    {"[device plc1]\naddress = tcp:127.0.0.1:5020\nunit_id = one\n" PT,
     "t.map:3: device 'plc1': 'unit_id' must be an integer in [0, 247] or 255, not 'one'"},
    {DEV "timeout_ms = 5\n" PT,
     "t.map:4: device 'plc1': 'timeout_ms' must be an integer in [10, 60000], not '5'"},
    {DEV "baud = 9600\n" PT, "t.map:4: device 'plc1': 'baud' applies to rtu devices only"},
    {DEV "stop_bits = 1\n" PT, "t.map:4: device 'plc1': 'stop_bits' applies to rtu devices only"},
    {"[device plc1]\naddress = rtu:/dev/ttyS0\nunit_id = 1\nbaud = 12345\n" PT,
     "t.map:4: device 'plc1': 'baud' 12345 is not a standard speed (1200 ... 230400)"},
    {"[device plc1]\naddress = rtu:/dev/ttyS0\nunit_id = 1\nparity = X\n" PT,
     "t.map:4: device 'plc1': 'parity' must be N, E or O, not 'X'"},
    {"[device plc1]\naddress = rtu:/dev/ttyS0\nunit_id = 1\ndata_bits = 9\n" PT,
     "t.map:4: device 'plc1': 'data_bits' must be an integer in [7, 8], not '9'"},
    {"[device plc1]\naddress = rtu:/dev/ttyS0\nunit_id = 1\n"
     "[device plc2]\naddress = rtu:/dev/ttyS0\nunit_id = 2\n" PT,
     "t.map:5: device 'plc2': serial line /dev/ttyS0 is already device 'plc1' (line 1): one "
     "device per serial line"},
    /* points */
    {DEV "[point flow]\ndevice = plc9\nregister = input\naddress = 10\nunit = L/s\n",
     "t.map:5: point 'flow': unknown device 'plc9'"},
    {DEV "[point flow]\ndevice = plc1\nregister = inputs\naddress = 10\nunit = L/s\n",
     "t.map:6: point 'flow': unknown register 'inputs' (holding, input, coil, discrete)"},
    {DEV PT "type = f64\n", "t.map:9: point 'flow': unknown type 'f64' (u16, i16, u32, i32, f32)"},
    {DEV "[point flow]\ndevice = plc1\nregister = coil\naddress = 10\nunit = 1\ntype = f32\n",
     "t.map:9: point 'flow': a coil point is u16 (0/1), not f32"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 65536\nunit = L/s\n",
     "t.map:7: point 'flow': 'address' must be an integer in [0, 65535], not '65536'"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = -1\nunit = L/s\n",
     "t.map:7: point 'flow': 'address' must be an integer in [0, 65535], not '-1'"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 10 x\nunit = L/s\n",
     "t.map:7: point 'flow': 'address' must be an integer in [0, 65535], not '10 x'"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 65535\nunit = L/s\n"
         "type = u32\n",
     "t.map:7: point 'flow': address 65535: a u32 takes two registers (address + 1 <= 65535)"},
    {DEV PT "type = f32\nword_order = middle\n",
     "t.map:10: point 'flow': unknown word order 'middle' (big, little)"},
    {DEV PT "word_order = big\n",
     "t.map:9: point 'flow': 'word_order' applies to 32-bit types only, not u16"},
    {DEV PT "scale = 0\n", "t.map:9: point 'flow': 'scale' must not be 0"},
    {DEV PT "scale = 0.1x\n", "t.map:9: point 'flow': 'scale' must be a finite number, not '0.1x'"},
    {DEV PT "scale = nan\n", "t.map:9: point 'flow': 'scale' must be a finite number, not 'nan'"},
    {DEV PT "scale = 1e999\n",
     "t.map:9: point 'flow': 'scale' must be a finite number, not '1e999'"},
    {DEV PT "offset = 0x10\n",
     "t.map:9: point 'flow': 'offset' must be a finite number, not '0x10'"},
    {DEV PT "offset =\n", "t.map:9: point 'flow': 'offset' must be a finite number, not ''"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 10\nunit = m 3\n",
     "t.map:8: point 'flow': bad unit 'm 3' (1 to 16 printable characters, no space)"},
    {DEV "[point flow]\ndevice = plc1\nregister = input\naddress = 10\nunit = abcdefghijklmnopq\n",
     "t.map:8: point 'flow': bad unit 'abcdefghijklmnopq' (1 to 16 printable characters, no "
     "space)"},
    {DEV PT "period_ms = 99\n",
     "t.map:9: point 'flow': 'period_ms' must be an integer in [100, 3600000], not '99'"},
    {DEV PT "period_ms =\n",
     "t.map:9: point 'flow': 'period_ms' must be an integer in [100, 3600000], not ''"},
    {DEV PT "deadband = -1\n", "t.map:9: point 'flow': 'deadband' must be >= 0"},
    {DEV PT "writable = maybe\n",
     "t.map:9: point 'flow': 'writable' must be yes or no, not 'maybe'"},
    {DEV PT "writable = yes\nlimits = 0, 1\n",
     "t.map:9: point 'flow': only holding and coil points are writable, not input"},
    {DEV PT "limits = 0, 1\n", "t.map:9: point 'flow': 'limits' applies to writable points only"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\n",
     "t.map:9: point 'sp': a writable point needs 'limits = lo, hi'"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = 80, 0\n",
     "t.map:10: point 'sp': 'limits': lo 80 is above hi 0"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = 80\n",
     "t.map:10: point 'sp': 'limits' must be two finite numbers 'lo, hi', not '80'"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = 0, 1, 2\n",
     "t.map:10: point 'sp': 'limits' must be two finite numbers 'lo, hi', not '0, 1, 2'"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = 0, inf\n",
     "t.map:10: point 'sp': 'limits' must be two finite numbers 'lo, hi', not '0, inf'"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = -1, 100\n",
     "t.map:10: point 'sp': 'limits' -1, 100 do not fit a holding u16 with scale 1 and offset 0"},
    {DEV "[point sp]\ndevice = plc1\nregister = holding\naddress = 10\nunit = %\n"
         "writable = yes\nlimits = 0, 700\nscale = 0.01\n",
     "t.map:10: point 'sp': 'limits' 0, 700 do not fit a holding u16 with scale 0.01 and offset "
     "0"},
    {DEV "[point pump]\ndevice = plc1\nregister = coil\naddress = 3\nunit = 1\n"
         "writable = yes\nlimits = 0, 2\n",
     "t.map:10: point 'pump': 'limits' 0, 2 do not fit a coil u16 with scale 1 and offset 0"},
    /* two writable points on one register */
    {DEV "[point a]\ndevice = plc1\nregister = holding\naddress = 100\nunit = %\ntype = f32\n"
         "writable = yes\nlimits = 0, 1\n"
         "[point b]\ndevice = plc1\nregister = holding\naddress = 101\nunit = %\n"
         "writable = yes\nlimits = 0, 1\n",
     "t.map:15: point 'b': writes holding 101 of device 'plc1', which writable point 'a' "
     "(line 4) also writes"},
};

static void test_refusals(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        pm_map m;
        char err[CM_CONF_ERRLEN];
        cm_err rc = parse(refusals[i].text, &m, err);
        if (rc != CM_ERR_CONFIG || strcmp(err, refusals[i].message) != 0)
            fail_msg("case %zu: rc %d, got \"%s\", expected \"%s\"", i, (int)rc, err,
                     refusals[i].message);
        assert_null(m.pt);
        assert_null(m.dev);
        assert_int_equal(m.npt, 0);
    }
}

/* Overlaps that are fine: a read-only point over a writable one, writable points of other
 * kinds or devices at the same address, adjacent writable 32-bit points. */
static void test_accepted_overlaps(void **state)
{
    (void)state;
    const char *text =
        DEV "[device plc2]\naddress = tcp:[::1]:502\nunit_id = 255\n"
            "[point a]\ndevice = plc1\nregister = holding\naddress = 100\nunit = %\ntype = u32\n"
            "writable = yes\nlimits = 0, 1\n"
            "[point b]\ndevice = plc1\nregister = holding\naddress = 102\nunit = %\ntype = i32\n"
            "word_order = little\nwritable = yes\nlimits = -5, 5\n"
            "[point c]\ndevice = plc1\nregister = coil\naddress = 100\nunit = 1\n"
            "writable = yes\nlimits = 0, 1\n"
            "[point d]\ndevice = plc2\nregister = holding\naddress = 100\nunit = %\n"
            "writable = yes\nlimits = 0, 1\n"
            "[point e]\ndevice = plc1\nregister = holding\naddress = 101\nunit = %\n";
    pm_map m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(parse(text, &m, err), CM_OK);
    assert_int_equal(m.npt, 5);
    assert_string_equal(m.dev[1].host, "::1");
    assert_int_equal(m.dev[1].unit_id, 255);
    pm_free(&m);
}

/* Builds a map of ndev devices and npt points (all on the first device). */
static char *big_map(size_t ndev, size_t npt)
{
    size_t cap = 128 * (ndev + npt) + 1;
    char *t = malloc(cap), *w = t;
    for (size_t i = 0; i < ndev; i++)
        w += sprintf(w, "[device d%zu]\naddress = tcp:127.0.0.1:%zu\nunit_id = 1\n", i, 1000 + i);
    for (size_t i = 0; i < npt; i++)
        w += sprintf(w, "[point p%zu]\ndevice = d%zu\nregister = input\naddress = %zu\nunit = m\n",
                     i, i < ndev ? i : 0, i);
    return t;
}

static void test_size_limits(void **state)
{
    (void)state;
    pm_map m;
    char err[CM_CONF_ERRLEN];
    char *t = big_map(PM_MAX_DEVICES, PM_MAX_POINTS);
    assert_int_equal(parse(t, &m, err), CM_OK);
    assert_int_equal(m.ndev, PM_MAX_DEVICES);
    assert_int_equal(m.npt, PM_MAX_POINTS);
    pm_free(&m);
    free(t);

    t = big_map(PM_MAX_DEVICES + 1, PM_MAX_DEVICES + 1);
    assert_int_equal(parse(t, &m, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.map:193: device 'd64': more than 64 devices in one map");
    free(t);

    t = big_map(1, PM_MAX_POINTS + 1);
    assert_int_equal(parse(t, &m, err), CM_ERR_CONFIG);
    char want[128];
    snprintf(want, sizeof want, "t.map:%d: point 'p4096': more than 4096 points in one map",
             3 + 5 * 4096 + 1);
    assert_string_equal(err, want);
    free(t);
}

/* Inputs that are not maps at all are refused, never crash. */
static void test_garbage(void **state)
{
    (void)state;
    pm_map m;
    char err[CM_CONF_ERRLEN];
    static const char nul[] = "[device a]\naddress = tcp:h:1\0\n";
    assert_int_equal(pm_parse("t.map", nul, sizeof nul - 1, &m, err), CM_ERR_CONFIG);
    assert_string_equal(err, "t.map: contains a NUL byte");
    assert_int_equal(parse("", &m, err), CM_ERR_CONFIG);
    assert_int_equal(parse("key = value\n", &m, err), CM_ERR_CONFIG);
    assert_int_equal(parse("[device a\n", &m, err), CM_ERR_CONFIG);
    /* a hostile value is escaped in the message, so a log line stays one line */
    assert_int_equal(parse(DEV "[point flow]\ndevice = plc1\nregister = \"\x01\xff\"\n"
                               "address = 1\nunit = m\n",
                           &m, err),
                     CM_ERR_CONFIG);
    assert_string_equal(err, "t.map:6: point 'flow': unknown register '\\\"\\x01\\xff\\\"' "
                             "(holding, input, coil, discrete)");
}

static pm_point point(pm_register reg, pm_type type, int little, double scale, double offset)
{
    pm_point p;
    memset(&p, 0, sizeof p);
    p.reg = reg;
    p.type = type;
    p.word_little = little;
    p.scale = scale;
    p.offset = offset;
    return p;
}

static void test_decode(void **state)
{
    (void)state;
    pm_point p = point(PM_INPUT, PM_U16, 0, 1, 0);
    assert_int_equal(pm_register_count(&p), 1);
    assert_true(pm_decode(&p, (uint16_t[2]){0xffff, 0}) == 65535.0);
    p.type = PM_I16;
    assert_true(pm_decode(&p, (uint16_t[2]){0xffff, 0}) == -1.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0x8000, 0}) == -32768.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0x7fff, 0}) == 32767.0);

    p.type = PM_U32;
    assert_int_equal(pm_register_count(&p), 2);
    assert_true(pm_decode(&p, (uint16_t[2]){0x0001, 0x0002}) == 65538.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0xffff, 0xffff}) == 4294967295.0);
    p.word_little = 1;
    assert_true(pm_decode(&p, (uint16_t[2]){0x0002, 0x0001}) == 65538.0);

    p.type = PM_I32;
    p.word_little = 0;
    assert_true(pm_decode(&p, (uint16_t[2]){0xffff, 0xfffe}) == -2.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0x8000, 0x0000}) == -2147483648.0);
    p.word_little = 1;
    assert_true(pm_decode(&p, (uint16_t[2]){0xfffe, 0xffff}) == -2.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0x0002, 0x0001}) == 65538.0);

    p.type = PM_F32; /* 1.5f = 0x3fc00000, -2.25f = 0xc0100000 */
    p.word_little = 0;
    assert_true(pm_decode(&p, (uint16_t[2]){0x3fc0, 0x0000}) == 1.5);
    assert_true(pm_decode(&p, (uint16_t[2]){0xc010, 0x0000}) == -2.25);
    assert_true(pm_decode(&p, (uint16_t[2]){0x0000, 0x0000}) == 0.0);
    assert_true(fabs(pm_decode(&p, (uint16_t[2]){0x42f6, 0xe979}) - 123.456) < 1e-4);
    assert_true(isnan(pm_decode(&p, (uint16_t[2]){0x7fc0, 0x0000})));
    assert_true(isinf(pm_decode(&p, (uint16_t[2]){0xff80, 0x0000})));
    p.word_little = 1;
    assert_true(pm_decode(&p, (uint16_t[2]){0x0000, 0x3fc0}) == 1.5);
    assert_true(pm_decode(&p, (uint16_t[2]){0x0000, 0xc010}) == -2.25);

    /* engineering = raw * scale + offset */
    p = point(PM_HOLDING, PM_U16, 0, 0.1, -10);
    assert_true(fabs(pm_decode(&p, (uint16_t[2]){1234, 0}) - 113.4) < 1e-9);
    p = point(PM_INPUT, PM_U16, 0, 0.001, 0);
    assert_true(fabs(pm_decode(&p, (uint16_t[2]){2500, 0}) - 2.5) < 1e-12);
    p = point(PM_INPUT, PM_I16, 0, -2, 1);
    assert_true(pm_decode(&p, (uint16_t[2]){0xfffb, 0}) == 11.0); /* -5 * -2 + 1 */

    /* bits: any non-zero register is 1, then scale and offset */
    p = point(PM_COIL, PM_U16, 0, 1, 0);
    assert_true(pm_decode(&p, (uint16_t[2]){1, 0}) == 1.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0xff00, 0}) == 1.0);
    assert_true(pm_decode(&p, (uint16_t[2]){0, 0}) == 0.0);
    p = point(PM_DISCRETE, PM_U16, 0, 100, 5);
    assert_true(pm_decode(&p, (uint16_t[2]){1, 0}) == 105.0);
}

static void test_encode(void **state)
{
    (void)state;
    uint16_t r[2] = {0xaaaa, 0xaaaa};
    pm_point p = point(PM_HOLDING, PM_U16, 0, 0.01, 0);
    assert_int_equal(pm_encode(&p, 12.34, r), 0);
    assert_int_equal(r[0], 1234);
    assert_int_equal(pm_encode(&p, 655.35, r), 0);
    assert_int_equal(r[0], 65535);
    r[0] = 7;
    assert_int_equal(pm_encode(&p, 655.36, r), -1);
    assert_int_equal(pm_encode(&p, -0.01, r), -1);
    assert_int_equal(pm_encode(&p, NAN, r), -1);
    assert_int_equal(pm_encode(&p, INFINITY, r), -1);
    assert_int_equal(r[0], 7); /* untouched by refusals */

    p = point(PM_HOLDING, PM_U16, 0, 0.1, -10); /* raw = (v + 10) / 0.1 */
    assert_int_equal(pm_encode(&p, 113.4, r), 0);
    assert_int_equal(r[0], 1234);

    p = point(PM_HOLDING, PM_I16, 0, 1, 0);
    assert_int_equal(pm_encode(&p, -5, r), 0);
    assert_int_equal(r[0], 0xfffb);
    assert_int_equal(pm_encode(&p, -32768, r), 0);
    assert_int_equal(r[0], 0x8000);
    assert_int_equal(pm_encode(&p, 32768, r), -1);
    assert_int_equal(pm_encode(&p, -32769, r), -1);
    assert_int_equal(pm_encode(&p, 2.4, r), 0); /* nearest integer */
    assert_int_equal(r[0], 2);
    assert_int_equal(pm_encode(&p, -2.6, r), 0);
    assert_int_equal(r[0], 0xfffd);

    p = point(PM_HOLDING, PM_U32, 0, 1, 0);
    assert_int_equal(pm_encode(&p, 65538, r), 0);
    assert_true(r[0] == 0x0001 && r[1] == 0x0002);
    assert_int_equal(pm_encode(&p, 4294967295.0, r), 0);
    assert_true(r[0] == 0xffff && r[1] == 0xffff);
    assert_int_equal(pm_encode(&p, 4294967296.0, r), -1);
    assert_int_equal(pm_encode(&p, -1, r), -1);
    p.word_little = 1;
    assert_int_equal(pm_encode(&p, 65538, r), 0);
    assert_true(r[0] == 0x0002 && r[1] == 0x0001);

    p = point(PM_HOLDING, PM_I32, 0, 1, 0);
    assert_int_equal(pm_encode(&p, -2, r), 0);
    assert_true(r[0] == 0xffff && r[1] == 0xfffe);
    assert_int_equal(pm_encode(&p, -2147483648.0, r), 0);
    assert_true(r[0] == 0x8000 && r[1] == 0x0000);
    assert_int_equal(pm_encode(&p, 2147483648.0, r), -1);
    p.word_little = 1;
    assert_int_equal(pm_encode(&p, -2, r), 0);
    assert_true(r[0] == 0xfffe && r[1] == 0xffff);

    p = point(PM_HOLDING, PM_F32, 0, 1, 0);
    assert_int_equal(pm_encode(&p, -2.25, r), 0);
    assert_true(r[0] == 0xc010 && r[1] == 0x0000);
    assert_int_equal(pm_encode(&p, 1e39, r), -1);
    p.word_little = 1;
    assert_int_equal(pm_encode(&p, 1.5, r), 0);
    assert_true(r[0] == 0x0000 && r[1] == 0x3fc0);

    p = point(PM_COIL, PM_U16, 0, 1, 0);
    assert_int_equal(pm_encode(&p, 0.7, r), 0);
    assert_int_equal(r[0], 1);
    assert_int_equal(pm_encode(&p, 0.5, r), 0);
    assert_int_equal(r[0], 1);
    assert_int_equal(pm_encode(&p, 0.2, r), 0);
    assert_int_equal(r[0], 0);
    assert_int_equal(pm_encode(&p, 1.2, r), -1);
    assert_int_equal(pm_encode(&p, -0.1, r), -1);
}

/* Every encodable value decodes back to itself within one raw step. */
static void test_round_trip(void **state)
{
    (void)state;
    static const pm_type types[] = {PM_U16, PM_I16, PM_U32, PM_I32, PM_F32};
    static const double values[] = {0, 1, 2.5, 17.3, 100, 250.75, 1000, 32767, 65535, -1, -300.5};
    for (size_t t = 0; t < 5; t++)
        for (int little = 0; little < 2; little++)
            for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
                pm_point p = point(PM_HOLDING, types[t], little, 0.5, 3);
                uint16_t r[2] = {0, 0};
                if (pm_encode(&p, values[v], r) != 0)
                    continue;
                double back = pm_decode(&p, r);
                if (fabs(back - values[v]) > 0.25 + 1e-6 * fabs(values[v]))
                    fail_msg("%s little=%d: %g came back as %g", pm_type_name(types[t]), little,
                             values[v], back);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_map),
        cmocka_unit_test(test_load_from_file),
        cmocka_unit_test(test_example_map),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_accepted_overlaps),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
