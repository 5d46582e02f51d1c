/* cm_time: clocks. Wall-clock milliseconds for timestamps, monotonic for intervals. */
#ifndef CM_TIME_H
#define CM_TIME_H
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* How far ahead of this host's clock a gateway's timestamp may be before it is taken for a
 * wrong clock rather than drift (gateways are NTP-synced): verify refuses such messages and
 * readings, the gate and the anomaly shards ignore such readings, so that one of them can never
 * hold their "latest value" until the clock catches up. */
#define CM_MAX_AHEAD_MS 10000u

static inline uint64_t cm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t cm_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ms as "YYYY-MM-DDTHH:MM:SSZ" (UTC) into out (at least 21 bytes). */
static inline void cm_time_iso(uint64_t ms, char *out, size_t len)
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "%llu", (unsigned long long)ms);
}

static inline uint64_t cm_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
#endif
