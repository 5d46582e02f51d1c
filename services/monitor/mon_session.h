/* mon_session: the monitor's browser sessions, in memory only.
 *
 * A browser holds one random 256-bit session id (cookie, HttpOnly, Secure, SameSite=Strict); the
 * monitor maps it to the operator, the role and the registry's session token, which never leaves
 * the monitor. Every session has its own random CSRF token (synchronizer token): each request
 * that changes state must present it. A session ends on logout, after idle_ms without a request,
 * at the latest absolute_ms after login or when the registry's token expires, whichever comes
 * first.
 *
 * Before login, a browser gets a short-lived pre-login session (prelogin_ms), only so that the
 * login form itself carries a CSRF token; a successful login always makes a new session (a
 * session id planted before login is never promoted). When the table is full, the oldest
 * pre-login session makes room; live sessions are never evicted (login is then refused).
 *
 * Ids and tokens are compared in constant time; ended sessions are wiped. Not thread-safe: the
 * monitor serves HTTP from one thread. */
#ifndef MON_SESSION_H
#define MON_SESSION_H
#include <stddef.h>
#include <stdint.h>

#include "cm_err.h"

#define MON_TOKEN_HEX 64 /* a session id or CSRF token: 32 random bytes as lowercase hex */

typedef enum mon_session_kind { MON_PRELOGIN = 1, MON_LIVE } mon_session_kind;

typedef struct mon_session {
    mon_session_kind kind;       /* 0: free slot */
    char id[MON_TOKEN_HEX + 1];  /* the cookie's value */
    char csrf[MON_TOKEN_HEX + 1];
    char op[65];                 /* MON_LIVE: the operator */
    char role[16];               /* MON_LIVE: "viewer", "operator", "admin" */
    char token[65];              /* MON_LIVE: the registry's session token */
    char source[64];             /* the client's address when the session was made */
    uint64_t created_ms, last_ms;
    uint64_t ends_ms;            /* absolute end (login + absolute_ms, or the token's expiry) */
} mon_session;

typedef struct mon_sessions mon_sessions;

/* A table of at most max sessions. NULL when out of memory. */
mon_sessions *mon_sessions_new(size_t max, uint64_t idle_ms, uint64_t absolute_ms,
                               uint64_t prelogin_ms);
void mon_sessions_destroy(mon_sessions **s);

/* A new session of that kind with fresh random id and CSRF token. For MON_LIVE, token_ends_ms
 * (the registry token's expiry, 0: none) caps the absolute end. CM_ERR_UNAVAILABLE when the table
 * is full of live sessions, CM_ERR_CRYPTO when no randomness. *out is borrowed from the table. */
cm_err mon_session_create(mon_sessions *s, mon_session_kind kind, const char *source,
                          uint64_t now_ms, uint64_t token_ends_ms, mon_session **out);

/* The session whose id is cookie (64 hex characters), or NULL. A session found past its idle or
 * absolute end is ended here: NULL, and *expired (if not NULL) says "idle" or "absolute" and
 * expired_op gets its operator (for the audit log); otherwise *expired is NULL. Does not count
 * as activity (see mon_session_touch). */
mon_session *mon_session_find(mon_sessions *s, const char *cookie, uint64_t now_ms,
                              const char **expired, char expired_op[65]);
/* The live, unexpired session whose id is cookie, or NULL; changes nothing (no expiry handling,
 * no activity). */
const mon_session *mon_session_peek(const mon_sessions *s, const char *cookie, uint64_t now_ms);
/* Records activity at now_ms (the idle timer starts again). */
void mon_session_touch(mon_session *x, uint64_t now_ms);
/* 1 when token is the session's CSRF token (constant time), else 0. */
int mon_session_csrf_ok(const mon_session *x, const char *token);
/* Ends the session: wiped, slot freed, *x NULL. */
void mon_session_end(mon_sessions *s, mon_session **x);
/* Ends every live session of operator op; returns how many. */
size_t mon_session_end_operator(mon_sessions *s, const char *op);
/* Sessions in use of that kind. */
size_t mon_sessions_count(const mon_sessions *s, mon_session_kind kind);
/* Seconds until x ends if it stays idle (for the page's countdown). */
uint64_t mon_session_left_ms(const mon_sessions *s, const mon_session *x, uint64_t now_ms);

#endif
