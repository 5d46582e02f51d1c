/* suido-keygen: writes a ZeroMQ CURVE keypair for one service.
 *
 *   suido-keygen curve PREFIX     -> PREFIX.pub (Z85, 0644) and PREFIX.key (Z85, 0600)
 *
 * Used by keys/mkpki.sh. The secret key file is created with O_EXCL and mode 0600 so it is never
 * readable by others, not even for a moment. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static int write_key(const char *path, const char *z85, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "suido-keygen: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[48];
    int n = snprintf(line, sizeof line, "%s\n", z85);
    int ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    if (close(fd) != 0 || !ok) {
        fprintf(stderr, "suido-keygen: %s: write failed\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "curve") != 0) {
        fprintf(stderr, "usage: suido-keygen curve PREFIX\n");
        return 2;
    }
    char pub[41], sec[41], path[4096];
    if (zmq_curve_keypair(pub, sec) != 0) {
        fprintf(stderr, "suido-keygen: zmq_curve_keypair: %s\n", zmq_strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s.key", argv[2]);
    if (write_key(path, sec, 0600) != 0)
        return 1;
    snprintf(path, sizeof path, "%s.pub", argv[2]);
    if (write_key(path, pub, 0644) != 0)
        return 1;
    memset(sec, 0, sizeof sec);
    return 0;
}
