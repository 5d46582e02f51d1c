"""A service's CURVE key rotated (compose/rotate-curve.sh, docs/operations.md) reaches the
registry at its next start: the registry's record of the service takes the key the inventory
names now, so that a later `suidoctl service revoke` announces the key in use (every socket
refuses it) and not the one rotated away."""
import contextlib
import shutil
import sqlite3
import subprocess

from suite import BIN, Suite, wait_until


def service_keys(s):
    path = s.dir / "state" / "registry" / "registry.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=5)) as c:
            return dict(c.execute("SELECT id, curve_pub FROM services"))
    except sqlite3.OperationalError:  # not made yet: the registry opens it after it is ready
        return {}


def imports(s):
    """How many times the registry has imported its inventory (its log line after it)."""
    return s.log("registry").count(" inventory=")


def test_a_rotated_service_key_replaces_the_registered_one(tmp_path):
    s = Suite(tmp_path, gateways=2)
    try:
        s.start_service("registry")
        assert wait_until(lambda: imports(s) == 1, 30), s.log("registry")
        assert "anomaly" in service_keys(s)
        before = service_keys(s)
        s.stop("registry")
        # the rotation: the old pair kept aside, a new one made where the inventory looks
        key = s.dir / "services" / "anomaly" / "curve"
        for ext in (".pub", ".key"):
            shutil.move(str(key) + ext, str(key) + ext + ".old")
        subprocess.run([str(BIN / "suido-keygen"), "curve", str(key)], check=True,
                       capture_output=True)
        s.start_service("registry")
        assert wait_until(lambda: imports(s) == 2, 30), s.log("registry")
        after = service_keys(s)
        assert after["anomaly"] != before["anomaly"], after
        # the others are as they were, and the change is logged for the one that changed
        assert {k: v for k, v in after.items() if k != "anomaly"} == \
            {k: v for k, v in before.items() if k != "anomaly"}
        log = s.log("registry")
        assert "service=anomaly" in log and "event=service_key_or_certificate_updated" in log
        assert log.count("event=service_key_or_certificate_updated") == 1
    finally:
        codes = s.stop()
        assert all(c == 0 for c in codes.values()), codes
