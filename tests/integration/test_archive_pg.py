"""The archive on PostgreSQL ([archive] postgresql = FILE): a real PostgreSQL 15 server started
by the test (tests/integration/pg.py) on a free loopback port, with a password role and
scram-sha-256, and a whole suite whose archive stores there instead of in SQLite.

What is checked: cm_sql's engine tests against the server; the pipeline end to end (gateways ->
rows in PostgreSQL, acks published only after the commit, a replay stored once, `suidoctl
archive gaps` and `archive verify` read PostgreSQL); alert cases acknowledged and closed through
the archive's API; a clear one-line refusal at start for wrong credentials, an unreachable
server, a connection-string file readable by others and a configuration naming both engines;
PostgreSQL stopped under load (no ack while it is down, the archive survives, reconnects, audits
the outage, and the gateways' outboxes make up for what was rolled back: 0 gaps, 0 duplicates);
a backup of the PostgreSQL archive that verifies and restores like a SQLite one, and a restore
into an empty PostgreSQL database."""
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

import pg as pgmod
from suite import BIN, BUILD, running_suite, wait_until
from test_alerts import cases, open_case, send

why_not = pgmod.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture(scope="module")
def pg():
    server = pgmod.PostgreSQL()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def pgsuite(pg, tmp_path_factory):
    with running_suite(tmp_path_factory.mktemp("pgsuite"), gateways=6, archive_pg=pg) as s:
        yield s


def gaps(suite):
    r = suite.ctl("--json", "archive", "gaps", check=False)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else r.stderr


def test_cm_sql_engine_tests_pass_against_postgresql(pg, tmp_path):
    pg.create_database("sqltest")
    conninfo = pg.write_conninfo(tmp_path / "sqltest.conninfo", database="sqltest")
    binary = BUILD / "test" / "common" / "cm_sql_test"
    r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SUIDO_SQL_TEST_PG=str(conninfo)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test_postgresql_engine" in r.stdout and "SKIPPED" not in r.stdout


def test_the_pipeline_stores_in_postgresql_and_acks_after_commit(pgsuite, pg):
    rep = pgsuite.sim("--ids", "gw-0001,gw-0002", "--max-batches", 6, "--rate", 10,
                      "--wait-acks", 20)
    for g in rep["gateways"]:
        assert g["legit_sent"] == 6 and g["acked_seq"] == 6, g
        rows = pg.execute("SELECT seq, status, length(envelope) > 64 FROM batches WHERE "
                          "gateway=? AND boot_epoch=? ORDER BY seq", g["id"], g["boot_epoch"])
        assert rows == [(s, "verified", "t") for s in range(1, 7)]
    # stored in PostgreSQL, not beside the services
    assert not (pgsuite.dir / "state" / "archive" / "archive.db").exists()
    assert pg.scalar("SELECT version FROM schema_version") >= 3
    assert pgsuite.metric("archive", "suido_archive_db_connected") == 1
    # (the metrics file is rewritten every second)
    assert wait_until(lambda: pgsuite.metric("archive", "suido_archive_acks_total") >= 2, 5)


def test_a_replay_is_stored_once(pgsuite, pg):
    rep = pgsuite.sim("--ids", "gw-0005", "--max-batches", 6, "--rate", 20, "--attack", "replay",
                      "--attack-every", 3, "--wait-acks", 10)
    g = rep["gateways"][0]
    assert g["attacked_sent"] >= 1
    assert wait_until(lambda: pg.scalar(
        "SELECT count(*) FROM rejects WHERE gateway='gw-0005' AND reason IN "
        "('replay', 'duplicate')") >= g["attacked_sent"], 10)
    assert pg.scalar("SELECT count(*) - count(DISTINCT (boot_epoch, seq)) FROM batches "
                     "WHERE gateway='gw-0005'") == 0
    assert pg.scalar(f"SELECT count(*) FROM batches WHERE gateway='gw-0005' AND "
                     f"boot_epoch={g['boot_epoch']}") == g["legit_sent"] > 0


def test_archive_gaps_and_verify_read_postgresql(pgsuite, pg):
    pgsuite.sim("--ids", "gw-0003", "--max-batches", 4, "--rate", 20, "--wait-acks", 10)
    rc, out = gaps(pgsuite)
    assert rc == 0, out
    assert out["missing"] == 0 and out["stored"] == pg.scalar("SELECT count(*) FROM batches")
    assert {e["gateway"] for e in out["epochs"]} >= {"gw-0001", "gw-0002", "gw-0003"}
    before = pg.scalar("SELECT count(*) FROM audit")
    r = pgsuite.ctl("--json", "archive", "verify")
    v = json.loads(r.stdout)
    assert v["ok"] and v["failed"] == 0 and v["verified"] == v["batches"] > 0
    # the check's own ctl_access entry may be stored before or after it reads the log
    assert before <= v["audit_entries"] <= pg.scalar("SELECT count(*) FROM audit")
    r = pgsuite.ctl("audit", "verify")
    assert "audit log intact" in r.stdout
    # a gap made on purpose is found (the check can fail) ...
    pg.query("DELETE FROM batches WHERE gateway='gw-0003' AND seq=2")
    rc, out = gaps(pgsuite)
    assert rc == 1 and out["missing"] == 1
    assert [e["missing_ranges"] for e in out["epochs"] if e["gateway"] == "gw-0003"
            and e["missing"]] == [[[2, 2]]]
    # ... and taken away again with the rest of that boot epoch, so later checks start clean
    pg.query("DELETE FROM batches WHERE gateway='gw-0003'")
    assert gaps(pgsuite)[0] == 0


def test_alert_cases_are_acknowledged_and_closed_on_postgresql(pgsuite, pg, pb):
    send(pgsuite, pb)
    assert wait_until(lambda: open_case(pgsuite) is not None, 10)
    cid = str(open_case(pgsuite)["case_id"])
    acked = cases(pgsuite, "ack", cid)["cases"][0]
    assert acked["state"] == "acknowledged" and acked["acked_by"] == "admin"
    r = pgsuite.ctl("alert", "close", cid, "--cause", "x", "--action", "y", check=False)
    assert r.returncode == 1 and "still active" in r.stderr
    send(pgsuite, pb, cleared=True)
    assert wait_until(lambda: not open_case(pgsuite)["active"], 10)
    closed = cases(pgsuite, "close", cid, "--cause", "sensor fouled",
                   "--action", "cleaned the probe")["cases"][0]
    assert closed["state"] == "closed" and closed["cause"] == "sensor fouled"
    assert pg.execute("SELECT state, acked_by, cause FROM alert_cases WHERE case_id=?",
                      int(cid)) == [("closed", "admin", "sensor fouled")]
    assert wait_until(lambda: pg.scalar(
        f"SELECT count(*) FROM audit WHERE event='alert_closed' AND subject='case-{cid}'") == 1,
        10)


def without_section(conf_text, section):
    """conf_text without [section] and its keys."""
    out, skip = [], False
    for line in conf_text.splitlines():
        if line.startswith("["):
            skip = line.strip() == f"[{section}]"
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def run_archive(suite, conf_text, name):
    """Starts a second archive on a copy of the configuration (without the running one's
    metrics endpoint, whose port is taken, and with a state folder of its own: the running
    archive holds its own, see test_startup.py); returns (exit code, output)."""
    conf = suite.root / f"archive-{name}.conf"
    text = without_section(conf_text, "metrics")
    text, n = re.subn(r"(?m)^state_dir = .*$", f"state_dir = {suite.root / ('state-' + name)}",
                      text)
    assert n == 1
    conf.write_text(text)
    r = subprocess.run([str(BIN / "suido-archive"), "-c", str(conf)], capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_bad_credentials_or_an_unreachable_server_stop_the_archive_with_one_clear_line(
        pgsuite, pg):
    base = (pgsuite.dir / "etc" / "archive.conf").read_text()
    good = str(pgsuite.root / "archive-postgresql.conninfo")
    assert f"postgresql = {good}" in base

    bad = pg.write_conninfo(pgsuite.root / "bad-password.conninfo", password="not-the-password")
    code, out = run_archive(pgsuite, base.replace(good, str(bad)), "badpw")
    assert code == 1
    line = [ln for ln in out.splitlines() if "suido-archive:" in ln]
    assert len(line) == 1 and "unreachable or refused" in line[0], out
    assert "password authentication failed" in line[0]
    assert "not-the-password" not in out and pg.password not in out

    nowhere = pg.write_conninfo(pgsuite.root / "nowhere.conninfo", port=pgmod._free_port())
    code, out = run_archive(pgsuite, base.replace(good, str(nowhere)), "nowhere")
    assert code == 1 and "unreachable or refused" in out and "Connection refused" in out, out
    assert pg.password not in out

    # the file may hold a password: refused when others may read it, before anything starts
    loose = pg.write_conninfo(pgsuite.root / "loose.conninfo", mode=0o644)
    code, out = run_archive(pgsuite, base.replace(good, str(loose)), "loose")
    assert code == 1 and "readable by group or others" in out and pg.password not in out

    both = base.replace("[archive]\n", f"[archive]\ndatabase = {pgsuite.root}/x.db\n", 1)
    code, out = run_archive(pgsuite, both, "both")
    assert code == 1 and "both database and postgresql" in out
    assert pgsuite.alive("archive")


def test_postgresql_stopped_under_load_no_ack_then_nothing_lost(pgsuite, pg, tmp_path):
    gws = "gw-0004,gw-0006"
    state = tmp_path / "outbox"
    lost0 = pgsuite.metric("archive", "suido_archive_db_connection_lost_total")
    out = {}

    def load():
        out["rep"] = pgsuite.sim("--ids", gws, "--rate", 20, "--duration", 14, "--state-dir",
                                 state, timeout=120)

    t = threading.Thread(target=load)
    t.start()
    try:
        assert wait_until(lambda: pg.scalar("SELECT count(*) FROM batches WHERE gateway IN "
                                            "('gw-0004', 'gw-0006')") > 20, 20)
        assert pg.stop()
        assert wait_until(lambda: pgsuite.metric(
            "archive", "suido_archive_db_connection_lost_total") > lost0, 20), \
            pgsuite.log("archive")
        assert pgsuite.metric("archive", "suido_archive_db_connected") == 0
        acks = pgsuite.metric("archive", "suido_archive_acks_total")
        time.sleep(4)  # the gateways keep sending while the database is away
        # nothing stored, nothing acknowledged, and the archive is still there
        assert pgsuite.metric("archive", "suido_archive_acks_total") == acks
        assert pgsuite.alive("archive"), pgsuite.log("archive")
    finally:
        pg.start()
    assert wait_until(lambda: pgsuite.metric("archive", "suido_archive_db_reconnects_total")
                      >= 1, 40), pgsuite.log("archive")
    t.join(120)
    assert not t.is_alive()
    assert pgsuite.alive("archive")
    rep1 = out["rep"]
    # the next run of the same gateways resends whatever was rolled back or never acked
    rep2 = pgsuite.sim("--ids", gws, "--max-batches", 2, "--rate", 20, "--state-dir", state,
                       "--wait-acks", 60, timeout=120)
    for g1, g2 in zip(rep1["gateways"], rep2["gateways"]):
        assert g2["outbox"]["records"] == 0, g2
        epochs = {g1["boot_epoch"], g2["boot_epoch"]}
        want = {(r["boot_epoch"], s) for r in g2["sent_ranges"] if r["boot_epoch"] in epochs
                for s in range(r["first_seq"], r["last_seq"] + 1)}
        got = []
        for e in epochs:
            got += pg.execute("SELECT boot_epoch, seq FROM batches WHERE gateway=? AND "
                              "boot_epoch=? AND kind IN ('data', 'backfill')", g2["id"], e)
        assert len(got) == len(set(got)), "duplicate rows"
        assert set(got) == want, (sorted(want - set(got))[:10], sorted(set(got) - want)[:10])
        assert len(want) > 20
    rc, report = gaps(pgsuite)
    assert rc == 0 and report["missing"] == 0, report
    assert wait_until(lambda: pg.scalar("SELECT count(*) FROM audit WHERE "
                                        "event='archive_database_reconnected'") >= 1, 10)
    log = (pgsuite.logs / "archive.log").read_text(errors="replace")
    assert "database connection lost" in log and "event=database_reconnected" in log


def test_backup_of_the_postgresql_archive_verifies_and_restores(pgsuite, pg, tmp_path):
    pgsuite.sim("--ids", "gw-0002", "--max-batches", 3, "--rate", 20, "--wait-acks", 10)
    bdir = tmp_path / "backup"
    r = pgsuite.ctl("--json", "backup", "create", bdir)
    made = json.loads(r.stdout)
    assert made["ok"] and made["batches"] == pg.scalar("SELECT count(*) FROM batches")
    assert 0 < made["audit_entries"] <= pg.scalar("SELECT count(*) FROM audit")
    r = pgsuite.ctl("--json", "backup", "verify", bdir)
    v = json.loads(r.stdout)
    assert v["ok"] and v["signatures"]["failed"] == 0
    assert v["signatures"]["verified"] == made["batches"] > 0
    # the copy has the archive's schema, in SQLite's dialect, and its version
    import sqlite3
    with sqlite3.connect(f"file:{bdir}/archive.db?mode=ro", uri=True) as c:
        tables = {n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"batches", "events", "rejects", "alerts", "audit", "command_log",
                "alert_cases"} <= tables
        assert c.execute("PRAGMA user_version").fetchone()[0] == \
            pg.scalar("SELECT version FROM schema_version")
        ddl = c.execute("SELECT sql FROM sqlite_master WHERE name='alert_cases'").fetchone()[0]
        assert "case_id INTEGER PRIMARY KEY" in ddl and "DEFAULT ''" in ddl
    # a tampered copy is refused, as for a SQLite deployment
    broken = tmp_path / "broken"
    shutil.copytree(bdir, broken)
    with open(broken / "archive.db", "r+b") as f:  # 8 bytes inverted (zeros may be zeros)
        f.seek(-100, 2)
        was = f.read(8)
        f.seek(-100, 2)
        f.write(bytes(b ^ 0xFF for b in was))
    assert pgsuite.ctl("backup", "verify", broken, check=False).returncode == 1

    # restore into SQLite files (unchanged) ...
    statedir = tmp_path / "restored-state"
    r = pgsuite.ctl("backup", "restore", bdir, "--to", statedir)
    assert (statedir / "archive" / "archive.db").exists()
    # ... and into an empty PostgreSQL database
    pg.create_database("restored")
    target = pg.write_conninfo(tmp_path / "restored.conninfo", database="restored")
    r = pgsuite.ctl("--json", "backup", "restore", bdir, "--postgresql", target)
    assert json.loads(r.stdout)["restored"]
    counts = pg.psql("SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM audit),"
                     " (SELECT max(case_id) FROM alert_cases)", "restored")[0]
    assert int(counts[0]) == made["batches"] and int(counts[1]) == made["audit_entries"]
    # new rows get new ids after the loaded ones
    nid = pg.psql("INSERT INTO events(gateway, kind, boot_epoch, key_seq, device_ms, "
                  "received_ms, status, reason, envelope) VALUES('gw-x', 'birth', 1, 0, 0, 0, "
                  "'verified', '', '\\x00') RETURNING id", "restored")[0][0]
    assert int(nid) > int(pg.psql("SELECT coalesce(max(id), 0) FROM events WHERE "
                                  "gateway <> 'gw-x'", "restored")[0][0])
    # a database that is not empty is refused, and nothing is written
    r = pgsuite.ctl("backup", "restore", bdir, "--postgresql", target, check=False)
    assert r.returncode == 1 and "not empty" in r.stderr
