/* outbox: the on-disk store-and-forward log of one simulated gateway (see outbox.h for the
 * contract, README.md "Outbox" for the format). Owns its file descriptor, the index of unacked
 * batches (epoch, seq, where their record is) and the ranges of every sequence ever stored.
 * Envelopes stay on disk; outbox_read fetches one when it is (re)published. */
#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cm_log.h"

#define OB_VERSION 1
#define FRAME 8                            /* u32 length, u32 CRC-32 */
#define B_FIXED (1 + 8 + 8 + 8 + 4 + 4)    /* type, epoch, seq, ts, two lengths */
#define A_LEN (1 + 8 + 8)                  /* type, epoch, seq */
#define MAX_PAYLOAD (B_FIXED + 2 * OB_MAX_ENVELOPE)
#define MAX_RANGES ((MAX_PAYLOAD - 5) / 24)
#define COMPACT_MIN (64u * 1024)           /* dead bytes worth a rewrite in the steady state
                                            * (an eighth of the bound for smaller bounds) */
#define REC_B 'B'
#define REC_A 'A'
#define REC_H 'H'
#define REC_R 'R'

struct outbox {
    char *path, *dir, *gw;
    int fd;
    uint64_t max_bytes;
    uint64_t size;       /* end of the last record written (the file's size) */
    uint64_t fixed;      /* header and ranges record as of the last compaction */
    uint64_t live;       /* records of durable, unacked batches */
    uint64_t pend_start; /* where the first record not yet synced starts */
    uint64_t pend_bytes;
    int acks_unsynced;
    ob_entry *e;         /* e[head .. head+n): durable; then npend appended, not yet synced */
    size_t head, n, npend, cap;
    ob_range *r;
    size_t nr, rcap;
    uint8_t *wbuf;
    size_t wcap;
    ob_stats st;
};

/* ------------------------------------------------------------------ CRC-32 (zlib's) */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ------------------------------------------------------------------ little-endian fields */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int key_cmp(uint64_t e1, uint64_t s1, uint64_t e2, uint64_t s2)
{
    if (e1 != e2)
        return e1 < e2 ? -1 : 1;
    return s1 < s2 ? -1 : s1 > s2;
}

/* ------------------------------------------------------------------ ranges */

static int range_cmp(const void *a, const void *b)
{
    const ob_range *x = a, *y = b;
    return key_cmp(x->epoch, x->first, y->epoch, y->first);
}

/* Sorts and merges overlapping or adjacent ranges. */
static void ranges_normalize(outbox *ob)
{
    if (ob->nr < 2)
        return;
    qsort(ob->r, ob->nr, sizeof *ob->r, range_cmp);
    size_t w = 0;
    for (size_t i = 1; i < ob->nr; i++) {
        ob_range *cur = &ob->r[w];
        const ob_range *nx = &ob->r[i];
        if (nx->epoch == cur->epoch && (cur->last == UINT64_MAX || nx->first <= cur->last + 1)) {
            if (nx->last > cur->last)
                cur->last = nx->last;
        } else {
            ob->r[++w] = *nx;
        }
    }
    ob->nr = w + 1;
}

static cm_err ranges_push(outbox *ob, uint64_t epoch, uint64_t first, uint64_t last)
{
    if (ob->nr == ob->rcap) {
        size_t nc = ob->rcap ? ob->rcap * 2 : 16;
        ob_range *p = realloc(ob->r, nc * sizeof *p);
        if (!p)
            return CM_ERR_NOMEM;
        ob->r = p;
        ob->rcap = nc;
    }
    ob->r[ob->nr++] = (ob_range){epoch, first, last};
    return CM_OK;
}

/* Adds one (epoch, seq); the common case extends the last range. */
static cm_err ranges_add(outbox *ob, uint64_t epoch, uint64_t seq)
{
    if (ob->nr) {
        ob_range *l = &ob->r[ob->nr - 1];
        if (l->epoch == epoch && seq >= l->first && seq <= l->last)
            return CM_OK;
        if (l->epoch == epoch && l->last != UINT64_MAX && seq == l->last + 1) {
            l->last = seq;
            return CM_OK;
        }
    }
    int in_order = !ob->nr || key_cmp(epoch, seq, ob->r[ob->nr - 1].epoch,
                                      ob->r[ob->nr - 1].last) > 0;
    cm_err e = ranges_push(ob, epoch, seq, seq);
    if (e == CM_OK && !in_order)
        ranges_normalize(ob);
    return e;
}

/* ------------------------------------------------------------------ entries */

static ob_entry *ent(const outbox *ob, size_t i) { return &ob->e[ob->head + i]; }

static cm_err entries_reserve(outbox *ob, size_t more)
{
    size_t used = ob->head + ob->n + ob->npend;
    if (used + more <= ob->cap)
        return CM_OK;
    if (ob->head > 0) { /* reuse the room left by acked batches first */
        memmove(ob->e, ob->e + ob->head, (ob->n + ob->npend) * sizeof *ob->e);
        ob->head = 0;
        used = ob->n + ob->npend;
        if (used + more <= ob->cap)
            return CM_OK;
    }
    size_t nc = ob->cap ? ob->cap : 64;
    while (nc < used + more)
        nc *= 2;
    ob_entry *p = realloc(ob->e, nc * sizeof *p);
    if (!p)
        return CM_ERR_NOMEM;
    ob->e = p;
    ob->cap = nc;
    return CM_OK;
}

size_t outbox_record_size(size_t data_len, size_t bf_len)
{
    return FRAME + B_FIXED + data_len + bf_len;
}

static uint64_t entry_size(const ob_entry *e)
{
    return outbox_record_size(e->data_len, e->bf_len);
}

size_t outbox_find(const outbox *ob, uint64_t epoch, uint64_t seq)
{
    size_t lo = 0, hi = ob->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ob_entry *m = ent(ob, mid);
        if (key_cmp(m->epoch, m->seq, epoch, seq) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Removes durable entries [lo, hi). */
static void entries_remove(outbox *ob, size_t lo, size_t hi)
{
    if (hi <= lo)
        return;
    for (size_t i = lo; i < hi; i++)
        ob->live -= entry_size(ent(ob, i));
    if (lo == 0) {
        ob->head += hi;
    } else {
        memmove(ent(ob, lo), ent(ob, hi), (ob->n + ob->npend - hi) * sizeof *ob->e);
    }
    ob->n -= hi - lo;
}

/* ------------------------------------------------------------------ file helpers */

static int write_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int read_all(int fd, uint8_t *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO; /* shorter than the index says */
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    int rc = fsync(dfd);
    close(dfd);
    return rc;
}

static cm_err wbuf_reserve(outbox *ob, size_t need)
{
    if (need <= ob->wcap)
        return CM_OK;
    size_t nc = ob->wcap ? ob->wcap : 4096;
    while (nc < need)
        nc *= 2;
    uint8_t *p = realloc(ob->wbuf, nc);
    if (!p)
        return CM_ERR_NOMEM;
    ob->wbuf = p;
    ob->wcap = nc;
    return CM_OK;
}

/* Frames the payload at p[FRAME .. FRAME+len) in place: length and checksum in front. */
static size_t frame(uint8_t *p, size_t len)
{
    put32(p, (uint32_t)len);
    put32(p + 4, crc32_of(p + FRAME, len));
    return FRAME + len;
}

/* Header record into p (at least FRAME + 7 + 64 bytes); returns its size. */
static size_t header_record(const outbox *ob, uint8_t *p)
{
    size_t idl = strlen(ob->gw);
    uint8_t *q = p + FRAME;
    q[0] = REC_H;
    put32(q + 1, OB_VERSION);
    q[5] = (uint8_t)(idl & 0xFF);
    q[6] = (uint8_t)(idl >> 8);
    memcpy(q + 7, ob->gw, idl);
    return frame(p, 7 + idl);
}

/* Ranges record into ob->wbuf; returns its size (0 when there are no ranges, or no memory). */
static size_t ranges_record(outbox *ob)
{
    if (!ob->nr)
        return 0;
    size_t n = ob->nr < MAX_RANGES ? ob->nr : MAX_RANGES; /* millions of restarts: keep newest */
    const ob_range *r = ob->r + (ob->nr - n);
    size_t len = 5 + 24 * n;
    if (wbuf_reserve(ob, FRAME + len) != CM_OK)
        return 0;
    uint8_t *q = ob->wbuf + FRAME;
    q[0] = REC_R;
    put32(q + 1, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        put64(q + 5 + 24 * i, r[i].epoch);
        put64(q + 13 + 24 * i, r[i].first);
        put64(q + 21 + 24 * i, r[i].last);
    }
    return frame(ob->wbuf, len);
}

/* Writes a fresh file at path.tmp with the header, the ranges and the given durable entries'
 * records (copied from the current file), syncs it, renames it over path and syncs the
 * directory. On success fd is the new file, entries point into it. */
static cm_err rewrite(outbox *ob)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", ob->path);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        cm_error("path=%s error=\"%s\"", tmp, strerror(errno));
        return CM_ERR_IO;
    }
    uint64_t *offs = ob->n ? malloc(ob->n * sizeof *offs) : NULL;
    uint8_t hdr[FRAME + 7 + 256];
    uint64_t off = 0, fixed = 0;
    cm_err e = ob->n && !offs ? CM_ERR_NOMEM : CM_OK;
    if (e == CM_OK) {
        size_t hl = header_record(ob, hdr);
        if (write_all(fd, hdr, hl, off) != 0)
            e = CM_ERR_IO;
        off += hl;
    }
    if (e == CM_OK) {
        size_t rl = ranges_record(ob);
        if (ob->nr && !rl)
            e = CM_ERR_NOMEM;
        else if (rl && write_all(fd, ob->wbuf, rl, off) != 0)
            e = CM_ERR_IO;
        off += rl;
        fixed = off;
    }
    for (size_t i = 0; e == CM_OK && i < ob->n; i++) {
        const ob_entry *x = ent(ob, i);
        size_t rl = (size_t)entry_size(x);
        if (wbuf_reserve(ob, rl) != CM_OK)
            e = CM_ERR_NOMEM;
        else if (read_all(ob->fd, ob->wbuf, rl, x->rec_off) != 0 ||
                 write_all(fd, ob->wbuf, rl, off) != 0)
            e = CM_ERR_IO;
        offs[i] = off;
        off += rl;
    }
    if (e == CM_OK && fdatasync(fd) != 0)
        e = CM_ERR_IO;
    /* the new file is ours before it has the name: no other process can take it over */
    if (e == CM_OK && flock(fd, LOCK_EX | LOCK_NB) != 0)
        e = CM_ERR_IO;
    if (e == CM_OK && rename(tmp, ob->path) != 0)
        e = CM_ERR_IO;
    if (e != CM_OK) {
        cm_error("path=%s error=\"cannot rewrite the outbox: %s\" errno=\"%s\"", ob->path,
                 cm_strerror(e), strerror(errno));
        close(fd);
        unlink(tmp);
        free(offs);
        ob->st.write_errors++;
        return e;
    }
    /* the rename is durable only with the directory: until then a crash leaves the old file,
     * which holds the same batches */
    if (fsync_dir(ob->dir) != 0)
        cm_warn("dir=%s error=\"cannot sync the directory: %s\"", ob->dir, strerror(errno));
    if (ob->fd >= 0)
        close(ob->fd);
    ob->fd = fd;
    for (size_t i = 0; i < ob->n; i++)
        ent(ob, i)->rec_off = offs[i];
    free(offs);
    ob->size = ob->pend_start = off;
    ob->fixed = fixed;
    ob->acks_unsynced = 0;
    ob->st.compactions++;
    return CM_OK;
}

static uint64_t dead_bytes(const outbox *ob)
{
    uint64_t used = ob->fixed + ob->live + ob->pend_bytes;
    return ob->size > used ? ob->size - used : 0;
}

/* ------------------------------------------------------------------ loading */

/* Checks the record at buf[off..size): its frame, checksum, type and the size its type needs.
 * Returns the record's total size, or 0 when it is not a valid record. */
static size_t valid_record(const uint8_t *buf, size_t size, size_t off)
{
    if (size - off < FRAME + 1)
        return 0;
    uint32_t len = get32(buf + off);
    if (len < 1 || len > MAX_PAYLOAD || len > size - off - FRAME)
        return 0;
    const uint8_t *q = buf + off + FRAME;
    /* the type and its size first: cheap, and most garbage fails here before the checksum */
    switch (q[0]) {
    case REC_B:
        if (len < B_FIXED)
            return 0;
        {
            uint64_t dl = get32(q + 25), bl = get32(q + 29);
            if (dl > OB_MAX_ENVELOPE || bl > OB_MAX_ENVELOPE || B_FIXED + dl + bl != len)
                return 0;
        }
        break;
    case REC_A:
        if (len != A_LEN)
            return 0;
        break;
    case REC_R:
        if (len < 5 || (uint64_t)get32(q + 1) * 24 + 5 != len)
            return 0;
        break;
    case REC_H:
        if (len < 7 || (size_t)q[5] + ((size_t)q[6] << 8) + 7 != len)
            return 0;
        break;
    default:
        return 0;
    }
    if (crc32_of(q, len) != get32(buf + off + 4))
        return 0;
    return FRAME + len;
}

/* Applies one valid record found at off during the load. */
static cm_err apply_record(outbox *ob, const uint8_t *q, uint64_t off, size_t total)
{
    switch (q[0]) {
    case REC_B: {
        ob_entry x = {get64(q + 1), get64(q + 9), get64(q + 17), off, get32(q + 25),
                      get32(q + 29)};
        size_t i = outbox_find(ob, x.epoch, x.seq);
        if (i < ob->n && ent(ob, i)->epoch == x.epoch && ent(ob, i)->seq == x.seq)
            return CM_OK; /* stored twice (cannot happen by our writes): the first counts */
        cm_err e = entries_reserve(ob, 1);
        if (e == CM_OK)
            e = ranges_add(ob, x.epoch, x.seq);
        if (e != CM_OK)
            return e;
        if (i < ob->n)
            memmove(ent(ob, i + 1), ent(ob, i), (ob->n - i) * sizeof *ob->e);
        *ent(ob, i) = x;
        ob->n++;
        ob->live += total;
        return CM_OK;
    }
    case REC_A: {
        uint64_t epoch = get64(q + 1), seq = get64(q + 9);
        size_t lo = outbox_find(ob, epoch, 0);
        size_t hi = seq == UINT64_MAX ? outbox_find(ob, epoch + 1, 0)
                                      : outbox_find(ob, epoch, seq + 1);
        entries_remove(ob, lo, hi);
        return CM_OK;
    }
    case REC_R: {
        uint32_t n = get32(q + 1);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t ep = get64(q + 5 + 24 * i), f = get64(q + 13 + 24 * i),
                     l = get64(q + 21 + 24 * i);
            if (f > l)
                continue;
            cm_err e = ranges_push(ob, ep, f, l);
            if (e != CM_OK)
                return e;
        }
        ranges_normalize(ob);
        return CM_OK;
    }
    default:
        return CM_OK; /* a header past the start: counted by the caller */
    }
}

static cm_err load(outbox *ob)
{
    struct stat sb;
    if (fstat(ob->fd, &sb) != 0)
        return CM_ERR_IO;
    size_t size = (size_t)sb.st_size;
    if (size == 0) { /* never ours (ours get their header before their name): start afresh */
        cm_warn("path=%s event=empty_outbox_replaced", ob->path);
        return rewrite(ob);
    }
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return CM_ERR_NOMEM;
    cm_err e = read_all(ob->fd, buf, size, 0) == 0 ? CM_OK : CM_ERR_IO;
    size_t off = 0, first = e == CM_OK ? valid_record(buf, size, 0) : 0;
    if (e == CM_OK) {
        /* the header was written and synced before the file got its name: it must be there */
        uint8_t want[FRAME + 7 + 256];
        size_t wl = header_record(ob, want);
        if (!first || first != wl || memcmp(buf, want, wl) != 0) {
            cm_error("path=%s error=\"not an outbox of this gateway (header)\"", ob->path);
            e = CM_ERR_DECODE;
        }
        off = first;
        ob->fixed = first;
    }
    size_t torn_at = size;
    while (e == CM_OK && off < size) {
        size_t rl = valid_record(buf, size, off);
        if (rl && buf[off + FRAME] != REC_H) {
            e = apply_record(ob, buf + off + FRAME, off, rl);
            off += rl;
            continue;
        }
        /* resynchronise: the next offset where a valid record starts */
        size_t nx = off + 1;
        while (nx < size && !valid_record(buf, size, nx))
            nx++;
        if (nx >= size) {
            torn_at = off;
            break;
        }
        ob->st.corrupt++;
        cm_error("path=%s offset=%zu skipped=%zu error=\"corrupt outbox record skipped\" "
                 "alarm=1",
                 ob->path, off, nx - off);
        off = nx;
    }
    free(buf);
    if (e != CM_OK)
        return e;
    if (torn_at < size) {
        /* a crash in the middle of an append: that batch was never published */
        ob->st.torn_tail = 1;
        cm_warn("path=%s offset=%zu bytes=%zu event=torn_record_ignored", ob->path, torn_at,
                size - torn_at);
        if (ftruncate(ob->fd, (off_t)torn_at) != 0 || fdatasync(ob->fd) != 0) {
            cm_error("path=%s error=\"cannot cut the torn record: %s\"", ob->path,
                     strerror(errno));
            return CM_ERR_IO;
        }
    }
    ob->size = ob->pend_start = torn_at;
    ob->st.loaded = ob->n;
    /* skipped garbage inside the file: rewrite it clean (the ranges survive in the new file) */
    if (ob->st.corrupt && rewrite(ob) != CM_OK)
        return CM_ERR_IO;
    return CM_OK;
}

/* A new, empty outbox: header to path.tmp, synced, renamed, directory synced. */
static cm_err create(outbox *ob)
{
    cm_err e = rewrite(ob);
    if (e == CM_OK)
        ob->st.compactions = 0;
    return e;
}

cm_err outbox_open(const char *dir, const char *gw, uint64_t max_bytes, outbox **out)
{
    *out = NULL;
    if (!dir || !gw || !*gw || strlen(gw) > 64 || max_bytes < OB_MIN_BYTES)
        return CM_ERR_INVAL;
    outbox *ob = calloc(1, sizeof *ob);
    if (!ob)
        return CM_ERR_NOMEM;
    ob->fd = -1;
    ob->max_bytes = max_bytes;
    size_t pl = strlen(dir) + strlen(gw) + 16;
    ob->path = malloc(pl);
    ob->dir = strdup(dir);
    ob->gw = strdup(gw);
    cm_err e = ob->path && ob->dir && ob->gw ? CM_OK : CM_ERR_NOMEM;
    if (e == CM_OK && pl > 4000)
        e = CM_ERR_INVAL;
    if (e == CM_OK) {
        snprintf(ob->path, pl, "%s/%s.outbox", dir, gw);
        ob->fd = open(ob->path, O_RDWR | O_CLOEXEC);
        if (ob->fd >= 0 && flock(ob->fd, LOCK_EX | LOCK_NB) != 0) {
            /* two simulators on one state directory would each resend and cut the other's */
            cm_error("path=%s error=\"outbox in use by another process\"", ob->path);
            e = CM_ERR_DENIED;
        } else if (ob->fd >= 0)
            e = load(ob);
        else if (errno == ENOENT)
            e = create(ob);
        else {
            cm_error("path=%s error=\"%s\"", ob->path, strerror(errno));
            e = CM_ERR_IO;
        }
    }
    if (e != CM_OK) {
        outbox_destroy(&ob);
        return e;
    }
    *out = ob;
    return CM_OK;
}

void outbox_destroy(outbox **obp)
{
    if (!obp || !*obp)
        return;
    outbox *ob = *obp;
    *obp = NULL;
    if (ob->fd >= 0) {
        if (ob->npend)
            outbox_abort(ob);
        if (ob->acks_unsynced)
            (void)fdatasync(ob->fd);
        close(ob->fd);
    }
    free(ob->e);
    free(ob->r);
    free(ob->wbuf);
    free(ob->path);
    free(ob->dir);
    free(ob->gw);
    free(ob);
}

/* ------------------------------------------------------------------ appending, syncing */

ob_room outbox_room(outbox *ob, size_t rec_bound)
{
    if (ob->size + rec_bound <= ob->max_bytes)
        return OB_ROOM;
    if (ob->npend)
        return OB_LATER;
    /* compaction frees the dead records; below 1/16 of the bound it is not worth a rewrite of
     * up to the whole bound for every new batch, which also gives the full state hysteresis */
    uint64_t dead = dead_bytes(ob);
    if (dead > 0 && dead >= ob->max_bytes / 16 && rewrite(ob) == CM_OK &&
        ob->size + rec_bound <= ob->max_bytes)
        return OB_ROOM;
    return OB_FULL;
}

cm_err outbox_append(outbox *ob, uint64_t epoch, uint64_t seq, uint64_t ts_ms,
                     const uint8_t *data, size_t data_len, const uint8_t *bf, size_t bf_len)
{
    if (!data_len || !bf_len || data_len > OB_MAX_ENVELOPE || bf_len > OB_MAX_ENVELOPE)
        return CM_ERR_INVAL;
    size_t last = ob->n + ob->npend;
    if (last && key_cmp(epoch, seq, ent(ob, last - 1)->epoch, ent(ob, last - 1)->seq) <= 0)
        return CM_ERR_INVAL;
    size_t rl = outbox_record_size(data_len, bf_len);
    if (ob->size + rl > ob->max_bytes)
        return CM_ERR_TOO_BIG;
    if (wbuf_reserve(ob, rl) != CM_OK || entries_reserve(ob, 1) != CM_OK)
        return CM_ERR_NOMEM;
    uint8_t *q = ob->wbuf + FRAME;
    q[0] = REC_B;
    put64(q + 1, epoch);
    put64(q + 9, seq);
    put64(q + 17, ts_ms);
    put32(q + 25, (uint32_t)data_len);
    put32(q + 29, (uint32_t)bf_len);
    memcpy(q + B_FIXED, data, data_len);
    memcpy(q + B_FIXED + data_len, bf, bf_len);
    frame(ob->wbuf, rl - FRAME);
    if (write_all(ob->fd, ob->wbuf, rl, ob->size) != 0) {
        int err = errno;
        if (ftruncate(ob->fd, (off_t)ob->size) != 0)
            cm_warn("path=%s error=\"cannot cut a failed write: %s\"", ob->path, strerror(errno));
        cm_error("path=%s epoch=%" PRIu64 " seq=%" PRIu64 " error=\"outbox write failed: %s\"",
                 ob->path, epoch, seq, strerror(err));
        ob->st.write_errors++;
        return CM_ERR_IO;
    }
    if (!ob->npend)
        ob->pend_start = ob->size;
    *ent(ob, ob->n + ob->npend) = (ob_entry){epoch, seq, ts_ms, ob->size, (uint32_t)data_len,
                                             (uint32_t)bf_len};
    ob->npend++;
    ob->pend_bytes += rl;
    ob->size += rl;
    return CM_OK;
}

size_t outbox_abort(outbox *ob)
{
    size_t n = ob->npend;
    if (!n)
        return 0;
    if (ftruncate(ob->fd, (off_t)ob->pend_start) != 0)
        cm_warn("path=%s error=\"cannot cut unsynced records: %s\"", ob->path, strerror(errno));
    ob->size = ob->pend_start;
    ob->npend = 0;
    ob->pend_bytes = 0;
    return n;
}

cm_err outbox_sync(outbox *ob)
{
    if (!ob->npend && !ob->acks_unsynced)
        return CM_OK;
    if (fdatasync(ob->fd) != 0) {
        /* after a failed fsync the kernel may have dropped the pages: nothing pending counts */
        cm_error("path=%s records=%zu error=\"outbox sync failed: %s\" alarm=1", ob->path,
                 ob->npend, strerror(errno));
        ob->st.write_errors++;
        outbox_abort(ob);
        return CM_ERR_IO;
    }
    ob->acks_unsynced = 0;
    for (size_t i = 0; i < ob->npend; i++) {
        const ob_entry *x = ent(ob, ob->n + i);
        if (ranges_add(ob, x->epoch, x->seq) != CM_OK)
            cm_error("path=%s seq=%" PRIu64 " error=\"out of memory for the sent ranges\"",
                     ob->path, x->seq);
    }
    ob->n += ob->npend;
    ob->st.stored += ob->npend;
    ob->live += ob->pend_bytes;
    ob->npend = 0;
    ob->pend_bytes = 0;
    ob->pend_start = ob->size;
    return CM_OK;
}

size_t outbox_ack(outbox *ob, uint64_t epoch, uint64_t seq)
{
    size_t lo = outbox_find(ob, epoch, 0);
    size_t hi = seq == UINT64_MAX ? outbox_find(ob, epoch + 1, 0) : outbox_find(ob, epoch, seq + 1);
    if (hi <= lo)
        return 0;
    size_t removed = hi - lo;
    entries_remove(ob, lo, hi);
    ob->st.acked_removed += removed;
    if (!ob->npend) {
        uint8_t rec[FRAME + A_LEN];
        rec[FRAME] = REC_A;
        put64(rec + FRAME + 1, epoch);
        put64(rec + FRAME + 9, seq);
        frame(rec, A_LEN);
        /* the bound holds for acks too; a lost ack record only means a deduplicated resend */
        if (ob->size + sizeof rec <= ob->max_bytes &&
            write_all(ob->fd, rec, sizeof rec, ob->size) == 0) {
            ob->size += sizeof rec;
            ob->pend_start = ob->size;
            ob->acks_unsynced = 1;
        }
        uint64_t dead = dead_bytes(ob), min = ob->max_bytes / 8;
        if (min > COMPACT_MIN)
            min = COMPACT_MIN;
        if (dead >= min && dead >= ob->live)
            (void)rewrite(ob);
    }
    return removed;
}

/* ------------------------------------------------------------------ reading */

size_t outbox_count(const outbox *ob) { return ob->n; }

const ob_entry *outbox_entry(const outbox *ob, size_t i)
{
    return i < ob->n ? ent(ob, i) : NULL;
}

cm_err outbox_read(outbox *ob, const ob_entry *e, int backfill, uint8_t *dst, size_t cap,
                   size_t *len)
{
    size_t rl = (size_t)entry_size(e);
    size_t want = backfill ? e->bf_len : e->data_len;
    if (want > cap)
        return CM_ERR_TOO_BIG;
    if (wbuf_reserve(ob, rl) != CM_OK)
        return CM_ERR_NOMEM;
    if (read_all(ob->fd, ob->wbuf, rl, e->rec_off) != 0)
        return CM_ERR_IO;
    /* what goes back on the wire is exactly what was checked: never half a record */
    if (valid_record(ob->wbuf, rl, 0) != rl || ob->wbuf[FRAME] != REC_B ||
        get64(ob->wbuf + FRAME + 9) != e->seq || get64(ob->wbuf + FRAME + 1) != e->epoch) {
        cm_error("path=%s epoch=%" PRIu64 " seq=%" PRIu64 " error=\"outbox record changed on "
                 "disk\" alarm=1",
                 ob->path, e->epoch, e->seq);
        return CM_ERR_DECODE;
    }
    memcpy(dst, ob->wbuf + FRAME + B_FIXED + (backfill ? e->data_len : 0), want);
    *len = want;
    return CM_OK;
}

size_t outbox_ranges(const outbox *ob, const ob_range **out)
{
    *out = ob->r;
    return ob->nr;
}

uint64_t outbox_max_epoch(const outbox *ob)
{
    uint64_t m = ob->nr ? ob->r[ob->nr - 1].epoch : 0;
    if (ob->n && ent(ob, ob->n - 1)->epoch > m)
        m = ent(ob, ob->n - 1)->epoch;
    return m;
}

uint64_t outbox_bytes(const outbox *ob) { return ob->size; }
uint64_t outbox_max_bytes(const outbox *ob) { return ob->max_bytes; }
const ob_stats *outbox_stats(const outbox *ob) { return &ob->st; }
const char *outbox_path(const outbox *ob) { return ob->path; }
