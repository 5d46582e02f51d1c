/* Fuzz target: what the monitor decodes from an HTTPS request (services/monitor/mon_body.c):
 * the query arguments as libmicrohttpd hands them over, the path, the origin headers and the
 * JSON bodies of the login and alert requests, with the member checks their handlers apply
 * (mon_app.c on_login, alert_change) and the text checks of mon_text.c. libmicrohttpd's own
 * HTTP parsing is not ours and not fuzzed here.
 *
 * Input: four lines (Content-Type, path, query "k=v&k=v", "Host|Origin|Sec-Fetch-Site"), then
 * the body. A missing line is an absent header. */
#include <stdio.h>

#include "fuzz_util.h"
#include "mon_body.h"
#include "mon_text.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

/* The next line of *p (its '\n' replaced by a NUL), or NULL at the end. */
static char *next_line(char **p, char *end)
{
    if (*p >= end)
        return NULL;
    char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl)
        return NULL;
    *nl = '\0';
    *p = nl + 1;
    return s;
}

static void query(char *q)
{
    mon_request rq = {0};
    /* as libmicrohttpd splits it: '&' between arguments, the first '=' ends the name */
    for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        if (eq)
            *eq = '\0';
        if (!mon_query_add(&rq, kv, strlen(kv), eq ? eq + 1 : NULL, eq ? strlen(eq + 1) : 0))
            break;
    }
    if (rq.args_bad && rq.n_args > MON_HTTP_MAX_ARGS)
        abort();
    for (size_t i = 0; i < rq.n_args; i++) {
        (void)mon_listed("gateway,channel,span,before,after,id,all,from,to", rq.args[i].key);
        uint64_t u;
        (void)mon_parse_u64(rq.args[i].value, 1, INT64_MAX, &u);
        (void)mon_parse_date(rq.args[i].value, &u);
        (void)mon_valid_gateway(rq.args[i].value);
        (void)mon_valid_channel(rq.args[i].value);
    }
}

static void login(const char *ct, const char *body, size_t len)
{
    json_t *j = NULL;
    if (mon_body_object(ct, body, len, "operator,password,totp", &j) != MON_BODY_OK)
        return;
    json_t *pw = json_object_get(j, "password");
    const char *op = json_string_value(json_object_get(j, "operator"));
    const char *totp = json_string_value(json_object_get(j, "totp"));
    if (mon_valid_operator(op) && json_is_string(pw) &&
        mon_valid_password(json_string_value(pw), json_string_length(pw), 256))
        (void)mon_valid_totp(totp);
    char safe[128];
    mon_safe(safe, sizeof safe, op ? op : "");
    json_decref(j);
}

static void alert_change(const char *ct, const char *body, size_t len)
{
    json_t *j = NULL;
    if (mon_body_object(ct, body, len, "case_id,cause,action", &j) != MON_BODY_OK)
        return;
    uint64_t id = 0;
    const char *cause = mon_body_text(j, "cause", 500);
    const char *action = mon_body_text(j, "action", 500);
    if (mon_body_id(j, "case_id", &id) && cause && action) {
        char ca[520], ac[520], csv[1200];
        size_t pos = 0;
        mon_safe(ca, sizeof ca, cause);
        mon_safe(ac, sizeof ac, action);
        (void)mon_csv_text(csv, sizeof csv, &pos, cause, 1);
        (void)mon_csv_text(csv, sizeof csv, &pos, action, 0);
        if (id == 0 || id > INT64_MAX)
            abort();
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *t = fuzz_text(data, size);
    if (!t)
        return 0;
    char *p = t, *end = t + size;
    char *ct = next_line(&p, end);
    char *path = ct ? next_line(&p, end) : NULL;
    char *q = path ? next_line(&p, end) : NULL;
    char *hdrs = q ? next_line(&p, end) : NULL;
    if (path)
        (void)mon_path_ok(path);
    if (q)
        query(q);
    if (hdrs) {
        char *origin = strchr(hdrs, '|'), *site = NULL;
        if (origin) {
            *origin++ = '\0';
            if ((site = strchr(origin, '|')))
                *site++ = '\0';
        }
        (void)mon_same_origin(*hdrs ? hdrs : NULL, origin, site);
    }
    /* the body is whatever follows; without the header lines, the whole input as the body */
    const char *body = hdrs ? p : (const char *)data;
    size_t blen = hdrs ? (size_t)(end - p) : size;
    const char *type = ct && hdrs ? ct : "application/json";
    login(type, body, blen);
    alert_change(type, body, blen);
    free(t);
    return 0;
}
