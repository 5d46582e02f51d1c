/* mon_body: see mon_body.h. */
#include "mon_body.h"

#include <stdint.h>
#include <string.h>

#include "mon_text.h"

int mon_query_add(mon_request *rq, const char *key, size_t klen, const char *value, size_t vlen)
{
    int dup = 0;
    for (size_t i = 0; key && i < rq->n_args; i++)
        dup |= strcmp(rq->args[i].key, key) == 0;
    if (!key || klen == 0 || klen > 32 || strlen(key) != klen || vlen > MON_HTTP_MAX_ARG_LEN ||
        (value && strlen(value) != vlen) || rq->n_args == MON_HTTP_MAX_ARGS || dup) {
        rq->args_bad = 1;
        return 0;
    }
    rq->args[rq->n_args].key = key;
    rq->args[rq->n_args].value = value ? value : "";
    rq->n_args++;
    return 1;
}

int mon_listed(const char *list, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == kl && strncmp(p, key, n) == 0)
            return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

int mon_path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > 128 || p[0] != '/')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
              (p[i] >= '0' && p[i] <= '9') || strchr("/._-", p[i])))
            return 0;
    return strstr(p, "..") == NULL && strstr(p, "//") == NULL;
}

int mon_same_origin(const char *host, const char *origin, const char *site)
{
    if (site && strcmp(site, "same-origin") != 0)
        return 0;
    if (!origin)
        return 1; /* not every client sends it; the token decides */
    return host && strncmp(origin, "https://", 8) == 0 && strcmp(origin + 8, host) == 0;
}

mon_body_status mon_body_object(const char *ct, const char *body, size_t len, const char *keys,
                                json_t **out)
{
    *out = NULL;
    if (!ct || strncmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';'))
        return MON_BODY_CONTENT_TYPE;
    json_error_t e;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return MON_BODY_MALFORMED;
    }
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        (void)v;
        if (!mon_listed(keys, k)) {
            json_decref(j);
            return MON_BODY_UNKNOWN_FIELD;
        }
    }
    *out = j;
    return MON_BODY_OK;
}

const char *mon_body_text(json_t *o, const char *key, size_t max)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return NULL;
    const char *s = json_string_value(v);
    return mon_valid_text(s, json_string_length(v), max) ? s : NULL;
}

int mon_body_id(json_t *o, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *out = (uint64_t)json_integer_value(v);
        return 1;
    }
    return json_is_string(v) && mon_parse_u64(json_string_value(v), 1, INT64_MAX, out);
}
