"""Sparkplug B edge nodes feeding suido through suido-sparkplug, end to end: a real Mosquitto with
the suite's plugin, the real services, and edge nodes driven by Paho (tests/sparkplug/edge_node.py)
whose payloads are built by python3-protobuf from a .proto written separately from the service's
(tests/sparkplug/sparkplug_b.proto), so the host's decoder is checked against another
implementation. Births, data by alias, deaths with their bdSeq; a seq gap asks for a rebirth;
unknown aliases, metrics without their alias, datatype mismatches, malformed and oversize
payloads, data before birth and a rebirth storm are refused, counted and audited; one node cannot
publish on another's topics; the host's STATE is retained, with a will; records are stored with
their provenance ("transport") and `suidoctl archive verify` says so."""
import json
import signal
import sys
import time

import pytest

from suite import TOP, Suite, wait_until

sys.path.insert(0, str(TOP / "tests" / "sparkplug"))
from edge_node import DataType, EdgeNode, decode  # noqa: E402

GROUP = "Plant1"
BUDGET = 10  # NBIRTHs of one node a minute
NODE = "gw-spb-01"
OTHER = "gw-spb-02"

MAP = f"""
[node {NODE}]
group = {GROUP}

[channels {NODE}]
flow = Pump1/Flow
power = Pump1/Power
suction_pressure = Pump1/SuctionPressure
pump1_status = Pump1/Running
tank_level = Tank::Level

[units {NODE}]
flow = L/s

[actuators {NODE}]
speed_setpoint = Pump1/SpeedSetpoint
pump2 = Station::Pump2Run

[node {OTHER}]
group = {GROUP}

[channels {OTHER}]
flow = Flow
"""

# the node's birth certificate: aliases, datatypes, an engUnit property, and a metric no
# channel maps (kept out of the pipeline, counted)
NODE_METRICS = [
    {"name": "Pump1/Flow", "alias": 1, "datatype": DataType.Float, "value": 10.0},
    {"name": "Pump1/SuctionPressure", "alias": 2, "datatype": DataType.Double, "value": 1.5,
     "unit": "bar"},
    {"name": "Pump1/Running", "alias": 3, "datatype": DataType.Boolean, "value": True},
    {"name": "Firmware", "alias": 4, "datatype": DataType.String, "value": "4.2.1"},
    {"name": "Pump1/SpeedSetpoint", "alias": 5, "datatype": DataType.Float, "value": 40.0},
]
TANK_METRICS = [{"name": "Level", "alias": 10, "datatype": DataType.Float, "value": 2.5,
                 "unit": "m"}]
STATION_METRICS = [{"name": "Pump2Run", "alias": 20, "datatype": DataType.Boolean,
                    "value": False}]

# the example utility's profile (pumping.pump2 among its actuators) with the speed setpoint
ACTUATORS = """
[actuator pumping.speed_setpoint]
quantity = pump_speed
unit = %
range = 0, 100
"""


def provision(suite, gw):
    out = suite.root / f"bundle-{gw}"
    suite.ctl("gateway", "provision", gw, "--site", f"{gw}-site", "--kind", "pumping",
              "--model", "EdgeNode", "--firmware", "4.2", "--sparkplug", "--out", out)
    suite.ctl("gateway", "activate", gw)
    return out


@pytest.fixture(scope="module")
def spb(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparkplug")
    profile = root / "profile.conf"
    # the station's power draw is confidential here: it may not arrive in clear
    profile.write_text((TOP / "examples" / "sim-utility" / "profile.conf").read_text().replace(
        "[channel pumping.power]", "[channel pumping.power]\nconfidential = yes") + ACTUATORS)
    s = Suite(root / "suite", gateways=2, profile=profile)
    try:
        s.start()
        s.login_admin()
        s.bundles = {gw: provision(s, gw) for gw in (NODE, OTHER)}
        (s.dir / "sparkplug.map").write_text(MAP)
        # NODE is born again by most tests: room for them within a minute, OTHER storms
        conf = s.dir / "etc" / "sparkplug.conf"
        conf.write_text(conf.read_text().replace("host_id = suido",
                                                 f"host_id = suido\nbirths_per_minute = {BUDGET}"))
        s.start_service("sparkplug")
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_connected") == 1, 20), \
            s.log("sparkplug")
        time.sleep(0.5)  # the broker plugin reads the identity file within 200 ms
        yield s
    finally:
        s.stop()


def node(s, gw=NODE, **kw):
    b = s.bundles[gw]
    n = EdgeNode("localhost", s.port, GROUP, gw, ca=str(b / "ca.crt"), cert=str(b / "client.crt"),
                 key=str(b / "client.key"), **kw)
    n.connect()
    return n


def batches(s, gw, epoch=None):
    sql = ("SELECT boot_epoch, seq, readings, status, key_id, envelope FROM batches "
           "WHERE gateway = ?" + (" AND boot_epoch = ?" if epoch else "") +
           " ORDER BY boot_epoch, seq")
    return s.query(sql, *((gw, epoch) if epoch else (gw,)))


def events(s, gw):
    return s.query("SELECT kind, boot_epoch, status FROM events WHERE gateway = ? ORDER BY id", gw)


def rejects(s, gw, reason):
    return s.query("SELECT count(*) FROM rejects WHERE gateway = ? AND reason = ?", gw, reason)[0][0]


def audited(s, gw, event="message_refused", needle=""):
    return s.query("SELECT count(*) FROM audit WHERE subject = ? AND event = ? AND detail LIKE ?",
                   gw, event, f"%{needle}%")[0][0]


def refused(s, reason):
    return s.metric("sparkplug", f'suido_sparkplug_refused_total{{reason="{reason}"}}')


def born(s, n, epochs_before):
    """NBIRTH and a DBIRTH; returns the session's boot epoch as the archive recorded it."""
    n.nbirth(NODE_METRICS)
    n.dbirth("Tank", TANK_METRICS)
    assert wait_until(lambda: len({e for k, e, _ in events(s, n.node) if k == "birth"} -
                                  epochs_before) == 1, 10), s.log("sparkplug")
    return max(e for k, e, _ in events(s, n.node) if k == "birth")


def test_birth_data_death_stored_with_their_provenance(spb):
    s = spb
    n = node(s)
    try:
        epoch = born(s, n, set())
        n.ndata({"Pump1/Flow": 12.5, "Pump1/SuctionPressure": 1.75, "Pump1/Running": False,
                 "Firmware": "4.2.2"})
        n.ddata("Tank", {"Level": 3.25})
        # the births' values (a node reporting by exception may send no others), then the data
        assert wait_until(lambda: len(batches(s, NODE, epoch)) == 4, 10), s.log("sparkplug")
        rows = batches(s, NODE, epoch)
        assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
            (1, 3, "transport", "sparkplug"), (2, 1, "transport", "sparkplug"),
            (3, 3, "transport", "sparkplug"), (4, 1, "transport", "sparkplug")]
        # the record is the Sparkplug payload exactly as the node sent it
        assert decode(rows[0][5]).metrics[0].name == "bdSeq"
        assert [m.alias for m in decode(rows[2][5]).metrics] == [1, 2, 3, 4]
        # the meaning: the profile's channels and units, values as sent
        agg = dict(s.query("SELECT channel, last_value FROM readings_series WHERE gateway = ?", NODE))
        assert agg["pumping.flow"] == pytest.approx(12.5)
        assert agg["pumping.suction_pressure"] == pytest.approx(1.75)
        assert agg["pumping.pump1_status"] == 0
        assert agg["pumping.tank_level"] == pytest.approx(3.25)
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_unmapped_metrics_total")
                          >= 1, 5)  # the metrics file is written every second
        # births declared the mapped channels with their units (the registry keeps them)
        assert [k for k, _, st in events(s, NODE)] == ["birth", "birth"]
        assert all(st == "transport" for _, _, st in events(s, NODE))
        # an orderly NDEATH with the session's bdSeq ends it
        n.publish_raw(n.topic("NDEATH"), n.death_payload(), qos=1)
        assert wait_until(lambda: [k for k, _, _ in events(s, NODE)][-1:] == ["death"], 10)
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_nodes_online") == 0, 5)
    finally:
        n.disconnect()
    # archive verify names what it cannot re-verify
    r = s.ctl("archive", "verify")
    assert "transport only: Sparkplug B records" in r.stdout, r.stdout
    j = json.loads(s.ctl("--json", "archive", "verify").stdout)
    assert j["ok"] is True and j["transport"] >= 2 and j["failed"] == 0


def test_the_will_ends_the_session_and_a_stale_death_is_refused(spb):
    s = spb
    n = node(s)
    try:
        before = {e for k, e, _ in events(s, NODE) if k == "birth"}
        born(s, n, before)
        deaths = [k for k, _, _ in events(s, NODE)].count("death")
        # an NDEATH with another bdSeq (a will of an older connection): refused, still online
        r0 = rejects(s, NODE, "stale_death")
        n.publish_raw(n.topic("NDEATH"), n.death_payload(bdseq=n.bdseq + 7), qos=1)
        assert wait_until(lambda: rejects(s, NODE, "stale_death") == r0 + 1, 10)
        assert audited(s, NODE, needle="reason=stale_death") >= 1
        n.ndata({"Pump1/Flow": 30.0})
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_nodes_online") == 1, 5)
        # the connection dropped: the broker publishes the will (NDEATH, the right bdSeq)
        n.drop()
        assert wait_until(lambda: [k for k, _, _ in events(s, NODE)].count("death") == deaths + 1,
                          20), s.log("sparkplug")
    finally:
        n.disconnect()


def test_a_seq_gap_asks_for_a_rebirth(spb):
    s = spb
    n = node(s, auto_rebirth=True)
    try:
        before = {e for k, e, _ in events(s, NODE) if k == "birth"}
        born(s, n, before)
        gaps = s.metric("sparkplug", "suido_sparkplug_seq_gaps_total")
        n.seq = (n.seq + 5) % 256  # five messages lost on the way
        n.ndata({"Pump1/Flow": 40.0})
        cmd = n.wait_command(lambda c: "NCMD" in c[0], 10)
        assert cmd[1] == {"Node Control/Rebirth": True}
        assert wait_until(lambda: n.rebirths == 1, 10)
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_seq_gaps_total")
                          >= gaps + 1, 5)
        # the rebirth is a new session for the archive, and data flows in it
        assert wait_until(lambda: len({e for k, e, _ in events(s, NODE) if k == "birth"} -
                                      before) == 2, 10)
        assert audited(s, NODE, event="sparkplug_seq_gap") >= 1
    finally:
        n.disconnect()


def test_unknown_alias_missing_alias_and_datatype_mismatch_are_refused(spb):
    s = spb
    n = node(s)
    try:
        born(s, n, {e for k, e, _ in events(s, NODE) if k == "birth"})
        cases = [
            ("unknown_alias", [{"alias": 99, "datatype": DataType.Float, "value": 1.0}]),
            ("missing_alias", [{"name": "Pump1/Flow", "datatype": DataType.Float, "value": 1.0}]),
            ("datatype_mismatch", [{"alias": 1, "datatype": DataType.String, "value": "x"}]),
            ("datatype_mismatch", [{"alias": 1, "datatype": DataType.Float,
                                    "value": "not a float", "encode_as": DataType.String}]),
        ]
        for reason, metrics in cases:
            r0, a0 = rejects(s, NODE, reason), audited(s, NODE, needle=f"reason={reason}")
            n.publish_raw(n.topic("NDATA"), n.payload(metrics, seq=n.next_seq()), qos=1)
            assert wait_until(lambda: rejects(s, NODE, reason) == r0 + 1, 10), (reason,
                                                                               s.log("sparkplug"))
            assert audited(s, NODE, needle=f"reason={reason}") == a0 + 1
            assert wait_until(lambda: refused(s, reason) >= 1, 5)
    finally:
        n.disconnect()


def test_malformed_oversize_and_data_before_birth(spb):
    s = spb
    n = node(s)
    try:
        born(s, n, {e for k, e, _ in events(s, NODE) if k == "birth"})
        r0 = rejects(s, NODE, "malformed")
        n.publish_raw(n.topic("NDATA"), b"\x0a\xff\xff\xff\xff\x0f garbage", qos=1)
        assert wait_until(lambda: rejects(s, NODE, "malformed") == r0 + 1, 10)
        # over the broker's 64 KiB packet: the broker cuts the node, nothing reaches the host
        try:
            n.publish_raw(n.topic("NDATA"), b"\x00" * (70 * 1024), qos=0, timeout=2)
        except (TimeoutError, ConnectionError):
            pass  # cut while it was being sent
        assert wait_until(lambda: not n.connected, 10)
    finally:
        n.disconnect()
    # a fresh connection whose first message is data: refused, and the node is asked to rebirth
    m = node(s, bdseq=9)
    try:
        r0 = rejects(s, NODE, "data_before_birth")
        time.sleep(5.1)  # the host asks one node for a rebirth at most every 5 s
        payload = m.payload([{"alias": 1, "datatype": DataType.Float, "value": 1.0}], seq=0)
        m.publish_raw(m.topic("NDATA"), payload, qos=1)
        assert wait_until(lambda: rejects(s, NODE, "data_before_birth") == r0 + 1, 10)
        cmd = m.wait_command(lambda c: "NCMD" in c[0], 10)
        assert cmd[1] == {"Node Control/Rebirth": True}
    finally:
        m.disconnect()
    assert s.alive("sparkplug")


def test_a_rebirth_storm_is_rate_limited(spb):
    s = spb
    n = node(s, gw=OTHER)
    try:
        storm0 = rejects(s, OTHER, "rebirth_storm")
        requests0 = s.metric("sparkplug", "suido_sparkplug_rebirth_requests_total")
        for i in range(BUDGET + 4):
            n.nbirth([{"name": "Flow", "alias": 1, "datatype": DataType.Float, "value": float(i),
                       "unit": "L/s"}])
            n.ndata({"Flow": float(i)})
        # at most births_per_minute NBIRTHs a minute become sessions; the rest are refused
        assert wait_until(lambda: rejects(s, OTHER, "rebirth_storm") >= storm0 + 4, 10)
        births = [k for k, _, _ in events(s, OTHER)].count("birth")
        assert births <= BUDGET, births
        # data after a refused birth is refused too, with at most one rebirth request per 5 s
        assert s.metric("sparkplug", "suido_sparkplug_rebirth_requests_total") <= requests0 + 2
    finally:
        n.disconnect()
    assert s.alive("sparkplug")


def test_a_node_cannot_publish_on_another_nodes_topics(spb, tmp_path):
    s = spb
    before = s.metric("mosquitto", "suido_broker_denied_gateway_acl_total")
    intruder = node(s, gw=OTHER)
    try:
        epochs = len(batches(s, NODE))
        # OTHER's certificate, NODE's topics: a birth and data in NODE's name
        intruder.node = NODE
        intruder.nbirth(NODE_METRICS)
        intruder.ndata({"Pump1/Flow": 999.0})
        intruder.node = OTHER
        assert wait_until(lambda: s.metric("mosquitto", "suido_broker_denied_gateway_acl_total")
                          >= before + 2, 5)
        time.sleep(1.0)
        assert len(batches(s, NODE)) == epochs
    finally:
        intruder.disconnect()


def test_state_is_retained_with_a_will(spb):
    s = spb
    n = node(s)
    seen = []
    try:
        n._client.message_callback_add("spBv1.0/STATE/#", lambda c, u, m: seen.append(
            (m.topic, m.retain, json.loads(m.payload))))
        n._client.subscribe("spBv1.0/STATE/suido", qos=1)
        assert wait_until(lambda: seen, 5), "no retained STATE"
        topic, retained, state = seen[0]
        assert topic == "spBv1.0/STATE/suido" and retained and state["online"] is True
        # the host vanishes: its will sets STATE offline, with the same timestamp
        s.stop("sparkplug", sig=signal.SIGKILL)
        assert wait_until(lambda: any(not st["online"] for _, _, st in seen), 30)
        off = [st for _, _, st in seen if not st["online"]][0]
        assert off["timestamp"] == state["timestamp"]
    finally:
        n.disconnect()
        # the killed host's metrics file says "connected" until the new one rewrites it
        (s.dir / "state" / "metrics" / "sparkplug.prom").unlink(missing_ok=True)
        s.start_service("sparkplug")
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_connected") == 1, 20)
        time.sleep(0.5)  # subscribed right after the connection


def command(s, actuator, value, unit):
    r = s.ctl("--json", "command", NODE, actuator, str(value), "--unit", unit, check=False)
    return r.returncode, json.loads(r.stdout) if r.stdout.startswith("{") else None, r.stderr


def outcome(s, command_id):
    rows = s.query("SELECT decision, detail FROM command_log WHERE command_id=? "
                   "ORDER BY id DESC LIMIT 1", command_id)
    return rows[0] if rows else (None, None)


def settled(s, command_id):
    return wait_until(lambda: outcome(s, command_id)[0] not in (None, "sent"), 20)


def test_a_gated_command_is_written_and_its_result_is_the_next_value(spb):
    s = spb
    n = node(s)
    try:
        born(s, n, {e for k, e, _ in events(s, NODE) if k == "birth"})
        n.dbirth("Station", STATION_METRICS)
        # a setpoint: NCMD writing the node's metric by name and alias, in its datatype
        code, out, err = command(s, "speed_setpoint", 55, "%")
        assert code == 0 and out["decision"] == "sent", (out, err)
        topic, values = n.wait_command(lambda c: "NCMD" in c[0], 10)
        assert topic == f"spBv1.0/{GROUP}/NCMD/{NODE}" and values == {"Pump1/SpeedSetpoint": 55.0}
        sent = n.command_payloads[-1][1].metrics[0]
        assert sent.alias == 5 and sent.datatype == DataType.Float
        n.ndata({"Pump1/SpeedSetpoint": 55.0, "Pump1/Flow": 20.0})
        assert settled(s, out["command_id"])
        assert outcome(s, out["command_id"])[0] in ("applied", "followed")
        assert wait_until(lambda: s.query(
            "SELECT count(*) FROM audit WHERE event='command_result' AND detail LIKE ?",
            f"%command={out['command_id']} outcome=applied%value_in_force=55%")[0][0] == 1, 10)
        # the result is stored like a gateway's, with its provenance
        assert s.query("SELECT status FROM batches WHERE gateway=? AND kind='cmdres'",
                       NODE)[-1][0] == "transport"
        # a device's boolean: DCMD; a node that keeps another value: the write failed
        code, out, err = command(s, "pump2", 1, "1")
        assert code == 0, (out, err)
        topic, values = n.wait_command(lambda c: "DCMD" in c[0], 10)
        assert topic == f"spBv1.0/{GROUP}/DCMD/{NODE}/Station" and values == {"Pump2Run": True}
        n.ddata("Station", {"Pump2Run": False})
        assert settled(s, out["command_id"])
        assert outcome(s, out["command_id"])[0] == "failed_at_gateway"
    finally:
        n.disconnect()


def test_a_command_the_host_cannot_write_is_refused_with_a_reason(spb):
    s = spb
    n = node(s)
    try:
        born(s, n, {e for k, e, _ in events(s, NODE) if k == "birth"})  # no Station device
        time.sleep(5.1)  # the profile's 5 s between two commands to pump 2
        code, out, err = command(s, "pump2", 1, "1")
        assert code == 0 and out["decision"] == "sent", (out, err)
        assert settled(s, out["command_id"])
        assert outcome(s, out["command_id"])[0] == "refused_by_gateway:unknown_actuator"
        # the node goes away: the next command is refused as offline
        n.publish_raw(n.topic("NDEATH"), n.death_payload(), qos=1)
        assert wait_until(lambda: s.metric("sparkplug", "suido_sparkplug_nodes_online") == 0, 10)
        code, out, err = command(s, "speed_setpoint", 30, "%")
        assert code == 0, (out, err)
        assert settled(s, out["command_id"])
        assert outcome(s, out["command_id"])[0] == "refused_by_gateway:gateway_offline"
        time.sleep(0.5)
        assert not any(v.get("Pump1/SpeedSetpoint") == 30.0 for _, v in n.commands)
    finally:
        n.disconnect()


def test_the_monitor_shows_a_sparkplug_nodes_provenance_and_readings(spb):
    s = spb
    n = node(s)
    try:
        born(s, n, {e for k, e, _ in events(s, NODE) if k == "birth"})
        n.ndata({"Pump1/Flow": 77.0})
        assert wait_until(lambda: dict(s.query(
            "SELECT channel, last_value FROM readings_series WHERE gateway = ?",
            NODE)).get("pumping.flow") == 77.0, 10)
    finally:
        n.disconnect()
    s.start_service("monitor")
    secret = s.add_operator("vera", "viewer", "vera reads the overview every morning")

    def up():
        try:
            return s.monitor_session("vera", "vera reads the overview every morning", secret)
        except OSError:
            return None
    call = wait_until(up, 30, 0.5)
    assert call, s.log("monitor")
    status, o = call("GET", "/api/overview")
    assert status == 200, o
    by_id = {g["id"]: g for g in o["gateways"]}
    assert by_id[NODE]["provenance"] == "transport"
    assert by_id["gw-0001"]["provenance"] == "signed"
    assert by_id[NODE]["last_reading_ms"] > 0
    # inventory: the host reports the node as seen, as verify does for a suido gateway
    assert wait_until(lambda: call("GET", "/api/overview")[1]["gateways"] and {
        g["id"]: g for g in call("GET", "/api/overview")[1]["gateways"]}[NODE]["last_seen_ms"] > 0,
        15)
    status, t = call("GET", f"/api/trend?gateway={NODE}&channel=pumping.flow")
    assert status == 200 and t["readings"] > 0, t


def test_a_confidential_channel_may_not_come_in_clear(spb):
    """The profile marks pumping.power confidential; a Sparkplug payload is in clear and would be
    kept as the record: the birth declaring it and data carrying it are refused, and stored
    without their payload."""
    s = spb
    n = node(s)
    try:
        r0 = rejects(s, NODE, "plaintext_confidential")
        n.nbirth(NODE_METRICS + [{"name": "Pump1/Power", "alias": 6, "datatype": DataType.Float,
                                  "value": 42.0, "unit": "kW"}])
        n.ndata({"Pump1/Power": 43.0})
        assert wait_until(lambda: rejects(s, NODE, "plaintext_confidential") >= r0 + 2, 10), \
            s.log("profile")
        assert s.query("SELECT max(length(envelope)) FROM rejects WHERE gateway = ? AND "
                       "reason = 'plaintext_confidential'", NODE)[0][0] == 0
        assert s.query("SELECT count(*) FROM readings_series WHERE gateway = ? AND "
                       "channel = 'pumping.power'", NODE)[0][0] == 0
        assert audited(s, NODE, needle="reason=plaintext_confidential") >= 2
    finally:
        n.disconnect()


def test_the_host_cannot_pass_its_records_off_as_signed(spb, pb):
    """A record's provenance is its sender's: frames from the Sparkplug host's CURVE identity
    that claim to be signed suido envelopes (or verify's that claim to be Sparkplug's) are
    dropped by the profile stage and counted; nothing is stored."""
    from test_access import curve_push, service_keys
    s = spb
    before = s.metric("profile", 'suido_rejected_total{reason="wrong_provenance"}')
    for sender, provenance in (("sparkplug", pb.PROVENANCE_SUIDO),
                               ("verify", pb.PROVENANCE_SPARKPLUG)):
        m = pb.StageMessage(topic=f"suido/v1/{NODE}/data", received_ms=int(time.time() * 1000),
                            envelope=b"not signed", status=pb.VERIFY_OK, reason="ok",
                            provenance=provenance, site="x", site_kind="pumping",
                            header=pb.Header(version=1, gateway_id=NODE, boot_epoch=424242,
                                             seq=1, timestamp_ms=int(time.time() * 1000),
                                             kind=pb.KIND_DATA, reading_count=1),
                            batch=pb.TelemetryBatch(readings=[pb.Reading(channel="flow",
                                                                         value=1.0)]))
        curve_push(s, s.base + 3, "profile", service_keys(s, sender), m.SerializeToString())
    assert wait_until(lambda: s.metric("profile", 'suido_rejected_total{reason="wrong_provenance"}')
                      >= before + 2, 5)
    assert s.query("SELECT count(*) FROM batches WHERE boot_epoch = 424242")[0][0] == 0
