/* cli: the offline commands of suido-anomaly, learning from and replaying historian CSV exports
 * (history.h) through the learned checker (learned.h):
 *
 *   suido-anomaly train --profile PROFILE --history CSV [--history CSV ...] [--labels CSV]
 *                       --model MODEL [--resolution R] [--alpha A] [--cap C] [--on X]
 *                       [--off Y] [--folds K]
 *   suido-anomaly replay --profile PROFILE --model MODEL --csv CSV --out FLAGS.csv
 *                        [--explain EXPLAIN.csv]
 *
 * Columns are matched to profile channels by name, ignoring case and surrounding spaces: a
 * header "L_T1" is channel "l_t1" (or the full id "ctown.l_t1"); a bare name must be unique
 * across the profile's site kinds. A column that is no profile channel is refused, and so is a
 * profile channel of the model's site kinds without a column.
 *
 * train fits on rows known to be normal: a row of a file without a label column, or labelled 0
 * (by its own ATT_FLAG column or by a --labels file joined on the timestamp). Rows labelled 1 or
 * unknown (-999) are never fitted; after training, every history file is replayed and the flags
 * on its labelled rows are reported, as a sanity check.
 *
 * replay writes FLAGS.csv with the header timestamp,flag,score and one row per input row, in
 * input order; the timestamp is written "YYYY-MM-DD HH:MM:SS". Each row goes through
 * learned_step, the detection step of the live service, so a flag uses that row and earlier
 * ones only. A step different from the model's period marks a gap (learned_state_break).
 * --explain also writes, per row, the channel that drove the score. */
#ifndef ANOMALY_CLI_H
#define ANOMALY_CLI_H

/* argv[1] is "train" or "replay". Returns the process exit code: 0 done, 1 failed (reason on
 * stderr), 2 usage error. */
int anomaly_cli(int argc, char **argv);

#endif
