/* cm_ratelimit: at most `budget` events per window; the rest are counted, and the count of a
 * window is handed back once, when the next window opens, so the caller can report it in one
 * summary line. For events whose rate an outsider controls (refused handshakes, broker refusals)
 * and that must not flood the audit log. Pure: the caller passes the time. */
#ifndef CM_RATELIMIT_H
#define CM_RATELIMIT_H
#include <stdint.h>

typedef struct cm_ratelimit {
    uint64_t window_ms, window_start_ms;
    uint32_t budget, used;
    uint64_t suppressed; /* in the current window */
} cm_ratelimit;

void cm_ratelimit_init(cm_ratelimit *l, uint64_t window_ms, uint32_t budget);
/* Returns 1 if an event at now_ms may pass, 0 if it is suppressed. *closed_suppressed is the
 * number suppressed in a window that just closed (0 if none). A clock going back opens a new
 * window. */
int cm_ratelimit_take(cm_ratelimit *l, uint64_t now_ms, uint64_t *closed_suppressed);

#endif
