/* ctl_msg: suidoctl's one way of telling the operator why something failed. */
#ifndef SUIDOCTL_CTL_MSG_H
#define SUIDOCTL_CTL_MSG_H

/* Prints "suidoctl: <message>" and a newline on stderr; returns 1 (the failure exit code), so a
 * caller can `return ctl_say(...)`. */
int ctl_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
