"""suido-gateway, the field agent, end to end against a PLC stand-in nobody here wrote: Debian's
python3-pymodbus serving the pumping station of tests/field/plc.py over Modbus TCP, checked from
outside with mbpoll. PLC registers -> suido-gateway -> broker -> suite -> archive with exact values
and units; a command from suidoctl reaches a PLC register and its read-back is reported; a point's
own limits hold even when the gate allowed more; the device going down gives bad-quality readings
and an alarm, then recovery; kill -9 of the agent mid-stream loses nothing; bad maps and a channel
the profile does not know are refused with a clear reason."""
import json
import os
import pathlib
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import time

import pytest

from suite import BIN, TOP, Suite, wait_until

PLC = TOP / "tests" / "field" / "plc.py"
EXAMPLE_MAP = TOP / "gateway" / "agent" / "example-pumping.map"
GW = "gw-0100"

# the example utility's profile, and a speed setpoint the gate allows up to 100 % (the station's
# map limits it to 80 %: the agent's own limit must hold whatever the gate allowed)
SPEED_ACTUATOR = """
[actuator pumping.speed_setpoint]
quantity = pump_speed
unit = %
range = 0, 100
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Plc:
    """tests/field/plc.py on a free port, with a values file to force exact registers."""

    def __init__(self, root, port=None):
        self.port = port or free_port()
        self.values = root / f"plc-{self.port}.json"
        self.log = open(root / f"plc-{self.port}.log", "a")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["/usr/bin/python3", str(PLC), "--port", str(self.port),
                                      "--values", str(self.values)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig != signal.SIGSTOP:
                self.proc.wait(10)

    def force(self, **tables):
        tmp = self.values.with_suffix(".tmp")
        tmp.write_text(json.dumps({t: {str(a): v for a, v in regs.items()}
                                   for t, regs in tables.items()}))
        os.rename(tmp, self.values)

    def mbpoll(self, table, address, count=1, write=None):
        """Reads (or writes) registers from outside the agent: mbpoll, 0-based addresses."""
        t = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}[table]
        argv = ["mbpoll", "-m", "tcp", "-p", str(self.port), "-a", "1", "-0", "-t", t,
                "-r", str(address), "-c", str(count), "-o", "2"]
        if write is None:
            argv.append("-1")
        argv.append("127.0.0.1")
        if write is not None:
            argv.append(str(write))
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr
        return [int(v) for v in re.findall(r"^\[\d+\]:\s+(-?\d+)", r.stdout, re.M)]


def f32_words(x):
    return struct.unpack(">HH", struct.pack(">f", x))


class Agent:
    def __init__(self, root, bundle, map_path, name="agent"):
        self.root, self.bundle, self.map = root, bundle, map_path
        self.state = root / f"{name}-state"
        self.logfile = root / f"{name}.log"
        self.proc = None

    def start(self, *extra):
        self.proc = subprocess.Popen(
            [str(BIN / "suido-gateway"), "--bundle", str(self.bundle), "--map", str(self.map),
             "--state-dir", str(self.state), "--batch", "16", "--linger-ms", "300", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.logfile, "a"))

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(30)
        return self.proc.returncode if self.proc else None

    def log(self):
        return self.logfile.read_text()


def write_map(path, port, text=None):
    text = text if text is not None else EXAMPLE_MAP.read_text()
    path.write_text(text.replace("tcp:127.0.0.1:5020", f"tcp:127.0.0.1:{port}"))
    return path


def provision(suite, gw, out):
    out_json = json.loads(suite.ctl("--json", "gateway", "provision", gw, "--site", "s1-field",
                                    "--kind", "pumping", "--model", "DebianBox", "--firmware",
                                    "1.0", "--out", out).stdout)
    assert out_json["state"] == "provisioned"
    suite.ctl("gateway", "activate", gw)
    time.sleep(0.5)  # the broker plugin reads the identity file within 200 ms
    return out


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    profile = root / "profile.conf"
    profile.write_text((TOP / "examples" / "sim-utility" / "profile.conf").read_text() +
                       SPEED_ACTUATOR)
    s = Suite(root / "suite", gateways=2, profile=profile)
    plc = Plc(root)
    agent = None
    try:
        s.start()
        s.login_admin()
        plc.start()
        bundle = provision(s, GW, root / "bundle")
        agent = Agent(root, bundle, write_map(root / "station.map", plc.port))
        agent.start()
        yield s, plc, agent, root
    finally:
        if agent:
            agent.stop()
        plc.stop()
        codes = s.stop()
        failed = {n: c for n, c in codes.items() if c != 0}
        assert not failed, f"processes exited with errors: {failed}"


def last_value(suite, channel):
    rows = suite.query("SELECT last_value FROM readings_series WHERE gateway=? AND channel=?",
                       GW, channel)
    return rows[0][0] if rows else None


def registry_channels(suite, gw):
    reg = suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(f"file:{reg}?mode=ro", uri=True, timeout=5) as db:
        return dict(db.execute("SELECT channel, unit FROM gateway_channels WHERE gateway=?",
                               (gw,)).fetchall())


def test_plc_registers_arrive_in_the_archive_with_exact_values_and_units(field):
    suite, plc, agent, _ = field
    hi, lo = f32_words(61.25)
    plc.force(input={0: hi, 1: lo, 2: 150, 3: 512, 4: 873, 5: 2345})
    want = {"pumping.flow": 61.25, "pumping.suction_pressure": 1.5,
            "pumping.discharge_pressure": 5.12, "pumping.power": 87.3,
            "pumping.tank_level": 2.345}
    assert wait_until(lambda: all(last_value(suite, c) is not None and
                                  abs(last_value(suite, c) - v) < 1e-9 for c, v in want.items()),
                      30), ({c: last_value(suite, c) for c in want}, agent.log()[-3000:])
    # the declared channels and units are the map's, as the birth carried them
    assert registry_channels(suite, GW) == {
        "pump1_status": "1", "pump2_status": "1", "flow": "L/s", "suction_pressure": "bar",
        "discharge_pressure": "bar", "power": "kW", "tank_level": "m"}
    # every batch arrived signed, encrypted and verified
    rows = suite.query("SELECT count(*), sum(encrypted) FROM batches WHERE gateway=? AND "
                       "kind='data'", GW)
    assert rows[0][0] > 0 and rows[0][0] == rows[0][1]
    plc.force()


def command(suite, actuator, value, unit):
    r = suite.ctl("--json", "command", GW, actuator, str(value), "--unit", unit, check=False)
    return r.returncode, json.loads(r.stdout) if r.stdout.startswith("{") else None, r.stderr


def outcome(suite, command_id):
    rows = suite.query("SELECT decision, detail FROM command_log WHERE command_id=? "
                       "ORDER BY id DESC LIMIT 1", command_id)
    return rows[0] if rows else (None, None)


def test_a_command_reaches_the_plc_register_and_its_read_back_is_reported(field):
    suite, plc, agent, _ = field
    assert plc.mbpoll("coil", 1) == [0]  # pump 2 stands by
    code, out, err = command(suite, "pump2", 1, "1")
    assert code == 0 and out["decision"] == "sent", (out, err)
    assert wait_until(lambda: outcome(suite, out["command_id"])[0] not in (None, "sent"), 20), \
        agent.log()[-3000:]
    decision, detail = outcome(suite, out["command_id"])
    assert decision in ("applied", "followed"), (decision, detail)
    assert plc.mbpoll("coil", 1) == [1]
    # the setpoint: a holding register, and the value the agent read back is in the result
    code, out, err = command(suite, "speed_setpoint", 55, "%")
    assert code == 0, (out, err)
    assert wait_until(lambda: outcome(suite, out["command_id"])[0] not in (None, "sent"), 20)
    assert outcome(suite, out["command_id"])[0] in ("applied", "followed")
    assert plc.mbpoll("holding", 0) == [55]
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='command_result' AND detail LIKE ?",
        f"%command={out['command_id']} outcome=applied%value_in_force=55%")[0][0] == 1, 10)


def test_the_agent_refuses_a_command_outside_the_points_limits_even_when_the_gate_passed_it(field):
    suite, plc, agent, _ = field
    before = plc.mbpoll("holding", 0)
    code, out, err = command(suite, "speed_setpoint", 90, "%")  # the gate allows up to 100 %
    assert code == 0 and out["decision"] == "sent", (out, err)
    assert wait_until(lambda: outcome(suite, out["command_id"])[0] not in (None, "sent"), 20)
    assert outcome(suite, out["command_id"])[0] == "refused_by_gateway:out_of_range"
    assert plc.mbpoll("holding", 0) == before  # nothing was written


def alerts(suite, rule, channel):
    return suite.query("SELECT count(*) FROM alerts WHERE gateway=? AND rule=? AND channel=?",
                       GW, rule, channel)[0][0]


def test_the_device_going_down_gives_bad_quality_readings_and_an_alarm_then_recovery(field):
    suite, plc, agent, _ = field
    before = alerts(suite, "bad_quality", "pumping.tank_level")
    plc.stop()
    assert wait_until(lambda: "event=device_down" in agent.log(), 15), agent.log()[-2000:]
    assert wait_until(lambda: alerts(suite, "bad_quality", "pumping.tank_level") > before, 30)
    # no value of the outage passes for a measurement: the series stands still
    last = suite.query("SELECT last_ms FROM readings_series WHERE gateway=? AND channel=?",
                       GW, "pumping.tank_level")[0][0]
    time.sleep(2)
    assert suite.query("SELECT last_ms FROM readings_series WHERE gateway=? AND channel=?",
                       GW, "pumping.tank_level")[0][0] == last
    plc.start()  # the same port again
    assert wait_until(lambda: "event=device_up" in agent.log(), 20), agent.log()[-2000:]
    assert wait_until(lambda: suite.query(
        "SELECT last_ms FROM readings_series WHERE gateway=? AND channel=?",
        GW, "pumping.tank_level")[0][0] > last, 20)


def gaps(suite, gw):
    """Per boot epoch of gw: the sequence numbers missing below the highest stored."""
    out = {}
    for (epoch,) in suite.query("SELECT DISTINCT boot_epoch FROM batches WHERE gateway=?", gw):
        seqs = {s for (s,) in suite.query(
            "SELECT seq FROM batches WHERE gateway=? AND boot_epoch=?", gw, epoch)}
        missing = set(range(1, max(seqs) + 1)) - seqs
        if missing:
            out[epoch] = sorted(missing)
    return out


def test_kill_9_of_the_agent_mid_stream_loses_nothing(field):
    suite, plc, agent, root = field
    # every poll sends: the flow keeps changing (the PLC's model runs), readings stream
    epochs = lambda: {e for (e,) in suite.query(
        "SELECT DISTINCT boot_epoch FROM batches WHERE gateway=?", GW)}
    first = epochs()
    time.sleep(3)
    agent.stop(signal.SIGKILL)
    stored_before = suite.query("SELECT count(*) FROM batches WHERE gateway=?", GW)[0][0]
    time.sleep(1)
    log_from = len(agent.log())
    agent.start()
    assert wait_until(lambda: len(epochs()) > len(first), 20), agent.log()[-2000:]
    time.sleep(3)
    # an orderly stop this time, after which the outbox must hold nothing: every batch of the
    # killed run (stored before it was first sent) and of this one reached the archive
    assert agent.stop() == 0
    after = agent.log()[log_from:]
    assert "event=outbox_kept" not in after, after[-3000:]
    assert suite.query("SELECT count(*) FROM batches WHERE gateway=?", GW)[0][0] > stored_before
    assert gaps(suite, GW) == {}, gaps(suite, GW)
    agent.start()


def test_a_bad_map_stops_the_agent_at_start_with_file_line_and_reason(field, tmp_path):
    suite, plc, agent, root = field
    cases = {
        "type = f32\n": ("type = f64\n", r"unknown type 'f64'"),
        "address = 5\n": ("address = 70000\n", r"address"),
        "register = input\n": ("register = analog\n", r"register"),
    }
    text = EXAMPLE_MAP.read_text()
    for good, (bad, why) in cases.items():
        m = tmp_path / "bad.map"
        m.write_text(text.replace(good, bad, 1))
        line = text[:text.index(good)].count("\n") + 1
        r = subprocess.run([str(BIN / "suido-gateway"), "--check", "--bundle",
                            str(root / "bundle"), "--map", str(m)],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 1, (bad, r.stdout, r.stderr)
        assert f"bad.map:{line}:" in r.stderr and re.search(why, r.stderr), (bad, r.stderr)
    r = subprocess.run([str(BIN / "suido-gateway"), "--check", "--bundle", str(root / "bundle"),
                        "--map", str(EXAMPLE_MAP)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "7 channel(s), 3 actuator(s)" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(BIN / "suido-gateway"), "--check", "--bundle", str(root / "bundle"),
                        "--map", str(TOP / "examples" / "ctown" / "pumping-station-s1.map")],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "9 channel(s), 0 actuator(s)" in r.stdout, r.stdout + r.stderr
    # a key readable by others
    loose = tmp_path / "loose"
    subprocess.run(["cp", "-a", str(root / "bundle"), str(loose)], check=True)
    os.chmod(loose / "sign.key", 0o644)
    r = subprocess.run([str(BIN / "suido-gateway"), "--check", "--bundle", str(loose), "--map",
                        str(EXAMPLE_MAP)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "sign.key" in r.stderr and "0600" in r.stderr, r.stderr


def test_an_unknown_channel_is_refused_at_birth_and_a_modbus_exception_fails_its_point_only(
        field, tmp_path):
    suite, plc, agent, root = field
    gw = "gw-0101"
    bundle = provision(suite, gw, tmp_path / "bundle")
    text = EXAMPLE_MAP.read_text()
    # a channel the profile does not know for pumping stations: the birth is refused
    unknown = text.replace("[point power]", "[point turbine_rpm]")
    a = Agent(tmp_path, bundle, write_map(tmp_path / "unknown.map", plc.port, unknown), "unknown")
    a.start()
    try:
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM rejects WHERE gateway=? AND reason='unknown_channel'",
            gw)[0][0] > 0, 20), a.log()[-2000:]
        assert wait_until(lambda: "channel=turbine_rpm" in suite.log("profile"), 5)
    finally:
        assert a.stop() == 0
    # the power register at an address the PLC does not serve: an exception, that point only
    exc = text.replace("address = 4\n", "address = 9\n", 1)
    b = Agent(tmp_path, bundle, write_map(tmp_path / "exc.map", plc.port, exc), "exception")
    b.start()
    try:
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM alerts WHERE gateway=? AND rule='bad_quality' AND "
            "channel='pumping.power'", gw)[0][0] > 0, 30), b.log()[-2000:]
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM readings_series WHERE gateway=? AND channel='pumping.flow'",
            gw)[0][0] == 1, 20)
    finally:
        assert b.stop() == 0
    stop_line = [l for l in b.log().splitlines() if "event=stopping" in l][-1]
    assert int(re.search(r"exceptions=(\d+)", stop_line).group(1)) > 0, stop_line
    assert re.search(r"devices_down=0", stop_line), stop_line
