/* cm_daemon: the start-up every suido daemon shares — arguments, config check, signals,
 * privilege drop and no_new_privs — so that main() only wires a service together.
 *
 *   suido-<svc> -c FILE [-n]     -n: load and check the whole configuration, then exit 0/1 */
#ifndef CM_DAEMON_H
#define CM_DAEMON_H
#include <signal.h>
#include "cm_conf.h"
#include "cm_err.h"
#include "cm_metrics_http.h"

typedef struct cm_daemon_args {
    const char *config_path;
    int check_only;
} cm_daemon_args;

/* Parses argv; prints usage and exits 2 on bad arguments. */
void cm_daemon_parse_args(int argc, char **argv, const char *service, cm_daemon_args *out);
/* Loads the config, checks it against spec and initialises logging from [service] log_level.
 * On any problem prints one line "suido-<svc>: <file>:<line>: <reason>" and exits 1. */
cm_conf *cm_daemon_load_config(const char *service, const cm_daemon_args *a,
                               const cm_conf_spec *spec);
/* Exits 1 with "suido-<svc>: <message>" on stderr. */
void cm_daemon_die(const char *service, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
/* SIGINT/SIGTERM set cm_daemon_stopping; SIGPIPE is ignored. */
void cm_daemon_signals(void);
extern volatile sig_atomic_t cm_daemon_stopping;
/* If user is non-empty and we run as root: switch to that user. Always sets no_new_privs. */
cm_err cm_daemon_drop_privileges(const char *user);

/* Config rows every daemon accepts in [service]: name, log_level, state_dir, metrics_file,
 * user, curve_public, curve_secret; and the optional [metrics] endpoint (cm_metrics_http.h).
 * Services append their own rows after these. */
#define CM_DAEMON_SPEC_ROWS                                                                        \
    {"service", "name", 1, "unique service id, equal to its certificate CN"},                      \
        {"service", "log_level", 0, "debug|info|warn|error (info)"},                               \
        {"service", "state_dir", 1, "directory for databases and runtime files"},                  \
        {"service", "metrics_file", 0, "Prometheus text file, rewritten every second"},            \
        {"service", "user", 0, "drop to this user when started as root"},                          \
        {"service", "curve_public", 0, "this service's CURVE public key file"},                    \
        {"service", "curve_secret", 0, "this service's CURVE secret key file (0600)"},             \
        CM_METRICS_HTTP_SPEC_ROWS

#endif
