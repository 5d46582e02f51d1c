"""suidoctl archive gaps and archive verify against the live archive: a run of the simulator is
complete (0 missing, 0 duplicate rows); a removed row is reported as a gap; a stored envelope
altered after the fact fails the signature re-verification. Every change the tests make to the
archive is undone before they end."""
import json
import sqlite3

from suite import wait_until

GW = "gw-0002"


def writable(suite):
    path = suite.dir / "state" / "archive" / "archive.db"
    db = sqlite3.connect(path, timeout=10)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def gaps(suite, *extra):
    r = suite.ctl("--json", "archive", "gaps", "--gateway", GW, *extra, check=False)
    return r.returncode, json.loads(r.stdout)


def test_gaps_lists_missing_sequences_and_verify_checks_every_signature(suite):
    rep = suite.sim("--ids", GW, "--max-batches", 6, "--rate", 20, "--wait-acks", 10)
    epoch = rep["gateways"][0]["boot_epoch"]
    assert wait_until(lambda: suite.query("SELECT count(*) FROM batches WHERE gateway=? AND "
                                          "boot_epoch=?", GW, epoch)[0][0] >= 6, 10)
    code, out = gaps(suite)
    mine = [e for e in out["epochs"] if e["boot_epoch"] == epoch]
    assert code == 0 and mine and mine[0]["missing"] == 0 and mine[0]["missing_ranges"] == []
    assert mine[0]["stored"] == mine[0]["highest"] >= 6

    db = writable(suite)
    row = db.execute("SELECT * FROM batches WHERE gateway=? AND boot_epoch=? AND seq=3",
                     (GW, epoch)).fetchone()
    cols = [c[1] for c in db.execute("PRAGMA table_info(batches)")]
    env_i = cols.index("envelope")
    try:
        # a row lost: reported, with a non-zero exit for scripts
        with db:
            db.execute("DELETE FROM batches WHERE gateway=? AND boot_epoch=? AND seq=3", (GW, epoch))
        code, out = gaps(suite)
        mine = [e for e in out["epochs"] if e["boot_epoch"] == epoch][0]
        assert code == 1 and mine["missing"] == 1 and mine["missing_ranges"] == [[3, 3]]
        text = suite.ctl("archive", "gaps", "--gateway", GW, check=False).stdout
        assert " 3\n" in text or ",3" in text or " 3," in text, text
    finally:
        with db:
            db.execute(f"INSERT INTO batches VALUES ({','.join('?' * len(row))})", row)
    assert gaps(suite)[0] == 0

    ok = json.loads(suite.ctl("--json", "archive", "verify").stdout)
    assert ok["ok"] and ok["failed"] == 0 and ok["verified"] >= 6
    tampered = bytearray(row[env_i])
    tampered[-1] ^= 1  # inside the signature
    try:
        with db:
            db.execute("UPDATE batches SET envelope=? WHERE gateway=? AND boot_epoch=? AND seq=3",
                       (bytes(tampered), GW, epoch))
        r = suite.ctl("--json", "archive", "verify", check=False)
        out = json.loads(r.stdout)
        assert r.returncode == 1 and not out["ok"] and out["failed"] == 1
        assert f"{GW}" in r.stderr
    finally:
        with db:
            db.execute("UPDATE batches SET envelope=? WHERE gateway=? AND boot_epoch=? AND seq=3",
                       (row[env_i], GW, epoch))
        db.close()
    assert suite.ctl("archive", "verify").returncode == 0


def test_a_damaged_archive_database_is_refused_at_start_and_left_as_it_is(suite):
    """A page of the database overwritten while the archive is stopped: the archive refuses to
    start with one clear line and an alarm, writes nothing into the file (the damaged copy stays
    as evidence, and nothing is acknowledged on top of it); the good copy put back, it starts."""
    import shutil
    path = suite.dir / "state" / "archive" / "archive.db"
    suite.stop("archive")
    # the write-ahead log folded into the file, so that the file alone is the whole archive
    with writable(suite) as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    good = path.with_suffix(".db.good")
    shutil.copyfile(path, good)
    try:
        raw = bytearray(path.read_bytes())
        assert len(raw) >= 3 * 4096, "the archive should hold more than two pages by now"
        raw[4096:8192] = b"\xa5" * 4096  # the second page: a b-tree page of the schema's tables
        path.write_bytes(bytes(raw))
        damaged = path.read_bytes()
        p = suite.start_service("archive")
        assert p.wait(30) != 0
        log = suite.log("archive")
        assert "damaged database" in log and "alarm=1" in log, log
        assert path.read_bytes() == damaged
    finally:
        shutil.copyfile(good, path)
        good.unlink()
        for extra in ("-wal", "-shm"):
            (path.parent / (path.name + extra)).unlink(missing_ok=True)
        suite.start_service("archive")
    assert wait_until(lambda: suite.alive("archive") and
                      suite.metric("archive", "suido_stage_received_total") >= 0, 10)
    rep = suite.sim("--ids", GW, "--max-batches", 2, "--rate", 20, "--wait-acks", 15)
    assert rep["gateways"][0]["acked_seq"] >= 2
