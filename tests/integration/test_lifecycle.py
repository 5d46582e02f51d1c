"""Identity lifecycle through suidoctl and the registry: a change of state reaches the verifier,
the broker's identity file and every CURVE socket at once; disposal destroys keys; the audit log
records it and detects tampering."""
import json
import sqlite3
import time

from suite import wait_until
from test_access import curve_push, service_keys, alert_frame
from wire import envelope


def identity_state(suite, ident):
    for line in (suite.dir / "mosquitto" / "identities.state").read_text().splitlines():
        if line and not line.startswith("#") and line.split()[0] == ident:
            return line.split()[1]
    return None


def push_as_ingest(suite, pb, gw, epoch, seq=1):
    """A signed batch handed straight to the verifier, as ingest would (no broker involved)."""
    m = pb.StageMessage(topic=f"suido/v1/{gw}/data", received_ms=int(time.time() * 1000),
                        envelope=envelope(pb, suite, gw, seq, [("level", 5.0)], epoch=epoch))
    curve_push(suite, suite.base + 4, "verify", service_keys(suite, "ingest"),
               m.SerializeToString())


def refusal(suite, gw, epoch):
    rows = suite.query("SELECT reason FROM rejects WHERE gateway=? AND boot_epoch=?", gw, epoch)
    return rows[0][0] if rows else None


def test_suspended_gateway_is_refused_at_once_and_back_when_activated(suite, pb):
    assert identity_state(suite, "gw-0009") == "active"
    push_as_ingest(suite, pb, "gw-0009", 8101)        # warms the verifier's cache
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM batches WHERE boot_epoch=8101")[0][0] == 1, 10)

    out = json.loads(suite.ctl("--json", "gateway", "suspend", "gw-0009", "--reason", "test").stdout)
    assert out["state"] == "suspended"
    assert identity_state(suite, "gw-0009") == "suspended"
    # the verifier drops its cached key on the registry's event: refused immediately, not
    # after a cache lifetime
    push_as_ingest(suite, pb, "gw-0009", 8102)
    assert wait_until(lambda: refusal(suite, "gw-0009", 8102) == "gateway_not_active", 5)

    suite.ctl("gateway", "activate", "gw-0009")
    assert identity_state(suite, "gw-0009") == "active"
    push_as_ingest(suite, pb, "gw-0009", 8103)
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM batches WHERE boot_epoch=8103")[0][0] == 1, 10)
    events = suite.query("SELECT event, subject, actor, detail FROM audit "
                         "WHERE subject='gw-0009' AND event='identity_state_changed'")
    assert len(events) == 2 and all(e[2] == "admin" for e in events)


def test_lifecycle_forbids_moves_out_of_order(suite):
    r = suite.ctl("gateway", "dispose", "gw-0006", check=False)   # not revoked first
    assert r.returncode == 1 and "lifecycle" in r.stderr
    r = suite.ctl("gateway", "suspend", "gw-9999", check=False)
    assert r.returncode == 1
    r = suite.ctl("gateway", "frobnicate", "gw-0006", check=False)
    assert r.returncode == 2


def test_revoked_then_disposed_gateway_loses_its_keys_for_good(suite):
    suite.ctl("gateway", "revoke", "gw-0010", "--reason", "decommissioned")
    assert identity_state(suite, "gw-0010") == "revoked"
    out = json.loads(suite.ctl("--json", "gateway", "dispose", "gw-0010").stdout)
    assert out["state"] == "disposed" and out["key_files_destroyed"] == 3
    assert not (suite.dir / "gateways" / "gw-0010" / "sign.key").exists()
    assert not (suite.dir / "gateways" / "gw-0010" / "client.key").exists()
    assert not (suite.dir / "gateways" / "gw-0010" / "cmdwrap.key").exists()
    reg = suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(f"file:{reg}?mode=ro", uri=True, timeout=5) as db:
        assert db.execute("SELECT length(cmd_pub) FROM gateways WHERE id='gw-0010'"
                          ).fetchone()[0] == 0
    show = json.loads(suite.ctl("--json", "gateway", "show", "gw-0010").stdout)
    assert show["state"] == "disposed" and show["key_id"] == ""
    # a disposed identity never comes back
    assert suite.ctl("gateway", "activate", "gw-0010", check=False).returncode == 1
    assert identity_state(suite, "gw-0010") == "disposed"


def test_revoked_service_key_is_refused_by_every_socket(suite, pb):
    def stored(tag):
        return suite.query("SELECT count(*) FROM alerts WHERE rule=?", tag)[0][0]

    suite.ctl("service", "suspend", "anomaly", "--reason", "test")
    try:
        time.sleep(0.5)
        denied = suite.metric("archive", "suido_zap_denied_total")
        curve_push(suite, suite.base + 2, "archive", service_keys(suite, "anomaly"),
                   alert_frame(pb, "while_suspended"))
        assert wait_until(lambda: suite.metric("archive", "suido_zap_denied_total") > denied, 5)
        assert stored("while_suspended") == 0
    finally:
        suite.ctl("service", "activate", "anomaly")
    time.sleep(0.5)
    curve_push(suite, suite.base + 2, "archive", service_keys(suite, "anomaly"),
               alert_frame(pb, "after_activation"))
    assert wait_until(lambda: stored("after_activation") == 1, 5)


def test_inventory_and_certificate_report(suite, pb):
    inv = json.loads(suite.ctl("--json", "inventory").stdout)
    ids = {g["id"] for g in inv}
    assert {"gw-0001", "gw-0008"} <= ids
    g1 = next(g for g in inv if g["id"] == "gw-0001")
    assert g1["kind"] == "treatment" and g1["model"] and g1["firmware"] and g1["cert_days_left"] > 300
    # verified data updates the inventory's last-seen time (reported every few seconds)
    push_as_ingest(suite, pb, "gw-0001", 8201)
    assert wait_until(lambda: next(g for g in json.loads(suite.ctl("--json", "inventory").stdout)
                                   if g["id"] == "gw-0001")["last_seen_ms"] > 0, 12)
    soon = json.loads(suite.ctl("--json", "certs", "--days", "30").stdout)
    assert soon == []
    later = json.loads(suite.ctl("--json", "certs", "--days", "400").stdout)
    # every gateway that may still connect (a revoked or disposed one no longer counts) ...
    live = {g["id"] for g in inv if g["state"] not in ("revoked", "disposed")}
    assert {c["id"] for c in later if "id" in c} == live
    # ... and the deployment's other certificates that expire within those days (the CA lives
    # longer than 400 days)
    others = {c["certificate"] for c in later if "certificate" in c}
    assert {"broker/server.crt", "services/registry/client.crt",
            "services/registry/metrics.crt", "services/monitor/https.crt"} <= others
    assert "ca/ca.crt" not in others


def copy_db(suite, tmp_path):
    dst = tmp_path / "archive.db"
    src = sqlite3.connect(f"file:{suite.dir / 'state' / 'archive' / 'archive.db'}?mode=ro", uri=True)
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    return dst, out


def test_audit_log_verifies_and_any_tampering_is_detected(suite, tmp_path):
    assert wait_until(lambda: suite.query("SELECT count(*) FROM audit")[0][0] >= 5, 5)
    ok = json.loads(suite.ctl("--json", "audit", "verify").stdout)
    assert ok["ok"] and ok["entries"] >= 5

    def verify(db):
        return suite.ctl("--json", "audit", "verify", "--db", db, check=False)

    db, c = copy_db(suite, tmp_path)
    c.execute("UPDATE audit SET detail = detail || ' ' WHERE seq = 3")
    c.commit()
    r = verify(db)
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"] == 3 and "altered" in r.stderr

    db, c = copy_db(suite, tmp_path)
    c.execute("DELETE FROM audit WHERE seq = 2")
    c.commit()
    r = verify(db)
    assert r.returncode == 1 and "missing or out of order" in r.stderr

    db, c = copy_db(suite, tmp_path)
    rows = c.execute("SELECT seq, ts_ms, source, event, subject, actor, detail, hash FROM audit "
                     "WHERE seq IN (2, 3) ORDER BY seq").fetchall()
    c.execute("DELETE FROM audit WHERE seq IN (2, 3)")
    # put them back swapped, renumbered to hide the swap
    for (seq, *rest), new_seq in zip(reversed(rows), (2, 3)):
        c.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?)", (new_seq, *rest))
    c.commit()
    r = verify(db)
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"] == 2


def restart_registry(suite, conf=None):
    suite.stop("registry")
    argv = suite.service_argv("registry")
    if conf:
        argv[-1] = str(conf)
    suite._spawn("registry", argv)
    assert wait_until(lambda: suite.ctl("inventory", check=False).returncode == 0, 15)


def test_certificates_near_expiry_raise_one_alert_each(suite, tmp_path):
    # every certificate of the test PKI lives 397 days: warning at 400 days makes them all due
    conf = tmp_path / "registry.conf"
    conf.write_text((suite.dir / "etc" / "registry.conf").read_text().replace(
        "[registry]\n", "[registry]\nexpiry_warn_days = 400, 7, 1\n"))
    active = len([g for g in json.loads(suite.ctl("--json", "inventory").stdout)
                  if g["state"] == "active"])

    def alerts():
        return suite.query("SELECT alert_id, site, severity, value, limit_value FROM alerts "
                           "WHERE rule='certificate_expiry'")

    try:
        restart_registry(suite, conf)
        assert wait_until(lambda: len(alerts()) >= active, 10)
        gw = [a for a in alerts() if a[0] == "gw-0001/certificate/expiry"]
        assert len(gw) == 1 and gw[0][1] == "treatment-01" and gw[0][4] == 400
        assert 360 < gw[0][3] <= 397
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM audit WHERE event='certificate_expiring' AND "
            "subject='gw-0001'")[0][0] == 1, 5)
        # known crossings are not repeated after a restart; counted once every certificate's
        # crossing has arrived (the archive stores them in batches: wait for a steady count)
        def settled():
            n = len(alerts())
            time.sleep(1.5)
            return n if len(alerts()) == n else None
        before = wait_until(settled, 30)
        assert before
        restart_registry(suite, conf)
        time.sleep(1.0)
        assert len(alerts()) == before
    finally:
        restart_registry(suite)


def test_provisioned_gateway_gets_a_field_bundle_and_works_once_activated(suite, pb, tmp_path):
    from wire import Client
    bundle = tmp_path / "bundle-gw-0100"
    out = json.loads(suite.ctl("--json", "gateway", "provision", "gw-0100", "--site", "hill-res",
                               "--kind", "reservoir", "--model", "RTU-9", "--firmware", "2.1.0",
                               "--out", bundle).stdout)
    assert out == {"id": "gw-0100", "state": "provisioned", "bundle": str(bundle)}
    files = {p.name for p in bundle.iterdir()}
    assert {"client.crt", "client.key", "sign.key", "ca.crt", "wrap.pub", "gateway.conf",
            "cmdwrap.key", "cmdwrap.pub"} <= files
    assert not any(p.stat().st_mode & 0o077 for p in bundle.iterdir() if p.suffix == ".key")
    conf = (bundle / "gateway.conf").read_text()
    assert "id = gw-0100" in conf and f"broker = ssl://127.0.0.1:{suite.port}" in conf
    assert "command_unwrap_key = cmdwrap.key" in conf
    # the registry holds the public half of the gateway's own RSA key: commands are encrypted to it
    from cryptography.hazmat.primitives import serialization
    pub = serialization.load_pem_public_key((bundle / "cmdwrap.pub").read_bytes())
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    reg = suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(f"file:{reg}?mode=ro", uri=True, timeout=5) as db:
        assert db.execute("SELECT cmd_pub FROM gateways WHERE id='gw-0100'").fetchone()[0] == der
    show = json.loads(suite.ctl("--json", "gateway", "show", "gw-0100").stdout)
    assert show["state"] == "provisioned" and show["site"] == "hill-res"
    assert show["model"] == "RTU-9" and show["cert_days_left"] > 300 and show["key_id"]
    assert identity_state(suite, "gw-0100") == "provisioned"
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='gateway_provisioned' AND subject='gw-0100' "
        "AND actor='admin'")[0][0] == 1, 5)

    def publish(epoch, ack_wanted):
        c = Client(suite, str(bundle / "client.crt"), str(bundle / "client.key"),
                   client_id="gw-0100", ca=str(bundle / "ca.crt"))
        try:
            if c.connect():
                c.subscribe("suido/v1/gw-0100/ack")
                time.sleep(0.3)
                try:
                    c.publish("suido/v1/gw-0100/data",
                              envelope(pb, suite, "gw-0100", 1, [("level", 4.0)], epoch=epoch))
                except RuntimeError:  # cut by the broker (identity not active)
                    pass
            return wait_until(lambda: any(t == "suido/v1/gw-0100/ack" for t, _ in c.messages),
                              10 if ack_wanted else 1.5)
        finally:
            c.close()

    # provisioned is not yet in service: the broker lets nothing through
    assert not publish(8301, False)
    assert suite.seen(8301) == 0
    suite.ctl("gateway", "activate", "gw-0100")
    time.sleep(0.5)  # the plugin reads the identity file within 200 ms
    assert publish(8302, True), suite.log("archive")[-2000:]
    assert suite.query("SELECT count(*) FROM batches WHERE gateway='gw-0100' "
                       "AND boot_epoch=8302")[0][0] == 1

    # an id is never issued twice: not while it exists, nor after it is gone
    again = suite.ctl("gateway", "provision", "gw-0100", "--site", "x", "--kind", "reservoir",
                      "--out", tmp_path / "again", check=False)
    assert again.returncode == 1 and "never reused" in again.stderr
    assert not (tmp_path / "again").exists()


def test_provisioning_needs_an_admin_and_a_valid_request(suite, tmp_path):
    def issued(gw):
        return [l.split("\t")[0] for l in
                (suite.dir / "ca" / "db" / "index.txt").read_text().splitlines()
                if l.endswith(f"/CN={gw}")]

    r = suite.ctl("gateway", "provision", "gw-0101", "--site", "s", "--kind", "reservoir",
                  "--out", tmp_path / "b", token="not-a-token", check=False)
    assert r.returncode == 1 and "denied" in r.stderr
    assert not (tmp_path / "b").exists() and issued("gw-0101") == []
    r = suite.ctl("gateway", "provision", "gw-0102", "--kind", "reservoir", "--out",
                  tmp_path / "c", check=False)
    assert r.returncode == 2 and "--site" in r.stderr and issued("gw-0102") == []
    # the registry refuses (no site): the certificate issued for it is revoked again, so nothing
    # usable stays behind, and the refusal is audited
    r = suite.ctl("gateway", "provision", "gw-0103", "--site", "", "--kind", "reservoir",
                  "--out", tmp_path / "d", check=False)
    assert r.returncode == 1 and "site" in r.stderr
    assert issued("gw-0103") == ["R"] and not (tmp_path / "d").exists()
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='gateway_provision_refused' "
        "AND subject='gw-0103'")[0][0] == 1, 5)
