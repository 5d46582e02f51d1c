/* cm_daemon: shared daemon start-up (arguments, config, signals, privileges). */
#include "cm_daemon.h"

#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <grp.h>

#include "cm_log.h"

volatile sig_atomic_t cm_daemon_stopping = 0;

void cm_daemon_die(const char *service, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "suido-%s: ", service);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void cm_daemon_parse_args(int argc, char **argv, const char *service, cm_daemon_args *out)
{
    memset(out, 0, sizeof *out);
    int c;
    while ((c = getopt(argc, argv, "c:nh")) != -1) {
        switch (c) {
        case 'c':
            out->config_path = optarg;
            break;
        case 'n':
            out->check_only = 1;
            break;
        case 'h':
            printf("usage: suido-%s -c CONFIG [-n]\n  -c CONFIG  configuration file\n"
                   "  -n         check the configuration and keys, then exit\n",
                   service);
            exit(0);
        default:
            fprintf(stderr, "usage: suido-%s -c CONFIG [-n]\n", service);
            exit(2);
        }
    }
    if (!out->config_path || optind != argc) {
        fprintf(stderr, "usage: suido-%s -c CONFIG [-n]\n", service);
        exit(2);
    }
}

cm_conf *cm_daemon_load_config(const char *service, const cm_daemon_args *a,
                               const cm_conf_spec *spec)
{
    char err[CM_CONF_ERRLEN];
    cm_conf *c = NULL;
    if (cm_conf_load(a->config_path, &c, err) != CM_OK ||
        cm_conf_check(c, spec, err) != CM_OK) {
        cm_conf_destroy(&c);
        cm_daemon_die(service, "%s", err);
    }
    const char *lvl = cm_conf_get(c, "service", "log_level");
    int level = lvl ? cm_log_level_parse(lvl) : CM_LOG_INFO;
    if (level < 0) {
        int line = cm_conf_line(c, "service", "log_level");
        cm_conf_destroy(&c);
        cm_daemon_die(service, "%s:%d: log_level must be debug, info, warn or error",
                      a->config_path, line);
    }
    const char *name = cm_conf_get(c, "service", "name");
    /* a check (-n) answers in one line: only warnings and errors on the way there */
    if (a->check_only && level < CM_LOG_WARN)
        level = CM_LOG_WARN;
    cm_log_init(name ? name : service, (enum cm_log_level)level);
    return c;
}

static void on_signal(int sig)
{
    (void)sig;
    cm_daemon_stopping = 1;
}

void cm_daemon_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

cm_err cm_daemon_drop_privileges(const char *user)
{
    if (user && *user && geteuid() == 0) {
        struct passwd *pw = getpwnam(user);
        if (!pw) {
            cm_error("user=%s error=\"no such user\"", user);
            return CM_ERR_CONFIG;
        }
        if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
            cm_error("user=%s error=\"%s\"", user, strerror(errno));
            return CM_ERR_IO;
        }
        cm_info("user=%s uid=%u", user, (unsigned)pw->pw_uid);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        cm_error("error=\"no_new_privs: %s\"", strerror(errno));
        return CM_ERR_IO;
    }
    return CM_OK;
}
