/* suido-gateway-sim: many simulated field gateways in one process, for load, end-to-end and
 * security tests of the platform (see gateway-sim/README.md).
 *
 * One thread schedules every gateway by its next due time and never blocks on a slow one: a
 * gateway whose window is full or whose connection is down keeps its batch and is polled again
 * later. Paho's threads deliver acks, commands (queued per gateway, acted on by this thread) and
 * connection events. At the end (duration, max-batches, or
 * SIGINT/SIGTERM) publishing stops, acks are optionally awaited, the JSON report is written and
 * every client is disconnected and freed. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_time.h"
#include "gateway.h"
#include "retired.h"
#include "signals.h"
#include "site.h"

#define PROG "suido-gateway-sim"
#define MAX_GATEWAYS 10000

typedef struct options {
    const char *broker, *deploy, *inventory, *ids, *state_dir, *report, *command_key;
    long gateways;
    double rate;
    long batch;
    double duration_s;
    long long max_batches;
    int encrypt;
    gw_attack attack;
    long attack_every;
    long skew_s;
    double wait_acks_s;
    int quiet;
    unsigned long long seed;
    long max_inflight;
    long outbox_max_mb;
    long backfill_inflight;
    double backfill_hold_s;
} options;

static volatile sig_atomic_t g_signals;

static void on_signal(int sig)
{
    (void)sig;
    g_signals++;
}

static void usage(FILE *f)
{
    fputs(
        "usage: " PROG " --broker ssl://127.0.0.1:PORT --deploy DEPLOYDIR [options]\n"
        "\n"
        "Simulates field gateways: each connects with its own certificate, announces itself with\n"
        "a signed birth, then publishes signed telemetry batches on suido/v1/<gw>/data.\n"
        "\n"
        "  --broker URI          broker URI (ssl://host:port); required\n"
        "  --deploy DIR          deployment made by keys/mkpki.sh; required\n"
        "  --inventory FILE      gateway inventory (default DEPLOYDIR/inventory.conf)\n"
        "  --gateways N          the first N gateways of the inventory\n"
        "  --ids gw-0001,gw-0005 exactly these gateways (default: every gateway in the inventory)\n"
        "  --rate R              batches per second per gateway (default 1; 0 = as fast as the\n"
        "                        in-flight window allows)\n"
        "  --batch K             readings per batch (default 16, max 256)\n"
        "  --duration S          seconds to run (default 0 = until SIGINT/SIGTERM)\n"
        "  --max-batches M       stop each gateway after M data batches\n"
        "  --encrypt             AES-256-GCM bodies under a per-session key wrapped to\n"
        "                        DEPLOYDIR/platform/wrap.pub\n"
        "  --attack MODE         tampered | replay | wrong-key | skew | malformed | flood |\n"
        "                        oversize\n"
        "  --attack-every N      every Nth data batch is attacked (default 1 = all)\n"
        "  --skew-s S            clock skew of --attack skew, seconds (default 600)\n"
        "  --state-dir DIR       keeps each gateway's boot epoch (DIR/<gw>.epoch) so it strictly\n"
        "                        increases across runs, and its outbox (DIR/<gw>.outbox): every\n"
        "                        batch stays on disk until the platform acks it; without it, no\n"
        "                        outbox\n"
        "  --outbox-max-mb M     bound of each gateway's outbox, MiB (default 64; 0 = no outbox)\n"
        "  --backfill-inflight K stored batches are republished only while fewer than K publishes\n"
        "                        are in flight (default 16, at most --max-inflight)\n"
        "  --backfill-hold S     live data waits at most S seconds for the acks of an older boot\n"
        "                        epoch's backfill (default 30)\n"
        "  --report FILE         JSON summary written at exit\n"
        "  --wait-acks S         after the last batch, wait up to S seconds for end-to-end acks\n"
        "                        to cover everything sent (default 0)\n"
        "  --seed N              seed of the simulated signals (default 1)\n"
        "  --max-inflight W      MQTT in-flight window per gateway (default 64)\n"
        "  --command-key FILE    the command gate's P-256 public key (PEM); commands on\n"
        "                        suido/v1/<gw>/cmd are verified with it (default\n"
        "                        DEPLOYDIR/platform/command.pub; no such file: no commands)\n"
        "  --quiet               no progress line, warnings and errors only\n"
        "  --help                this text\n",
        f);
}

/* ------------------------------------------------------------------ argument parsing */

static int parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, PROG ": %s: expected an integer from %ld to %ld, got '%s'\n", opt, min,
                max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max) {
        fprintf(stderr, PROG ": %s: expected a number from %g to %g, got '%s'\n", opt, min, max,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

/* 0: run; 1: exit 0 (help); -1: exit 2 */
static int parse_args(int argc, char **argv, options *o)
{
    enum { O_BROKER = 256, O_DEPLOY, O_INVENTORY, O_GATEWAYS, O_IDS, O_RATE, O_BATCH, O_DURATION,
           O_MAX_BATCHES, O_ENCRYPT, O_ATTACK, O_ATTACK_EVERY, O_SKEW, O_STATE_DIR, O_REPORT,
           O_WAIT_ACKS, O_SEED, O_MAX_INFLIGHT, O_QUIET, O_HELP, O_COMMAND_KEY, O_OUTBOX_MAX,
           O_BACKFILL_INFLIGHT, O_BACKFILL_HOLD };
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, O_BROKER},
        {"deploy", required_argument, NULL, O_DEPLOY},
        {"inventory", required_argument, NULL, O_INVENTORY},
        {"gateways", required_argument, NULL, O_GATEWAYS},
        {"ids", required_argument, NULL, O_IDS},
        {"rate", required_argument, NULL, O_RATE},
        {"batch", required_argument, NULL, O_BATCH},
        {"duration", required_argument, NULL, O_DURATION},
        {"max-batches", required_argument, NULL, O_MAX_BATCHES},
        {"encrypt", no_argument, NULL, O_ENCRYPT},
        {"attack", required_argument, NULL, O_ATTACK},
        {"attack-every", required_argument, NULL, O_ATTACK_EVERY},
        {"skew-s", required_argument, NULL, O_SKEW},
        {"state-dir", required_argument, NULL, O_STATE_DIR},
        {"report", required_argument, NULL, O_REPORT},
        {"wait-acks", required_argument, NULL, O_WAIT_ACKS},
        {"seed", required_argument, NULL, O_SEED},
        {"max-inflight", required_argument, NULL, O_MAX_INFLIGHT},
        {"command-key", required_argument, NULL, O_COMMAND_KEY},
        {"outbox-max-mb", required_argument, NULL, O_OUTBOX_MAX},
        {"backfill-inflight", required_argument, NULL, O_BACKFILL_INFLIGHT},
        {"backfill-hold", required_argument, NULL, O_BACKFILL_HOLD},
        {"quiet", no_argument, NULL, O_QUIET},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->rate = 1.0;
    o->batch = 16;
    o->attack_every = 1;
    o->skew_s = 600;
    o->seed = 1;
    o->max_inflight = 64;
    o->outbox_max_mb = 64;
    o->backfill_inflight = 16;
    o->backfill_hold_s = 30;
    int c;
    long l;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_BROKER: o->broker = optarg; break;
        case O_DEPLOY: o->deploy = optarg; break;
        case O_INVENTORY: o->inventory = optarg; break;
        case O_GATEWAYS:
            if (parse_long("--gateways", optarg, 1, MAX_GATEWAYS, &o->gateways))
                return -1;
            break;
        case O_IDS: o->ids = optarg; break;
        case O_RATE:
            if (parse_double("--rate", optarg, 0, 1e6, &o->rate))
                return -1;
            break;
        case O_BATCH:
            if (parse_long("--batch", optarg, 1, GW_MAX_BATCH, &o->batch))
                return -1;
            break;
        case O_DURATION:
            if (parse_double("--duration", optarg, 0, 1e9, &o->duration_s))
                return -1;
            break;
        case O_MAX_BATCHES:
            if (parse_long("--max-batches", optarg, 1, LONG_MAX, &l))
                return -1;
            o->max_batches = l;
            break;
        case O_ENCRYPT: o->encrypt = 1; break;
        case O_ATTACK:
            if (gw_attack_parse(optarg, &o->attack)) {
                fprintf(stderr, PROG ": --attack: unknown mode '%s' (tampered, replay, wrong-key, "
                                     "skew, malformed, flood, oversize)\n", optarg);
                return -1;
            }
            break;
        case O_ATTACK_EVERY:
            if (parse_long("--attack-every", optarg, 1, INT32_MAX, &o->attack_every))
                return -1;
            break;
        case O_SKEW:
            if (parse_long("--skew-s", optarg, -1000000000L, 1000000000L, &o->skew_s))
                return -1;
            break;
        case O_STATE_DIR: o->state_dir = optarg; break;
        case O_REPORT: o->report = optarg; break;
        case O_WAIT_ACKS:
            if (parse_double("--wait-acks", optarg, 0, 1e6, &o->wait_acks_s))
                return -1;
            break;
        case O_SEED:
            if (parse_long("--seed", optarg, 0, LONG_MAX, &l))
                return -1;
            o->seed = (unsigned long long)l;
            break;
        case O_MAX_INFLIGHT:
            if (parse_long("--max-inflight", optarg, 1, 65535, &o->max_inflight))
                return -1;
            break;
        case O_OUTBOX_MAX:
            if (parse_long("--outbox-max-mb", optarg, 0, 1L << 20, &o->outbox_max_mb))
                return -1;
            break;
        case O_BACKFILL_INFLIGHT:
            if (parse_long("--backfill-inflight", optarg, 1, 65535, &o->backfill_inflight))
                return -1;
            break;
        case O_BACKFILL_HOLD:
            if (parse_double("--backfill-hold", optarg, 0, 1e6, &o->backfill_hold_s))
                return -1;
            break;
        case O_QUIET: o->quiet = 1; break;
        case O_COMMAND_KEY: o->command_key = optarg; break;
        case 'h':
        case O_HELP: usage(stdout); return 1;
        default:
            fprintf(stderr, PROG ": unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (!o->broker || !o->deploy) {
        fprintf(stderr, PROG ": --broker and --deploy are required (see --help)\n");
        return -1;
    }
    if (o->gateways && o->ids) {
        fprintf(stderr, PROG ": --gateways and --ids exclude each other\n");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ inventory */

typedef struct inv_entry {
    char id[65], site[128], model[64], firmware[64];
    sig_kind kind;
} inv_entry;

/* Value of key, or dflt when absent or empty; 0, or -1 when it does not fit. */
static int conf_value(const cm_conf *c, const char *sec, const char *key, const char *dflt,
                      char *out, size_t cap)
{
    const char *v = cm_conf_get(c, sec, key);
    if (!v || !*v)
        v = dflt;
    if (strlen(v) >= cap) {
        fprintf(stderr, PROG ": %s:%d: [%s] %s is longer than %zu bytes\n", cm_conf_name(c),
                cm_conf_line(c, sec, key), sec, key, cap - 1);
        return -1;
    }
    snprintf(out, cap, "%s", v);
    return 0;
}

static int valid_gw_id(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return 0;
    return 1;
}

/* Every [gateway <id>] section in file order. */
static int load_inventory(const cm_conf *c, inv_entry **out, size_t *n_out)
{
    size_t ns = cm_conf_section_count(c), n = 0;
    inv_entry *v = calloc(ns ? ns : 1, sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < ns; i++) {
        const char *sec = cm_conf_section(c, i);
        const char *id = cm_conf_section_name(sec, "gateway");
        if (!id)
            continue;
        if (!valid_gw_id(id)) {
            fprintf(stderr, PROG ": %s: [%s]: gateway id must be 1-64 of [a-z0-9-]\n",
                    cm_conf_name(c), sec);
            free(v);
            return -1;
        }
        char kind[32];
        if (conf_value(c, sec, "kind", "", kind, sizeof kind) || sig_kind_parse(kind, &v[n].kind)) {
            fprintf(stderr, PROG ": %s:%d: [%s] kind must be treatment, reservoir or pumping\n",
                    cm_conf_name(c), cm_conf_line(c, sec, "kind"), sec);
            free(v);
            return -1;
        }
        snprintf(v[n].id, sizeof v[n].id, "%s", id);
        if (conf_value(c, sec, "site", id, v[n].site, sizeof v[n].site) ||
            conf_value(c, sec, "model", "suido-sim", v[n].model, sizeof v[n].model) ||
            conf_value(c, sec, "firmware", "0.0.0", v[n].firmware, sizeof v[n].firmware)) {
            free(v);
            return -1;
        }
        n++;
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* The gateways to run, as indices into the inventory. Without --ids, a gateway that was disposed
 * or revoked is skipped with one line (its keys are gone or the broker refuses it); named with
 * --ids it runs anyway, with a warning: a test may mean to show the refusal. */
static int select_gateways(const options *o, const inv_entry *inv, size_t n_inv, size_t **sel,
                           size_t *n_sel)
{
    size_t *v = calloc(n_inv ? n_inv : 1, sizeof *v);
    size_t n = 0;
    if (!v)
        return -1;
    if (o->ids) {
        char *copy = strdup(o->ids), *save = NULL;
        if (!copy) {
            free(v);
            return -1;
        }
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            while (*tok == ' ')
                tok++;
            size_t i = 0;
            while (i < n_inv && strcmp(inv[i].id, tok) != 0)
                i++;
            if (i == n_inv) {
                fprintf(stderr, PROG ": --ids: '%s' is not in the inventory\n", tok);
                free(copy);
                free(v);
                return -1;
            }
            char why[4400];
            if (gateway_retired(o->deploy, tok, why, sizeof why))
                fprintf(stderr, PROG ": warning: %s is %s; running it as asked by --ids\n", tok,
                        why);
            for (size_t j = 0; j < n; j++)
                if (v[j] == i) {
                    fprintf(stderr, PROG ": --ids: '%s' listed twice\n", tok);
                    free(copy);
                    free(v);
                    return -1;
                }
            v[n++] = i;
        }
        free(copy);
    } else {
        size_t want = o->gateways ? (size_t)o->gateways : n_inv;
        if (want > n_inv) {
            fprintf(stderr, PROG ": --gateways %zu: the inventory has only %zu\n", want, n_inv);
            free(v);
            return -1;
        }
        for (size_t i = 0; i < n_inv && n < want; i++) {
            char why[4400];
            if (gateway_retired(o->deploy, inv[i].id, why, sizeof why)) {
                fprintf(stderr, PROG ": skipping %s: %s\n", inv[i].id, why);
                continue;
            }
            v[n++] = i;
        }
    }
    if (n == 0) {
        fprintf(stderr, PROG ": no gateways to simulate\n");
        free(v);
        return -1;
    }
    *sel = v;
    *n_sel = n;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of DEPLOYDIR/gateways/<gw> that hold a sign.key (for the wrong-key attack). */
static int list_signing_gateways(const char *deploy, char ***out, size_t *n_out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/gateways", deploy);
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char key[4400];
        struct stat st;
        snprintf(key, sizeof key, "%s/%s/sign.key", path, e->d_name);
        if (stat(key, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                rc = -1;
                break;
            }
            v = nv;
        }
        if (!(v[n] = strdup(e->d_name))) {
            rc = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            free(v[i]);
        free(v);
        return -1;
    }
    qsort(v, n, sizeof *v, cmp_str);
    *out = v;
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------------ run */

typedef struct sim {
    options o;
    gw_settings set;
    cm_conf *inv_conf;
    inv_entry *inv;
    size_t n_inv;
    size_t *sel;
    size_t n;
    gateway **gw;
    site *sites;               /* the signal model each gateway's readings come from */
    cm_rsa *wrap;
    cm_pubkey *cmd_key;        /* NULL: commands disabled */
    char cmd_key_path[4096];
    char **signers;
    size_t n_signers;
} sim;

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !g_signals)
        ;
}

typedef struct totals {
    int connected, inflight;
    uint64_t sent, acked, readings;
} totals;

static totals sum_up(const sim *s)
{
    totals t = {0};
    for (size_t i = 0; i < s->n; i++) {
        t.connected += gateway_connected(s->gw[i]);
        t.inflight += gateway_inflight(s->gw[i]);
        t.sent += gateway_sent(s->gw[i]);
        t.acked += gateway_acked_batches(s->gw[i]);
        t.readings += gateway_readings_sent(s->gw[i]);
    }
    return t;
}

static void status_line(const sim *s)
{
    totals t = sum_up(s);
    fprintf(stderr, "sim: connected=%d/%zu sent=%" PRIu64 " acked=%" PRIu64 " inflight=%d\n",
            t.connected, s->n, t.sent, t.acked, t.inflight);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(const double *v, size_t n, double p)
{
    size_t k = (size_t)ceil(p * (double)n);
    return v[k ? k - 1 : 0]; /* nearest rank */
}

static int write_report(sim *s, double elapsed_s, double total_s)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", s->o.report, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, PROG ": %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    uint64_t legit = 0, readings = 0, acked = 0, lat_total = 0;
    gw_cmd_counts cmds;
    memset(&cmds, 0, sizeof cmds);
    size_t n_lat = 0;
    for (size_t i = 0; i < s->n; i++)
        n_lat += gateway_latency_count(s->gw[i]);
    double *lat = malloc((n_lat ? n_lat : 1) * sizeof *lat);
    size_t got = 0;
    fputs("{\"gateways\":[", f);
    for (size_t i = 0; i < s->n; i++) {
        gateway *g = s->gw[i];
        fputs(i ? ",\n  " : "\n  ", f);
        gateway_write_json(g, f);
        legit += gateway_legit_sent(g);
        readings += gateway_readings_sent(g);
        acked += gateway_acked_batches(g);
        gateway_command_counts(g, &cmds);
        if (lat) {
            uint64_t tot = 0;
            got += gateway_latencies(g, lat + got, n_lat - got, &tot);
            lat_total += tot;
        }
    }
    totals t = sum_up(s);
    fputs("\n],\n\"commands\":", f);
    gw_cmd_counts_json(&cmds, f);
    fprintf(f,
            ",\n\"batches_sent\":%" PRIu64 ",\"legit_sent\":%" PRIu64
            ",\"attacked_sent\":%" PRIu64 ",\"readings_sent\":%" PRIu64
            ",\"acked_batches\":%" PRIu64 ",\n\"elapsed_s\":%.3f,\"total_s\":%.3f,"
            "\"batches_per_s\":%.1f,\n",
            t.sent, legit, t.sent - legit, readings, acked, elapsed_s, total_s,
            elapsed_s > 0 ? (double)t.sent / elapsed_s : 0.0);
    if (lat && got) {
        qsort(lat, got, sizeof *lat, cmp_double);
        fprintf(f, "\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"samples\":%" PRIu64
                   "},\n",
                percentile(lat, got, 0.50), percentile(lat, got, 0.99), lat[got - 1], lat_total);
    } else {
        fputs("\"latency_ms\":{\"p50\":null,\"p99\":null,\"max\":null,\"samples\":0},\n", f);
    }
    fprintf(f,
            "\"settings\":{\"rate\":%g,\"batch\":%ld,\"encrypt\":%s,\"attack\":\"%s\","
            "\"attack_every\":%ld,\"skew_s\":%ld,\"max_batches\":%lld,\"seed\":%llu,"
            "\"max_inflight\":%ld,\"commands\":%s,\"outbox\":%s,\"outbox_max_mb\":%ld,"
            "\"backfill_inflight\":%d,\"backfill_hold_s\":%g}}\n",
            s->o.rate, s->o.batch, s->o.encrypt ? "true" : "false",
            s->o.attack ? gw_attack_name(s->o.attack) : "none", s->o.attack_every, s->o.skew_s,
            s->o.max_batches, s->o.seed, s->o.max_inflight, s->cmd_key ? "true" : "false",
            s->set.outbox_max_bytes ? "true" : "false", s->o.outbox_max_mb,
            s->set.backfill_inflight, s->o.backfill_hold_s);
    free(lat);
    int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, s->o.report) != 0) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", s->o.report, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The command gate's public key: --command-key, or DEPLOYDIR/platform/command.pub. A key file
 * that does not exist disables commands (no gateway subscribes), said once here; a file that
 * exists but is not a P-256 public key is a setup error. */
static int load_command_key(sim *s)
{
    const options *o = &s->o;
    if (o->command_key)
        snprintf(s->cmd_key_path, sizeof s->cmd_key_path, "%s", o->command_key);
    else
        snprintf(s->cmd_key_path, sizeof s->cmd_key_path, "%s/platform/command.pub", o->deploy);
    struct stat st;
    if (stat(s->cmd_key_path, &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        if (o->command_key)
            cm_warn("path=%s event=commands_disabled reason=\"no command key file\"",
                    s->cmd_key_path);
        else
            cm_info("path=%s event=commands_disabled reason=\"no command key file\"",
                    s->cmd_key_path);
        return 0;
    }
    cm_err e = cm_pubkey_load_pem(s->cmd_key_path, &s->cmd_key);
    if (e != CM_OK) {
        fprintf(stderr, PROG ": %s: cannot load the command gate's key: %s\n", s->cmd_key_path,
                cm_strerror(e));
        return -1;
    }
    cm_info("path=%s key_id=%s event=commands_enabled", s->cmd_key_path,
            cm_pubkey_key_id(s->cmd_key));
    return 0;
}

static int setup(sim *s)
{
    const options *o = &s->o;
    char path[4096], err[CM_CONF_ERRLEN];
    const char *inv_path = o->inventory;
    if (!inv_path) {
        snprintf(path, sizeof path, "%s/inventory.conf", o->deploy);
        inv_path = path;
    }
    if (cm_conf_load(inv_path, &s->inv_conf, err) != CM_OK) {
        fprintf(stderr, PROG ": %s\n", err);
        return -1;
    }
    if (load_inventory(s->inv_conf, &s->inv, &s->n_inv) ||
        select_gateways(o, s->inv, s->n_inv, &s->sel, &s->n))
        return -1;
    if (o->state_dir && mkdir(o->state_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, PROG ": --state-dir %s: %s\n", o->state_dir, strerror(errno));
        return -1;
    }
    if (o->encrypt) {
        snprintf(path, sizeof path, "%s/platform/wrap.pub", o->deploy);
        cm_err e = cm_rsa_load_public(path, &s->wrap);
        if (e != CM_OK) {
            fprintf(stderr, PROG ": %s: cannot load the platform wrap key: %s\n", path,
                    cm_strerror(e));
            return -1;
        }
    }
    if (o->attack == GW_ATTACK_WRONG_KEY &&
        list_signing_gateways(o->deploy, &s->signers, &s->n_signers))
        return -1;
    if (load_command_key(s) != 0)
        return -1;

    s->set = (gw_settings){
        .broker = o->broker,
        .state_dir = o->state_dir,
        .outbox_max_bytes = o->state_dir ? (uint64_t)o->outbox_max_mb << 20 : 0,
        .backfill_inflight = (int)(o->backfill_inflight < o->max_inflight ? o->backfill_inflight
                                                                          : o->max_inflight),
        .backfill_hold_ms = (uint64_t)(o->backfill_hold_s * 1000.0),
        .wrap = s->wrap,
        .batch = (int)o->batch,
        .fed_on_demand = 1, /* site_feed makes readings as batches fall due */
        .rate = o->rate,
        .max_batches = (uint64_t)o->max_batches,
        .attack = o->attack,
        .attack_every = (int)o->attack_every,
        .skew_s = (int)o->skew_s,
        .seed = o->seed,
        .max_inflight = (int)o->max_inflight,
        .cmd_key = s->cmd_key,
    };
    if (!(s->gw = calloc(s->n, sizeof *s->gw)) || !(s->sites = calloc(s->n, sizeof *s->sites)))
        return -1;
    for (size_t i = 0; i < s->n; i++) {
        const inv_entry *en = &s->inv[s->sel[i]];
        char other[4400];
        char dir[4200], crt[4300], key[4300], sign[4300], unwrap[4300], ca[4300];
        snprintf(dir, sizeof dir, "%s/gateways/%s", o->deploy, en->id);
        snprintf(crt, sizeof crt, "%s/client.crt", dir);
        snprintf(key, sizeof key, "%s/client.key", dir);
        snprintf(sign, sizeof sign, "%s/sign.key", dir);
        snprintf(unwrap, sizeof unwrap, "%s/cmdwrap.key", dir);
        snprintf(ca, sizeof ca, "%s/ca/ca.crt", o->deploy);
        site_init(&s->sites[i], en->kind, o->seed, en->id, o->rate);
        gw_identity id = {
            .id = en->id,
            .site = en->site,
            .kind = sig_kind_name(en->kind),
            .model = en->model,
            .firmware = en->firmware,
            .files = {.cert = crt, .key = key, .sign_key = sign, .cmd_unwrap_key = unwrap,
                      .ca = ca},
        };
        site_identity(&s->sites[i], &id);
        if (o->attack == GW_ATTACK_WRONG_KEY) {
            /* the next gateway after this one in DEPLOYDIR/gateways (wrapping), never itself */
            size_t k = 0;
            while (k < s->n_signers && strcmp(s->signers[k], en->id) <= 0)
                k++;
            for (size_t tries = 0; tries < s->n_signers; tries++, k++) {
                const char *cand = s->signers[k % s->n_signers];
                if (strcmp(cand, en->id) != 0) {
                    snprintf(other, sizeof other, "%s/gateways/%s/sign.key", o->deploy, cand);
                    id.wrong_key = other;
                    break;
                }
            }
        }
        cm_err e = gateway_new(&s->set, &id, &s->gw[i]);
        if (e != CM_OK) {
            fprintf(stderr, PROG ": gateway %s: %s (see the log above)\n", en->id,
                    cm_strerror(e));
            return -1;
        }
    }
    return 0;
}

static void teardown(sim *s)
{
    if (s->gw)
        for (size_t i = 0; i < s->n; i++)
            gateway_destroy(&s->gw[i]);
    free(s->gw);
    free(s->sites);
    for (size_t i = 0; i < s->n_signers; i++)
        free(s->signers[i]);
    free(s->signers);
    cm_rsa_destroy(&s->wrap);
    cm_pubkey_destroy(&s->cmd_key); /* after the gateways, which borrow it */
    free(s->sel);
    free(s->inv);
    cm_conf_destroy(&s->inv_conf);
}

static int run(sim *s)
{
    const options *o = &s->o;
    for (size_t i = 0; i < s->n; i++)
        if (gateway_start(s->gw[i]) != CM_OK) {
            fprintf(stderr, PROG ": gateway %s: cannot start connecting\n",
                    gateway_id(s->gw[i]));
            return -1;
        }
    uint64_t t0 = cm_mono_ms(), next_status = t0 + 1000;
    uint64_t end = o->duration_s > 0 ? t0 + (uint64_t)(o->duration_s * 1000.0) : UINT64_MAX;
    cm_info("gateways=%zu rate=%g batch=%ld encrypt=%d attack=%s event=started", s->n, o->rate,
            o->batch, o->encrypt, o->attack ? gw_attack_name(o->attack) : "none");

    /* ---- publish phase. A pass polls every gateway once, starting one further each time so
     * that none is always last; the clock is read per gateway because with hundreds of clients a
     * pass can take long (Paho serialises all clients on one lock). */
    size_t first = 0;
    while (!g_signals) {
        uint64_t now = cm_mono_ms();
        if (now >= end)
            break;
        int progress = 0, all_done = o->max_batches > 0;
        uint64_t wake = now + 100;
        for (size_t k = 0; k < s->n && !g_signals; k++) {
            size_t gi = (first + k) % s->n;
            gateway *g = s->gw[gi];
            now = cm_mono_ms();
            if (now >= end)
                break;
            site_feed(&s->sites[gi], g);
            progress += gateway_poll(g, now);
            if (!gateway_done(g))
                all_done = 0;
            uint64_t w = gateway_next_wake(g, now);
            if (w < wake)
                wake = w;
            if (!o->quiet && now >= next_status) {
                status_line(s);
                next_status = now - (now - next_status) % 1000 + 1000;
            }
        }
        first = (first + 1) % s->n;
        if (all_done)
            break;
        now = cm_mono_ms();
        if (wake > end)
            wake = end;
        if (!o->quiet && wake > next_status)
            wake = next_status;
        if (!progress)
            sleep_us(wake > now ? (wake - now) * 1000 : 200);
    }
    uint64_t t_pub = cm_mono_ms();
    double elapsed_s = (double)(t_pub - t0) / 1000.0;
    int sig_at_stop = g_signals;
    cm_info("elapsed_s=%.3f event=publishing_stopped", elapsed_s);

    /* ---- wait for end-to-end acks; gateways with an outbox keep publishing what it holds
     * (and republishing) meanwhile, the others only listen */
    for (size_t i = 0; i < s->n; i++)
        gateway_stop_taking(s->gw[i]);
    if (o->wait_acks_s > 0) {
        uint64_t until = t_pub + (uint64_t)(o->wait_acks_s * 1000.0);
        while (g_signals == sig_at_stop && cm_mono_ms() < until) {
            size_t missing = 0;
            for (size_t i = 0; i < s->n; i++) {
                (void)gateway_poll(s->gw[i], cm_mono_ms());
                missing += !gateway_all_acked(s->gw[i]);
            }
            if (!missing)
                break;
            uint64_t now = cm_mono_ms();
            if (!o->quiet && now >= next_status) {
                status_line(s);
                next_status = now + 1000;
            }
            sleep_us(10000);
        }
    }

    /* ---- orderly goodbye, let the last publishes complete */
    for (size_t i = 0; i < s->n; i++)
        gateway_goodbye(s->gw[i]);
    uint64_t until = cm_mono_ms() + 2000;
    while (cm_mono_ms() < until && sum_up(s).inflight > 0)
        sleep_us(5000);
    if (!o->quiet)
        status_line(s);
    totals t = sum_up(s);
    cm_info("batches_sent=%" PRIu64 " acked_batches=%" PRIu64 " readings_sent=%" PRIu64
            " elapsed_s=%.3f batches_per_s=%.1f event=finished",
            t.sent, t.acked, t.readings, elapsed_s,
            elapsed_s > 0 ? (double)t.sent / elapsed_s : 0.0);
    if (o->report &&
        write_report(s, elapsed_s, (double)(cm_mono_ms() - t0) / 1000.0) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    sim s;
    memset(&s, 0, sizeof s);
    int pa = parse_args(argc, argv, &s.o);
    if (pa)
        return pa > 0 ? 0 : 2;
    cm_log_init("gateway-sim", s.o.quiet ? CM_LOG_WARN : CM_LOG_INFO);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = setup(&s) == 0 && run(&s) == 0 ? 0 : 1;
    teardown(&s);
    return rc;
}
