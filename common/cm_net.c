/* cm_net: see cm_net.h. */
#include "cm_net.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int cm_net_split(const char *v, char host[CM_NET_HOSTLEN], char port[CM_NET_PORTLEN])
{
    const char *colon = v ? strrchr(v, ':') : NULL;
    if (!colon || colon == v || strlen(colon + 1) == 0 || strlen(colon + 1) > 5)
        return -1;
    size_t hl = (size_t)(colon - v);
    if (v[0] == '[') {
        if (hl < 3 || v[hl - 1] != ']')
            return -1;
        v++;
        hl -= 2;
    }
    if (hl >= CM_NET_HOSTLEN)
        return -1;
    snprintf(host, CM_NET_HOSTLEN, "%.*s", (int)hl, v);
    if (strcmp(host, "*") == 0)
        host[0] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 1 || p > 65535)
        return -1;
    snprintf(port, CM_NET_PORTLEN, "%ld", p);
    return 0;
}

int cm_net_listen(const char *host, const char *port, int backlog, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    const char *h = host && *host ? host : NULL;
    int fd = -1, e = 0;
    if ((e = getaddrinfo(h, port, &hints, &ai)) != 0) {
        snprintf(err, errlen, "%s:%s: cannot resolve: %s", h ? h : "*", port, gai_strerror(e));
        return -1;
    }
    e = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        snprintf(err, errlen, "%s:%s: cannot listen: %s", h ? h : "*", port,
                 strerror(e ? e : EADDRNOTAVAIL));
    return fd;
}
