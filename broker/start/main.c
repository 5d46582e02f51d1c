/* suido-broker-start: starts Mosquitto on a deployment's configuration once the persistence file
 * it would restore is whole.
 *
 *   suido-broker-start MOSQUITTO_CONF [MOSQUITTO_BINARY]     (binary: "mosquitto" on PATH)
 *
 * Mosquitto 2.0.11 killed while its persistence disk is full leaves the file cut short and then
 * refuses to start at all ("Couldn't open database"), so a supervisor restarting it loops for
 * ever. This reads `persistence`, `persistence_location` and `persistence_file` from the
 * configuration file (the main file only; suido's broker/mkconf.sh writes them there) and checks
 * that file (persist_check.h). A damaged file is renamed `<file>.damaged-<UTC time>`, kept for
 * inspection, with an error line carrying alarm=1, and the broker starts with empty persistence:
 * the sessions and queued messages it held are gone from the broker, and the gateways resend
 * from their outboxes whatever the archive has not acknowledged (nothing acknowledged end to end
 * lived only in the broker). An unreadable file is left alone and the start fails (exit 1): that
 * needs an operator. Then the process replaces itself with Mosquitto (exec: same PID, signals go
 * straight to the broker). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cm_log.h"
#include "persist_check.h"

typedef struct persistence {
    int on;
    char location[4096], file[256];
} persistence;

/* The three persistence keys of a Mosquitto configuration file (later lines win, as in
 * Mosquitto). Returns 0, or -1 when the file cannot be read. */
static int read_conf(const char *path, persistence *p)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cm_error("conf=%s error=\"%s\"", path, strerror(errno));
        return -1;
    }
    snprintf(p->file, sizeof p->file, "mosquitto.db");
    char line[4400];
    while (fgets(line, sizeof line, f)) {
        char key[64], value[4300];
        if (line[0] == '#' || sscanf(line, "%63s %4299[^\r\n]", key, value) != 2)
            continue;
        if (strcmp(key, "persistence") == 0)
            p->on = strcmp(value, "true") == 0;
        else if (strcmp(key, "persistence_location") == 0)
            snprintf(p->location, sizeof p->location, "%s", value);
        else if (strcmp(key, "persistence_file") == 0)
            snprintf(p->file, sizeof p->file, "%s", value);
    }
    fclose(f);
    return 0;
}

/* Checks the persistence file and sets a damaged one aside. Returns 0 when the broker may start. */
static int prepare_persistence(const persistence *p)
{
    if (!p->on)
        return 0;
    char path[4400], why[200] = "";
    /* Mosquitto joins the two as they are (the location ends in '/') */
    snprintf(path, sizeof path, "%s%s", p->location, p->file);
    int rc = persist_check_file(path, why, sizeof why);
    if (rc == PERSIST_OK)
        return 0;
    if (rc == PERSIST_UNREADABLE) {
        cm_error("path=%s error=\"persistence file unreadable: %s\" alarm=1", path, why);
        return -1;
    }
    char stamp[32], aside[4500];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(aside, sizeof aside, "%s.damaged-%s", path, stamp);
    if (rename(path, aside) != 0) {
        cm_error("path=%s error=\"persistence file damaged (%s) and cannot be set aside: %s\" "
                 "alarm=1",
                 path, why, strerror(errno));
        return -1;
    }
    cm_error("path=%s kept_as=%s reason=\"%s\" event=broker_persistence_set_aside alarm=1 "
             "detail=\"the broker starts without its saved sessions and queued messages; "
             "gateways resend what is not acknowledged\"",
             path, aside, why);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || argv[1][0] == '-') {
        fprintf(stderr, "usage: suido-broker-start MOSQUITTO_CONF [MOSQUITTO_BINARY]\n");
        return 2;
    }
    cm_log_init("broker-start", CM_LOG_INFO);
    persistence p = {0};
    if (read_conf(argv[1], &p) != 0 || prepare_persistence(&p) != 0)
        return 1;
    const char *bin = argc == 3 ? argv[2] : "mosquitto";
    char *const args[] = {(char *)bin, "-c", argv[1], NULL};
    execvp(bin, args);
    cm_error("binary=%s error=\"cannot start the broker: %s\"", bin, strerror(errno));
    return 1;
}
