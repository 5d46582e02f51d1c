/* registry_acked: the end-to-end acknowledgements the archive published, kept by the registry
 * (table acked_points), apart from the archive. A gateway drops a batch from its outbox once an
 * ack covers it, so after the archive is restored from an older backup these points are the only
 * record of what was acknowledged and is no longer held: the archive compares them with what it
 * holds at start (archive_acked.h) and reports the difference.
 *
 * A point is (gateway, boot epoch, seq): every sequence <= seq of that epoch was acknowledged.
 * Points only move forward (a lower seq for a known epoch changes nothing), and each gateway
 * keeps its ACKED_EPOCHS_KEPT newest epochs. The archive hands them over within seconds of
 * publishing (REG_ACKED_POINTS); anything acknowledged in those seconds before a backup is taken
 * and then lost is not recorded (docs: README "Restore"). */
#ifndef REGISTRY_ACKED_H
#define REGISTRY_ACKED_H
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "suido.pb-c.h"

#define ACKED_EPOCHS_KEPT 8

cm_err registry_acked_init(sqlite3 *db);

/* Records the points (one transaction); points with an empty or over-long gateway id or seq 0
 * are skipped and counted in *skipped. CM_ERR_DB on a database error (nothing recorded). */
cm_err registry_acked_put(sqlite3 *db, Suido__Ack *const *pts, size_t n, uint64_t now_ms,
                          size_t *skipped);

/* Every point kept, ordered by gateway and epoch, into *out (n_out of them; free with
 * registry_acked_free). */
cm_err registry_acked_list(sqlite3 *db, Suido__Ack ***out, size_t *n_out);
void registry_acked_free(Suido__Ack **pts, size_t n);

#endif
