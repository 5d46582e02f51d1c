/* suido-bench-sub: the plain subscriber of `make bench`'s bare-broker baseline. Subscribes with
 * QoS 1 to every gateway's data topic as the "ingest" identity (the real ingest is not running
 * then), counts messages and bytes, and writes a JSON line when stopped:
 *
 *   suido-bench-sub --broker URI --deploy DIR --out FILE [--identity ingest]
 *
 * Stops on SIGINT/SIGTERM. The rate is taken between the first and the last message, so start-up
 * and idle time do not dilute it. */
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_time.h"

static volatile sig_atomic_t stop;
static atomic_uint_fast64_t count, bytes, first_us, last_us;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int on_message(void *ctx, const char *topic, const void *payload, size_t len)
{
    (void)ctx;
    (void)topic;
    (void)payload;
    uint64_t now = cm_mono_us();
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&first_us, &zero, now);
    atomic_store(&last_us, now);
    atomic_fetch_add(&count, 1);
    atomic_fetch_add(&bytes, len);
    return 1;
}

int main(int argc, char **argv)
{
    const char *broker = NULL, *deploy = NULL, *out = NULL, *id = "ingest";
    static const struct option opts[] = {{"broker", 1, 0, 'b'}, {"deploy", 1, 0, 'd'},
                                         {"out", 1, 0, 'o'},    {"identity", 1, 0, 'i'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b': broker = optarg; break;
        case 'd': deploy = optarg; break;
        case 'o': out = optarg; break;
        case 'i': id = optarg; break;
        default:
            fprintf(stderr, "usage: suido-bench-sub --broker URI --deploy DIR --out FILE\n");
            return 2;
        }
    }
    if (!broker || !deploy || !out) {
        fprintf(stderr, "usage: suido-bench-sub --broker URI --deploy DIR --out FILE\n");
        return 2;
    }
    cm_log_init("bench-sub", CM_LOG_WARN);
    char ca[4096], cert[4096], key[4096];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", deploy);
    snprintf(cert, sizeof cert, "%s/services/%s/client.crt", deploy, id);
    snprintf(key, sizeof key, "%s/services/%s/client.key", deploy, id);
    cm_mqtt_opts mo = {.uri = broker, .client_id = id, .ca_file = ca, .cert_file = cert,
                       .key_file = key, .clean_session = 1, .max_inflight = 64,
                       .verify_hostname = 1, .on_message = on_message};
    cm_mqtt *m = NULL;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (cm_mqtt_new(&mo, &m) != CM_OK || cm_mqtt_subscribe(m, "suido/v1/+/data", 1) != CM_OK ||
        cm_mqtt_connect(m, 10000) != CM_OK) {
        fprintf(stderr, "suido-bench-sub: cannot connect to %s\n", broker);
        cm_mqtt_destroy(&m);
        return 1;
    }
    fprintf(stderr, "suido-bench-sub: subscribed\n");
    while (!stop)
        usleep(50000);
    cm_mqtt_destroy(&m);
    FILE *f = fopen(out, "w");
    if (!f)
        return 1;
    uint64_t n = atomic_load(&count), span = atomic_load(&last_us) - atomic_load(&first_us);
    fprintf(f, "{\"messages\":%llu,\"bytes\":%llu,\"span_s\":%.3f,\"msgs_per_s\":%.1f}\n",
            (unsigned long long)n, (unsigned long long)atomic_load(&bytes), span / 1e6,
            span ? (double)(n - 1) * 1e6 / (double)span : 0.0);
    fclose(f);
    return 0;
}
