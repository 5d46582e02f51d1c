/* cm_conf: the INI-style file format of every suido configuration and data profile.
 *
 *   # comment
 *   [section]            or  [type name]   (the section is then "type name")
 *   key = value          # a '#' after white space starts a comment
 *
 * Keys are unique within a section; values are trimmed; a value may be a comma-separated list.
 * Every error names the file, the line and the reason ("verify.conf:12: duplicate key 'bind'"),
 * so a daemon can refuse to start with one clear line. Lines are at most 4 KiB, files 4 MiB. */
#ifndef CM_CONF_H
#define CM_CONF_H
#include <stddef.h>
#include "cm_err.h"

typedef struct cm_conf cm_conf;

/* One table row per accepted key: the table is the whole configuration surface of a daemon.
 * section_type matches "[type]" and "[type name]" sections alike; key "*" accepts any key. */
typedef struct cm_conf_spec {
    const char *section_type;
    const char *key;
    int required;       /* 1: must be present in every section of that type */
    const char *help;   /* one line for the docs and -h */
} cm_conf_spec;

#define CM_CONF_ERRLEN 512

/* Loads and parses path. On error *out is NULL and err holds "path:line: reason". Caller frees
 * with cm_conf_destroy. */
cm_err cm_conf_load(const char *path, cm_conf **out, char err[CM_CONF_ERRLEN]);
/* The whole file (at most 4 MiB, not empty), NUL-terminated; the caller frees *text. The same
 * refusals and messages as cm_conf_load, for files that are parsed some other way. */
cm_err cm_conf_read_file(const char *path, char **text, size_t *len, char err[CM_CONF_ERRLEN]);
/* Parses an in-memory text; name is used in error messages. */
cm_err cm_conf_parse(const char *name, const char *text, size_t len, cm_conf **out,
                     char err[CM_CONF_ERRLEN]);
void cm_conf_destroy(cm_conf **c);

/* Refuses unknown sections, unknown keys and missing required keys against spec (terminated by
 * a row with section_type NULL). */
cm_err cm_conf_check(const cm_conf *c, const cm_conf_spec *spec, char err[CM_CONF_ERRLEN]);

/* Value of key in section, or NULL. The string lives as long as c. */
const char *cm_conf_get(const cm_conf *c, const char *section, const char *key);
/* Line of key in section (0 if absent), for error messages of callers that validate values. */
int cm_conf_line(const cm_conf *c, const char *section, const char *key);
const char *cm_conf_name(const cm_conf *c);

/* Required string: CM_ERR_CONFIG with "path: [section] missing key 'k'" if absent or empty. */
cm_err cm_conf_req(const cm_conf *c, const char *section, const char *key, const char **out,
                   char err[CM_CONF_ERRLEN]);
/* Integer in [min,max]; absent -> dflt. */
cm_err cm_conf_long(const cm_conf *c, const char *section, const char *key, long dflt, long min,
                    long max, long *out, char err[CM_CONF_ERRLEN]);
/* Floating point (finite); absent -> dflt. */
cm_err cm_conf_double(const cm_conf *c, const char *section, const char *key, double dflt,
                      double *out, char err[CM_CONF_ERRLEN]);

/* The i-th key of section (0-based, file order): 1 with *key, *value and *line set, 0 past the
 * last. For sections whose keys are names chosen by the file (a map), not by the daemon. */
int cm_conf_entry(const cm_conf *c, const char *section, size_t i, const char **key,
                  const char **value, int *line);

/* Number of sections; cm_conf_section(c, i) is the i-th section's full name in file order. */
size_t cm_conf_section_count(const cm_conf *c);
const char *cm_conf_section(const cm_conf *c, size_t i);
/* The line of the i-th section's header, for error messages (0 when i is out of range). */
int cm_conf_section_line(const cm_conf *c, size_t i);
/* If section is "type name" and type matches, returns "name"; if it is exactly "type", returns
 * ""; otherwise NULL. */
const char *cm_conf_section_name(const char *section, const char *type);

/* Splits a comma-separated list into at most max trimmed items copied into buf (bufsize bytes).
 * Returns the number of items, or -1 if they do not fit. */
int cm_conf_split(const char *value, char *buf, size_t bufsize, const char **items, int max);

/* A gateway's site, kind, model or firmware: such names end up in MQTT topics, gateway.conf
 * files and log lines, so only 1 to CM_LABEL_MAX of [A-Za-z0-9._-] are taken. 1 if s is one. */
#define CM_LABEL_MAX 64
int cm_valid_label(const char *s);

#endif
