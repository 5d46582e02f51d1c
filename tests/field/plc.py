#!/usr/bin/python3
"""A PLC stand-in for the field agent: a small pumping station served over Modbus TCP by
Debian's python3-pymodbus (3.0.0), on 127.0.0.1 only.

    /usr/bin/python3 tests/field/plc.py --port PORT [--unit 1] [--values FILE] [--freeze]

Registers (protocol addresses, 0-based; README.md has the table): input registers 0-1 flow (f32,
high word first, L/s), 2 suction pressure and 3 discharge pressure (u16, 0.01 bar), 4 power
(u16, 0.1 kW), 5 tank level (u16, mm); discrete inputs 0-1 pump1_status, pump2_status; coils 0-1
pump1, pump2 (run commands); holding register 0 speed_setpoint (u16, %). Any other address
draws a Modbus exception (illegal data address); a request for another unit id than --unit gets
no answer at all (pymodbus 3.0.0 drops it), which the client sees as a timeout.

The model, once a second: each pump's status follows its coil; flow is 60 L/s per running pump
at the default 75 % speed (proportional to the speed setpoint, at most 100 %); the pressures and
the power follow the flow and the speed; the tank rises while a pump runs and falls otherwise. It
is deterministic: the same commands at the same seconds give the same values. --freeze stops the
process values (flow, pressures, power, level); the pump statuses still follow their coils,
which is the PLC's logic rather than the process.

--values FILE: a JSON object the caller rewrites to force exact raw values, e.g.
{"input": {"2": 123, "5": 2500}, "coil": {"0": 1}}, with the keys "input", "holding", "coil" and
"discrete", each mapping an address to a raw value (0..65535; 0 or 1 for bits). It is read again
every 200 ms; a forced value wins over the model and over Modbus writes until it leaves the file.
A file that cannot be read or parsed leaves the previous forcing in force (write it to a
temporary name, then rename it over FILE).

Prints "ready" on stdout once listening; exits 0 on SIGTERM or SIGINT, 1 when it cannot listen.
pymodbus' own log (it logs every closed connection as an error) is shown with --verbose only.
"""
import argparse
import asyncio
import json
import logging
import math
import signal
import struct
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer

# pymodbus function codes as its datastore names the four tables
FC_COIL, FC_DISCRETE, FC_HOLDING, FC_INPUT = 1, 2, 3, 4
KINDS = {"coil": FC_COIL, "discrete": FC_DISCRETE, "holding": FC_HOLDING, "input": FC_INPUT}
SIZES = {FC_COIL: 2, FC_DISCRETE: 2, FC_HOLDING: 1, FC_INPUT: 6}

IR_FLOW, IR_SUCTION, IR_DISCHARGE, IR_POWER, IR_LEVEL = 0, 2, 3, 4, 5
HR_SPEED = 0
DEFAULT_SPEED = 75          # % at start
FLOW_PER_PUMP = 60.0        # L/s per running pump at DEFAULT_SPEED
POWER_PER_PUMP = 15.0       # kW per running pump at DEFAULT_SPEED
LEVEL_START_MM = 2500
LEVEL_MAX_MM = 5000
DEMAND_MM_S = 1.0           # the tank falls this fast with no pump running
FILL_MM_S_PER_60LS = 2.0    # and rises this much per 60 L/s pumped


def f32_words(value):
    """The two registers of a float, high word first."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


class Station:
    """The registers and the process model behind them."""

    def __init__(self, freeze):
        self.freeze = freeze
        self.tick = 0
        self.level_mm = float(LEVEL_START_MM)
        self.forced = {}  # fc -> {address: raw}
        self.slave = ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [0] * SIZES[FC_DISCRETE]),
            co=ModbusSequentialDataBlock(0, [0] * SIZES[FC_COIL]),
            hr=ModbusSequentialDataBlock(0, [0] * SIZES[FC_HOLDING]),
            ir=ModbusSequentialDataBlock(0, [0] * SIZES[FC_INPUT]),
            zero_mode=True,  # protocol address N is element N (pymodbus adds 1 otherwise)
        )
        self.set(FC_COIL, 0, [1])  # pump1 runs at start, pump2 stands by
        self.set(FC_HOLDING, HR_SPEED, [DEFAULT_SPEED])
        self.update()

    def get(self, fc, address, count=1):
        return self.slave.getValues(fc, address, count)

    def set(self, fc, address, values):
        self.slave.setValues(fc, address, values)

    def update(self):
        """One second of the station."""
        coils = self.get(FC_COIL, 0, 2)
        self.set(FC_DISCRETE, 0, [bool(c) for c in coils])
        if not self.freeze or self.tick == 0:
            running = sum(1 for c in coils if c)
            speed = min(self.get(FC_HOLDING, HR_SPEED)[0], 100) / DEFAULT_SPEED
            ripple = math.sin(self.tick / 5.0) if running else 0.0
            flow = running * FLOW_PER_PUMP * speed + 0.3 * ripple
            suction = 1.20 - 0.002 * flow
            discharge = suction + (3.0 * speed * speed if running else 0.0) + 0.01 * ripple
            power = running * POWER_PER_PUMP * speed ** 3
            self.level_mm += FILL_MM_S_PER_60LS * flow / FLOW_PER_PUMP - DEMAND_MM_S
            self.level_mm = min(max(self.level_mm, 0.0), float(LEVEL_MAX_MM))
            self.set(FC_INPUT, IR_FLOW, f32_words(flow))
            self.set(FC_INPUT, IR_SUCTION, [to_u16(suction * 100)])
            self.set(FC_INPUT, IR_DISCHARGE, [to_u16(discharge * 100)])
            self.set(FC_INPUT, IR_POWER, [to_u16(power * 10)])
            self.set(FC_INPUT, IR_LEVEL, [to_u16(self.level_mm)])
        self.tick += 1
        self.apply_forced()

    def apply_forced(self):
        for fc, values in self.forced.items():
            for address, raw in values.items():
                self.set(fc, address, [bool(raw)] if fc in (FC_COIL, FC_DISCRETE) else [raw])

    def load_forced(self, path):
        """Reads the --values file; returns an error text, or None when it is in force."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            doc = {}
        except (OSError, ValueError) as exc:
            return f"{path}: {exc}"
        if not isinstance(doc, dict):
            return f"{path}: not a JSON object"
        forced = {}
        for kind, values in doc.items():
            fc = KINDS.get(kind)
            if fc is None or not isinstance(values, dict):
                return f"{path}: unknown table {kind!r} (input, holding, coil, discrete)"
            top = 1 if fc in (FC_COIL, FC_DISCRETE) else 65535
            table = {}
            for key, raw in values.items():
                if not key.isdigit() or int(key) >= SIZES[fc]:
                    return f"{path}: {kind} has no address {key!r}"
                if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= top:
                    return f"{path}: {kind} {key}: {raw!r} is not an integer in 0..{top}"
                table[int(key)] = raw
            forced[fc] = table
        self.forced = forced
        self.apply_forced()
        return None


def to_u16(value):
    return min(max(int(round(value)), 0), 65535)


class Bank:
    """A benchmark's points (--bank N): N input registers from address 0 of their own unit id,
    each a different counter moving every second, so that every poll reads a new value."""

    def __init__(self, n):
        self.n = n
        self.tick = 0
        self.slave = ModbusSlaveContext(ir=ModbusSequentialDataBlock(0, [0] * n), zero_mode=True)
        self.update()

    def update(self):
        self.slave.setValues(FC_INPUT, 0, [(i + self.tick) % 65536 for i in range(self.n)])
        self.tick += 1


async def run_model(*models):
    while True:
        await asyncio.sleep(1.0)
        for m in models:
            m.update()


async def watch_values(station, path):
    last_error = None
    while True:
        error = station.load_forced(path)
        if error and error != last_error:
            print(f"plc: {error} (previous values kept)", file=sys.stderr, flush=True)
        last_error = error
        await asyncio.sleep(0.2)


async def main():
    parser = argparse.ArgumentParser(description="pumping station PLC over Modbus TCP")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id (1..247)")
    parser.add_argument("--values", help="JSON file of forced raw values, read every 200 ms")
    parser.add_argument("--freeze", action="store_true", help="process values do not change")
    parser.add_argument("--verbose", action="store_true", help="show pymodbus' debug log")
    parser.add_argument("--bank", type=int, default=0, metavar="N",
                        help="also serve N changing input registers as unit id --bank-unit")
    parser.add_argument("--bank-unit", type=int, default=2, help="unit id of the bank (2)")
    args = parser.parse_args()
    if not 1 <= args.port <= 65535 or not 1 <= args.unit <= 247:
        parser.error("--port must be 1..65535 and --unit 1..247")
    if not 0 <= args.bank <= 65535 or (args.bank and args.bank_unit in (args.unit, 0)):
        parser.error("--bank must be 0..65535, on a unit id of its own")

    # pymodbus.constants configures the root logger when imported: set its level here
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    station = Station(args.freeze)
    slaves = {args.unit: station.slave}
    bank = Bank(args.bank) if args.bank else None
    if bank:
        slaves[args.bank_unit] = bank.slave
    context = ModbusServerContext(slaves=slaves, single=False)
    server = await StartAsyncTcpServer(
        context=context,
        address=("127.0.0.1", args.port),
        defer_start=True,
        allow_reuse_address=True,
    )
    serving = asyncio.create_task(server.serve_forever())
    await asyncio.wait({serving, server.serving}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():  # it could not listen
        exc = serving.exception()
        print(f"plc: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(run_model(station, *([bank] if bank else [])))]
    if args.values:
        tasks.append(asyncio.create_task(watch_values(station, args.values)))
    print("ready", flush=True)
    await stop.wait()

    for task in tasks:
        task.cancel()
    await server.shutdown()
    serving.cancel()
    await asyncio.gather(serving, *tasks, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
