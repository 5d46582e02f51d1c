/* cm_ratelimit: see cm_ratelimit.h. */
#include "cm_ratelimit.h"

#include <string.h>

void cm_ratelimit_init(cm_ratelimit *l, uint64_t window_ms, uint32_t budget)
{
    memset(l, 0, sizeof *l);
    l->window_ms = window_ms ? window_ms : 1;
    l->budget = budget;
}

int cm_ratelimit_take(cm_ratelimit *l, uint64_t now_ms, uint64_t *closed_suppressed)
{
    *closed_suppressed = 0;
    if (now_ms >= l->window_start_ms + l->window_ms || now_ms < l->window_start_ms) {
        *closed_suppressed = l->suppressed;
        l->window_start_ms = now_ms;
        l->used = 0;
        l->suppressed = 0;
    }
    if (l->used < l->budget) {
        l->used++;
        return 1;
    }
    l->suppressed++;
    return 0;
}
