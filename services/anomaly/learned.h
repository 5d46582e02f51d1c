/* learned: the checker that learns a plant's normal behaviour from history, and its one detection
 * step, shared by `suido-anomaly replay` and the live service.
 *
 * Model. Every channel that varied in the normal history is predicted from all the other channels
 * at the same instant and from every channel (itself included) one step earlier: a ridge linear
 * regression per channel, fitted on normal rows only. The prediction of a tank level is thus
 * "last level + what the pumps, valves and pressures say happened", of a pump flow "what its
 * status and the pressures around it imply", so a sensor whose reading disagrees with the rest
 * of the plant — a replayed or offset reading, a pump running at the wrong speed, a control rule
 * acting on a falsified level — leaves a residual. Channels that never moved in the normal
 * history (a standby pump) are expected to stay where they were.
 *
 * Scale. Each residual is divided by its spread on rows the regression did not see (k-fold,
 * contiguous folds), so z = 1 means "a typical error on new normal data". Training data are first
 * rounded to the readings' resolution, and so is every replayed or live row, so a historian that
 * exports two decimals is not mistaken for an anomaly.
 *
 * Decision. Per channel e = EWMA(min(|z|, cap)); its threshold is the largest e seen over the
 * normal history, computed with the out-of-fold residuals and the same EWMA. The score of a row
 * is max over channels of e / threshold (or, for a channel expected constant, its deviation in
 * units of 1.5 resolutions). The flag rises when the score exceeds `on` (> 1: a margin over the
 * worst normal hour) and falls when it drops below `off` (hysteresis: an attack is a window, not
 * an instant). The channel with the largest ratio is the explanation.
 *
 * Causality. learned_state holds only what earlier rows left (the previous row, the EWMAs and the
 * flag), so the flag of a row depends on that row and earlier ones only, in replay as live. */
#ifndef LEARNED_H
#define LEARNED_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"
#include "cm_profile.h"

#define LEARNED_ERRLEN 512
#define LEARNED_FORMAT 1 /* version of the model file; a reader refuses any other */

typedef struct learned_params {
    double resolution; /* reading resolution, same unit as each channel (0.01) */
    double alpha;      /* EWMA weight of the newest residual (0.25) */
    double cap;        /* |z| cap, so one wild reading cannot hold the flag for long (12) */
    double on;         /* raise when score > on (1.1) */
    double off;        /* clear when score < off (0.6) */
    double ridge;      /* ridge penalty relative to each predictor's variance (1e-6) */
    int folds;         /* contiguous folds for out-of-fold residuals (5) */
} learned_params;

void learned_params_default(learned_params *p);

/* Training rows, in time order, values in the model's channel order. */
typedef struct learned_data {
    size_t n_rows;
    size_t n_ch;
    const double *v;          /* n_rows x n_ch, row-major; NAN = missing */
    const unsigned char *use; /* per row: 1 = known normal, may be fitted; 0 = attack or unknown */
    const unsigned char *brk; /* per row: 1 = does not follow the previous row one period later
                                 (first row of a file, or a gap) */
} learned_data;

typedef struct learned_model learned_model;
typedef struct learned_state learned_state;

/* Fits a model of the channels ids[0..n_ch) (channel ids of profile p, in the column order of
 * d) on the rows of d marked use whose predecessor is also usable. period_s is the sampling
 * period the rows follow. Fails with a reason if too few rows are usable. */
cm_err learned_train(const cm_profile *p, const char *const *ids, size_t n_ch, double period_s,
                     const learned_data *d, const learned_params *par, learned_model **out,
                     char err[LEARNED_ERRLEN]);
void learned_destroy(learned_model **m);

/* Writes the model as a versioned text file (written to path.tmp, then renamed). */
cm_err learned_save(const learned_model *m, const char *path, char err[LEARNED_ERRLEN]);
/* Reads a model and checks it against profile p: the file format version, the profile name,
 * and that p's channels of the model's site kinds are exactly the model's channels, with the
 * same units. Any mismatch is refused with the reason. */
cm_err learned_load(const char *path, const cm_profile *p, learned_model **out,
                    char err[LEARNED_ERRLEN]);

size_t learned_channel_count(const learned_model *m);
const char *learned_channel_id(const learned_model *m, size_t i);
double learned_period(const learned_model *m);
const learned_params *learned_model_params(const learned_model *m);
/* Number of channels with a regression (the others are expected constant). */
size_t learned_regressed_count(const learned_model *m);

cm_err learned_state_new(const learned_model *m, learned_state **out);
void learned_state_destroy(learned_state **st);
/* The next row does not follow the previous one (a gap): its one-step-earlier inputs are
 * unavailable, so it is judged on the constant channels only; EWMAs and the flag carry on. */
void learned_state_break(learned_state *st);

/* The one detection step. row holds learned_channel_count(m) values in the model's channel
 * order (NAN = missing: held at the previous value and not judged). Writes the flag (0/1) and
 * the score (>= 0; the flag rose above `on`). Uses only row and st, and updates st. */
void learned_step(const learned_model *m, learned_state *st, const double *row, int *flag,
                  double *score);
/* Index of the channel that drove the last score (the largest ratio), or -1 before any. */
int learned_state_top(const learned_state *st);

#endif
