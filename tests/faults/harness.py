"""What every fault scenario shares: the running suite (tests/integration/suite.py), the load of
simulated gateways, the relay that cuts links (proxy.py), tmpfs mounts, and the oracle.

The oracle (fault-plan.md): for each gateway, the (boot epoch, seq) the simulator reports as
taken (`sent_ranges`, read back from its outbox directory, so it survives anything) against the
rows the archive holds for those epochs. Pass = no missing row (gap), no second row for one
(gateway, boot epoch, seq) (duplicate), no row that was never sent (extra), no sequence the
gateway holds an end-to-end ack for that is not stored; `suidoctl archive gaps` must agree.
Copies on the wire that the archive refused (retransmissions, replays) are counted, not failed."""
import contextlib
import gc
import json
import os
import pathlib
import signal
import socket
import sqlite3
import struct
import shutil
import subprocess
import sys
import time
import zlib

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import suite as S  # noqa: E402  (tests/integration/suite.py: the real suite on loopback ports)
import proxy  # noqa: E402  (the relay that cuts links, beside this file)

PY = "/usr/bin/python3"


def now_ms():
    return int(time.time() * 1000)


def gw_id(n):
    return f"gw-{n:04d}"


class ScenarioFailed(Exception):
    """A scenario's own check failed (the message says which); the oracle still runs."""


# ---------------------------------------------------------------------------- simulator runs

class Sim:
    """One run of suido-gateway-sim over a set of gateways with an outbox state directory, its
    one-line-per-second progress on a log file (read live), its report at the end."""

    def __init__(self, h, name, ids, port=None, rate=1, state=None, wait_acks=60, extra=()):
        self.h, self.name, self.ids = h, name, list(ids)
        self.state = state or (h.work / f"state-{name}")
        self.state.mkdir(parents=True, exist_ok=True)
        self.report_file = h.work / f"report-{name}.json"
        self.log_file = h.work / f"sim-{name}.log"
        self.report = None
        argv = [str(S.BIN / "suido-gateway-sim"), "--broker",
                f"ssl://localhost:{port or h.suite.port}", "--deploy", str(h.suite.dir),
                "--ids", ",".join(self.ids), "--rate", str(rate), "--state-dir", str(self.state),
                "--report", str(self.report_file), "--wait-acks", str(wait_acks),
                *map(str, extra)]
        self.log = open(self.log_file, "w")
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log)
        h.children.append(self.p)
        self._seen = 0
        self.finishing = False
        self.samples = []  # (monotonic time read, progress dict)

    def poll_progress(self):
        """Reads new progress lines; returns the latest as a dict (or None)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._seen)
                chunk = f.read()
        except FileNotFoundError:
            return None
        cut = chunk.rfind(b"\n")
        if cut < 0:
            return self.samples[-1][1] if self.samples else None
        self._seen += cut + 1
        t = time.monotonic()
        for line in chunk[:cut].decode(errors="replace").splitlines():
            if line.startswith("sim: connected="):
                d = {}
                for kv in line[5:].split():
                    k, _, v = kv.partition("=")
                    d[k] = v
                c, _, n = d["connected"].partition("/")
                self.samples.append((t, {"connected": int(c), "n": int(n), "sent": int(d["sent"]),
                                         "acked": int(d["acked"]),
                                         "inflight": int(d["inflight"])}))
        return self.samples[-1][1] if self.samples else None

    def wait(self, pred, timeout, step=0.2):
        """Waits until pred(progress) holds; returns the time it took, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            p = self.poll_progress()
            if p and pred(p):
                return time.monotonic() - t0
            if self.p.poll() is not None:
                return None
            time.sleep(step)
        return None

    def wait_all_connected(self, timeout=60):
        return self.wait(lambda p: p["connected"] == p["n"], timeout)

    def stop(self, timeout=300):
        """SIGTERM: no more batches are taken; what the outbox holds is delivered (up to
        --wait-acks); the report is written. Returns it."""
        self.finish()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise ScenarioFailed(f"simulator {self.name} did not finish within {timeout} s")
        self.log.close()
        if not self.report_file.exists():
            raise ScenarioFailed(f"simulator {self.name} wrote no report (exit "
                                 f"{self.p.returncode}): {self.tail()}")
        self.report = json.loads(self.report_file.read_text())
        return self.report

    def finish(self):
        """Stops taking batches (SIGTERM, once: a second one would cut the delivery short)."""
        if self.p.poll() is None and not self.finishing:
            self.p.send_signal(signal.SIGTERM)
        self.finishing = True

    def join(self, timeout):
        """Waits for a run with --max-batches to end by itself (stops it after timeout)."""
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()

    def tail(self, n=2000):
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def log_count(self, text):
        try:
            return self.log_file.read_text(errors="replace").count(text)
        except FileNotFoundError:
            return 0


# ---------------------------------------------------------------------------- the relay

class Relay(proxy.RelayProcess):
    """proxy.py relaying to the broker on a free port; stopped with the scenario's children."""

    def __init__(self, h, name, upstream_port):
        self.name = name
        try:
            super().__init__(S.free_base_port(1), upstream_port, h.work / f"relay-{name}.status",
                             h.work / f"relay-{name}.log")
        except RuntimeError as e:
            raise ScenarioFailed(str(e)) from e
        h.children.append(self.p)

    def _signal(self, sig, state):
        try:
            super()._signal(sig, state)
        except RuntimeError as e:
            raise ScenarioFailed(str(e)) from e


# ---------------------------------------------------------------------------- tmpfs

def mount_tmpfs(path, size_bytes):
    """Mounts a tmpfs of size_bytes on path, owned like path (the broker's data directory belongs
    to the broker's own user)."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    subprocess.run(["mount", "-t", "tmpfs", "-o",
                    f"size={size_bytes},mode=0700,uid={st.st_uid},gid={st.st_gid}", "tmpfs",
                    str(path)], check=True)


def copy_owned(src, dst):
    """shutil.copy2 and the owner too (copy2 keeps the mode and times, not the owner)."""
    shutil.copy2(src, dst)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)


def resize_tmpfs(path, size_bytes):
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)


def umount(path):
    """Unmounts; connections the garbage collector has not closed yet (sqlite3 connections are
    freed only by the cycle collector) would keep the file system busy."""
    for _ in range(10):
        gc.collect()
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return True
        time.sleep(0.5)
    return subprocess.run(["umount", "-l", str(path)], capture_output=True).returncode == 0


def is_mount(path):
    return os.path.ismount(str(path))


def du(path):
    return sum(f.stat().st_size for f in pathlib.Path(path).iterdir() if f.is_file())


# ---------------------------------------------------------------------------- outbox files

def outbox_acks(path):
    """The highest end-to-end ack each boot epoch got, from the ack records still in a gateway's
    outbox file (README "Outbox": u32 length, u32 CRC-32, then 'A' u64 epoch u64 seq)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    off, acks = 0, {}
    while off + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, off)
        body = data[off + 8:off + 8 + n]
        if n < 1 or len(body) < n or zlib.crc32(body) != crc:
            break
        if body[:1] == b"A":
            epoch, seq = struct.unpack_from("<QQ", body, 1)
            acks[epoch] = max(acks.get(epoch, 0), seq)
        off += 8 + n
    return acks


# ---------------------------------------------------------------------------- the harness

class Harness:
    def __init__(self, work, gateways, probes, full):
        self.work = pathlib.Path(work)
        self.n, self.full = gateways, full
        self.load_ids = [gw_id(i) for i in range(1, gateways + 1)]
        self.probe_ids = [gw_id(i) for i in range(gateways + 1, gateways + probes + 1)]
        self.children = []
        self.mounts = []
        self.t0 = time.monotonic()
        self.probes = probes
        self.archive_db = None    # the archive database the oracle reads (None: the suite's)
        self.archive_conf = None  # suidoctl configuration for that archive (None: the suite's)
        self.expect_down = set()  # processes a scenario leaves down on purpose
        self.suite = S.Suite(self.work / "suite", gateways=gateways + probes)
        try:
            self.suite.start()
            self.suite.login_admin()
        except BaseException:
            self.suite.stop()
            raise

    def new_suite(self, name, **kw):
        """Stops the suite and starts another deployment (Suite keyword arguments in kw)."""
        self.suite.stop()
        self.suite = S.Suite(self.work / name, gateways=self.n + self.probes, **kw)
        self.suite.start()
        self.suite.login_admin()

    def db(self):
        """A read-only connection to the archive, closed when the with block ends (a sqlite3
        connection left to the garbage collector keeps the database's files open)."""
        if self.archive_db is None:
            return contextlib.closing(self.suite.db())
        return contextlib.closing(sqlite3.connect(f"file:{self.archive_db}?mode=ro", uri=True,
                                                  timeout=10))

    def archive_ctl(self, *args):
        """suidoctl against the archive the oracle reads."""
        conf = self.archive_conf or (self.suite.dir / "etc" / "suidoctl.conf")
        env = dict(os.environ, SUIDO_TOKEN=self.suite.token or "")
        return subprocess.run([str(S.BIN / "suidoctl"), "-c", str(conf), *map(str, args)],
                              capture_output=True, text=True, timeout=900, env=env)

    # ---- output
    def say(self, msg):
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    # ---- processes
    def load(self, name, **kw):
        """The standing load: every load gateway, one batch per second."""
        sim = Sim(self, name, self.load_ids, **kw)
        t = sim.wait_all_connected(90)
        if t is None:
            raise ScenarioFailed(f"load {name}: gateways did not all connect: {sim.tail()}")
        return sim

    def load_parts(self, name, parts, **kw):
        """The standing load split over `parts` simulator processes (name-0, name-1, ...)."""
        ids = self.load_ids
        sims = [Sim(self, f"{name}-{i}", ids[i * len(ids) // parts:(i + 1) * len(ids) // parts],
                    **kw) for i in range(parts)]
        for sim in sims:
            if sim.wait_all_connected(90) is None:
                raise ScenarioFailed(f"load {sim.name}: gateways did not all connect: "
                                     f"{sim.tail()}")
        return sims

    def pb(self):
        """The wire messages (proto/suido.proto compiled for Python)."""
        if not hasattr(self, "_pb"):
            d = self.work / "proto"
            d.mkdir(exist_ok=True)
            self._pb = S.load_proto(d)
        return self._pb

    def probe(self, k):
        return self.probe_ids[k]

    def restart(self, name):
        """Starts a suite process that is not running; waits until it is up."""
        if name == "mosquitto":
            self.suite.start_broker()
            return
        before = self.connected_lines(name)
        self.suite.start_service(name)
        if name in ("ingest", "archive", "gate"):
            if not S.wait_until(lambda: self.connected_lines(name) > before, 30):
                raise ScenarioFailed(f"{name} did not reconnect to the broker")
        elif name == "registry":
            if not S.wait_until(lambda: self.suite.ctl("inventory", check=False).returncode == 0,
                                30):
                raise ScenarioFailed("registry did not answer after its restart")
        else:
            time.sleep(1.0)

    def connected_lines(self, name):
        """How often a service's MQTT client has logged a successful connection."""
        try:
            text = (self.suite.logs / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines()
                   if f"client={name} " in line and "event=connected" in line)

    def kill9(self, name):
        p = self.suite.procs.get(name)
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def ensure_running(self):
        """After a scenario: every suite process runs (restarted, and said so, if not)."""
        dead = [n for n in ["mosquitto"] + S.SERVICES
                if not self.suite.alive(n) and n not in self.expect_down]
        for n in dead:
            self.say(f"  {n} was not running at the end of the scenario: restarted")
            self.restart(n)
        return dead

    def cleanup(self):
        for p in self.children:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        try:
            self.suite.stop()
        finally:
            for m in reversed(self.mounts):
                umount(m)

    # ---- observation
    def metric(self, svc, name):
        return self.suite.metric(svc, name)

    def audit_count(self, where="1", *args):
        return self.suite.query(f"SELECT count(*) FROM audit WHERE {where}", *args)[0][0]

    def ctl(self, *args, **kw):
        return self.suite.ctl(*args, **kw)

    # ---- the oracle
    def oracle(self, reports, attacked_ok=False, ctl_check=False):
        """Compares what the simulators took with what the archive holds (see the module
        docstring). reports: simulator reports. Returns a dict of counts and examples."""
        want = {}      # (gw, epoch) -> set of seqs expected as data/backfill rows
        cmdres = {}    # (gw, epoch) -> set of seqs expected as cmdres rows
        attacked = {}  # (gw, epoch) -> seqs that were attacked (never stored)
        acked = {}     # (gw, epoch) -> highest acked seq
        for rep in reports:
            for g in rep["gateways"]:
                for r in g["sent_ranges"]:
                    want.setdefault((g["id"], r["boot_epoch"]), set()).update(
                        range(r["first_seq"], r["last_seq"] + 1))
                key = (g["id"], g["boot_epoch"])
                sent_cmd = set(g.get("cmdres_seqs", [])) - set(g.get("cmdres_unsent_seqs", []))
                if sent_cmd:
                    cmdres.setdefault(key, set()).update(sent_cmd)
                if g.get("attacked_seqs"):
                    attacked.setdefault(key, set()).update(g["attacked_seqs"])
                if g.get("acked_seq"):
                    acked[key] = max(acked.get(key, 0), g["acked_seq"])
        keys = set(want) | set(cmdres) | set(acked)
        gaps = dups = extra = acked_missing = wire_dups = 0
        examples = []
        with self.db() as c:
            for (gw, epoch) in sorted(keys):
                rows = c.execute("SELECT seq, kind FROM batches WHERE gateway=? AND boot_epoch=?",
                                 (gw, epoch)).fetchall()
                seqs = [s for s, _ in rows]
                d = len(seqs) - len(set(seqs))
                data = {s for s, k in rows if k in ("data", "backfill")}
                cmd = {s for s, k in rows if k == "cmdres"}
                w = want.get((gw, epoch), set())
                miss = (w - data) | (cmdres.get((gw, epoch), set()) - cmd)
                ext = (data - w) | (cmd - cmdres.get((gw, epoch), set()))
                if not attacked_ok:
                    ext |= {s for s in set(seqs) if s in attacked.get((gw, epoch), set())}
                a = acked.get((gw, epoch), 0)
                am = {s for s in range(1, a + 1) if s not in set(seqs)}
                gaps += len(miss)
                dups += d
                extra += len(ext)
                acked_missing += len(am)
                if (miss or d or ext or am) and len(examples) < 5:
                    examples.append(f"{gw}/{epoch}: missing {sorted(miss)[:8]} extra "
                                    f"{sorted(ext)[:8]} dups {d} acked-not-stored {sorted(am)[:8]}")
                wire_dups += c.execute("SELECT count(*) FROM rejects WHERE gateway=? AND "
                                       "boot_epoch=? AND reason IN ('duplicate', 'replay')",
                                       (gw, epoch)).fetchone()[0]
        # a second opinion: suidoctl archive gaps, on the same epochs (only where the database
        # is small: on a large one it takes minutes)
        ctl_missing, ctl_note = (self.ctl_gaps(keys, attacked, cmdres, want) if ctl_check
                                 else (0, ""))
        return {"epochs": len(keys), "expected": sum(len(v) for v in want.values()) +
                sum(len(v) for v in cmdres.values()),
                "gaps": gaps, "dups": dups, "extra": extra, "acked_not_stored": acked_missing,
                "wire_dups": wire_dups, "ctl_disagrees": ctl_missing, "ctl_note": ctl_note,
                "examples": examples}

    def ctl_gaps(self, keys, attacked, cmdres, want):
        """How many (gateway, epoch) `suidoctl archive gaps` reports differently from what the
        simulators' reports imply (missing below the highest stored seq: only attacked seqs)."""
        r = self.archive_ctl("--json", "--offline", "archive", "gaps")  # the files, as they are
        try:
            out = json.loads(r.stdout)
        except ValueError:
            return 1, f"suidoctl archive gaps gave no JSON (exit {r.returncode}): {r.stderr[-300:]}"
        by = {(e["gateway"], e["boot_epoch"]): e for e in out.get("epochs", [])}
        bad = 0
        note = ""
        for k in keys:
            e = by.get(k)
            if e is None:
                if want.get(k) or cmdres.get(k):
                    bad += 1
                    note = note or f"{k}: not listed by suidoctl archive gaps"
                continue
            allowed = {s for s in attacked.get(k, set()) if s <= e["highest"]}
            listed = set()
            for a, b in e["missing_ranges"]:
                listed.update(range(a, b + 1))
            if listed - allowed:
                bad += 1
                note = note or f"{k}: suidoctl lists missing {sorted(listed - allowed)[:8]}"
        return bad, note

    def acks_covered(self, state_dirs):
        """No acknowledgement without storage, checked now: every ack a gateway holds in its
        outbox (read first) must be covered by rows the archive holds (read after). Returns the
        number of (gateway, epoch) whose ack runs ahead of what is stored, and an example."""
        held = {}
        for d in state_dirs:
            for f in pathlib.Path(d).glob("*.outbox"):
                for epoch, seq in outbox_acks(f).items():
                    held[(f.name[:-len(".outbox")], epoch)] = seq
        bad, example = 0, ""
        with self.db() as c:
            for (gw, epoch), seq in held.items():
                n = c.execute("SELECT count(*) FROM batches WHERE gateway=? AND boot_epoch=? AND "
                              "seq BETWEEN 1 AND ?", (gw, epoch, seq)).fetchone()[0]
                if n != seq:
                    bad += 1
                    example = example or f"{gw}/{epoch}: acked {seq}, stored {n} of 1..{seq}"
        return bad, len(held), example

    def integrity(self, path=None):
        path = path or self.archive_db or (self.suite.dir / "state" / "archive" / "archive.db")
        try:
            c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                return c.execute("PRAGMA integrity_check").fetchall()[0][0]
            finally:
                c.close()
        except sqlite3.DatabaseError as ex:
            return f"{ex}"


def port_listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
