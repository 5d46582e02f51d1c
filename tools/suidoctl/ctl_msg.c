/* ctl_msg: see ctl_msg.h. */
#include "ctl_msg.h"

#include <stdarg.h>
#include <stdio.h>

int ctl_say(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "suidoctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}
