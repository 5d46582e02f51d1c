/* cm_err: the one error convention of the suite. Every fallible function in common/ and the
 * services returns cm_err (CM_OK == 0); cm_strerror() names a code for logs and replies.
 * Codes are stable: they travel in RegistryReply.status and in rejection reasons. */
#ifndef CM_ERR_H
#define CM_ERR_H

typedef enum cm_err {
    CM_OK = 0,
    CM_ERR_NOMEM,       /* allocation failed */
    CM_ERR_INVAL,       /* invalid argument or value */
    CM_ERR_IO,          /* file or socket I/O failed */
    CM_ERR_CONFIG,      /* configuration missing or malformed */
    CM_ERR_KEY,         /* key file missing, unreadable, malformed or too open */
    CM_ERR_CRYPTO,      /* a crypto primitive failed */
    CM_ERR_DECODE,      /* message could not be decoded */
    CM_ERR_TOO_BIG,     /* message or field over its limit */
    CM_ERR_SIGNATURE,   /* signature missing or invalid */
    CM_ERR_DECRYPT,     /* envelope could not be decrypted (uniform for every cause) */
    CM_ERR_REPLAY,      /* (gateway, boot epoch, sequence) already seen or going back */
    CM_ERR_STALE,       /* timestamp outside the freshness window */
    CM_ERR_UNKNOWN,     /* unknown gateway, service, channel or key */
    CM_ERR_REVOKED,     /* identity not active (suspended, revoked, disposed) */
    CM_ERR_DENIED,      /* peer or topic not allowed */
    CM_ERR_TIMEOUT,     /* peer did not answer in time */
    CM_ERR_DB,          /* database error */
    CM_ERR_DUPLICATE,   /* record already stored */
    CM_ERR_UNAVAILABLE, /* a required service is unreachable (fail closed) */
    CM_ERR__COUNT
} cm_err;

/* Static, never NULL: a short snake_case name such as "signature". */
const char *cm_strerror(cm_err e);

#endif
