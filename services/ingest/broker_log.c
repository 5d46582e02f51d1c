/* broker_log: see broker_log.h. The patterns are Mosquitto 2.0's own wording and the plugin's
 * key=value lines (broker/plugin/suido_plugin.c); a line that matches none is not an event. */
#include "broker_log.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *needle;
    const char *event;
} PATTERNS[] = {
    {"suido_plugin: event=refused", "broker_identity_refused"},
    {"suido_plugin: event=denied", "broker_access_denied"},
    {"suido_plugin: event=kick", "broker_session_cut"},
    {"OpenSSL Error", "broker_tls_refused"},
    {"SSL routines", "broker_tls_refused"}, /* "Client connection from <addr> failed: error:..." */
    {"disconnected: Protocol error", "broker_protocol_error"},
    {"disconnected due to protocol error", "broker_protocol_error"},
    {"malformed packet", "broker_protocol_error"},
    {"oversize packet", "broker_protocol_error"},
    {"QoS too high or retain not supported", "broker_protocol_error"},
    {"not authorised", "broker_not_authorised"},
    {"exceeded timeout", "broker_client_timeout"},
    {"already connected, closing old connection", "broker_session_takeover"},
    {"Outgoing messages are being dropped", "broker_queue_full"},
};

/* memmem over a line that is not NUL-terminated */
static int contains(const char *line, size_t len, const char *needle)
{
    return memmem(line, len, needle, strlen(needle)) != NULL;
}

/* The identity a line names: "user=<id>" (plugin lines) or "Client <id> " (broker lines). */
static void subject_of(const char *line, size_t len, char out[65])
{
    out[0] = '\0';
    const char *p = memmem(line, len, "user=", 5);
    size_t skip = 5;
    if (!p) {
        p = memmem(line, len, "Client ", 7);
        skip = 7;
    }
    if (!p)
        return;
    p += skip;
    /* the line is not NUL-terminated: compare only what is left of it (strncmp read past the
     * end of a line that ends in "Client "; found by fuzz/broker_log.c) */
    size_t left = (size_t)(line + len - p);
    if (skip == 7 && left >= 16 && memcmp(p, "connection from ", 16) == 0)
        return; /* "Client connection from <address> failed": no identity yet */
    size_t n = 0;
    while (p + n < line + len && n < 64 &&
           ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '-' ||
            p[n] == '_'))
        n++;
    memcpy(out, p, n);
    out[n] = '\0';
}

int broker_log_classify(const char *line, size_t len, broker_event *ev)
{
    memset(ev, 0, sizeof *ev);
    for (size_t i = 0; i < sizeof PATTERNS / sizeof PATTERNS[0]; i++) {
        if (!contains(line, len, PATTERNS[i].needle))
            continue;
        ev->event = PATTERNS[i].event;
        subject_of(line, len, ev->subject);
        size_t n = len < sizeof ev->detail - 1 ? len : sizeof ev->detail - 1;
        for (size_t k = 0; k < n; k++) {
            unsigned char c = (unsigned char)line[k];
            ev->detail[k] = c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
        }
        ev->detail[n] = '\0';
        return 1;
    }
    return 0;
}
