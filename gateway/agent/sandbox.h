/* sandbox: what the field agent gives up once its files are open and its threads run. It needs no
 * privilege at all (it reads its own files, dials out over TCP, opens serial lines its group may
 * use), so it drops every capability it may have been started with (libcap-ng), forbids gaining
 * any back (no_new_privs), and installs a seccomp filter (libseccomp) that kills the process on
 * system calls a gateway has no use for: running programs, tracing, mounting, loading kernel code,
 * rebooting, changing identity. A deny-list rather than an allow-list: the C library, Paho,
 * OpenSSL and libmodbus may use any ordinary call, and a field box must not die on the next
 * library update; what is denied is what an attacker inside the process would need next. */
#ifndef AGENT_SANDBOX_H
#define AGENT_SANDBOX_H

/* 0 when every step took; -1 with why (a line for the log) otherwise. */
int sandbox_enter(char *why, unsigned long len);

#endif
