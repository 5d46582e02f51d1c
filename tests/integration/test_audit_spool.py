"""No audit event is lost because the archive is not up: every service keeps the events it could
not send in its own spool (state_dir/audit-spool.db, cm_audit_out) and delivers them, in the order
they were made and with their own times, when the archive comes.

A fresh deployment started without the archive: the registry's startup `profile_changed` and the
first operator's `operator_added` wait in the registry's spool, across a restart of the registry,
and reach the audit log once the archive starts. Then the archive is stopped mid-run, more events are made, and they arrive in
order when it is back. Its own deployment: it starts the archive late and stops it."""
import json
import sqlite3
import stat
import time

import pytest

from suite import Suite, wait_until
from wire import totp

PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    s = Suite(tmp_path_factory.mktemp("audit-spool"), gateways=2)
    try:
        s.start(without=("archive",))
        yield s
    finally:
        codes = s.stop()
        failed = {n: c for n, c in codes.items() if c != 0}
        assert not failed, f"processes exited with errors: {failed}"


def spool_path(suite):
    return suite.dir / "state" / "registry" / "audit-spool.db"


def spooled_events(suite):
    """(event, subject) of the events waiting in the registry's spool, oldest first."""
    with sqlite3.connect(f"file:{spool_path(suite)}?mode=ro", uri=True, timeout=5) as c:
        return c.execute("SELECT event, subject FROM audit_spool ORDER BY id").fetchall()


def registry_audit(suite, after=0):
    """(event, subject, ts_ms) of the registry's entries in the archive's audit log after seq
    `after`, in the log's order."""
    return suite.query("SELECT event, subject, ts_ms FROM audit WHERE source='registry' AND "
                       "seq > ? ORDER BY seq", after)


def audit_head(suite):
    return suite.query("SELECT max(seq) FROM audit")[0][0] or 0


def registry_log(suite):
    """The registry's whole log, across its restarts."""
    return (suite.logs / "registry.log").read_text(errors="replace")


def spooled_metric(suite):
    return suite.metric("registry", "suido_audit_spooled")


def test_events_made_before_the_archive_is_up_arrive_in_order(late):
    # the registry's startup profile is audited, and waits: nobody takes it
    assert wait_until(lambda: spooled_metric(late) >= 1, 30), late.log("registry")
    assert not (late.dir / "state" / "archive" / "archive.db").exists()
    # the deployment's first operator (no session needed for the first one)
    secret = late.add_operator("admin", "admin", PASSWORD)
    assert wait_until(lambda: spooled_metric(late) == 2, 10), late.log("registry")
    assert spooled_events(late) == [("profile_changed", "profile"), ("operator_added", "admin")]
    assert stat.S_IMODE(spool_path(late).stat().st_mode) == 0o600
    assert registry_log(late).count("event=audit_spool_holding") == 1
    # an orderly restart keeps them (the profile, unchanged, is not audited again)
    assert late.stop("registry") == {"registry": 0}
    late.start_service("registry")
    assert wait_until(lambda: "events=2 event=audit_spool_loaded" in registry_log(late), 10), \
        late.log("registry")

    archive_started_ms = time.time() * 1000
    late.start_service("archive")
    assert wait_until(lambda: spooled_metric(late) == 0, 30), late.log("registry")
    assert wait_until(lambda: len(registry_audit(late)) >= 2, 10), late.log("archive")
    got = registry_audit(late)
    # exactly those two, in the order they happened, each with the time it was made
    assert [(e, s) for e, s, _ in got] == [("profile_changed", "profile"),
                                           ("operator_added", "admin")]
    assert got[0][2] <= got[1][2] < archive_started_ms
    assert late.metric("registry", "suido_audit_delivered_late_total") == 2
    assert late.metric("registry", "suido_audit_spool_dropped_total") == 0
    assert spooled_events(late) == []
    assert "event=audit_spool_drained delivered=2" in registry_log(late)
    assert "event=audit_spool_kept" in registry_log(late)

    late.token = late.login("admin", PASSWORD, totp(secret))
    out = json.loads(late.ctl("--json", "audit", "verify").stdout)
    assert out["ok"] and out["entries"] >= 2, out     # not "intact: 0 entries"


def test_events_made_while_the_archive_is_stopped_arrive_in_order_when_it_is_back(late):
    assert late.token, "needs the operator of the test before"
    assert late.stop("archive") == {"archive": 0}
    before = audit_head(late)

    late.add_operator("bob", "viewer", PASSWORD)
    late.ctl("gateway", "suspend", "gw-0001", "--reason", "spool test")
    assert wait_until(lambda: spooled_metric(late) == 2, 10), late.log("registry")
    assert spooled_events(late) == [("operator_added", "bob"),
                                    ("identity_state_changed", "gw-0001")]
    assert audit_head(late) == before      # nothing reached the log meanwhile

    late.start_service("archive")
    assert wait_until(lambda: spooled_metric(late) == 0, 30), late.log("registry")
    assert wait_until(lambda: len(registry_audit(late, before)) >= 2, 10), late.log("archive")
    got = [(e, s) for e, s, _ in registry_audit(late, before)]
    assert got == [("operator_added", "bob"), ("identity_state_changed", "gw-0001")]
    assert late.metric("registry", "suido_audit_delivered_late_total") == 4
    assert registry_log(late).count("event=audit_spool_drained") == 2
    r = late.ctl("--json", "audit", "verify")
    assert r.returncode == 0, r.stderr
