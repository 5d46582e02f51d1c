"""A real suido suite for integration tests: a deployment made by scripts/mkdeploy.sh (test PKI
included) on free loopback ports, a real Mosquitto and the real service binaries. Tests talk to
it over the wire and read what it stored."""
import contextlib
import json
import os
import pwd
import pathlib
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time

TOP = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("SUIDO_BUILD", TOP / "build"))
BIN = BUILD / "bin"
SERVICES = ["registry", "archive", "anomaly-0", "anomaly-1", "gate", "profile", "verify", "ingest"]


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_base_port(span=66):
    """A base port such that base .. base+span are all free on 127.0.0.1 (the default covers a
    deployment's ports up to its metrics endpoints, scripts/mkdeploy.sh). Below Linux's
    ephemeral ports (32768-60999): there a port free now can become the local end of an outgoing
    connection before a late bind (a promoted standby's input) needs it."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rng.randrange(20000, 32768 - span)
        if all(port_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range")


def wait_until(pred, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def reachable_by_broker(path):
    """The broker runs as its own user (broker/mkconf.sh --user mosquitto), which must be able to
    enter every directory above its files; pytest makes its temporary directories 0700. Adds
    search-only permission (o+x, no listing) to such root-owned directories above path."""
    path = pathlib.Path(path).resolve()
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == 0 and not st.st_mode & 0o001:
            d.chmod(st.st_mode | 0o001)


def broker_owned(path):
    """Gives path (a folder the broker writes in, or a key it reads) to the broker's own user, as
    broker/mkconf.sh does for a deployment, and makes the folders above it enterable."""
    pw = pwd.getpwnam("mosquitto")
    path = pathlib.Path(path)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    reachable_by_broker(path.parent)
    return path


def load_proto(outdir):
    """Compiles proto/suido.proto for Python (protoc from Debian) and imports it."""
    subprocess.run(["protoc", f"--proto_path={TOP/'proto'}", f"--python_out={outdir}",
                    str(TOP / "proto" / "suido.proto")], check=True)
    sys.path.insert(0, str(outdir))
    import suido_pb2  # noqa: E402
    return suido_pb2


class Suite:
    def __init__(self, root, gateways=8, archive_pg=None, standby=False, profile=None):
        """archive_pg: a pg.PostgreSQL server the archive stores into instead of SQLite;
        standby: with a standby archive, "archive-standby" (scripts/mkdeploy.sh --standby);
        profile: a data profile file instead of the example utility's."""
        self.root = pathlib.Path(root)
        self.pg = archive_pg
        self.dir = self.root / "deploy"
        self.base = free_base_port()
        self.port = self.base
        self.procs = {}
        self.token = None
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        reachable_by_broker(self.root)
        env = dict(os.environ, SUIDO_BIN=str(BIN))
        extra = []
        if archive_pg:
            self.root.mkdir(parents=True, exist_ok=True)
            extra = ["--archive-postgresql",
                     str(archive_pg.write_conninfo(self.root / "archive-postgresql.conninfo"))]
        if standby:
            extra.append("--standby")
        if profile:
            extra += ["--profile", str(profile)]
        subprocess.run([str(TOP / "scripts" / "mkdeploy.sh"), str(self.dir), "--gateways",
                        str(gateways), "--base-port", str(self.base), "--test", *extra],
                       check=True, env=env, stdout=subprocess.DEVNULL)

    # ---- processes -----------------------------------------------------------------------
    def _spawn(self, name, argv):
        log = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[name]

    def start_broker(self):
        # as deployed: the persistence file checked (and set aside if cut short), then Mosquitto
        self._spawn("mosquitto", [str(BIN / "suido-broker-start"),
                                  str(self.dir / "mosquitto" / "mosquitto.conf")])
        assert wait_until(lambda: not port_free(self.port), 10), "broker did not listen"

    def service_argv(self, name):
        binary = ("suido-anomaly" if name.startswith("anomaly")
                  else "suido-archive" if name.startswith("archive") else f"suido-{name}")
        return [str(BIN / binary), "-c", str(self.dir / "etc" / f"{name}.conf")]

    def start_service(self, name):
        return self._spawn(name, self.service_argv(name))

    def start(self, without=()):
        """Starts the broker and every service but those named in without (a test starts
        them later with start_service)."""
        self.start_broker()
        for s in SERVICES:
            if s not in without:
                self.start_service(s)
        # ready when ingest and archive hold their MQTT sessions
        ok = wait_until(lambda: self.metric("ingest", "suido_ingest_connected") == 1, 15)
        assert ok, "ingest did not connect:\n" + self.log("ingest")

    def stop(self, name=None, sig=signal.SIGTERM):
        """Stops one process or all (newest first); returns {name: exit code}."""
        names = [name] if name else list(reversed(list(self.procs)))
        codes = {}
        for n in names:
            p = self.procs.get(n)
            if p and p.poll() is None:
                p.send_signal(sig)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p:
                codes[n] = p.returncode
        if name is None:
            self.procs.clear()
        return codes

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def log(self, name):
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # ---- observation ---------------------------------------------------------------------
    def metric(self, svc, name):
        """Value of a metric in a service's Prometheus file (0 if absent)."""
        f = self.dir / "state" / "metrics" / f"{svc}.prom"
        try:
            for line in f.read_text().splitlines():
                if line.startswith("#"):
                    continue
                k, _, v = line.rpartition(" ")
                if k == name:
                    return float(v)
        except FileNotFoundError:
            pass
        return 0

    def seen(self, epoch):
        """How many records of boot epoch `epoch` the archive holds, stored or refused."""
        return self.query("SELECT (SELECT count(*) FROM batches WHERE boot_epoch=?) + "
                          "(SELECT count(*) FROM rejects WHERE boot_epoch=?)", epoch, epoch)[0][0]

    def db(self):
        path = self.dir / "state" / "archive" / "archive.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)

    def query(self, sql, *args):
        if self.pg:
            return self.pg.execute(sql, *args)
        # closed here, not when the collector gets to it: a reader still open when the archive
        # stops keeps the archive from folding its write-ahead log into the file
        with contextlib.closing(self.db()) as c:
            return c.execute(sql, args).fetchall()

    # ---- clients ----------------------------------------------------------------------------
    def sim(self, *args, timeout=60, check=True):
        report = self.root / f"report-{time.monotonic_ns()}.json"
        argv = [str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{self.port}",
                "--deploy", str(self.dir), "--report", str(report), "--quiet", *map(str, args)]
        r = subprocess.run(argv, timeout=timeout, capture_output=True, text=True)
        if check:
            assert r.returncode == 0, f"simulator failed ({r.returncode}):\n{r.stderr[-3000:]}"
        return json.loads(report.read_text()) if report.exists() else None

    def ctl(self, *args, check=True, token=None, stdin=None):
        """Runs suidoctl against this deployment (as the admin logged in by login_admin, unless
        another token is given); returns the CompletedProcess."""
        env = dict(os.environ)
        env.pop("SUIDO_TOKEN", None)
        tok = self.token if token is None else token
        if tok:
            env["SUIDO_TOKEN"] = tok
        r = subprocess.run([str(BIN / "suidoctl"), "-c", str(self.dir / "etc" / "suidoctl.conf"),
                            *map(str, args)], capture_output=True, text=True, timeout=30,
                           env=env, input=stdin)
        if check:
            assert r.returncode == 0, f"suidoctl {args} -> {r.returncode}: {r.stderr}"
        return r

    def add_operator(self, ident, role, password):
        """Adds an operator; returns its TOTP secret (base32)."""
        r = self.ctl("--json", "operator", "add", ident, "--role", role, stdin=password + "\n")
        return json.loads(r.stdout)["totp_secret"]

    def login(self, ident, password, code, source="test-console", check=True):
        r = self.ctl("--json", "login", ident, "--totp", code, "--source", source,
                     stdin=password + "\n", token="", check=check)
        return json.loads(r.stdout)["token"] if r.returncode == 0 else r

    def login_admin(self):
        """The deployment's first operator (added without a session), logged in."""
        from wire import totp
        self.admin_password = "correct horse battery staple"
        # the registry may still be starting (slowly, under the sanitizers)
        assert wait_until(lambda: self.ctl("gateway", "list", check=False).returncode == 1
                          and "denied" in self.ctl("gateway", "list", check=False).stderr, 30), \
            "registry not answering:\n" + self.log("registry")
        self.admin_secret = self.add_operator("admin", "admin", self.admin_password)
        self.token = self.login("admin", self.admin_password, totp(self.admin_secret))

    def monitor_session(self, operator, password, secret):
        """An HTTPS session of operator (TOTP secret: secret) with the monitor started by
        start_service("monitor"), through its login form's flow: returns call(method, path,
        body=None) -> (status, decoded JSON)."""
        import http.client
        import ssl
        from wire import totp
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca" / "ca.crt"))
        port = self.base + 9
        cookies, csrf = {}, [""]

        def call(method, path, body=None):
            c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
            h = {"Host": f"localhost:{port}"}
            if cookies:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            if body is not None:
                body = json.dumps(body)
                h["Content-Type"] = "application/json"
                h["X-CSRF-Token"] = csrf[0]
            try:
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
                data = r.read()
                for k, v in r.getheaders():
                    if k.lower() == "set-cookie":
                        name, _, rest = v.partition("=")
                        cookies[name] = rest.split(";", 1)[0]
                return r.status, json.loads(data or b"null")
            finally:
                c.close()

        status, form = call("GET", "/api/login")
        assert status == 200, form
        csrf[0] = form["csrf"]
        status, r = call("POST", "/api/login", {"operator": operator, "password": password,
                                                 "totp": totp(secret)})
        assert status == 200, r
        csrf[0] = r["csrf"]
        return call

    def tls_files(self, who):
        """(cert, key) of a gateway, service or test identity."""
        for sub in ("gateways", "services", "test"):
            d = self.dir / sub / who
            if d.is_dir():
                return str(d / "client.crt"), str(d / "client.key")
        raise KeyError(who)


@contextlib.contextmanager
def running_suite(root, suite=None, **kw):
    """A Suite(root, **kw), or the suite given, started and its first operator logged in
    (suite.token); stopped when the block ends, every process having to exit cleanly."""
    s = suite or Suite(root, **kw)
    try:
        s.start()
        s.login_admin()
        yield s
    finally:
        codes = s.stop()
        failed = {n: c for n, c in codes.items() if c != 0}
        assert not failed, f"processes exited with errors: {failed}"
