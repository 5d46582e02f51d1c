/* fielddev: the field side of the gateway agent. Polls the PLCs of a point map over Modbus
 * (libmodbus) and writes the points that verified commands ask for.
 *
 * Threads: one per device, so that a slow or dead device never delays the others. A device's
 * thread is the only user of its Modbus connection: it polls, and it carries out the writes that
 * fd_write hands it (between two requests, before any further poll), so polling and writing
 * never interleave on the wire.
 *
 * Schedule: each point is due every period_ms on a fixed grid (next_due += period, never now +
 * period, so no drift). A point found more than one period late (a slow device, a long outage)
 * skips to its next future slot; every slot skipped is counted in fd_stats.overruns. Due points
 * of the same register kind whose addresses touch or overlap are read in one request (at most
 * 125 registers or 2000 bits); when such a request draws a Modbus exception, its points are
 * read again one by one, so that one bad address only fails its own point.
 *
 * Readings: a successful read gives a GOOD reading (bad = 0). It is queued when it is the
 * point's first, when the previous queued reading of the point was BAD, when the point's
 * deadband is 0, when it differs from the last queued value by more than the deadband, or when
 * the last queued reading of the point is heartbeat_ms old or older (so that silence never
 * means "unchanged"). A failed read
 * gives a BAD reading (bad = 1, value = the point's last good value, or 0 before any), queued on
 * every poll. A decoded value that is not finite (an f32 NaN) is a BAD reading, counted as
 * bad_data.
 *
 * Failures: a Modbus exception (the device answered; the point is wrong) fails that point only.
 * A timeout, an I/O error or a garbled answer closes the connection and marks the device down:
 * logged once per outage (cm_warn "event=device_down device=NAME reason=..."), then reconnected
 * with a backoff doubling from 100 ms to 5 s; while down, every point of the device still yields
 * a BAD reading on its schedule. A device is up again when it answers a request (a connection
 * alone proves nothing: a Modbus gateway may accept one while its PLC is silent); that logs
 * cm_info "event=device_up" and resets the backoff. The optional on_device callback hears the
 * same transitions.
 *
 * Queue (what survives when the consumer falls behind): at most queue_max readings are queued
 * in the ordinary way; beyond that a GOOD reading that is no change of quality is dropped (the
 * oldest readings are kept; dropped readings are counted; the point's deadband state is not
 * advanced, so its next poll tries again). A change of quality (the first reading of a point,
 * GOOD -> BAD, BAD -> GOOD) is still queued, into a reserve of 3 slots per point. When the queue
 * is full and a point goes BAD again while its earlier BAD reading is still queued, the readings
 * of that point queued after that BAD one (its short GOOD spell) are dropped and the new BAD
 * reading is not queued: the consumer then sees one longer outage, never a BAD period hidden
 * behind GOOD readings. So a GOOD -> BAD change is never lost, and the queue never holds more
 * than queue_max + 3 * points readings. */
#ifndef GW_FIELDDEV_H
#define GW_FIELDDEV_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"
#include "pointmap.h"

typedef struct fd_reading {
    size_t point;   /* index into the map's points */
    uint64_t ts_ms; /* wall clock (CLOCK_REALTIME) when the answer (or the failure) came, ms */
    double value;   /* engineering units; a BAD reading carries the last good value or 0 */
    int bad;        /* 1: quality BAD */
} fd_reading;

typedef struct fd_opts {
    size_t queue_max;      /* >= 1: readings queued before the policy above drops any */
    uint64_t heartbeat_ms; /* >= 1: a point's value is queued again at least this often (60000) */
    /* Optional: called from the device's thread when a device goes down (up = 0, reason a
     * token: timeout, connection_refused, io_error, bad_data) or answers again (up = 1, reason
     * ""). Must not block long, nor call fd_write or fd_stop (the thread would wait for itself). */
    void (*on_device)(void *arg, size_t device, int up, const char *reason);
    void *on_device_arg;
} fd_opts;

typedef struct fielddev fielddev;

/* Copies map (the caller may free it afterwards) and starts one thread per device.
 * CM_ERR_INVAL for an empty map or bad options, CM_ERR_NOMEM or CM_ERR_IO (thread or eventfd
 * creation) otherwise; *out is then NULL. */
cm_err fd_start(const pm_map *map, const fd_opts *o, fielddev **out);
/* Moves up to cap queued readings, oldest first, into out; returns how many. Never blocks on
 * the devices (only on the queue's lock, held briefly). */
size_t fd_drain(fielddev *f, fd_reading *out, size_t cap);
/* An eventfd that is readable while readings are queued, for poll(); fd_drain clears it once
 * the queue is empty. Owned by f. */
int fd_wait_fd(fielddev *f);

typedef enum fd_write_result {
    FD_WRITE_OK = 0,   /* written, read back: *readback holds the value the device now has */
    FD_OUT_OF_LIMITS,  /* value not finite, outside the point's [lo, hi], or not encodable */
    FD_NOT_WRITABLE,   /* no such point, or the point is not writable */
    FD_WRITE_FAILED,   /* the device is down or the write failed (the device may have it) */
    FD_READBACK_FAILED /* written, but reading the point back failed */
} fd_write_result;

/* Writes value (engineering units) to a point, for a command already verified upstream. The
 * refusals (FD_NOT_WRITABLE, FD_OUT_OF_LIMITS) are decided here, in the caller's thread,
 * without touching the device. Otherwise the device's thread writes (a coil: 1 when the value's
 * raw >= 0.5; a 32-bit holding point: both registers in one request, in its word order), reads
 * the point back and queues that reading like a poll's. Blocks until then: at most about three
 * device timeouts (the request in progress, the write, the read back); a device whose connection
 * is closed (down, waiting for its next reconnect) fails at once. why (optional, whylen bytes)
 * gets a short reason on every result but FD_WRITE_OK. Safe from any thread. */
fd_write_result fd_write(fielddev *f, size_t point, double value, double *readback, char *why,
                         size_t whylen);
const char *fd_write_result_name(fd_write_result r);

typedef struct fd_stats {
    uint64_t polls;          /* point polls due (a down device's BAD readings included) */
    uint64_t reads_ok;       /* Modbus read requests answered */
    uint64_t timeouts;       /* requests and connects that timed out */
    uint64_t exceptions;     /* requests answered with a Modbus exception (a group's refused
                              * request, then each point's own, count apart) */
    uint64_t io_errors;      /* requests and connects that failed otherwise (refused, reset) */
    uint64_t bad_data;       /* garbled answers (CRC, length, ids) and non-finite values */
    uint64_t overruns;       /* schedule slots skipped because a point was a period late */
    uint64_t dropped;        /* readings not delivered because the queue was full */
    uint64_t writes;         /* fd_write calls handed to a device (not refused) */
    uint64_t write_failures; /* of those, the ones that did not end FD_WRITE_OK */
    uint64_t refused_writes; /* FD_NOT_WRITABLE and FD_OUT_OF_LIMITS */
    unsigned devices_down;   /* devices down now (a device is neither up nor down until its
                              * first answer or failure) */
} fd_stats;

void fd_get_stats(fielddev *f, fd_stats *out);
/* 1 while the device is up: it answered, and no request or connect failed since. 0 otherwise
 * (also before its first answer, and for an unknown index). */
int fd_device_up(fielddev *f, size_t device);
/* Stops and joins the threads (a request in progress is cut short on TCP; a connect waits for
 * its timeout), frees everything and NULLs *f. Safe on NULL. */
void fd_stop(fielddev **f);

#endif
