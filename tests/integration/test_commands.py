"""The command gate end to end: an operator asks through suidoctl; the gate checks role, gateway
state, the profile's envelope and interlocks; an allowed command is encrypted to that gateway's
own RSA key, signed with an expiry and sent to that gateway only (what crosses the broker is
ciphertext; a command in clear is refused); the simulated gateway verifies, opens it, acts and
reports; the gate follows
the plant's feedback. Refused, expired and replayed commands move nothing. Every decision is
audited and kept in the archive's command log."""
import json
import signal
import struct
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from suite import BIN, wait_until
from wire import Client, command_payload, open_command, totp

PUMPING, TREATMENT = "gw-0006", "gw-0001"


@pytest.fixture(scope="module")
def field(suite, tmp_path_factory):
    """Simulated gateways of a pumping station and a treatment plant, running for the module;
    yields a function returning their report, which is written when they stop."""
    d = tmp_path_factory.mktemp("cmd-sim")
    report = d / "report.json"
    p = subprocess.Popen([str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{suite.port}",
                          "--deploy", str(suite.dir), "--ids", f"{PUMPING},{TREATMENT}",
                          "--rate", "2", "--batch", "8", "--state-dir", str(d), "--report",
                          str(report), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=open(d / "sim.log", "w"))
    # the gate knows the plant once readings of both arrive through the pipeline
    assert wait_until(lambda: suite.query(
        "SELECT count(DISTINCT gateway) FROM batches WHERE gateway IN (?, ?) AND received_ms > ?",
        PUMPING, TREATMENT, int(time.time() * 1000) - 5000)[0][0] == 2, 30), \
        (d / "sim.log").read_text()[-2000:]
    time.sleep(1)

    def stop():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        return json.loads(report.read_text())

    yield stop
    stop()


def command(suite, gw, actuator, value, *extra, token=None):
    r = suite.ctl("--json", "command", gw, actuator, value, *extra, check=False, token=token)
    out = json.loads(r.stdout) if r.stdout.startswith("{") else None
    return r.returncode, out, r.stderr


def log(suite, command_id):
    return [d for (d,) in suite.query("SELECT decision FROM command_log WHERE command_id=? "
                                      "ORDER BY id", command_id)]


def outcome(suite, command_id):
    return json.loads(suite.ctl("--json", "command", "status", command_id).stdout)["outcome"]


def test_a_command_is_signed_sent_applied_and_followed(suite, field):
    code, out, err = command(suite, PUMPING, "pump1", "1", "--unit", "1", "--reason",
                             "start for the morning peak")
    assert code == 0 and out["decision"] == "sent", err
    cid = out["command_id"]
    assert cid.startswith(PUMPING + "-") and out["expires_ms"] > time.time() * 1000
    # the gateway verifies and acts; the pump's status channel follows within its settle time
    assert wait_until(lambda: outcome(suite, cid) == "followed", 25), outcome(suite, cid)
    assert wait_until(lambda: log(suite, cid) == ["sent", "applied", "followed"], 5), log(suite, cid)
    # the gateway's signed result is stored like any numbered envelope of it (and acked)
    assert suite.query("SELECT count(*) FROM batches WHERE gateway=? AND kind='cmdres'",
                       PUMPING)[0][0] >= 1
    events = [e for (e,) in suite.query("SELECT event FROM audit WHERE subject=? AND "
                                        "event LIKE 'command%' ORDER BY seq", PUMPING)]
    assert events[:2] == ["command_sent", "command_result"]
    assert suite.query("SELECT actor FROM audit WHERE event='command_sent' AND detail LIKE ?",
                       f"%{cid}%")[0][0] == "admin"


def test_a_setpoint_in_another_unit_is_converted_and_large_steps_are_refused(suite, field):
    code, out, err = command(suite, TREATMENT, "dosing", "2", "--unit", "mg/L")
    assert code == 0 and out["value"] == 2.0 and out["unit"] == "mg/L", err
    assert wait_until(lambda: outcome(suite, out["command_id"]) == "applied", 15)
    # 2 -> 3.5 mg/L is more than the profile's max_step of 1 in one command
    code, out, err = command(suite, TREATMENT, "dosing", "3.5", "--unit", "mg/L")
    assert code == 1 and out["reason"] == "max_step", err


@pytest.mark.parametrize("gw,actuator,value,unit,reason", [
    (PUMPING, "pump1", "2", "1", "out_of_range"),
    (PUMPING, "pump1", "nan", "1", "not_finite"),
    (PUMPING, "pump1", "inf", "1", "not_finite"),
    (TREATMENT, "dosing", "1", "bar", "wrong_unit"),
    (PUMPING, "sluice9", "1", "1", "unknown_actuator"),
    ("gw-0999", "pump1", "1", "1", "unknown_gateway"),
    # no readings from gw-0009 (its simulator is not running): the interlock that protects the
    # last running pump cannot be evaluated, so stopping a pump there fails safe
    ("gw-0009", "pump2", "0", "1", "interlock_data_missing"),
])
def test_commands_outside_the_envelope_are_refused_and_audited(suite, field, gw, actuator, value,
                                                                unit, reason):
    code, out, err = command(suite, gw, actuator, value, "--unit", unit)
    assert code == 1 and out["decision"] == "refused" and out["reason"] == reason, (out, err)
    assert out["command_id"] == ""
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM command_log WHERE gateway=? AND decision=?", gw,
        f"refused:{reason}")[0][0] >= 1, 5)
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='command_refused' AND subject=? AND detail LIKE ?",
        gw, f"%reason={reason} %")[0][0] >= 1, 5)


def test_a_suspended_gateway_gets_no_command(suite, field):
    suite.ctl("gateway", "suspend", "gw-0003", "--reason", "maintenance")
    try:
        code, out, _ = command(suite, "gw-0003", "pump1", "1", "--unit", "1")
        assert code == 1 and out["reason"] == "gateway_not_active"
    finally:
        suite.ctl("gateway", "activate", "gw-0003")


def test_only_operators_and_admins_may_command(suite, field):
    secret = suite.add_operator("vera", "viewer", "viewer password 1")
    tok = suite.login("vera", "viewer password 1", totp(secret))
    code, out, _ = command(suite, PUMPING, "pump2", "1", "--unit", "1", token=tok)
    assert code == 1 and out["reason"] == "role"
    code, out, err = command(suite, PUMPING, "pump2", "1", "--unit", "1", token="bogus")
    assert code == 1 and out["reason"] == "session", err
    secret = suite.add_operator("otto", "operator", "operator password 1")
    tok = suite.login("otto", "operator password 1", totp(secret))
    code, out, err = command(suite, TREATMENT, "dosing", "1", "--unit", "mg/L", token=tok)
    assert code == 0 and out["decision"] == "sent", err


def signed_command(suite, pb, gw, actuator, value, unit, issued_ms, expires_ms, cid, key=None,
                   plaintext=False):
    cmd = pb.Command(command_id=cid, gateway_id=gw, channel=actuator, value=value, unit=unit,
                     issued_ms=issued_ms, expires_ms=expires_ms, requested_by="test")
    return command_payload(suite, pb, cmd, key=key, plaintext=plaintext)


def publish_as_gate(suite, topic, payloads):
    cert, key = suite.tls_files("gate")
    c = Client(suite, cert, key, client_id="gate")
    assert c.connect()
    try:
        for m in payloads:
            c.publish(topic, m)
    finally:
        c.close()


def results(suite, gw):
    return suite.query("SELECT count(*) FROM batches WHERE gateway=? AND kind='cmdres'", gw)[0][0]


CRAFTED = []  # commands this module published itself, beside the gate's


def test_a_plaintext_command_is_refused_by_the_gateway(suite, pb, field):
    """Signed by the gate's own key, but in clear (no header, the old form): the gateway refuses
    it and says so in its signed result, naming the command."""
    now = int(time.time() * 1000)
    before = results(suite, PUMPING)
    publish_as_gate(suite, f"suido/v1/{PUMPING}/cmd", [
        signed_command(suite, pb, PUMPING, "pump2", 1, "1", now, now + 30_000, "t-plain",
                       plaintext=True)])
    CRAFTED.append("t-plain")
    assert wait_until(lambda: results(suite, PUMPING) > before, 15)

    def reasons():
        out = {}
        for (env,) in suite.query("SELECT envelope FROM batches WHERE gateway=? AND "
                                  "kind='cmdres'", PUMPING):
            e = pb.SignedEnvelope()
            e.ParseFromString(env)
            r = pb.CommandResult()
            r.ParseFromString(e.body)
            out[r.command_id] = (r.outcome, r.reason)
        return out
    assert wait_until(lambda: "t-plain" in reasons(), 10), reasons()
    assert reasons()["t-plain"] == (pb.OUTCOME_REFUSED, "plaintext_command")


def test_expired_replayed_and_forged_commands_move_nothing(suite, pb, field):
    """Published as the gate's own MQTT identity (a compromised gate host, or a replay by
    someone holding its TLS key): the gateway still refuses anything not freshly signed."""
    now = int(time.time() * 1000)
    applied = suite.query("SELECT command_id, issued_ms FROM command_log WHERE gateway=? AND "
                          "decision='applied' ORDER BY id LIMIT 1", PUMPING)
    assert applied, "an applied command from the first test is needed"
    old_id, old_issued = applied[0]
    other = ec.generate_private_key(ec.SECP256R1())
    msgs = [
        # expired an hour ago
        signed_command(suite, pb, PUMPING, "pump2", 1, "1", now - 3_600_000, now - 3_570_000,
                       "t-expired"),
        # the very command already applied, again
        signed_command(suite, pb, PUMPING, "pump1", 1, "1", old_issued, now + 30_000, old_id),
        # signed by someone else's key
        signed_command(suite, pb, PUMPING, "pump2", 1, "1", now, now + 30_000, "t-forged",
                       key=other),
    ]
    before = results(suite, PUMPING)
    publish_as_gate(suite, f"suido/v1/{PUMPING}/cmd", msgs)
    # every refusal is reported too: a signed result per command, stored like any envelope
    assert wait_until(lambda: results(suite, PUMPING) >= before + len(msgs), 15), \
        (results(suite, PUMPING), before)
    rep = field()  # stops the gateways: their report says what they did with each command
    gw = next(g for g in rep["gateways"] if g["id"] == PUMPING)
    refused = gw["commands"]["refused_by_reason"]
    assert refused["expired"] == 1 and refused["replayed"] == 1 and refused["bad_signature"] == 1
    assert refused["plaintext_command"] == len(CRAFTED) == 1
    assert gw["commands"]["applied"] == 1  # only the gate's own, from the first test
    # and nothing else reached the gateways than what the gate sent or the test forged
    sent = suite.query("SELECT count(*) FROM command_log WHERE decision='sent'")[0][0]
    total = rep["commands"]["received"]
    assert total == sent + len(msgs) + len(CRAFTED), (total, sent)


def test_what_crosses_the_broker_is_ciphertext(suite, pb):
    """A command to a reservoir whose simulator is not running, received by a raw client holding
    that gateway's own identity: the actuator, the value and the operator are not in the bytes;
    the header says AES-256-GCM and carries the wrapped key; the gateway's RSA key opens it."""
    gw = "gw-0002"
    c = Client(suite, *suite.tls_files(gw), client_id=gw)
    assert c.connect()
    try:
        c.subscribe(f"suido/v1/{gw}/cmd")
        assert wait_until(lambda: c.suback, 5)
        # the tests above took the gate's MQTT session (same client id): it reconnects first
        def send():
            r = command(suite, gw, "inlet_valve", "17.25", "--unit", "%")
            return r if r[0] == 0 or r[1]["reason"] != "broker_unavailable" else None
        code, out, err = wait_until(send, 20, 0.5) or (None, None, "gate not reconnected")
        assert code == 0 and out["decision"] == "sent", (out, err)
        assert wait_until(lambda: c.messages, 10)
    finally:
        c.close()
    topic, payload = c.messages[0]
    assert topic == f"suido/v1/{gw}/cmd"
    for clear in (b"inlet_valve", struct.pack("<d", 17.25), b"admin"):
        assert clear not in pb.SignedCommand.FromString(payload).command, clear
    assert b"inlet_valve" not in payload and struct.pack("<d", 17.25) not in payload
    h, cmd = open_command(suite, pb, payload)
    assert h.cipher == pb.CIPHER_AES_256_GCM and len(h.iv) == 12 and len(h.wrapped_key) == 256
    assert h.command_id == out["command_id"] == cmd.command_id
    assert (cmd.gateway_id, cmd.channel, cmd.value, cmd.unit, cmd.requested_by) == \
        (gw, "inlet_valve", 17.25, "%", "admin")
    assert suite.metric("gate", "suido_gate_command_key_wraps") >= 1
