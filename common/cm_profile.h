/* cm_profile: the utility's data profile — which channels exist for each kind of site, in which
 * unit, with which physical range, alarm limits, deadband, maximum rate of change and expected
 * reporting period. Loaded from an INI-style file (cm_conf) that engineers read and diff:
 *
 *   [profile]
 *   name = Example utility
 *   version = 3
 *
 *   [channel reservoir.level]      # <site kind>.<channel name as the gateway sends it>
 *   quantity = level
 *   unit = m
 *   range = 0, 10                  # physical range: outside it the sensor is faulty
 *   limits = 0.5, 1.0, 9.0, 9.5    # LL, L, H, HH (optional)
 *   deadband = 0.1                 # an alarm clears only this far inside its limit
 *   max_rate = 0.02                # largest credible change per second (optional)
 *   period_s = 1                   # expected reporting period
 *   confidential = no
 *
 * A malformed profile is refused whole with file, line and reason. Immutable once loaded. */
#ifndef CM_PROFILE_H
#define CM_PROFILE_H
#include "cm_conf.h"
#include "cm_err.h"

typedef struct cm_channel {
    char id[96];            /* "reservoir.level" */
    char kind[32];          /* "reservoir" */
    char name[64];          /* "level" */
    char quantity[32];
    char unit[16];
    double range_min, range_max;
    int has_limits;
    double ll, l, h, hh;
    double deadband;
    double max_rate;        /* 0: no rate check */
    double period_s;
    int confidential;
} cm_channel;

typedef struct cm_profile cm_profile;

cm_err cm_profile_load(const char *path, cm_profile **out, char err[CM_CONF_ERRLEN]);
cm_err cm_profile_parse(const cm_conf *conf, cm_profile **out, char err[CM_CONF_ERRLEN]);
void cm_profile_destroy(cm_profile **p);
const char *cm_profile_name(const cm_profile *p);
long cm_profile_version(const cm_profile *p);
size_t cm_profile_channel_count(const cm_profile *p);
const cm_channel *cm_profile_channel_at(const cm_profile *p, size_t i);
/* The channel `name` of site kind `kind`, or NULL. */
const cm_channel *cm_profile_channel(const cm_profile *p, const char *kind, const char *name);

/* Converts v from unit `from` to unit `to` (identical units, or a known pair such as kPa/bar,
 * m3/h / L/s, degF/degC). CM_ERR_INVAL for units that do not convert. */
cm_err cm_unit_convert(const char *from, const char *to, double v, double *out);

#endif
