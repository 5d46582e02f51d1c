/* cm_net: listening TCP sockets for the HTTPS endpoints (cm_metrics_http, the monitor's console).
 *
 * An address is HOST:PORT, [IPV6]:PORT or *:PORT. HOST may be a name: it is resolved and each
 * address it resolves to is tried in turn, the first that binds is kept. In compose a network
 * alias resolves to the addresses on that network only, of which the container's own is the one
 * that binds, so naming the network binds the endpoint there and on no other network the
 * container is on (compose/README.md). "*" (or an empty HOST) is every address. */
#ifndef CM_NET_H
#define CM_NET_H
#include <stddef.h>

#define CM_NET_HOSTLEN 256
#define CM_NET_PORTLEN 8

/* Splits "HOST:PORT" / "[V6]:PORT" / "*:PORT" into host ("" for every address) and port
 * (1-65535, decimal text). Returns 0, or -1 when v is not of that form. */
int cm_net_split(const char *v, char host[CM_NET_HOSTLEN], char port[CM_NET_PORTLEN]);

/* A TCP socket listening (backlog) on the first address of host:port (host "" or NULL: every
 * address) that binds; SO_REUSEADDR, close-on-exec, non-blocking. Returns the descriptor, which
 * is the caller's to close (or to hand to a server that closes it), or -1 with the reason in err
 * (resolution failed, or the last address's bind or listen error). */
int cm_net_listen(const char *host, const char *port, int backlog, char *err, size_t errlen);

#endif
