/* mon_app: what the monitor answers: its pages, its JSON API and the rules every request passes.
 *
 * One table (mon_app.c, ROUTES) names each path, its method, the least role that may use it, the
 * query arguments it takes, whether it changes state (then the session's CSRF token must come
 * in the X-CSRF-Token header, from this origin) and its handler: the table is the monitor's
 * attack surface in one place. In order, a request is refused with a 4xx and audited when:
 * the method is not GET, HEAD or POST (405); the body is too large (413); the query is malformed
 * or names an argument the route does not take (400); the path is unknown (404); there is no live
 * session (401, or 303 to /login for a page) — the registry confirms the session on every
 * request, so a logout or a suspension elsewhere counts at once; the role is too low (403); the
 * CSRF token or origin is wrong (403); a value fails its check (400). Only then is the registry
 * or the archive asked anything.
 *
 * Pages are plain HTML, CSS and JavaScript read at start from [http] www (a read-only directory,
 * nothing else served from disk); every dynamic value reaches the page as JSON and is put into
 * the page as text, never as markup. */
#ifndef MON_APP_H
#define MON_APP_H
#include <stdint.h>

#include "cm_svc.h"
#include "mon_backend.h"
#include "mon_http.h"
#include "mon_live.h"

typedef struct mon_app_opts {
    const char *www;          /* directory of the pages and assets */
    uint64_t idle_ms;         /* a session ends after this long without a request */
    uint64_t absolute_ms;     /* and at the latest this long after login */
    size_t max_sessions;
    uint64_t online_ms;       /* a gateway counts as online when seen within this */
} mon_app_opts;

typedef struct mon_app mon_app;

cm_err mon_app_new(cm_svc *svc, mon_backend *b, mon_live *live, const mon_app_opts *o,
                   mon_app **out, char err[CM_CONF_ERRLEN]);
void mon_app_destroy(mon_app **a);

/* mon_http's handler and refusal callbacks (ctx: the mon_app). */
void mon_app_handle(void *ctx, const mon_request *rq, mon_response *rs);
void mon_app_refusal(void *ctx, const char *what);

#endif
