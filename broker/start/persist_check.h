/* persist_check: whether Mosquitto 2.0 could restore its persistence file, judged without
 * starting it.
 *
 * Mosquitto refuses to start ("Couldn't open database") when the file it saved is cut short, as a
 * full disk or a crash during a save leaves it, and a supervisor restarting it then loops for
 * ever. The check follows what Mosquitto's restore reads: an empty file is fine (Mosquitto warns
 * and starts empty); otherwise the 15-byte magic, a 4-byte checksum field, a big-endian format
 * version (2 to 6 are restored), and for versions 5 and 6 a run of chunks, each an 8-byte
 * big-endian header (type, length) and length bytes: a chunk whose body runs past the end of
 * the file is the cut. A header cut short at the very end is what Mosquitto itself stops at
 * quietly, so it passes. Bodies are not parsed. */
#ifndef PERSIST_CHECK_H
#define PERSIST_CHECK_H
#include <stddef.h>

enum { PERSIST_OK = 0, PERSIST_DAMAGED = 1, PERSIST_UNREADABLE = -1 };

/* PERSIST_OK (also when the file does not exist: nothing to restore), PERSIST_DAMAGED with the
 * reason in why, or PERSIST_UNREADABLE when it exists but cannot be read (why says so). The file
 * is walked chunk header by chunk header (seeking over bodies), never read whole. */
int persist_check_file(const char *path, char *why, size_t whylen);

#endif
