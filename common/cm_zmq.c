/* cm_zmq: CURVE sockets and the per-domain ZAP allow-list handler (one thread per process). */
#include "cm_zmq.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include <openssl/crypto.h>

#include "cm_crypto.h"
#include "cm_daemon.h"
#include "cm_log.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MAX_ALLOW 1024
#define MAX_ENDPOINTS 16
#define PIPE_HWM 10000
#define SOCKET_LINGER_MS 1000

/* ---------------------------------------------------------------- key files */

static cm_err read_z85(const char *path, char out[CM_Z85_LEN + 1])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cm_error("path=%s error=\"%s\"", path, strerror(errno));
        return CM_ERR_KEY;
    }
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    uint8_t raw[32];
    if (n != CM_Z85_LEN || !zmq_z85_decode(raw, buf)) {
        cm_error("path=%s error=\"not a Z85 CURVE key of 40 characters\"", path);
        return CM_ERR_KEY;
    }
    memcpy(out, buf, CM_Z85_LEN + 1);
    return CM_OK;
}

cm_err cm_curve_load_public(const char *path, char out[CM_Z85_LEN + 1])
{
    return read_z85(path, out);
}

cm_err cm_curve_load_keypair(const char *public_path, const char *secret_path,
                             cm_curve_keypair *out)
{
    cm_err rc = read_z85(public_path, out->public_z85);
    if (rc == CM_OK)
        rc = cm_key_file_check(secret_path);
    if (rc == CM_OK)
        rc = read_z85(secret_path, out->secret_z85);
    if (rc != CM_OK)
        return rc;
    char derived[CM_Z85_LEN + 1];
    if (zmq_curve_public(derived, out->secret_z85) != 0 ||
        strcmp(derived, out->public_z85) != 0) {
        cm_error("public=%s secret=%s error=\"keys do not form a pair\"", public_path,
                 secret_path);
        memset(out, 0, sizeof *out);
        return CM_ERR_KEY;
    }
    return CM_OK;
}

/* --------------------------------------------------------------------- ZAP */

typedef struct allow_entry {
    char domain[64];
    char peer[64];
    char key[CM_Z85_LEN + 1];
} allow_entry;

#define MAX_MONITORS 16
#define MONITORED_EVENTS                                                                           \
    (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |                  \
     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

/* A server socket's handshake failures, read on the thread that owns the socket. */
typedef struct zap_monitor {
    void *pair;
    char domain[64];
} zap_monitor;

struct cm_zap {
    void *ctx;
    zap_monitor monitors[MAX_MONITORS];
    size_t n_monitors;
    void *sock;
    pthread_t thread;
    pthread_mutex_t lock;
    atomic_int stop;
    atomic_uint_fast64_t denied, allowed;
    allow_entry *entries;
    size_t n;
    char (*revoked)[CM_Z85_LEN + 1];
    size_t n_revoked;
};

/* Looks key up in domain's list; copies the peer name. Caller holds the lock. */
static int zap_lookup(cm_zap *z, const char *domain, const char *key, char *peer, size_t plen)
{
    for (size_t i = 0; i < z->n_revoked; i++)
        if (strcmp(z->revoked[i], key) == 0)
            return 0;
    for (size_t i = 0; i < z->n; i++)
        if (strcmp(z->entries[i].domain, domain) == 0 && strcmp(z->entries[i].key, key) == 0) {
            snprintf(peer, plen, "%s", z->entries[i].peer);
            return 1;
        }
    return 0;
}

/* Reads one ZAP request (RFC 27) and answers it. Frames: version, request id, domain, address,
 * identity, mechanism, credentials... */
static void zap_handle(cm_zap *z)
{
    zmq_msg_t f[8];
    int nf = 0, more = 1;
    while (more && nf < 8) {
        zmq_msg_init(&f[nf]);
        if (zmq_msg_recv(&f[nf], z->sock, 0) < 0) {
            zmq_msg_close(&f[nf]);
            break;
        }
        more = zmq_msg_more(&f[nf]);
        nf++;
    }
    while (more) { /* drain an over-long request */
        zmq_msg_t x;
        zmq_msg_init(&x);
        if (zmq_msg_recv(&x, z->sock, 0) < 0)
            more = 0;
        else
            more = zmq_msg_more(&x);
        zmq_msg_close(&x);
    }
    char domain[64] = "", mech[16] = "", key[CM_Z85_LEN + 1] = "", peer[64] = "", addr[64] = "";
    const char *status = "400", *text = "denied";
    if (nf >= 6 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0) {
        snprintf(domain, sizeof domain, "%.*s", (int)zmq_msg_size(&f[2]),
                 (const char *)zmq_msg_data(&f[2]));
        snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&f[3]),
                 (const char *)zmq_msg_data(&f[3]));
        snprintf(mech, sizeof mech, "%.*s", (int)zmq_msg_size(&f[5]),
                 (const char *)zmq_msg_data(&f[5]));
        if (strcmp(mech, "CURVE") == 0 && nf >= 7 && zmq_msg_size(&f[6]) == 32) {
            zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
            pthread_mutex_lock(&z->lock);
            int ok = zap_lookup(z, domain, key, peer, sizeof peer);
            pthread_mutex_unlock(&z->lock);
            if (ok) {
                status = "200";
                text = "OK";
            }
        }
    }
    if (strcmp(status, "200") == 0) {
        atomic_fetch_add(&z->allowed, 1);
        cm_debug("domain=%s peer=%s addr=%s result=allowed", domain, peer, addr);
    } else {
        atomic_fetch_add(&z->denied, 1);
        cm_warn("domain=%s mechanism=%s key=%s addr=%s result=denied", domain,
                mech[0] ? mech : "-", key[0] ? key : "-", addr[0] ? addr : "-");
    }
    if (nf >= 2) {
        zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
        zmq_send(z->sock, status, 3, ZMQ_SNDMORE);
        zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(z->sock, peer, strlen(peer), ZMQ_SNDMORE);
        zmq_send(z->sock, "", 0, 0);
    }
    for (int i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
}

static void *zap_thread(void *arg)
{
    cm_zap *z = arg;
    while (!atomic_load(&z->stop)) {
        zmq_pollitem_t it = {.socket = z->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, 200);
        if (rc < 0 && errno == ETERM)
            break;
        if (rc > 0)
            zap_handle(z);
    }
    return NULL;
}

cm_err cm_zap_start(void *ctx, cm_zap **out)
{
    *out = NULL;
    cm_zap *z = calloc(1, sizeof *z);
    if (!z)
        return CM_ERR_NOMEM;
    z->ctx = ctx;
    z->entries = calloc(MAX_ALLOW, sizeof *z->entries);
    z->revoked = calloc(MAX_ALLOW, sizeof *z->revoked);
    z->sock = zmq_socket(ctx, ZMQ_REP);
    int linger = 0;
    if (!z->entries || !z->revoked || !z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(z->sock, ZAP_ENDPOINT) != 0) {
        cm_error("error=\"cannot start ZAP handler: %s\"", zmq_strerror(errno));
        if (z->sock)
            zmq_close(z->sock);
        free(z->entries);
        free(z->revoked);
        free(z);
        return CM_ERR_IO;
    }
    pthread_mutex_init(&z->lock, NULL);
    if (pthread_create(&z->thread, NULL, zap_thread, z) != 0) {
        zmq_close(z->sock);
        pthread_mutex_destroy(&z->lock);
        free(z->entries);
        free(z->revoked);
        free(z);
        return CM_ERR_IO;
    }
    *out = z;
    return CM_OK;
}

cm_err cm_zap_allow(cm_zap *z, const char *domain, const char *peer, const char *public_z85)
{
    uint8_t raw[32];
    if (strlen(public_z85) != CM_Z85_LEN || !zmq_z85_decode(raw, public_z85) ||
        strlen(domain) >= 64 || strlen(peer) >= 64)
        return CM_ERR_INVAL;
    pthread_mutex_lock(&z->lock);
    cm_err rc = CM_OK;
    char existing[64];
    if (zap_lookup(z, domain, public_z85, existing, sizeof existing)) {
        rc = CM_OK;
    } else if (z->n >= MAX_ALLOW) {
        rc = CM_ERR_TOO_BIG;
    } else {
        allow_entry *e = &z->entries[z->n++];
        snprintf(e->domain, sizeof e->domain, "%s", domain);
        snprintf(e->peer, sizeof e->peer, "%s", peer);
        snprintf(e->key, sizeof e->key, "%s", public_z85);
    }
    pthread_mutex_unlock(&z->lock);
    return rc;
}

cm_err cm_zap_set_revoked(cm_zap *z, const char *public_z85, int revoked)
{
    cm_err rc = CM_OK;
    pthread_mutex_lock(&z->lock);
    size_t i = 0;
    while (i < z->n_revoked && strcmp(z->revoked[i], public_z85) != 0)
        i++;
    if (revoked && i == z->n_revoked) {
        if (z->n_revoked >= MAX_ALLOW)
            rc = CM_ERR_TOO_BIG;
        else
            snprintf(z->revoked[z->n_revoked++], CM_Z85_LEN + 1, "%s", public_z85);
    } else if (!revoked && i < z->n_revoked) {
        memcpy(z->revoked[i], z->revoked[--z->n_revoked], CM_Z85_LEN + 1);
    }
    pthread_mutex_unlock(&z->lock);
    return rc;
}

/* Watches sock's handshakes: the failures (a NULL or PLAIN client on a CURVE socket, a broken
 * greeting, a key ZAP refused) are read later by cm_zap_drain_events. */
static cm_err zap_watch(cm_zap *z, void *sock, const char *domain)
{
    if (z->n_monitors >= MAX_MONITORS)
        return CM_ERR_TOO_BIG;
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://cm-monitor-%p-%zu", (void *)z, z->n_monitors);
    void *pair = NULL;
    int linger = 0;
    if (zmq_socket_monitor(sock, ep, MONITORED_EVENTS) != 0 ||
        !(pair = zmq_socket(z->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger) || zmq_connect(pair, ep) != 0) {
        if (pair)
            zmq_close(pair);
        return CM_ERR_IO;
    }
    zap_monitor *m = &z->monitors[z->n_monitors++];
    m->pair = pair;
    snprintf(m->domain, sizeof m->domain, "%s", domain);
    return CM_OK;
}

void cm_zap_drain_events(cm_zap *z, cm_zap_event_fn fn, void *ctx)
{
    for (size_t i = 0; z && i < z->n_monitors; i++) {
        for (int k = 0; k < 256; k++) {
            zmq_msg_t head, addr;
            zmq_msg_init(&head);
            zmq_msg_init(&addr);
            int got = zmq_msg_recv(&head, z->monitors[i].pair, ZMQ_DONTWAIT) >= 0 &&
                      zmq_msg_more(&head) &&
                      zmq_msg_recv(&addr, z->monitors[i].pair, ZMQ_DONTWAIT) >= 0;
            if (got && zmq_msg_size(&head) == 6) {
                const uint8_t *d = zmq_msg_data(&head);
                uint16_t event;
                uint32_t value;
                memcpy(&event, d, 2);
                memcpy(&value, d + 2, 4);
                char where[128];
                size_t n = zmq_msg_size(&addr) < sizeof where - 1 ? zmq_msg_size(&addr)
                                                                   : sizeof where - 1;
                memcpy(where, zmq_msg_data(&addr), n);
                where[n] = '\0';
                const char *what = event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? "auth_refused"
                                   : event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                                       ? "protocol_error"
                                       : "handshake_failed";
                fn(ctx, z->monitors[i].domain, what, where, value);
            }
            zmq_msg_close(&head);
            zmq_msg_close(&addr);
            if (!got)
                break;
        }
    }
}

uint64_t cm_zap_denied(const cm_zap *z) { return atomic_load(&((cm_zap *)z)->denied); }
uint64_t cm_zap_allowed(const cm_zap *z) { return atomic_load(&((cm_zap *)z)->allowed); }

void cm_zap_stop(cm_zap **zp)
{
    if (!zp || !*zp)
        return;
    cm_zap *z = *zp;
    atomic_store(&z->stop, 1);
    pthread_join(z->thread, NULL);
    zmq_close(z->sock);
    for (size_t i = 0; i < z->n_monitors; i++)
        zmq_close(z->monitors[i].pair);
    pthread_mutex_destroy(&z->lock);
    memset(z->entries, 0, MAX_ALLOW * sizeof *z->entries);
    free(z->entries);
    free(z->revoked);
    free(z);
    *zp = NULL;
}

/* ------------------------------------------------- endpoints that name a host (scaled replicas)
 *
 * Connect side. A PUSH output whose endpoint names a host ("tcp://verify-in:7004") is connected
 * to EVERY address the name resolves to, and keeps following the name: a resolver thread of its
 * own looks the name up at once and then every g_follow.period_ms (2 s) (one thread per name,
 * so a name that takes a DNS timeout to fail delays no other), and the thread that owns the
 * socket applies the difference (connect the new addresses, disconnect the vanished ones) at its
 * next send, in cm_zsend_pb, because a ZeroMQ socket may only be used by one thread (ingest's
 * is used by the MQTT client's thread, not by the thread that made it). A look-up never runs on
 * the sending path, so a slow or failing DNS server cannot stall the pipeline. Docker's DNS
 * answers one A record per replica of a service, so `docker-compose up --scale verify=3`
 * spreads the round robin over three replicas within 2 s, and scaling down takes the stopped
 * ones out.
 * ZMQ_IMMEDIATE keeps frames off connections that are not established: a replica that vanishes
 * loses only the frames already in its pipe, which the end-to-end ack, the gateway's outbox and
 * the idempotent archive recover. Heartbeats notice a replica that went away without closing.
 *
 * Bind side. A server endpoint that names a host binds the one address of that name that is
 * this host's own ("tcp://verify-in:7004" on a replica binds its address on the network where
 * verify-in lives), so a process on several networks offers each socket only on the network of
 * the peers its allow-list names.
 *
 * IP literals, "*" and interface names are left to libzmq unchanged. */

#define FOLLOW_MAX 32     /* followed sockets per process */
#define FOLLOW_ADDRS 16   /* replicas per name */
#define FOLLOW_PERIOD_MS 2000

typedef struct follow {
    void *_Atomic sock;                        /* NULL once the socket is closed */
    char host[256], port[8];
    char server_key[CM_Z85_LEN + 1];           /* the replicas' identity, set at each connect */
    /* the latest look-up: written by the resolver under g_follow.lock */
    char want[FOLLOW_ADDRS][CM_ZADDR_LEN];
    int n_want;
    atomic_uint gen;                           /* bumped when want changes */
    /* what the socket is connected to: the owning thread's alone */
    char have[FOLLOW_ADDRS][CM_ZADDR_LEN];
    int n_have;
    unsigned applied;                          /* gen that have reflects */
} follow;

static int default_resolve(const char *host, char addrs[][CM_ZADDR_LEN], int max);

static struct {
    pthread_mutex_t lock;
    follow *f[FOLLOW_MAX];                     /* append-only; entries never freed */
    atomic_int n;
    cm_zresolve_fn resolve;
    unsigned period_ms;
} g_follow = {.lock = PTHREAD_MUTEX_INITIALIZER, .resolve = default_resolve,
              .period_ms = FOLLOW_PERIOD_MS};

/* getaddrinfo, IPv4 and IPv6, sorted and without repeats. 0 addresses when the name does not
 * exist (every replica gone); -1 on a failure that says nothing about the name (keep the last
 * answer). */
static int default_resolve(const char *host, char addrs[][CM_ZADDR_LEN], int max)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc == EAI_NONAME || rc == EAI_NODATA)
        return 0;
    if (rc != 0)
        return -1;
    int n = 0;
    for (struct addrinfo *a = res; a && n < max; a = a->ai_next) {
        char ip[CM_ZADDR_LEN];
        const void *src = a->ai_family == AF_INET
                              ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                              : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
            !inet_ntop(a->ai_family, src, ip, sizeof ip))
            continue;
        int at = 0; /* insertion sort: a stable order makes answers comparable */
        while (at < n && strcmp(addrs[at], ip) < 0)
            at++;
        if (at < n && strcmp(addrs[at], ip) == 0)
            continue;
        memmove(addrs[at + 1], addrs[at], (size_t)(n - at) * CM_ZADDR_LEN);
        memcpy(addrs[at], ip, CM_ZADDR_LEN);
        n++;
    }
    freeaddrinfo(res);
    return n;
}

/* Splits "tcp://HOST:PORT" when HOST is a name to resolve (not "*", an IP literal, an interface
 * name or libzmq's "source;destination" form). 1 if so. */
static int endpoint_names_host(const char *endpoint, char host[256], char port[8])
{
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return 0;
    const char *h = endpoint + 6, *colon = strrchr(h, ':');
    if (!colon || colon == h || *h == '[' || strchr(h, ';') || (size_t)(colon - h) >= 256 ||
        strlen(colon + 1) == 0 || strlen(colon + 1) >= 8)
        return 0;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = '\0';
    snprintf(port, 8, "%s", colon + 1);
    unsigned char buf[sizeof(struct in6_addr)];
    return strcmp(host, "*") != 0 && inet_pton(AF_INET, host, buf) != 1 &&
           inet_pton(AF_INET6, host, buf) != 1 && if_nametoindex(host) == 0;
}

static void endpoint_of(const char *ip, const char *port, char *out, size_t outlen)
{
    snprintf(out, outlen, strchr(ip, ':') ? "tcp://[%s]:%s" : "tcp://%s:%s", ip, port);
}

static int addr_in(const char set[][CM_ZADDR_LEN], int n, const char *ip)
{
    for (int i = 0; i < n; i++)
        if (strcmp(set[i], ip) == 0)
            return 1;
    return 0;
}

void cm_zfollow_setup(cm_zresolve_fn fn, unsigned period_ms)
{
    pthread_mutex_lock(&g_follow.lock);
    g_follow.resolve = fn ? fn : default_resolve;
    g_follow.period_ms = period_ms;
    pthread_mutex_unlock(&g_follow.lock);
}

/* Looks one followed name up and publishes the answer if it changed. */
static void follow_lookup(follow *f, cm_zresolve_fn resolve)
{
    char host[256], addrs[FOLLOW_ADDRS][CM_ZADDR_LEN];
    pthread_mutex_lock(&g_follow.lock);
    int live = atomic_load(&f->sock) != NULL;
    memcpy(host, f->host, sizeof host);
    pthread_mutex_unlock(&g_follow.lock);
    if (!live)
        return;
    int n = resolve(host, addrs, FOLLOW_ADDRS);
    if (n < 0)
        return;
    pthread_mutex_lock(&g_follow.lock);
    int same = n == f->n_want && strcmp(host, f->host) == 0;
    for (int i = 0; same && i < n; i++)
        same = strcmp(addrs[i], f->want[i]) == 0;
    if (!same && strcmp(host, f->host) == 0) {
        memcpy(f->want, addrs, sizeof addrs);
        f->n_want = n;
        atomic_fetch_add(&f->gen, 1);
    }
    pthread_mutex_unlock(&g_follow.lock);
}

void cm_zfollow_refresh(void)
{
    pthread_mutex_lock(&g_follow.lock);
    cm_zresolve_fn resolve = g_follow.resolve;
    pthread_mutex_unlock(&g_follow.lock);
    int n = atomic_load(&g_follow.n);
    for (int i = 0; i < n; i++)
        follow_lookup(g_follow.f[i], resolve);
}

/* One followed name: looked up now, then every period, until its socket is closed. */
static void *follow_thread(void *arg)
{
    follow *f = arg;
    while (atomic_load(&f->sock) != NULL) {
        pthread_mutex_lock(&g_follow.lock);
        unsigned period = g_follow.period_ms ? g_follow.period_ms : FOLLOW_PERIOD_MS;
        cm_zresolve_fn resolve = g_follow.resolve;
        pthread_mutex_unlock(&g_follow.lock);
        follow_lookup(f, resolve);
        struct timespec ts = {period / 1000, (long)(period % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* The record that follows sock, or NULL. Lock-free: the table only grows, and a record's sock
 * changes only from the socket's own thread (made, closed). */
static follow *follow_find(void *sock)
{
    int n = atomic_load(&g_follow.n);
    for (int i = 0; sock && i < n; i++)
        if (atomic_load(&g_follow.f[i]->sock) == sock)
            return g_follow.f[i];
    return NULL;
}

/* A socket pointer that is being made now belongs to no live followed socket: a record left by
 * a closed socket at the same address must not drive the new one. */
static void follow_forget(void *sock)
{
    follow *f;
    while ((f = follow_find(sock)) != NULL)
        atomic_store(&f->sock, NULL);
}

int cm_zfollow_apply(void *sock)
{
    follow *f = follow_find(sock);
    if (!f)
        return -1;
    unsigned gen = atomic_load(&f->gen);
    if (gen == f->applied)
        return f->n_have;
    char want[FOLLOW_ADDRS][CM_ZADDR_LEN], ep[300];
    pthread_mutex_lock(&g_follow.lock);
    memcpy(want, f->want, sizeof want);
    int n_want = f->n_want;
    gen = atomic_load(&f->gen);
    pthread_mutex_unlock(&g_follow.lock);
    char kept[FOLLOW_ADDRS][CM_ZADDR_LEN];
    int n_kept = 0;
    for (int i = 0; i < f->n_have; i++) {
        endpoint_of(f->have[i], f->port, ep, sizeof ep);
        if (addr_in((const char(*)[CM_ZADDR_LEN])want, n_want, f->have[i])) {
            memcpy(kept[n_kept++], f->have[i], CM_ZADDR_LEN);
        } else {
            /* no linger for a replica that is gone: its pipe closes now instead of taking
             * (and losing) frames for another second */
            int linger = 0, dflt = SOCKET_LINGER_MS;
            zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
            zmq_disconnect(sock, ep);
            zmq_setsockopt(sock, ZMQ_LINGER, &dflt, sizeof dflt);
            cm_info("name=%s endpoint=%s event=replica_gone", f->host, ep);
        }
    }
    for (int i = 0; i < n_want; i++) {
        if (addr_in((const char(*)[CM_ZADDR_LEN])kept, n_kept, want[i]))
            continue;
        endpoint_of(want[i], f->port, ep, sizeof ep);
        /* libzmq takes the server key at connect; other endpoints of the socket may have
         * another identity (an archive's standby), so the name's own key is set each time */
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, f->server_key, CM_Z85_LEN) == 0 &&
            zmq_connect(sock, ep) == 0) {
            memcpy(kept[n_kept++], want[i], CM_ZADDR_LEN);
            cm_info("name=%s endpoint=%s event=replica_added", f->host, ep);
        } else {
            cm_warn("name=%s endpoint=%s error=\"%s\"", f->host, ep, zmq_strerror(errno));
        }
    }
    memcpy(f->have, kept, sizeof kept);
    f->n_have = n_kept;
    f->applied = gen;
    return n_kept;
}

/* Makes sock follow host with the server key the socket holds now: registers it and starts the
 * name's resolver thread, which looks it up at once (never on the caller's thread: a name whose
 * service is not up yet can take a DNS timeout to fail, and start-up must not wait for it). The
 * first send connects what the thread found by then; a blocking send waits for a replica. */
static cm_err follow_start(void *sock, const char *host, const char *port)
{
    int one = 1, ivl = 2000, timeout = 6000;
    if (zmq_setsockopt(sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) ||
        zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout))
        return CM_ERR_IO;
    follow *f = calloc(1, sizeof *f);
    if (!f)
        return CM_ERR_NOMEM;
    size_t klen = sizeof f->server_key;
    if (zmq_getsockopt(sock, ZMQ_CURVE_SERVERKEY, f->server_key, &klen) != 0) {
        free(f);
        return CM_ERR_IO;
    }
    snprintf(f->host, sizeof f->host, "%s", host);
    snprintf(f->port, sizeof f->port, "%s", port);
    atomic_store(&f->sock, sock);
    pthread_mutex_lock(&g_follow.lock);
    int n = atomic_load(&g_follow.n);
    if (n >= FOLLOW_MAX) {
        pthread_mutex_unlock(&g_follow.lock);
        free(f);
        cm_error("name=%s error=\"more than %d sockets follow a name\"", host, FOLLOW_MAX);
        return CM_ERR_TOO_BIG;
    }
    g_follow.f[n] = f;
    atomic_store(&g_follow.n, n + 1);
    int start = g_follow.period_ms > 0; /* 0: tests drive the look-ups (cm_zfollow_refresh) */
    pthread_mutex_unlock(&g_follow.lock);
    if (start) {
        /* the thread takes no signals: SIGTERM must reach the threads that stop the daemon */
        pthread_t t;
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        int rc = pthread_create(&t, NULL, follow_thread, f);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            atomic_store(&f->sock, NULL);
            cm_error("name=%s error=\"cannot start the resolver thread\"", host);
            return CM_ERR_IO;
        }
        pthread_detach(t);
    }
    cm_info("name=%s port=%s event=following", host, port);
    return CM_OK;
}

/* For a server endpoint that names a host: the same endpoint with the one address of that name
 * that can be bound here (tried with a throw-away socket, so 127.0.0.0/8 and addresses added
 * to any interface count). */
static cm_err bind_endpoint(const char *endpoint, char *out, size_t outlen)
{
    char host[256], port[8], addrs[FOLLOW_ADDRS][CM_ZADDR_LEN];
    if (!endpoint_names_host(endpoint, host, port)) {
        snprintf(out, outlen, "%s", endpoint);
        return CM_OK;
    }
    pthread_mutex_lock(&g_follow.lock);
    cm_zresolve_fn resolve = g_follow.resolve;
    pthread_mutex_unlock(&g_follow.lock);
    int n = resolve(host, addrs, FOLLOW_ADDRS);
    for (int i = 0; i < n; i++) {
        struct sockaddr_storage ss = {0};
        socklen_t len;
        if (inet_pton(AF_INET, addrs[i], &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
            ss.ss_family = AF_INET;
            len = sizeof(struct sockaddr_in);
        } else if (inet_pton(AF_INET6, addrs[i], &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
            ss.ss_family = AF_INET6;
            len = sizeof(struct sockaddr_in6);
        } else {
            continue;
        }
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int ours = fd >= 0 && bind(fd, (struct sockaddr *)&ss, len) == 0;
        if (fd >= 0)
            close(fd);
        if (ours) {
            endpoint_of(addrs[i], port, out, outlen);
            cm_info("name=%s endpoint=%s event=bind_resolved", host, out);
            return CM_OK;
        }
    }
    cm_error("endpoint=%s error=\"%s\"", endpoint,
             n < 0 ? "name look-up failed" : "no address of this name belongs to this host");
    errno = EADDRNOTAVAIL;
    return CM_ERR_IO;
}

void cm_zsock_close(void **sock)
{
    if (!sock || !*sock)
        return;
    follow_forget(*sock);
    zmq_close(*sock);
    *sock = NULL;
}

/* Connects sock to one configured endpoint: following the name for a PUSH socket whose endpoint
 * names a host, else as libzmq does it. */
static cm_err connect_endpoint(void *sock, int type, const char *endpoint)
{
    char host[256], port[8];
    if (type == ZMQ_PUSH && endpoint_names_host(endpoint, host, port))
        return follow_start(sock, host, port);
    if (zmq_connect(sock, endpoint) != 0) {
        cm_error("endpoint=%s error=\"%s\"", endpoint, zmq_strerror(errno));
        return CM_ERR_IO;
    }
    return CM_OK;
}

/* ----------------------------------------------------------------- sockets */

static int common_opts(void *s)
{
    int64_t maxmsg = CM_ZMQ_MAX_MSG;
    int hwm = PIPE_HWM, linger = SOCKET_LINGER_MS, hs = 5000;
    return zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
           zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
           zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
           zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) ||
           zmq_setsockopt(s, ZMQ_HANDSHAKE_IVL, &hs, sizeof hs);
}

cm_err cm_zsock_server(void *ctx, int type, const char *endpoint, const char *domain,
                       const cm_curve_keypair *own, void **out)
{
    *out = NULL;
    char ep[300];
    if (bind_endpoint(endpoint, ep, sizeof ep) != CM_OK)
        return CM_ERR_IO;
    void *s = zmq_socket(ctx, type);
    follow_forget(s);
    int one = 1;
    if (!s || common_opts(s) ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, own->secret_z85, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        zmq_bind(s, ep) != 0) {
        cm_error("endpoint=%s domain=%s error=\"%s\"", endpoint, domain, zmq_strerror(errno));
        if (s)
            zmq_close(s);
        return CM_ERR_IO;
    }
    *out = s;
    return CM_OK;
}

cm_err cm_zsock_client(void *ctx, int type, const char *endpoint, const char *server_public,
                       const cm_curve_keypair *own, void **out)
{
    *out = NULL;
    void *s = zmq_socket(ctx, type);
    follow_forget(s);
    if (!s || common_opts(s) ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_public, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, own->public_z85, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, own->secret_z85, CM_Z85_LEN)) {
        cm_error("endpoint=%s error=\"%s\"", endpoint, zmq_strerror(errno));
        if (s)
            zmq_close(s);
        return CM_ERR_IO;
    }
    if (endpoint && connect_endpoint(s, type, endpoint) != CM_OK) {
        cm_zsock_close(&s);
        return CM_ERR_IO;
    }
    *out = s;
    return CM_OK;
}

cm_err cm_zsock_server_conf(void *ctx, cm_zap *zap, const cm_conf *conf, const char *section,
                            int type, const cm_curve_keypair *own, void **out,
                            char err[CM_CONF_ERRLEN])
{
    const char *bind, *allow;
    *out = NULL;
    cm_err rc = cm_conf_req(conf, section, "bind", &bind, err);
    if (rc == CM_OK)
        rc = cm_conf_req(conf, section, "allow", &allow, err);
    if (rc != CM_OK)
        return rc;
    char buf[8192];
    const char *items[64];
    int n = cm_conf_split(allow, buf, sizeof buf, items, 64);
    if (n <= 0) {
        /* never run a socket with an empty allow-list */
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] allow-list is empty or too long",
                 cm_conf_name(conf), cm_conf_line(conf, section, "allow"), section);
        return CM_ERR_CONFIG;
    }
    for (int i = 0; i < n; i++) {
        char *colon = strchr(items[i], ':');
        if (!colon || colon == items[i]) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] allow entry '%s' is not NAME:KEYFILE",
                     cm_conf_name(conf), cm_conf_line(conf, section, "allow"), section, items[i]);
            return CM_ERR_CONFIG;
        }
        *colon = '\0';
        char key[CM_Z85_LEN + 1];
        if (cm_curve_load_public(colon + 1, key) != CM_OK) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] %s: not a readable CURVE public key",
                     cm_conf_name(conf), cm_conf_line(conf, section, "allow"), section,
                     colon + 1);
            return CM_ERR_CONFIG;
        }
        if (cm_zap_allow(zap, section, items[i], key) != CM_OK) {
            snprintf(err, CM_CONF_ERRLEN, "%s: [%s] allow-list full", cm_conf_name(conf),
                     section);
            return CM_ERR_CONFIG;
        }
    }
    rc = cm_zsock_server(ctx, type, bind, section, own, out);
    if (rc != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] cannot bind %s: %s", cm_conf_name(conf),
                 cm_conf_line(conf, section, "bind"), section, bind, zmq_strerror(errno));
        return rc;
    }
    if (zap_watch(zap, *out, section) != CM_OK)
        cm_warn("socket=%s error=\"handshake failures of this socket are not watched\"", section);
    return CM_OK;
}

/* cm_zsock_client_conf and cm_zsock_push_conf_immediate: always_immediate sets ZMQ_IMMEDIATE
 * whatever the number of endpoints. */
static cm_err client_conf(void *ctx, const cm_conf *conf, const char *section, int type,
                          int always_immediate, const cm_curve_keypair *own, void **out,
                          char err[CM_CONF_ERRLEN])
{
    const char *connect, *keyfile;
    *out = NULL;
    cm_err rc = cm_conf_req(conf, section, "connect", &connect, err);
    if (rc == CM_OK)
        rc = cm_conf_req(conf, section, "server_key", &keyfile, err);
    if (rc != CM_OK)
        return rc;
    char buf[4096], kbuf[4096];
    const char *eps[MAX_ENDPOINTS], *kfs[MAX_ENDPOINTS];
    int n = cm_conf_split(connect, buf, sizeof buf, eps, MAX_ENDPOINTS);
    if (n <= 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] connect needs 1 to %d endpoints",
                 cm_conf_name(conf), cm_conf_line(conf, section, "connect"), section,
                 MAX_ENDPOINTS);
        return CM_ERR_CONFIG;
    }
    /* one key for every endpoint (replicas share one identity), or one per endpoint in the same
     * order (an archive and its standby are two identities; libzmq takes the server key at each
     * connect, and a followed name keeps the key it was given for its later connects) */
    int nk = cm_conf_split(keyfile, kbuf, sizeof kbuf, kfs, MAX_ENDPOINTS);
    if (nk != 1 && nk != n) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] server_key needs one key, or one per endpoint",
                 cm_conf_name(conf), cm_conf_line(conf, section, "server_key"), section);
        return CM_ERR_CONFIG;
    }
    char keys[MAX_ENDPOINTS][CM_Z85_LEN + 1];
    for (int i = 0; i < nk; i++)
        if (cm_curve_load_public(kfs[i], keys[i]) != CM_OK) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] %s: not a readable CURVE public key",
                     cm_conf_name(conf), cm_conf_line(conf, section, "server_key"), section,
                     kfs[i]);
            return CM_ERR_CONFIG;
        }
    /* A PUSH to several endpoints hands frames only to peers whose connection is established
     * (ZMQ_IMMEDIATE, set before the first connect): nothing waits in the pipe of a replica that
     * is down, or of an archive standby whose input is not bound until it is promoted. */
    int immediate = type == ZMQ_PUSH && (n > 1 || always_immediate), one = 1;
    rc = cm_zsock_client(ctx, type, immediate ? NULL : eps[0], keys[0], own, out);
    if (rc == CM_OK && immediate && zmq_setsockopt(*out, ZMQ_IMMEDIATE, &one, sizeof one) != 0)
        rc = CM_ERR_IO;
    for (int i = immediate ? 0 : 1; rc == CM_OK && i < n; i++) {
        if (nk > 1 && zmq_setsockopt(*out, ZMQ_CURVE_SERVERKEY, keys[i], CM_Z85_LEN) != 0)
            rc = CM_ERR_IO;
        else
            rc = connect_endpoint(*out, type, eps[i]);
    }
    if (rc != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] cannot connect: %s", cm_conf_name(conf),
                 cm_conf_line(conf, section, "connect"), section, zmq_strerror(errno));
        cm_zsock_close(out);
    }
    return rc;
}

cm_err cm_zsock_client_conf(void *ctx, const cm_conf *conf, const char *section, int type,
                            const cm_curve_keypair *own, void **out, char err[CM_CONF_ERRLEN])
{
    return client_conf(ctx, conf, section, type, 0, own, out, err);
}

cm_err cm_zsock_push_conf_immediate(void *ctx, const cm_conf *conf, const char *section,
                                    const cm_curve_keypair *own, void **out,
                                    char err[CM_CONF_ERRLEN])
{
    return client_conf(ctx, conf, section, ZMQ_PUSH, 1, own, out, err);
}

/* ---------------------------------------------------------------- messages */

/* hint: the buffer's size. Wiped before it is freed: a request may carry a password. */
static void free_buf(void *data, void *hint)
{
    OPENSSL_cleanse(data, (size_t)(uintptr_t)hint);
    free(data);
}

cm_err cm_zsend_pb(void *sock, const ProtobufCMessage *m, int flags)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > CM_ZMQ_MAX_MSG)
        return CM_ERR_TOO_BIG;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ERR_NOMEM;
    protobuf_c_message_pack(m, buf);
    zmq_msg_t msg;
    if (zmq_msg_init_data(&msg, buf, n, free_buf, (void *)(uintptr_t)n) != 0) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        return CM_ERR_NOMEM;
    }
    /* A socket that follows a name takes its latest replicas first. A blocking send on it waits
     * in short polls instead of inside libzmq, so that replicas appearing while every old one
     * is gone (or full) are connected and can take the frame. */
    int follows = cm_zfollow_apply(sock) >= 0;
    int wait = follows && !(flags & ZMQ_DONTWAIT);
    while (zmq_msg_send(&msg, sock, wait ? flags | ZMQ_DONTWAIT : flags) < 0) {
        int e = errno;
        if (wait && e == EAGAIN && !cm_daemon_stopping) {
            zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLOUT};
            if (zmq_poll(&it, 1, 200) >= 0 || errno != EINTR) {
                cm_zfollow_apply(sock);
                continue;
            }
            e = EINTR;
        } else if (wait && e == EAGAIN) {
            e = EINTR; /* stopping: the caller's loop ends, as after an interrupted send */
        }
        zmq_msg_close(&msg);
        errno = e;
        return e == EAGAIN ? CM_ERR_UNAVAILABLE : CM_ERR_IO;
    }
    return CM_OK;
}

cm_err cm_zrecv(void *sock, void *zmq_msg, char *peer, size_t peerlen, int flags)
{
    zmq_msg_t *m = zmq_msg;
    if (zmq_msg_recv(m, sock, flags) < 0)
        return errno == EAGAIN ? CM_ERR_UNAVAILABLE : CM_ERR_IO;
    if (peer) {
        const char *uid = zmq_msg_gets(m, "User-Id");
        snprintf(peer, peerlen, "%s", uid ? uid : "");
    }
    /* a frame that is part of a multipart message is not ours: drain it */
    if (zmq_msg_more(m)) {
        int more = 1;
        while (more) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            more = zmq_msg_recv(&x, sock, 0) >= 0 && zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        return CM_ERR_DECODE;
    }
    return CM_OK;
}

void cm_zreply(void *router, void *route, const ProtobufCMessage *m)
{
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    zmq_msg_copy(&copy, route);
    if (zmq_msg_send(&copy, router, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&copy);
        return;
    }
    if (cm_zsend_pb(router, m, ZMQ_DONTWAIT) != CM_OK)
        cm_warn("error=\"reply dropped\"");
}
