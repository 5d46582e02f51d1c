/* cm_log: one-line logs, "ts level service func key=value ...", to stderr.
 * Secrets are never logged; callers pass paths and identifiers only. Thread-safe (one write(2)
 * per line). */
#ifndef CM_LOG_H
#define CM_LOG_H

#include <stddef.h>

enum cm_log_level { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR };

/* Sets the service name printed on every line; the string is copied. */
void cm_log_init(const char *service, enum cm_log_level min_level);
/* Parses "debug", "info", "warn", "error"; returns -1 on anything else. */
int cm_log_level_parse(const char *s);
void cm_log_write(enum cm_log_level level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies src (NULL: "") into dst (size n >= 1) so that it can stand inside a quoted value of a
 * log line or an audit detail (key="..."): '"' and '\\' are escaped with a backslash, control
 * characters and bytes outside ASCII become \xHH, so operator or gateway text can neither close
 * the value, forge another key=value, nor start a new line. Output that does not fit is cut
 * before a whole character or escape, never inside one. Returns dst. */
char *cm_log_escape(char *dst, size_t n, const char *src);

#define cm_debug(...) cm_log_write(CM_LOG_DEBUG, __func__, __VA_ARGS__)
#define cm_info(...) cm_log_write(CM_LOG_INFO, __func__, __VA_ARGS__)
#define cm_warn(...) cm_log_write(CM_LOG_WARN, __func__, __VA_ARGS__)
#define cm_error(...) cm_log_write(CM_LOG_ERROR, __func__, __VA_ARGS__)

#endif
