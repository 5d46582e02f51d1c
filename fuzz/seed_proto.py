#!/usr/bin/python3
"""Writes the seed corpus of the proto fuzz target (fuzz/corpus/proto/): one valid message of each
type the target decodes, each behind the selector byte that picks its type (fuzz/proto.c). Run
once by hand after a change of proto/suido.proto or of the selector table (fuzz/README.md):

    /usr/bin/python3 fuzz/seed_proto.py fuzz/corpus/proto
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

# fuzz/proto.c: 0..3 checked by the archive's code, 4 by the gate's, then OTHERS in its order
SELECTOR = {
    "StageMessage": 0, "ArchiveRequest": 1, "AuditEvent": 2, "Alert": 3, "GateRequest": 4,
    "RegistryRequest": 5, "RegistryReply": 6, "RegistryEvent": 7, "GateReply": 8,
    "ArchiveReply": 9, "ReplRequest": 10, "ReplReply": 11, "Ack": 12, "SignedCommand": 13,
    "Command": 14,
}
# selector bits above the type (fuzz/proto.c): ArchiveRequest 0x80 = admin; GateRequest
# 0x10/0x20 = role, 0x40 = treatment site, 0x80 = a plant with readings
FLAGS = {"archive-audit-list": 0x80, "archive-audit-verify": 0x80, "gate-request": 0x90,
         "gate-request-stop-last-pump": 0xa0, "gate-request-too-soon": 0x90, "gate-request-dose": 0xe0}
NOW = 1800000000000


def main(out):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["protoc", "--proto_path=" + os.path.join(TOP, "proto"),
                        "--python_out=" + tmp, "suido.proto"], check=True)
        sys.path.insert(0, tmp)
        import suido_pb2 as pb

        seeds = {}
        hdr = pb.Header(version=1, gateway_id="gw-0001", boot_epoch=3, seq=10,
                        timestamp_ms=NOW - 1000, key_id="abcd", kind=pb.KIND_DATA,
                        reading_count=2)
        batch = pb.TelemetryBatch(readings=[pb.Reading(channel="level", value=2.5, offset_ms=0),
                                            pb.Reading(channel="inflow", value=30, offset_ms=500)])
        mapped = [pb.MappedReading(channel="reservoir.level", value=2.5, unit="m",
                                   timestamp_ms=NOW - 1000),
                  pb.MappedReading(channel="reservoir.inflow", value=30, unit="L/s",
                                   timestamp_ms=NOW - 500)]
        seeds["stage-data"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/gw-0001/data", received_ms=NOW, envelope=b"\x0a\x02hh",
            status=pb.VERIFY_OK, reason="ok", header=hdr, batch=batch, site="reservoir-01",
            mapped=mapped, site_kind="reservoir"))
        bh = pb.Header(); bh.CopyFrom(hdr); bh.kind = pb.KIND_BIRTH; bh.seq = 0
        seeds["stage-birth"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/gw-0001/birth", received_ms=NOW, status=pb.VERIFY_OK, header=bh,
            birth=pb.Birth(model="rtu", firmware="1.0", site="reservoir-01",
                           channels=[pb.ChannelDecl(name="level", unit="m")])))
        seeds["stage-reject"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/gw-0001/data", received_ms=NOW, envelope=b"junk",
            status=pb.VERIFY_REJECTED, reason="bad_signature"))
        cmd = pb.Command(command_id="gw-0001-1799999999000-ab12", gateway_id="gw-0001",
                         channel="pump1", value=1, unit="1", issued_ms=NOW - 1000,
                         expires_ms=NOW + 30000, requested_by="alice")
        seeds["stage-command"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/gw-0001/cmd", received_ms=NOW, command=cmd, decision="sent",
            reason="ok"))
        ch = pb.Header(); ch.CopyFrom(hdr); ch.kind = pb.KIND_CMDRES; ch.seq = 11
        seeds["stage-cmdres"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/gw-0001/cmdres", received_ms=NOW, status=pb.VERIFY_OK, header=ch,
            cmdres=pb.CommandResult(command_id=cmd.command_id, outcome=pb.OUTCOME_APPLIED,
                                    reason="ok", channel="pump1", value=1, ts_ms=NOW - 800)))
        alert = pb.Alert(id="gw-0001/reservoir.level/limit_hh", gateway_id="gw-0001",
                         site="reservoir-01", channel="reservoir.level", rule="limit_hh",
                         severity=pb.SEVERITY_ALARM, value=9.7, limit=9.5, timestamp_ms=NOW,
                         evidence="level 9.7 m above HH 9.5 m")
        seeds["stage-alert"] = ("StageMessage", pb.StageMessage(
            topic="suido/v1/alerts/gw-0001", received_ms=NOW, alert=alert))
        audit = pb.AuditEvent(ts_ms=NOW, source="verify", event="signature_rejected",
                              subject="gw-0001", actor="verify", detail="seq=10 reason=x")
        seeds["stage-audit"] = ("StageMessage", pb.StageMessage(audit=audit))
        seeds["alert-raised"] = ("Alert", alert)
        cleared = pb.Alert(); cleared.CopyFrom(alert); cleared.cleared = True
        seeds["alert-cleared"] = ("Alert", cleared)
        seeds["audit"] = ("AuditEvent", audit)
        for name, q in {
            "trend": pb.ArchiveRequest(op=pb.TREND, gateway_id="gw-0001",
                                       channel="reservoir.level", from_ms=NOW - 3600000,
                                       to_ms=NOW, limit=360),
            "stats": pb.ArchiveRequest(op=pb.GATEWAY_STATS, from_ms=NOW - 86400000),
            "commands": pb.ArchiveRequest(op=pb.COMMAND_LOG, gateway_id="gw-0001", limit=50),
            "audit-list": pb.ArchiveRequest(op=pb.AUDIT_LIST, limit=20, before=100),
            "audit-verify": pb.ArchiveRequest(op=pb.AUDIT_VERIFY),
            "planning": pb.ArchiveRequest(op=pb.PLANNING, from_ms=NOW - 7 * 86400000, to_ms=NOW),
        }.items():
            seeds["archive-" + name] = ("ArchiveRequest", q)
        seeds["registry-login"] = ("RegistryRequest", pb.RegistryRequest(
            op=pb.REG_LOGIN, id="alice", password="pw", totp="123456", source="monitor:1.2.3.4",
            request_id=7))
        seeds["registry-add"] = ("RegistryRequest", pb.RegistryRequest(
            op=pb.REG_ADD_GATEWAY, token="t" * 64,
            gateway=pb.GatewayInfo(id="gw-0002", site="s", kind="pumping", sign_pub_der=b"\x30\x59"),
            cert_pem=b"-----BEGIN CERTIFICATE-----\n", ids=["gw-0001", "gw-0002"],
            channels=[pb.ChannelDecl(name="flow", unit="L/s")]))
        seeds["registry-reply"] = ("RegistryReply", pb.RegistryReply(
            status=0, gateways=[pb.GatewayInfo(id="gw-0001", state=pb.STATE_ACTIVE)],
            operators=[pb.OperatorInfo(id="alice", role="admin")],
            access=[pb.AccessEntry(ts_ms=NOW, operator="alice", action="login", result="ok")],
            profile_text=b"[profile]\nname = x\n", profile_version=3, request_id=7))
        seeds["registry-event"] = ("RegistryEvent", pb.RegistryEvent(
            kind="gateway", id="gw-0001", state=pb.STATE_REVOKED, ts_ms=NOW))
        seeds["gate-request"] = ("GateRequest", pb.GateRequest(
            op=pb.GATE_COMMAND, token="t" * 64, gateway_id="gw-0001", actuator="pump1", value=1,
            unit="1", reason="maintenance"))
        stop = pb.GateRequest(); stop.CopyFrom(seeds["gate-request"][1]); stop.value = 0
        seeds["gate-request-stop-last-pump"] = ("GateRequest", stop)
        again = pb.GateRequest(); again.CopyFrom(seeds["gate-request"][1]); again.actuator = "pump2"
        seeds["gate-request-too-soon"] = ("GateRequest", again)
        seeds["gate-request-dose"] = ("GateRequest", pb.GateRequest(
            op=pb.GATE_COMMAND, token="t" * 64, gateway_id="gw-0003", actuator="dosing",
            value=2.5, unit="mg/L", reason="raise the dose"))
        seeds["gate-status"] = ("GateRequest", pb.GateRequest(
            op=pb.GATE_STATUS, token="t" * 64, command_id="gw-0001-1799999999000-ab12"))
        seeds["gate-reply"] = ("GateReply", pb.GateReply(
            decision="refused", reason="interlock:pumping.last_pump_1", detail="x", value=0))
        seeds["archive-reply"] = ("ArchiveReply", pb.ArchiveReply(
            status=0, cases=[pb.AlertCase(case_id=1, alert_id=alert.id, state="raised")],
            points=[pb.TrendPoint()], step_s=60, request_id=9))
        seeds["repl-request"] = ("ReplRequest", pb.ReplRequest())
        seeds["repl-reply"] = ("ReplReply", pb.ReplReply())
        seeds["ack"] = ("Ack", pb.Ack(gateway_id="gw-0001", boot_epoch=3, seq=10))
        seeds["signed-command"] = ("SignedCommand", pb.SignedCommand(
            command=cmd.SerializeToString(), signature=b"\x30\x44" + b"\x01" * 68))
        seeds["command"] = ("Command", cmd)

        os.makedirs(out, exist_ok=True)
        for name, (kind, msg) in seeds.items():
            with open(os.path.join(out, name), "wb") as f:
                sel = SELECTOR[kind] | FLAGS.get(name, 0)
                f.write(bytes([sel]) + msg.SerializeToString())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "proto"))
