/* suido_plugin: Mosquitto 2.0 plugin (plugin API v5) that narrows what the broker's own TLS,
 * CRL and acl_file checks allow. See broker/plugin/README.md for what it enforces and for what
 * Mosquitto 2.0.11 actually calls (measured).
 *
 *   plugin /path/to/suido_plugin.so
 *   plugin_opt_state_file   /deploy/mosquitto/identities.state   (required)
 *   plugin_opt_metrics_file /deploy/state/metrics/mosquitto.prom (optional)
 *   plugin_opt_poll_ms      200    how often the state file's stat() is compared (10..5000)
 *   plugin_opt_sweep_ms     1000   how often identities that are not active are kicked again
 *                                  (0 = never; else 100..60000)
 *   plugin_opt_sweep_batch  64     at most this many identities per sweep (1..100000)
 *   plugin_opt_deny_retain  all    all: every retained PUBLISH/delivery is denied (but a Sparkplug
 *                                  host's spBv1.0/STATE/<id>); cmd: only on
 *                                  suido/v1/+/cmd
 *
 * Rules:
 *  - For services the plugin never allows anything: an ACL check it does not deny returns
 *    MOSQ_ERR_PLUGIN_DEFER, so the acl_file decides. (In 2.0.11 the first callback that does not
 *    defer decides, and the plugin runs before the acl_file. Measured; see the README.)
 *  - For identities listed with the role "gateway" the plugin is the ACL: their rights follow
 *    from the id (gateway_may; with the role "sparkplug", a Sparkplug B edge node's own spBv1.0
 *    topics instead: sparkplug_may), so a gateway provisioned by the registry needs no acl_file edit
 *    and no broker reload. The identity, will and retain checks above still come first.
 *  - Everything runs on the broker's single thread; nothing here locks.
 *  - Kicks happen only on MOSQ_EVT_TICK, never inside another callback (the client being checked
 *    would be torn down under the broker's feet).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define ID_MAX 64                         /* longest identity (bytes) */
#define STATE_FILE_MAX (16L * 1024 * 1024) /* larger state files are refused as malformed */
#define PENDING_MAX 4096                  /* refused clients waiting for the next tick's kick */
#define LOGV_MAX 96                       /* longest value (before escaping) put in a log line */

/* The registry's lifecycle: provisioned -> active <-> suspended -> revoked -> disposed. Only active
 * is let in. */
enum id_state { ST_ACTIVE = 0, ST_PROVISIONED, ST_SUSPENDED, ST_REVOKED, ST_DISPOSED, ST_N };
static const char *const STATE_NAMES[ST_N] = {"active", "provisioned", "suspended", "revoked",
                                              "disposed"};
static const char *const STATE_REASONS[ST_N] = {"state_active", "state_provisioned",
                                                "state_suspended", "state_revoked",
                                                "state_disposed"};

/* ------------------------------------------------------------------ identity table */

struct ident {
    char *id; /* NULL: empty slot */
    uint8_t state;
    bool gateway;   /* listed with a gateway role: the plugin decides its topic rights */
    bool sparkplug; /* the role "sparkplug": a Sparkplug B edge node (its own spBv1.0 topics) */
};

struct table {
    struct ident *slots;
    size_t cap; /* power of two, >= 2 * count */
    size_t count;
    size_t by_state[ST_N];
    char **inactive; /* ids whose state is not active (point into slots), for the sweep */
    size_t n_inactive;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void table_free(struct table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->cap; i++) free(t->slots[i].id);
    free(t->slots);
    free(t->inactive);
    free(t);
}

static struct table *table_new(size_t expected)
{
    struct table *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    size_t cap = 16;
    while (cap < expected * 2 + 1) cap *= 2;
    t->slots = calloc(cap, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->cap = cap;
    return t;
}

static struct ident *table_slot(const struct table *t, const char *id)
{
    size_t mask = t->cap - 1;
    for (size_t i = (size_t)hash_str(id) & mask;; i = (i + 1) & mask) {
        if (!t->slots[i].id || strcmp(t->slots[i].id, id) == 0) return &t->slots[i];
    }
}

/* -1: not listed, else the state. */
static int table_get(const struct table *t, const char *id)
{
    if (!t || !id) return -1;
    const struct ident *e = table_slot(t, id);
    return e->id ? e->state : -1;
}

/* The identity's gateway role, or NULL for a service (or an unknown id). */
static const struct ident *table_gateway(const struct table *t, const char *id)
{
    if (!t || !id) return NULL;
    const struct ident *e = table_slot(t, id);
    return e->id && e->gateway ? e : NULL;
}

/* ------------------------------------------------------------------ text checks */

/* Decodes one UTF-8 sequence at s[*i] (len bytes in all). Returns false on any invalid, overlong
 * or surrogate sequence and on code points above U+10FFFF. */
static bool utf8_next(const unsigned char *s, size_t len, size_t *i, uint32_t *cp)
{
    unsigned char c = s[*i];
    uint32_t v, min;
    size_t n;
    if (c < 0x80) {
        *cp = c;
        (*i)++;
        return true;
    } else if ((c & 0xE0) == 0xC0) {
        n = 1, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 2, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 3, v = c & 0x07, min = 0x10000;
    } else {
        return false;
    }
    if (len - *i <= n) return false;
    for (size_t k = 1; k <= n; k++) {
        if ((s[*i + k] & 0xC0) != 0x80) return false;
        v = (v << 6) | (s[*i + k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return false;
    *cp = v;
    *i += n + 1;
    return true;
}

static bool is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/* Why s is not an acceptable identity (username, client id, state file entry), or NULL. */
static const char *identity_problem(const char *s)
{
    if (!s || !*s) return "empty_identity";
    size_t len = strlen(s);
    if (len > ID_MAX) return "identity_too_long";
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        if (!utf8_next((const unsigned char *)s, len, &i, &cp)) return "invalid_utf8";
        if (is_control(cp)) return "control_character";
        if (cp == '+' || cp == '#' || cp == '/') return "wildcard_or_slash";
    }
    return NULL;
}

/* Why a topic (or topic filter) is refused, or NULL. The broker already refuses topics that are not
 * UTF-8 or hold U+0000 (a C string cannot even carry a NUL); this is the second line. */
static const char *topic_problem(const char *t)
{
    if (!t || !*t) return "empty_topic";
    size_t len = strlen(t);
    if (len > 65535) return "topic_too_long";
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        if (!utf8_next((const unsigned char *)t, len, &i, &cp)) return "invalid_utf8";
        if (is_control(cp)) return "control_character";
    }
    return NULL;
}

/* suido/v1/<one level>/cmd */
static bool is_cmd_topic(const char *t)
{
    static const char pre[] = "suido/v1/";
    if (strncmp(t, pre, sizeof(pre) - 1) != 0) return false;
    const char *gw = t + sizeof(pre) - 1;
    const char *slash = strchr(gw, '/');
    return slash && slash != gw && strcmp(slash, "/cmd") == 0;
}

/* spBv1.0/STATE/<one level>: a Sparkplug primary host's STATE, the only retained topic */
static bool is_state_topic(const char *t)
{
    static const char pre[] = "spBv1.0/STATE/";
    return strncmp(t, pre, sizeof(pre) - 1) == 0 && t[sizeof(pre) - 1] &&
           !strchr(t + sizeof(pre) - 1, '/');
}

/* A Sparkplug B edge node's rights (docs/sparkplug.md): its node id is its gateway id, so
 * spBv1.0/<group>/{NBIRTH,NDATA,NDEATH}/<gw> and .../{DBIRTH,DDATA,DDEATH}/<gw>/<device> to
 * publish, spBv1.0/<group>/NCMD/<gw> and .../DCMD/<gw>/<device or +> to subscribe, and the primary
 * host's STATE to read. Any group, never another node's topics. */
static bool sparkplug_may(const char *gw, const char *topic, int access)
{
    static const char pre[] = "spBv1.0/";
    if (strncmp(topic, pre, sizeof(pre) - 1) != 0) return false;
    const char *group = topic + sizeof(pre) - 1;
    if (is_state_topic(topic)) return access != MOSQ_ACL_WRITE;
    const char *type = strchr(group, '/');
    if (!type || type == group || strchr("+#", *group)) return false;
    type++;
    const char *node = strchr(type, '/');
    if (!node) return false;
    node++;
    size_t tl = (size_t)(node - 1 - type), gl = strlen(gw);
    if (strncmp(node, gw, gl) != 0 || (node[gl] != '/' && node[gl] != '\0')) return false;
    const char *device = node[gl] == '/' ? node + gl + 1 : NULL;
    if (device && (!*device || strchr(device, '/') || strchr(device, '#'))) return false;
    bool is_pub = access == MOSQ_ACL_WRITE;
    if (device && strcmp(device, "+") == 0 && (is_pub || tl != 4)) return false;
    static const char *const node_pub[] = {"NBIRTH", "NDATA", "NDEATH"};
    static const char *const dev_pub[] = {"DBIRTH", "DDATA", "DDEATH"};
    const char *const *list = is_pub ? (device ? dev_pub : node_pub) : NULL;
    if (!is_pub) return tl == 4 && strncmp(type, device ? "DCMD" : "NCMD", 4) == 0;
    for (size_t i = 0; i < 3; i++)
        if (strlen(list[i]) == tl && strncmp(type, list[i], tl) == 0) return true;
    return false;
}

/* A gateway's rights follow from its id alone (docs/architecture.md, "Broker ACL"): it publishes
 * its own birth, data, backfill, death and cmdres topics and subscribes to (and is delivered) its
 * own ack and cmd topics; nothing else. Exact topic names only, so wildcard filters are refused. */
static bool gateway_may(const char *gw, const char *topic, int access)
{
    static const char pre[] = "suido/v1/";
    static const char *const pub[] = {"birth", "data", "backfill", "death", "cmdres"};
    static const char *const sub[] = {"ack", "cmd"};
    size_t gl = strlen(gw);
    if (strncmp(topic, pre, sizeof(pre) - 1) != 0) return false;
    const char *t = topic + sizeof(pre) - 1;
    if (strncmp(t, gw, gl) != 0 || t[gl] != '/') return false;
    const char *leaf = t + gl + 1;
    bool is_pub = access == MOSQ_ACL_WRITE;
    const char *const *list = is_pub ? pub : sub;
    size_t n = is_pub ? sizeof(pub) / sizeof(pub[0]) : sizeof(sub) / sizeof(sub[0]);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(leaf, list[i]) == 0) return true;
    }
    return false;
}

/* Copies v into out (size >= 4 * LOGV_MAX + 8) so that it is safe in a key=value log line:
 * printable ASCII except space, '"' and '\' stays, every other byte becomes \xNN; long values are
 * cut with "...". */
static const char *logv(char *out, size_t outsz, const char *v)
{
    if (!v) return "-";
    size_t o = 0, n = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p && o + 8 < outsz; p++, n++) {
        if (n == LOGV_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (*p > 0x20 && *p < 0x7F && *p != '"' && *p != '\\') {
            out[o++] = (char)*p;
        } else {
            o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", *p);
        }
    }
    out[o] = '\0';
    return o ? out : "\"\"";
}
#define LOGBUF (4 * LOGV_MAX + 8)

/* ------------------------------------------------------------------ plugin state */

struct file_sig {
    bool present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
};

struct pending {
    char *user; /* NULL: a client without a username */
    const char *reason;
};

struct plugin {
    mosquitto_plugin_id_t *pid;
    char *state_file;
    char *metrics_file;
    char *metrics_tmp;
    long poll_ms, sweep_ms, sweep_batch;
    bool retain_cmd_only;

    struct table *tab;        /* last good state file */
    struct file_sig seen;     /* the version last read (good or not) */
    long long next_poll, next_sweep, next_metrics;
    size_t sweep_pos;

    struct pending pending[PENDING_MAX];
    size_t n_pending;

    /* Set by MOSQ_EVT_DISCONNECT; the broker publishes an ordinary will right after that event,
     * synchronously: an ACL write check for the same client that comes next is the will. */
    const struct mosquitto *will_client;
    /* Counts the disconnect events raised inside mosquitto_kick_client_by_username. */
    bool in_kick;
    unsigned kick_hits;
    bool metrics_failing;
    /* Denial log lines per second: a gateway can publish to foreign topics as fast as its link
     * allows, and each line also travels to the audit log; the counter counts them all. */
    time_t denial_second;
    unsigned denial_lines;
    unsigned long long denial_suppressed;

    struct {
        unsigned long long refused_identity, refused_state, kicked, denied_retain, denied_will,
            denied_gateway_acl,
            denied_topic, state_reloads, state_errors;
    } c;
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define LOG(level, ...) mosquitto_log_printf(level, "suido_plugin: " __VA_ARGS__)

/* ------------------------------------------------------------------ state file */

struct parse_err {
    long line;
    char msg[160];
};

static void perr(struct parse_err *e, long line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void perr(struct parse_err *e, long line, const char *fmt, ...)
{
    va_list ap;
    e->line = line;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

/* Parses the whole file text (len bytes, NUL terminated by the caller) into a new table. */
static struct table *parse_state(char *text, size_t len, struct parse_err *e)
{
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    if (len > 0 && text[len - 1] != '\n') {
        perr(e, (long)lines + 1, "no newline at the end of the last line (file cut short?)");
        return NULL;
    }
    if (memchr(text, '\0', len)) {
        perr(e, 0, "file contains a NUL byte");
        return NULL;
    }
    struct table *t = table_new(lines);
    if (!t) {
        perr(e, 0, "out of memory");
        return NULL;
    }
    long lineno = 0;
    char *p = text, *end = text + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        *nl = '\0';
        lineno++;
        char *s = p;
        p = nl + 1;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '\0' || *s == '#') continue;
        char *f[4] = {NULL, NULL, NULL, NULL};
        int nf = 0;
        while (*s && nf < 4) {
            f[nf++] = s;
            while (*s && *s != ' ' && *s != '\t') s++;
            if (*s) *s++ = '\0';
            while (*s == ' ' || *s == '\t') s++;
        }
        if (nf != 2 && !(nf == 3 && (strcmp(f[2], "gateway") == 0 ||
                                     strcmp(f[2], "sparkplug") == 0))) {
            perr(e, lineno, "expected '<id> <state> [gateway|sparkplug]', got %s",
                 nf == 1 ? "one field" : nf == 3 ? "an unknown role" : "more than three");
            goto fail;
        }
        const char *why = identity_problem(f[0]);
        if (why) {
            char b[LOGBUF];
            perr(e, lineno, "bad id %s (%s)", logv(b, sizeof(b), f[0]), why);
            goto fail;
        }
        int st = -1;
        for (int k = 0; k < ST_N; k++) {
            if (strcmp(f[1], STATE_NAMES[k]) == 0) st = k;
        }
        if (st < 0) {
            char b[LOGBUF], b2[LOGBUF];
            perr(e, lineno,
                 "unknown state %s for %s (active|provisioned|suspended|revoked|disposed)",
                 logv(b, sizeof(b), f[1]), logv(b2, sizeof(b2), f[0]));
            goto fail;
        }
        struct ident *slot = table_slot(t, f[0]);
        if (slot->id) {
            char b[LOGBUF];
            perr(e, lineno, "%s is listed twice", logv(b, sizeof(b), f[0]));
            goto fail;
        }
        slot->id = strdup(f[0]);
        if (!slot->id) {
            perr(e, lineno, "out of memory");
            goto fail;
        }
        slot->state = (uint8_t)st;
        slot->gateway = nf == 3;
        slot->sparkplug = nf == 3 && strcmp(f[2], "sparkplug") == 0;
        t->count++;
        t->by_state[st]++;
    }
    t->inactive = calloc(t->count - t->by_state[ST_ACTIVE] + 1, sizeof(char *));
    if (!t->inactive) {
        perr(e, 0, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].id && t->slots[i].state != ST_ACTIVE) t->inactive[t->n_inactive++] = t->slots[i].id;
    }
    return t;
fail:
    table_free(t);
    return NULL;
}

static void sig_of(struct file_sig *g, const struct stat *st)
{
    g->present = true;
    g->dev = st->st_dev;
    g->ino = st->st_ino;
    g->size = st->st_size;
    g->mtim = st->st_mtim;
    g->ctim = st->st_ctim;
}

static bool sig_eq(const struct file_sig *a, const struct file_sig *b)
{
    if (a->present != b->present) return false;
    if (!a->present) return true;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* Reads and parses the state file. Returns the table, or NULL with e filled in; *sig is the
 * version that was read (present=false when the file could not be opened). */
static struct table *load_state(const char *path, struct file_sig *sig, struct parse_err *e)
{
    memset(sig, 0, sizeof(*sig));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        perr(e, 0, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        perr(e, 0, "cannot stat: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    sig_of(sig, &st);
    if (!S_ISREG(st.st_mode)) {
        perr(e, 0, "not a regular file");
        close(fd);
        return NULL;
    }
    if (st.st_size > STATE_FILE_MAX) {
        perr(e, 0, "larger than %ld bytes", STATE_FILE_MAX);
        close(fd);
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        perr(e, 0, "out of memory");
        close(fd);
        return NULL;
    }
    for (;;) {
        if (len == cap) { /* grew while being read: read what is there, up to the limit */
            if (cap > (size_t)STATE_FILE_MAX) {
                perr(e, 0, "larger than %ld bytes", STATE_FILE_MAX);
                free(buf);
                close(fd);
                return NULL;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                perr(e, 0, "out of memory");
                free(buf);
                close(fd);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            perr(e, 0, "read error: %s", strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    struct table *t = parse_state(buf, len, e);
    free(buf);
    return t;
}

/* ------------------------------------------------------------------ kicks */

/* Kicks every session of user (without its will) and returns how many the broker cut: the broker
 * raises MOSQ_EVT_DISCONNECT for each one inside the call. */
static unsigned kick(struct plugin *p, const char *user)
{
    p->in_kick = true;
    p->kick_hits = 0;
    mosquitto_kick_client_by_username(user, false);
    p->in_kick = false;
    return p->kick_hits;
}

static void kick_log(struct plugin *p, const char *user, const char *reason, unsigned hits)
{
    char b[LOGBUF];
    p->c.kicked += hits;
    LOG(MOSQ_LOG_NOTICE, "event=kick user=%s reason=%s sessions=%u", logv(b, sizeof(b), user),
        reason, hits);
}

/* Queues user for a kick on the next tick; false when it is queued already (or the queue is full,
 * in which case the client is still denied everything and queued again at its next packet). */
static bool pending_add(struct plugin *p, const char *user, const char *reason)
{
    for (size_t i = 0; i < p->n_pending; i++) {
        const char *u = p->pending[i].user;
        if ((u == NULL && user == NULL) || (u && user && strcmp(u, user) == 0)) return false;
    }
    if (p->n_pending == PENDING_MAX) return false;
    char *dup = NULL;
    if (user && !(dup = strdup(user))) return false;
    p->pending[p->n_pending].user = dup;
    p->pending[p->n_pending].reason = reason;
    p->n_pending++;
    return true;
}

static void pending_run(struct plugin *p)
{
    /* Kicking may raise events, but none that queue more kicks (only ACL checks do). */
    for (size_t i = 0; i < p->n_pending; i++) {
        unsigned hits = kick(p, p->pending[i].user);
        if (hits) kick_log(p, p->pending[i].user, p->pending[i].reason, hits);
        free(p->pending[i].user);
        p->pending[i].user = NULL;
    }
    p->n_pending = 0;
}

/* ------------------------------------------------------------------ state file polling */

static void log_table(const struct plugin *p, const char *what)
{
    const struct table *t = p->tab;
    LOG(MOSQ_LOG_NOTICE,
        "event=%s file=%s identities=%zu active=%zu provisioned=%zu suspended=%zu revoked=%zu "
        "disposed=%zu",
        what, p->state_file, t->count, t->by_state[ST_ACTIVE], t->by_state[ST_PROVISIONED],
        t->by_state[ST_SUSPENDED], t->by_state[ST_REVOKED], t->by_state[ST_DISPOSED]);
}

static void poll_state(struct plugin *p, bool force)
{
    struct stat st;
    struct file_sig now;
    memset(&now, 0, sizeof(now));
    if (stat(p->state_file, &st) == 0) sig_of(&now, &st);
    if (!force && sig_eq(&now, &p->seen)) return;

    struct parse_err e = {0, ""};
    struct file_sig read_sig;
    struct table *nt = load_state(p->state_file, &read_sig, &e);
    /* What was read; if the file could not even be opened, what stat() saw (an unreadable file is
     * then not retried, and not logged again, until it changes). */
    p->seen = read_sig.present ? read_sig : now;
    if (!nt) {
        p->c.state_errors++;
        if (e.line > 0) {
            LOG(MOSQ_LOG_ERR,
                "event=state_error file=%s line=%ld error=\"%s\" action=keeping_last_good identities=%zu",
                p->state_file, e.line, e.msg, p->tab->count);
        } else {
            LOG(MOSQ_LOG_ERR,
                "event=state_error file=%s error=\"%s\" action=keeping_last_good identities=%zu",
                p->state_file, e.msg, p->tab->count);
        }
        return;
    }
    struct table *old = p->tab;
    p->tab = nt;
    p->sweep_pos = 0;
    p->c.state_reloads++;
    log_table(p, "state_loaded");

    /* Cut the live sessions of every identity that was active and no longer is. */
    for (size_t i = 0; i < old->cap; i++) {
        const struct ident *o = &old->slots[i];
        if (!o->id || o->state != ST_ACTIVE) continue;
        int ns = table_get(nt, o->id);
        if (ns == ST_ACTIVE) continue;
        const char *to = ns < 0 ? "not_listed" : STATE_NAMES[ns];
        char b[LOGBUF];
        LOG(MOSQ_LOG_NOTICE, "event=state_change user=%s from=active to=%s",
            logv(b, sizeof(b), o->id), to);
        unsigned hits = kick(p, o->id);
        if (hits) kick_log(p, o->id, ns < 0 ? "not_listed" : STATE_REASONS[ns], hits);
    }
    table_free(old);
}

/* Kicks again, a batch at a time, the identities that are not active: a client of such an identity
 * that connects (Mosquitto 2.0.11 gives no hook to refuse it at CONNECT) and then sits idle is cut
 * by the next sweep that reaches it. */
static void sweep(struct plugin *p)
{
    struct table *t = p->tab;
    if (t->n_inactive == 0) return;
    size_t n = (size_t)p->sweep_batch < t->n_inactive ? (size_t)p->sweep_batch : t->n_inactive;
    for (size_t k = 0; k < n; k++) {
        if (p->sweep_pos >= t->n_inactive) p->sweep_pos = 0;
        const char *id = t->inactive[p->sweep_pos++];
        unsigned hits = kick(p, id);
        if (hits) {
            char b[LOGBUF];
            int st = table_get(t, id);
            p->c.refused_state += hits;
            LOG(MOSQ_LOG_NOTICE, "event=refused reason=%s user=%s client_id=%s access=none",
                STATE_REASONS[st], logv(b, sizeof(b), id), b);
            kick_log(p, id, "sweep", hits);
        }
    }
}

/* ------------------------------------------------------------------ metrics */

static void write_metrics(struct plugin *p)
{
    FILE *f = fopen(p->metrics_tmp, "w");
    if (!f) {
        if (!p->metrics_failing) {
            LOG(MOSQ_LOG_WARNING, "event=metrics_error file=%s error=\"%s\"", p->metrics_tmp,
                strerror(errno));
        }
        p->metrics_failing = true;
        return;
    }
    const struct table *t = p->tab;
    static const struct {
        const char *name, *help;
        size_t off;
    } ctr[] = {
#define C(n, h) {"suido_broker_" #n "_total", h, offsetof(struct plugin, c.n)}
        C(refused_identity, "Clients refused: identity invalid, not listed, or client id != username."),
        C(refused_state, "Clients refused: identity listed but not active."),
        C(kicked, "Live sessions cut by the plugin."),
        C(denied_retain, "Retained publishes or deliveries denied."),
        C(denied_will, "Will messages denied (cmd or $CONTROL/ topic)."),
        C(denied_topic, "Publishes or subscriptions denied for a malformed topic."),
        C(denied_gateway_acl, "Gateway publishes or subscriptions outside its own topics."),
        C(state_reloads, "Good versions of the state file loaded (the first included)."),
        C(state_errors, "Versions of the state file refused (missing or malformed)."),
#undef C
    };
    for (size_t i = 0; i < sizeof(ctr) / sizeof(ctr[0]); i++) {
        unsigned long long v = *(const unsigned long long *)((const char *)p + ctr[i].off);
        fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", ctr[i].name, ctr[i].help,
                ctr[i].name, ctr[i].name, v);
    }
    fprintf(f, "# HELP suido_broker_identities Identities in the state file in use, by state.\n"
               "# TYPE suido_broker_identities gauge\n");
    for (int s = 0; s < ST_N; s++) {
        fprintf(f, "suido_broker_identities{state=\"%s\"} %zu\n", STATE_NAMES[s], t->by_state[s]);
    }
    bool ok = fflush(f) == 0 && !ferror(f);
    ok = (fclose(f) == 0) && ok;
    if (ok && rename(p->metrics_tmp, p->metrics_file) == 0) {
        if (p->metrics_failing) LOG(MOSQ_LOG_NOTICE, "event=metrics_ok file=%s", p->metrics_file);
        p->metrics_failing = false;
        return;
    }
    if (!p->metrics_failing) {
        LOG(MOSQ_LOG_WARNING, "event=metrics_error file=%s error=\"%s\"", p->metrics_file,
            strerror(errno));
    }
    p->metrics_failing = true;
    unlink(p->metrics_tmp);
}

/* ------------------------------------------------------------------ callbacks */

static const char *access_name(int access)
{
    switch (access) {
    case MOSQ_ACL_READ: return "read";
    case MOSQ_ACL_WRITE: return "write";
    case MOSQ_ACL_SUBSCRIBE: return "subscribe";
    case MOSQ_ACL_UNSUBSCRIBE: return "unsubscribe";
    default: return "other";
    }
}

/* Returns NULL when the client's identity is acceptable, else the reason; *state_refusal tells
 * whether the reason is the identity's state (listed, not active). */
static const char *client_problem(const struct plugin *p, const char *user, const char *cid,
                                  bool *state_refusal)
{
    *state_refusal = false;
    const char *why = identity_problem(user);
    if (why) return why;
    if (!cid || strcmp(cid, user) != 0) return "client_id_mismatch";
    int st = table_get(p->tab, user);
    if (st < 0) return "not_listed";
    if (st != ST_ACTIVE) {
        *state_refusal = true;
        return STATE_REASONS[st];
    }
    return NULL;
}

#define DENIAL_LINES_PER_SECOND 20

/* At most DENIAL_LINES_PER_SECOND gateway-ACL denial lines per second; the number left out is
 * logged once when the next second begins. */
static bool denial_line_allowed(struct plugin *p)
{
    time_t now = time(NULL);
    if (now != p->denial_second) {
        if (p->denial_suppressed)
            LOG(MOSQ_LOG_NOTICE, "event=denied_lines_suppressed count=%llu",
                p->denial_suppressed);
        p->denial_second = now;
        p->denial_lines = 0;
        p->denial_suppressed = 0;
    }
    if (p->denial_lines < DENIAL_LINES_PER_SECOND) {
        p->denial_lines++;
        return true;
    }
    p->denial_suppressed++;
    return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
    (void)event;
    struct plugin *p = userdata;
    struct mosquitto_evt_acl_check *ev = event_data;
    bool is_will = ev->client == p->will_client && ev->access == MOSQ_ACL_WRITE;
    p->will_client = NULL;

    const char *user = mosquitto_client_username(ev->client);
    const char *cid = mosquitto_client_id(ev->client);
    char b1[LOGBUF], b2[LOGBUF], b3[LOGBUF];

    bool state_refusal;
    const char *why = client_problem(p, user, cid, &state_refusal);
    if (why) {
        /* A delivery (read) check can be for a session that is offline, and a will comes from a
         * client that is going away: deny those quietly; the client's own packets are logged. */
        bool own = ev->access != MOSQ_ACL_READ && !is_will;
        if (pending_add(p, user, why) && own) {
            if (state_refusal) p->c.refused_state++;
            else p->c.refused_identity++;
            LOG(MOSQ_LOG_NOTICE,
                "event=refused reason=%s user=%s client_id=%s address=%s access=%s topic=%s", why,
                logv(b1, sizeof(b1), user), logv(b2, sizeof(b2), cid),
                mosquitto_client_address(ev->client), access_name(ev->access),
                logv(b3, sizeof(b3), ev->topic));
        }
        return MOSQ_ERR_ACL_DENIED;
    }

    const char *tp = topic_problem(ev->topic);
    if (tp) {
        p->c.denied_topic++;
        LOG(MOSQ_LOG_NOTICE, "event=denied reason=%s user=%s access=%s topic=%s", tp,
            logv(b1, sizeof(b1), user), access_name(ev->access), logv(b3, sizeof(b3), ev->topic));
        return MOSQ_ERR_ACL_DENIED;
    }
    if (is_will && (is_cmd_topic(ev->topic) || strncmp(ev->topic, "$CONTROL/", 9) == 0)) {
        p->c.denied_will++;
        LOG(MOSQ_LOG_NOTICE, "event=denied reason=will_topic user=%s access=will topic=%s",
            logv(b1, sizeof(b1), user), logv(b3, sizeof(b3), ev->topic));
        return MOSQ_ERR_ACL_DENIED;
    }
    /* retained: only a Sparkplug host's STATE (who may write it is the acl_file's to say) */
    if (ev->retain && (ev->access == MOSQ_ACL_WRITE || ev->access == MOSQ_ACL_READ) &&
        !is_state_topic(ev->topic) && (!p->retain_cmd_only || is_cmd_topic(ev->topic))) {
        p->c.denied_retain++;
        LOG(MOSQ_LOG_NOTICE, "event=denied reason=retain user=%s access=%s topic=%s",
            logv(b1, sizeof(b1), user), is_will ? "will" : access_name(ev->access),
            logv(b3, sizeof(b3), ev->topic));
        return MOSQ_ERR_ACL_DENIED;
    }
    const struct ident *gw = table_gateway(p->tab, user);
    if (gw) {
        if (gw->sparkplug ? sparkplug_may(user, ev->topic, ev->access)
                          : gateway_may(user, ev->topic, ev->access))
            return MOSQ_ERR_SUCCESS;
        /* A delivery check is the broker asking on its own behalf: deny it quietly. */
        if (ev->access != MOSQ_ACL_READ) {
            p->c.denied_gateway_acl++;
            if (denial_line_allowed(p))
                LOG(MOSQ_LOG_NOTICE, "event=denied reason=gateway_acl user=%s access=%s topic=%s",
                    logv(b1, sizeof(b1), user), is_will ? "will" : access_name(ev->access),
                    logv(b3, sizeof(b3), ev->topic));
        }
        return MOSQ_ERR_ACL_DENIED;
    }
    return MOSQ_ERR_PLUGIN_DEFER; /* services: the acl_file decides the rest */
}

/* Only called when the listener does not take the username from the certificate (2.0.11 skips
 * username/password checks entirely with use_identity_as_username): then the identity is checked
 * at CONNECT as well. Defers on success, so a password file (if any) still decides. */
static int on_basic_auth(int event, void *event_data, void *userdata)
{
    (void)event;
    struct plugin *p = userdata;
    struct mosquitto_evt_basic_auth *ev = event_data;
    const char *cid = mosquitto_client_id(ev->client);
    bool state_refusal;
    const char *why = client_problem(p, ev->username, cid, &state_refusal);
    if (!why) return MOSQ_ERR_PLUGIN_DEFER;
    char b1[LOGBUF], b2[LOGBUF];
    if (state_refusal) p->c.refused_state++;
    else p->c.refused_identity++;
    LOG(MOSQ_LOG_NOTICE, "event=refused reason=%s user=%s client_id=%s address=%s access=connect",
        why, logv(b1, sizeof(b1), ev->username), logv(b2, sizeof(b2), cid),
        mosquitto_client_address(ev->client));
    return MOSQ_ERR_AUTH;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
    (void)event;
    struct plugin *p = userdata;
    struct mosquitto_evt_disconnect *ev = event_data;
    if (p->in_kick) p->kick_hits++;
    p->will_client = ev->client;
    return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    struct plugin *p = userdata;
    p->will_client = NULL;
    long long now = mono_ms();
    if (now >= p->next_poll) {
        p->next_poll = now + p->poll_ms;
        poll_state(p, false);
    }
    if (p->n_pending) pending_run(p);
    if (p->sweep_ms > 0 && now >= p->next_sweep) {
        p->next_sweep = now + p->sweep_ms;
        sweep(p);
    }
    if (p->metrics_file && now >= p->next_metrics) {
        p->next_metrics = now + 1000;
        write_metrics(p);
    }
    return MOSQ_ERR_SUCCESS;
}

/* SIGHUP: Mosquitto 2.0.11 keeps the plugin loaded, raises this event and passes no options
 * (option_count 0; measured), so the options given at start stay. Re-read the state file now. */
static int on_reload(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    struct plugin *p = userdata;
    LOG(MOSQ_LOG_NOTICE, "event=reload file=%s", p->state_file);
    poll_state(p, true);
    return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------ plugin API v5 */

static const struct {
    int event;
    MOSQ_FUNC_generic_callback cb;
} CALLBACKS[] = {
    {MOSQ_EVT_ACL_CHECK, on_acl_check}, {MOSQ_EVT_BASIC_AUTH, on_basic_auth},
    {MOSQ_EVT_DISCONNECT, on_disconnect}, {MOSQ_EVT_TICK, on_tick},
    {MOSQ_EVT_RELOAD, on_reload},
};
#define N_CALLBACKS (sizeof(CALLBACKS) / sizeof(CALLBACKS[0]))

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++) {
        if (supported_versions[i] == 5) return 5;
    }
    return -1;
}

static void plugin_free(struct plugin *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_pending; i++) free(p->pending[i].user);
    table_free(p->tab);
    free(p->state_file);
    free(p->metrics_file);
    free(p->metrics_tmp);
    free(p);
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static int init_fail(struct plugin *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int init_fail(struct plugin *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    LOG(MOSQ_LOG_ERR, "event=start_refused %s", msg);
    plugin_free(p);
    return MOSQ_ERR_INVAL;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *options, int option_count)
{
    struct plugin *p = calloc(1, sizeof(*p));
    if (!p) return MOSQ_ERR_NOMEM;
    p->pid = identifier;
    p->poll_ms = 200;
    p->sweep_ms = 1000;
    p->sweep_batch = 64;

    for (int i = 0; i < option_count; i++) {
        const char *k = options[i].key, *v = options[i].value ? options[i].value : "";
        char **dst = NULL;
        if (strcmp(k, "state_file") == 0) {
            dst = &p->state_file;
        } else if (strcmp(k, "metrics_file") == 0) {
            dst = &p->metrics_file;
        } else if (strcmp(k, "poll_ms") == 0) {
            if (!parse_long(v, 10, 5000, &p->poll_ms))
                return init_fail(p, "error=\"plugin_opt_poll_ms must be 10..5000 (got '%s')\"", v);
        } else if (strcmp(k, "sweep_ms") == 0) {
            if (!parse_long(v, 0, 60000, &p->sweep_ms) || (p->sweep_ms > 0 && p->sweep_ms < 100))
                return init_fail(p, "error=\"plugin_opt_sweep_ms must be 0 or 100..60000 (got '%s')\"", v);
        } else if (strcmp(k, "sweep_batch") == 0) {
            if (!parse_long(v, 1, 100000, &p->sweep_batch))
                return init_fail(p, "error=\"plugin_opt_sweep_batch must be 1..100000 (got '%s')\"", v);
        } else if (strcmp(k, "deny_retain") == 0) {
            if (strcmp(v, "all") == 0) p->retain_cmd_only = false;
            else if (strcmp(v, "cmd") == 0) p->retain_cmd_only = true;
            else return init_fail(p, "error=\"plugin_opt_deny_retain must be all or cmd (got '%s')\"", v);
        } else {
            return init_fail(p, "error=\"unknown option plugin_opt_%s\"", k);
        }
        if (dst) {
            if (!*v) return init_fail(p, "error=\"plugin_opt_%s is empty\"", k);
            free(*dst);
            if (!(*dst = strdup(v))) return init_fail(p, "error=\"out of memory\"");
        }
    }
    if (!p->state_file) return init_fail(p, "error=\"plugin_opt_state_file is required\"");
    if (p->metrics_file) {
        size_t n = strlen(p->metrics_file) + 5;
        if (!(p->metrics_tmp = malloc(n))) return init_fail(p, "error=\"out of memory\"");
        snprintf(p->metrics_tmp, n, "%s.tmp", p->metrics_file);
    }

    /* At start the state file must exist and parse: a broker that cannot tell who is active does
     * not start (later problems keep the last good version instead). */
    struct parse_err e = {0, ""};
    p->tab = load_state(p->state_file, &p->seen, &e);
    if (!p->tab) {
        char where[32] = "";
        if (e.line > 0) snprintf(where, sizeof(where), " line=%ld", e.line);
        return init_fail(p, "file=%s%s error=\"%s\"", p->state_file, where, e.msg);
    }
    p->c.state_reloads = 1;
    log_table(p, "state_loaded");
    if (p->tab->by_state[ST_ACTIVE] == 0) {
        LOG(MOSQ_LOG_WARNING, "event=no_active_identity file=%s (every client will be refused)",
            p->state_file);
    }

    for (size_t i = 0; i < N_CALLBACKS; i++) {
        int rc = mosquitto_callback_register(identifier, CALLBACKS[i].event, CALLBACKS[i].cb, NULL, p);
        if (rc != MOSQ_ERR_SUCCESS) {
            for (size_t k = 0; k < i; k++) {
                mosquitto_callback_unregister(identifier, CALLBACKS[k].event, CALLBACKS[k].cb, NULL);
            }
            return init_fail(p, "error=\"cannot register callback for event %d (rc %d)\"",
                             CALLBACKS[i].event, rc);
        }
    }
    long long now = mono_ms();
    p->next_poll = now + p->poll_ms;
    p->next_sweep = now + p->sweep_ms;
    p->next_metrics = now;
    LOG(MOSQ_LOG_NOTICE,
        "event=started state_file=%s metrics_file=%s poll_ms=%ld sweep_ms=%ld sweep_batch=%ld deny_retain=%s",
        p->state_file, p->metrics_file ? p->metrics_file : "-", p->poll_ms, p->sweep_ms,
        p->sweep_batch, p->retain_cmd_only ? "cmd" : "all");
    *userdata = p;
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
    (void)options;
    (void)option_count;
    struct plugin *p = userdata;
    if (!p) return MOSQ_ERR_SUCCESS;
    for (size_t i = 0; i < N_CALLBACKS; i++) {
        mosquitto_callback_unregister(p->pid, CALLBACKS[i].event, CALLBACKS[i].cb, NULL);
    }
    if (p->metrics_file) write_metrics(p); /* final counts */
    plugin_free(p);
    return MOSQ_ERR_SUCCESS;
}
