"""Operators: Argon2id password hashes, TOTP second factor (single use) with its seed sealed
outside the database, lockout keyed by (operator, authenticated source) with back-off that
survives a restart, a per-account cap across all sources, session tokens with roles, access
history and suspicious-access findings in the audit log."""
import base64
import json
import os
import sqlite3
import stat
import subprocess
import time

import zmq

from suite import BIN, wait_until
from wire import totp

PASSWORD = "a long enough passphrase"


def registry_db(suite):
    return sqlite3.connect(f"file:{suite.dir / 'state' / 'registry' / 'registry.db'}?mode=ro",
                           uri=True, timeout=5)


def audit_events(suite, subject, event):
    return suite.query("SELECT detail FROM audit WHERE subject=? AND event=?", subject, event)


def test_only_the_first_operator_is_added_without_a_session(suite):
    r = suite.ctl("operator", "add", "mallory", "--role", "admin", token="",
                  stdin="x" * 20 + "\n", check=False)
    assert r.returncode == 1 and "denied" in r.stderr


def test_passwords_are_stored_as_argon2id_hashes(suite):
    with registry_db(suite) as c:
        (h,) = c.execute("SELECT pw_hash FROM operators WHERE id='admin'").fetchone()
    assert h.startswith("$argon2id$") and suite.admin_password not in h


def test_second_factor_is_required_and_single_use(suite):
    secret = suite.add_operator("bob", "viewer", PASSWORD)
    assert suite.login("bob", PASSWORD, "000000", check=False).returncode == 1   # wrong code
    code = totp(secret)
    assert isinstance(suite.login("bob", PASSWORD, code), str)
    again = suite.login("bob", PASSWORD, code, check=False)                   # reused code
    assert again.returncode == 1
    with registry_db(suite) as c:
        results = [r[0] for r in c.execute(
            "SELECT result FROM access WHERE operator='bob' ORDER BY id")]
    assert results == ["bad_totp", "ok", "totp_reused"]


def test_roles_limit_what_a_session_may_do(suite):
    secret = suite.add_operator("carol", "viewer", PASSWORD)
    tok = suite.login("carol", PASSWORD, totp(secret))
    assert len(json.loads(suite.ctl("--json", "inventory", token=tok).stdout)) >= 8
    r = suite.ctl("gateway", "suspend", "gw-0008", token=tok, check=False)
    assert r.returncode == 1 and "denied" in r.stderr
    assert wait_until(lambda: suite.query("SELECT count(*) FROM audit WHERE "
                                          "event='request_denied' AND actor='carol'")[0][0], 5)
    # no session at all: nothing, not even reading
    assert suite.ctl("inventory", token="", check=False).returncode == 1
    # after logout the token is dead
    suite.ctl("logout", token=tok)
    assert suite.ctl("inventory", token=tok, check=False).returncode == 1


def monitor_login(suite, pb, ident, password, code, browser):
    """A login as the monitor relays it (its CURVE identity, the browser's address as source):
    the registry's reply."""
    d = suite.dir / "services"
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_serverkey = (d / "registry" / "curve.pub").read_bytes().strip()
    s.curve_publickey = (d / "monitor" / "curve.pub").read_bytes().strip()
    s.curve_secretkey = (d / "monitor" / "curve.key").read_bytes().strip()
    s.connect(f"tcp://127.0.0.1:{suite.base + 1}")
    try:
        s.send(pb.RegistryRequest(op=pb.REG_LOGIN, id=ident, password=password, totp=code,
                                  source=browser).SerializeToString())
        assert s.poll(10000), "no reply from the registry"
        rep = pb.RegistryReply()
        rep.ParseFromString(s.recv())
        return rep
    finally:
        s.close()


def test_lockout_is_per_authenticated_source_and_survives_a_restart(suite, pb):
    secret = suite.add_operator("dave", "operator", PASSWORD)
    # a new --source for every guess: suidoctl's claim is not a source, all count as "suidoctl"
    for i in range(5):
        assert suite.login("dave", "wrong password!!", totp(secret), source=f"10.9.9.{i}",
                           check=False).returncode == 1
    locked = suite.login("dave", PASSWORD, totp(secret), source="somewhere-else", check=False)
    assert not isinstance(locked, str), "a new --source escaped the lockout"
    assert locked.returncode == 1 and "locked out" in locked.stderr
    assert wait_until(lambda: audit_events(suite, "dave", "lockout"), 5)
    (detail,) = audit_events(suite, "dave", "lockout")[0]
    assert "source=suidoctl via=suidoctl" in detail and 'claimed="10.9.9.4"' in detail
    with registry_db(suite) as c:
        assert {r[0] for r in c.execute("SELECT source FROM lockouts WHERE operator='dave'")} \
            == {"suidoctl"}
    # the same operator at a browser (the monitor's source) is not locked out by that
    rep = monitor_login(suite, pb, "dave", PASSWORD, totp(secret), "192.0.2.10")
    assert rep.status == 0 and len(rep.token) == 64
    # the lock is kept across a restart of the registry
    suite.stop("registry")
    suite.start_service("registry")
    assert wait_until(lambda: suite.ctl("inventory", check=False).returncode == 0, 10)
    locked = suite.login("dave", PASSWORD, totp(secret, time.time() + 30), source="10.9.9.9",
                         check=False)
    assert locked.returncode == 1 and "locked out" in locked.stderr
    ops = {o["id"]: o for o in json.loads(suite.ctl("--json", "operator", "list").stdout)}
    assert ops["dave"]["locked_until_ms"] > time.time() * 1000


def test_account_is_locked_after_twenty_failures_from_any_sources(suite, pb):
    """Guesses spread over browsers, each below the per-source limit, lock the account for every
    source: the right credentials are then refused from a new browser and from suidoctl."""
    secret = suite.add_operator("gina", "admin", PASSWORD)
    for i in range(20):
        rep = monitor_login(suite, pb, "gina", "wrong password!!", "000000", f"198.51.100.{i // 4}")
        assert rep.status != 0
    rep = monitor_login(suite, pb, "gina", PASSWORD, totp(secret), "203.0.113.1")
    assert rep.error == "locked_out" and rep.retry_after_ms > (time.time() + 14 * 60) * 1000
    r = suite.login("gina", PASSWORD, totp(secret), check=False)
    assert r.returncode == 1 and "locked out" in r.stderr
    assert wait_until(lambda: any("scope=account" in d for (d,) in
                                  audit_events(suite, "gina", "lockout")), 5)
    with registry_db(suite) as c:
        (until,) = c.execute("SELECT locked_until_ms FROM account_locks WHERE operator='gina'"
                             ).fetchone()
        sources = {r[0] for r in c.execute("SELECT source FROM access WHERE operator='gina'")}
    assert until > (time.time() + 14 * 60) * 1000
    # each browser behind the monitor was a source of its own, under the monitor's name
    assert sources == {f"monitor/198.51.100.{i}" for i in range(5)}


def test_totp_seeds_are_sealed(suite):
    secret = suite.add_operator("hank", "viewer", PASSWORD)
    seed = base64.b32decode(secret + "=" * (-len(secret) % 8))
    with registry_db(suite) as c:
        (blob,) = c.execute("SELECT totp_secret FROM operators WHERE id='hank'").fetchone()
    assert seed not in blob and len(blob) > len(seed)
    assert isinstance(suite.login("hank", PASSWORD, totp(secret)), str)


def test_a_seed_left_in_clear_is_sealed_at_start(suite):
    """A database from before sealing: the registry seals the clear seed when it starts, audits
    that once, and the operator logs in as before."""
    secret = suite.add_operator("ivy", "viewer", PASSWORD)
    seed = base64.b32decode(secret + "=" * (-len(secret) % 8))
    suite.stop("registry")
    db = suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(db) as c:
        c.execute("UPDATE operators SET totp_secret=? WHERE id='ivy'", (seed,))
    c.close()
    suite.start_service("registry")
    assert wait_until(lambda: suite.ctl("inventory", check=False).returncode == 0, 15)
    assert wait_until(lambda: suite.query("SELECT detail FROM audit WHERE "
                                          "event='totp_seeds_sealed'") == [("operators=1",)], 5)
    with registry_db(suite) as c:
        (blob,) = c.execute("SELECT totp_secret FROM operators WHERE id='ivy'").fetchone()
    assert seed not in blob
    assert isinstance(suite.login("ivy", PASSWORD, totp(secret)), str)


def test_registry_database_is_readable_by_the_registry_only(suite):
    state = suite.dir / "state" / "registry"
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        mode = stat.S_IMODE(os.stat(state / name).st_mode)
        assert mode & 0o077 == 0, f"{name} mode {mode:o}"


def test_registry_refuses_to_start_without_its_seal_key(suite, tmp_path):
    conf = tmp_path / "registry.conf"
    text = (suite.dir / "etc" / "registry.conf").read_text()
    key = str(suite.dir / "services" / "registry" / "seal.key")
    assert key in text
    conf.write_text(text.replace(key, str(tmp_path / "missing.key")))
    r = subprocess.run([str(BIN / "suido-registry"), "-n", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "seal_key" in r.stderr
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(16))
    short.chmod(0o600)
    conf.write_text(text.replace(key, str(short)))
    r = subprocess.run([str(BIN / "suido-registry"), "-n", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "exactly 32 random bytes" in r.stderr


def test_suspicious_access_is_found_and_access_history_is_kept(suite):
    secret = suite.add_operator("erin", "viewer", PASSWORD)
    for _ in range(3):
        suite.login("erin", "not the password", totp(secret), source="198.51.100.7", check=False)
    assert suite.login("erin", PASSWORD, totp(secret), source="198.51.100.8")
    def findings():
        return {d for (d,) in audit_events(suite, "erin", "suspicious_access")}

    assert wait_until(lambda: {"finding=failure_burst", "finding=new_source"} <= findings(), 5)
    hist = json.loads(suite.ctl("--json", "access", "--operator", "erin").stdout)
    assert [h["result"] for h in hist][:4] == ["ok", "bad_password", "bad_password",
                                               "bad_password"]
    assert hist[0]["source"] == "suidoctl"  # the authenticated peer, not the claimed source


def test_suspended_operator_loses_its_session(suite):
    secret = suite.add_operator("frank", "viewer", PASSWORD)
    tok = suite.login("frank", PASSWORD, totp(secret))
    assert suite.ctl("inventory", token=tok).returncode == 0
    suite.ctl("operator", "suspend", "frank")
    assert suite.ctl("inventory", token=tok, check=False).returncode == 1
    assert suite.login("frank", PASSWORD, totp(secret, time.time() + 30),
                       check=False).returncode == 1
