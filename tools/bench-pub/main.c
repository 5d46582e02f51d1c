/* suido-bench-pub: the load generator of `make bench`'s bare-broker baseline. The simulator
 * signs, encrypts and stores every batch, and a general MQTT client library spends more per
 * publish than the broker does, so on a small machine either would be what limits the
 * baseline. This generator writes MQTT 3.1.1 over TLS itself (OpenSSL): one prepared PUBLISH of
 * the simulator's message size, sent again and again with new packet ids, as many as the
 * in-flight window allows in one TLS write, and the broker's PUBACKs read in bulk. Same broker,
 * TLS, identities (one connection per gateway, with the gateway's own certificate), topics,
 * QoS 1 and window (64) as the simulator, so the broker does the same work per message:
 *
 *   suido-bench-pub --broker ssl://HOST:PORT --deploy DIR --gateways N --size BYTES --seconds S
 *
 * Publishes for S seconds (one thread per connection), then waits up to 10 s for the PUBACKs of
 * what is in flight. Prints one JSON line: {"published":P,"acked":A,"seconds":T,"msgs_per_s":R}.
 * The rate the broker delivered is the subscriber's (suido-bench-sub). A bench tool: any
 * protocol or TLS error ends it with a message and exit 1. */
#include <arpa/inet.h>
#include <dirent.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "cm_time.h"

#define MAX_GW 4096
#define WINDOW 64

typedef struct conn {
    char id[65], topic[96];
    SSL *ssl;
    int fd;
    uint64_t published, acked;
    pthread_t th;
} conn;

static const char *g_host, *g_port;
static long g_size;
static uint64_t g_end_us;
static uint8_t *g_payload;

static void die(const char *who, const char *what)
{
    fprintf(stderr, "suido-bench-pub: %s: %s\n", who, what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static size_t put_len(uint8_t *p, size_t n) /* MQTT remaining length */
{
    size_t i = 0;
    do {
        uint8_t b = n % 128;
        n /= 128;
        p[i++] = (uint8_t)(b | (n ? 0x80 : 0));
    } while (n);
    return i;
}

static void write_all(conn *c, const uint8_t *p, size_t n)
{
    while (n) {
        int w = SSL_write(c->ssl, p, (int)n);
        if (w <= 0)
            die(c->id, "TLS write failed");
        p += w;
        n -= (size_t)w;
    }
}

static void tls_connect(conn *c, SSL_CTX *ctx)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(g_host, g_port, &hints, &ai) != 0)
        die(c->id, "cannot resolve the broker");
    c->fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0)
        die(c->id, "cannot connect to the broker");
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, g_host);
    SSL_set1_host(c->ssl, g_host);
    if (SSL_connect(c->ssl) != 1)
        die(c->id, "TLS handshake failed");
    /* CONNECT: MQTT 3.1.1, clean session, keepalive 60 s, client id = the certificate's CN */
    uint8_t pkt[128];
    size_t idl = strlen(c->id), vl = 10 + 2 + idl, n = 0;
    pkt[n++] = 0x10;
    n += put_len(pkt + n, vl);
    const uint8_t vh[10] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60};
    memcpy(pkt + n, vh, sizeof vh);
    n += sizeof vh;
    pkt[n++] = (uint8_t)(idl >> 8);
    pkt[n++] = (uint8_t)idl;
    memcpy(pkt + n, c->id, idl);
    n += idl;
    write_all(c, pkt, n);
    uint8_t ack[4];
    for (size_t got = 0; got < 4;) {
        int r = SSL_read(c->ssl, ack + got, (int)(4 - got));
        if (r <= 0)
            die(c->id, "no CONNACK");
        got += (size_t)r;
    }
    if (ack[0] != 0x20 || ack[3] != 0)
        die(c->id, "the broker refused the connection");
}

/* Reads what has arrived (blocking for at least one byte) and counts the PUBACKs in it. */
static void read_acks(conn *c, uint8_t *buf, size_t cap, size_t *have)
{
    int r = SSL_read(c->ssl, buf + *have, (int)(cap - *have));
    if (r <= 0)
        die(c->id, "connection lost");
    *have += (size_t)r;
    size_t i = 0;
    while (*have - i >= 4) {
        if (buf[i] != 0x40 || buf[i + 1] != 0x02)
            die(c->id, "unexpected packet from the broker");
        c->acked++;
        i += 4;
    }
    memmove(buf, buf + i, *have - i);
    *have -= i;
}

static void *run(void *arg)
{
    conn *c = arg;
    size_t tl = strlen(c->topic);
    size_t body = 2 + tl + 2 + (size_t)g_size;
    uint8_t head[8];
    size_t hl = 1 + put_len(head + 1, body);
    head[0] = 0x32; /* PUBLISH, QoS 1 */
    size_t one = hl + body;
    uint8_t *out = malloc(one * WINDOW), rbuf[4096];
    size_t have = 0;
    uint16_t pid = 0;
    if (!out)
        die(c->id, "out of memory");
    while (cm_mono_us() < g_end_us) {
        size_t n = 0;
        while (c->published - c->acked < WINDOW) { /* fill the window, one TLS write */
            uint8_t *p = out + n * one;
            memcpy(p, head, hl);
            p += hl;
            *p++ = (uint8_t)(tl >> 8);
            *p++ = (uint8_t)tl;
            memcpy(p, c->topic, tl);
            p += tl;
            if (++pid == 0)
                pid = 1;
            *p++ = (uint8_t)(pid >> 8);
            *p++ = (uint8_t)pid;
            memcpy(p, g_payload, (size_t)g_size);
            n++;
            c->published++;
        }
        if (n)
            write_all(c, out, n * one);
        read_acks(c, rbuf, sizeof rbuf, &have);
    }
    uint64_t deadline = cm_mono_us() + 10000000u;
    while (c->acked < c->published && cm_mono_us() < deadline)
        read_acks(c, rbuf, sizeof rbuf, &have);
    const uint8_t disc[2] = {0xE0, 0};
    write_all(c, disc, sizeof disc);
    SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    close(c->fd);
    free(out);
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void usage(void)
{
    fprintf(stderr, "usage: suido-bench-pub --broker ssl://HOST:PORT --deploy DIR --gateways N "
                    "--size BYTES --seconds S\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *broker = NULL, *deploy = NULL;
    long n = 0, seconds = 0;
    static const struct option opts[] = {{"broker", 1, 0, 'b'},   {"deploy", 1, 0, 'd'},
                                         {"gateways", 1, 0, 'g'}, {"size", 1, 0, 's'},
                                         {"seconds", 1, 0, 't'},  {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'b': broker = optarg; break;
        case 'd': deploy = optarg; break;
        case 'g': n = strtol(optarg, NULL, 10); break;
        case 's': g_size = strtol(optarg, NULL, 10); break;
        case 't': seconds = strtol(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (!broker || !deploy || n < 1 || n > MAX_GW || g_size < 1 || g_size > 1 << 20 ||
        seconds < 1 || strncmp(broker, "ssl://", 6) != 0)
        usage();
    static char host[256];
    snprintf(host, sizeof host, "%s", broker + 6);
    char *colon = strrchr(host, ':');
    if (!colon)
        usage();
    *colon = '\0';
    g_host = host;
    g_port = colon + 1;

    /* the first n gateways of DIR/gateways, sorted (the simulator's order) */
    char path[4096];
    snprintf(path, sizeof path, "%s/gateways", deploy);
    DIR *d = opendir(path);
    if (!d)
        die(path, "cannot read");
    char *all[MAX_GW];
    int k = 0;
    struct dirent *e;
    while ((e = readdir(d)) && k < MAX_GW)
        if (e->d_name[0] != '.' && strlen(e->d_name) <= 64)
            all[k++] = strdup(e->d_name);
    closedir(d);
    if (k < n)
        die(path, "holds fewer gateways than --gateways");
    qsort(all, (size_t)k, sizeof *all, cmp_str);

    char ca[4200];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", deploy);
    g_payload = malloc((size_t)g_size);
    conn *cs = calloc((size_t)n, sizeof *cs);
    SSL_CTX **ctxs = calloc((size_t)n, sizeof *ctxs);
    if (!g_payload || !cs || !ctxs)
        die("suido-bench-pub", "out of memory");
    for (long i = 0; i < g_size; i++)
        g_payload[i] = (uint8_t)(i * 131 + 7);
    /* every connection made (one TLS context per identity) before the clock starts */
    for (long i = 0; i < n; i++) {
        conn *c = &cs[i];
        snprintf(c->id, sizeof c->id, "%s", all[i]);
        snprintf(c->topic, sizeof c->topic, "suido/v1/%s/data", all[i]);
        char crt[4300], key[4300];
        snprintf(crt, sizeof crt, "%s/%s/client.crt", path, c->id);
        snprintf(key, sizeof key, "%s/%s/client.key", path, c->id);
        ctxs[i] = SSL_CTX_new(TLS_client_method());
        if (!ctxs[i] || SSL_CTX_set_min_proto_version(ctxs[i], TLS1_2_VERSION) != 1 ||
            SSL_CTX_load_verify_locations(ctxs[i], ca, NULL) != 1 ||
            SSL_CTX_use_certificate_chain_file(ctxs[i], crt) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctxs[i], key, SSL_FILETYPE_PEM) != 1)
            die(crt, "cannot load the CA, or the gateway's certificate and key");
        SSL_CTX_set_verify(ctxs[i], SSL_VERIFY_PEER, NULL);
        tls_connect(c, ctxs[i]);
    }
    uint64_t t0 = cm_mono_us();
    g_end_us = t0 + (uint64_t)seconds * 1000000u;
    for (long i = 0; i < n; i++)
        pthread_create(&cs[i].th, NULL, run, &cs[i]);
    uint64_t published = 0, acked = 0;
    for (long i = 0; i < n; i++) {
        pthread_join(cs[i].th, NULL);
        published += cs[i].published;
        acked += cs[i].acked;
    }
    double secs = (double)(g_end_us - t0) / 1e6;
    printf("{\"published\":%llu,\"acked\":%llu,\"seconds\":%.3f,\"msgs_per_s\":%.1f}\n",
           (unsigned long long)published, (unsigned long long)acked, secs,
           secs > 0 ? (double)published / secs : 0.0);
    for (long i = 0; i < n; i++) {
        SSL_CTX_free(ctxs[i]);
        free(all[i]);
    }
    for (int i = (int)n; i < k; i++)
        free(all[i]);
    free(ctxs);
    free(cs);
    free(g_payload);
    return 0;
}
