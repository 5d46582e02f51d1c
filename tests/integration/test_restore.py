"""A restore from an older backup loses what was acknowledged after it: the archive must say so.

Gateways drop a batch from their outboxes once an end-to-end ack covers it, so the batches an
archive acknowledged after a backup exist nowhere once that backup is restored. The registry
keeps every published ack point apart from the archive (`backup restore` carries the live
registry's points over into the restored one); at start the archive compares them with what it
holds and records each run acknowledged and not held: an alarm in its log, an audit entry,
a counter, and `suidoctl archive gaps` lists it (exit 4: nothing missing that could still come,
something lost). The acks count a recorded run as held, and nothing is recorded twice."""
import contextlib
import json
import sqlite3
import time

import pytest

from suite import Suite, running_suite, wait_until
from test_backup import Backups

GWS = ["gw-0001", "gw-0002"]


def sim_run(s, batches):
    rep = s.sim("--ids", ",".join(GWS), "--max-batches", batches, "--rate", 20, "--wait-acks", 30,
                timeout=120)
    by_id = {g["id"]: g for g in rep["gateways"]}
    for gw in GWS:
        assert by_id[gw]["legit_sent"] == batches and by_id[gw]["acked_seq"] >= batches, by_id[gw]
    return by_id


def registry_points(s):
    path = s.dir / "state" / "registry" / "registry.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as c:
        return {(g, e): q for g, e, q in
                c.execute("SELECT gateway, boot_epoch, seq FROM acked_points")}


def gaps(s, *args):
    r = s.ctl("--json", "archive", "gaps", *args, check=False)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    s = Suite(root, gateways=4)
    bk = Backups(s, root)
    with running_suite(root, suite=s):
        first = sim_run(s, 30)
        backup = root / "b1"
        r = bk.ctl("backup", "create", backup)
        assert r.returncode == 0, r.stderr
        time.sleep(1.1)  # the next run's boot epochs (seconds) differ from the first's
        second = sim_run(s, 50)
        # the archive hands its published ack points to the registry within seconds
        want = {(gw, second[gw]["boot_epoch"]): second[gw]["acked_seq"] for gw in GWS}
        assert wait_until(lambda: all(registry_points(s).get(k, 0) >= v for k, v in want.items()),
                          15), (registry_points(s), want, s.log("archive"))
        assert gaps(s)[0] == 0
    r = bk.ctl("backup", "restore", backup, "--to", s.dir / "state", "--force", token="")
    assert r.returncode == 0, r.stderr
    assert "acknowledgements carried over from the live registry" in r.stdout, r.stdout
    # the audit entries written after the backup are cut off with it, and restore says how many
    assert "are lost with this restore" in r.stdout, r.stdout
    s.start()  # the admin's session is in the restored registry (the backup was taken in it)
    try:
        yield {"suite": s, "first": first, "second": second, "restore_out": r.stdout}
    finally:
        codes = s.stop()
        assert not {n: c for n, c in codes.items() if c != 0}, codes


def test_restore_reports_what_was_acknowledged_and_is_no_longer_held(restored):
    s, second = restored["suite"], restored["second"]
    # recorded at start, before anything else
    assert wait_until(lambda: s.metric("archive", "suido_archive_acked_lost_batches_total") ==
                      sum(second[gw]["acked_seq"] for gw in GWS), 20), s.log("archive")
    log = s.log("archive")
    for gw in GWS:
        assert f"gateway={gw} boot_epoch={second[gw]['boot_epoch']} first_seq=1 " \
               f"last_seq={second[gw]['acked_seq']}" in log, log
    assert log.count("acknowledged to the gateway and not held") == len(GWS)
    assert "alarm=1" in log
    # audited, one entry per run, in the archive's own name
    rows = s.query("SELECT subject, actor, detail FROM audit WHERE event = ?",
                   "acknowledged_data_lost")
    assert sorted(r[0] for r in rows) == GWS and all(r[1] == "archive" for r in rows), rows
    # archive gaps: the runs listed as lost, nothing missing, exit 4
    rc, out = gaps(s)
    assert rc == 4, out
    assert out["missing"] == 0 and out["lost"] == sum(second[gw]["acked_seq"] for gw in GWS)
    lost = {(x["gateway"], x["boot_epoch"]): (x["first"], x["last"]) for x in out["lost_ranges"]}
    assert lost == {(gw, second[gw]["boot_epoch"]): (1, second[gw]["acked_seq"]) for gw in GWS}
    # what the backup held is still there, and what is held is not called lost
    first = restored["first"]
    for gw in GWS:
        held = s.query("SELECT count(*) FROM batches WHERE gateway=? AND boot_epoch=?", gw,
                       first[gw]["boot_epoch"])[0][0]
        assert held == first[gw]["legit_sent"]
    text = s.ctl("archive", "gaps", check=False).stdout
    assert "then not held (lost" in text and "lost=" in text, text


def test_new_data_after_a_restore_is_acknowledged_and_nothing_is_recorded_twice(restored):
    s = restored["suite"]
    third = sim_run(s, 20)  # acked in full: the pipeline runs on after the report
    before = s.query("SELECT count(*) FROM acked_lost")[0][0]
    # the archive restarted compares again: nothing new is lost, nothing recorded again
    s.stop("archive")
    s.start_service("archive")
    assert wait_until(lambda: "event=acked_points_compared" in s.log("archive").split(
        "event=stopping")[-1], 20), s.log("archive")
    tail = s.log("archive").split("event=stopping")[-1]
    assert "lost_runs=0" in tail, tail
    assert s.query("SELECT count(*) FROM acked_lost")[0][0] == before
    rc, out = gaps(s)
    assert rc == 4 and out["missing"] == 0, out
    for gw in GWS:
        assert (gw, third[gw]["boot_epoch"]) not in {(x["gateway"], x["boot_epoch"])
                                                    for x in out["lost_ranges"]}
