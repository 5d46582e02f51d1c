"""The suidoctl commands that read the deployment's databases themselves (archive gaps, archive
verify, audit verify, backup create, backup verify): online, each needs a session whose role may
run it, checked by the registry, which audits the access by operator, role and command; without
a session or with too low a role it is refused like any other command (exit 1) before anything
is read, and a usage error stays exit 2. `--offline`, the administrator's recovery path, needs no
registry: on a stopped deployment whose state is mounted read-only it reads the files as they
are, says on stderr that the access is not audited, and exits 0 on a good archive, 1 when it
finds a gap, 3 when the database cannot be opened.

Runs on a deployment of its own: the last test stops it."""
import json
import shutil
import sqlite3
import subprocess

import pytest

from suite import BIN, running_suite, wait_until
from wire import totp

GW = "gw-0003"
DENIED = "refused: denied: log in first"
OFFLINE = "this access is not in the audit log"

# command (without its operand), the least role it needs, and a role below it that is refused
COMMANDS = [
    (("archive", "gaps"), "viewer", None),
    (("archive", "verify"), "admin", "operator"),
    (("audit", "verify"), "admin", "operator"),
    (("backup", "verify"), "admin", "operator"),
    (("backup", "create"), "admin", "operator"),
]


@pytest.fixture(scope="module")
def sa(tmp_path_factory):
    with running_suite(tmp_path_factory.mktemp("state-access"), gateways=4) as s:
        rep = s.sim("--ids", GW, "--max-batches", 5, "--rate", 20, "--wait-acks", 10)
        s.epoch = rep["gateways"][0]["boot_epoch"]
        s.tokens = {"admin": s.token}
        for role in ("viewer", "operator"):
            secret = s.add_operator(f"sa-{role}", role, f"{role}'s long passphrase")
            s.tokens[role] = s.login(f"sa-{role}", f"{role}'s long passphrase", totp(secret))
        s.backup = s.root / "backup-0"
        s.ctl("backup", "create", s.backup)
        yield s


def operand(sa, verb, tmp_path):
    """The command's operand: an existing backup to verify, a new directory to create."""
    if verb == ("backup", "verify"):
        return [sa.backup]
    if verb == ("backup", "create"):
        return [tmp_path / "new-backup"]
    return []


def audit_rows(sa, event, command):
    return sa.query("SELECT actor, detail FROM audit WHERE event = ? AND subject = ? ORDER BY seq",
                    event, command)


@pytest.mark.parametrize("verb,least,below", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_each_command_needs_a_session_with_its_role_and_is_audited(sa, tmp_path, verb, least,
                                                                   below):
    command = " ".join(verb)
    argv = [*verb, *operand(sa, verb, tmp_path)]
    denied_before = len(audit_rows(sa, "request_denied", command))

    # no session: refused before anything is read
    r = sa.ctl(*argv, check=False, token="")
    assert r.returncode == 1 and DENIED in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    # a session of too low a role (or, for a viewer's command, one that has ended)
    if below:
        tok = sa.tokens[below]
    else:
        secret = sa.add_operator(f"sa-gone-{verb[1]}", "viewer", "a passphrase, long enough")
        tok = sa.login(f"sa-gone-{verb[1]}", "a passphrase, long enough", totp(secret))
        sa.ctl("logout", token=tok)
    r = sa.ctl(*argv, check=False, token=tok)
    assert r.returncode == 1 and DENIED in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    assert not (tmp_path / "new-backup").exists()
    # both refusals are in the audit log, naming the command
    assert wait_until(lambda: len(audit_rows(sa, "request_denied", command)) >= denied_before + 2,
                      10)
    details = [d for _, d in audit_rows(sa, "request_denied", command)[denied_before:]]
    assert all("op=ctl_access" in d and f'command="{command}"' in d for d in details), details
    if below:
        assert any(f"role={below}" in d for d in details), details

    # the least role that may: it runs, and the access is audited by operator, role and command
    who = "admin" if least == "admin" else f"sa-{least}"
    r = sa.ctl("--json", *argv, check=False, token=sa.tokens[least])
    assert r.returncode == 0, r.stderr
    assert OFFLINE not in r.stderr
    assert wait_until(lambda: (who, f'role={least} command="{command}"')
                      in audit_rows(sa, "ctl_access", command), 10), \
        audit_rows(sa, "ctl_access", command)


def test_usage_errors_stay_usage_errors_without_a_session(sa):
    for argv in (["archive", "gaps", "extra"], ["backup", "verify"], ["audit", "verify", "x"],
                 ["--offline", "inventory"], ["--offline", "backup", "create", "/nonexistent/b"],
                 ["--offline", "archive", "status"]):
        r = sa.ctl(*argv, check=False, token="")
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert "denied" not in r.stderr, (argv, r.stderr)
    r = sa.ctl("--offline", "inventory", check=False, token="")
    assert "--offline is only for" in r.stderr, r.stderr


def read_only(sa, *argv):
    """suidoctl --offline as root, with the deployment's state folder mounted read-only (as the
    containers' archive-check sees the archive's volume): nothing can be created beside the
    databases, no -shm, no lock file."""
    state = str(sa.dir / "state")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here (unshare: {probe.stderr.decode().strip()})")
    ctl = [str(BIN / "suidoctl"), "-c", str(sa.dir / "etc" / "suidoctl.conf"), *map(str, argv)]
    return subprocess.run(["unshare", "--mount", "sh", "-c",
                           'mount --bind -o ro "$0" "$0" && exec "$@"', state, *ctl],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


def test_offline_checks_a_stopped_deployment_read_only(sa, tmp_path):
    """Last in this module: it stops the deployment."""
    codes = sa.stop()
    assert codes and not [c for c in codes.values() if c != 0], codes
    archive = sa.dir / "state" / "archive" / "archive.db"
    before = {p.name: p.stat().st_mtime_ns for p in archive.parent.iterdir()}

    # online, nothing can check the session: exit 3 (not 1), and it says what to do
    r = sa.ctl("archive", "gaps", check=False)
    assert r.returncode == 3 and "registry did not answer" in r.stderr and "--offline" in r.stderr

    r = read_only(sa, "--offline", "--json", "archive", "gaps")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and OFFLINE in r.stderr, r.stderr
    mine = [e for e in json.loads(r.stdout)["epochs"] if e["gateway"] == GW]
    assert mine and mine[0]["missing"] == 0 and mine[0]["stored"] >= 5, r.stdout

    # the chain, and the registry's signed checkpoint read from the registry's own database
    r = read_only(sa, "--offline", "--json", "audit", "verify")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["checkpoint"] == "verified" and OFFLINE in r.stderr, (out, r.stderr)

    r = read_only(sa, "--offline", "--json", "archive", "verify")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["failed"] == 0 and out["verified"] >= 5, out

    r = read_only(sa, "--offline", "backup", "verify", sa.backup)
    assert r.returncode == 0 and OFFLINE in r.stderr, r.stderr

    # read as they are: nothing was written beside the databases
    assert {p.name: p.stat().st_mtime_ns for p in archive.parent.iterdir()} == before

    # a copy with a batch missing: found (1), not "cannot check" (3)
    copy = tmp_path / "copy"
    copy.mkdir()
    for side in ("", "-wal"):
        if (archive.parent / f"archive.db{side}").exists():
            shutil.copy(archive.parent / f"archive.db{side}", copy / f"archive.db{side}")
    with sqlite3.connect(copy / "archive.db") as db:
        db.execute("DELETE FROM batches WHERE gateway=? AND boot_epoch=? AND seq=2",
                   (GW, sa.epoch))
    db.close()
    conf = (sa.dir / "etc" / "suidoctl.conf").read_text()
    gapped = tmp_path / "gapped.conf"
    gapped.write_text(conf.replace(str(archive), str(copy / "archive.db")))
    r = subprocess.run([str(BIN / "suidoctl"), "-c", str(gapped), "--offline", "--json",
                        "archive", "gaps", "--gateway", GW], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["epochs"][0]["missing_ranges"] == [[2, 2]]

    # the database missing: cannot check (3), with the path and the reason
    missing = tmp_path / "missing.conf"
    missing.write_text(conf.replace(str(archive), str(tmp_path / "nowhere" / "archive.db")))
    for argv in (["archive", "gaps"], ["audit", "verify"], ["archive", "verify"]):
        r = subprocess.run([str(BIN / "suidoctl"), "-c", str(missing), "--offline", *argv],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3, (argv, r.returncode, r.stderr)
        assert f"{tmp_path / 'nowhere' / 'archive.db'}: cannot open: No such file or directory" \
            in r.stderr, (argv, r.stderr)
