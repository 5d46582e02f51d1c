/* archive_gaps: `suidoctl archive gaps` — per gateway and boot epoch, the sequence numbers the
 * archive is missing (between 1 and the highest it holds) and how many copies of already stored
 * envelopes it refused as duplicates (retransmissions and replays: stored once, never twice).
 * Data, back-fill and command results share one sequence counter per boot epoch, so all count.
 * Runs the archive recorded as lost (acknowledged to their gateway, then not held after a
 * restore from an older backup: table acked_lost, services/archive/archive_acked.h) are listed
 * apart and are not counted as missing: nothing will ever fill them.
 * Reads the archive database read-only while the services run. */
#ifndef SUIDOCTL_ARCHIVE_GAPS_H
#define SUIDOCTL_ARCHIVE_GAPS_H
#include "cm_conf.h"

/* Prints the report (JSON with json set); returns 0 when nothing is missing or lost, 1 when
 * something is missing (or on failure, with the reason on stderr), 2 on a configuration
 * problem, 3 when the archive cannot be opened or reached, 4 when nothing is missing but runs
 * recorded as lost to a restore exist (a fact that stays: alert on their number rising). gateway: only that gateway, or NULL for all. The archive
 * is SQLite or PostgreSQL, as suidoctl.conf's [archive] names it (ctl_archive_open). */
int archive_gaps(const cm_conf *conf, const char *gateway, int json);

#endif
