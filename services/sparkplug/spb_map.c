/* spb_map: see spb_map.h. */
#include "spb_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A Sparkplug id (group, node, device): 1..64 of [A-Za-z0-9._-]. The specification allows any
 * UTF-8 but '+', '/' and '#'; the narrower set keeps ids safe in topics, log lines and the
 * broker's ACL, and a node id is a suido gateway id anyway. */
static int valid_id(const char *s) { return cm_valid_label(s); }

/* "metric" or "DEVICE::metric" into p. */
static int split_point(const char *v, spb_point *p)
{
    const char *sep = strstr(v, "::");
    const char *metric = v;
    p->device[0] = '\0';
    if (sep) {
        size_t n = (size_t)(sep - v);
        if (n == 0 || n > SPB_ID_MAX)
            return 0;
        memcpy(p->device, v, n);
        p->device[n] = '\0';
        if (!valid_id(p->device))
            return 0;
        metric = sep + 2;
    }
    size_t n = strlen(metric);
    if (n == 0 || n > SPB_NAME_MAX)
        return 0;
    memcpy(p->metric, metric, n + 1);
    return 1;
}

/* The [channels X] or [actuators X] section of a node into *points. */
static cm_err load_points(const cm_conf *c, const char *section, spb_point **points, size_t *n,
                          char err[CM_CONF_ERRLEN])
{
    const char *key, *value;
    int line;
    size_t count = 0;
    while (cm_conf_entry(c, section, count, &key, &value, &line))
        count++;
    *points = calloc(count ? count : 1, sizeof **points);
    if (!*points) {
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", cm_conf_name(c));
        return CM_ERR_NOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        cm_conf_entry(c, section, i, &key, &value, &line);
        spb_point *p = &(*points)[i];
        if (strlen(key) >= sizeof p->channel) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] name '%s' is longer than 64",
                     cm_conf_name(c), line, section, key);
            return CM_ERR_CONFIG;
        }
        strcpy(p->channel, key);
        if (!split_point(value, p)) {
            snprintf(err, CM_CONF_ERRLEN,
                     "%s:%d: [%s] '%s' is not a metric name (1 to %d characters) or "
                     "DEVICE::metric",
                     cm_conf_name(c), line, section, value, SPB_NAME_MAX);
            return CM_ERR_CONFIG;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp((*points)[k].device, p->device) == 0 &&
                strcmp((*points)[k].metric, p->metric) == 0) {
                snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] metric '%s' is mapped twice (also to %s)",
                         cm_conf_name(c), line, section, value, (*points)[k].channel);
                return CM_ERR_CONFIG;
            }
    }
    *n = count;
    return CM_OK;
}

static cm_err load_node(const cm_conf *c, const char *id, int line, spb_map_node *nd,
                        char err[CM_CONF_ERRLEN])
{
    char section[SPB_ID_MAX + 16];
    snprintf(section, sizeof section, "node %s", id);
    if (!valid_id(id)) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [node %s]: a node id is a gateway id: 1 to 64 of "
                 "[A-Za-z0-9._-]", cm_conf_name(c), line, id);
        return CM_ERR_CONFIG;
    }
    strcpy(nd->id, id);
    const char *group;
    cm_err rc = cm_conf_req(c, section, "group", &group, err);
    if (rc != CM_OK)
        return rc;
    if (!valid_id(group)) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] group '%s': 1 to 64 of [A-Za-z0-9._-]",
                 cm_conf_name(c), cm_conf_line(c, section, "group"), section, group);
        return CM_ERR_CONFIG;
    }
    strcpy(nd->group, group);
    snprintf(section, sizeof section, "channels %s", id);
    if ((rc = load_points(c, section, &nd->channels, &nd->n_channels, err)) != CM_OK)
        return rc;
    if (nd->n_channels == 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [node %s] has no [channels %s] section: nothing to "
                 "map", cm_conf_name(c), line, id, id);
        return CM_ERR_CONFIG;
    }
    snprintf(section, sizeof section, "actuators %s", id);
    if ((rc = load_points(c, section, &nd->actuators, &nd->n_actuators, err)) != CM_OK)
        return rc;
    snprintf(section, sizeof section, "units %s", id);
    const char *key, *value;
    int at;
    for (size_t i = 0; cm_conf_entry(c, section, i, &key, &value, &at); i++) {
        spb_point *p = NULL;
        for (size_t k = 0; k < nd->n_channels && !p; k++)
            if (strcmp(nd->channels[k].channel, key) == 0)
                p = &nd->channels[k];
        if (!p) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] '%s' is not a channel of [channels %s]",
                     cm_conf_name(c), at, section, key, id);
            return CM_ERR_CONFIG;
        }
        if (!*value || strlen(value) >= sizeof p->unit) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] unit of '%s': 1 to 15 characters",
                     cm_conf_name(c), at, section, key);
            return CM_ERR_CONFIG;
        }
        strcpy(p->unit, value);
    }
    return CM_OK;
}

/* Whether the file has a section of that exact name (wherever it is: a [channels X] may come
 * before its [node X], whose own faults are then reported for it). */
static int has_section(const cm_conf *c, const char *name)
{
    for (size_t i = 0; i < cm_conf_section_count(c); i++)
        if (strcmp(cm_conf_section(c, i), name) == 0)
            return 1;
    return 0;
}

cm_err spb_map_load(const cm_conf *c, spb_map **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    spb_map *m = calloc(1, sizeof *m);
    size_t ns = cm_conf_section_count(c);
    if (!m || !(m->nodes = calloc(ns ? ns : 1, sizeof *m->nodes))) {
        free(m);
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", cm_conf_name(c));
        return CM_ERR_NOMEM;
    }
    cm_err rc = CM_OK;
    for (size_t i = 0; i < ns && rc == CM_OK; i++) {
        const char *sec = cm_conf_section(c, i);
        int line = cm_conf_section_line(c, i);
        const char *id = cm_conf_section_name(sec, "node");
        if (id) {
            rc = load_node(c, id, line, &m->nodes[m->n_nodes], err);
            m->n_nodes++;
            continue;
        }
        const char *kinds[] = {"channels", "units", "actuators"};
        const char *of = NULL;
        for (size_t k = 0; k < 3 && !of; k++)
            of = cm_conf_section_name(sec, kinds[k]);
        char node_sec[SPB_ID_MAX + 16];
        if (of)
            snprintf(node_sec, sizeof node_sec, "node %s", of);
        if (!of || !*of) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: unknown section [%s] (node, channels, units, "
                     "actuators)", cm_conf_name(c), line, sec);
            rc = CM_ERR_CONFIG;
        } else if (!has_section(c, node_sec)) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] names no node of a [node %s] section",
                     cm_conf_name(c), line, sec, of);
            rc = CM_ERR_CONFIG;
        }
    }
    if (rc == CM_OK && m->n_nodes == 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s: no [node ID] section: the host would serve no edge node",
                 cm_conf_name(c));
        rc = CM_ERR_CONFIG;
    }
    if (rc != CM_OK) {
        spb_map_destroy(&m);
        return rc;
    }
    *out = m;
    return CM_OK;
}

void spb_map_destroy(spb_map **mp)
{
    spb_map *m = *mp;
    if (!m)
        return;
    for (size_t i = 0; i < m->n_nodes; i++) {
        free(m->nodes[i].channels);
        free(m->nodes[i].actuators);
    }
    free(m->nodes);
    free(m);
    *mp = NULL;
}

const spb_map_node *spb_map_find(const spb_map *m, const char *node)
{
    for (size_t i = 0; i < m->n_nodes; i++)
        if (strcmp(m->nodes[i].id, node) == 0)
            return &m->nodes[i];
    return NULL;
}

const spb_point *spb_map_channel(const spb_map_node *n, const char *device, const char *metric)
{
    for (size_t i = 0; i < n->n_channels; i++)
        if (strcmp(n->channels[i].device, device) == 0 &&
            strcmp(n->channels[i].metric, metric) == 0)
            return &n->channels[i];
    return NULL;
}

const spb_point *spb_map_actuator(const spb_map_node *n, const char *actuator)
{
    for (size_t i = 0; i < n->n_actuators; i++)
        if (strcmp(n->actuators[i].channel, actuator) == 0)
            return &n->actuators[i];
    return NULL;
}

size_t spb_map_groups(const spb_map *m, const char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_nodes; i++) {
        int seen = 0;
        for (size_t k = 0; k < n && !seen; k++)
            seen = strcmp(out[k], m->nodes[i].group) == 0;
        if (!seen && n < max)
            out[n++] = m->nodes[i].group;
    }
    return n;
}
