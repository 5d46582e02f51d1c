/* spb_map: the Sparkplug map file — which edge nodes the host serves and which of their metrics
 * are which profile channels.
 *
 *   # an edge node: its node id is its suido gateway id (the CN of its client certificate), so
 *   # the broker lets it publish on its own Sparkplug topics only
 *   [node gw-spb-01]
 *   group = Plant1                    # its Sparkplug group id
 *
 *   [channels gw-spb-01]              # profile channel = metric, or DEVICE::metric
 *   pump1.flow = Pump1/Flow
 *   reservoir.level = Tank1::Level
 *
 *   [units gw-spb-01]                 # optional: the unit of a channel whose metric has no
 *   pump1.flow = L/s                  # engUnit property in its birth
 *
 *   [actuators gw-spb-01]             # optional: a gated command on the actuator writes the
 *   pump1.speed = Pump1/SpeedSetpoint # metric (NCMD, or DCMD for DEVICE::metric); its result
 *                                     # is the next reading of the same metric
 *
 * A value is trimmed and a " #" in it starts a comment (cm_conf): a metric whose name holds
 * " #" cannot be mapped. Every problem stops the host at start with file, line and reason. */
#ifndef SPB_MAP_H
#define SPB_MAP_H
#include <stddef.h>
#include "cm_conf.h"

#define SPB_ID_MAX 64   /* a group, node or device id */
#define SPB_NAME_MAX 192 /* a metric name */

typedef struct spb_point {
    char channel[65];            /* profile channel, or actuator id */
    char device[SPB_ID_MAX + 1]; /* "" for a node metric */
    char metric[SPB_NAME_MAX + 1];
    char unit[16];               /* from [units]; "" when the birth must give it */
} spb_point;

typedef struct spb_map_node {
    char id[SPB_ID_MAX + 1];    /* node id = gateway id */
    char group[SPB_ID_MAX + 1];
    spb_point *channels;
    size_t n_channels;
    spb_point *actuators;
    size_t n_actuators;
} spb_map_node;

typedef struct spb_map {
    spb_map_node *nodes;
    size_t n_nodes;
} spb_map;

/* Parses the map in conf (already loaded). On error *out stays NULL, err names file and line. */
cm_err spb_map_load(const cm_conf *conf, spb_map **out, char err[CM_CONF_ERRLEN]);
void spb_map_destroy(spb_map **m);

const spb_map_node *spb_map_find(const spb_map *m, const char *node);
/* The channel a metric of node (device "" for the node itself) carries, or NULL. */
const spb_point *spb_map_channel(const spb_map_node *n, const char *device, const char *metric);
/* The point an actuator is written through, or NULL. */
const spb_point *spb_map_actuator(const spb_map_node *n, const char *actuator);
/* The distinct groups of the map, in file order: *n_out of them, pointers into m. */
size_t spb_map_groups(const spb_map *m, const char **out, size_t max);

#endif
