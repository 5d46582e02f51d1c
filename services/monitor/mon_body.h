/* mon_body: the monitor's decoding of what a request carries besides its route: the query
 * arguments libmicrohttpd hands over, the path, the origin headers and the JSON body. Pure
 * functions (no I/O, no libmicrohttpd), so that the parsing can be tested and fuzzed apart from
 * the server; mon_http and mon_app call them for every request. */
#ifndef MON_BODY_H
#define MON_BODY_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "mon_http.h"

/* Adds one query argument (key klen bytes, value vlen bytes or NULL) to rq. 0 (and args_bad set)
 * for an argument the monitor never takes: an empty or longer than 32 byte name, a value longer
 * than MON_HTTP_MAX_ARG_LEN, a NUL inside either, a repeated name or more than
 * MON_HTTP_MAX_ARGS arguments. The strings are borrowed (they live as long as the request). */
int mon_query_add(mon_request *rq, const char *key, size_t klen, const char *value, size_t vlen);

/* 1 when key is one of the comma-separated names of list. */
int mon_listed(const char *list, const char *key);

/* 1 for a path the monitor may route: "/" then 1..127 of [A-Za-z0-9/._-], no ".." or "//". */
int mon_path_ok(const char *path);

/* 1 when a state-changing request comes from a page of this origin, by its Host, Origin and
 * Sec-Fetch-Site headers (each NULL when absent): a cross-site fetch or an Origin other than
 * https://<Host> is refused; a client that sends neither is left to the CSRF token. */
int mon_same_origin(const char *host, const char *origin, const char *fetch_site);

typedef enum mon_body_status {
    MON_BODY_OK = 0,
    MON_BODY_CONTENT_TYPE, /* not application/json (415) */
    MON_BODY_MALFORMED,    /* not a JSON object, or a key twice (400) */
    MON_BODY_UNKNOWN_FIELD /* a key not in the list (400) */
} mon_body_status;

/* The body (len bytes) as a JSON object with only the keys listed (comma-separated), given the
 * request's Content-Type (NULL when absent). On MON_BODY_OK the caller owns *out
 * (json_decref); otherwise *out is NULL. */
mon_body_status mon_body_object(const char *content_type, const char *body, size_t len,
                                const char *keys, json_t **out);

/* The string member key of o if it is 1..max bytes of text that mon_valid_text accepts, or NULL.
 * Borrowed from o. */
const char *mon_body_text(json_t *o, const char *key, size_t max);

/* The member key of o as an id: a positive JSON integer, or a string of decimal digits in
 * 1..INT64_MAX. 0 for anything else. */
int mon_body_id(json_t *o, const char *key, uint64_t *out);

#endif
