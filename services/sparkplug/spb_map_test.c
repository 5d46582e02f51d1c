/* spb_map_test: unit tests of the Sparkplug map file (services/sparkplug/spb_map.c): a full map
 * with every section (node metrics, DEVICE::metric, units, actuators) and its look-ups; each
 * refusal with its exact message (file, line of the offending key where there is one, reason);
 * the groups of the map, de-duplicated in file order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spb_map.h"

/* Parses text as the map file "t.map": rc, and *m (NULL on a refusal), err. */
static cm_err load(const char *text, spb_map **m, char err[CM_CONF_ERRLEN])
{
    cm_conf *c = NULL;
    *m = NULL;
    err[0] = '\0';
    cm_err rc = cm_conf_parse("t.map", text, strlen(text), &c, err);
    assert_int_equal(rc, CM_OK); /* every text here is good cm_conf: the map is what is tested */
    rc = spb_map_load(c, m, err);
    cm_conf_destroy(&c);
    return rc;
}

static const char good_map[] = "# two plants, three edge nodes\n"            /* 1 */
                               "[node gw-spb-01]\n"                          /* 2 */
                               "group = Plant1                   # its group\n" /* 3 */
                               "[channels gw-spb-01]\n"                      /* 4 */
                               "pump1.flow = Pump1/Flow\n"                   /* 5 */
                               "reservoir.level = Tank1::Level\n"            /* 6 */
                               "pump1.running = Pump1/Running\n"             /* 7 */
                               "pump1.power = Node Info/Pump 1 power\n"      /* 8 */
                               "[units gw-spb-01]\n"                         /* 9 */
                               "pump1.flow = L/s\n"                          /* 10 */
                               "reservoir.level = m\n"                       /* 11 */
                               "[actuators gw-spb-01]\n"                     /* 12 */
                               "pump1.speed = Pump1/SpeedSetpoint\n"         /* 13 */
                               "valve1 = Tank1::Valve\n"                     /* 14 */
                               "[node gw-spb-02]\n"                          /* 15 */
                               "group = Plant2\n"                            /* 16 */
                               "[channels gw-spb-02]\n"                      /* 17 */
                               "flow = Flow\n"                               /* 18 */
                               "level = Tank1::Level\n"                      /* 19 */
                               "[node gw-spb-03]\n"                          /* 20 */
                               "group = Plant1\n"                            /* 21 */
                               "[channels gw-spb-03]\n"                      /* 22 */
                               "flow = A::B::C\n";                           /* 23 */

/* A map with every section: nodes in file order, their group, each channel's device, metric and
 * unit (from [units], or "" when the birth must give it), each actuator's point; metric names
 * keep their inner spaces; the first "::" splits device from metric. */
static void test_good_map(void **state)
{
    (void)state;
    spb_map *m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(load(good_map, &m, err), CM_OK);
    assert_non_null(m);
    assert_int_equal(m->n_nodes, 3);

    const spb_map_node *n = &m->nodes[0];
    assert_string_equal(n->id, "gw-spb-01");
    assert_string_equal(n->group, "Plant1");
    assert_int_equal(n->n_channels, 4);
    assert_string_equal(n->channels[0].channel, "pump1.flow");
    assert_string_equal(n->channels[0].device, "");
    assert_string_equal(n->channels[0].metric, "Pump1/Flow");
    assert_string_equal(n->channels[0].unit, "L/s");
    assert_string_equal(n->channels[1].channel, "reservoir.level");
    assert_string_equal(n->channels[1].device, "Tank1");
    assert_string_equal(n->channels[1].metric, "Level");
    assert_string_equal(n->channels[1].unit, "m");
    assert_string_equal(n->channels[2].channel, "pump1.running");
    assert_string_equal(n->channels[2].unit, ""); /* the birth gives it */
    assert_string_equal(n->channels[3].metric, "Node Info/Pump 1 power");
    assert_int_equal(n->n_actuators, 2);
    assert_string_equal(n->actuators[0].channel, "pump1.speed");
    assert_string_equal(n->actuators[0].device, "");
    assert_string_equal(n->actuators[0].metric, "Pump1/SpeedSetpoint");
    assert_string_equal(n->actuators[1].channel, "valve1");
    assert_string_equal(n->actuators[1].device, "Tank1");
    assert_string_equal(n->actuators[1].metric, "Valve");

    assert_string_equal(m->nodes[1].id, "gw-spb-02");
    assert_string_equal(m->nodes[1].group, "Plant2");
    assert_int_equal(m->nodes[1].n_channels, 2);
    assert_int_equal(m->nodes[1].n_actuators, 0);
    assert_null(spb_map_actuator(&m->nodes[1], "pump1.speed"));
    assert_string_equal(m->nodes[2].channels[0].device, "A");
    assert_string_equal(m->nodes[2].channels[0].metric, "B::C");
    spb_map_destroy(&m);
    assert_null(m);
    spb_map_destroy(&m); /* twice: nothing */
}

/* spb_map_find by node id; spb_map_channel by (device, metric), where a node metric and a device
 * metric of the same name are different points; spb_map_actuator by actuator id only. */
static void test_lookups(void **state)
{
    (void)state;
    spb_map *m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(load(good_map, &m, err), CM_OK);
    const spb_map_node *n = spb_map_find(m, "gw-spb-01");
    assert_ptr_equal(n, &m->nodes[0]);
    assert_ptr_equal(spb_map_find(m, "gw-spb-03"), &m->nodes[2]);
    assert_null(spb_map_find(m, "gw-spb-04"));
    assert_null(spb_map_find(m, "Plant1")); /* a group is no node */

    const spb_point *p = spb_map_channel(n, "", "Pump1/Flow");
    assert_non_null(p);
    assert_string_equal(p->channel, "pump1.flow");
    p = spb_map_channel(n, "Tank1", "Level");
    assert_non_null(p);
    assert_string_equal(p->channel, "reservoir.level");
    assert_null(spb_map_channel(n, "", "Level"));          /* a device's metric, not the node's */
    assert_null(spb_map_channel(n, "", "Tank1::Level"));   /* the file's spelling is no name */
    assert_null(spb_map_channel(n, "Tank2", "Level"));     /* another device */
    assert_null(spb_map_channel(n, "Tank1", "Pump1/Flow"));
    assert_null(spb_map_channel(n, "", "pump1/flow"));     /* names are case-sensitive */
    assert_null(spb_map_channel(n, "", "Pump1/SpeedSetpoint")); /* an actuator is no channel */

    p = spb_map_actuator(n, "valve1");
    assert_non_null(p);
    assert_string_equal(p->device, "Tank1");
    assert_string_equal(p->metric, "Valve");
    assert_null(spb_map_actuator(n, "pump1.flow")); /* a channel is no actuator */
    assert_null(spb_map_actuator(n, "Pump1/SpeedSetpoint")); /* by actuator id, not metric */
    spb_map_destroy(&m);
}

/* spb_map_groups: each group once, in the order of its first node; never more than max. */
static void test_groups(void **state)
{
    (void)state;
    spb_map *m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(load(good_map, &m, err), CM_OK);
    const char *g[8] = {0};
    assert_int_equal(spb_map_groups(m, g, 8), 2); /* Plant1, Plant2, Plant1 again */
    assert_string_equal(g[0], "Plant1");
    assert_string_equal(g[1], "Plant2");
    assert_null(g[2]);
    assert_ptr_equal(g[0], m->nodes[0].group); /* pointers into the map */
    const char *one[1] = {0};
    assert_int_equal(spb_map_groups(m, one, 1), 1);
    assert_string_equal(one[0], "Plant1");
    assert_int_equal(spb_map_groups(m, NULL, 0), 0);
    spb_map_destroy(&m);

    /* five nodes of one group: one group */
    assert_int_equal(load("[node a]\ngroup = G\n[channels a]\nx = X\n"
                          "[node b]\ngroup = G\n[channels b]\nx = X\n"
                          "[node c]\ngroup = G\n[channels c]\nx = X\n"
                          "[node d]\ngroup = H\n[channels d]\nx = X\n"
                          "[node e]\ngroup = G\n[channels e]\nx = X\n",
                          &m, err),
                     CM_OK);
    assert_int_equal(spb_map_groups(m, g, 8), 2);
    assert_string_equal(g[0], "G");
    assert_string_equal(g[1], "H");
    spb_map_destroy(&m);
}

/* Sections may come in any order: a node's [channels] or [units] before its [node]. A metric may
 * be both a channel and an actuator (the actuator's result is the channel's next reading), and
 * one metric name may be mapped once per device and once for the node. */
static void test_accepted(void **state)
{
    (void)state;
    spb_map *m;
    char err[CM_CONF_ERRLEN];
    assert_int_equal(load("[units n1]\na = m\n"
                          "[channels n1]\na = A\nb = D1::A\nc = D2::A\n"
                          "[actuators n1]\nsp = A\n"
                          "[node n1]\ngroup = G.1_x-y\n",
                          &m, err),
                     CM_OK);
    assert_int_equal(m->nodes[0].n_channels, 3);
    assert_string_equal(m->nodes[0].channels[0].unit, "m");
    assert_string_equal(spb_map_channel(&m->nodes[0], "D2", "A")->channel, "c");
    assert_string_equal(spb_map_actuator(&m->nodes[0], "sp")->metric, "A");
    spb_map_destroy(&m);

    /* the longest ids, names and units taken */
    char text[2048], dev[65], metric[193], channel[65];
    memset(dev, 'd', 64);
    dev[64] = '\0';
    memset(metric, 'm', 192);
    metric[192] = '\0';
    memset(channel, 'c', 64);
    channel[64] = '\0';
    snprintf(text, sizeof text,
             "[node %s]\ngroup = %s\n[channels %s]\n%s = %s::%s\n[units %s]\n%s = 123456789012345\n",
             dev, dev, dev, channel, dev, metric, dev, channel);
    assert_int_equal(load(text, &m, err), CM_OK);
    assert_string_equal(m->nodes[0].id, dev);
    assert_string_equal(m->nodes[0].channels[0].metric, metric);
    assert_string_equal(m->nodes[0].channels[0].unit, "123456789012345");
    spb_map_destroy(&m);
}

#define NODE "[node gw-1]\ngroup = P\n"    /* lines 1, 2 */
#define CHANNELS "[channels gw-1]\na = A\n" /* lines 3, 4 */

static const struct {
    const char *text;
    const char *message;
} refusals[] = {
    /* sections */
    {NODE CHANNELS "[pumps gw-1]\nx = y\n",
     "t.map:5: unknown section [pumps gw-1] (node, channels, units, actuators)"},
    {NODE CHANNELS "[channels]\nb = B\n",
     "t.map:5: unknown section [channels] (node, channels, units, actuators)"},
    {NODE CHANNELS "[channels gw-2]\nb = B\n",
     "t.map:5: [channels gw-2] names no node of a [node gw-2] section"},
    {NODE CHANNELS "[units gw-2]\nb = m\n",
     "t.map:5: [units gw-2] names no node of a [node gw-2] section"},
    {NODE CHANNELS "[actuators gw-2]\nb = B\n",
     "t.map:5: [actuators gw-2] names no node of a [node gw-2] section"},
    {"# nothing here\n", "t.map: no [node ID] section: the host would serve no edge node"},
    {"", "t.map: no [node ID] section: the host would serve no edge node"},
    {NODE, "t.map:1: [node gw-1] has no [channels gw-1] section: nothing to map"},
    {NODE "[channels gw-1]\n", "t.map:1: [node gw-1] has no [channels gw-1] section: nothing to map"},
    {NODE "[units gw-1]\n", "t.map:1: [node gw-1] has no [channels gw-1] section: nothing to map"},
    /* node and group ids */
    {"[node gw:1]\ngroup = P\n[channels gw:1]\na = A\n",
     "t.map:1: [node gw:1]: a node id is a gateway id: 1 to 64 of [A-Za-z0-9._-]"},
    {"[node gw-1]\n" CHANNELS, "t.map: [node gw-1] missing required key 'group'"},
    /* the node's own fault, even when its channels come first */
    {CHANNELS "[node gw-1]\n", "t.map: [node gw-1] missing required key 'group'"},
    {"[node gw-1]\ngroup =\n" CHANNELS, "t.map: [node gw-1] missing required key 'group'"},
    {"[node gw-1]\ngroup = Plant 1\n" CHANNELS,
     "t.map:2: [node gw-1] group 'Plant 1': 1 to 64 of [A-Za-z0-9._-]"},
    {"[node gw-1]\ngroup = Plant/1\n" CHANNELS,
     "t.map:2: [node gw-1] group 'Plant/1': 1 to 64 of [A-Za-z0-9._-]"},
    {"[node gw-1]\ngroup = Plant+\n" CHANNELS,
     "t.map:2: [node gw-1] group 'Plant+': 1 to 64 of [A-Za-z0-9._-]"},
    {"[node gw-1]\ngroup = "
     "ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg\n" CHANNELS,
     "t.map:2: [node gw-1] group "
     "'ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg': 1 to 64 of "
     "[A-Za-z0-9._-]"},
    /* points */
    {NODE CHANNELS "b = A\n", "t.map:5: [channels gw-1] metric 'A' is mapped twice (also to a)"},
    {NODE "[channels gw-1]\na = T::A\nb = A\nc = T::A\n",
     "t.map:6: [channels gw-1] metric 'T::A' is mapped twice (also to a)"},
    {NODE CHANNELS "[actuators gw-1]\nx = X\ny = X\n",
     "t.map:7: [actuators gw-1] metric 'X' is mapped twice (also to x)"},
    {NODE "[channels gw-1]\na = ::A\n",
     "t.map:4: [channels gw-1] '::A' is not a metric name (1 to 192 characters) or DEVICE::metric"},
    {NODE "[channels gw-1]\na = T::\n",
     "t.map:4: [channels gw-1] 'T::' is not a metric name (1 to 192 characters) or DEVICE::metric"},
    {NODE "[channels gw-1]\na =\n",
     "t.map:4: [channels gw-1] '' is not a metric name (1 to 192 characters) or DEVICE::metric"},
    {NODE "[channels gw-1]\na = Tank 1::Level\n",
     "t.map:4: [channels gw-1] 'Tank 1::Level' is not a metric name (1 to 192 characters) or "
     "DEVICE::metric"},
    {NODE CHANNELS "[actuators gw-1]\nx = T/1::X\n",
     "t.map:6: [actuators gw-1] 'T/1::X' is not a metric name (1 to 192 characters) or "
     "DEVICE::metric"},
    /* units */
    {NODE CHANNELS "[units gw-1]\nb = m\n",
     "t.map:6: [units gw-1] 'b' is not a channel of [channels gw-1]"},
    {NODE CHANNELS "[actuators gw-1]\nx = X\n[units gw-1]\nx = m\n",
     "t.map:8: [units gw-1] 'x' is not a channel of [channels gw-1]"},
    {NODE CHANNELS "[units gw-1]\na =\n", "t.map:6: [units gw-1] unit of 'a': 1 to 15 characters"},
    {NODE CHANNELS "[units gw-1]\na = 1234567890123456\n",
     "t.map:6: [units gw-1] unit of 'a': 1 to 15 characters"},
    /* a refusal in the second node */
    {NODE CHANNELS "[node gw-2]\ngroup = P\n[channels gw-2]\nb = B\nc = B\n",
     "t.map:9: [channels gw-2] metric 'B' is mapped twice (also to b)"},
};

/* Every refusal: CM_ERR_CONFIG, no map, and one line naming the file, the line of the offending
 * key where there is one, and the reason. */
static void test_refusals(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        spb_map *m = (spb_map *)1;
        char err[CM_CONF_ERRLEN];
        cm_err rc = load(refusals[i].text, &m, err);
        if (rc != CM_ERR_CONFIG || strcmp(err, refusals[i].message) != 0)
            fail_msg("case %zu: rc %d, got \"%s\", expected \"%s\"", i, (int)rc, err,
                     refusals[i].message);
        assert_null(m);
    }
}

/* Lengths one past the limits: a device id of 65, a metric of 193, a channel name of 65, a node
 * id of 65 characters. */
static void test_refused_lengths(void **state)
{
    (void)state;
    char text[2048], expect[1024], long_id[66], metric[194];
    memset(long_id, 'd', 65);
    long_id[65] = '\0';
    memset(metric, 'm', 193);
    metric[193] = '\0';
    spb_map *m;
    char err[CM_CONF_ERRLEN];

    snprintf(text, sizeof text, NODE "[channels gw-1]\na = %s::A\n", long_id);
    assert_int_equal(load(text, &m, err), CM_ERR_CONFIG);
    snprintf(expect, sizeof expect,
             "t.map:4: [channels gw-1] '%s::A' is not a metric name (1 to 192 characters) or "
             "DEVICE::metric",
             long_id);
    assert_string_equal(err, expect);
    assert_null(m);

    snprintf(text, sizeof text, NODE "[channels gw-1]\na = D::%s\n", metric);
    assert_int_equal(load(text, &m, err), CM_ERR_CONFIG);
    snprintf(expect, sizeof expect,
             "t.map:4: [channels gw-1] 'D::%s' is not a metric name (1 to 192 characters) or "
             "DEVICE::metric",
             metric);
    assert_string_equal(err, expect);

    snprintf(text, sizeof text, NODE "[channels gw-1]\n%s = A\n", long_id);
    assert_int_equal(load(text, &m, err), CM_ERR_CONFIG);
    snprintf(expect, sizeof expect, "t.map:4: [channels gw-1] name '%s' is longer than 64",
             long_id);
    assert_string_equal(err, expect);

    snprintf(text, sizeof text, "[node %s]\ngroup = P\n[channels %s]\na = A\n", long_id, long_id);
    assert_int_equal(load(text, &m, err), CM_ERR_CONFIG);
    snprintf(expect, sizeof expect,
             "t.map:1: [node %s]: a node id is a gateway id: 1 to 64 of [A-Za-z0-9._-]", long_id);
    assert_string_equal(err, expect);
    assert_null(m);
}

/* spb_map.h promises that "every problem stops the host at start with file, line and reason":
 * the refusals that concern a section itself (an unknown section, a [channels|units|actuators X]
 * of no [node X], an invalid node id) name the line of its header, as cm_conf_check does. (They
 * named none at first: found by this test, reported, and fixed with cm_conf_section_line.) */
static void test_section_refusals_name_their_line(void **state)
{
    (void)state;
    static const struct {
        const char *text, *prefix, *reason;
    } cases[] = {
        {NODE CHANNELS "[pumps gw-1]\nx = y\n", "t.map:5: ", "unknown section [pumps gw-1]"},
        {NODE CHANNELS "[channels gw-2]\nb = B\n", "t.map:5: ", "[channels gw-2] names no node"},
        {"[node gw:1]\ngroup = P\n[channels gw:1]\na = A\n", "t.map:1: ", "[node gw:1]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spb_map *m;
        char err[CM_CONF_ERRLEN];
        assert_int_equal(load(cases[i].text, &m, err), CM_ERR_CONFIG);
        assert_null(m);
        assert_non_null(strstr(err, cases[i].reason));
        if (strncmp(err, cases[i].prefix, strlen(cases[i].prefix)) != 0)
            fail_msg("case %zu: \"%s\" names no line (expected it to start \"%s\")", i, err,
                     cases[i].prefix);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_map),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_refused_lengths),
        cmocka_unit_test(test_section_refusals_name_their_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
