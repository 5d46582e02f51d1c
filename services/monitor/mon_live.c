/* mon_live: see mon_live.h. */
#include "mon_live.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suido.pb-c.h"

struct mon_live {
    pthread_mutex_t lock;
    mon_live_alert ring[MON_LIVE_MAX];
    uint64_t next_seq; /* number of the next alert kept */
};

mon_live *mon_live_new(void)
{
    mon_live *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pthread_mutex_init(&l->lock, NULL);
    l->next_seq = 1;
    return l;
}

void mon_live_destroy(mon_live **lp)
{
    if (!lp || !*lp)
        return;
    pthread_mutex_destroy(&(*lp)->lock);
    free(*lp);
    *lp = NULL;
}

static void copy(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

cm_err mon_live_add(mon_live *l, const char *topic, const void *payload, size_t len,
                    uint64_t now_ms)
{
    static const char prefix[] = "suido/v1/alerts/";
    if (!topic || strncmp(topic, prefix, sizeof prefix - 1) != 0 || len > 64 * 1024)
        return CM_ERR_INVAL;
    Suido__Alert *a = suido__alert__unpack(NULL, len, payload);
    if (!a)
        return CM_ERR_DECODE;
    cm_err rc = CM_OK;
    if (!a->id || !*a->id || strlen(a->id) >= sizeof ((mon_live_alert *)0)->id) {
        rc = CM_ERR_INVAL;
        goto out;
    }
    pthread_mutex_lock(&l->lock);
    mon_live_alert *x = &l->ring[l->next_seq % MON_LIVE_MAX];
    memset(x, 0, sizeof *x);
    x->seq = l->next_seq++;
    x->received_ms = now_ms;
    copy(x->id, sizeof x->id, a->id);
    copy(x->gateway, sizeof x->gateway, a->gateway_id);
    copy(x->site, sizeof x->site, a->site);
    copy(x->channel, sizeof x->channel, a->channel);
    copy(x->rule, sizeof x->rule, a->rule);
    x->severity = (int)a->severity;
    x->value = a->value;
    x->limit = a->limit;
    x->ts_ms = a->timestamp_ms;
    x->cleared = a->cleared;
    copy(x->evidence, sizeof x->evidence, a->evidence);
    for (size_t i = 0; i < a->n_past_cases && x->n_past < MON_LIVE_PAST; i++)
        copy(x->past[x->n_past++], sizeof x->past[0], a->past_cases[i]);
    pthread_mutex_unlock(&l->lock);
out:
    suido__alert__free_unpacked(a, NULL);
    return rc;
}

size_t mon_live_since(mon_live *l, uint64_t after, mon_live_alert *out, size_t max,
                      uint64_t *last)
{
    size_t n = 0;
    pthread_mutex_lock(&l->lock);
    uint64_t newest = l->next_seq - 1;
    uint64_t oldest = newest >= MON_LIVE_MAX ? newest - MON_LIVE_MAX + 1 : 1;
    uint64_t from = after + 1 > oldest ? after + 1 : oldest;
    /* a page that asks for more than fit gets the newest ones */
    if (newest >= from && newest - from + 1 > max)
        from = newest - max + 1;
    for (uint64_t s = from; s <= newest && n < max; s++)
        out[n++] = l->ring[s % MON_LIVE_MAX];
    *last = newest;
    pthread_mutex_unlock(&l->lock);
    return n;
}
