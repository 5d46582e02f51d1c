/* sandbox: capabilities dropped, no new privileges, a seccomp deny-list (see sandbox.h). */
#include "sandbox.h"

#include <cap-ng.h>
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

/* Calls the agent never makes and an intruder would want. (A build with AddressSanitizer keeps
 * ptrace: its leak check at exit stops the process's threads with it.) */
#if defined(__SANITIZE_ADDRESS__)
#define PTRACE_DENIED
#else
#define PTRACE_DENIED "ptrace",
#endif
static const char *const DENIED[] = {
    "execve",        "execveat",        "fork",           "vfork",        PTRACE_DENIED
    "process_vm_readv", "process_vm_writev", "mount",     "umount2",      "pivot_root",
    "chroot",        "unshare",         "setns",          "init_module",  "finit_module",
    "delete_module", "kexec_load",      "kexec_file_load", "reboot",      "swapon",
    "swapoff",       "bpf",             "perf_event_open", "keyctl",      "add_key",
    "request_key",   "setuid",          "setgid",         "setreuid",     "setregid",
    "setresuid",     "setresgid",       "setgroups",      "settimeofday", "clock_settime",
    "acct",          "quotactl",        "iopl",           "ioperm",       "open_by_handle_at",
    "userfaultfd",   "personality",
};

int sandbox_enter(char *why, unsigned long len)
{
    /* capabilities: none, in every set, also across any exec (there is none) */
    capng_clear(CAPNG_SELECT_BOTH);
    if (capng_apply(CAPNG_SELECT_BOTH) != 0) {
        snprintf(why, len, "cannot drop capabilities");
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        snprintf(why, len, "no_new_privs: %s", strerror(errno));
        return -1;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
        snprintf(why, len, "seccomp_init failed");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof DENIED / sizeof DENIED[0]; i++) {
        int nr = seccomp_syscall_resolve_name(DENIED[i]);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not a call on this architecture */
        rc = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, nr, 0);
        if (rc != 0)
            snprintf(why, len, "seccomp rule for %s: %s", DENIED[i], strerror(-rc));
    }
    /* threads already run (Paho's, the device pollers'): the filter goes on all of them */
    if (rc == 0 && (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) != 0)
        snprintf(why, len, "seccomp thread sync: %s", strerror(-rc));
    if (rc == 0 && (rc = seccomp_load(ctx)) != 0)
        snprintf(why, len, "seccomp_load: %s", strerror(-rc));
    seccomp_release(ctx);
    return rc == 0 ? 0 : -1;
}
