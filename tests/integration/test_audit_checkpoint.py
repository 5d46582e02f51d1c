"""The audit log's head anchored outside the archive: the archive hands its head to the
registry after it commits audit entries, the registry signs it with its profile key and keeps
it. Cutting the newest entries off the archive's log leaves a chain that checks good on its own
(`audit verify --db`, the chain alone, passes), but `audit verify` of the live archive compares it
with the registry's latest signed checkpoint and reports it as truncated. A backup's manifest
carries the checkpoint of its time, and `backup verify` checks the backed-up log against it.

Its own deployment: the test cuts the archive's log."""
import json
import shutil
import sqlite3
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from suite import running_suite, wait_until
from test_archive_rights import api_socket, ask
from test_backup import Backups, edit_manifest, manifest_of

CP_DOMAIN = b"suido-audit-checkpoint-v1\0"


@pytest.fixture(scope="module")
def cp_suite(tmp_path_factory):
    with running_suite(tmp_path_factory.mktemp("checkpoint"), gateways=2) as s:
        yield s


def registry_head(suite):
    path = suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
        try:
            row = c.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()
        except sqlite3.OperationalError:
            return 0
    return row[0] or 0


def archive_head(suite):
    return suite.query("SELECT max(seq) FROM audit")[0][0] or 0


def verify(suite, *extra):
    r = suite.ctl("--json", "audit", "verify", *extra, check=False)
    return r, json.loads(r.stdout) if r.stdout.strip() else None


def test_the_registry_signs_the_archives_audit_head(cp_suite, pb):
    assert wait_until(lambda: archive_head(cp_suite) >= 2, 10)
    # within a few seconds of a commit the registry holds the head
    assert wait_until(lambda: registry_head(cp_suite) == archive_head(cp_suite), 10)
    r, out = verify(cp_suite)
    assert r.returncode == 0, r.stderr
    assert out["ok"] and out["checkpoint"] == "verified"
    assert out["checkpoint_seq"] == registry_head(cp_suite)
    sock = api_socket(cp_suite, "monitor")
    try:
        chk = ask(pb, sock, "AUDIT_VERIFY", cp_suite.token).audit_check
    finally:
        sock.close()
    assert chk.intact and chk.checkpoint == "verified"


def test_backup_manifest_carries_the_checkpoint_and_verify_checks_it(cp_suite, tmp_path):
    bk = Backups(cp_suite, tmp_path)
    made = tmp_path / "b1"
    r = bk.ctl("--json", "backup", "create", made)
    assert r.returncode == 0, r.stderr
    m = manifest_of(made)["file archive.db"]
    seq = int(m["checkpoint_seq"])
    assert 0 < seq <= int(m["audit_head_seq"])
    r, out = bk.verify(made)
    assert r.returncode == 0 and out["ok"] and out["checkpoint_seq"] == seq, r.stderr

    # a checkpoint the registry did not sign, even in a manifest signed with the backup key
    forged = tmp_path / "forged"
    shutil.copytree(made, forged)
    edit_manifest(forged, "file archive.db", "checkpoint_seq", str(seq + 50))
    bk.resign(forged)
    r, out = bk.verify(forged)
    assert r.returncode == 1 and "not the registry's" in r.stderr

    # signed by the registry's key, but beyond what the backed-up log holds: the log was cut
    key = serialization.load_pem_private_key(
        (cp_suite.dir / "platform" / "profile.key").read_bytes(), None)
    ahead = tmp_path / "ahead"
    shutil.copytree(made, ahead)
    head, ts = bytes(range(32)), int(m["checkpoint_ms"])
    sig = key.sign(CP_DOMAIN + struct.pack(">Q", seq + 50) + head + struct.pack(">Q", ts),
                   ec.ECDSA(hashes.SHA256()))
    edit_manifest(ahead, "file archive.db", "checkpoint_seq", str(seq + 50))
    edit_manifest(ahead, "file archive.db", "checkpoint_hash", head.hex())
    edit_manifest(ahead, "file archive.db", "checkpoint_sig", sig.hex())
    bk.resign(ahead)
    r, out = bk.verify(ahead)
    assert r.returncode == 1 and "TRUNCATED" in r.stderr, r.stderr
    assert "manifest's checkpoint" in r.stderr


def test_entries_cut_off_the_end_of_the_log_are_reported_as_truncated(cp_suite, pb, tmp_path):
    suite = cp_suite
    r, out = verify(suite)
    assert r.returncode == 0 and out["checkpoint"] == "verified", r.stderr
    # stopped, the archive hands over the head it leaves
    suite.stop("archive")
    head = archive_head(suite)
    assert head >= 3 and registry_head(suite) == head
    db = suite.dir / "state" / "archive" / "archive.db"
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM audit WHERE seq > ?", (head - 2,))
    # the chain alone still checks good: this is all `audit verify` saw before
    r, out = verify(suite, "--db", db)
    assert r.returncode == 0 and out["ok"] and out["first_bad"] == 0, r.stderr
    # against the registry's signed head the cut shows
    r, out = verify(suite)
    assert r.returncode == 1, r.stdout
    assert "TRUNCATED" in r.stderr and f"signed entry {head}" in r.stderr
    assert out["checkpoint"] == "truncated" and not out["ok"] and out["first_bad"] == 0
    # a backup of a cut log is refused
    bk = Backups(suite, tmp_path)
    r = bk.ctl("backup", "create", tmp_path / "b2")
    assert r.returncode == 1 and "does not reach the registry's signed checkpoint" in r.stderr
    # started again, and its log grown past the cut: the registry signs no head of a log that
    # no longer holds the one it signed, and audits the refusal
    suite.start_service("archive")
    for i in range(4):
        suite.login("admin", "not the password", "000000", source=f"cut-{i}", check=False)
    assert wait_until(lambda: archive_head(suite) > head + 1, 10)
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='audit_checkpoint_refused'")[0][0] >= 1, 20), \
        suite.log("registry")
    assert registry_head(suite) == head
    r, out = verify(suite)
    assert r.returncode == 1 and "TRUNCATED" in r.stderr and out["checkpoint"] == "truncated"
    # the monitor's chain check (the archive's API) says the same
    sock = api_socket(suite, "monitor")
    try:
        chk = ask(pb, sock, "AUDIT_VERIFY", suite.token).audit_check
    finally:
        sock.close()
    assert chk.checkpoint == "truncated" and not chk.intact and chk.checkpoint_seq == head
    assert "registry signed" in chk.problem
