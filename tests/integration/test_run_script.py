"""`make run` as a new operator meets it (scripts/suite.sh, README "Quick start" and "Operating
it"), on a deployment of its own in a temporary folder and free ports: a disposed gateway is
skipped with one line on the next run; a process that exits makes the run fail loudly, non-zero,
in the background and in the foreground; `make stop` during a foreground run ends it quietly and
says what it stops."""
import os
import pathlib
import signal
import sqlite3
import subprocess
import time

import pytest

from suite import BIN, TOP, free_base_port, reachable_by_broker, wait_until
from wire import totp

SCRIPT = TOP / "scripts" / "suite.sh"


@pytest.fixture
def runenv(tmp_path):
    reachable_by_broker(tmp_path)
    env = dict(os.environ, SUIDO_RUN=str(tmp_path / "run"), SUIDO_BIN=str(BIN),
               SUIDO_PORT=str(free_base_port()), SUIDO_GATEWAYS="3")
    env.pop("SUIDO_TOKEN", None)
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def suite_sh(env, *args, timeout=180):
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def ctl(env, *args, token=None):
    e = dict(env)
    if token:
        e["SUIDO_TOKEN"] = token
    run = env["SUIDO_RUN"]
    return subprocess.run([str(BIN / "suidoctl"), "-c", f"{run}/etc/suidoctl.conf", *args],
                          env=e, capture_output=True, text=True, timeout=60)


def admin_token(env):
    run = env["SUIDO_RUN"]
    secret = open(f"{run}/admin.totp").read().strip()
    r = ctl(env, "login", "admin", "--password-file", f"{run}/admin.password", "--totp",
            totp(secret))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def pid_of(env, name):
    return int(open(f"{env['SUIDO_RUN']}/pids/{name}.pid").read())


def no_pid_files(env):
    return not list((pathlib.Path(env["SUIDO_RUN"]) / "pids").glob("*.pid"))


def _started(env):
    """The run has printed its summary: the first operator exists (made after every start)."""
    return (pathlib.Path(env["SUIDO_RUN"]) / "admin.totp").exists()


def test_disposed_gateway_is_skipped_on_the_next_run(runenv):
    r = suite_sh(runenv, "run", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running in the background" in r.stdout
    tok = admin_token(runenv)
    assert ctl(runenv, "gateway", "revoke", "gw-0002", token=tok).returncode == 0
    assert ctl(runenv, "gateway", "dispose", "gw-0002", token=tok).returncode == 0
    # certs: a disposed gateway no longer counts; the deployment's other certificates do
    r = ctl(runenv, "certs", "--days", "36500", token=tok)
    assert r.returncode == 0, r.stderr
    assert "gw-0002" not in r.stdout and "gw-0001" in r.stdout, r.stdout
    for cert in ("ca/ca.crt", "broker/server.crt", "services/registry/client.crt",
                 "services/registry/metrics.crt", "services/monitor/https.crt",
                 "prometheus/client.crt"):
        assert cert in r.stdout, (cert, r.stdout)

    r = suite_sh(runenv, "run", "--detach")
    assert r.returncode == 1 and "already running" in r.stderr and "make stop" in r.stderr

    r = suite_sh(runenv, "stop")
    assert r.returncode == 0 and "stopping gateway-sim" in r.stdout and "stopped" in r.stdout
    assert no_pid_files(runenv)

    r = suite_sh(runenv, "run", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    skipped = [line for line in r.stdout.splitlines() if "skipping" in line]
    assert len(skipped) == 1 and "gw-0002" in skipped[0] and "disposed" in skipped[0], r.stdout
    # the other gateways carry on: their batches reach the archive
    db = pathlib.Path(runenv["SUIDO_RUN"]) / "state" / "archive" / "archive.db"
    def stored(gw):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return c.execute("SELECT count(*) FROM batches WHERE gateway=?", (gw,)).fetchone()[0]
    before = stored("gw-0003")
    assert wait_until(lambda: stored("gw-0003") > before, 30)

    # a suspended gateway is refused at the broker: README's audit query and counter show it
    assert ctl(runenv, "gateway", "suspend", "gw-0001", "--reason", "maintenance",
               token=tok).returncode == 0

    def refused_at_broker():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return c.execute("SELECT datetime(ts_ms/1000, 'unixepoch', 'localtime'), subject, "
                             "detail FROM audit WHERE event = 'broker_identity_refused' "
                             "ORDER BY seq DESC LIMIT 10").fetchall()
    assert wait_until(lambda: any(row[1] == "gw-0001" for row in refused_at_broker()), 60)
    prom = pathlib.Path(runenv["SUIDO_RUN"]) / "state" / "metrics" / "mosquitto.prom"
    assert wait_until(lambda: any(line.startswith("suido_broker_refused_state_total ")
                                  and float(line.split()[1]) > 0
                                  for line in prom.read_text().splitlines()), 10)


def test_a_process_that_exits_fails_the_run(runenv):
    # in the background: the simulator refuses its arguments, the run says so and exits 1
    bad = dict(runenv, SUIDO_RATE="not-a-number")
    r = suite_sh(bad, "run", "--detach")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gateway-sim exited" in r.stderr and "the suite is stopped" in r.stderr, r.stderr
    assert no_pid_files(runenv)

    # in the foreground: a service killed later stops the whole run, non-zero (the first
    # operator exists already: wait for this run's own processes)
    pids = pathlib.Path(runenv["SUIDO_RUN"]) / "pids"
    p = subprocess.Popen([str(SCRIPT), "run"], env=runenv, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: (pids / "gateway-sim.pid").exists()
                          and (pids / "verify.pid").exists(), 120)
        time.sleep(3)
        os.kill(pid_of(runenv, "verify"), signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, out + err
    assert "verify exited" in err, err
    assert no_pid_files(runenv)


def test_make_stop_ends_a_foreground_run_quietly(runenv):
    p = subprocess.Popen([str(SCRIPT), "run"], env=runenv, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _started(runenv), 120)
        time.sleep(3)
        r = suite_sh(runenv, "stop")
        assert r.returncode == 0 and "stopping registry" in r.stdout, r.stdout
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out + err
    assert "stopped (make stop)" in out
    assert "No such file" not in err and "exited" not in err, err
