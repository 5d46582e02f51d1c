/* mon_session: see mon_session.h. A fixed table scanned linearly: a few hundred operators'
 * browsers at most, and a scan compares every id in constant time anyway. */
#include "mon_session.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_crypto.h"

struct mon_sessions {
    mon_session *slot;
    size_t max;
    uint64_t idle_ms, absolute_ms, prelogin_ms;
};

mon_sessions *mon_sessions_new(size_t max, uint64_t idle_ms, uint64_t absolute_ms,
                               uint64_t prelogin_ms)
{
    mon_sessions *s = calloc(1, sizeof *s);
    if (!s || !(s->slot = calloc(max ? max : 1, sizeof *s->slot))) {
        free(s);
        return NULL;
    }
    s->max = max ? max : 1;
    s->idle_ms = idle_ms;
    s->absolute_ms = absolute_ms;
    s->prelogin_ms = prelogin_ms;
    return s;
}

void mon_sessions_destroy(mon_sessions **sp)
{
    if (!sp || !*sp)
        return;
    OPENSSL_cleanse((*sp)->slot, (*sp)->max * sizeof *(*sp)->slot);
    free((*sp)->slot);
    free(*sp);
    *sp = NULL;
}

static cm_err random_hex(char out[MON_TOKEN_HEX + 1])
{
    uint8_t b[MON_TOKEN_HEX / 2];
    if (cm_random(b, sizeof b) != CM_OK)
        return CM_ERR_CRYPTO;
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    OPENSSL_cleanse(b, sizeof b);
    return CM_OK;
}

static void wipe(mon_session *x) { OPENSSL_cleanse(x, sizeof *x); }

/* The instant x ends if no request comes: the earlier of idle and absolute. */
static uint64_t end_of(const mon_sessions *s, const mon_session *x)
{
    uint64_t idle = x->last_ms + (x->kind == MON_PRELOGIN ? s->prelogin_ms : s->idle_ms);
    return idle < x->ends_ms ? idle : x->ends_ms;
}

cm_err mon_session_create(mon_sessions *s, mon_session_kind kind, const char *source,
                          uint64_t now_ms, uint64_t token_ends_ms, mon_session **out)
{
    *out = NULL;
    mon_session *free_slot = NULL, *oldest_pre = NULL;
    for (size_t i = 0; i < s->max; i++) {
        mon_session *x = &s->slot[i];
        if (x->kind && now_ms >= end_of(s, x))
            wipe(x); /* ended meanwhile: the slot is free again */
        if (!x->kind) {
            if (!free_slot)
                free_slot = x;
        } else if (x->kind == MON_PRELOGIN &&
                   (!oldest_pre || x->last_ms < oldest_pre->last_ms)) {
            oldest_pre = x;
        }
    }
    mon_session *x = free_slot ? free_slot : oldest_pre;
    if (!x)
        return CM_ERR_UNAVAILABLE;
    wipe(x);
    if (random_hex(x->id) != CM_OK || random_hex(x->csrf) != CM_OK) {
        wipe(x);
        return CM_ERR_CRYPTO;
    }
    x->kind = kind;
    snprintf(x->source, sizeof x->source, "%s", source ? source : "");
    x->created_ms = x->last_ms = now_ms;
    x->ends_ms = now_ms + (kind == MON_PRELOGIN ? s->prelogin_ms : s->absolute_ms);
    if (kind == MON_LIVE && token_ends_ms && token_ends_ms < x->ends_ms)
        x->ends_ms = token_ends_ms;
    *out = x;
    return CM_OK;
}

static int is_token(const char *t)
{
    if (!t || strlen(t) != MON_TOKEN_HEX)
        return 0;
    for (const char *p = t; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

mon_session *mon_session_find(mon_sessions *s, const char *cookie, uint64_t now_ms,
                              const char **expired, char expired_op[65])
{
    if (expired)
        *expired = NULL;
    if (!is_token(cookie))
        return NULL;
    mon_session *found = NULL;
    for (size_t i = 0; i < s->max; i++) {
        mon_session *x = &s->slot[i];
        /* every slot is compared, so the time taken does not depend on which one matches */
        int same = CRYPTO_memcmp(x->id, cookie, MON_TOKEN_HEX) == 0;
        if (same && x->kind)
            found = x;
    }
    if (!found)
        return NULL;
    if (now_ms >= end_of(s, found)) {
        if (expired)
            *expired = now_ms >= found->ends_ms ? "absolute" : "idle";
        if (expired_op)
            snprintf(expired_op, 65, "%s", found->op);
        wipe(found);
        return NULL;
    }
    return found;
}

const mon_session *mon_session_peek(const mon_sessions *s, const char *cookie, uint64_t now_ms)
{
    if (!is_token(cookie))
        return NULL;
    const mon_session *found = NULL;
    for (size_t i = 0; i < s->max; i++) {
        const mon_session *x = &s->slot[i];
        int same = CRYPTO_memcmp(x->id, cookie, MON_TOKEN_HEX) == 0;
        if (same && x->kind == MON_LIVE)
            found = x;
    }
    return found && now_ms < end_of(s, found) ? found : NULL;
}

void mon_session_touch(mon_session *x, uint64_t now_ms)
{
    if (now_ms > x->last_ms)
        x->last_ms = now_ms;
}

int mon_session_csrf_ok(const mon_session *x, const char *token)
{
    return x && is_token(token) && CRYPTO_memcmp(x->csrf, token, MON_TOKEN_HEX) == 0;
}

void mon_session_end(mon_sessions *s, mon_session **x)
{
    (void)s;
    if (!x || !*x)
        return;
    wipe(*x);
    *x = NULL;
}

size_t mon_session_end_operator(mon_sessions *s, const char *op)
{
    size_t n = 0;
    for (size_t i = 0; i < s->max; i++)
        if (s->slot[i].kind == MON_LIVE && strcmp(s->slot[i].op, op) == 0) {
            wipe(&s->slot[i]);
            n++;
        }
    return n;
}

size_t mon_sessions_count(const mon_sessions *s, mon_session_kind kind)
{
    size_t n = 0;
    for (size_t i = 0; i < s->max; i++)
        n += s->slot[i].kind == kind;
    return n;
}

uint64_t mon_session_left_ms(const mon_sessions *s, const mon_session *x, uint64_t now_ms)
{
    uint64_t end = end_of(s, x);
    return end > now_ms ? end - now_ms : 0;
}
