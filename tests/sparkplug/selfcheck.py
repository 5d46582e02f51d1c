"""Self-check of the test edge node (edge_node.py) against a throwaway local Mosquitto.

    /usr/bin/python3 tests/sparkplug/selfcheck.py

Starts mosquitto on free loopback ports (plain TCP: one listener anonymous, one refusing
anonymous clients), runs an EdgeNode through connect, births, data, a forced seq gap, a seq wrap,
commands (Rebirth answered with auto_rebirth, a DCMD by alias, a malformed NCMD), DDEATH, an
explicit NDEATH, a dropped connection (the will), reconnects (bdSeq + 1, 255 -> 0) and a clean
disconnect (no will), while a second paho client subscribed to spBv1.0/# decodes everything with
the generated module and checks the fields. Prints one line per check; exits 0 when all pass.
Not a pytest module itself: test_edge_node.py runs it with the suite."""
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import paho.mqtt.client as mqtt

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import edge_node as sp  # noqa: E402
from edge_node import DataType as DT  # noqa: E402

GROUP, NODE, DEVICE = "SelfCheck", "rtu-1", "pump-1"
failures = []
passed = 0


def check(cond, what):
    global passed
    if cond:
        passed += 1
        print(f"ok    {what}")
    else:
        failures.append(what)
        print(f"FAIL  {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto -c conf: an anonymous listener and one that refuses anonymous clients."""

    def __init__(self, root):
        self.port, self.closed_port = free_port(), free_port()
        conf = pathlib.Path(root) / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"listener {self.closed_port} 127.0.0.1\n"
            "allow_anonymous false\n")
        self.log = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(10):
            self.stop()
            raise RuntimeError("mosquitto did not report running within 10 s:\n"
                               + "".join(self.log))

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if " running" in line:
                self.ready.set()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Observer:
    """A plain paho client subscribed to spBv1.0/#; messages in arrival order."""

    def __init__(self, port):
        self.msgs = []
        self.pos = 0
        self.cond = threading.Condition()
        self.c = mqtt.Client(client_id="selfcheck-observer", clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_connect = self._on_connect
        self.subscribed = threading.Event()
        self.connack = threading.Event()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.connack.wait(10):
            raise TimeoutError("observer: no CONNACK within 10 s")
        self.c.subscribe("spBv1.0/#", qos=1)
        if not self.subscribed.wait(10):
            raise TimeoutError("observer: no SUBACK within 10 s")

    def _on_connect(self, client, userdata, flags, rc):
        self.connack.set()

    def _on_subscribe(self, client, userdata, mid, granted):
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.msgs.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def expect(self, topic, timeout=10):
        """The next message on topic after the previous expect()ed one: (bytes, Payload)."""
        def find():     # a list, so that index 0 is true for wait_for
            return [i for i in range(self.pos, len(self.msgs)) if self.msgs[i][0] == topic][:1]
        with self.cond:
            found = self.cond.wait_for(find, timeout)
            if not found:
                raise TimeoutError(f"observer: nothing on {topic} within {timeout} s; after "
                                   f"position {self.pos} got {[t for t, _ in self.msgs[self.pos:]]}")
            self.pos = found[0] + 1
            data = self.msgs[found[0]][1]
        try:
            return data, sp.decode(data)
        except Exception:
            return data, None

    def publish(self, topic, data, qos=1):
        info = self.c.publish(topic, data, qos=qos)
        info.wait_for_publish(10)
        if not info.is_published():
            raise TimeoutError(f"observer: publish on {topic} not acknowledged within 10 s")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def by_name(p):
    return {m.name: m for m in p.metrics if m.HasField("name")}


def by_alias(p):
    return {m.alias: m for m in p.metrics if m.HasField("alias")}


def props(m):
    return {k: v for k, v in zip(m.properties.keys, m.properties.values)}


def recent(ts):
    return abs(ts - sp.now_ms()) < 60_000


def main():
    root = tempfile.mkdtemp(prefix="sparkplug-selfcheck-")
    broker = Broker(root)
    obs = node = None
    try:
        obs = Observer(broker.port)
        t = lambda verb, dev=None: sp.topic(GROUP, verb, NODE, dev)  # noqa: E731

        # ---- refused connection
        try:
            sp.EdgeNode("127.0.0.1", broker.closed_port, GROUP, "refused").connect(timeout=10)
            check(False, "CONNECT to a listener refusing anonymous clients raises ConnectRefused")
        except sp.ConnectRefused as e:
            check(e.rc == 5, f"refused CONNECT raises ConnectRefused rc=5: {e}")

        node = sp.EdgeNode("127.0.0.1", broker.port, GROUP, NODE, bdseq=5, auto_rebirth=True)
        node.connect()
        check(node.connected, "edge node connected (CONNACK 0, SUBACK for NCMD and DCMD/+)")

        # ---- NBIRTH
        node.nbirth([
            {"name": "Flow", "alias": 1, "datatype": DT.Float, "value": 12.5, "unit": "m3/h"},
            {"name": "Temp offset", "alias": 2, "datatype": DT.Int16, "value": -300,
             "unit": "degC"},
            {"name": "Pump running", "alias": 3, "datatype": DT.Boolean, "value": True},
            {"name": "Level", "alias": 4, "datatype": DT.Double, "value": 3.141592653589793,
             "properties": {"Quality": 192, "Sensor": "LT-101"}},
            {"name": "Delta", "alias": 5, "datatype": DT.Int64, "value": -2},
            {"name": "Count", "alias": 6, "datatype": DT.UInt32, "value": 4_000_000_000},
            {"name": "Site", "alias": 7, "datatype": DT.String, "value": "Reservoir A"},
            {"name": "Small", "alias": 8, "datatype": DT.Int8, "value": -1},
            {"name": "When", "alias": 9, "datatype": DT.DateTime, "value": 1_700_000_000_000},
            {"name": "Samples", "alias": 20, "datatype": DT.Int16Array, "value": [-30000, 30000]},
            {"name": "Flags", "alias": 21, "datatype": DT.BooleanArray,
             "value": [False, False, True, True, False, True, False, False, True, True, False,
                       True]},
        ])
        _, p = obs.expect(t("NBIRTH"))
        check(p is not None, "NBIRTH decodes with the generated module")
        check(p.HasField("seq") and p.seq == 0, f"NBIRTH seq 0 (got {p.seq})")
        check(p.HasField("timestamp") and recent(p.timestamp), "NBIRTH payload timestamp is now")
        n = by_name(p)
        check(p.metrics[0].name == "bdSeq" and n["bdSeq"].datatype == DT.UInt64
              and n["bdSeq"].WhichOneof("value") == "long_value" and n["bdSeq"].long_value == 5,
              "NBIRTH bdSeq metric UInt64 long_value 5")
        r = n["Node Control/Rebirth"]
        check(r.datatype == DT.Boolean and r.WhichOneof("value") == "boolean_value"
              and r.boolean_value is False, "NBIRTH Node Control/Rebirth Boolean false")
        user = [m for m in p.metrics if m.name not in ("bdSeq", "Node Control/Rebirth")]
        check(all(m.HasField("name") and m.HasField("alias") and m.HasField("datatype")
                  and m.HasField("timestamp") for m in user),
              "every NBIRTH metric has name, alias, datatype and timestamp")
        m = n["Temp offset"]
        check(m.datatype == DT.Int16 and m.WhichOneof("value") == "int_value"
              and m.int_value == 0xFFFFFED4 == (-300) & 0xFFFFFFFF,
              f"Int16 -300 as two's complement in int_value: {m.int_value:#x}")
        check(sp.get_value(m) == -300, "Int16 -300 decodes back to -300")
        pr = props(m)
        check(list(m.properties.keys) == ["engUnit"] and pr["engUnit"].type == DT.String
              and pr["engUnit"].string_value == "degC", "engUnit property String 'degC'")
        m = n["Flow"]
        check(m.WhichOneof("value") == "float_value" and m.float_value == 12.5
              and props(m)["engUnit"].string_value == "m3/h", "Float 12.5 in float_value, m3/h")
        m = n["Level"]
        pr = props(m)
        check(m.WhichOneof("value") == "double_value" and m.double_value == 3.141592653589793,
              "Double in double_value, exact")
        check(pr["Quality"].type == DT.Int32 and pr["Quality"].int_value == 192
              and pr["Sensor"].type == DT.String and pr["Sensor"].string_value == "LT-101",
              "PropertySet: Quality Int32 192, Sensor String")
        m = n["Pump running"]
        check(m.WhichOneof("value") == "boolean_value" and m.boolean_value is True,
              "Boolean true in boolean_value")
        m = n["Delta"]
        check(m.WhichOneof("value") == "long_value" and m.long_value == 2**64 - 2
              and sp.get_value(m) == -2, "Int64 -2 as 64-bit two's complement in long_value")
        m = n["Count"]
        check(m.WhichOneof("value") == "int_value" and m.int_value == 4_000_000_000,
              "UInt32 4e9 in int_value")
        m = n["Small"]
        check(m.int_value == 0xFFFFFFFF and sp.get_value(m) == -1,
              "Int8 -1 as 0xFFFFFFFF (32-bit sign extension)")
        m = n["When"]
        check(m.WhichOneof("value") == "long_value" and m.long_value == 1_700_000_000_000,
              "DateTime in long_value (ms)")
        check(n["Site"].string_value == "Reservoir A", "String in string_value")
        check(n["Samples"].bytes_value == bytes([0xD0, 0x8A, 0x30, 0x75]),
              "Int16Array [-30000, 30000] packed LE as the spec's example")
        fl = n["Flags"].bytes_value
        check(fl[:5] == bytes([0x0C, 0, 0, 0, 0x34]) and fl[5] & 0xF0 == 0xD0 and len(fl) == 6,
              "BooleanArray as the spec's example (count, MSB-first bits)")
        check(sp.get_value(n["Flags"])[:4] == [False, False, True, True],
              "BooleanArray decodes back")

        # ---- DBIRTH
        node.dbirth(DEVICE, [
            {"name": "Speed", "alias": 10, "datatype": DT.Float, "value": 1450.0, "unit": "rpm"},
            {"name": "Fault", "alias": 11, "datatype": DT.Boolean, "value": False},
            {"name": "Current", "alias": 12, "datatype": DT.Int32, "value": -7},
        ])
        _, p = obs.expect(t("DBIRTH", DEVICE))
        n = by_name(p)
        check(p.seq == 1 and recent(p.timestamp), f"DBIRTH seq 1 (got {p.seq}), timestamp")
        check(n["Fault"].WhichOneof("value") == "boolean_value"
              and n["Fault"].boolean_value is False, "DBIRTH Boolean false present")
        check(n["Current"].int_value == (-7) & 0xFFFFFFFF, "DBIRTH Int32 -7 two's complement")
        check("bdSeq" not in n, "DBIRTH has no bdSeq")

        # ---- NDATA by alias
        node.ndata({"Flow": 13.25, "Temp offset": -1, "Pump running": False})
        _, p = obs.expect(t("NDATA"))
        a = by_alias(p)
        check(p.seq == 2, f"NDATA seq 2 (got {p.seq})")
        check(all(not m.HasField("name") for m in p.metrics) and sorted(a) == [1, 2, 3],
              "NDATA metrics by alias only")
        check([a[i].datatype for i in (1, 2, 3)] == [DT.Float, DT.Int16, DT.Boolean],
              "NDATA metrics carry their birth datatypes")
        check(a[2].int_value == 0xFFFFFFFF and sp.get_value(a[2]) == -1,
              "NDATA Int16 -1 as 0xFFFFFFFF")
        check(a[1].float_value == 13.25 and a[3].WhichOneof("value") == "boolean_value"
              and a[3].boolean_value is False, "NDATA Float 13.25, Boolean false")
        check(all(m.HasField("timestamp") for m in p.metrics), "NDATA metric timestamps")

        # ---- DDATA by name
        node.ddata(DEVICE, {"Speed": 1450.5, "Current": -8}, by_alias=False)
        _, p = obs.expect(t("DDATA", DEVICE))
        n = by_name(p)
        check(p.seq == 3, f"DDATA seq 3 (got {p.seq})")
        check(sorted(n) == ["Current", "Speed"] and all(not m.HasField("alias")
                                                        for m in p.metrics),
              "DDATA by name only")
        check(n["Speed"].float_value == 1450.5 and sp.get_value(n["Current"]) == -8,
              "DDATA values")

        # ---- forced gap, then wrap
        node.seq = 10
        node.ndata({"Flow": 1.0})
        node.ndata({"Flow": 2.0})
        s1, s2 = obs.expect(t("NDATA"))[1].seq, obs.expect(t("NDATA"))[1].seq
        check((s1, s2) == (10, 11), f"forced seq gap: 10 then 11 (got {s1}, {s2})")
        node.seq = 255
        node.ndata({"Flow": 3.0})
        node.ddata(DEVICE, {"Fault": True})
        s1 = obs.expect(t("NDATA"))[1].seq
        s2 = obs.expect(t("DDATA", DEVICE))[1].seq
        check((s1, s2) == (255, 0), f"seq wraps 255 -> 0 across NDATA/DDATA (got {s1}, {s2})")
        node.ndata({"Flow": 4.0}, by_alias=True)
        obs.expect(t("NDATA"))

        # ---- NCMD Rebirth answered (auto_rebirth)
        start = len(node.commands)
        cmd = sp.build_payload([{"name": "Node Control/Rebirth", "datatype": DT.Boolean,
                                 "value": True}]).SerializeToString()
        obs.publish(t("NCMD"), cmd)
        topic_, values = node.wait_command(lambda c: c[0].endswith("/NCMD/" + NODE), start=start)
        check(values == {"Node Control/Rebirth": True}, f"NCMD decoded: {values}")
        node.wait_rebirths(1)
        check(node.rebirths == 1, "auto_rebirth answered the Rebirth command")
        _, p = obs.expect(t("NBIRTH"))
        n = by_name(p)
        check(p.seq == 0 and n["bdSeq"].long_value == 5,
              "rebirth NBIRTH: seq 0, same bdSeq 5")
        check(n["Flow"].float_value == 4.0 and n["Node Control/Rebirth"].boolean_value is False,
              "rebirth NBIRTH carries current values, Rebirth false")
        _, p = obs.expect(t("DBIRTH", DEVICE))
        n = by_name(p)
        check(p.seq == 1 and n["Speed"].float_value == 1450.5 and n["Fault"].boolean_value,
              "rebirth DBIRTH: seq 1, current device values")
        node.ndata({"Flow": 5.0})
        check(obs.expect(t("NDATA"))[1].seq == 2, "NDATA after rebirth: seq 2")

        # ---- DCMD / NCMD by alias, a malformed NCMD
        start = len(node.commands)
        obs.publish(t("DCMD", DEVICE), sp.build_payload(
            [{"alias": 11, "encode_as": DT.Boolean, "value": True}]).SerializeToString())
        item = node.wait_command(lambda c: "/DCMD/" in c[0], start=start)
        check(item == (t("DCMD", DEVICE), {"Fault": True}), f"DCMD by alias resolved: {item}")
        obs.publish(t("NCMD"), b"\xff\xff\xff")
        obs.publish(t("NCMD"), sp.build_payload(
            [{"alias": 2, "int_value": (-5) & 0xFFFFFFFF}]).SerializeToString())
        item = node.wait_command(lambda c: "Temp offset" in c[1], start=start)
        check(item[1] == {"Temp offset": -5}, f"NCMD alias 2 without datatype decodes as "
                                               f"Int16 -5: {item[1]}")
        check(len(node.bad_commands) == 1, "malformed NCMD kept in bad_commands, node alive")
        check(node.rebirths == 1, "no extra rebirth")

        # ---- publish_raw, payload()
        node.publish_raw(t("NDATA"), b"\x08")
        data, _ = obs.expect(t("NDATA"))
        check(data == b"\x08", "publish_raw bytes arrive unchanged")
        raw = node.payload([{"name": "X", "datatype": DT.Int16, "value": -2}], seq=None,
                           timestamp=sp.OMIT)
        q = sp.decode(raw)
        check(not q.HasField("seq") and not q.HasField("timestamp")
              and q.metrics[0].int_value == 0xFFFFFFFE, "payload(): no seq, no timestamp")

        # ---- DDEATH, explicit NDEATH
        node.ddeath(DEVICE)
        _, p = obs.expect(t("DDEATH", DEVICE))
        check(p.seq == 3 and len(p.metrics) == 0 and recent(p.timestamp),
              f"DDEATH seq 3 (got {p.seq}), no metrics, timestamp")
        node.ndeath(bdseq=99)
        _, p = obs.expect(t("NDEATH"))
        check(not p.HasField("seq") and len(p.metrics) == 1 and p.metrics[0].name == "bdSeq"
              and p.metrics[0].long_value == 99, "explicit NDEATH: bdSeq 99, no seq")

        # ---- drop: the will
        node.drop()
        check(not node.connected, "drop() closed the connection")
        _, p = obs.expect(t("NDEATH"))
        check(p is not None and not p.HasField("seq") and len(p.metrics) == 1
              and p.metrics[0].name == "bdSeq" and p.metrics[0].datatype == DT.UInt64
              and p.metrics[0].long_value == 5, "will NDEATH after drop(): bdSeq 5, no seq")

        # ---- reconnect: bdSeq + 1; rebirth leaves out the dead device
        node.reconnect()
        check(node.bdseq == 6 and node.connected, "reconnect(): bdSeq 6, connected")
        node.nbirth([{"name": "Flow", "alias": 1, "datatype": DT.Float, "value": 6.0}])
        _, p = obs.expect(t("NBIRTH"))
        check(p.seq == 0 and by_name(p)["bdSeq"].long_value == 6, "NBIRTH after reconnect: "
                                                                  "seq 0, bdSeq 6")
        node.rebirth()
        obs.expect(t("NBIRTH"))
        node.ndata({"Flow": 7.0})
        before = obs.pos
        seq = obs.expect(t("NDATA"))[1].seq
        with obs.cond:
            between = [tp for tp, _ in obs.msgs[before:obs.pos]]
        check(seq == 1 and t("DBIRTH", DEVICE) not in between,
              "rebirth() sends no DBIRTH for a device after DDEATH; NDATA seq 1")

        # ---- clean disconnect: no will
        node.disconnect()
        obs.publish("spBv1.0/SelfCheck/marker", b"m")
        obs.expect("spBv1.0/SelfCheck/marker")
        with obs.cond:
            deaths = [tp for tp, _ in obs.msgs if tp == t("NDEATH")]
        check(len(deaths) == 2, "clean disconnect(): no will NDEATH")

        # ---- bdSeq wraps 255 -> 0
        node.bdseq = 255
        node.reconnect()
        node.drop()
        _, p = obs.expect(t("NDEATH"))
        check(node.bdseq == 0 and p.metrics[0].long_value == 0, "bdSeq wraps 255 -> 0 on "
                                                                "reconnect (will carries 0)")
    finally:
        if node is not None and node.connected:
            node.disconnect()
        if obs is not None:
            obs.close()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"selfcheck: {passed} checks passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
