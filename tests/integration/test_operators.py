"""Operators: Argon2id password hashes, TOTP second factor (single use), lockout keyed by
(operator, source) with back-off that survives a restart, session tokens with roles, access
history and suspicious-access findings in the audit log."""
import json
import sqlite3
import time

from suite import wait_until
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


def test_lockout_is_per_source_and_survives_a_restart(suite):
    secret = suite.add_operator("dave", "operator", PASSWORD)
    for _ in range(5):
        assert suite.login("dave", "wrong password!!", totp(secret), source="10.9.9.9",
                           check=False).returncode == 1
    locked = suite.login("dave", PASSWORD, totp(secret), source="10.9.9.9", check=False)
    assert locked.returncode == 1 and "locked out" in locked.stderr
    assert wait_until(lambda: audit_events(suite, "dave", "lockout"), 5)
    # the same operator from another terminal is not locked out by that source
    assert isinstance(suite.login("dave", PASSWORD, totp(secret), source="control-room-2"), str)
    # the lock is kept across a restart of the registry
    suite.stop("registry")
    suite.start_service("registry")
    assert wait_until(lambda: suite.ctl("inventory", check=False).returncode == 0, 10)
    locked = suite.login("dave", PASSWORD, totp(secret, time.time() + 30), source="10.9.9.9",
                         check=False)
    assert locked.returncode == 1 and "locked out" in locked.stderr
    ops = {o["id"]: o for o in json.loads(suite.ctl("--json", "operator", "list").stdout)}
    assert ops["dave"]["locked_until_ms"] > time.time() * 1000


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
    assert hist[0]["source"] == "198.51.100.8"


def test_suspended_operator_loses_its_session(suite):
    secret = suite.add_operator("frank", "viewer", PASSWORD)
    tok = suite.login("frank", PASSWORD, totp(secret))
    assert suite.ctl("inventory", token=tok).returncode == 0
    suite.ctl("operator", "suspend", "frank")
    assert suite.ctl("inventory", token=tok, check=False).returncode == 1
    assert suite.login("frank", PASSWORD, totp(secret, time.time() + 30),
                       check=False).returncode == 1
