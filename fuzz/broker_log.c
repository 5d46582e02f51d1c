/* Fuzz target: the broker log line classifier (services/ingest/broker_log.c). The lines are
 * Mosquitto's own, but they quote client ids, usernames and addresses chosen by anyone who can
 * reach the broker. */
#include "broker_log.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exactly len bytes, not NUL-terminated, as the MQTT payload arrives */
    char *line = malloc(size ? size : 1);
    if (!line)
        return 0;
    memcpy(line, data, size);
    broker_event ev;
    if (broker_log_classify(line, size, &ev)) {
        if (!ev.event || strnlen(ev.subject, sizeof ev.subject) == sizeof ev.subject ||
            strnlen(ev.detail, sizeof ev.detail) == sizeof ev.detail)
            abort(); /* the event's strings are always terminated */
        for (const char *p = ev.detail; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == '"')
                abort(); /* control characters and quotes are replaced (broker_log.h) */
    }
    free(line);
    return 0;
}
