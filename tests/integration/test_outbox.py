"""The gateway outbox end to end: every batch a simulated gateway takes is kept on disk until
the archive's end-to-end ack covers it, survives the simulator's end (orderly or kill -9), a
cut connection or an unreachable broker, and reaches the archive exactly once (as backfill of a
later run where needed); a full outbox raises its alarm and takes no more batches (no sequence
number used, nothing dropped) instead of losing any.

The oracle is the fault plan's: for the gateway, the (boot epoch, seq) the report's sent_ranges
lists must be exactly the data/backfill rows the archive holds for those epochs: 0 gaps, 0
duplicates ((gateway, boot_epoch, seq) is the batches table's primary key, so a duplicate would
show as a missing row of the other copy, never as a second row).

gw-0009 (a pumping station): no later test module uses it, test_lifecycle only pushes a few
batches of tiny boot epochs for it, and test_commands only relies on it sending nothing while
that module runs. Every test here shares one state directory, so its boot epochs strictly
increase across the runs."""
import contextlib
import json
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest

from suite import BIN, free_base_port, wait_until

GW = "gw-0009"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("outbox-state")


def read_outbox(path):
    """Parses DIR/<gw>.outbox independently of the C code (README "Outbox"): returns the
    header's gateway id, the unacked batches [(epoch, seq)], every (epoch, seq) ever stored, and
    whether the file ended on a record boundary (no torn tail)."""
    data = path.read_bytes()
    off, gw, live, taken = 0, None, [], set()
    while off + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, off)
        body = data[off + 8:off + 8 + n]
        if n < 1 or len(body) < n or zlib.crc32(body) != crc:
            break
        kind = body[:1]
        if kind == b"H":
            gw = body[7:].decode()
        elif kind == b"B":
            epoch, seq, _ts, dlen, blen = struct.unpack_from("<QQQII", body, 1)
            assert 33 + dlen + blen == n
            live.append((epoch, seq))
            taken.add((epoch, seq))
        elif kind == b"A":
            epoch, seq = struct.unpack_from("<QQ", body, 1)
            live = [b for b in live if not (b[0] == epoch and b[1] <= seq)]
        elif kind == b"R":
            (count,) = struct.unpack_from("<I", body, 1)
            for i in range(count):
                epoch, first, last = struct.unpack_from("<QQQ", body, 5 + 24 * i)
                taken.update((epoch, s) for s in range(first, last + 1))
        off += 8 + n
    return gw, live, taken, off == len(data)


def expand(ranges, epochs=None):
    return {(r["boot_epoch"], s) for r in ranges for s in range(r["first_seq"], r["last_seq"] + 1)
            if epochs is None or r["boot_epoch"] in epochs}


def archived(suite, epochs):
    """(epoch, seq) of the gateway's data and backfill rows in these epochs."""
    rows = []
    for e in epochs:
        rows += suite.query("SELECT boot_epoch, seq FROM batches WHERE gateway=? AND boot_epoch=? "
                            "AND kind IN ('data', 'backfill')", GW, e)
    return rows


def check_oracle(suite, ranges, epochs):
    """The archive holds exactly what the report says was taken in these epochs."""
    want = expand(ranges, epochs)
    got = archived(suite, epochs)
    assert len(got) == len(set(got)), "duplicate rows"
    missing, extra = want - set(got), set(got) - want
    assert not missing and not extra, f"missing {sorted(missing)[:10]} extra {sorted(extra)[:10]}"
    return want


def connected_lines(suite, name):
    """How often the service's MQTT client has logged a successful connection so far."""
    try:
        text = (suite.logs / f"{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines()
               if f"client={name} " in line and "event=connected" in line)


def restart_archive(suite, before):
    """Starts the archive again and waits until it holds its MQTT session (to publish acks)."""
    if not suite.alive("archive"):
        suite.start_service("archive")
    assert wait_until(lambda: connected_lines(suite, "archive") > before, 20), \
        suite.log("archive")


def test_batches_stay_until_acked_and_are_backfilled_by_the_next_run(suite, state):
    before = connected_lines(suite, "archive")
    suite.stop("archive")
    try:
        rep1 = suite.sim("--ids", GW, "--max-batches", 8, "--rate", 20, "--state-dir", state)
        g1 = rep1["gateways"][0]
        e1 = g1["boot_epoch"]
        assert g1["legit_sent"] == 8 and g1["first_seq"] == 1 and g1["last_seq"] == 8
        # nothing acked with the archive down: every batch is still in the outbox
        assert g1["acked_seq"] == 0
        assert g1["outbox"]["stored"] == 8 and g1["outbox"]["records"] == 8
        assert g1["outbox"]["acked_removed"] == 0 and g1["outbox"]["unpublished"] == 0
        assert g1["sent_ranges"] == [{"boot_epoch": e1, "first_seq": 1, "last_seq": 8}]
        gw, live, taken, clean = read_outbox(state / f"{GW}.outbox")
        assert gw == GW and clean
        assert live == [(e1, s) for s in range(1, 9)]
        assert {t for t in taken if t[0] == e1} == set(live)
        assert archived(suite, [e1]) == []
    finally:
        restart_archive(suite, before)

    rep2 = suite.sim("--ids", GW, "--max-batches", 5, "--rate", 20, "--state-dir", state,
                     "--wait-acks", 40)
    g2 = rep2["gateways"][0]
    e2 = g2["boot_epoch"]
    assert e2 > e1
    assert g2["outbox"]["loaded"] == 8
    # every batch of both runs is acked and gone from the outbox
    assert g2["outbox"]["records"] == 0, g2
    assert g2["outbox"]["acked_removed"] == 8 + 5
    assert g2["acked_seq"] == 5 and g2["outbox"]["epochs_given_up"] == 0
    gw, live, taken, clean = read_outbox(state / f"{GW}.outbox")
    assert live == [] and clean
    # sent_ranges survives in the state directory: the first run's epoch too
    assert [r for r in g2["sent_ranges"] if r["boot_epoch"] in (e1, e2)] == [
        {"boot_epoch": e1, "first_seq": 1, "last_seq": 8},
        {"boot_epoch": e2, "first_seq": 1, "last_seq": 5}]
    assert expand(g2["sent_ranges"], {e1, e2}) == {t for t in taken if t[0] in (e1, e2)}
    want = check_oracle(suite, g2["sent_ranges"], {e1, e2})
    assert len(want) == 13
    # the first run's batches reached the archive either from the queues it had left them in
    # (delivered when the archive came back) or as backfill of this run; either way once
    n_backfill = suite.query("SELECT count(*) FROM batches WHERE gateway=? AND boot_epoch=? "
                             "AND kind='backfill'", GW, e1)[0][0]
    assert n_backfill <= g2["outbox"]["resent"]


def test_batches_taken_while_the_broker_is_unreachable_are_backfilled(suite, state):
    """The gateway keeps sampling into its outbox while it cannot reach the broker (nothing is
    ever published in that run); the next run backfills all of it, oldest epoch first, before
    its own live data. Encrypted: the first run's session key was never announced by a birth
    and is gone with that process; the wrapped key in each stored header is all the verifier
    needs."""
    nowhere = f"ssl://localhost:{free_base_port(1)}"
    report = state / "cut.json"
    r = subprocess.run([str(BIN / "suido-gateway-sim"), "--broker", nowhere, "--deploy",
                        str(suite.dir), "--ids", GW, "--rate", "20", "--max-batches", "10",
                        "--duration", "2", "--encrypt", "--state-dir", str(state), "--report",
                        str(report), "--quiet"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    g1 = json.loads(report.read_text())["gateways"][0]
    e1 = g1["boot_epoch"]
    assert g1["connections"] == 0 and g1["legit_sent"] == 0 and g1["births_sent"] == 0
    assert g1["outbox"]["stored"] == 10 and g1["outbox"]["unpublished"] == 10
    assert {"boot_epoch": e1, "first_seq": 1, "last_seq": 10} in g1["sent_ranges"]

    rep2 = suite.sim("--ids", GW, "--max-batches", 3, "--rate", 20, "--state-dir", state,
                     "--encrypt", "--wait-acks", 40)
    g2 = rep2["gateways"][0]
    e2 = g2["boot_epoch"]
    assert g2["outbox"]["records"] == 0, g2
    assert g2["outbox"]["resent"] >= 10  # never published before: all of it as backfill
    check_oracle(suite, g2["sent_ranges"], {e1, e2})
    kinds = suite.query("SELECT kind, encrypted, count(*) FROM batches WHERE gateway=? AND "
                        "boot_epoch=? GROUP BY kind, encrypted", GW, e1)
    assert kinds == [("backfill", 1, 10)]


def test_full_outbox_raises_the_alarm_and_takes_no_more_batches(suite, state):
    """1 MiB, big batches, no broker: the outbox fills; the alarm is raised once, later batches
    are not taken (no sequence number used), and what was taken is delivered by the next run."""
    nowhere = f"ssl://localhost:{free_base_port(1)}"
    report = state / "full.json"
    r = subprocess.run([str(BIN / "suido-gateway-sim"), "--broker", nowhere, "--deploy",
                        str(suite.dir), "--ids", GW, "--rate", "100", "--batch", "256",
                        "--duration", "3", "--outbox-max-mb", "1", "--state-dir", str(state),
                        "--report", str(report)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "event=outbox_full alarm=1" in r.stderr
    g1 = json.loads(report.read_text())["gateways"][0]
    e1 = g1["boot_epoch"]
    ob = g1["outbox"]
    assert g1["outbox_full"] is True and ob["full_events"] == 1
    assert g1["batches_not_taken"] > 0
    assert ob["bytes"] <= 1 << 20 and ob["records"] == ob["stored"] > 10
    # the numbers taken are contiguous: a batch not taken used none
    mine = [x for x in g1["sent_ranges"] if x["boot_epoch"] == e1]
    assert mine == [{"boot_epoch": e1, "first_seq": 1, "last_seq": ob["stored"]}]

    rep2 = suite.sim("--ids", GW, "--max-batches", 2, "--rate", 20, "--state-dir", state,
                     "--outbox-max-mb", "1", "--wait-acks", 60, timeout=90)
    g2 = rep2["gateways"][0]
    assert g2["outbox"]["records"] == 0 and g2["outbox_full"] is False, g2
    check_oracle(suite, g2["sent_ranges"], {e1, g2["boot_epoch"]})


def test_kill_9_in_the_middle_of_a_run_loses_no_batch_taken(suite, state):
    epoch_file = state / f"{GW}.epoch"
    old_epoch = int(epoch_file.read_text()) if epoch_file.exists() else 0
    log = open(state / "killed.log", "w")
    p = subprocess.Popen([str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{suite.port}",
                          "--deploy", str(suite.dir), "--ids", GW, "--rate", "50",
                          "--state-dir", str(state), "--quiet"], stdout=subprocess.DEVNULL,
                         stderr=log)
    try:
        assert wait_until(lambda: epoch_file.exists() and int(epoch_file.read_text()) > old_epoch,
                          15)
        e1 = int(epoch_file.read_text())
        assert wait_until(lambda: len(archived(suite, [e1])) >= 20, 30), \
            (state / "killed.log").read_text()[-2000:]
        time.sleep(0.37)  # somewhere in the middle of taking, storing, publishing, acking
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        log.close()
    assert p.returncode == -signal.SIGKILL
    _, live, taken, _ = read_outbox(state / f"{GW}.outbox")
    taken1 = sorted(s for (e, s) in taken if e == e1)
    assert taken1 == list(range(1, len(taken1) + 1)) and len(taken1) >= 20

    rep = suite.sim("--ids", GW, "--max-batches", 3, "--rate", 20, "--state-dir", state,
                    "--wait-acks", 40)
    g = rep["gateways"][0]
    e2 = g["boot_epoch"]
    assert e2 > e1
    assert g["outbox"]["loaded"] == len(live)
    assert g["outbox"]["records"] == 0, g
    # the report's ranges (from the state directory) are what the killed run had taken ...
    assert sorted(s for (e, s) in expand(g["sent_ranges"], {e1})) == taken1
    # ... and the archive holds exactly those, once
    check_oracle(suite, g["sent_ranges"], {e1, e2})


@contextlib.contextmanager
def timed_run(suite, state, name, port, rate, duration, *extra):
    """The gateway simulator for GW on the shared state directory for `duration` s (then up to
    40 s waiting for acks), in the background; yields (process, its new boot epoch, log path),
    the report being state/<name>.json once it has ended. The block must wait for the end."""
    epoch_file = state / f"{GW}.epoch"
    old_epoch = int(epoch_file.read_text()) if epoch_file.exists() else 0
    log_path = state / f"{name}.log"
    log = open(log_path, "w")
    p = subprocess.Popen([str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{port}",
                          "--deploy", str(suite.dir), "--ids", GW, "--rate", str(rate),
                          "--duration", str(duration), "--wait-acks", "40", "--state-dir",
                          str(state), "--report", str(state / f"{name}.json"), *extra],
                         stdout=subprocess.DEVNULL, stderr=log)
    try:
        assert wait_until(lambda: epoch_file.exists() and int(epoch_file.read_text()) > old_epoch,
                          15)
        yield p, int(epoch_file.read_text()), log_path
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()


def test_a_reconnect_republishes_what_was_published_but_not_acked(suite, state):
    """The gateway's session is cut in the middle of a run (its identity suspended for a moment:
    the verifier refuses what it sends meanwhile, the broker kicks it): after it reconnects,
    what had left but was never acked is republished, what was taken meanwhile goes out, and
    the archive ends up with every batch of the run, once."""
    with timed_run(suite, state, "reconnect", suite.port, 20, 20, "--quiet") as (p, e1, _):
        assert wait_until(lambda: len(archived(suite, [e1])) >= 10, 30)
        suite.ctl("gateway", "suspend", GW, "--reason", "outbox test: cut the session")
        try:
            time.sleep(3)
        finally:
            suite.ctl("gateway", "activate", GW)
        assert p.wait(90) == 0
    report = state / "reconnect.json"
    g = json.loads(report.read_text())["gateways"][0]
    assert g["boot_epoch"] == e1 and g["connections"] >= 2
    assert g["outbox"]["records"] == 0, (state / "reconnect.log").read_text()[-3000:]
    assert g["outbox"]["resent"] >= 1
    # refused while suspended, stored after the reconnect
    refused = {s for (s,) in suite.query("SELECT seq FROM rejects WHERE gateway=? AND "
                                         "boot_epoch=? AND reason='gateway_not_active'", GW, e1)}
    want = check_oracle(suite, g["sent_ranges"], {e1})
    assert {(e1, s) for s in refused} <= want
    assert want == expand([{"boot_epoch": e1, "first_seq": g["first_seq"],
                            "last_seq": g["last_seq"]}])


def test_an_older_epoch_with_a_gap_does_not_hold_live_data_back(suite, tmp_path):
    """Numbers that never reach the archive (here: tampered batches, refused by the verifier)
    leave gaps the archive's contiguous ack cannot pass. The next run backfills the older
    epoch; its acks show the gap, so live data does not wait out the hold for it."""
    before = connected_lines(suite, "archive")
    suite.stop("archive")
    try:
        rep1 = suite.sim("--ids", GW, "--max-batches", 9, "--rate", 20, "--state-dir", tmp_path,
                         "--attack", "tampered", "--attack-every", 3)
    finally:
        restart_archive(suite, before)
    g1 = rep1["gateways"][0]
    e1 = g1["boot_epoch"]
    assert g1["attacked_seqs"] == [3, 6, 9] and g1["outbox"]["stored"] == 6
    assert expand(g1["sent_ranges"]) == {(e1, s) for s in (1, 2, 4, 5, 7, 8)}
    rep2 = suite.sim("--ids", GW, "--max-batches", 4, "--rate", 20, "--state-dir", tmp_path,
                     "--wait-acks", 20)
    g2 = rep2["gateways"][0]
    # live data did not wait out the 30 s hold, and every legitimate batch of both runs is
    # stored once (the older epoch's backfilled at least once in this run)
    assert rep2["total_s"] < 15 and g2["acked_seq"] == 4
    check_oracle(suite, g2["sent_ranges"], {e1, g2["boot_epoch"]})
    # what the archive cannot ack (above its gap) stays stored for a later run, said so
    _, live, _, _ = read_outbox(tmp_path / f"{GW}.outbox")
    assert len(live) == g2["outbox"]["records"]
    assert all(e == e1 and s > 2 for (e, s) in live)
    if live:
        assert g2["outbox"]["epochs_given_up"] == 1
        assert g2["outbox"]["resent"] >= len(live)


def test_a_command_result_lost_with_the_connection_is_sent_again(suite, state):
    """A command result is live-only and not in the outbox, but it takes a number of the epoch:
    lost, it would hold the epoch's ack below it for the rest of the run. The gateway keeps it
    until acked and sends it again after a reconnect, before any new live data. Here the link
    starts failing (the relay holds the gateway's direction) just as a command arrives, so the
    result goes into the dead link; the link then drops and the gateway reconnects."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "faults"))
    import proxy

    relay = proxy.RelayProcess(free_base_port(1), suite.port, state / "relay.status",
                               state / "relay.log")
    try:
        with timed_run(suite, state, "cmdres", relay.port, 5, 25) as (p, e1, log_path):
            assert wait_until(lambda: len(archived(suite, [e1])) >= 5, 30), log_path.read_text()
            relay.hold()
            r = suite.ctl("--json", "command", GW, "pump1", "1", "--unit", "1", "--reason",
                          "outbox test: a result into a failing link", check=False)
            assert r.returncode == 0, r.stderr
            assert wait_until(lambda: "event=command_applied" in log_path.read_text(), 15)
            time.sleep(0.5)  # the result is in the held link
            assert suite.query("SELECT count(*) FROM batches WHERE gateway=? AND boot_epoch=? "
                               "AND kind='cmdres'", GW, e1)[0][0] == 0
            relay.drop()
            assert p.wait(90) == 0
    finally:
        relay.stop()
    report = state / "cmdres.json"
    said = log_path.read_text()
    g = json.loads(report.read_text())["gateways"][0]
    assert g["boot_epoch"] == e1 and g["connections"] >= 2
    assert "event=command_result_resent" in said and g["commands"]["results_resent"] >= 1
    # stored, acked past, nothing left in the outbox and no gap alarm (the broker also delivers
    # the command again, its PUBACK having gone into the dead link too: refused as replayed,
    # with a result of its own)
    applied = int(re.search(r"seq=(\d+) event=command_applied", said).group(1))
    assert suite.query("SELECT count(*) FROM batches WHERE gateway=? AND boot_epoch=? AND "
                       "kind='cmdres' AND seq=?", GW, e1, applied)[0][0] == 1
    assert g["acked_seq"] == g["last_seq"] and g["outbox"]["records"] == 0, said[-3000:]
    assert "event=ack_gap" not in said
    check_oracle(suite, g["sent_ranges"], {e1})
