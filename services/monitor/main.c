/* suido-monitor: the operators' web console. HTTPS only (libmicrohttpd, GnuTLS) with the
 * certificate the deployment CA issued for it; operators log in with password and TOTP through
 * the registry (its lockout applies) and see, by role: sites and gateways, live trends with the
 * profile's limits, alert cases with their lifecycle and past cases, the command gate's decisions,
 * the audit log with its chain check, and a planning report with CSV export. Every action and
 * every refusal is audited in the archive.
 *
 * It reads only through the channels any service uses: the registry and the archive's API over
 * CURVE (as "monitor", with the operator's registry session on every request, checked again by
 * the receiver), and the live alert stream suido/v1/alerts/# over MQTT/TLS. It keeps nothing on
 * disk but the audit events waiting for the archive (cm_audit_out's spool in its state_dir);
 * sessions live in memory (mon_session.h).
 *
 * Sockets: [registry] DEALER; [archive] DEALER to the archive's [api]; [output archive] PUSH
 *          (audit events, cm_audit_out); [mqtt] MQTT/TLS client "monitor", subscribes
 *          suido/v1/alerts/# only; [http] the HTTPS listener. One thread serves HTTP and owns
 *          the ZeroMQ sockets; Paho's thread hands alerts over through mon_live. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_audit_out.h"
#include "cm_log.h"
#include "cm_mqtt.h"
#include "cm_registry.h"
#include "cm_svc.h"
#include "cm_time.h"
#include "mon_app.h"
#include "mon_backend.h"
#include "mon_http.h"
#include "mon_live.h"

static const cm_conf_spec SPEC[] = {
    CM_DAEMON_SPEC_ROWS,
    CM_REGISTRY_SPEC_ROWS("registry"),
    MON_BACKEND_SPEC_ROWS,
    CM_AUDIT_OUT_SPEC_ROWS,
    CM_MQTT_SPEC_ROWS("mqtt"),
    {"http", "bind", 1, "HTTPS listener, HOST:PORT (a name: its first address that binds)"},
    {"http", "cert", 1, "the console's TLS certificate (PEM), from the deployment CA"},
    {"http", "key", 1, "its private key (PEM, 0600)"},
    {"http", "www", 1, "directory of the pages, styles and scripts (read once at start)"},
    {"http", "idle_s", 0, "a session ends after this long without a request (900)"},
    {"http", "session_s", 0, "and at the latest this long after login (1800; the registry's "
                             "session may end it sooner)"},
    {"http", "max_sessions", 0, "sessions held at once, logins and login forms (256)"},
    {"http", "max_body", 0, "largest request body in bytes (16384)"},
    {"http", "max_connections", 0, "connections at once (128)"},
    {"http", "max_per_ip", 0, "connections at once from one address (32)"},
    {"http", "timeout_s", 0, "an idle connection is closed after this (30)"},
    {"monitor", "online_s", 0, "a gateway seen within this is online (30)"},
    {NULL, NULL, 0, NULL},
};

typedef struct monitor {
    cm_svc *svc;
    mon_live *live;
    cm_metric *alerts_in, *alerts_bad;
} monitor;

/* Paho's thread: an alert the archive committed and published. */
static int on_alert(void *ctx, const char *topic, const void *payload, size_t len)
{
    monitor *m = ctx;
    cm_err rc = mon_live_add(m->live, topic, payload, len, cm_now_ms());
    if (rc == CM_OK) {
        cm_metric_inc(m->alerts_in);
    } else {
        cm_metric_inc(m->alerts_bad);
        cm_svc_reject(m->svc, "alert_malformed");
        cm_warn("topic=%.96s error=\"%s alert dropped\"", topic ? topic : "", cm_strerror(rc));
    }
    return 1;
}

int main(int argc, char **argv)
{
    monitor m = {0};
    m.svc = cm_svc_start("monitor", argc, argv, SPEC);
    cm_svc *s = m.svc;
    char err[CM_CONF_ERRLEN];
    long idle_s, session_s, max_sessions, max_body, max_conn, max_ip, timeout_s, online_s;
    cm_conf *c = s->conf;
    if (cm_conf_long(c, "http", "idle_s", 900, 1, 86400, &idle_s, err) ||
        cm_conf_long(c, "http", "session_s", 1800, 1, 86400, &session_s, err) ||
        cm_conf_long(c, "http", "max_sessions", 256, 4, 65536, &max_sessions, err) ||
        cm_conf_long(c, "http", "max_body", 16384, 1024, 1 << 20, &max_body, err) ||
        cm_conf_long(c, "http", "max_connections", 128, 4, 4096, &max_conn, err) ||
        cm_conf_long(c, "http", "max_per_ip", 32, 1, 4096, &max_ip, err) ||
        cm_conf_long(c, "http", "timeout_s", 30, 1, 3600, &timeout_s, err) ||
        cm_conf_long(c, "monitor", "online_s", 30, 1, 86400, &online_s, err))
        cm_svc_die(s, "%s", err);
    cm_mqtt_opts mo = {.clean_session = 1, .max_inflight = 64, .verify_hostname = 1,
                       .on_message = on_alert, .ctx = &m};
    if (cm_mqtt_opts_from_conf(c, "mqtt", s->name, &mo) != CM_OK)
        cm_svc_die(s, "%s: [mqtt] client key unusable", cm_conf_name(c));
    cm_svc_ready(s);

    mon_backend *b = NULL;
    if (mon_backend_new(s, &b, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    cm_audit_out_start(s);
    if (!(m.live = mon_live_new()))
        cm_svc_die(s, "out of memory");
    m.alerts_in = cm_metric_counter(s->metrics, "suido_monitor_alerts_total",
                                    "alerts received on suido/v1/alerts/#");
    m.alerts_bad = cm_metric_counter(s->metrics, "suido_monitor_alerts_malformed_total",
                                     "alert messages that did not decode");
    mon_app_opts ao = {.www = cm_conf_get(c, "http", "www"),
                       .idle_ms = (uint64_t)idle_s * 1000,
                       .absolute_ms = (uint64_t)session_s * 1000,
                       .max_sessions = (size_t)max_sessions,
                       .online_ms = (uint64_t)online_s * 1000};
    mon_app *app = NULL;
    if (mon_app_new(s, b, m.live, &ao, &app, err) != CM_OK)
        cm_svc_die(s, "%s", err);
    mon_http_opts ho = {.bind = cm_conf_get(c, "http", "bind"),
                        .cert_file = cm_conf_get(c, "http", "cert"),
                        .key_file = cm_conf_get(c, "http", "key"),
                        .max_body = (size_t)max_body,
                        .max_connections = (unsigned)max_conn,
                        .max_per_ip = (unsigned)max_ip,
                        .timeout_s = (unsigned)timeout_s,
                        .handler = mon_app_handle,
                        .refusal = mon_app_refusal,
                        .ctx = app};
    mon_http *http = NULL;
    char herr[512];
    if (mon_http_start(&ho, &http, herr) != CM_OK)
        cm_svc_die(s, "%s", herr);
    cm_mqtt *mqtt = NULL;
    if (cm_mqtt_new(&mo, &mqtt) != CM_OK || cm_mqtt_subscribe(mqtt, "suido/v1/alerts/#", 1) ||
        cm_mqtt_connect(mqtt, 0) != CM_OK)
        cm_svc_die(s, "cannot start the MQTT client for %s", mo.uri);
    cm_info("url=https://%s/ event=serving", ho.bind);

    while (!cm_daemon_stopping) {
        mon_http_run(http, 100);
        cm_svc_tick(s);
    }

    cm_info("event=stopping");
    cm_mqtt_destroy(&mqtt);
    mon_http_stop(&http);
    mon_app_destroy(&app);
    mon_backend_destroy(&b);
    mon_live_destroy(&m.live);
    cm_svc_destroy(&m.svc);
    return 0;
}
