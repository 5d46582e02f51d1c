"""Verifiable online backups: `suidoctl backup create|verify|restore`.

A backup is taken from the running suite while simulated gateways keep sending; it must verify
(manifest signature, deployment, file hashes, integrity, audit chain, and every batch signature
against the backed-up registry, a disposed gateway's batches counted apart), restore into a new
state directory exactly, and every kind of damage or forgery must be refused by verify and by
restore with a reason naming the file, restore writing nothing.

The gateways used here for background data (gw-0003, gw-0006, gw-0010) are ones that later tests
only drive with the simulator (time-based boot epochs), so this data cannot look like a replay
to them; gw-0200 is provisioned here and disposed."""
import base64
import hashlib
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from suite import BIN, wait_until
from test_lifecycle import push_as_ingest

DOMAIN = b"suido-backup-v1\0"
DISPOSED_GW = "gw-0200"
DISPOSED_BATCHES = 3


# ---- helpers ---------------------------------------------------------------------------------

class Backups:
    """suidoctl with a configuration that has the [backup] section (added here for as long as
    scripts/mkdeploy.sh does not write it)."""

    def __init__(self, suite, root):
        self.suite = suite
        self.root = root
        d = suite.dir
        text = (d / "etc" / "suidoctl.conf").read_text()
        if "[backup]" not in text:
            text += (f"\n[backup]\nregistry_database = {d}/state/registry/registry.db\n"
                     f"signing_key = {d}/platform/backup.key\n"
                     f"verify_key = {d}/platform/backup.pub\n"
                     f"ca = {d}/ca/ca.crt\n")
        self.conf = root / "suidoctl.conf"
        self.conf.write_text(text)
        self.key = serialization.load_pem_private_key(
            (d / "platform" / "backup.key").read_bytes(), None)

    def ctl(self, *args, conf=None, token=None):
        """As the suite's admin unless another token is given ("": none)."""
        env = dict(os.environ)
        env.pop("SUIDO_TOKEN", None)
        tok = self.suite.token if token is None else token
        if tok:
            env["SUIDO_TOKEN"] = tok
        return subprocess.run([str(BIN / "suidoctl"), "-c", str(conf or self.conf),
                               *map(str, args)], capture_output=True, text=True, timeout=120,
                              env=env)

    def verify(self, path):
        r = self.ctl("--json", "backup", "verify", path)
        return r, (json.loads(r.stdout) if r.stdout.strip() else None)

    def resign(self, path, key=None):
        """Signs path/manifest again, as a holder of the key would."""
        text = (path / "manifest").read_bytes()
        sig = (key or self.key).sign(DOMAIN + text, ec.ECDSA(hashes.SHA256()))
        (path / "manifest.sig").write_bytes(sig)


def manifest_of(path):
    """The manifest as {section: {key: value}}."""
    out, sec = {}, None
    for line in (path / "manifest").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            sec = line[1:-1]
            out[sec] = {}
        else:
            k, _, v = line.partition("=")
            out[sec][k.strip()] = v.strip()
    return out


def edit_manifest(path, section, key, value):
    lines, sec = [], None
    for line in (path / "manifest").read_text().splitlines():
        s = line.strip()
        if s.startswith("["):
            sec = s[1:-1]
        elif sec == section and s.partition("=")[0].strip() == key:
            line = f"{key} = {value}"
        lines.append(line)
    (path / "manifest").write_text("\n".join(lines) + "\n")


def sha256_file(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def deployment_id(suite):
    pem = (suite.dir / "ca" / "ca.crt").read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def archive_count(suite):
    return suite.query("SELECT count(*) FROM batches")[0][0]


def start_sim(suite, *args):
    report = suite.root / f"report-backup-{time.monotonic_ns()}.json"
    argv = [str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{suite.port}",
            "--deploy", str(suite.dir), "--report", str(report), "--quiet", *map(str, args)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), \
        report


def audit_head(db_path):
    c = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1].hex()) if row else (0, "00" * 32)
    finally:
        c.close()


# ---- the backup taken while data flows -------------------------------------------------------

@pytest.fixture(scope="module")
def bk(suite, tmp_path_factory):
    return Backups(suite, tmp_path_factory.mktemp("backup"))


@pytest.fixture(scope="module")
def made(suite, bk, pb, tmp_path_factory):
    """A gateway with stored batches is disposed; then a backup is taken while three simulated
    gateways (one of them encrypting) are sending."""
    tmp = tmp_path_factory.mktemp("made")
    suite.ctl("gateway", "provision", DISPOSED_GW, "--site", "old-res", "--kind", "reservoir",
              "--out", tmp / "bundle")
    suite.ctl("gateway", "activate", DISPOSED_GW)
    for seq in range(1, DISPOSED_BATCHES + 1):
        push_as_ingest(suite, pb, DISPOSED_GW, 8401, seq)
    assert wait_until(lambda: suite.query("SELECT count(*) FROM batches WHERE gateway=?",
                                          DISPOSED_GW)[0][0] == DISPOSED_BATCHES, 15), \
        suite.log("verify")[-2000:]
    suite.ctl("gateway", "revoke", DISPOSED_GW, "--reason", "decommissioned")
    suite.ctl("gateway", "dispose", DISPOSED_GW)

    start = archive_count(suite)
    sims = [start_sim(suite, "--ids", "gw-0003,gw-0010", "--max-batches", 80, "--rate", 10,
                      "--wait-acks", 30),
            start_sim(suite, "--ids", "gw-0006", "--max-batches", 80, "--rate", 10, "--encrypt",
                      "--wait-acks", 30)]
    try:
        assert wait_until(lambda: archive_count(suite) >= start + 15, 30), "no data is flowing"
        before = archive_count(suite)
        out = tmp / "b1"
        created = bk.ctl("--json", "backup", "create", out)
        after = archive_count(suite)
        flowing = all(p.poll() is None for p, _ in sims)
    finally:
        for p, _ in sims:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for p, report in sims:
        assert p.returncode == 0, p.stderr.read()[-2000:]
        for g in json.loads(report.read_text())["gateways"]:
            assert g["legit_sent"] == 80 and g["acked_seq"] >= 80, g
    return {"dir": out, "created": created, "before": before, "after": after,
            "flowing": flowing, "final": archive_count(suite)}


def test_backup_taken_while_data_flows_verifies_with_the_right_counts(suite, bk, made):
    r = made["created"]
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    b = made["dir"]
    # online: the gateways kept sending during the snapshot, and afterwards
    assert made["flowing"]
    m = manifest_of(b)
    batches = int(m["file archive.db"]["batches"])
    assert made["before"] <= batches <= made["after"] < made["final"]
    assert created["ok"] and created["batches"] == batches

    # the manifest tells the truth about the files beside it
    assert m["backup"]["format"] == "1"
    assert m["backup"]["deployment"] == deployment_id(suite)
    assert abs(int(m["backup"]["created_ms"]) - time.time() * 1000) < 600_000
    for name in ("archive.db", "registry.db"):
        assert int(m[f"file {name}"]["size"]) == (b / name).stat().st_size
        assert m[f"file {name}"]["sha256"] == sha256_file(b / name)
    copy = sqlite3.connect(f"file:{b / 'archive.db'}?mode=ro&immutable=1", uri=True)
    n, readings = copy.execute("SELECT count(*), sum(readings) FROM batches").fetchone()
    copy.close()
    assert (n, readings) == (batches, int(m["file archive.db"]["readings"]))
    # the operators' TOTP seeds are in it only sealed: the admin's seed is nowhere in the file
    admin_seed = base64.b32decode(suite.admin_secret + "=" * (-len(suite.admin_secret) % 8))
    assert admin_seed not in (b / "registry.db").read_bytes()
    seq, head = audit_head(b / "archive.db")
    assert (seq, head) == (int(m["file archive.db"]["audit_head_seq"]),
                           m["file archive.db"]["audit_head_hash"])
    # the signature is plain ECDSA P-256 / SHA-256 over the domain and the manifest's bytes
    bk.key.public_key().verify((b / "manifest.sig").read_bytes(),
                               DOMAIN + (b / "manifest").read_bytes(), ec.ECDSA(hashes.SHA256()))
    # self-contained files, readable by their owner only, no WAL or journal left beside them
    assert sorted(p.name for p in b.iterdir()) == ["archive.db", "manifest", "manifest.sig",
                                                   "registry.db"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in b.iterdir())
    assert b.stat().st_mode & 0o077 == 0

    r, v = bk.verify(b)
    assert r.returncode == 0, r.stderr
    assert v["ok"] and v["signature_ok"] and v["problems"] == []
    assert v["batches"] == batches and v["readings"] == readings
    assert v["audit_entries"] == seq and v["audit_head"] == head
    assert all(f["hash_ok"] and f["integrity_ok"] for f in v["files"])
    s = v["signatures"]
    # the disposed gateway's batches cannot be checked any more: counted apart, not failures
    assert s["unverifiable_disposed"] == DISPOSED_BATCHES
    assert s["disposed_gateways"] == [DISPOSED_GW]
    assert s["failed"] == 0 and s["verified"] == batches - DISPOSED_BATCHES
    # the encrypted gateway's batches are among those verified
    assert suite.query("SELECT count(*) FROM batches WHERE gateway='gw-0006' AND encrypted=1")[0][0]

    text = bk.ctl("backup", "verify", b)
    assert text.returncode == 0, text.stderr
    assert "backup " + str(b) + ": OK" in text.stdout
    assert f"{DISPOSED_BATCHES} unverifiable (gateway disposed: {DISPOSED_GW})" in text.stdout

    # a backup never goes into an existing directory, and the one there is left alone
    kept = {p.name: sha256_file(p) for p in b.iterdir()}
    again = bk.ctl("backup", "create", b)
    assert again.returncode == 1 and "exists" in again.stderr
    assert {p.name: sha256_file(p) for p in b.iterdir()} == kept


def test_create_needs_its_configuration_and_a_new_directory(suite, bk, tmp_path):
    bare = tmp_path / "bare.conf"
    kept, inside = [], False
    for line in bk.conf.read_text().splitlines():
        if line.strip().startswith("["):
            inside = line.strip() == "[backup]"
        if not inside:
            kept.append(line)
    bare.write_text("\n".join(kept) + "\n")
    r = bk.ctl("backup", "create", tmp_path / "x", conf=bare)
    assert r.returncode == 2 and "[backup]" in r.stderr
    assert not (tmp_path / "x").exists()
    r = bk.ctl("backup", "verify", tmp_path / "x", conf=bare)
    assert r.returncode == 2 and "[backup]" in r.stderr
    (tmp_path / "y").mkdir()
    r = bk.ctl("backup", "create", tmp_path / "y")
    assert r.returncode == 1 and "exists" in r.stderr
    assert list((tmp_path / "y").iterdir()) == []
    r = bk.ctl("backup", "restore", tmp_path / "y")      # no --to
    assert r.returncode == 2


# ---- damaged, truncated, edited, foreign: refused by verify and by restore --------------------

def flip_byte(b, bk):
    p = b / "archive.db"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(b, bk):
    p = b / "archive.db"
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 4096)


def edit_unsigned(b, bk):
    m = manifest_of(b)
    edit_manifest(b, "file archive.db", "batches", int(m["file archive.db"]["batches"]) + 1)


def signed_by_another_key(b, bk):
    bk.resign(b, ec.generate_private_key(ec.SECP256R1()))


def other_deployment(b, bk):
    # another deployment's CA, signed with the right backup key: the deployment check catches it
    pem = (bk.suite.dir / "test" / "wrongca" / "ca.crt").read_text()
    edit_manifest(b, "backup", "deployment",
                  hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())
    bk.resign(b)


def wrong_version(b, bk):
    edit_manifest(b, "backup", "format", 2)
    bk.resign(b)


def signature_removed(b, bk):
    (b / "manifest.sig").unlink()


DAMAGE = [
    (flip_byte, ["archive.db", "SHA-256", "altered"]),
    (truncate, ["archive.db", "truncated"]),
    (edit_unsigned, ["manifest.sig", "does not verify"]),
    (signed_by_another_key, ["manifest.sig", "does not verify", "foreign or forged"]),
    (other_deployment, ["manifest", "foreign backup"]),
    (wrong_version, ["manifest", "wrong-version backup", "format 2"]),
    (signature_removed, ["manifest.sig", "missing"]),
]


@pytest.mark.parametrize("damage,reason", DAMAGE, ids=[d.__name__ for d, _ in DAMAGE])
def test_damaged_or_foreign_backup_is_refused_and_restore_writes_nothing(bk, made, tmp_path,
                                                                        damage, reason):
    b = tmp_path / "b"
    shutil.copytree(made["dir"], b)
    assert bk.verify(b)[0].returncode == 0     # the copy itself is good
    damage(b, bk)

    r, v = bk.verify(b)
    assert r.returncode == 1, r.stdout
    assert v["ok"] is False and v["problems"]
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"suidoctl: backup {b} REFUSED: ")
    assert all(word in first for word in reason), first
    assert first.split("REFUSED: ")[1].startswith(reason[0] + ":"), first   # names the file

    state = tmp_path / "state"
    r = bk.ctl("backup", "restore", b, "--to", state)
    assert r.returncode == 1
    assert all(word in r.stderr for word in reason), r.stderr
    assert "nothing was written" in r.stderr
    assert not state.exists()
    # an existing, empty state directory stays empty too
    state.mkdir()
    assert bk.ctl("backup", "restore", b, "--to", state, "--force").returncode == 1
    assert list(state.iterdir()) == []


# ---- restore ------------------------------------------------------------------------------------

def test_good_backup_restores_exactly_and_the_restored_archive_verifies(suite, bk, made, tmp_path):
    b = made["dir"]
    m = manifest_of(b)
    state = tmp_path / "state"
    r = bk.ctl("--json", "backup", "restore", b, "--to", state)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["restored"] and out["restore_to"] == str(state)
    # the restored archive was re-opened and every signature checked again
    assert out["signatures"]["checked"] and out["signatures"]["failed"] == 0
    assert out["signatures"]["verified"] == int(m["file archive.db"]["batches"]) - DISPOSED_BATCHES
    arch, reg = state / "archive" / "archive.db", state / "registry" / "registry.db"
    assert sha256_file(arch) == m["file archive.db"]["sha256"]
    assert sha256_file(reg) == m["file registry.db"]["sha256"]
    assert sorted(p.name for p in (state / "archive").iterdir()) == ["archive.db"]  # no temp left
    assert sorted(p.name for p in (state / "registry").iterdir()) == ["registry.db"]

    c = sqlite3.connect(f"file:{arch}?mode=ro", uri=True)
    assert c.execute("SELECT count(*) FROM batches").fetchone()[0] == \
        int(m["file archive.db"]["batches"])
    assert c.execute("PRAGMA user_version").fetchone()[0] == 3   # what the archive opens
    c.close()
    audit = suite.ctl("--json", "audit", "verify", "--db", arch)
    a = json.loads(audit.stdout)
    assert a["ok"] and a["entries"] == int(m["file archive.db"]["audit_head_seq"])
    assert a["head"] == m["file archive.db"]["audit_head_hash"]

    # never over an existing database by default ...
    before = sha256_file(arch)
    r = bk.ctl("backup", "restore", b, "--to", state)
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert sha256_file(arch) == before

    # ... nor, even with --force, over one that a process holds open (a running service)
    holder = sqlite3.connect(arch)
    try:
        holder.execute("PRAGMA journal_mode=WAL").fetchone()
        holder.execute("SELECT count(*) FROM batches").fetchone()
        r = bk.ctl("backup", "restore", b, "--to", state, "--force")
        assert r.returncode == 1 and f"in use by process {os.getpid()}" in r.stderr, r.stderr
    finally:
        holder.close()

    # with the services stopped, --force replaces it, stale WAL files included
    (state / "archive" / "archive.db-wal").write_bytes(b"stale")
    r = bk.ctl("backup", "restore", b, "--to", state, "--force")
    assert r.returncode == 0, r.stderr
    assert not (state / "archive" / "archive.db-wal").exists()
    assert sha256_file(arch) == m["file archive.db"]["sha256"]


def test_live_state_directory_is_never_overwritten(suite, bk, made, tmp_path):
    # first on a decoy held open the same way: should that ever not be refused, the suite's own
    # databases are not put at risk
    decoy = tmp_path / "decoy"
    assert bk.ctl("backup", "restore", made["dir"], "--to", decoy).returncode == 0
    holder = sqlite3.connect(decoy / "archive" / "archive.db")
    try:
        holder.execute("PRAGMA journal_mode=WAL").fetchone()
        holder.execute("SELECT count(*) FROM batches").fetchone()   # as a service at start
        r = bk.ctl("backup", "restore", made["dir"], "--to", decoy, "--force")
        assert r.returncode == 1 and "in use by process" in r.stderr, r.stderr
    finally:
        holder.close()

    live = suite.dir / "state"
    before = archive_count(suite)
    r = bk.ctl("backup", "restore", made["dir"], "--to", live, "--force")
    assert r.returncode == 1 and "in use by process" in r.stderr, r.stderr
    assert suite.alive("archive") and suite.alive("registry")
    assert archive_count(suite) >= before


# ---- a batch altered inside a backup that was re-signed with the right key ----------------------

def reseal(b, bk):
    """Brings the manifest's sizes and hashes up to date and signs it with the real backup key:
    what an insider holding the key could do. Only the batch signatures can then tell."""
    for name in ("archive.db", "registry.db"):
        edit_manifest(b, f"file {name}", "size", (b / name).stat().st_size)
        edit_manifest(b, f"file {name}", "sha256", sha256_file(b / name))
    bk.resign(b)


def plain_batch(c):
    return c.execute("SELECT gateway, boot_epoch, seq, envelope FROM batches "
                     "WHERE gateway='gw-0003' AND encrypted=0 ORDER BY seq LIMIT 1").fetchone()


def test_altered_reading_in_a_resigned_backup_is_caught_by_the_batch_signatures(bk, made, pb,
                                                                               tmp_path):
    b = tmp_path / "b"
    shutil.copytree(made["dir"], b)
    c = sqlite3.connect(b / "archive.db")
    gw, epoch, seq, blob = plain_batch(c)
    env = pb.SignedEnvelope.FromString(blob)
    batch = pb.TelemetryBatch.FromString(env.body)
    batch.readings[0].value += 1.5                 # a plausible, quiet falsification
    env.body = batch.SerializeToString()
    c.execute("UPDATE batches SET envelope=? WHERE gateway=? AND boot_epoch=? AND seq=?",
              (env.SerializeToString(), gw, epoch, seq))
    c.commit()
    c.close()
    reseal(b, bk)

    r, v = bk.verify(b)
    assert r.returncode == 1
    assert v["signature_ok"] and all(f["hash_ok"] and f["integrity_ok"] for f in v["files"])
    assert v["signatures"]["failed"] == 1
    assert v["signatures"]["verified"] == v["batches"] - DISPOSED_BATCHES - 1
    assert f"archive.db: batch {gw}/{epoch}/{seq}: SIGNATURE DOES NOT VERIFY" in r.stderr
    state = tmp_path / "state"
    r = bk.ctl("backup", "restore", b, "--to", state)
    assert r.returncode == 1 and "SIGNATURE DOES NOT VERIFY" in r.stderr
    assert not state.exists()


def test_batch_moved_under_another_row_in_a_resigned_backup_is_caught(bk, made, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(made["dir"], b)
    c = sqlite3.connect(b / "archive.db")
    gw, epoch, seq, _ = plain_batch(c)
    # the signed envelope stays intact, but now claims to be another sequence number
    c.execute("UPDATE batches SET seq=? WHERE gateway=? AND boot_epoch=? AND seq=?",
              (10**9, gw, epoch, seq))
    c.commit()
    c.close()
    reseal(b, bk)
    r, v = bk.verify(b)
    assert r.returncode == 1 and v["signatures"]["failed"] == 1
    assert f"batch {gw}/{epoch}/{10**9}: the signed header does not match" in r.stderr


def cut_newest_audit_entries(c):
    c.execute("DELETE FROM audit WHERE seq > (SELECT max(seq) - 2 FROM audit)")
    return "audit chain head is entry"


def alter_an_audit_entry(c):
    c.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2")
    return "audit log BROKEN at entry 2"


def drop_a_batch(c):
    # a whole signed batch removed: every remaining signature is fine, the count is not
    c.execute("DELETE FROM batches WHERE (gateway, boot_epoch, seq) IN "
              "(SELECT gateway, boot_epoch, seq FROM batches WHERE gateway='gw-0003' LIMIT 1)")
    return "batches"


RESEALED = [cut_newest_audit_entries, alter_an_audit_entry, drop_a_batch]


@pytest.mark.parametrize("change", RESEALED, ids=[f.__name__ for f in RESEALED])
def test_archive_changed_inside_a_resigned_backup_is_refused(bk, made, tmp_path, change):
    """Hashes and signature brought up to date by someone holding the backup key: the audit
    chain and the counts against the signed manifest still tell."""
    b = tmp_path / "b"
    shutil.copytree(made["dir"], b)
    c = sqlite3.connect(b / "archive.db")
    words = change(c)
    c.commit()
    c.close()
    reseal(b, bk)
    r, v = bk.verify(b)
    assert r.returncode == 1 and v["signature_ok"], r.stderr
    first = r.stderr.splitlines()[0]
    assert "REFUSED: archive.db: " in first and words in first, r.stderr
    assert v["signatures"]["failed"] == 0
    state = tmp_path / "state"
    assert bk.ctl("backup", "restore", b, "--to", state).returncode == 1
    assert not state.exists()
