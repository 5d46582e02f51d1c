/* cm_err: names of the suite's error codes. */
#include "cm_err.h"

static const char *const names[CM_ERR__COUNT] = {
    [CM_OK] = "ok",
    [CM_ERR_NOMEM] = "out_of_memory",
    [CM_ERR_INVAL] = "invalid",
    [CM_ERR_IO] = "io",
    [CM_ERR_CONFIG] = "config",
    [CM_ERR_KEY] = "key",
    [CM_ERR_CRYPTO] = "crypto",
    [CM_ERR_DECODE] = "decode",
    [CM_ERR_TOO_BIG] = "too_big",
    [CM_ERR_SIGNATURE] = "signature",
    [CM_ERR_DECRYPT] = "decrypt",
    [CM_ERR_REPLAY] = "replay",
    [CM_ERR_STALE] = "stale",
    [CM_ERR_UNKNOWN] = "unknown",
    [CM_ERR_REVOKED] = "revoked",
    [CM_ERR_DENIED] = "denied",
    [CM_ERR_TIMEOUT] = "timeout",
    [CM_ERR_DB] = "database",
    [CM_ERR_DUPLICATE] = "duplicate",
    [CM_ERR_UNAVAILABLE] = "unavailable",
};

const char *cm_strerror(cm_err e)
{
    if ((unsigned)e >= CM_ERR__COUNT || !names[e])
        return "unknown_error";
    return names[e];
}
