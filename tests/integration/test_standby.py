"""A standby archive (scripts/mkdeploy.sh --standby, README "A standby archive"): it receives
every committed input of the primary with acknowledgement, and applying the same inputs in the
same order gives it the same rows and the same audit-chain head; its lag is reported; it refuses
to be promoted while its primary answers; a standby whose key the primary does not know cannot
replicate (refused handshake, audited by the primary); an answer that is not right is refused,
audited and counted, and applying stops; and when the primary is lost (kill -9 under load), the
promoted standby, with the gateways' outboxes resending what it lacks, holds every batch sent:
0 gaps, 0 duplicate rows, every signature re-verified. The recovery point (the newest input
committed on the primary minus the newest one replicated) is measured and printed.

One deployment for the module, with the primary "archive" and the standby "archive-standby"."""
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
import zmq

from suite import BIN, Suite, free_base_port, wait_until
from test_access import curve_push, service_keys
from wire import totp

STANDBY = "archive-standby"
ALERT_ID = "gw-0003/reservoir.chlorine/limit"


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    s = Suite(tmp_path_factory.mktemp("standby"), gateways=8, standby=True)
    try:
        s.start()
        s.start_service(STANDBY)
        s.login_admin()
        yield s
    finally:
        codes = s.stop()
        # the primary is killed on purpose (-9); everything else stops cleanly
        failed = {n: c for n, c in codes.items() if c != 0 and n != "archive"}
        assert not failed, f"processes exited with errors: {failed}"


def ctl_standby(suite, *args, check=True, token=None):
    """suidoctl with the standby's configuration (its API, its database)."""
    env = dict(os.environ, SUIDO_TOKEN=token or suite.token)
    r = subprocess.run([str(BIN / "suidoctl"), "-c", str(suite.dir / "etc" / "suidoctl-standby.conf"),
                        *map(str, args)], capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert r.returncode == 0, f"suidoctl {args} -> {r.returncode}: {r.stderr}"
    return r


def status(suite, standby=False):
    r = (ctl_standby(suite, "--json", "archive", "status") if standby
         else suite.ctl("--json", "archive", "status"))
    return json.loads(r.stdout)


def db_path(suite, name):
    return suite.dir / "state" / name / "archive.db"


def ro(path):
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def contents(path):
    """Every replicated table's rows, in a comparable form (the replication bookkeeping aside)."""
    with ro(path) as db:
        tables = [t for (t,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT IN ('replog', 'repl_state') ORDER BY name")]
        return {t: sorted(repr(r) for r in db.execute(f"SELECT * FROM {t}")) for t in tables}


def audit_head(suite, path):
    # offline: the file as it is, and no audit entry of its own (an online check is audited,
    # which would give the primary a new entry to replicate while the two are compared)
    r = suite.ctl("--json", "--offline", "audit", "verify", "--db", path)
    out = json.loads(r.stdout)
    assert out["ok"], out
    return out["head"], out["entries"]


def standby_metric(suite, name):
    return suite.metric(STANDBY, name)


def alert(pb, cleared=False, value=0.15):
    a = pb.Alert(id=ALERT_ID, gateway_id="gw-0003", site="pumping-03",
                 channel="reservoir.chlorine", rule="limit_ll", severity=pb.SEVERITY_ALARM,
                 value=value, limit=0.2, timestamp_ms=int(time.time() * 1000),
                 evidence=f"{value} mg/L below LL 0.2", cleared=cleared)
    return pb.StageMessage(topic="suido/v1/alerts/pumping-03", alert=a).SerializeToString()


def caught_up(suite):
    """Standby and primary at the same committed input, and both still there a moment later."""
    p, s = status(suite), status(suite, standby=True)
    if not p["standbys"] or p["standbys"][0]["behind"] != 0 or s["position"] != p["position"]:
        return None
    time.sleep(0.5)
    p2 = status(suite)
    return p if p2["position"] == p["position"] and p2["standbys"][0]["acked"] == p["position"] \
        else None


def test_the_standby_applies_every_input_and_holds_the_same_rows_and_audit_chain(ha, pb):
    # the standby asks, acknowledges, and is reported live
    assert wait_until(lambda: status(ha)["standbys"] and status(ha)["standbys"][0]["live"], 20), \
        ha.log(STANDBY)
    s = status(ha, standby=True)
    assert s["role"] == "standby" and s["stopped"] == "" and s["handshakes_refused"] == 0

    # load: batches and encrypted batches, a refusal (as the verifier reports it) and its audit
    ha.sim("--rate", 10, "--duration", 6, "--wait-acks", 30, timeout=120)
    ha.sim("--rate", 10, "--duration", 3, "--encrypt", "--wait-acks", 30, timeout=120)
    refused = pb.StageMessage(topic="suido/v1/gw-0002/data", received_ms=int(time.time() * 1000),
                              envelope=b"\x0a\x00", status=pb.VERIFY_REJECTED,
                              reason="bad_signature",
                              header=pb.Header(gateway_id="gw-0002", boot_epoch=7, seq=9))
    curve_push(ha, ha.base + 2, "archive", service_keys(ha, "verify"), refused.SerializeToString())
    # an alert case: raised, acknowledged, a refused close (still active), cleared, closed
    anomaly = service_keys(ha, "anomaly")
    curve_push(ha, ha.base + 2, "archive", anomaly, alert(pb))
    assert wait_until(lambda: [c for c in json.loads(ha.ctl("--json", "alert", "list").stdout)
                               ["cases"] if c["alert_id"] == ALERT_ID], 10)
    case = [c for c in json.loads(ha.ctl("--json", "alert", "list").stdout)["cases"]
            if c["alert_id"] == ALERT_ID][0]
    cid = str(case["case_id"])
    ha.ctl("alert", "ack", cid)
    assert ha.ctl("alert", "close", cid, "--cause", "c", "--action", "a",
                  check=False).returncode == 1
    curve_push(ha, ha.base + 2, "archive", anomaly, alert(pb, cleared=True))
    assert wait_until(lambda: json.loads(ha.ctl("--json", "alert", "show", cid).stdout)
                      ["cases"][0]["active"] is False, 10)
    ha.ctl("alert", "close", cid, "--cause", "sensor fouled", "--action", "cleaned probe")

    # lag goes to 0: the primary's metrics and both statuses agree
    p = wait_until(lambda: caught_up(ha), 60)
    assert p, (status(ha), status(ha, standby=True))
    lag = f'suido_archive_repl_behind{{standby="{STANDBY}"}}'
    assert wait_until(lambda: ha.metric("archive", lag) == 0 and
                      ha.metric("archive", "suido_archive_repl_position") == p["position"], 10)
    assert p["standbys"][0]["lag_s"] == 0
    print(f"\nstandby: {p['position']} inputs replicated, behind 0")

    # the same rows, table by table, and the same audit chain
    primary, standby = contents(db_path(ha, "archive")), contents(db_path(ha, STANDBY))
    assert set(primary) == set(standby)
    for table in primary:
        assert primary[table] == standby[table], f"table {table} differs"
    assert len(primary["batches"]) >= 200 and primary["rejects"] and primary["alert_cases"]
    closed = [r for r in primary["alert_cases"] if "cleaned probe" in r]
    assert len(closed) == 1
    head_p, n_p = audit_head(ha, db_path(ha, "archive"))
    head_s, n_s = audit_head(ha, db_path(ha, STANDBY))
    assert (head_p, n_p) == (head_s, n_s) and n_p > 0
    # the standby has no MQTT session and no bound input: it published nothing, took no frame
    assert standby_metric(ha, "suido_archive_acks_total") == 0
    assert standby_metric(ha, "suido_stage_received_total") == 0
    assert wait_until(lambda: standby_metric(ha, "suido_archive_repl_applied_total") ==
                      p["position"] and standby_metric(ha, "suido_archive_repl_behind") == 0, 10)
    assert standby_metric(ha, "suido_replication_lag_seconds") == 0
    text = ha.ctl("archive", "status").stdout
    assert f"{STANDBY}" in text and "live" in text and "behind 0" in text, text


def test_promotion_is_refused_while_the_primary_answers_and_to_non_admins(ha):
    r = ctl_standby(ha, "archive", "promote", check=False)
    assert r.returncode == 1 and "the primary answered" in r.stderr and "--force" in r.stderr
    secret = ha.add_operator("olga", "operator", "operator password 7")
    olga = ha.login("olga", "operator password 7", totp(secret))
    r = ctl_standby(ha, "archive", "promote", "--force", check=False, token=olga)
    assert r.returncode == 1 and "denied" in r.stderr
    # a standby answers nothing else
    r = ctl_standby(ha, "alert", "list", check=False)
    assert r.returncode == 3 and "standby" in r.stderr
    assert status(ha, standby=True)["role"] == "standby"
    assert status(ha)["standbys"][0]["live"]


def rogue_conf(suite, root, name, primary, primary_key):
    """A standby configuration under the identity `name` (a service key the deployment issued),
    with its own state, following `primary`."""
    d, base = suite.dir, free_base_port(4)
    root.mkdir(parents=True, exist_ok=True)
    conf = root / f"{name}.conf"
    conf.write_text(f"""[service]
name = {name}
state_dir = {root}/state
metrics_file = {root}/{name}.prom
log_level = info
curve_public = {d}/services/{name}/curve.pub
curve_secret = {d}/services/{name}/curve.key

[mqtt]
uri = ssl://localhost:{suite.port}
ca = {d}/ca/ca.crt
cert = {d}/services/{name}/client.crt
key = {d}/services/{name}/client.key

[input]
bind = tcp://127.0.0.1:{base}
allow = profile:{d}/services/profile/curve.pub

[api]
bind = tcp://127.0.0.1:{base + 1}
allow = suidoctl:{d}/services/suidoctl/curve.pub

[replication]
role = standby
primary = {primary}
primary_key = {primary_key}

[registry]
connect = tcp://127.0.0.1:{suite.base + 1}
server_key = {d}/services/registry/curve.pub
""")
    return conf


def prom(path, name):
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.rpartition(" ")
            if k == name:
                return float(v)
    except FileNotFoundError:
        pass
    return 0


def test_a_standby_the_primary_does_not_know_cannot_replicate(ha, tmp_path):
    """The "bench" identity is issued by the deployment but is not on the primary's
    [replication] allow-list: its handshake is refused, and the primary audits the refusal."""
    conf = rogue_conf(ha, tmp_path, "bench", f"tcp://127.0.0.1:{ha.base + 20}",
                      ha.dir / "services" / "archive" / "curve.pub")
    before = ha.query("SELECT count(*) FROM audit WHERE event='zmq_handshake_refused' AND "
                      "subject='archive:replication'")[0][0]
    p = ha._spawn("rogue", [str(BIN / "suido-archive"), "-c", str(conf)])
    try:
        assert wait_until(lambda: prom(tmp_path / "bench.prom",
                                       "suido_archive_repl_handshakes_refused_total") > 0, 20), \
            ha.log("rogue")
        assert wait_until(lambda: ha.query(
            "SELECT count(*) FROM audit WHERE event='zmq_handshake_refused' AND "
            "subject='archive:replication'")[0][0] > before, 20)
        assert prom(tmp_path / "bench.prom", "suido_archive_repl_position") == 0
        assert [b["name"] for b in status(ha)["standbys"]] == [STANDBY]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    with ro(tmp_path / "state" / "archive.db") as db:
        assert db.execute("SELECT count(*) FROM batches").fetchone()[0] == 0


class FakePrimary:
    """A primary that answers what the test says: a ROUTER with a CURVE key of its own."""

    def __init__(self, pb, keyfile):
        self.pb = pb
        pub, sec = zmq.curve_keypair()
        keyfile.write_bytes(pub + b"\n")
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_secretkey = sec
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")

    def answer(self, make_reply, timeout=20):
        """Waits for the next request; answers make_reply(request) (bytes); returns the request."""
        if not self.sock.poll(timeout * 1000):
            raise AssertionError("the standby did not ask")
        route, body = self.sock.recv_multipart()
        q = self.pb.ReplRequest.FromString(body)
        self.sock.send_multipart([route, make_reply(q)])
        return q

    def close(self):
        self.sock.close()


BAD_ANSWERS = {
    "not_contiguous": lambda pb, good: pb.ReplReply(after=1, head=3, records=[
        pb.ReplRecord(id=3, ts_ms=good.ts_ms, peer="registry", kind="stage",
                      body=good.body)]).SerializeToString(),
    "unknown_kind": lambda pb, good: pb.ReplReply(after=1, head=2, records=[
        pb.ReplRecord(id=2, ts_ms=good.ts_ms, peer="registry", kind="bogus",
                      body=good.body)]).SerializeToString(),
    "kind_from_the_wrong_peer": lambda pb, good: pb.ReplReply(after=1, head=2, records=[
        pb.ReplRecord(id=2, ts_ms=good.ts_ms, peer="ingest", kind="stage",
                      body=pb.StageMessage(topic="suido/v1/gw-0001/data").SerializeToString())
    ]).SerializeToString(),
    "not_decodable": lambda pb, good: b"\xff\xff\xff\xff not a reply",
}


@pytest.mark.parametrize("bad", sorted(BAD_ANSWERS))
def test_a_bad_answer_is_refused_audited_counted_and_stops_applying(ha, pb, tmp_path, bad):
    fake = FakePrimary(pb, tmp_path / "fake.pub")
    conf = rogue_conf(ha, tmp_path, "bench", f"tcp://127.0.0.1:{fake.port}", tmp_path / "fake.pub")
    p = ha._spawn(f"rogue-{bad}", [str(BIN / "suido-archive"), "-c", str(conf)])
    metrics = tmp_path / "bench.prom"
    try:
        now = int(time.time() * 1000)
        event = pb.AuditEvent(ts_ms=now, event="standby_test", subject="s", actor="registry",
                              detail="the first input")
        good = pb.ReplRecord(id=1, ts_ms=now, peer="registry", kind="stage",
                             body=pb.StageMessage(audit=event).SerializeToString())
        q = fake.answer(lambda q: pb.ReplReply(after=q.after, head=1, records=[good])
                        .SerializeToString())
        assert q.after == 0 and q.max > 0
        q = fake.answer(lambda q: BAD_ANSWERS[bad](pb, good))
        assert q.after == 1  # the first answer was applied and acknowledged
        assert wait_until(lambda: prom(metrics, "suido_archive_repl_stopped") == 1, 20), \
            ha.log(f"rogue-{bad}")
        assert prom(metrics, "suido_archive_repl_refused_total") == 1
        # stopped, it still asks (so that it sees its primary) but applies nothing more
        q = fake.answer(lambda q: pb.ReplReply(after=q.after, head=5, records=[
            pb.ReplRecord(id=2, ts_ms=now, peer="registry", kind="stage", body=good.body)])
            .SerializeToString())
        assert q.after == 1 and q.max == 0
        assert wait_until(lambda: prom(metrics, "suido_archive_repl_head") == 5, 20)
        assert prom(metrics, "suido_archive_repl_position") == 1
    finally:
        p.send_signal(signal.SIGTERM)
        code = p.wait(20)
        fake.close()
    assert code == 0
    with ro(tmp_path / "state" / "archive.db") as db:
        rows = db.execute("SELECT source, event, detail FROM audit ORDER BY seq").fetchall()
        applied = db.execute("SELECT value FROM repl_state WHERE key='applied'").fetchone()
    assert rows[0][:2] == ("registry", "standby_test")
    assert rows[-1][:2] == ("archive", "replication_refused") and "position=1" in rows[-1][2]
    assert len(rows) == 2 and applied == (1,)


def expand(ranges):
    return {(r["boot_epoch"], s) for r in ranges for s in range(r["first_seq"], r["last_seq"] + 1)}


def test_primary_lost_standby_promoted_nothing_missing(ha, tmp_path):
    report = tmp_path / "report.json"
    log = open(tmp_path / "sim.log", "w")
    sim = subprocess.Popen([str(BIN / "suido-gateway-sim"), "--broker",
                            f"ssl://localhost:{ha.port}", "--deploy", str(ha.dir), "--rate", "10",
                            "--duration", "25", "--wait-acks", "150", "--state-dir",
                            str(tmp_path / "outbox"), "--report", str(report), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=log)
    try:
        start = ha.metric("archive", "suido_archive_batches_total")
        assert wait_until(lambda: ha.metric("archive", "suido_archive_batches_total") >
                          start + 200, 30), ha.log("archive")
        assert status(ha)["standbys"][0]["live"]
        # the primary is lost under load
        ha.stop("archive", signal.SIGKILL)

        # recovery point: the newest input committed on the primary against the newest the
        # standby applied (both from the primary's replication log, which its commits hold)
        assert wait_until(lambda: status(ha, standby=True)["primary_silent_s"] > 2, 20)
        with ro(db_path(ha, "archive")) as db:
            newest_id, newest_ms = db.execute("SELECT max(id), max(ts_ms) FROM replog").fetchone()
            applied = status(ha, standby=True)["position"]
            (applied_ms,) = db.execute("SELECT ts_ms FROM replog WHERE id=?",
                                       (applied,)).fetchone()
            (committed_batches,) = db.execute("SELECT count(*) FROM batches").fetchone()
        rpo_s = (newest_ms - applied_ms) / 1000
        print(f"\nrecovery point: {rpo_s:.3f} s of data ({newest_id - applied} inputs of "
              f"{newest_id}) committed on the primary but not replicated; primary held "
              f"{committed_batches} batches")
        assert applied <= newest_id and rpo_s <= 60

        # the guard lifts once the primary has been silent for 10 s; then promote
        assert wait_until(lambda: status(ha, standby=True)["primary_silent_s"] >= 10.5, 30)
        r = ctl_standby(ha, "archive", "promote")
        assert "now the primary" in r.stdout, r.stdout
        assert status(ha, standby=True)["role"] == "promoted"

        # the gateways' outboxes resend whatever the promoted standby lacks; all is acked
        assert sim.wait(240) == 0, (tmp_path / "sim.log").read_text()[-3000:]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        log.close()
    rep = json.loads(report.read_text())
    with ro(db_path(ha, STANDBY)) as db:
        for g in rep["gateways"]:
            assert g["outbox"]["records"] == 0, g
            want = expand(g["sent_ranges"])
            got = set()
            for epoch in {e for e, _ in want}:
                got |= {(epoch, s) for (s,) in db.execute(
                    "SELECT seq FROM batches WHERE gateway=? AND boot_epoch=?",
                    (g["id"], epoch))}
            missing, extra = want - got, got - want
            assert not missing and not extra, \
                f"{g['id']}: missing {sorted(missing)[:10]} extra {sorted(extra)[:10]}"

    # suidoctl on the promoted archive: 0 gaps, every signature and the audit chain verified
    r = ctl_standby(ha, "--json", "archive", "gaps", check=False)
    gaps = json.loads(r.stdout)
    assert r.returncode == 0 and gaps["missing"] == 0, gaps
    print(f"promoted archive: stored={gaps['stored']} missing={gaps['missing']} "
          f"duplicates_refused={gaps['duplicates_refused']} duplicate_rows=0")
    v = json.loads(ctl_standby(ha, "--json", "archive", "verify").stdout)
    assert v["ok"] and v["failed"] == 0 and v["verified"] > 0, v
    with ro(db_path(ha, STANDBY)) as db:
        promoted = db.execute("SELECT actor, detail FROM audit WHERE event='archive_promoted'"
                              ).fetchall()
    assert len(promoted) == 1 and "forced=0" in promoted[0][1]


def test_a_promoted_standby_restarts_as_the_primary(ha):
    ha.stop(STANDBY)
    ha.start_service(STANDBY)
    assert wait_until(lambda: ctl_standby(ha, "archive", "status", check=False).returncode == 0,
                      20), ha.log(STANDBY)
    assert status(ha, standby=True)["role"] == "promoted"
    rep = ha.sim("--ids", "gw-0001", "--max-batches", 5, "--rate", 20, "--wait-acks", 30,
                 timeout=90)
    g = rep["gateways"][0]
    assert g["acked_seq"] == 5, g
    with ro(db_path(ha, STANDBY)) as db:
        assert db.execute("SELECT count(*) FROM batches WHERE gateway='gw-0001' AND "
                          "boot_epoch=?", (g["boot_epoch"],)).fetchone()[0] == 5
