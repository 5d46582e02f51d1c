/* persist_check: see persist_check.h. */
#include "persist_check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static const uint8_t MAGIC[15] = {0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u',
                                  'i',  't',  't',  'o', ' ', 'd', 'b'};
#define FILE_HEADER_LEN (15 + 4 + 4) /* magic, checksum field, version */
#define CHUNK_HEADER_LEN 8

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* f is positioned at 0; size is its length (> 0). */
static int check_stream(FILE *f, uint64_t size, char *why, size_t whylen)
{
    uint8_t h[FILE_HEADER_LEN];
    size_t got = fread(h, 1, sizeof h, f);
    if (got < sizeof MAGIC || memcmp(h, MAGIC, sizeof MAGIC) != 0) {
        snprintf(why, whylen, "not a Mosquitto persistence file (magic)");
        return PERSIST_DAMAGED;
    }
    if (got < sizeof h) {
        snprintf(why, whylen, "cut short in the file header (%zu bytes)", got);
        return PERSIST_DAMAGED;
    }
    uint32_t version = be32(h + 19);
    if (version < 2 || version > 6) {
        snprintf(why, whylen, "format version %" PRIu32 " (Mosquitto restores 2 to 6)", version);
        return PERSIST_DAMAGED;
    }
    if (version < 5)
        return PERSIST_OK; /* older chunk headers: left to Mosquitto */
    uint64_t at = sizeof h;
    uint8_t ch[CHUNK_HEADER_LEN];
    while (size - at >= CHUNK_HEADER_LEN) {
        if (fread(ch, 1, sizeof ch, f) != sizeof ch) {
            snprintf(why, whylen, "read failed at byte %" PRIu64, at);
            return PERSIST_UNREADABLE;
        }
        uint32_t type = be32(ch), clen = be32(ch + 4);
        uint64_t body = at + CHUNK_HEADER_LEN;
        if (clen > size - body) {
            snprintf(why, whylen,
                     "cut short: chunk of type %" PRIu32 " at byte %" PRIu64 " declares %" PRIu32
                     " bytes, %" PRIu64 " are left",
                     type, at, clen, size - body);
            return PERSIST_DAMAGED;
        }
        at = body + clen;
        if (fseeko(f, (off_t)at, SEEK_SET) != 0) {
            snprintf(why, whylen, "seek failed at byte %" PRIu64 ": %s", at, strerror(errno));
            return PERSIST_UNREADABLE;
        }
    }
    return PERSIST_OK;
}

int persist_check_file(const char *path, char *why, size_t whylen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return PERSIST_OK;
        snprintf(why, whylen, "%s", strerror(errno));
        return PERSIST_UNREADABLE;
    }
    struct stat st;
    int rc;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "not a regular file");
        rc = PERSIST_UNREADABLE;
    } else if (st.st_size == 0) {
        rc = PERSIST_OK; /* Mosquitto warns and starts empty */
    } else {
        rc = check_stream(f, (uint64_t)st.st_size, why, whylen);
    }
    fclose(f);
    return rc;
}
