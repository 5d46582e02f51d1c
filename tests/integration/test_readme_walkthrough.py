"""The README's "Operating it" section, walked as a new operator walks it: every command of its
shell blocks, taken from the README itself in the order it gives them, run against a deployment
made by `make run` (scripts/suite.sh) on free ports, with the exit code and the message the
README promises; then the mistakes a new operator makes (bad numbers, no session, a wrong code,
an unknown gateway, an offline check of a running deployment's missing file). A README edited
without the code, or code changed without the README, fails here."""
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest

from suite import BIN, TOP, free_base_port, reachable_by_broker, wait_until
from test_access import curve_push, service_keys
from wire import totp

SCRIPT = TOP / "scripts" / "suite.sh"
README = TOP / "README.md"


def operating_commands():
    """(line, expected exit code) of every command in the README's "Operating it" section, in
    order: 1 where the README says "(exit 1)", else 0."""
    text = README.read_text()
    section = text[text.index("## Operating it"):text.index("## Connecting a real site")]
    out = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            out.append((line, 1 if "(exit 1)" in line else 0))
    return out


class Deployment:
    """What curve_push needs of a suite: the deployment folder."""

    def __init__(self, run):
        self.dir = pathlib.Path(run)


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """One deployment for the module: the mistakes come first, the walk (which ends with the
    README's `make stop`) last."""
    tmp_path = tmp_path_factory.mktemp("walk")
    reachable_by_broker(tmp_path)
    env = dict(os.environ, SUIDO_RUN=str(tmp_path / "run"), SUIDO_BIN=str(BIN),
               SUIDO_PORT=str(free_base_port()), SUIDO_GATEWAYS="8")
    env.pop("SUIDO_TOKEN", None)
    r = subprocess.run([str(SCRIPT), "run", "--detach"], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def raise_and_clear(env, pb):
    """An alert case the README's alert commands can act on: raised and then cleared (so that it
    may be closed), sent as the anomaly checker sends it. Returns its case number."""
    run = Deployment(env["SUIDO_RUN"])
    for cleared in (False, True):
        a = pb.Alert(id="gw-0002/reservoir.chlorine/limit", gateway_id="gw-0002",
                     site="reservoir-02", channel="reservoir.chlorine", rule="limit_ll",
                     severity=pb.SEVERITY_ALARM, value=0.15, limit=0.2,
                     timestamp_ms=int(time.time() * 1000), evidence="0.15 mg/L below LL",
                     cleared=cleared)
        curve_push(run, int(env["SUIDO_PORT"]) + 2, "archive", service_keys(run, "anomaly"),
                   pb.StageMessage(topic="suido/v1/alerts/reservoir-02",
                                   alert=a).SerializeToString())
    db = run.dir / "state" / "archive" / "archive.db"
    import sqlite3

    def case():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            row = c.execute("SELECT case_id FROM alert_cases WHERE alert_id = ? AND active = 0",
                            ("gw-0002/reservoir.chlorine/limit",)).fetchone()
        return row[0] if row else None
    assert wait_until(case, 10)
    return case()


def test_a_new_operators_mistakes_get_clear_answers(walk):
    env = dict(walk)
    run = env["SUIDO_RUN"]
    ctl = [str(BIN / "suidoctl"), "-c", f"{run}/etc/suidoctl.conf"]

    def sh(*args, token=None, stdin=None):
        e = dict(env)
        if token:
            e["SUIDO_TOKEN"] = token
        return subprocess.run(ctl + list(args), env=e, capture_output=True, text=True,
                              timeout=60, input=stdin)
    # no session: refused, and said how to get one
    r = sh("inventory")
    assert r.returncode == 1 and "log in first" in r.stderr, r.stderr
    # a bad number is a usage error, with or without a session
    r = sh("certs", "--days", "abc")
    assert r.returncode == 2, r.stderr
    # a wrong code: the login failed, without saying which half was wrong
    r = sh("login", "admin", "--password-file", f"{run}/admin.password", "--totp", "000000")
    assert r.returncode == 1 and "login failed (password or code)" in r.stderr, r.stderr
    secret = open(f"{run}/admin.totp").read().strip()
    # the previous step's code (the registry takes one step either side): a code is good once,
    # and the walk that follows logs admin in with the current one
    r = sh("login", "admin", "--password-file", f"{run}/admin.password", "--totp",
           totp(secret, at=time.time() - 30))
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    # an unknown gateway is named
    r = sh("gateway", "suspend", "gw-9999", token=tok)
    assert r.returncode == 1 and "gw-9999" in r.stderr, r.stderr
    # the data checks need a role: a viewer may see gaps, not verify the audit log
    r = sh("operator", "add", "vic", "--role", "viewer", token=tok,
           stdin="vic has a long passphrase\n")
    assert r.returncode == 0, r.stderr
    vic_secret = re.search(r"TOTP secret \(shown once\): (\S+)", r.stdout)[1]
    vic = sh("login", "vic", "--password-file", "/dev/stdin", "--totp", totp(vic_secret),
             stdin="vic has a long passphrase\n")
    assert vic.returncode == 0, vic.stderr
    assert sh("archive", "gaps", token=vic.stdout.strip()).returncode in (0, 1)
    r = sh("audit", "verify", token=vic.stdout.strip())
    assert r.returncode == 1 and "denied" in r.stderr, r.stderr
    # logging out says so, and the session is gone
    r = sh("logout", token=tok)
    assert r.returncode == 0 and "logged out" in r.stdout, (r.stdout, r.stderr)
    assert sh("inventory", token=tok).returncode == 1


def test_the_operating_section_works_as_written(walk, pb, tmp_path):
    env = dict(walk)
    run = env["SUIDO_RUN"]
    secret = open(f"{run}/admin.totp").read().strip()
    last_command_id = None
    case_id = raise_and_clear(env, pb)
    steps = operating_commands()
    assert len(steps) > 20, steps  # the section is there, with its blocks
    # the README's commands run from the top of a checkout: build/bin/ and run/ there
    top = tmp_path / "top"
    (top / "build").mkdir(parents=True)
    (top / "build" / "bin").symlink_to(BIN)
    (top / "run").symlink_to(run)
    for line, expected in steps:
        cmd = line.split("  #")[0].strip()  # the README's trailing comments
        cmd = cmd.replace("--totp 123456", f"--totp {totp(secret)}")
        cmd = cmd.replace("/media/usb/gw-0100", str(tmp_path / "gw-0100"))
        cmd = re.sub(r"\balert (ack|close|show) \d+", lambda m: f"alert {m[1]} {case_id}", cmd)
        if "command status" in cmd:
            assert last_command_id, "the README shows a command's status before sending one"
            cmd = re.sub(r"command status \S+", f"command status {last_command_id}", cmd)
        if cmd == "make stop":
            cmd = f"{SCRIPT} stop"
        stdin = None
        if " operator add " in cmd:
            stdin = "alice has a long passphrase\n"  # "password on stdin"
        if cmd.startswith("export SUIDO_TOKEN=$("):
            inner = cmd[len("export SUIDO_TOKEN=$("):-1]
            r = subprocess.run(inner, shell=True, env=env, capture_output=True, text=True,
                               timeout=60, cwd=top)
            assert r.returncode == 0, (line, r.stderr)
            env["SUIDO_TOKEN"] = r.stdout.strip()
            continue
        r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, timeout=180,
                           input=stdin, cwd=top)
        assert r.returncode == expected, (line, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
        if re.search(r"suidoctl .*command gw-\S+ \S+ \S+ --unit", cmd) and expected == 0:
            last_command_id = re.search(r"gw-\d+-\d+-[0-9a-f]+", r.stdout)[0]  # "prints the id"
        if "(exit 1)" in line:
            assert "refused" in r.stderr and "out_of_range" in r.stderr, r.stderr
        if "--offline" in cmd:
            assert "offline" in r.stderr and "not in the audit log" in r.stderr, r.stderr
    # what the walk left is what the README says it leaves
    r = subprocess.run([str(BIN / "suidoctl"), "-c", f"{run}/etc/suidoctl.conf", "--offline",
                        "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
