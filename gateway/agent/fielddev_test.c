/* fielddev_test: unit tests of the field device poller (gateway/agent/fielddev.c) against
 * libmodbus TCP servers run by the test itself on 127.0.0.1: values polled and decoded; the
 * deadband and the heartbeat; a server that stops answering (BAD readings on schedule, device
 * down, then recovery); a Modbus exception failing its own point only; writes within limits
 * landing and read back; refused writes never reaching the server; a silent device and a port
 * where nothing listens not stalling a good device; the queue policy keeping quality changes.
 * Waits are loops with generous deadlines: a slow machine makes a test slower, not red. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <modbus/modbus.h>

#include "cm_log.h"
#include "fielddev.h"
#include "pointmap.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- a Modbus TCP server in a thread of the test ---- */

typedef struct server {
    int port;
    modbus_t *ctx;
    modbus_mapping_t *map; /* 100 of each kind: address 100 and above draw an exception */
    pthread_mutex_t lock;  /* map, silent, writes_seen */
    int silent;            /* 1: requests are read and never answered */
    int garbage;           /* 1: answered with junk bytes; 2: with a reply cut short */
    unsigned writes_seen;  /* write requests received (function codes 5, 6, 15, 16) */
    atomic_int stop;
    int listen_fd;
    pthread_t thread;
} server;

/* A port that was free a moment ago: bind to port 0, read it back, close. */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static void *server_main(void *arg)
{
    server *s = arg;
    fd_set all;
    FD_ZERO(&all);
    FD_SET(s->listen_fd, &all);
    int maxfd = s->listen_fd;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    while (!s->stop) {
        fd_set rd = all;
        struct timeval tv = {0, 20000};
        if (select(maxfd + 1, &rd, NULL, NULL, &tv) <= 0)
            continue;
        for (int fd = 0; fd <= maxfd; fd++) {
            if (!FD_ISSET(fd, &rd))
                continue;
            if (fd == s->listen_fd) {
                int c = accept(s->listen_fd, NULL, NULL);
                if (c >= 0 && c < FD_SETSIZE) {
                    FD_SET(c, &all);
                    maxfd = c > maxfd ? c : maxfd;
                } else if (c >= 0) {
                    close(c);
                }
                continue;
            }
            modbus_set_socket(s->ctx, fd);
            int rc = modbus_receive(s->ctx, query);
            if (rc > 0) {
                pthread_mutex_lock(&s->lock);
                uint8_t fc = query[modbus_get_header_length(s->ctx)];
                if (fc == 5 || fc == 6 || fc == 15 || fc == 16)
                    s->writes_seen++;
                if (s->garbage == 1) {
                    /* a whole frame, but of another transaction: garbage to this query */
                    static const uint8_t junk[] = {0xde, 0xad, 0x00, 0x00, 0x00, 0x05,
                                                   0x01, 0x04, 0x02, 0x77, 0x42};
                    (void)!write(fd, junk, sizeof junk);
                } else if (s->garbage == 2) {
                    /* the first bytes of a real answer to this query, then nothing */
                    uint8_t cut[7];
                    memcpy(cut, query, 4); /* transaction and protocol id */
                    cut[4] = 0;
                    cut[5] = 5;            /* 5 more bytes announced, 1 sent */
                    cut[6] = query[6];
                    (void)!write(fd, cut, sizeof cut);
                } else if (!s->silent)
                    modbus_reply(s->ctx, query, rc, s->map);
                pthread_mutex_unlock(&s->lock);
            } else if (rc < 0) {
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
    for (int fd = 0; fd <= maxfd; fd++)
        if (FD_ISSET(fd, &all))
            close(fd);
    return NULL;
}

static server *server_start(void)
{
    server *s = calloc(1, sizeof *s);
    assert_non_null(s);
    pthread_mutex_init(&s->lock, NULL);
    s->port = free_port();
    s->ctx = modbus_new_tcp("127.0.0.1", s->port);
    s->map = modbus_mapping_new(100, 100, 100, 100);
    assert_non_null(s->ctx);
    assert_non_null(s->map);
    s->listen_fd = modbus_tcp_listen(s->ctx, 8);
    assert_true(s->listen_fd >= 0);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
    return s;
}

static void server_stop(server *s)
{
    s->stop = 1;
    pthread_join(s->thread, NULL);
    modbus_mapping_free(s->map);
    modbus_free(s->ctx);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void set_silent(server *s, int silent)
{
    pthread_mutex_lock(&s->lock);
    s->silent = silent;
    pthread_mutex_unlock(&s->lock);
}

static void set_input(server *s, int address, uint16_t v)
{
    pthread_mutex_lock(&s->lock);
    s->map->tab_input_registers[address] = v;
    pthread_mutex_unlock(&s->lock);
}

static uint16_t holding(server *s, int address)
{
    pthread_mutex_lock(&s->lock);
    uint16_t v = s->map->tab_registers[address];
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* ---- readings collected from a fielddev ---- */

typedef struct log_t {
    fd_reading *r;
    size_t n, cap;
} log_t;

/* Drains f into lg for up to ms milliseconds, waking on fd_wait_fd. */
static void pump(fielddev *f, log_t *lg, unsigned ms)
{
    uint64_t end = now_ms() + ms;
    for (;;) {
        fd_reading buf[64];
        size_t n;
        while ((n = fd_drain(f, buf, 64)) > 0) {
            if (lg->n + n > lg->cap) {
                lg->cap = (lg->n + n) * 2;
                lg->r = realloc(lg->r, lg->cap * sizeof *lg->r);
                assert_non_null(lg->r);
            }
            memcpy(lg->r + lg->n, buf, n * sizeof *buf);
            lg->n += n;
        }
        uint64_t t = now_ms();
        if (t >= end)
            return;
        struct pollfd p = {.fd = fd_wait_fd(f), .events = POLLIN};
        poll(&p, 1, (int)(end - t < 50 ? end - t : 50));
    }
}

/* The last reading of point in lg from index `from` on, or NULL. */
static const fd_reading *last_of(const log_t *lg, size_t point, size_t from)
{
    for (size_t i = lg->n; i-- > from;)
        if (lg->r[i].point == point)
            return &lg->r[i];
    return NULL;
}

static size_t count_of(const log_t *lg, size_t point, int bad, size_t from)
{
    size_t n = 0;
    for (size_t i = from; i < lg->n; i++)
        n += lg->r[i].point == point && lg->r[i].bad == bad;
    return n;
}

/* Pumps until the last reading of point (from `from` on) has quality bad and, when want is not
 * NaN, the value want (within 1e-6). Returns 1, or 0 at the deadline. */
static int wait_reading(fielddev *f, log_t *lg, size_t point, int bad, double want, size_t from,
                        unsigned timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    do {
        pump(f, lg, 50);
        const fd_reading *r = last_of(lg, point, from);
        if (r && r->bad == bad && (isnan(want) || fabs(r->value - want) < 1e-6))
            return 1;
    } while (now_ms() < end);
    return 0;
}

static pm_map parse_map(const char *text)
{
    pm_map m;
    char err[CM_CONF_ERRLEN];
    cm_err rc = pm_parse("test.map", text, strlen(text), &m, err);
    if (rc != CM_OK)
        fail_msg("map refused: %s", err);
    return m;
}

static fielddev *start(const pm_map *m, size_t queue_max, uint64_t heartbeat_ms)
{
    fd_opts o = {.queue_max = queue_max, .heartbeat_ms = heartbeat_ms};
    fielddev *f = NULL;
    assert_int_equal(fd_start(m, &o, &f), CM_OK);
    assert_non_null(f);
    return f;
}

/* ---- the tests ---- */

static void test_poll_and_decode(void **state)
{
    (void)state;
    server *s = server_start();
    pthread_mutex_lock(&s->lock);
    s->map->tab_input_registers[0] = 0x3fc0; /* f32 1.5, big word order */
    s->map->tab_input_registers[1] = 0x0000;
    s->map->tab_input_registers[2] = 1234;   /* u16, scale 0.1 -> 123.4 */
    s->map->tab_input_registers[3] = 0xfffb; /* i16 -5 */
    s->map->tab_registers[10] = 0xfffe;      /* i32 -2, little word order */
    s->map->tab_registers[11] = 0xffff;
    s->map->tab_bits[5] = 1;
    s->map->tab_input_bits[6] = 1;
    pthread_mutex_unlock(&s->lock);
    char text[1024];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 500\n"
             "[point flow]\ndevice = plc\nregister = input\naddress = 0\ntype = f32\nunit = L/s\n"
             "period_ms = 100\n"
             "[point pressure]\ndevice = plc\nregister = input\naddress = 2\nscale = 0.1\n"
             "unit = bar\nperiod_ms = 100\n"
             "[point temp]\ndevice = plc\nregister = input\naddress = 3\ntype = i16\nunit = C\n"
             "period_ms = 100\n"
             "[point total]\ndevice = plc\nregister = holding\naddress = 10\ntype = i32\n"
             "word_order = little\nunit = m3\nperiod_ms = 100\n"
             "[point pump]\ndevice = plc\nregister = coil\naddress = 5\nunit = 1\nperiod_ms = 100\n"
             "[point running]\ndevice = plc\nregister = discrete\naddress = 6\nscale = 10\n"
             "offset = 1\nunit = 1\nperiod_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1000, 60000);
    pm_free(&m); /* fd_start copied it */

    struct pollfd p = {.fd = fd_wait_fd(f), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);

    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 0, 0, 1.5, 0, 5000));
    assert_true(wait_reading(f, &lg, 1, 0, 123.4, 0, 5000));
    assert_true(wait_reading(f, &lg, 2, 0, -5, 0, 5000));
    assert_true(wait_reading(f, &lg, 3, 0, -2, 0, 5000));
    assert_true(wait_reading(f, &lg, 4, 0, 1, 0, 5000));
    assert_true(wait_reading(f, &lg, 5, 0, 11, 0, 5000));
    const fd_reading *r = last_of(&lg, 0, 0);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    uint64_t wall_now = (uint64_t)wall.tv_sec * 1000u + (uint64_t)wall.tv_nsec / 1000000u;
    assert_true(r->ts_ms <= wall_now && r->ts_ms + 60000 > wall_now);

    /* a new value reaches the consumer */
    size_t mark = lg.n;
    set_input(s, 2, 50);
    assert_true(wait_reading(f, &lg, 1, 0, 5.0, mark, 5000));
    assert_int_equal(fd_device_up(f, 0), 1);
    assert_int_equal(fd_device_up(f, 7), 0);

    fd_stats st;
    fd_get_stats(f, &st);
    assert_true(st.polls >= 6 && st.reads_ok >= 1);
    assert_int_equal(st.timeouts + st.exceptions + st.io_errors + st.bad_data, 0);
    assert_int_equal(st.devices_down, 0);
    fd_stop(&f);
    assert_null(f);
    fd_stop(&f); /* NULL is fine */
    free(lg.r);
    server_stop(s);
}

static void test_deadband_and_heartbeat(void **state)
{
    (void)state;
    server *s = server_start();
    set_input(s, 0, 100);
    set_input(s, 1, 7);
    char text[512];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\n"
             "[point level]\ndevice = plc\nregister = input\naddress = 0\nunit = m\n"
             "period_ms = 100\ndeadband = 5\n"
             "[point every]\ndevice = plc\nregister = input\naddress = 1\nunit = m\n"
             "period_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    const uint64_t heartbeat = 2000;
    fielddev *f = start(&m, 1000, heartbeat);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 0, 0, 100, 0, 5000));
    uint64_t first_ts = last_of(&lg, 0, 0)->ts_ms;
    size_t mark = lg.n;

    /* a change inside the deadband is not news: only the heartbeat reports it */
    set_input(s, 0, 103);
    assert_true(wait_reading(f, &lg, 0, 0, 103, mark, (unsigned)heartbeat + 5000));
    const fd_reading *hb = last_of(&lg, 0, mark);
    assert_int_equal(count_of(&lg, 0, 0, mark), 1);
    assert_true(hb->ts_ms >= first_ts + heartbeat - 100);
    /* deadband 0: the other point was reported on every poll meanwhile */
    assert_true(count_of(&lg, 1, 0, 0) >= 5);

    /* a change beyond the deadband is reported at once, long before the next heartbeat */
    mark = lg.n;
    uint64_t changed = now_ms();
    set_input(s, 0, 120);
    assert_true(wait_reading(f, &lg, 0, 0, 120, mark, 5000));
    assert_true(now_ms() - changed < heartbeat - 500);
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

/* What on_device heard, under cb_lock (it runs in a device thread: no cmocka asserts there). */
static unsigned downs, ups, odd_reasons;
static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_device(void *arg, size_t device, int up, const char *reason)
{
    (void)arg;
    pthread_mutex_lock(&cb_lock);
    if (up)
        ups++;
    else
        downs++;
    if (device != 0 || (up ? reason[0] != '\0' : strcmp(reason, "timeout") != 0))
        odd_reasons++;
    pthread_mutex_unlock(&cb_lock);
}

static void test_outage_and_recovery(void **state)
{
    (void)state;
    server *s = server_start();
    set_input(s, 4, 42);
    char text[512];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 200\n"
             "[point level]\ndevice = plc\nregister = input\naddress = 4\nunit = m\n"
             "period_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    downs = ups = odd_reasons = 0;
    fd_opts o = {.queue_max = 1000, .heartbeat_ms = 60000, .on_device = on_device};
    fielddev *f = NULL;
    assert_int_equal(fd_start(&m, &o, &f), CM_OK);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 0, 0, 42, 0, 5000));

    /* the server stops answering: BAD readings carrying the last good value, on schedule */
    set_silent(s, 1);
    size_t mark = lg.n;
    assert_true(wait_reading(f, &lg, 0, 1, 42, mark, 5000));
    size_t first_bad = lg.n - 1;
    pump(f, &lg, 1500);
    assert_true(count_of(&lg, 0, 1, first_bad) >= 5); /* ~15 at 100 ms; 5 is a lax floor */
    assert_int_equal(count_of(&lg, 0, 0, first_bad), 0);
    fd_stats st;
    fd_get_stats(f, &st);
    assert_true(st.timeouts >= 1);
    assert_true(st.overruns >= 1); /* a 200 ms timeout makes a 100 ms point skip a slot */
    assert_int_equal(st.devices_down, 1);
    assert_int_equal(fd_device_up(f, 0), 0);

    /* it answers again: GOOD readings, device up, one down and one up event */
    set_input(s, 4, 43);
    set_silent(s, 0);
    mark = lg.n;
    assert_true(wait_reading(f, &lg, 0, 0, 43, mark, 10000));
    fd_get_stats(f, &st);
    assert_int_equal(st.devices_down, 0);
    assert_int_equal(fd_device_up(f, 0), 1);
    pthread_mutex_lock(&cb_lock);
    assert_int_equal(downs, 1);
    assert_int_equal(ups, 2); /* the first answer after start, then the recovery */
    assert_int_equal(odd_reasons, 0);
    pthread_mutex_unlock(&cb_lock);
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

/* Junk, and a reply cut short: BAD readings, counted, the device down; no crash; then recovery. */
static void test_garbage_and_short_frames(void **state)
{
    (void)state;
    server *s = server_start();
    set_input(s, 4, 42);
    char text[512];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 200\n"
             "[point level]\ndevice = plc\nregister = input\naddress = 4\nunit = m\n"
             "period_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1000, 60000);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 0, 0, 42, 0, 5000));
    for (int mode = 1; mode <= 2; mode++) {
        fd_stats before;
        fd_get_stats(f, &before);
        pthread_mutex_lock(&s->lock);
        s->garbage = mode;
        pthread_mutex_unlock(&s->lock);
        size_t mark = lg.n;
        assert_true(wait_reading(f, &lg, 0, 1, NAN, mark, 5000));
        fd_stats st;
        fd_get_stats(f, &st);
        if (mode == 1) /* recognised as a wrong answer, not mistaken for silence */
            assert_true(st.bad_data > before.bad_data);
        else           /* the rest of a cut frame never comes */
            assert_true(st.timeouts + st.io_errors > before.timeouts + before.io_errors);
        assert_int_equal(st.devices_down, 1);
        pthread_mutex_lock(&s->lock);
        s->garbage = 0;
        pthread_mutex_unlock(&s->lock);
        set_input(s, 4, (uint16_t)(50 + mode));
        mark = lg.n;
        assert_true(wait_reading(f, &lg, 0, 0, 50 + mode, mark, 10000));
    }
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

static void test_exception_fails_its_point_only(void **state)
{
    (void)state;
    server *s = server_start();
    pthread_mutex_lock(&s->lock);
    s->map->tab_registers[98] = 11;
    s->map->tab_registers[99] = 12;
    pthread_mutex_unlock(&s->lock);
    char text[768];
    /* 98, 99 and 100 are read in one request, which the server refuses (100 does not exist) */
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\n"
             "[point a]\ndevice = plc\nregister = holding\naddress = 98\nunit = m\n"
             "period_ms = 100\n"
             "[point b]\ndevice = plc\nregister = holding\naddress = 99\nunit = m\n"
             "period_ms = 100\n"
             "[point missing]\ndevice = plc\nregister = holding\naddress = 100\nunit = m\n"
             "period_ms = 100\n"
             "[point far]\ndevice = plc\nregister = input\naddress = 500\nunit = m\n"
             "period_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1000, 60000);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 2, 1, 0, 0, 5000));
    assert_true(wait_reading(f, &lg, 3, 1, 0, 0, 5000)); /* a request of its own */
    assert_true(wait_reading(f, &lg, 0, 0, 11, 0, 5000));
    assert_true(wait_reading(f, &lg, 1, 0, 12, 0, 5000));
    pump(f, &lg, 500);
    assert_int_equal(count_of(&lg, 0, 1, 0), 0);
    assert_int_equal(count_of(&lg, 1, 1, 0), 0);
    assert_int_equal(count_of(&lg, 2, 0, 0), 0);
    assert_int_equal(count_of(&lg, 3, 0, 0), 0);
    fd_stats st;
    fd_get_stats(f, &st);
    assert_true(st.exceptions >= 3);
    assert_int_equal(st.timeouts + st.io_errors + st.bad_data, 0);
    assert_int_equal(st.devices_down, 0);
    assert_int_equal(fd_device_up(f, 0), 1);
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

static const char write_map[] =
    "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\n"
    "[point speed]\ndevice = plc\nregister = holding\naddress = 3\nunit = %%\n"
    "writable = yes\nlimits = 0, 80\n"
    "[point pump1]\ndevice = plc\nregister = coil\naddress = 7\nunit = 1\n"
    "writable = yes\nlimits = 0, 1\n"
    "[point flow_sp]\ndevice = plc\nregister = holding\naddress = 20\ntype = f32\n"
    "unit = L/s\nwritable = yes\nlimits = -10, 500\n"
    "[point level_sp]\ndevice = plc\nregister = holding\naddress = 30\nscale = 0.1\n"
    "unit = m\nwritable = yes\nlimits = 0, 10\n"
    "[point level]\ndevice = plc\nregister = input\naddress = 0\nunit = m\n";

static void test_write_within_limits(void **state)
{
    (void)state;
    server *s = server_start();
    char text[1024];
    snprintf(text, sizeof text, write_map, s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1000, 60000);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 4, 0, 0, 0, 5000)); /* connected and answering */

    double rb = -1;
    char why[128];
    assert_int_equal(fd_write(f, 0, 55, &rb, why, sizeof why), FD_WRITE_OK);
    assert_true(rb == 55);
    assert_int_equal(holding(s, 3), 55);

    assert_int_equal(fd_write(f, 1, 1, &rb, why, sizeof why), FD_WRITE_OK);
    assert_true(rb == 1);
    pthread_mutex_lock(&s->lock);
    assert_int_equal(s->map->tab_bits[7], 1);
    pthread_mutex_unlock(&s->lock);
    assert_int_equal(fd_write(f, 1, 0.2, &rb, why, sizeof why), FD_WRITE_OK);
    assert_true(rb == 0);

    assert_int_equal(fd_write(f, 2, -2.25, &rb, why, sizeof why), FD_WRITE_OK);
    assert_true(rb == -2.25);
    assert_int_equal(holding(s, 20), 0xc010);
    assert_int_equal(holding(s, 21), 0x0000);

    assert_int_equal(fd_write(f, 3, 4.2, &rb, why, sizeof why), FD_WRITE_OK);
    assert_int_equal(holding(s, 30), 42);
    assert_true(fabs(rb - 4.2) < 1e-9);

    /* the read back is also a reading: the consumer sees the new setpoint */
    assert_true(wait_reading(f, &lg, 0, 0, 55, 0, 5000));
    fd_stats st;
    fd_get_stats(f, &st);
    assert_int_equal(st.writes, 5);
    assert_int_equal(st.write_failures, 0);
    assert_int_equal(st.refused_writes, 0);
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

static void test_write_refused_without_touching_the_device(void **state)
{
    (void)state;
    server *s = server_start();
    pthread_mutex_lock(&s->lock);
    s->map->tab_registers[3] = 12;
    pthread_mutex_unlock(&s->lock);
    char text[1024];
    snprintf(text, sizeof text, write_map, s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1000, 60000);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 4, 0, 0, 0, 5000));

    double rb = -1;
    char why[128];
    assert_int_equal(fd_write(f, 0, 80.5, &rb, why, sizeof why), FD_OUT_OF_LIMITS);
    assert_non_null(strstr(why, "outside the limits [0, 80]"));
    assert_int_equal(fd_write(f, 0, -1, &rb, why, sizeof why), FD_OUT_OF_LIMITS);
    assert_int_equal(fd_write(f, 0, NAN, &rb, why, sizeof why), FD_OUT_OF_LIMITS);
    assert_int_equal(fd_write(f, 1, 2, &rb, why, sizeof why), FD_OUT_OF_LIMITS);
    assert_int_equal(fd_write(f, 4, 1, &rb, why, sizeof why), FD_NOT_WRITABLE);
    assert_int_equal(fd_write(f, 99, 1, &rb, why, sizeof why), FD_NOT_WRITABLE);
    assert_true(rb == -1);
    pump(f, &lg, 300); /* anything in flight would have arrived */
    pthread_mutex_lock(&s->lock);
    assert_int_equal(s->writes_seen, 0);
    assert_int_equal(s->map->tab_registers[3], 12);
    assert_int_equal(s->map->tab_bits[7], 0);
    pthread_mutex_unlock(&s->lock);
    fd_stats st;
    fd_get_stats(f, &st);
    assert_int_equal(st.refused_writes, 6);
    assert_int_equal(st.writes, 0);

    /* a device that does not answer: the write fails, within its timeouts */
    set_silent(s, 1);
    uint64_t t0 = now_ms();
    fd_write_result r = fd_write(f, 0, 10, &rb, why, sizeof why);
    assert_true(r == FD_WRITE_FAILED || r == FD_READBACK_FAILED);
    assert_true(why[0] != '\0');
    assert_true(now_ms() - t0 < 15000);
    fd_get_stats(f, &st);
    assert_int_equal(st.writes, 1);
    assert_int_equal(st.write_failures, 1);
    fd_stop(&f);
    pm_free(&m);
    free(lg.r);
    server_stop(s);
}

static void test_dead_devices_do_not_stall_a_good_one(void **state)
{
    (void)state;
    server *good = server_start();
    server *mute = server_start();
    set_silent(mute, 1);
    set_input(good, 0, 9);
    int nobody = free_port(); /* nothing listens there */
    char text[1024];
    snprintf(text, sizeof text,
             "[device good]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\n"
             "[device mute]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 3000\n"
             "[device nobody]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\n"
             "[point ok]\ndevice = good\nregister = input\naddress = 0\nunit = m\n"
             "period_ms = 100\n"
             "[point m1]\ndevice = mute\nregister = input\naddress = 0\nunit = m\n"
             "period_ms = 100\n"
             "[point m2]\ndevice = mute\nregister = input\naddress = 50\nunit = m\n"
             "period_ms = 100\n"
             "[point n1]\ndevice = nobody\nregister = input\naddress = 0\nunit = m\n"
             "period_ms = 100\n",
             good->port, mute->port, nobody);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 10000, 60000);
    log_t lg = {0};
    assert_true(wait_reading(f, &lg, 0, 0, 9, 0, 5000));
    size_t mark = lg.n - 1;
    pump(f, &lg, 3000);
    /* ~30 readings at 100 ms; a poller stuck behind the mute device's 3 s timeouts would get
     * one or two, and gaps of 3 s */
    size_t n = count_of(&lg, 0, 0, mark);
    assert_true(n >= 10);
    uint64_t prev = 0, max_gap = 0;
    for (size_t i = mark; i < lg.n; i++) {
        if (lg.r[i].point != 0)
            continue;
        if (prev && lg.r[i].ts_ms - prev > max_gap)
            max_gap = lg.r[i].ts_ms - prev;
        prev = lg.r[i].ts_ms;
    }
    assert_true(max_gap < 1500);
    assert_int_equal(count_of(&lg, 0, 1, 0), 0);
    /* the device nobody listens for yields BAD readings on schedule */
    assert_true(count_of(&lg, 3, 1, 0) >= 10);
    assert_int_equal(fd_device_up(f, 0), 1);
    assert_int_equal(fd_device_up(f, 1), 0);
    assert_int_equal(fd_device_up(f, 2), 0);
    fd_stats st;
    fd_get_stats(f, &st);
    assert_true(st.io_errors >= 1);
    uint64_t t0 = now_ms();
    fd_stop(&f); /* cuts the mute device's request short */
    assert_true(now_ms() - t0 < 2500);
    pm_free(&m);
    free(lg.r);
    server_stop(good);
    server_stop(mute);
}

/* A consumer that does not drain: GOOD readings beyond queue_max are dropped, but each point's
 * change to BAD is still there when it drains, and the queue stays bounded. */
static void test_queue_keeps_quality_changes(void **state)
{
    (void)state;
    server *s = server_start();
    char text[1024];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 100\n"
             "[point a]\ndevice = plc\nregister = input\naddress = 0\nunit = m\nperiod_ms = 100\n"
             "[point b]\ndevice = plc\nregister = input\naddress = 10\nunit = m\nperiod_ms = 100\n"
             "[point c]\ndevice = plc\nregister = input\naddress = 20\nunit = m\nperiod_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    const size_t queue_max = 4;
    fielddev *f = start(&m, queue_max, 60000);
    fd_stats st;
    uint64_t end = now_ms() + 5000;
    do {
        sleep_ms(50);
        fd_get_stats(f, &st);
    } while (st.dropped == 0 && now_ms() < end);
    assert_true(st.dropped > 0);

    set_silent(s, 1);
    end = now_ms() + 5000;
    do {
        sleep_ms(50);
        fd_get_stats(f, &st);
    } while (st.devices_down == 0 && now_ms() < end);
    assert_int_equal(st.devices_down, 1);
    sleep_ms(300); /* more BAD polls, and a recovery attempt or two */

    fd_reading buf[64];
    size_t n = fd_drain(f, buf, 64);
    assert_true(n <= queue_max + 3 * 3);
    for (size_t p = 0; p < 3; p++) {
        /* the first reading of the point, then its BAD change, in that order */
        int seen_good = 0, seen_bad_after = 0;
        for (size_t i = 0; i < n; i++) {
            if (buf[i].point != p)
                continue;
            if (!buf[i].bad)
                seen_good = 1;
            else if (seen_good)
                seen_bad_after = 1;
        }
        if (!seen_good || !seen_bad_after)
            fail_msg("point %zu: good %d, bad after %d in %zu drained", p, seen_good,
                     seen_bad_after, n);
    }
    fd_stop(&f);
    pm_free(&m);
    server_stop(s);
}

static int wait_up(fielddev *f, int up, unsigned timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    while (fd_device_up(f, 0) != up) {
        if (now_ms() >= end)
            return 0;
        sleep_ms(20);
    }
    return 1;
}

/* A point that flaps while nobody drains: its later GOOD spells fold into its first queued
 * outage, so the consumer sees GOOD, BAD, GOOD: never a BAD period lost, never more than
 * queue_max + 3 readings of one point. */
static void test_queue_folds_a_flapping_point(void **state)
{
    (void)state;
    server *s = server_start();
    char text[512];
    snprintf(text, sizeof text,
             "[device plc]\naddress = tcp:127.0.0.1:%d\nunit_id = 1\ntimeout_ms = 100\n"
             "[point a]\ndevice = plc\nregister = input\naddress = 0\nunit = m\nperiod_ms = 100\n",
             s->port);
    pm_map m = parse_map(text);
    fielddev *f = start(&m, 1, 60000);
    assert_true(wait_up(f, 1, 5000));
    for (int flap = 0; flap < 3; flap++) {
        set_silent(s, 1);
        assert_true(wait_up(f, 0, 5000));
        sleep_ms(200);
        set_silent(s, 0);
        assert_true(wait_up(f, 1, 10000));
        sleep_ms(200);
    }
    fd_reading buf[16];
    size_t n = fd_drain(f, buf, 16);
    assert_int_equal(n, 3);
    assert_true(!buf[0].bad && buf[1].bad && !buf[2].bad);
    assert_true(buf[0].ts_ms <= buf[1].ts_ms && buf[1].ts_ms <= buf[2].ts_ms);
    fd_stats st;
    fd_get_stats(f, &st);
    assert_true(st.dropped > 0);
    fd_stop(&f);
    pm_free(&m);
    server_stop(s);
}

static void test_start_refusals(void **state)
{
    (void)state;
    pm_map empty = {0};
    fd_opts o = {.queue_max = 10, .heartbeat_ms = 1000};
    fielddev *f = (fielddev *)&o; /* must be cleared */
    assert_int_equal(fd_start(&empty, &o, &f), CM_ERR_INVAL);
    assert_null(f);
    pm_map m = parse_map("[device d]\naddress = tcp:127.0.0.1:1\nunit_id = 1\n"
                         "[point p]\ndevice = d\nregister = input\naddress = 0\nunit = m\n");
    o.queue_max = 0;
    assert_int_equal(fd_start(&m, &o, &f), CM_ERR_INVAL);
    o.queue_max = 10;
    o.heartbeat_ms = 0;
    assert_int_equal(fd_start(&m, &o, &f), CM_ERR_INVAL);
    pm_free(&m);
}

int main(void)
{
    cm_log_init("fielddev_test", CM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_poll_and_decode),
        cmocka_unit_test(test_deadband_and_heartbeat),
        cmocka_unit_test(test_outage_and_recovery),
        cmocka_unit_test(test_exception_fails_its_point_only),
        cmocka_unit_test(test_garbage_and_short_frames),
        cmocka_unit_test(test_write_within_limits),
        cmocka_unit_test(test_write_refused_without_touching_the_device),
        cmocka_unit_test(test_dead_devices_do_not_stall_a_good_one),
        cmocka_unit_test(test_queue_keeps_quality_changes),
        cmocka_unit_test(test_queue_folds_a_flapping_point),
        cmocka_unit_test(test_start_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
