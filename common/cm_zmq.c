/* cm_zmq: CURVE sockets and the per-domain ZAP allow-list handler (one thread per process). */
#include "cm_zmq.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cm_crypto.h"
#include "cm_log.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MAX_ALLOW 1024
#define MAX_ENDPOINTS 16
#define PIPE_HWM 10000

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

/* ----------------------------------------------------------------- sockets */

static int common_opts(void *s)
{
    int64_t maxmsg = CM_ZMQ_MAX_MSG;
    int hwm = PIPE_HWM, linger = 1000, hs = 5000;
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
    void *s = zmq_socket(ctx, type);
    int one = 1;
    if (!s || common_opts(s) ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, own->secret_z85, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        zmq_bind(s, endpoint) != 0) {
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
    if (!s || common_opts(s) ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_public, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, own->public_z85, CM_Z85_LEN) ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, own->secret_z85, CM_Z85_LEN) ||
        zmq_connect(s, endpoint) != 0) {
        cm_error("endpoint=%s error=\"%s\"", endpoint, zmq_strerror(errno));
        if (s)
            zmq_close(s);
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

cm_err cm_zsock_client_conf(void *ctx, const cm_conf *conf, const char *section, int type,
                            const cm_curve_keypair *own, void **out, char err[CM_CONF_ERRLEN])
{
    const char *connect, *keyfile;
    *out = NULL;
    cm_err rc = cm_conf_req(conf, section, "connect", &connect, err);
    if (rc == CM_OK)
        rc = cm_conf_req(conf, section, "server_key", &keyfile, err);
    if (rc != CM_OK)
        return rc;
    char key[CM_Z85_LEN + 1];
    if (cm_curve_load_public(keyfile, key) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] %s: not a readable CURVE public key",
                 cm_conf_name(conf), cm_conf_line(conf, section, "server_key"), section, keyfile);
        return CM_ERR_CONFIG;
    }
    char buf[4096];
    const char *eps[MAX_ENDPOINTS];
    int n = cm_conf_split(connect, buf, sizeof buf, eps, MAX_ENDPOINTS);
    if (n <= 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] connect needs 1 to %d endpoints",
                 cm_conf_name(conf), cm_conf_line(conf, section, "connect"), section,
                 MAX_ENDPOINTS);
        return CM_ERR_CONFIG;
    }
    rc = cm_zsock_client(ctx, type, eps[0], key, own, out);
    for (int i = 1; rc == CM_OK && i < n; i++)
        if (zmq_connect(*out, eps[i]) != 0)
            rc = CM_ERR_IO;
    if (rc != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] cannot connect: %s", cm_conf_name(conf),
                 cm_conf_line(conf, section, "connect"), section, zmq_strerror(errno));
        if (*out)
            zmq_close(*out);
        *out = NULL;
    }
    return rc;
}

/* ---------------------------------------------------------------- messages */

static void free_buf(void *data, void *hint)
{
    (void)hint;
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
    if (zmq_msg_init_data(&msg, buf, n, free_buf, NULL) != 0) {
        free(buf);
        return CM_ERR_NOMEM;
    }
    if (zmq_msg_send(&msg, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&msg);
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
