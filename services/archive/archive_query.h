/* archive_query: the archive's reads for the monitor, and the aggregates that make them cheap.
 *
 * The archive stores readings only inside their signed (possibly encrypted) envelopes. So that
 * trends and planning reports need no envelope opened, it also keeps, per gateway and profile
 * channel, aggregates of the mapped readings the profile stage sends with each verified batch:
 *
 *   readings_minute (gateway, channel, minute_ms): readings, min, max, sum, last value and time
 *   readings_hour   (gateway, channel, hour_ms):   the same per hour, and its minutes with readings
 *                                                  (years of data stay small)
 *   readings_series (gateway, channel):            first and last reading time, last value
 *
 * Readings of quality BAD (the gateway reports that the device did not answer) are in none of
 * them: they stay only in their envelopes.
 *
 * A batch's readings are added (archive_agg_add) when the batch is stored, and written
 * (archive_agg_flush, one upsert per gateway, channel and minute touched) in the same transaction,
 * just before it commits: the aggregates always describe exactly the stored batches, and a
 * duplicate batch, never stored twice, is never counted twice. A rollback discards them.
 *
 * The reads (archive_query_answer) are ArchiveOp TREND, GATEWAY_STATS, COMMAND_LOG, AUDIT_LIST,
 * AUDIT_VERIFY and PLANNING. They check no rights: archive_api's table does, before any of them
 * runs. SQL is the dialect SQLite and PostgreSQL share (cm_sql). */
#ifndef ARCHIVE_QUERY_H
#define ARCHIVE_QUERY_H
#include <stdint.h>

#include "cm_err.h"
#include "cm_sql.h"
#include "suido.pb-c.h"

/* Creates the aggregate tables and the indexes the reads use, if missing (inside the schema's
 * transaction). */
cm_err archive_query_init(cm_sql *db);

typedef struct archive_agg archive_agg;
archive_agg *archive_agg_new(void);
void archive_agg_destroy(archive_agg **a);
/* Adds the mapped readings of a stored batch (non-finite values, malformed channel names and
 * readings of quality BAD, which are no measurements, are skipped; UNCERTAIN ones count). When the pending set is full it is flushed into db first (the caller's transaction
 * is open). */
cm_err archive_agg_add(archive_agg *a, cm_sql *db, const Suido__StageMessage *m);
/* Writes what is pending, inside the caller's open transaction; pending is empty afterwards
 * whatever the outcome (a failure must roll the transaction back). */
cm_err archive_agg_flush(archive_agg *a, cm_sql *db);
/* Forgets what is pending (the transaction was rolled back). */
void archive_agg_discard(archive_agg *a);
/* Gateway/channel/minute entries pending. */
size_t archive_agg_pending(const archive_agg *a);

/* Answers q into rep's fields for that op (memory owned by rep until archive_query_free).
 * CM_ERR_INVAL for malformed requests and ops that are not reads (unknown gateway or channel
 * names are simply empty answers), CM_ERR_DB on a database error. No rights are checked here. */
cm_err archive_query_answer(cm_sql *db, const Suido__ArchiveRequest *q, uint64_t now_ms,
                            Suido__ArchiveReply *rep);
/* Frees what archive_query_answer put into rep (not rep itself). */
void archive_query_free(Suido__ArchiveReply *rep);

#endif
