/* archive_gaps: `suidoctl archive gaps` — per gateway and boot epoch, the sequence numbers the
 * archive is missing (between 1 and the highest it holds) and how many copies of already stored
 * envelopes it refused as duplicates (retransmissions and replays: stored once, never twice).
 * Data, back-fill and command results share one sequence counter per boot epoch, so all count.
 * Reads the archive database read-only while the services run. */
#ifndef SUIDOCTL_ARCHIVE_GAPS_H
#define SUIDOCTL_ARCHIVE_GAPS_H
#include "cm_conf.h"

/* Prints the report (JSON with json set); returns 0 when nothing is missing, 1 when something
 * is (or on failure, with the reason on stderr), 2 on a configuration problem, 3 when the
 * archive cannot be opened or reached. gateway: only that gateway, or NULL for all. The archive
 * is SQLite or PostgreSQL, as suidoctl.conf's [archive] names it (ctl_archive_open). */
int archive_gaps(const cm_conf *conf, const char *gateway, int json);

#endif
