/* fielddev: device threads, schedule, reading queue and writes (fielddev.h). */
#include "fielddev.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <modbus/modbus.h>

#include "cm_log.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define RESERVE_PER_POINT 3 /* first reading, a BAD and a GOOD change: fielddev.h "Queue" */

typedef enum dev_state { DEV_UNKNOWN, DEV_UP, DEV_DOWN } dev_state;

/* Why a request failed, from libmodbus' errno; each kind has its counter in fd_stats. */
typedef enum fail_kind { FAIL_TIMEOUT, FAIL_EXCEPTION, FAIL_IO, FAIL_BAD_DATA } fail_kind;

/* A write handed by fd_write to a device's thread; lives on the caller's stack until done. */
typedef struct write_req {
    size_t point;
    uint16_t regs[2];
    int done;
    fd_write_result result;
    double readback;
    char why[160];
} write_req;

/* The poll schedule of one point: touched by its device's thread only. */
typedef struct point_sched {
    uint64_t next_due; /* CLOCK_MONOTONIC ms */
    double last_good;  /* what a BAD reading carries */
} point_sched;

/* What was last queued for one point, for the deadband, heartbeat and quality-change rules:
 * under fielddev.lock. */
typedef struct point_report {
    int reported;
    int last_bad;
    double last_value;
    uint64_t last_mono;
} point_report;

typedef struct device_run {
    fielddev *f;
    size_t index;
    const pm_device *cfg;
    size_t *points; /* its points, sorted by register kind then address */
    size_t npoints;
    size_t *due; /* room for the points due in one round */
    pthread_t thread;
    int thread_started;

    /* the device thread's own */
    modbus_t *mb;
    int connected;
    uint64_t backoff_ms, retry_at;

    /* under lock: what other threads hand to the device thread */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* stop, or a write request (CLOCK_MONOTONIC waits) */
    pthread_cond_t write_done;
    int stop;
    int sock; /* connected TCP socket for fd_stop's shutdown, or -1 */
    write_req *req;
    pthread_mutex_t write_serial; /* one fd_write per device at a time */
} device_run;

struct fielddev {
    pm_map map; /* a copy */
    fd_opts opts;
    device_run *devs;
    size_t devs_ready; /* devices whose locks are initialised (fd_stop's bound) */
    point_sched *sched;
    int wake_fd;

    pthread_mutex_t lock; /* the queue, the reports, the device states and the stats */
    fd_reading *ring;
    size_t cap, head, count;
    point_report *rep;
    dev_state *state;
    fd_stats stats;
};

static uint64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
static uint64_t wall_ms(void) { return clock_ms(CLOCK_REALTIME); }

static fail_kind classify(int e)
{
    if (e == ETIMEDOUT || e == EINPROGRESS)
        return FAIL_TIMEOUT;
    if ((e >= EMBXILFUN && e <= EMBXGTAR) || e == EMBUNKEXC)
        return FAIL_EXCEPTION;
    if (e == EMBBADCRC || e == EMBBADDATA || e == EMBBADEXC || e == EMBMDATA || e == EMBBADSLAVE)
        return FAIL_BAD_DATA;
    return FAIL_IO;
}

static const char *fail_token(fail_kind k, int e)
{
    switch (k) {
    case FAIL_TIMEOUT:
        return "timeout";
    case FAIL_EXCEPTION:
        return "exception";
    case FAIL_BAD_DATA:
        return "bad_data";
    case FAIL_IO:
    default:
        return e == ECONNREFUSED ? "connection_refused" : "io_error";
    }
}

/* Counts a failed request or connect under its kind. Caller holds f->lock. */
static void count_failure(fielddev *f, fail_kind k)
{
    switch (k) {
    case FAIL_TIMEOUT:
        f->stats.timeouts++;
        break;
    case FAIL_EXCEPTION:
        f->stats.exceptions++;
        break;
    case FAIL_BAD_DATA:
        f->stats.bad_data++;
        break;
    case FAIL_IO:
    default:
        f->stats.io_errors++;
        break;
    }
}

/* ---- the queue (fielddev.h "Queue") ---- */

static fd_reading *ring_at(fielddev *f, size_t i) { return &f->ring[(f->head + i) % f->cap]; }

static void signal_readable(fielddev *f)
{
    uint64_t one = 1;
    /* the counter cannot overflow: it is cleared whenever the queue empties */
    if (write(f->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        cm_error("event=wake_fd_failed errno=%d", errno);
}

/* Removes the point's readings queued after logical position `after`; returns how many. */
static size_t remove_after(fielddev *f, size_t after, size_t point)
{
    size_t kept = after + 1, removed = 0;
    for (size_t i = after + 1; i < f->count; i++) {
        fd_reading r = *ring_at(f, i);
        if (r.point == point) {
            removed++;
            continue;
        }
        *ring_at(f, kept++) = r;
    }
    f->count = kept;
    return removed;
}

/* Applies the reporting rules and the queue policy to one reading. Returns 1 if queued. */
static int offer_reading(fielddev *f, size_t point, double value, int bad)
{
    const pm_point *p = &f->map.pt[point];
    uint64_t now = mono_ms();
    int queued = 0;
    pthread_mutex_lock(&f->lock);
    point_report *rep = &f->rep[point];
    int change = !rep->reported || rep->last_bad != bad;
    if (!bad && !change && p->deadband > 0 && fabs(value - rep->last_value) <= p->deadband &&
        now - rep->last_mono < f->opts.heartbeat_ms)
        goto out; /* inside the deadband: not news */
    if (f->count >= f->opts.queue_max) {
        if (!change) {
            f->stats.dropped++;
            goto out;
        }
        if (bad) {
            size_t last_bad = f->count;
            for (size_t i = f->count; i-- > 0;) {
                const fd_reading *r = ring_at(f, i);
                if (r->point == point && r->bad) {
                    last_bad = i;
                    break;
                }
            }
            if (last_bad < f->count) {
                /* its BAD reading still waits: fold the GOOD spell since into that outage */
                f->stats.dropped += remove_after(f, last_bad, point) + 1;
                rep->last_bad = 1;
                rep->last_value = ring_at(f, last_bad)->value;
                rep->last_mono = now;
                goto out;
            }
        }
        if (f->count >= f->cap) { /* unreachable by the bound in fielddev.h; kept as a guard */
            f->stats.dropped++;
            goto out;
        }
    }
    *ring_at(f, f->count) =
        (fd_reading){.point = point, .ts_ms = wall_ms(), .value = value, .bad = bad};
    if (f->count++ == 0)
        signal_readable(f);
    rep->reported = 1;
    rep->last_bad = bad;
    rep->last_value = value;
    rep->last_mono = now;
    queued = 1;
out:
    pthread_mutex_unlock(&f->lock);
    return queued;
}

size_t fd_drain(fielddev *f, fd_reading *out, size_t cap)
{
    pthread_mutex_lock(&f->lock);
    size_t n = f->count < cap ? f->count : cap;
    for (size_t i = 0; i < n; i++)
        out[i] = *ring_at(f, i);
    f->head = (f->head + n) % f->cap;
    f->count -= n;
    if (f->count == 0) {
        uint64_t v;
        if (read(f->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
            cm_error("event=wake_fd_failed errno=%d", errno);
    }
    pthread_mutex_unlock(&f->lock);
    return n;
}

int fd_wait_fd(fielddev *f) { return f->wake_fd; }

/* ---- device state ---- */

static int stopping(device_run *d)
{
    pthread_mutex_lock(&d->lock);
    int s = d->stop;
    pthread_mutex_unlock(&d->lock);
    return s;
}

static int write_or_stop_pending(device_run *d)
{
    pthread_mutex_lock(&d->lock);
    int s = d->stop || d->req != NULL;
    pthread_mutex_unlock(&d->lock);
    return s;
}

static void set_state(device_run *d, dev_state s, const char *reason, const char *detail)
{
    fielddev *f = d->f;
    pthread_mutex_lock(&f->lock);
    dev_state old = f->state[d->index];
    f->state[d->index] = s;
    if (old == DEV_DOWN && s != DEV_DOWN)
        f->stats.devices_down--;
    else if (old != DEV_DOWN && s == DEV_DOWN)
        f->stats.devices_down++;
    pthread_mutex_unlock(&f->lock);
    if (old == s || stopping(d))
        return;
    if (s == DEV_DOWN) {
        char det[160];
        cm_warn("event=device_down device=%s reason=%s detail=\"%s\"", d->cfg->name, reason,
                cm_log_escape(det, sizeof det, detail));
    } else {
        cm_info("event=device_up device=%s", d->cfg->name);
    }
    if (f->opts.on_device)
        f->opts.on_device(f->opts.on_device_arg, d->index, s == DEV_UP, s == DEV_UP ? "" : reason);
}

/* Closes the connection (its state after a timeout or a garbled frame is unknown: a late
 * answer would be taken for the next one) and schedules the reconnect. */
static void disconnect(device_run *d)
{
    pthread_mutex_lock(&d->lock);
    if (d->mb && d->connected)
        modbus_close(d->mb);
    d->sock = -1;
    pthread_mutex_unlock(&d->lock);
    d->connected = 0;
    d->retry_at = mono_ms() + d->backoff_ms;
    d->backoff_ms = d->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : d->backoff_ms * 2;
}

static void go_down(device_run *d, fail_kind k, int e)
{
    disconnect(d);
    set_state(d, DEV_DOWN, fail_token(k, e), modbus_strerror(e));
}

static modbus_t *new_context(const pm_device *c)
{
    modbus_t *mb;
    if (c->rtu) {
        mb = modbus_new_rtu(c->serial, c->baud, c->parity, c->data_bits, c->stop_bits);
    } else {
        char port[8];
        snprintf(port, sizeof port, "%d", c->port);
        mb = modbus_new_tcp_pi(c->host, port);
    }
    if (!mb)
        return NULL;
    uint32_t sec = (uint32_t)(c->timeout_ms / 1000),
             usec = (uint32_t)(c->timeout_ms % 1000) * 1000u;
    if (modbus_set_slave(mb, c->unit_id) != 0 || modbus_set_response_timeout(mb, sec, usec) != 0 ||
        modbus_set_error_recovery(mb, MODBUS_ERROR_RECOVERY_NONE) != 0) {
        modbus_free(mb);
        return NULL;
    }
    return mb;
}

static void try_connect(device_run *d)
{
    if (!d->mb && !(d->mb = new_context(d->cfg))) {
        int e = errno ? errno : EINVAL;
        pthread_mutex_lock(&d->f->lock);
        count_failure(d->f, FAIL_IO);
        pthread_mutex_unlock(&d->f->lock);
        go_down(d, FAIL_IO, e);
        return;
    }
    if (modbus_connect(d->mb) != 0) {
        int e = errno;
        fail_kind k = classify(e) == FAIL_TIMEOUT ? FAIL_TIMEOUT : FAIL_IO;
        pthread_mutex_lock(&d->f->lock);
        count_failure(d->f, k);
        pthread_mutex_unlock(&d->f->lock);
        modbus_close(d->mb); /* a failed connect may leave its socket open */
        go_down(d, k, e);
        return;
    }
    /* not up yet: a Modbus gateway may accept connections while its PLC is silent */
    d->connected = 1;
    pthread_mutex_lock(&d->lock);
    d->sock = d->cfg->rtu ? -1 : modbus_get_socket(d->mb);
    pthread_mutex_unlock(&d->lock);
}

/* The device answered a request (with data or with an exception): it is up. */
static void answered(device_run *d)
{
    d->backoff_ms = BACKOFF_FIRST_MS;
    set_state(d, DEV_UP, "", "");
}

/* One read request: count registers (or bits) of kind reg from address. Fills regs (one
 * uint16_t per register or per bit). Returns 0, or -1 with errno set by libmodbus. */
static int read_span(device_run *d, pm_register reg, int address, int count, uint16_t *regs)
{
    uint8_t bits[MODBUS_MAX_READ_BITS];
    int rc;
    switch (reg) {
    case PM_HOLDING:
        rc = modbus_read_registers(d->mb, address, count, regs);
        break;
    case PM_INPUT:
        rc = modbus_read_input_registers(d->mb, address, count, regs);
        break;
    case PM_COIL:
    case PM_DISCRETE:
        rc = reg == PM_COIL ? modbus_read_bits(d->mb, address, count, bits)
                            : modbus_read_input_bits(d->mb, address, count, bits);
        for (int i = 0; rc == count && i < count; i++)
            regs[i] = bits[i] ? 1 : 0;
        break;
    default:
        errno = EINVAL;
        return -1;
    }
    if (rc < 0)
        return -1;
    if (rc != count) {
        errno = EMBBADDATA;
        return -1;
    }
    return 0;
}

static int span_limit(pm_register reg)
{
    return reg == PM_COIL || reg == PM_DISCRETE ? MODBUS_MAX_READ_BITS : MODBUS_MAX_READ_REGISTERS;
}

/* A GOOD reading of point pi from its registers (a non-finite value is bad data instead). */
static void good_reading(device_run *d, size_t pi, const uint16_t *regs)
{
    fielddev *f = d->f;
    double v = pm_decode(&f->map.pt[pi], regs);
    if (!isfinite(v)) {
        pthread_mutex_lock(&f->lock);
        f->stats.bad_data++;
        pthread_mutex_unlock(&f->lock);
        offer_reading(f, pi, f->sched[pi].last_good, 1);
        return;
    }
    f->sched[pi].last_good = v;
    offer_reading(f, pi, v, 0);
}

static void bad_reading(device_run *d, size_t pi)
{
    offer_reading(d->f, pi, d->f->sched[pi].last_good, 1);
}

/* Moves the point to its next slot on the grid; skips (and counts) slots already past. */
static void advance(device_run *d, size_t pi)
{
    fielddev *f = d->f;
    point_sched *s = &f->sched[pi];
    uint64_t period = (uint64_t)f->map.pt[pi].period_ms, now = mono_ms();
    s->next_due += period;
    if (s->next_due < now) {
        uint64_t skipped = (now - s->next_due) / period + 1;
        s->next_due += skipped * period;
        pthread_mutex_lock(&f->lock);
        f->stats.overruns += skipped;
        pthread_mutex_unlock(&f->lock);
    }
}

/* Reads due[0..n) (one group: same kind, contiguous) and makes their readings. */
static void read_group(device_run *d, const size_t *due, size_t n)
{
    fielddev *f = d->f;
    const pm_point *first = &f->map.pt[due[0]];
    int start = first->address, end = start;
    for (size_t i = 0; i < n; i++) {
        const pm_point *p = &f->map.pt[due[i]];
        int pe = p->address + pm_register_count(p) - 1;
        end = pe > end ? pe : end;
    }
    uint16_t regs[MODBUS_MAX_READ_BITS];
    int rc = read_span(d, first->reg, start, end - start + 1, regs);
    int e = errno;
    fail_kind k = classify(e);
    pthread_mutex_lock(&f->lock);
    f->stats.polls += n;
    if (rc == 0)
        f->stats.reads_ok++;
    else
        count_failure(f, k);
    pthread_mutex_unlock(&f->lock);
    if (rc == 0 || k == FAIL_EXCEPTION)
        answered(d);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            good_reading(d, due[i], &regs[f->map.pt[due[i]].address - start]);
        return;
    }
    if (k == FAIL_EXCEPTION && n > 1) {
        /* one bad address fails its own point only: ask again point by point */
        for (size_t i = 0; i < n; i++) {
            const pm_point *p = &f->map.pt[due[i]];
            uint16_t one[2];
            int r1 =
                d->connected ? read_span(d, p->reg, p->address, pm_register_count(p), one) : -1;
            int e1 = errno;
            if (r1 == 0) {
                pthread_mutex_lock(&f->lock);
                f->stats.reads_ok++;
                pthread_mutex_unlock(&f->lock);
                good_reading(d, due[i], one);
                continue;
            }
            if (d->connected) {
                fail_kind k1 = classify(e1);
                pthread_mutex_lock(&f->lock);
                count_failure(f, k1);
                pthread_mutex_unlock(&f->lock);
                if (k1 != FAIL_EXCEPTION)
                    go_down(d, k1, e1);
            }
            bad_reading(d, due[i]); /* after: whoever sees it sees the device's state too */
        }
        return;
    }
    if (k != FAIL_EXCEPTION)
        go_down(d, k, e); /* first: whoever sees the BAD readings sees the device down */
    for (size_t i = 0; i < n; i++)
        bad_reading(d, due[i]);
}

/* Polls every point that is due. Returns early (its remaining points stay due) when a write
 * or a stop is waiting. */
static void poll_due(device_run *d)
{
    fielddev *f = d->f;
    size_t *due = d->due;
    uint64_t now = mono_ms();
    size_t n = 0;
    for (size_t i = 0; i < d->npoints; i++)
        if (f->sched[d->points[i]].next_due <= now)
            due[n++] = d->points[i];
    size_t i = 0;
    while (i < n) {
        if (write_or_stop_pending(d))
            return;
        if (!d->connected) {
            pthread_mutex_lock(&f->lock);
            f->stats.polls++;
            pthread_mutex_unlock(&f->lock);
            bad_reading(d, due[i]);
            advance(d, due[i]);
            i++;
            continue;
        }
        /* due[] follows d->points: sorted by kind and address, so a group is a run */
        const pm_point *p0 = &f->map.pt[due[i]];
        int end = p0->address + pm_register_count(p0) - 1;
        size_t j = i + 1;
        while (j < n) {
            const pm_point *q = &f->map.pt[due[j]];
            int qe = q->address + pm_register_count(q) - 1;
            int ne = qe > end ? qe : end;
            if (q->reg != p0->reg || q->address > end + 1 ||
                ne - p0->address + 1 > span_limit(p0->reg))
                break;
            end = ne;
            j++;
        }
        read_group(d, &due[i], j - i);
        for (size_t k = i; k < j; k++)
            advance(d, due[k]);
        i = j;
    }
}

/* Carries out a write on the device thread: write, read back, queue the read back. */
static void serve_write(device_run *d, write_req *req)
{
    fielddev *f = d->f;
    const pm_point *p = &f->map.pt[req->point];
    int n = pm_register_count(p);
    req->result = FD_WRITE_FAILED;
    if (!d->connected) {
        snprintf(req->why, sizeof req->why, "device %s has no connection (down)", d->cfg->name);
        return;
    }
    int rc;
    if (p->reg == PM_COIL)
        rc = modbus_write_bit(d->mb, p->address, req->regs[0] ? 1 : 0);
    else if (n == 1)
        rc = modbus_write_register(d->mb, p->address, req->regs[0]);
    else
        rc = modbus_write_registers(d->mb, p->address, n, req->regs);
    if (rc < 0) {
        int e = errno;
        fail_kind k = classify(e);
        pthread_mutex_lock(&f->lock);
        count_failure(f, k);
        pthread_mutex_unlock(&f->lock);
        if (k == FAIL_EXCEPTION)
            answered(d);
        snprintf(req->why, sizeof req->why, "write %s: %s", fail_token(k, e), modbus_strerror(e));
        if (k != FAIL_EXCEPTION)
            go_down(d, k, e);
        return;
    }
    uint16_t regs[2];
    if (read_span(d, p->reg, p->address, n, regs) != 0) {
        int e = errno;
        fail_kind k = classify(e);
        pthread_mutex_lock(&f->lock);
        count_failure(f, k);
        pthread_mutex_unlock(&f->lock);
        snprintf(req->why, sizeof req->why, "read back %s: %s", fail_token(k, e),
                 modbus_strerror(e));
        req->result = FD_READBACK_FAILED;
        if (k != FAIL_EXCEPTION)
            go_down(d, k, e);
        return;
    }
    pthread_mutex_lock(&f->lock);
    f->stats.reads_ok++;
    pthread_mutex_unlock(&f->lock);
    answered(d);
    double v = pm_decode(p, regs);
    good_reading(d, req->point, regs);
    if (!isfinite(v)) {
        snprintf(req->why, sizeof req->why, "read back: not a finite value");
        req->result = FD_READBACK_FAILED;
        return;
    }
    req->readback = v;
    req->result = FD_WRITE_OK;
}

static void finish_write(device_run *d, write_req *req)
{
    pthread_mutex_lock(&d->lock);
    req->done = 1;
    d->req = NULL;
    pthread_cond_broadcast(&d->write_done);
    pthread_mutex_unlock(&d->lock);
}

/* Sleeps until the monotonic time `until` (ms), a write request or a stop. */
static void wait_until(device_run *d, uint64_t until)
{
    struct timespec ts = {.tv_sec = (time_t)(until / 1000),
                          .tv_nsec = (long)(until % 1000) * 1000000L};
    pthread_mutex_lock(&d->lock);
    while (!d->stop && !d->req && mono_ms() < until)
        if (pthread_cond_timedwait(&d->wake, &d->lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&d->lock);
}

static void *device_main(void *arg)
{
    device_run *d = arg;
    fielddev *f = d->f;
    uint64_t start = mono_ms();
    for (size_t i = 0; i < d->npoints; i++)
        f->sched[d->points[i]].next_due = start;
    d->backoff_ms = BACKOFF_FIRST_MS;
    d->retry_at = start;
    for (;;) {
        pthread_mutex_lock(&d->lock);
        int stop = d->stop;
        write_req *req = d->req;
        pthread_mutex_unlock(&d->lock);
        if (req) {
            if (stop)
                snprintf(req->why, sizeof req->why, "stopping");
            else
                serve_write(d, req);
            finish_write(d, req);
            continue;
        }
        if (stop)
            break;
        if (!d->connected && mono_ms() >= d->retry_at)
            try_connect(d);
        poll_due(d);
        uint64_t wake_at = mono_ms() + 1000;
        for (size_t i = 0; i < d->npoints; i++)
            if (f->sched[d->points[i]].next_due < wake_at)
                wake_at = f->sched[d->points[i]].next_due;
        if (!d->connected && d->retry_at < wake_at)
            wake_at = d->retry_at;
        wait_until(d, wake_at);
    }
    if (d->connected)
        disconnect(d);
    return NULL;
}

/* ---- public API ---- */

const char *fd_write_result_name(fd_write_result r)
{
    switch (r) {
    case FD_WRITE_OK:
        return "ok";
    case FD_OUT_OF_LIMITS:
        return "out_of_limits";
    case FD_NOT_WRITABLE:
        return "not_writable";
    case FD_WRITE_FAILED:
        return "write_failed";
    case FD_READBACK_FAILED:
        return "readback_failed";
    }
    return "?";
}

static fd_write_result refused(fielddev *f, fd_write_result r)
{
    pthread_mutex_lock(&f->lock);
    f->stats.refused_writes++;
    pthread_mutex_unlock(&f->lock);
    return r;
}

fd_write_result fd_write(fielddev *f, size_t point, double value, double *readback, char *why,
                         size_t whylen)
{
    if (why && whylen)
        why[0] = '\0';
    if (point >= f->map.npt || !f->map.pt[point].writable) {
        if (why && whylen)
            snprintf(why, whylen, "point %zu is not writable", point);
        return refused(f, FD_NOT_WRITABLE);
    }
    const pm_point *p = &f->map.pt[point];
    write_req req = {.point = point};
    if (!isfinite(value) || value < p->lo || value > p->hi) {
        if (why && whylen)
            snprintf(why, whylen, "value %g outside the limits [%g, %g] of %s", value, p->lo, p->hi,
                     p->channel);
        return refused(f, FD_OUT_OF_LIMITS);
    }
    if (pm_encode(p, value, req.regs) != 0) {
        if (why && whylen)
            snprintf(why, whylen, "value %g does not fit %s (%s)", value, p->channel,
                     pm_type_name(p->type));
        return refused(f, FD_OUT_OF_LIMITS);
    }
    device_run *d = &f->devs[p->device];
    pthread_mutex_lock(&d->write_serial);
    pthread_mutex_lock(&d->lock);
    if (d->stop) {
        req.result = FD_WRITE_FAILED;
        snprintf(req.why, sizeof req.why, "stopping");
    } else {
        d->req = &req;
        pthread_cond_signal(&d->wake);
        while (!req.done)
            pthread_cond_wait(&d->write_done, &d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_unlock(&d->write_serial);
    pthread_mutex_lock(&f->lock);
    f->stats.writes++;
    if (req.result != FD_WRITE_OK)
        f->stats.write_failures++;
    pthread_mutex_unlock(&f->lock);
    if (req.result == FD_WRITE_OK && readback)
        *readback = req.readback;
    if (req.result != FD_WRITE_OK && why && whylen)
        snprintf(why, whylen, "%s", req.why);
    return req.result;
}

void fd_get_stats(fielddev *f, fd_stats *out)
{
    pthread_mutex_lock(&f->lock);
    *out = f->stats;
    pthread_mutex_unlock(&f->lock);
}

int fd_device_up(fielddev *f, size_t device)
{
    if (device >= f->map.ndev)
        return 0;
    pthread_mutex_lock(&f->lock);
    int up = f->state[device] == DEV_UP;
    pthread_mutex_unlock(&f->lock);
    return up;
}

static int by_kind_then_address(const void *a, const void *b, void *map)
{
    const pm_map *m = map;
    const pm_point *p = &m->pt[*(const size_t *)a], *q = &m->pt[*(const size_t *)b];
    if (p->reg != q->reg)
        return (int)p->reg - (int)q->reg;
    if (p->address != q->address)
        return p->address < q->address ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

void fd_stop(fielddev **fp)
{
    if (!fp || !*fp)
        return;
    fielddev *f = *fp;
    for (size_t i = 0; i < f->devs_ready; i++) {
        device_run *d = &f->devs[i];
        pthread_mutex_lock(&d->lock);
        d->stop = 1;
        if (d->sock >= 0) /* cuts a request in progress short; the thread closes the socket */
            shutdown(d->sock, SHUT_RDWR);
        pthread_cond_broadcast(&d->wake);
        pthread_mutex_unlock(&d->lock);
    }
    for (size_t i = 0; i < f->devs_ready; i++) {
        device_run *d = &f->devs[i];
        if (d->thread_started)
            pthread_join(d->thread, NULL);
        if (d->mb)
            modbus_free(d->mb);
        free(d->points);
        free(d->due);
        pthread_mutex_destroy(&d->lock);
        pthread_mutex_destroy(&d->write_serial);
        pthread_cond_destroy(&d->wake);
        pthread_cond_destroy(&d->write_done);
    }
    if (f->wake_fd >= 0)
        close(f->wake_fd);
    pthread_mutex_destroy(&f->lock);
    free(f->devs);
    free(f->sched);
    free(f->ring);
    free(f->rep);
    free(f->state);
    free(f->map.dev);
    free(f->map.pt);
    free(f);
    *fp = NULL;
}

static cm_err init_device(fielddev *f, size_t i)
{
    device_run *d = &f->devs[i];
    d->f = f;
    d->index = i;
    d->cfg = &f->map.dev[i];
    d->sock = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->write_serial, NULL);
    pthread_cond_init(&d->wake, &ca);
    pthread_cond_init(&d->write_done, NULL);
    pthread_condattr_destroy(&ca);
    f->devs_ready = i + 1;
    for (size_t p = 0; p < f->map.npt; p++)
        d->npoints += f->map.pt[p].device == i;
    d->points = calloc(d->npoints ? d->npoints : 1, sizeof *d->points);
    d->due = calloc(d->npoints ? d->npoints : 1, sizeof *d->due);
    if (!d->points || !d->due)
        return CM_ERR_NOMEM;
    size_t n = 0;
    for (size_t p = 0; p < f->map.npt; p++)
        if (f->map.pt[p].device == i)
            d->points[n++] = p;
    qsort_r(d->points, d->npoints, sizeof *d->points, by_kind_then_address, &f->map);
    return CM_OK;
}

cm_err fd_start(const pm_map *map, const fd_opts *o, fielddev **out)
{
    *out = NULL;
    if (!map || !o || map->npt == 0 || map->ndev == 0 || map->npt > PM_MAX_POINTS ||
        map->ndev > PM_MAX_DEVICES || o->queue_max == 0 || o->heartbeat_ms == 0 ||
        o->queue_max > SIZE_MAX / sizeof(fd_reading) - RESERVE_PER_POINT * map->npt)
        return CM_ERR_INVAL;
    for (size_t i = 0; i < map->npt; i++)
        if (map->pt[i].device >= map->ndev || map->pt[i].period_ms <= 0)
            return CM_ERR_INVAL;
    fielddev *f = calloc(1, sizeof *f);
    if (!f)
        return CM_ERR_NOMEM;
    f->wake_fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    f->opts = *o;
    f->cap = o->queue_max + RESERVE_PER_POINT * map->npt;
    f->map.ndev = map->ndev;
    f->map.npt = map->npt;
    f->map.dev = malloc(map->ndev * sizeof *map->dev);
    f->map.pt = malloc(map->npt * sizeof *map->pt);
    f->devs = calloc(map->ndev, sizeof *f->devs);
    f->sched = calloc(map->npt, sizeof *f->sched);
    f->rep = calloc(map->npt, sizeof *f->rep);
    f->state = calloc(map->ndev, sizeof *f->state);
    f->ring = calloc(f->cap, sizeof *f->ring);
    if (!f->map.dev || !f->map.pt || !f->devs || !f->sched || !f->rep || !f->state || !f->ring) {
        fd_stop(&f);
        return CM_ERR_NOMEM;
    }
    memcpy(f->map.dev, map->dev, map->ndev * sizeof *map->dev);
    memcpy(f->map.pt, map->pt, map->npt * sizeof *map->pt);
    if ((f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        fd_stop(&f);
        return CM_ERR_IO;
    }
    for (size_t i = 0; i < map->ndev; i++) {
        if (init_device(f, i) != CM_OK) {
            fd_stop(&f);
            return CM_ERR_NOMEM;
        }
    }
    /* device threads take no signals: the daemon's main thread handles them */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    cm_err rc = CM_OK;
    for (size_t i = 0; i < map->ndev && rc == CM_OK; i++) {
        device_run *d = &f->devs[i];
        if (pthread_create(&d->thread, NULL, device_main, d) != 0)
            rc = CM_ERR_IO;
        else
            d->thread_started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != CM_OK) {
        fd_stop(&f);
        return rc;
    }
    *out = f;
    return CM_OK;
}
