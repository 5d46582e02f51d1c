/* suido-gateway: the field agent, one process per gateway box (docs/gateway.md). It reads field
 * devices over Modbus TCP or RTU through a point map (pointmap.c), one polling thread per device
 * (fielddev.c), and hands every reading to the gateway library (gateway/gateway.h), which batches,
 * signs, encrypts, stores in its fsynced outbox and publishes them until the platform's
 * end-to-end ack covers them. Commands the library has verified are written to their mapped
 * points within each point's own limits, read back, and answered with a signed result.
 *
 * Points that are not writable become the channels of the gateway's birth; writable points are its
 * actuators (a command names them) and are read only to check a write. The main thread moves
 * readings from the device threads into the library and polls it; nothing here blocks on a device
 * except a command's write (bounded by that device's timeout).
 *
 * Exit: 0 after SIGTERM/SIGINT (what is queued is put into the outbox, acks are awaited a few
 * seconds, an orderly death is published); 1 when it cannot start (the reason on stderr: a bad
 * map with file, line and reason, a bundle file missing or too open); 2 for a usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_time.h"
#include "fielddev.h"
#include "gateway.h"
#include "pointmap.h"
#include "sandbox.h"

#define PROG "suido-gateway"
#define DRAIN_CHUNK 256
#define STATUS_EVERY_MS 60000
#define STOP_ACK_WAIT_MS 5000

typedef struct options {
    const char *bundle, *map, *state_dir;
    long batch, linger_ms, outbox_mb, max_inflight;
    int check_only, sandbox;
    int log_level;
} options;

/* The agent: the map, the devices, the gateway, and which point each channel and actuator is. */
typedef struct agent {
    options o;
    gw_bundle bundle;
    pm_map map;
    fielddev *dev;
    gateway *gw;
    gw_settings set;
    cm_rsa *wrap;
    cm_pubkey *cmd_key;
    gw_channel *ch;
    size_t nch;
    cmd_actuator *act;
    size_t nact;
    uint32_t *channel_of;   /* point -> channel index (UINT32_MAX: an actuator) */
    size_t *point_of_act;   /* actuator -> point */
    uint64_t cmd_written, cmd_refused_locally, cmd_failed;
} agent;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " --bundle DIR --map FILE --state-dir DIR [options]\n"
            "  --bundle DIR        the field bundle of `suidoctl gateway provision`\n"
            "  --map FILE          the point map (docs/gateway.md)\n"
            "  --state-dir DIR     boot epoch and outbox (keep it on persistent storage)\n"
            "  --batch N           readings per batch, 1..%d (default 64)\n"
            "  --linger-ms MS      a batch leaves at the latest this long after its first\n"
            "                      reading, full or not (default 1000)\n"
            "  --outbox-mb N       outbox bound in MiB (default 64)\n"
            "  --max-inflight N    MQTT publishes in flight (default 32)\n"
            "  --log-level LEVEL   debug, info, warn, error (default info)\n"
            "  --check             load the bundle and the map, print what would run, exit\n"
            "  --no-sandbox        keep capabilities and skip the seccomp filter (debugging)\n",
            GW_MAX_BATCH);
}

static int parse_long(const char *name, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, PROG ": %s: '%s' is not a whole number in %ld..%ld\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* 0: run; 1: exit 0 (help); -1: usage error. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.batch = 64, .linger_ms = 1000, .outbox_mb = 64, .max_inflight = 32,
                   .sandbox = 1, .log_level = CM_LOG_INFO};
    enum { O_BUNDLE = 256, O_MAP, O_STATE, O_BATCH, O_LINGER, O_OUTBOX, O_INFLIGHT, O_LOG,
           O_CHECK, O_NOSANDBOX, O_HELP };
    static const struct option lo[] = {
        {"bundle", required_argument, NULL, O_BUNDLE},
        {"map", required_argument, NULL, O_MAP},
        {"state-dir", required_argument, NULL, O_STATE},
        {"batch", required_argument, NULL, O_BATCH},
        {"linger-ms", required_argument, NULL, O_LINGER},
        {"outbox-mb", required_argument, NULL, O_OUTBOX},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"log-level", required_argument, NULL, O_LOG},
        {"check", no_argument, NULL, O_CHECK},
        {"no-sandbox", no_argument, NULL, O_NOSANDBOX},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_BUNDLE: o->bundle = optarg; break;
        case O_MAP: o->map = optarg; break;
        case O_STATE: o->state_dir = optarg; break;
        case O_BATCH: bad = parse_long("--batch", optarg, 1, GW_MAX_BATCH, &o->batch); break;
        case O_LINGER: bad = parse_long("--linger-ms", optarg, 10, 60000, &o->linger_ms); break;
        case O_OUTBOX: bad = parse_long("--outbox-mb", optarg, 1, 65536, &o->outbox_mb); break;
        case O_INFLIGHT:
            bad = parse_long("--max-inflight", optarg, 1, 1000, &o->max_inflight);
            break;
        case O_LOG:
            if ((o->log_level = cm_log_level_parse(optarg)) < 0) {
                fprintf(stderr, PROG ": --log-level: '%s' is not debug, info, warn or error\n",
                        optarg);
                bad = 1;
            }
            break;
        case O_CHECK: o->check_only = 1; break;
        case O_NOSANDBOX: o->sandbox = 0; break;
        case O_HELP: usage(stdout); return 1;
        default: bad = 1;
        }
        if (bad)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->bundle || !o->map || (!o->state_dir && !o->check_only)) {
        fprintf(stderr, PROG ": --bundle, --map and --state-dir are required\n");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ commands to the field */

static cmd_reason apply_command(void *ctx, size_t actuator, double value, double *in_force)
{
    agent *a = ctx;
    size_t point = a->point_of_act[actuator];
    char why[256] = "";
    fd_write_result r = fd_write(a->dev, point, value, in_force, why, sizeof why);
    switch (r) {
    case FD_WRITE_OK:
        a->cmd_written++;
        return CMD_OK;
    case FD_OUT_OF_LIMITS:
    case FD_NOT_WRITABLE:
        /* the library checked the same limits: only a map and library out of step gets here */
        a->cmd_refused_locally++;
        cm_warn("channel=%s value=%g event=write_refused detail=\"%s\"",
                a->map.pt[point].channel, value, why);
        return CMD_OUT_OF_RANGE;
    default:
        a->cmd_failed++;
        cm_error("channel=%s value=%g event=write_failed alarm=1 detail=\"%s\"",
                 a->map.pt[point].channel, value, why);
        return CMD_FAILED;
    }
}

/* ------------------------------------------------------------------ set-up */

/* Channels from the readable points, actuators from the writable ones. */
static int split_points(agent *a)
{
    const pm_map *m = &a->map;
    a->ch = calloc(m->npt, sizeof *a->ch);
    a->act = calloc(m->npt, sizeof *a->act);
    a->channel_of = calloc(m->npt, sizeof *a->channel_of);
    a->point_of_act = calloc(m->npt, sizeof *a->point_of_act);
    if (!a->ch || !a->act || !a->channel_of || !a->point_of_act) {
        fprintf(stderr, PROG ": out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < m->npt; i++) {
        const pm_point *p = &m->pt[i];
        if (p->writable) {
            a->channel_of[i] = UINT32_MAX;
            a->point_of_act[a->nact] = i;
            a->act[a->nact++] = (cmd_actuator){p->channel, p->unit, p->lo, p->hi};
        } else {
            a->channel_of[i] = (uint32_t)a->nch;
            a->ch[a->nch++] = (gw_channel){p->channel, p->unit};
        }
    }
    if (a->nch == 0) {
        fprintf(stderr, PROG ": %s: no readable point: a gateway needs at least one channel\n",
                a->o.map);
        return -1;
    }
    return 0;
}

static int load(agent *a)
{
    char err[CM_CONF_ERRLEN];
    if (gw_bundle_load(a->o.bundle, &a->bundle, err) != CM_OK) {
        fprintf(stderr, PROG ": %s\n", err);
        return -1;
    }
    if (pm_load(a->o.map, &a->map, err) != CM_OK) {
        fprintf(stderr, PROG ": %s\n", err);
        return -1;
    }
    if (split_points(a))
        return -1;
    cm_err e = cm_rsa_load_public(a->bundle.wrap_pub, &a->wrap);
    if (e != CM_OK) {
        fprintf(stderr, PROG ": %s: cannot load the platform's wrap key: %s\n",
                a->bundle.wrap_pub, cm_strerror(e));
        return -1;
    }
    if (a->bundle.command_pub[0] &&
        (e = cm_pubkey_load_pem(a->bundle.command_pub, &a->cmd_key)) != CM_OK) {
        fprintf(stderr, PROG ": %s: cannot load the command gate's key: %s\n",
                a->bundle.command_pub, cm_strerror(e));
        return -1;
    }
    return 0;
}

static void print_plan(const agent *a)
{
    printf("gateway %s (site %s, kind %s), broker %s\n", a->bundle.id, a->bundle.site,
           a->bundle.kind, a->bundle.broker);
    printf("%zu device(s), %zu channel(s), %zu actuator(s)\n", a->map.ndev, a->nch, a->nact);
    for (size_t i = 0; i < a->map.npt; i++) {
        const pm_point *p = &a->map.pt[i];
        printf("  %-24s %-8s %-10s every %d ms%s\n", p->channel, p->unit,
               a->map.dev[p->device].name, p->period_ms,
               p->writable ? "  (actuator)" : "");
    }
    printf("commands: %s\n", a->cmd_key ? "on" : "off (no command_pub in the bundle)");
}

static int start(agent *a)
{
    const options *o = &a->o;
    if (mkdir(o->state_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, PROG ": --state-dir %s: %s\n", o->state_dir, strerror(errno));
        return -1;
    }
    a->set = (gw_settings){
        .broker = a->bundle.broker,
        .state_dir = o->state_dir,
        .outbox_max_bytes = (uint64_t)o->outbox_mb << 20,
        .backfill_inflight = (int)(o->max_inflight / 2 > 0 ? o->max_inflight / 2 : 1),
        .backfill_hold_ms = 30000,
        .wrap = a->wrap, /* always encrypted: the profile's confidential channels must be */
        .batch = (int)o->batch,
        .linger_ms = (uint32_t)o->linger_ms,
        .attack_every = 1,
        .max_inflight = (int)o->max_inflight,
        .cmd_key = a->cmd_key,
    };
    gw_identity id = {0};
    gw_bundle_identity(&a->bundle, &id);
    id.ch = a->ch;
    id.nch = a->nch;
    id.act = a->act;
    id.nact = a->nact;
    id.field = (gw_field){apply_command, NULL, a};
    cm_err e = gateway_new(&a->set, &id, &a->gw);
    if (e != CM_OK) {
        fprintf(stderr, PROG ": gateway %s: %s (see the log above)\n", a->bundle.id,
                cm_strerror(e));
        return -1;
    }
    fd_opts fo = {.queue_max = 65536, .heartbeat_ms = 60000};
    if ((e = fd_start(&a->map, &fo, &a->dev)) != CM_OK) {
        fprintf(stderr, PROG ": cannot start the device threads: %s\n", cm_strerror(e));
        return -1;
    }
    if (gateway_start(a->gw) != CM_OK) {
        fprintf(stderr, PROG ": cannot start connecting\n");
        return -1;
    }
    if (o->sandbox) {
        char why[256];
        if (sandbox_enter(why, sizeof why) != 0) {
            fprintf(stderr, PROG ": sandbox: %s\n", why);
            return -1;
        }
        cm_info("event=sandboxed capabilities=none no_new_privs=1 seccomp=deny-list");
    }
    return 0;
}

/* ------------------------------------------------------------------ running */

/* Moves what the device threads measured into the library. */
static void drain(agent *a)
{
    fd_reading fr[DRAIN_CHUNK];
    gw_reading gr[DRAIN_CHUNK];
    size_t n;
    while ((n = fd_drain(a->dev, fr, DRAIN_CHUNK)) > 0) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t c = a->channel_of[fr[i].point];
            if (c == UINT32_MAX)
                continue;
            gr[k++] = (gw_reading){
                .channel = c,
                .quality = fr[i].bad ? GW_QUALITY_BAD : GW_QUALITY_GOOD,
                .ts_ms = fr[i].ts_ms,
                /* a bad reading carries no measurement: 0, never the last good value */
                .value = fr[i].bad || !isfinite(fr[i].value) ? 0.0 : fr[i].value,
            };
        }
        gateway_submit(a->gw, gr, k);
        if (n < DRAIN_CHUNK)
            break;
    }
}

static void status_line(agent *a, const char *event)
{
    fd_stats st = {0};
    if (a->dev)
        fd_get_stats(a->dev, &st);
    gw_cmd_counts cc = {0};
    gateway_command_counts(a->gw, &cc);
    cm_info("event=%s connected=%d polls=%" PRIu64 " reads_ok=%" PRIu64 " timeouts=%" PRIu64
            " exceptions=%" PRIu64 " io_errors=%" PRIu64 " bad_data=%" PRIu64
            " overruns=%" PRIu64 " dropped=%" PRIu64 " devices_down=%u batches_sent=%" PRIu64
            " batches_acked=%" PRIu64 " queued=%zu commands=%" PRIu64 " applied=%" PRIu64
            " refused=%" PRIu64 " written=%" PRIu64 " write_failures=%" PRIu64,
            event, gateway_connected(a->gw), st.polls, st.reads_ok, st.timeouts, st.exceptions,
            st.io_errors, st.bad_data, st.overruns, st.dropped, st.devices_down,
            gateway_legit_sent(a->gw), gateway_acked_batches(a->gw), gateway_queued(a->gw),
            cc.received, cc.applied, cc.refused, a->cmd_written, a->cmd_failed);
}

static void run(agent *a)
{
    uint64_t next_status = cm_mono_ms() + STATUS_EVERY_MS;
    int wake_fd = fd_wait_fd(a->dev);
    while (!g_stop) {
        drain(a);
        uint64_t now = cm_mono_ms();
        gateway_poll(a->gw, now);
        if (now >= next_status) {
            status_line(a, "status");
            next_status = now + STATUS_EVERY_MS;
        }
        uint64_t wake = gateway_next_wake(a->gw, cm_mono_ms());
        now = cm_mono_ms();
        int timeout = wake <= now ? 0 : wake - now > 200 ? 200 : (int)(wake - now);
        struct pollfd pfd = {.fd = wake_fd, .events = POLLIN};
        if (timeout > 0)
            (void)poll(&pfd, wake_fd >= 0 ? 1 : 0, timeout);
    }
    /* orderly stop: what was measured goes into the outbox, then a short wait for acks */
    drain(a);
    status_line(a, "stopping"); /* the device counters, before the threads are gone */
    fd_stop(&a->dev);           /* no more readings; what was measured is in the library's queue */
    gateway_flush(a->gw);
    uint64_t until = cm_mono_ms() + STOP_ACK_WAIT_MS;
    while (gateway_queued(a->gw) && cm_mono_ms() < until) {
        gateway_poll(a->gw, cm_mono_ms());
        usleep(2000);
    }
    gateway_stop_taking(a->gw);
    while (!gateway_all_acked(a->gw) && cm_mono_ms() < until) {
        gateway_poll(a->gw, cm_mono_ms());
        usleep(10000);
    }
    gateway_goodbye(a->gw);
    usleep(200000);
}

static void teardown(agent *a)
{
    if (a->dev)
        fd_stop(&a->dev);
    gateway_destroy(&a->gw);
    cm_rsa_destroy(&a->wrap);
    cm_pubkey_destroy(&a->cmd_key);
    free(a->ch);
    free(a->act);
    free(a->channel_of);
    free(a->point_of_act);
    pm_free(&a->map);
    gw_bundle_free(&a->bundle);
}

int main(int argc, char **argv)
{
    agent a;
    memset(&a, 0, sizeof a);
    int pa = parse_args(argc, argv, &a.o);
    if (pa)
        return pa > 0 ? 0 : 2;
    cm_log_init("gateway", (enum cm_log_level)a.o.log_level);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    if (load(&a) == 0) {
        if (a.o.check_only) {
            print_plan(&a);
            rc = 0;
        } else if (start(&a) == 0) {
            cm_info("gw=%s channels=%zu actuators=%zu devices=%zu event=started", a.bundle.id,
                    a.nch, a.nact, a.map.ndev);
            run(&a);
            rc = 0;
        }
    }
    teardown(&a);
    return rc;
}
