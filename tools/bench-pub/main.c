/* suido-bench-pub: the load generator of `make bench`'s bare-broker baseline. The simulator
 * signs, encrypts and stores every batch, and on a small machine that work, not the broker,
 * limits how fast it can publish; this generator publishes one prepared payload of the same
 * size instead, so that the baseline measures the broker. Same broker, TLS, identities (one
 * connection per gateway, with the gateway's own certificate), topics, QoS 1 and in-flight
 * window as the simulator:
 *
 *   suido-bench-pub --broker URI --deploy DIR --gateways N --size BYTES --seconds S
 *
 * Publishes to suido/v1/<gw>/data as fast as the in-flight windows allow, for S seconds, then
 * waits up to 10 s for the broker's acknowledgement of what is in flight. Prints one JSON line:
 * {"published":P,"seconds":T,"msgs_per_s":R}. The rate the broker delivered is the
 * subscriber's (suido-bench-sub). */
#include <dirent.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_time.h"

#define MAX_GW 4096

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The first n gateway ids of DIR/gateways, sorted (the simulator's order). */
static int gateway_ids(const char *deploy, char **ids, int n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/gateways", deploy);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    char *all[MAX_GW];
    int k = 0;
    struct dirent *e;
    while ((e = readdir(d)) && k < MAX_GW)
        if (e->d_name[0] != '.')
            all[k++] = strdup(e->d_name);
    closedir(d);
    qsort(all, (size_t)k, sizeof *all, cmp_str);
    int got = 0;
    for (int i = 0; i < k; i++) {
        if (got < n)
            ids[got++] = all[i];
        else
            free(all[i]);
    }
    return got;
}

static void usage(void)
{
    fprintf(stderr, "usage: suido-bench-pub --broker URI --deploy DIR --gateways N --size BYTES "
                    "--seconds S\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *broker = NULL, *deploy = NULL;
    long n = 0, size = 0, seconds = 0;
    static const struct option opts[] = {{"broker", 1, 0, 'b'},   {"deploy", 1, 0, 'd'},
                                         {"gateways", 1, 0, 'g'}, {"size", 1, 0, 's'},
                                         {"seconds", 1, 0, 't'},  {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b': broker = optarg; break;
        case 'd': deploy = optarg; break;
        case 'g': n = strtol(optarg, NULL, 10); break;
        case 's': size = strtol(optarg, NULL, 10); break;
        case 't': seconds = strtol(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (!broker || !deploy || n < 1 || n > MAX_GW || size < 1 || size > 1 << 20 || seconds < 1)
        usage();
    cm_log_init("bench-pub", CM_LOG_WARN);
    char *ids[MAX_GW];
    int k = gateway_ids(deploy, ids, (int)n);
    if (k != n) {
        fprintf(stderr, "suido-bench-pub: %s/gateways holds %d gateways, not %ld\n", deploy, k, n);
        return 1;
    }
    cm_mqtt **m = calloc((size_t)k, sizeof *m);
    char (*topic)[96] = calloc((size_t)k, sizeof *topic);
    uint8_t *payload = malloc((size_t)size);
    if (!m || !topic || !payload)
        return 1;
    for (long i = 0; i < size; i++)
        payload[i] = (uint8_t)(i * 131 + 7); /* incompressible enough; TLS does not compress */
    char ca[4096], cert[4096], key[4096];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", deploy);
    for (int i = 0; i < k; i++) {
        snprintf(cert, sizeof cert, "%s/gateways/%s/client.crt", deploy, ids[i]);
        snprintf(key, sizeof key, "%s/gateways/%s/client.key", deploy, ids[i]);
        snprintf(topic[i], sizeof topic[i], "suido/v1/%s/data", ids[i]);
        cm_mqtt_opts mo = {.uri = broker, .client_id = ids[i], .ca_file = ca, .cert_file = cert,
                           .key_file = key, .clean_session = 1, .max_inflight = 64,
                           .verify_hostname = 1};
        if (cm_mqtt_new(&mo, &m[i]) != CM_OK || cm_mqtt_connect(m[i], 10000) != CM_OK) {
            fprintf(stderr, "suido-bench-pub: %s cannot connect to %s\n", ids[i], broker);
            return 1;
        }
    }
    uint64_t published = 0, t0 = cm_mono_us(), end = t0 + (uint64_t)seconds * 1000000u;
    const struct timespec pause = {0, 200000}; /* every window full: wait for acknowledgements */
    while (cm_mono_us() < end) {
        uint64_t before = published;
        for (int i = 0; i < k; i++)
            while (cm_mqtt_publish(m[i], topic[i], payload, (size_t)size, 1, 0) == CM_OK)
                published++;
        if (published == before)
            nanosleep(&pause, NULL);
    }
    double secs = (double)(cm_mono_us() - t0) / 1e6;
    for (int w = 0; w < 1000; w++) { /* what is in flight, acknowledged */
        int inflight = 0;
        for (int i = 0; i < k; i++)
            inflight += cm_mqtt_inflight(m[i]);
        if (!inflight)
            break;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    for (int i = 0; i < k; i++) {
        cm_mqtt_destroy(&m[i]);
        free(ids[i]);
    }
    printf("{\"published\":%llu,\"seconds\":%.3f,\"msgs_per_s\":%.1f}\n",
           (unsigned long long)published, secs, secs > 0 ? (double)published / secs : 0.0);
    free(m);
    free(topic);
    free(payload);
    return 0;
}
