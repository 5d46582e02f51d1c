"""`make test-compose`: the whole suite as containers (compose/docker-compose.yml, images from
`make images`) in a compose project of its own, with the gateway simulator and its outbox
running through every step:

1. every container (the archive standby too) is hardened as the compose file says (own uid, read-only root, no
   capability, no-new-privileges, tmpfs /tmp, its own folder read-only on /deploy);
2. readings flow end to end;
3. Prometheus scrapes every daemon over mutual TLS: every target of compose/prometheus.yml is up
   (its HTTP API, on the host's loopback only); the monitor's console answers HTTPS on the
   host's loopback with the certificate the deployment CA issued for it;
4. isolation, probed from inside every container with bash's /dev/tcp against every address and
   port of every other container: a socket is reachable exactly from the peers of its
   allow-list (docs/architecture.md), so the simulator reaches only the broker, verify, profile
   and anomaly never reach the broker; a daemon's metrics port only from Prometheus, which
   reaches nothing else and is reached by no container; the monitor reaches the registry's and
   the archive's APIs, the archive's input (its audit events) and the broker, and no container
   reaches its console; no container can read another's
   private key (the scraper's key is Prometheus's alone);
5. verify scaled to 3 replicas and profile to 2 under load: every replica takes frames and is
   scraped; back to 1, and so are the targets;
6. containers killed (docker kill) and started again under load, and one restarted by its
   restart policy after its process ended; then every target is up again;
7. the simulator stopped in order (it waits for the acks of what it sent): its report's sent
   ranges are all in the archive, nothing is missing (`suidoctl archive gaps`, run as the
   archive's user on its volume, read-only), its outbox is empty;
8. the archive's volume restored from a copy older than what was acknowledged since: the
   archive reports each gateway's run acknowledged and no longer held, and `archive gaps`
   lists them (exit 4).

Every compose command goes through the deployment's own DIR/dc (scripts/mkdeploy.sh --compose),
with the test's project name, ports and load written into its DIR/compose.env, as an operator
would; and the operations of docs/operations.md are walked on the running deployment under load:
the broker published on the address given to mkdeploy (--broker-bind) through a rerun of mkdeploy
and an upgrade by a plain `dc up -d` with a new image tag; compose/mkfolders.sh refusing a
deployment that lacks a key file; compose/rotate-curve.sh restarting only the service and the
peers that read its key; compose/renew-scraper.sh (Prometheus scrapes with the new certificate,
the old one is on the CRL and refused).

Everything (containers, networks, volumes, the deployment folder) is removed at the end, also
when a step fails; the containers' logs are kept in BUILD/compose-test/<project>.log.

A deployment has 27 networks and Docker's default address pools give 31, so two runs cannot
share a host: a run waits for the one before it to end (an exclusive lock on
SUIDO_COMPOSE_LOCK, default /tmp/suido-compose-test.lock)."""
import calendar
import contextlib
import fcntl
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

TOP = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = TOP / "compose" / "docker-compose.yml"
BUILD = pathlib.Path(os.environ.get("SUIDO_BUILD", TOP / "build"))
GATEWAYS = 10
RATE = 2  # batches per second per gateway: the load every step runs under
# the broker's published address (mkdeploy --broker-bind): not the default, and checkable here
BROKER_BIND = "127.0.0.2"

LOCK = pathlib.Path(os.environ.get("SUIDO_COMPOSE_LOCK", "/tmp/suido-compose-test.lock"))
LOCK_WAIT = 1200  # seconds: longer than a run

UIDS = {n: int(u) for n, u in (line.split() for line in (TOP / "compose" / "uids").read_text()
                                   .splitlines() if line.strip() and not line.startswith("#"))}

# Server sockets and who may connect (the allow-lists of scripts/mkdeploy.sh, the broker's
# listener and ACL). A container reaches (service, port) iff it is listed here.
PIPELINE = {"verify", "profile", "anomaly-0", "anomaly-1"}
SOCKETS = {
    ("broker", 8883): {"gateway-sim", "ingest", "archive", "gate", "archive-standby", "monitor"},
    ("registry", 7001): PIPELINE | {"archive", "gate", "suidoctl", "archive-standby", "monitor"},
    ("registry", 7005): PIPELINE | {"archive", "gate", "archive-standby"},
    ("archive", 7002): PIPELINE | {"registry", "gate", "ingest", "monitor"},
    ("archive", 7008): {"suidoctl", "monitor"},
    ("archive", 7020): {"archive-standby"},          # replication
    ("archive-standby", 7021): set(),                # its input: bound only once promoted
    ("archive-standby", 7022): {"suidoctl"},
    ("profile", 7003): {"verify"},
    ("verify", 7004): {"ingest"},
    ("gate", 7006): {"suidoctl"},
    ("gate", 7007): {"profile"},
    ("anomaly-0", 7010): {"profile"},
    ("anomaly-1", 7011): {"profile"},
    ("prometheus", 9090): set(),                     # its API: the host's loopback only
    ("monitor", 8443): set(),                        # the console: the host's loopback only
}
# every daemon's metrics endpoint (its port read from its configuration) admits Prometheus only
SCRAPER = "prometheus"
SERVICES = ["broker", "registry", "archive", "archive-standby", "verify", "profile", "anomaly-0",
            "anomaly-1", "gate", "ingest", "monitor", "prometheus"]
# the targets of compose/prometheus.yml: job -> containers (one target per replica)
JOBS = {"registry": ["registry"], "ingest": ["ingest"], "verify": ["verify"],
        "profile": ["profile"], "anomaly": ["anomaly-0", "anomaly-1"], "archive": ["archive"],
        "archive-standby": ["archive-standby"], "gate": ["gate"], "monitor": ["monitor"]}


def wait_until(pred, timeout, step=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def run(cmd, timeout=120, check=True, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout[-3000:]}"
                             f"\n{r.stderr[-3000:]}")
    return r


def read_env(path):
    """KEY=VALUE lines of a compose.env, in order."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def set_env(path, **settings):
    """Sets KEY=VALUE in a compose.env (in place where the key is, else appended), as an
    operator edits it."""
    lines, todo = path.read_text().splitlines(), dict(settings)
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0]
        if not line.startswith("#") and key in todo:
            lines[i] = f"{key}={todo.pop(key)}"
    lines += [f"{k}={v}" for k, v in todo.items()]
    path.write_text("\n".join(lines) + "\n")


class Project:
    def __init__(self, name, deploy):
        self.name, self.deploy = name, deploy
        # the deployment's settings are its compose.env's alone: none from this environment
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SUIDO_", "COMPOSE_"))}
        self.env["COMPOSE_HTTP_TIMEOUT"] = "300"

    def dc(self, *args, timeout=300, check=True):
        """DIR/dc ARGS: the deployment's one command (docker-compose with its project name,
        its compose.env and the repository's compose file), run from another directory."""
        return run([self.deploy / "dc", *args], timeout=timeout, check=check, env=self.env,
                   cwd="/")

    def containers(self, service=None):
        cmd = ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
               f"label=com.docker.compose.project={self.name}"]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        return sorted(run(cmd).stdout.split())

    def one(self, service):
        c = self.containers(service)
        assert len(c) == 1, f"{service}: {c}"
        return c[0]

    def inspect(self, container):
        return json.loads(run(["docker", "inspect", container]).stdout)[0]

    def sh(self, container, script, timeout=60, check=True):
        return run(["docker", "exec", container, "bash", "-c", script], timeout=timeout,
                   check=check)

    def metric(self, container, file, name):
        r = self.sh(container, f"cat /var/lib/suido/{file}.prom", check=False)
        m = re.search(rf"^{name} (\d+)", r.stdout, re.M)
        return int(m.group(1)) if m else 0

    def healthy(self, container):
        st = self.inspect(container)["State"]
        return st["Running"] and st.get("Health", {}).get("Status", "healthy") == "healthy"

    def wait_healthy(self, services, timeout=120):
        def ok():
            return all(self.containers(s) and all(self.healthy(c) for c in self.containers(s))
                       for s in services)
        assert wait_until(ok, timeout), self.dc("ps").stdout

    def logs(self, service):
        return self.dc("logs", "--no-color", service, check=False).stdout

    def archived(self):
        return self.metric(self.one("archive"), "archive", "suido_archive_batches_total")

    def prometheus(self, path):
        """GET path of Prometheus's HTTP API through its published port (host loopback only)."""
        port = self.inspect(self.one("prometheus"))["NetworkSettings"]["Ports"]["9090/tcp"]
        assert [b["HostIp"] for b in port] == ["127.0.0.1"], port
        with urllib.request.urlopen(f"http://127.0.0.1:{port[0]['HostPort']}{path}",
                                    timeout=10) as r:
            return json.load(r)["data"]

    def targets(self):
        """{job: {instance-address: (health, last error)}} of Prometheus's active targets, the
        instance as the address scraped (a network name resolved, or a replica's address)."""
        out = {}
        for t in self.prometheus("/api/v1/targets?state=active")["activeTargets"]:
            out.setdefault(t["labels"]["job"], {})[t["labels"]["instance"]] = \
                (t["health"], t["lastError"])
        return out

    def metrics_address(self, container, svc):
        """The container's address on its metrics network (<svc>-metrics)."""
        nets = self.inspect(container)["NetworkSettings"]["Networks"]
        return nets[f"{self.name}_{svc}-metrics"]["IPAddress"]

    def scraped(self, jobs):
        """True when Prometheus's targets are exactly one per running container of each job in
        jobs, every one up: static targets by their <svc>-metrics:port name, the replicas of a
        scaled service by their addresses on its metrics network."""
        have = self.targets()
        for job, services in jobs.items():
            got = have.get(job, {})
            if any(h != "up" for h, _ in got.values()):
                return False
            if job in ("verify", "profile"):
                want = {self.metrics_address(c, job) for c in self.containers(job)}
                if {i.rsplit(":", 1)[0] for i in got} != want:
                    return False
            elif {i.rsplit(":", 1)[0] for i in got} != {f"{s}-metrics" for s in services}:
                return False
        return True


@contextlib.contextmanager
def host_lock():
    """One run at a time on this Docker host (its address pools hold one deployment's
    networks); waits up to LOCK_WAIT for a run that holds it."""
    with open(LOCK, "a") as f:
        end = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < end, f"{LOCK} held for {LOCK_WAIT} s by another run"
                time.sleep(2)
        yield


@pytest.fixture(scope="module")
def project():
    assert (BUILD / "bin" / "suido-verify").exists(), f"no build in {BUILD}"
    missing = [i for i in ("broker", "registry", "ingest", "verify", "profile", "anomaly", "anomaly-1",
                           "archive", "gate", "gateway-sim", "tools", "monitor", "prometheus")
               if run(["docker", "image", "inspect", f"suido/{i}:latest"], check=False).returncode]
    assert not missing, f"images missing (make images): {missing}"
    with host_lock():
        yield from running_project()


def mkdeploy(deploy, *extra):
    """scripts/mkdeploy.sh DEPLOY --compose --standby ... as the test deploys it."""
    return run([TOP / "scripts" / "mkdeploy.sh", deploy, "--compose", "--standby", "--gateways",
                GATEWAYS, "--broker-bind", BROKER_BIND, *extra],
               env=dict(os.environ, SUIDO_BIN=str(BUILD / "bin")), timeout=300)


def running_project():
    deploy = pathlib.Path(tempfile.mkdtemp(prefix="suido-compose-"))
    p = Project(f"suidotest{os.getpid()}", deploy)
    logdir = BUILD / "compose-test"
    logdir.mkdir(parents=True, exist_ok=True)
    try:
        mkdeploy(deploy)
        # the test's own settings, in the deployment's compose.env as an operator sets them: its
        # project name, ports Docker chooses (never the host's 8883, 8443, 9090), the simulator
        # and its load
        set_env(deploy / "compose.env", COMPOSE_PROJECT_NAME=p.name, SUIDO_BROKER_PORT="",
                SUIDO_MONITOR_PORT="", SUIDO_PROMETHEUS_PORT="",
                COMPOSE_PROFILES="standby,simulator", SUIDO_RATE=str(RATE),
                SUIDO_WAIT_ACKS="150")
        p.dc("up", "-d", timeout=600)
        p.wait_healthy(SERVICES + ["gateway-sim"], 180)
        yield p
    finally:
        if (deploy / "dc").exists():
            (logdir / f"{p.name}.log").write_text(p.dc("logs", "--no-color", "-t", check=False,
                                                       timeout=120).stdout)
        run(["docker", "rm", "-f", f"{p.name}_probe"], check=False)
        if (deploy / "dc").exists():
            p.dc("--profile", "standby", "--profile", "simulator", "--profile", "tools", "down",
                 "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)
        for image in run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                          "--filter", f"reference=suido/*:{p.name}"], check=False).stdout.split():
            run(["docker", "rmi", image], check=False)
        shutil.rmtree(deploy, ignore_errors=True)
        left = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={p.name}"],
                   check=False).stdout.split()
        left += run(["docker", "network", "ls", "-q", "--filter", f"name={p.name}_"],
                    check=False).stdout.split()
        left += run(["docker", "volume", "ls", "-q", "--filter", f"name={p.name}_"],
                    check=False).stdout.split()
        assert not left, f"left behind: {left}"


def test_every_container_is_hardened_and_runs_as_its_own_user(project):
    seen = {}
    for svc in SERVICES + ["gateway-sim"]:
        c = project.one(svc)
        info = project.inspect(c)
        hc = info["HostConfig"]
        assert info["Config"]["User"] == f"{UIDS[svc]}:{UIDS[svc]}", c
        assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"], c
        assert "no-new-privileges:true" in hc["SecurityOpt"], c
        assert "/tmp" in (hc.get("Tmpfs") or {}), c
        binds = [m for m in info["Mounts"] if m["Type"] == "bind"]
        assert [(m["Source"], m["Destination"], m["RW"]) for m in binds] == \
            [(str(project.deploy / "compose" / svc), "/deploy", False)], c
        vols = {m["Destination"] for m in info["Mounts"] if m["Type"] == "volume"}
        assert vols <= {"/var/lib/suido", "/var/lib/suido-identities", "/var/lib/prometheus"}, \
            (c, vols)
        r = project.sh(c, "id -u; id -g; touch /probe 2>/dev/null && echo writable || echo ro; "
                          "touch /tmp/probe && echo tmp-ok")
        uid, gid, root, tmp = r.stdout.split()
        assert (int(uid), int(gid), root, tmp) == (UIDS[svc], UIDS[svc], "ro", "tmp-ok"), c
        seen[svc] = int(uid)
    assert len(set(seen.values())) == len(seen), seen


def test_readings_flow_end_to_end(project):
    before = project.archived()
    assert wait_until(lambda: project.archived() > before + 5 * GATEWAYS, 90), \
        project.logs("gateway-sim")[-3000:]
    sim = project.logs("gateway-sim")
    assert f"connected={GATEWAYS}/{GATEWAYS}" in sim, sim[-2000:]


def test_prometheus_scrapes_every_daemon_over_mutual_tls(project):
    # every target up: each daemon's endpoint accepted the scraper's certificate and Prometheus
    # accepted the daemon's for the name it was issued to
    assert wait_until(lambda: project.scraped(JOBS), 60, step=2), project.targets()
    # what it stores is each daemon's own count of the scrapes its endpoint served
    r = project.prometheus("/api/v1/query?query=" + urllib.parse.quote(
        "count by (job) (suido_metrics_http_requests_total)"))
    counts = {e["metric"]["job"]: int(e["value"][1]) for e in r["result"]}
    assert counts == {job: len(services) for job, services in JOBS.items()}, counts


def test_the_monitor_answers_https_on_the_hosts_loopback_only(project):
    port = project.inspect(project.one("monitor"))["NetworkSettings"]["Ports"]["8443/tcp"]
    assert [b["HostIp"] for b in port] == ["127.0.0.1"], port
    # the deployment CA's certificate for the console, checked for the name it was issued to
    ctx = ssl.create_default_context(cafile=str(project.deploy / "ca" / "ca.crt"))
    with urllib.request.urlopen(f"https://localhost:{port[0]['HostPort']}/login", timeout=10,
                                context=ctx) as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"], r.headers
    # on its own network only: the name it binds is an alias on monitor-web
    conf = (project.deploy / "compose" / "monitor" / "etc" / "monitor.conf").read_text()
    assert re.search(r"^bind = monitor-web:8443$", conf, re.M), conf


def addresses(project, container):
    nets = project.inspect(container)["NetworkSettings"]["Networks"]
    return sorted(n["IPAddress"] for n in nets.values() if n.get("IPAddress"))


def metrics_ports(project, svc):
    """The daemon's HTTPS metrics port (bound on its address on <svc>-metrics)."""
    conf = project.deploy / "compose" / svc / "etc" / f"{svc}.conf"
    if not conf.exists():
        return []
    return [int(p) for p in re.findall(r"^listen = [^:]+:(\d+)$", conf.read_text(), re.M)]


def test_each_socket_is_reachable_only_from_the_peers_on_its_allow_list(project):
    # an operator's suidoctl container too: it must reach the three APIs and nothing else
    project.dc("--profile", "tools", "run", "-d", "--name", f"{project.name}_probe",
               "--entrypoint", "/bin/sleep", "suidoctl", "600")
    sources = {svc: project.one(svc) for svc in SERVICES + ["gateway-sim"]}
    sources["suidoctl"] = f"{project.name}_probe"
    targets = {svc: addresses(project, c) for svc, c in sources.items()}
    metrics = {svc: set(metrics_ports(project, svc)) for svc in sources}
    assert all(metrics[svc] for svc in SERVICES if svc not in ("broker", "prometheus")), metrics
    probes = set()
    for svc, ips in targets.items():
        ports = {p for (s, p) in SOCKETS if s == svc} | metrics[svc]
        probes |= {(svc, ip, p) for ip in ips for p in ports}
    wrong = []
    for src, c in sources.items():
        todo = sorted((t, ip, p) for (t, ip, p) in probes if t != src)
        script = "\n".join(
            f'(timeout 3 bash -c "exec 3<>/dev/tcp/{ip}/{p}" 2>/dev/null && echo "{t} {ip} {p} open"'
            f' || echo "{t} {ip} {p} closed") &' for t, ip, p in todo) + "\nwait\n"
        out = project.sh(c, script, timeout=120).stdout.split("\n")
        results = {}
        for line in filter(None, out):
            t, ip, p, state = line.split()
            results.setdefault((t, int(p)), []).append(state == "open")
        assert len(out) - 1 >= len(todo), (src, out)
        for (t, p), states in sorted(results.items()):
            allowed = src in SOCKETS.get((t, p), set()) or (src == SCRAPER and p in metrics[t])
            if any(states) and not allowed:
                wrong.append(f"{src} -> {t}:{p} reachable")
            elif allowed and not any(states) and not reaches(project, c, targets[t], p):
                # a peer's connection that timed out among a hundred parallel probes on a busy
                # host is tried again, alone, with more time, before it counts as refused
                wrong.append(f"{src} -> {t}:{p} unreachable")
    assert not wrong, "\n".join(wrong)


def reaches(project, container, ips, port):
    """True when container opens a TCP connection to port on one of ips, probing one at a
    time with 10 s each."""
    script = " || ".join(f'timeout 10 bash -c "exec 3<>/dev/tcp/{ip}/{port}" 2>/dev/null'
                         for ip in ips)
    return project.sh(container, script, timeout=60, check=False).returncode == 0


def test_no_container_can_read_another_services_private_key(project):
    owners = {}
    for svc in SERVICES + ["gateway-sim"]:
        c = project.one(svc)
        r = project.sh(c, r"find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o "
                          r"-type f -name '*.key' -readable -print0 | xargs -0 -r sha256sum")
        keys = dict(reversed(line.split()) for line in r.stdout.splitlines())
        own = {"/deploy/" + str(k.relative_to(project.deploy / "compose" / svc))
               for k in (project.deploy / "compose" / svc).rglob("*.key")}
        assert set(keys) == own, (svc, sorted(set(keys) ^ own))
        for digest in keys.values():
            # the two anomaly shards are one service identity, and so share its key
            owners.setdefault(digest, set()).add(re.sub(r"^anomaly-\d+$", "anomaly", svc))
    shared = {d: o for d, o in owners.items() if len(o) > 1}
    assert not shared, shared
    # the scraper's key, which every metrics endpoint admits, is Prometheus's alone
    scraper = hashlib.sha256((project.deploy / "prometheus" / "client.key").read_bytes())
    assert owners.get(scraper.hexdigest()) == {"prometheus"}, owners.get(scraper.hexdigest())
    # and the folders on the host: each belongs to its container's user alone
    for svc in SERVICES + ["gateway-sim"]:
        st = (project.deploy / "compose" / svc).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (UIDS[svc], 0o700), svc


def test_mkfolders_refuses_a_deployment_that_lacks_a_key_file(project):
    # a container's folder without its key would only loop on restarts: mkfolders names the file
    # and the container, exits non-zero and changes no folder
    key = project.deploy / "services" / "gate" / "curve.key"
    aside = key.with_name("curve.key.aside")
    key.rename(aside)
    try:
        r = run([TOP / "compose" / "mkfolders.sh", project.deploy], check=False)
    finally:
        aside.rename(key)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "container gate" in r.stderr and str(key) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (project.deploy / "compose" / "gate" / "services" / "gate" / "curve.key").exists()
    assert not list((project.deploy / "compose").glob(".stage.*"))


def broker_address(project):
    """(host address, port) the broker is published on (docker port)."""
    out = run(["docker", "port", project.one("broker"), "8883/tcp"]).stdout.split()
    assert len(out) == 1, out
    host, port = out[0].rsplit(":", 1)
    return host, int(port)


def broker_handshake(project, host, port):
    """A gateway's TLS handshake with the broker at host:port, its certificate checked."""
    ctx = ssl.create_default_context(cafile=str(project.deploy / "ca" / "ca.crt"))
    gw = project.deploy / "gateways" / "gw-0001"
    ctx.load_cert_chain(str(gw / "client.crt"), str(gw / "client.key"))
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="broker") as tls:
            return tls.version()


def test_the_deployments_settings_outlive_a_rerun_and_an_upgrade(project):
    env = project.deploy / "compose.env"
    assert broker_address(project)[0] == BROKER_BIND
    # mkdeploy again (as for more gateways) with another --broker-bind: compose.env keeps what
    # it holds, the operator's edits too, and only a setting it lacks is added
    settings = read_env(env)
    assert settings["SUIDO_BROKER_BIND"] == BROKER_BIND
    env.write_text("\n".join(line for line in env.read_text().splitlines()
                             if not line.startswith("SUIDO_PROMETHEUS_RETENTION=")) + "\n")
    r = mkdeploy(project.deploy, "--broker-bind", "127.0.0.1")
    assert f"keeps SUIDO_BROKER_BIND={BROKER_BIND}" in r.stderr, r.stderr
    after = read_env(env)
    assert after == settings, (settings, after)
    # an upgrade: a new image tag in compose.env, then a plain `dc up -d` (no variable in its
    # environment) recreates every container on the new images, the broker on the same address
    tag = project.name
    for image in run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                      "reference=suido/*:latest"]).stdout.split():
        run(["docker", "tag", image, image.rsplit(":", 1)[0] + ":" + tag])
    set_env(env, SUIDO_TAG=tag)
    project.dc("up", "-d", timeout=600)
    project.wait_healthy(SERVICES + ["gateway-sim"], 180)
    before = project.archived()      # the new archive's count
    for svc in SERVICES + ["gateway-sim"]:
        image = project.inspect(project.one(svc))["Config"]["Image"]
        assert image.endswith(":" + tag), (svc, image)
    host, port = broker_address(project)
    assert host == BROKER_BIND, host
    assert broker_handshake(project, host, port), (host, port)
    assert wait_until(lambda: project.archived() > before + 5 * GATEWAYS, 90), \
        project.logs("gateway-sim")[-3000:]


def received(project, container, file):
    return project.metric(container, file, "suido_stage_received_total")


def test_scaled_verify_and_profile_share_the_load_and_scale_back(project):
    project.dc("up", "-d", "--no-recreate", "--scale", "verify=3", "--scale", "profile=2",
               timeout=300)
    project.wait_healthy(["verify", "profile"], 120)
    verifiers, profiles = project.containers("verify"), project.containers("profile")
    assert len(verifiers) == 3 and len(profiles) == 2
    base = {c: received(project, c, "verify") for c in verifiers}
    base |= {c: received(project, c, "profile") for c in profiles}
    # ingest follows verify-in, verify follows profile-in: every replica gets frames
    assert wait_until(lambda: all(received(project, c, "verify") > base[c] for c in verifiers)
                      and all(received(project, c, "profile") > base[c] for c in profiles), 60), \
        {c: (base[c], received(project, c, "verify" if "verify" in c else "profile"))
         for c in base}
    # Prometheus finds each replica by DNS on its metrics network and scrapes it
    scaled = {"verify": JOBS["verify"], "profile": JOBS["profile"]}
    assert wait_until(lambda: project.scraped(scaled), 90, step=2), project.targets()
    project.dc("up", "-d", "--no-recreate", "--scale", "verify=1", "--scale", "profile=1",
               timeout=300)
    assert len(project.containers("verify")) == 1 and len(project.containers("profile")) == 1
    assert wait_until(lambda: project.logs("ingest").count("event=replica_gone") >= 2, 30), \
        project.logs("ingest")[-3000:]
    before = project.archived()
    assert wait_until(lambda: project.archived() > before + 2 * GATEWAYS, 90)
    # the targets of the replicas that went are gone
    assert wait_until(lambda: project.scraped(scaled), 60, step=2), project.targets()


def started(project):
    """{container: its start time} of every container of the project."""
    return {c: project.inspect(c)["State"]["StartedAt"] for c in project.containers()}


def test_rotating_a_curve_key_restarts_only_the_service_and_its_peers(project):
    keys = project.deploy / "services" / "anomaly"
    old_pub = (keys / "curve.pub").read_bytes()
    before = started(project)
    r = run([TOP / "compose" / "rotate-curve.sh", project.deploy, "anomaly"], timeout=300,
            env=dict(project.env, SUIDO_BIN=str(BUILD / "bin")))
    assert (keys / "curve.pub").read_bytes() != old_pub
    kept = sorted(keys.glob("curve.pub.*"))
    assert len(kept) == 1 and kept[0].read_bytes() == old_pub, kept
    # the anomaly shards (one identity, two containers), the client that names their key as
    # server_key (profile, [output anomaly]) and the servers whose allow-lists admit them
    # (registry, archive, archive-standby); nothing else, the simulator and the broker least of all
    want = {"anomaly-0", "anomaly-1", "profile", "registry", "archive", "archive-standby"}
    after = started(project)
    restarted = {project.inspect(c)["Config"]["Labels"]["com.docker.compose.service"]
                 for c in after if after[c] != before.get(c)}
    assert restarted == want, (restarted, r.stdout)
    assert "restarted" in r.stdout, r.stdout
    project.wait_healthy(SERVICES, 120)
    # profile reaches the shards with their new key, and the readings go on being stored (the
    # counts are the restarted processes')
    assert wait_until(lambda: all(received(project, project.one(c), c) > 5
                                  for c in ("anomaly-0", "anomaly-1")), 60)
    assert wait_until(lambda: project.archived() > 5 * GATEWAYS, 90)
    for svc in ("anomaly-0", "profile", "archive", "registry"):
        assert project.metric(project.one(svc), svc, "suido_zap_denied_total") == 0, svc


def serial(cert):
    return run(["openssl", "x509", "-in", cert, "-noout", "-serial"]).stdout.strip().split("=")[1]


def scrape_with(project, cert, key):
    """GET /metrics of verify's endpoint (its address on verify-metrics) with that client
    certificate: the HTTP status, or the TLS error's name."""
    addr = project.metrics_address(project.one("verify"), "verify")
    ctx = ssl.create_default_context(cafile=str(project.deploy / "ca" / "ca.crt"))
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection((addr, 7042), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="verify") as tls:
                tls.sendall(b"GET /metrics HTTP/1.0\r\nHost: verify\r\n\r\n")
                return tls.recv(64).split()[1].decode()
    except (ssl.SSLError, ConnectionError, IndexError) as e:
        return type(e).__name__


def test_renewing_the_scrapers_certificate(project, tmp_path):
    scraper = project.deploy / "prometheus"
    old_crt, old_key = tmp_path / "old.crt", tmp_path / "old.key"
    shutil.copy(scraper / "client.crt", old_crt)
    shutil.copy(scraper / "client.key", old_key)
    old = serial(old_crt)
    r = run([TOP / "compose" / "renew-scraper.sh", project.deploy], timeout=300,
            env=project.env)
    done = time.time()
    new = serial(scraper / "client.crt")
    assert new != old, r.stdout
    # in Prometheus's folder, and the old one on the CRL that every endpoint reads
    assert (project.deploy / "compose" / "prometheus" / "prometheus" / "client.crt").read_bytes() \
        == (scraper / "client.crt").read_bytes()
    crl = run(["openssl", "crl", "-in", project.deploy / "compose" / "verify" / "ca" / "crl.pem",
               "-noout", "-text"]).stdout
    assert f"Serial Number: {old}" in crl, crl
    # an endpoint refuses the old certificate (it reads its CRL again within 5 s) and takes the
    # new one
    assert wait_until(lambda: scrape_with(project, old_crt, old_key) != "200", 20, step=1)
    assert scrape_with(project, scraper / "client.crt", scraper / "client.key") == "200"

    # every target scraped since (new connections: the old certificate would be refused), up
    def scraped_since():
        ts = project.prometheus("/api/v1/targets?state=active")["activeTargets"]
        return all(t["health"] == "up" and calendar.timegm(
                   time.strptime(t["lastScrape"][:19], "%Y-%m-%dT%H:%M:%S")) > done + 6
                   for t in ts)
    assert wait_until(scraped_since, 60, step=2), project.targets()
    assert project.scraped(JOBS), project.targets()


def test_killed_containers_are_started_again_under_load(project):
    for svc in ["verify", "profile", "ingest", "anomaly-0", "archive", "gate", "broker",
                "registry", "gateway-sim", "prometheus"]:
        c = project.one(svc)
        run(["docker", "kill", c])
        time.sleep(1)
        run(["docker", "start", c])
        project.wait_healthy([svc], 120)
    # a process that ends is started again by the restart policy
    c = project.one("verify")
    restarts = project.inspect(c)["RestartCount"]
    project.sh(c, "kill -TERM 1")
    assert wait_until(lambda: project.inspect(c)["RestartCount"] > restarts, 60)
    project.wait_healthy(SERVICES, 120)
    before = project.archived()
    assert wait_until(lambda: project.archived() > before + 5 * GATEWAYS, 120), \
        project.logs("gateway-sim")[-3000:]
    # Prometheus (its TSDB on its volume) scrapes every daemon again, at their new addresses
    assert wait_until(lambda: project.scraped(JOBS), 90, step=2), project.targets()


def test_nothing_sent_is_missing_from_the_archive(project):
    sim = project.one("gateway-sim")
    # an orderly stop: no new batch, then the simulator waits (--wait-acks) until the acks cover
    # everything it sent, resending what was lost in a vanished replica's pipe
    project.dc("stop", "-t", "180", "gateway-sim", timeout=300)
    assert project.inspect(sim)["State"]["ExitCode"] == 0, project.logs("gateway-sim")[-3000:]
    tar = subprocess.run(["docker", "cp", f"{sim}:/var/lib/suido/report.json", "-"],
                         capture_output=True, timeout=60, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        report = json.load(t.extractfile("report.json"))
    gaps = project.dc("--profile", "tools", "run", "--rm", "archive-check", "--json", "archive",
                      "gaps", check=False)
    assert gaps.returncode == 0, gaps.stdout[-3000:] + gaps.stderr[-2000:]
    archive = json.loads(gaps.stdout)
    assert archive["missing"] == 0
    stored = {(e["gateway"], e["boot_epoch"]): e for e in archive["epochs"]}
    assert len(report["gateways"]) == GATEWAYS
    for g in report["gateways"]:
        gw = g["id"]
        assert g["outbox"]["records"] == 0, (gw, g["outbox"])
        assert g["sent_ranges"], gw
        for r in g["sent_ranges"]:
            e = stored.get((gw, r["boot_epoch"]))
            assert e and e["highest"] >= r["last_seq"] and e["missing"] == 0, (gw, r, e)


def volume_copy(project, src, dst, clear=False):
    """Copies volume src into volume dst as root, with no network (the guide's backup and
    restore); clear: empties dst first."""
    script = ("find /b -mindepth 1 -delete && " if clear else "") + "cp -a /a/. /b/"
    run(["docker", "run", "--rm", "--user", "0", "--network", "none", "-v", f"{src}:/a:ro",
         "-v", f"{dst}:/b", "suido/tools:latest", "sh", "-c", script], timeout=300)


def sim_report(project):
    sim = project.one("gateway-sim")
    tar = subprocess.run(["docker", "cp", f"{sim}:/var/lib/suido/report.json", "-"],
                         capture_output=True, timeout=60, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return json.load(t.extractfile("report.json"))


def test_restoring_an_older_archive_volume_reports_what_was_acknowledged_after_it(project):
    """docs/operations.md, "Back up and restore": the archive's volume copied while it is
    stopped, data acknowledged after that, then the copy restored (the registry's volume kept):
    the archive reports at start, per gateway, the runs acknowledged and no longer held, and
    `archive gaps` lists them (exit 4). Runs last: the deployment has lost data after it."""
    data, copy = f"{project.name}_archive-data", f"{project.name}_archive-copy"
    try:
        project.dc("stop", "archive")
        volume_copy(project, data, copy)
        project.dc("start", "archive")
        project.wait_healthy(["archive"], 120)
        # the simulator runs again (a new boot epoch) until the acks cover what it sent
        project.dc("start", "gateway-sim")
        before = project.archived()
        assert wait_until(lambda: project.archived() > before + 10 * GATEWAYS, 120), \
            project.logs("gateway-sim")[-3000:]
        project.dc("stop", "-t", "180", "gateway-sim", timeout=300)
        after = {g["id"]: g for g in sim_report(project)["gateways"]}
        time.sleep(5)  # the archive hands its published acks to the registry within 2 s
        project.dc("stop", "archive")
        volume_copy(project, copy, data, clear=True)
        project.dc("start", "archive")
        project.wait_healthy(["archive"], 120)
        gaps = project.dc("--profile", "tools", "run", "--rm", "archive-check", "--json",
                          "archive", "gaps", check=False)
        assert gaps.returncode == 4, gaps.stdout[-3000:] + gaps.stderr[-2000:]
        out = json.loads(gaps.stdout)
        assert out["missing"] == 0
        lost = {(r["gateway"], r["boot_epoch"]): (r["first"], r["last"])
                for r in out["lost_ranges"]}
        for gw, g in after.items():
            assert lost.get((gw, g["boot_epoch"])) == (1, g["acked_seq"]), (gw, g, lost)
        assert "acknowledged to the gateway and not held" in project.logs("archive")
    finally:
        run(["docker", "volume", "rm", "-f", copy], check=False)
