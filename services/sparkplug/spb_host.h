/* spb_host: the Sparkplug B (spBv1.0, Sparkplug 3.0) host application's logic, without I/O.
 *
 * spb_host_handle takes one message from the broker (topic, payload, receipt time) and says what
 * to do: forward a record to the pipeline (a suido birth, data batch or death of the node's
 * gateway), refuse it (with a reason: counted, audited, stored as a refusal), and whether to ask
 * the node for a rebirth (NCMD "Node Control/Rebirth"). Per edge node it keeps the session:
 *
 *  - NBIRTH starts a session: its metrics (name, alias, datatype, engUnit property) and its
 *    bdSeq; every device's session ends. The session is numbered for the archive like a suido
 *    gateway's boot: boot_epoch = the NBIRTH's receipt in ms (always above the previous one),
 *    records seq 1, 2, ... DBIRTH adds a device's metrics; each birth forwarded declares every
 *    mapped channel of the node's session so far (the registry keeps the latest declaration).
 *  - NDATA/DDATA by alias (or by name for a metric born without one); each mapped metric becomes
 *    a reading of its profile channel (is_null: quality BAD). Unmapped metrics are skipped.
 *  - NDEATH ends the session only when its bdSeq is the NBIRTH's; DDEATH ends a device's, and
 *    its mapped channels get one reading of quality BAD each (never silence).
 *  - seq 0..255 over NBIRTH, DBIRTH, NDATA, DDATA and DDEATH of a node; a gap is counted and asks
 *    for a rebirth (the message itself is kept).
 *  - a message before its birth, with an unknown alias, a metric without the alias it was born
 *    with, a value of another datatype, a malformed payload or an oversize one is refused whole
 *    and, where a rebirth would repair it, asks for one.
 *  - rebirth requests to one node: at most one per rebirth_interval_ms; NBIRTHs of one node
 *    above births_per_minute are refused ("rebirth_storm").
 *
 * Not thread-safe: one caller (the host's MQTT callback thread). */
#ifndef SPB_HOST_H
#define SPB_HOST_H
#include <stdint.h>
#include "spb_map.h"
#include "suido.pb-c.h"

#define SPB_MAX_PAYLOAD 65536 /* the broker's maximum packet */
#define SPB_MAX_METRICS 1024  /* per message and per session */
#define SPB_MAX_DEVICES 256   /* online devices per node */

typedef struct spb_host spb_host;

typedef struct spb_limits {
    uint64_t rebirth_interval_ms; /* 0 -> 5000 */
    unsigned births_per_minute;   /* 0 -> 6 */
    uint64_t max_ahead_ms;        /* timestamps ahead of the host's clock; 0 -> 10000 */
} spb_limits;

typedef struct spb_result {
    /* NULL: accepted. Otherwise why it was refused: "bad_topic", "unknown_node", "oversize",
     * "malformed", "too_many_metrics" (also: too many devices), "no_bdseq", "rebirth_storm",
     * "data_before_birth", "unknown_alias", "missing_alias", "unknown_metric", "unnamed_metric",
     * "duplicate_alias", "datatype_mismatch", "no_unit", "timestamp_ahead", "stale_death" */
    const char *refused;
    char detail[SPB_NAME_MAX + 1]; /* "" or the metric concerned, for the log and audit */
    int ignored;         /* 1: a command (NCMD/DCMD) of a host, heard on the group's topics */
    char node[SPB_ID_MAX + 1];
    char type[8];        /* NBIRTH, NDATA, ... ("" when the topic did not parse) */
    int seq_gap;         /* 1: the seq was not the one expected (counted; the message is kept) */
    int rebirth;         /* 1: send the node a rebirth request now (already rate-limited) */
    /* A record for the pipeline (kind birth, data or death), or NULL; owned by the result. Its
     * topic is suido/v1/<gw>/<kind>, envelope the payload as received, provenance SPARKPLUG.
     * site and site_kind are the caller's to set. */
    Suido__StageMessage *record;
    unsigned readings, skipped; /* readings in the record; metrics not mapped to a channel */
    /* After a birth record: the readings of the values the birth carries (kind data), or NULL;
     * owned. */
    Suido__StageMessage *values;
    /* The result of a command this message reports on (kind cmdres), or NULL; owned. */
    Suido__StageMessage *result;
} spb_result;

/* A command for an edge node (from the gate), as the host writes it. */
typedef struct spb_write {
    char topic[SPB_ID_MAX * 3 + 32]; /* spBv1.0/<group>/NCMD/<node> or DCMD/<node>/<device> */
    uint8_t *payload;                /* malloc'd; the caller frees it */
    size_t len;
} spb_write;

/* Turns the gate's command into a write of the actuator's mapped metric, in the datatype the
 * node declared for it in its birth (named, and by alias when it was born with one), and
 * remembers it: the next value the node publishes for that metric is the command's result
 * (applied when it is the commanded value, failed otherwise). CM_OK and *w filled; otherwise
 * *refused holds the record of the command's refusal ("unknown_actuator": not in the map or not
 * born; "gateway_offline"; "expired"; "out_of_range" for a value the datatype cannot carry;
 * "busy": 8 commands to the node unanswered already) to
 * forward like any result. A command not answered by its expiry is forgotten (the gate reports
 * it unanswered). */
cm_err spb_host_command(spb_host *h, const Suido__Command *c, uint64_t now_ms, spb_write *w,
                        Suido__StageMessage **refused);

spb_host *spb_host_new(const spb_map *map, const spb_limits *limits);
void spb_host_destroy(spb_host **h);

/* Handles one message; res is filled (call spb_result_clear after use). */
void spb_host_handle(spb_host *h, const char *topic, const uint8_t *payload, size_t len,
                     uint64_t now_ms, spb_result *res);
void spb_result_clear(spb_result *res);
/* Frees a record made by spb_host_command. */
void spb_record_free(Suido__StageMessage **rec);

/* Online nodes, for the metrics. */
unsigned spb_host_online(const spb_host *h);

/* The NCMD payload asking for a rebirth ("Node Control/Rebirth" = true), malloc'd into *out. */
cm_err spb_rebirth_payload(uint64_t now_ms, uint8_t **out, size_t *len);

#endif
