/* pointmap: the field agent's point map, which says where each channel of a site lives on its
 * PLCs (device, Modbus register kind and address, encoding) and how raw registers become
 * engineering values. Parsed with cm_conf; the format, one section per device and per point:
 *
 *   [device plc1]
 *   address = tcp:127.0.0.1:5020     # tcp:HOST:PORT (HOST a name, an IPv4 or [IPv6] address)
 *                                    # or rtu:/dev/ttyUSB0 (a serial line)
 *   unit_id = 1                      # required; rtu 0..247, tcp 0..247 or 255 (what libmodbus
 *                                    # accepts on TCP)
 *   timeout_ms = 1000                # 10..60000: response (and TCP connect) timeout
 *   baud = 9600                      # rtu only, like parity = N|E|O, data_bits = 7|8,
 *                                    # stop_bits = 1|2 (defaults 9600, N, 8, 1)
 *   [point flow]                     # the section name is the channel id (cm_valid_label)
 *   device = plc1                    # required, a [device] of this file
 *   register = input                 # required: holding, input, coil or discrete
 *   address = 10                     # required: protocol address 0..65535 (0-based)
 *   type = f32                       # u16 (default), i16, u32, i32, f32; coil and discrete
 *                                    # points are u16 (0/1)
 *   word_order = big                 # 32-bit types only: big (high word first) or little
 *   scale = 0.1                      # engineering = raw * scale + offset; finite, non-zero
 *   offset = 0
 *   unit = L/s                       # required: 1..16 printable ASCII characters, no space
 *   period_ms = 1000                 # 100..3600000
 *   deadband = 0                     # >= 0; see fielddev.h
 *   writable = no                    # yes: holding or coil only, and then
 *   limits = 0, 1                    # required: lo, hi in engineering units, lo <= hi
 *
 * Refused, with one message "file:line: what is wrong" naming the line of the offending key
 * (or of the section's header when a whole section is wrong; "file: ..." when the whole file
 * is, as for a map without points or a file that cannot be read): unknown sections and keys,
 * missing required keys, a repeated section (a channel or a device twice), a bad value of any
 * key, a point on an unknown device, a device without points, two devices on one serial line
 * (a shared RS-485 bus would need one thread for all its devices: not supported), two writable
 * points sharing a register of the same device and kind, writable limits the point's type
 * cannot hold after scaling, more than PM_MAX_POINTS points or PM_MAX_DEVICES devices. A map
 * is plain data: no hidden state. */
#ifndef GW_POINTMAP_H
#define GW_POINTMAP_H
#include <stddef.h>
#include <stdint.h>

#include "cm_conf.h"
#include "cm_err.h"

#define PM_MAX_POINTS 4096
#define PM_MAX_DEVICES 64
#define PM_NAME_MAX 64 /* device names and channel ids: cm_valid_label */
#define PM_UNIT_MAX 16

typedef enum pm_register { PM_HOLDING, PM_INPUT, PM_COIL, PM_DISCRETE } pm_register;
typedef enum pm_type { PM_U16, PM_I16, PM_U32, PM_I32, PM_F32 } pm_type;

typedef struct pm_device {
    char name[PM_NAME_MAX + 1];
    int rtu; /* 0: Modbus TCP (host, port); 1: Modbus RTU (serial and line settings) */
    char host[256];
    int port;
    char serial[256];
    int baud;
    char parity; /* 'N', 'E' or 'O' */
    int data_bits, stop_bits;
    int unit_id;
    int timeout_ms;
    int line; /* line of the [device] header, for messages */
} pm_device;

typedef struct pm_point {
    char channel[PM_NAME_MAX + 1];
    char unit[PM_UNIT_MAX + 1];
    size_t device; /* index into pm_map.dev */
    pm_register reg;
    int address;
    pm_type type;
    int word_little; /* 32-bit types: 1 when the low word comes first */
    double scale, offset;
    int period_ms;
    double deadband;
    int writable;
    double lo, hi; /* writable points: the engineering values a write may ask for */
    int line;      /* line of the [point] header */
} pm_point;

typedef struct pm_map {
    pm_device *dev;
    size_t ndev;
    pm_point *pt;
    size_t npt;
} pm_map;

/* Reads and parses the map at path. On error *out is empty (as after pm_free) and err holds
 * "path:line: reason"; CM_ERR_CONFIG for every refusal, CM_ERR_NOMEM when memory ran out. */
cm_err pm_load(const char *path, pm_map *out, char err[CM_CONF_ERRLEN]);
/* The same for an in-memory text (len bytes, NUL bytes refused); name stands for the file in
 * messages. For tests and fuzzing. */
cm_err pm_parse(const char *name, const char *text, size_t len, pm_map *out,
                char err[CM_CONF_ERRLEN]);
/* Frees what pm_load or pm_parse gave and empties *m; safe on an empty map. */
void pm_free(pm_map *m);

/* Registers the point occupies: 2 for u32, i32 and f32, 1 otherwise. */
int pm_register_count(const pm_point *p);
/* The engineering value of raw registers (regs[1] is read only for 32-bit types; a coil or
 * discrete input is 1 when regs[0] is non-zero): raw * scale + offset. An f32 holding a NaN or
 * an infinity gives a non-finite result, which callers must treat as bad data. */
double pm_decode(const pm_point *p, const uint16_t regs[2]);
/* The registers that make a write of value: raw = (value - offset) / scale, rounded to the
 * nearest integer for integer types, 0/1 for coils and discrete inputs (raw >= 0.5 is 1).
 * Returns 0, or -1 without touching regs when value is not finite or raw does not fit the type
 * (outside 0..65535 for u16, -32768..32767 for i16, ..., outside [0, 1] for bits, beyond the
 * range of a float for f32). */
int pm_encode(const pm_point *p, double value, uint16_t regs[2]);

/* "holding", "input", "coil", "discrete" and "u16" ... "f32", for messages and logs. */
const char *pm_register_name(pm_register r);
const char *pm_type_name(pm_type t);

#endif
