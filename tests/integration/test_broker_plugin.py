"""The suido broker plugin (broker/plugin/) on top of Mosquitto's own checks: only identities listed
as active in DEPLOY/mosquitto/identities.state get a usable session, live sessions are cut when an
identity stops being active, and retained messages, wills on cmd topics and malformed topics are
denied. The plugin only ever narrows the acl_file.

Mosquitto 2.0.11 does not call the plugin at CONNECT when the username comes from the certificate,
so a refused client may see CONNACK 0; what it can never get is a session that does anything: its
first packet is denied and it is cut at the next broker tick, and an idle session of an identity
that is not active is cut by the plugin's sweep (broker/plugin/README.md)."""
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest

from suite import broker_owned, free_base_port, port_free, wait_until
from wire import Client, envelope

CUT_WITHIN = 2.0  # seconds: a state change must reach a live session within this


# ---------------------------------------------------------------- helpers

def broker_log(suite):
    try:
        return (suite.logs / "mosquitto.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def state_events(suite):
    """How many versions of the state file the plugin has read so far (good or refused)."""
    return len(re.findall(r"suido_plugin: event=state_(?:loaded|error) ", broker_log(suite)))


class StateFile:
    """The suite broker's identities.state; writes are atomic (rename), as the registry's are, and
    each waits until the plugin has read the new version."""

    def __init__(self, suite):
        self.suite = suite
        self.path = suite.dir / "mosquitto" / "identities.state"
        self.original = self.path.read_text()

    def write(self, text, wait=True):
        before = state_events(self.suite)
        tmp = self.path.with_name(".identities.state.test")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        t0 = time.monotonic()
        if wait:
            assert wait_until(lambda: state_events(self.suite) > before, 5, 0.01), \
                "the plugin did not read the new state file:\n" + self.suite.log("mosquitto")
        return t0

    def with_state(self, ident, state):
        lines = []
        for line in self.original.splitlines():
            f = line.split()
            lines.append(" ".join([ident, state] + f[2:]) if f and f[0] == ident else line)
        return "\n".join(lines) + "\n"

    def without(self, ident):
        return "".join(l + "\n" for l in self.original.splitlines()
                       if not (l.split() and l.split()[0] == ident))

    def restore(self):
        if self.path.exists() and self.path.read_text() == self.original:
            return
        self.write(self.original)


@pytest.fixture
def state(suite):
    s = StateFile(suite)
    try:
        yield s
    finally:
        s.restore()


def gw_client(suite, who, client_id=None):
    return Client(suite, *suite.tls_files(who), client_id=client_id or who)


def cut_within(c, timeout):
    """True when the broker closed c's session within timeout seconds."""
    return wait_until(lambda: c.refused.is_set(), timeout, 0.01)


def try_publish(c, topic, payload):
    """Publishes without waiting: the session may be cut at any moment."""
    c.c.publish(topic, payload, qos=1)


def metric(suite, name):
    return suite.metric("mosquitto", name)


def metric_reaches(suite, name, value, timeout=3):
    """The plugin rewrites its metrics file every second."""
    return wait_until(lambda: metric(suite, name) >= value, timeout)


# A bare MQTT 3.1.1 client over TLS: for a will and an abrupt close (no DISCONNECT packet), which
# paho cannot do cleanly.
def _varlen(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _s16(b):
    return struct.pack(">H", len(b)) + b


def raw_connect(port, ca, cert, key, client_id, will=None):
    """Connects with an optional will (topic, payload); returns (socket, CONNACK return code)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    sock = ctx.wrap_socket(socket.create_connection(("localhost", port), timeout=5),
                           server_hostname="localhost")
    flags = 0x02  # clean session
    payload = _s16(client_id.encode())
    if will:
        flags |= 0x04 | (1 << 3)  # will, QoS 1, not retained
        payload += _s16(will[0].encode()) + _s16(will[1])
    var = _s16(b"MQTT") + bytes([4, flags]) + struct.pack(">H", 30)
    sock.sendall(bytes([0x10]) + _varlen(len(var) + len(payload)) + var + payload)
    ack = sock.recv(4)
    return sock, (ack[3] if len(ack) == 4 and ack[0] == 0x20 else None)


# ---------------------------------------------------------------- identity

def test_certificate_with_wildcards_in_its_cn_gets_no_session(suite):
    before = metric(suite, "suido_broker_refused_identity_total")
    c = gw_client(suite, "badcn", client_id="gw+#/x")
    try:
        # CONNACK may say accepted (2.0.11 has no CONNECT hook with certificate usernames) ...
        if c.connect(timeout=3):
            c.subscribe("#")
            try_publish(c, "suido/v1/gw-0001/data", b"from a bad cn")
            # ... but its first packet is denied and the session cut at the next broker tick
            assert cut_within(c, CUT_WITHIN), "a client with CN gw+#/x kept its session"
        assert c.messages == []
    finally:
        c.close()
    assert "event=refused reason=wildcard_or_slash user=gw+#/x" in broker_log(suite)
    assert metric_reaches(suite, "suido_broker_refused_identity_total", before + 1)


def test_identity_missing_from_the_state_file_is_refused(suite, state, pb):
    state.write(state.without("gw-0007"))
    c = gw_client(suite, "gw-0007")
    try:
        if c.connect(timeout=3):
            try_publish(c, "suido/v1/gw-0007/data",
                        envelope(pb, suite, "gw-0007", 1, [("level", 5.0)], epoch=7601))
            assert cut_within(c, CUT_WITHIN)
    finally:
        c.close()
    assert "event=refused reason=not_listed user=gw-0007" in broker_log(suite)
    time.sleep(1.0)
    assert suite.seen(7601) == 0


def test_suspended_gateway_is_cut_at_once_cannot_come_back_and_returns_when_active(
        suite, state, pb):
    kicked = metric(suite, "suido_broker_kicked_total")
    delays = []
    for i in range(4):
        live = gw_client(suite, "gw-0002")
        assert live.connect()
        live.subscribe("suido/v1/gw-0002/cmd")
        time.sleep(0.25 + 0.07 * i)  # different phases of the plugin's 200 ms poll
        assert not live.refused.is_set()
        t0 = state.write(state.with_state("gw-0002", "suspended"), wait=False)
        try:
            assert cut_within(live, CUT_WITHIN), "the live session of a suspended gateway was not cut"
            delays.append(time.monotonic() - t0)
        finally:
            live.close()
        state.write(state.original)
    print(f"state change -> session cut: {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
    assert "event=kick user=gw-0002 reason=state_suspended sessions=1" in broker_log(suite)
    assert metric_reaches(suite, "suido_broker_kicked_total", kicked + len(delays))

    # While suspended it cannot hold a session: an idle one is swept, a busy one cut at once, and
    # nothing it sends gets through.
    state.write(state.with_state("gw-0002", "suspended"))
    idle = gw_client(suite, "gw-0002")
    try:
        if idle.connect(timeout=3):
            assert cut_within(idle, CUT_WITHIN), "a suspended gateway kept an idle session"
    finally:
        idle.close()
    busy = gw_client(suite, "gw-0002")
    try:
        if busy.connect(timeout=3):
            try_publish(busy, "suido/v1/gw-0002/data",
                        envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=7602))
            assert cut_within(busy, CUT_WITHIN)
    finally:
        busy.close()
    assert "event=refused reason=state_suspended user=gw-0002" in broker_log(suite)

    # Active again: it connects, keeps its session and its data is stored.
    state.write(state.original)
    back = gw_client(suite, "gw-0002")
    try:
        assert back.connect()
        back.subscribe("suido/v1/gw-0002/cmd")
        back.publish("suido/v1/gw-0002/data",
                     envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=7603))
        assert wait_until(lambda: suite.seen(7603) == 1, 10)
        time.sleep(1.5)  # longer than a sweep
        assert not back.refused.is_set()
    finally:
        back.close()
    assert suite.seen(7602) == 0


def test_malformed_or_missing_state_file_at_run_time_keeps_the_last_good_version(suite, state):
    errors = metric(suite, "suido_broker_state_errors_total")
    live = gw_client(suite, "gw-0005")
    assert live.connect()
    try:
        live.subscribe("suido/v1/gw-0005/cmd")
        # This version would suspend gw-0005, but a later line is malformed: none of it applies.
        bad = state.with_state("gw-0005", "suspended") + "gw-0004 sleepy\n"
        state.write(bad)
        n_lines = len(bad.splitlines())
        assert re.search(rf"event=state_error file=\S+identities\.state line={n_lines} "
                         r"error=\"unknown state sleepy", broker_log(suite))
        # a file cut short (no newline at the end) is refused too
        state.write(state.with_state("gw-0005", "revoked").rstrip("\n"))
        # and a missing file
        before = state_events(suite)
        state.path.unlink()
        assert wait_until(lambda: state_events(suite) > before, 5, 0.01)
        assert "error=\"cannot open: No such file or directory\" action=keeping_last_good" \
            in broker_log(suite)
        time.sleep(1.5)
        assert not live.refused.is_set(), "a bad state file cut a live session"
    finally:
        live.close()
    # and new sessions still go by the last good version
    other = gw_client(suite, "gw-0005")
    try:
        assert other.connect()
        other.subscribe("suido/v1/gw-0005/cmd")
        time.sleep(1.2)  # longer than a sweep
        assert not other.refused.is_set()
    finally:
        other.close()
    assert metric_reaches(suite, "suido_broker_state_errors_total", errors + 3)


def test_sighup_keeps_the_plugin_working(suite, state):
    broker = suite.procs["mosquitto"]
    before = broker_log(suite).count("suido_plugin: event=reload")
    broker.send_signal(signal.SIGHUP)
    assert wait_until(lambda: broker_log(suite).count("suido_plugin: event=reload") > before, 5)
    assert suite.alive("mosquitto")
    ok = gw_client(suite, "gw-0003")
    try:
        assert ok.connect()
        ok.subscribe("suido/v1/gw-0003/cmd")
        time.sleep(0.5)
        assert not ok.refused.is_set()
    finally:
        ok.close()
    state.write(state.with_state("gw-0003", "revoked"))
    c = gw_client(suite, "gw-0003")
    try:
        if c.connect(timeout=3):
            c.subscribe("suido/v1/gw-0003/cmd")
            assert cut_within(c, CUT_WITHIN)
    finally:
        c.close()


# ---------------------------------------------------------------- retain (suite broker)

def test_retained_publish_on_own_data_topic_is_refused_and_never_stored(suite, pb):
    """Retain is available for a Sparkplug host's STATE only (broker/mkconf.sh): the plugin
    denies a gateway's retained publish on its own data topic (counted, logged, never stored or
    retained) and the gateway stays connected; its next plain publish is taken. A gateway may
    not write a STATE topic either, retained or not."""
    before = metric(suite, "suido_broker_denied_retain_total")
    c = gw_client(suite, "gw-0001")
    assert c.connect()
    try:
        c.c.publish("suido/v1/gw-0001/data",
                    envelope(pb, suite, "gw-0001", 1, [("level", 5.0)], epoch=7611),
                    qos=1, retain=True)
        c.c.publish("spBv1.0/STATE/suido", b'{"online":false,"timestamp":1}', qos=1, retain=True)
        c.publish("suido/v1/gw-0001/data",
                  envelope(pb, suite, "gw-0001", 1, [("level", 5.0)], epoch=7612))
        assert wait_until(lambda: suite.seen(7612) == 1, 10)
        assert not cut_within(c, 0.5)
    finally:
        c.close()
    assert metric_reaches(suite, "suido_broker_denied_retain_total", before + 1)
    assert suite.seen(7611) == 0


# ---------------------------------------------------------------- lab broker
# A second broker on the same deployment, where the acl_file allows more than the plugin does:
# retain_available true, gw-0008 may write its own cmd topic, monitor may read everything under
# suido/v1/. It has its own state file, persistence and metrics.

class Lab:
    def __init__(self, suite, root, retain=True, state_text=None):
        self.suite = suite
        self.root = root
        self.port = free_base_port(span=1)
        self.metrics = root / "mosquitto.prom"
        self.state = root / "identities.state"
        src = suite.dir / "mosquitto"
        self.state.write_text(state_text if state_text is not None
                              else (src / "identities.state").read_text())
        acl = (src / "acl").read_text()
        # a grant the plugin must not let through (gateways get their rights from the plugin)
        acl += "\nuser gw-0008\ntopic write suido/v1/gw-0008/cmd\n"
        acl += "\nuser monitor\ntopic read suido/v1/#\n"
        (root / "acl").write_text(acl)
        (root / "data").mkdir(exist_ok=True)
        # the broker runs as its own user: it writes its metrics and persistence here
        broker_owned(root)
        broker_owned(root / "data")
        conf = (src / "mosquitto.conf").read_text()
        subs = [(r"(?m)^listener \d+ ", f"listener {self.port} "),
                (r"(?m)^acl_file .*$", f"acl_file {root / 'acl'}"),
                (r"(?m)^persistence_location .*$", f"persistence_location {root / 'data'}/"),
                (r"(?m)^plugin_opt_state_file .*$", f"plugin_opt_state_file {self.state}"),
                (r"(?m)^plugin_opt_metrics_file .*$", f"plugin_opt_metrics_file {self.metrics}"),
                (r"(?m)^retain_available .*$", f"retain_available {'true' if retain else 'false'}")]
        for pat, rep in subs:
            conf, n = re.subn(pat, rep, conf)
            assert n == 1, pat
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(conf)
        self.log = root / "mosquitto.log"
        self.proc = None

    def run(self, timeout=10):
        """Runs the broker to its end (for start-up refusals); returns (exit code, log)."""
        r = subprocess.run(["mosquitto", "-c", str(self.conf)], capture_output=True, text=True,
                           timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        assert wait_until(lambda: not port_free(self.port), 10), self.text()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metric(self, name):
        try:
            for line in self.metrics.read_text().splitlines():
                k, _, v = line.rpartition(" ")
                if k == name:
                    return float(v)
        except FileNotFoundError:
            pass
        return 0

    def client(self, who):
        c = Client(self.suite, *self.suite.tls_files(who), client_id=who)
        c.port = self.port
        return c

    def raw(self, who, will=None):
        cert, key = self.suite.tls_files(who)
        return raw_connect(self.port, str(self.suite.dir / "ca" / "ca.crt"), cert, key, who, will)


@pytest.fixture(scope="module")
def lab(suite, tmp_path_factory):
    lb = Lab(suite, tmp_path_factory.mktemp("lab"))
    lb.start()
    try:
        yield lb
    finally:
        code = lb.stop()
        assert code == 0, f"lab broker exited with {code}:\n{lb.text()[-3000:]}"


@pytest.fixture
def spy(lab):
    m = lab.client("monitor")
    assert m.connect()
    m.subscribe("suido/v1/#")
    time.sleep(0.3)
    try:
        yield m
    finally:
        m.close()


def test_plugin_grants_a_gateway_its_own_topics_and_nothing_more(lab, spy):
    """Gateways listed with the role "gateway" get their rights from the plugin alone: the lab's
    acl_file lets gw-0008 publish on its own cmd topic, the plugin does not."""
    before = lab.metric("suido_broker_denied_gateway_acl_total")
    g = lab.client("gw-0008")
    assert g.connect()
    try:
        g.publish("suido/v1/gw-0007/data", b"not mine")    # another gateway's topic
        g.publish("suido/v1/gw-0008/cmd", b"lab grant")    # acl_file allows, the plugin does not
        g.publish("suido/v1/gw-0008/data", b"mine")        # allowed
        assert wait_until(lambda: ("suido/v1/gw-0008/data", b"mine") in spy.messages, 5)
    finally:
        g.close()
    assert ("suido/v1/gw-0008/cmd", b"lab grant") not in spy.messages
    assert not any(t == "suido/v1/gw-0007/data" for t, _ in spy.messages)
    assert wait_until(lambda: lab.metric("suido_broker_denied_gateway_acl_total") >= before + 2, 3)
    assert ("event=denied reason=gateway_acl user=gw-0008 access=write "
            "topic=suido/v1/gw-0008/cmd") in lab.text()


def test_retained_publish_is_denied_even_where_the_broker_allows_retain(lab, spy):
    before = lab.metric("suido_broker_denied_retain_total")
    g = lab.client("gw-0008")
    assert g.connect()
    try:
        g.publish("suido/v1/gw-0008/cmd", b"stale command", retain=True)
        g.publish("suido/v1/gw-0008/data", b"retained data", retain=True)
        g.publish("suido/v1/gw-0008/data", b"plain")
        assert wait_until(lambda: ("suido/v1/gw-0008/data", b"plain") in spy.messages, 5)
        assert not g.refused.is_set()  # denied, not disconnected
    finally:
        g.close()
    payloads = [p for _, p in spy.messages]
    assert b"stale command" not in payloads and b"retained data" not in payloads
    # nothing was retained: a new subscriber gets nothing replayed
    spy.close()
    late = lab.client("monitor")
    try:
        assert late.connect()
        late.subscribe("suido/v1/#")
        time.sleep(0.8)
        assert late.messages == []
    finally:
        late.close()
    assert wait_until(lambda: lab.metric("suido_broker_denied_retain_total") >= before + 2, 3)
    assert "event=denied reason=retain user=gw-0008 access=write topic=suido/v1/gw-0008/cmd" \
        in lab.text()


def test_will_on_a_cmd_topic_is_denied(lab, spy):
    """2.0.11 checks a will only when it is published (ACL write check right after the client's
    disconnect event), not at CONNECT: the plugin denies it then."""
    before = lab.metric("suido_broker_denied_will_total")
    sock, rc = lab.raw("gw-0008", will=("suido/v1/gw-0008/cmd", b"will-as-command"))
    assert rc == 0
    sock.close()  # no DISCONNECT packet: the broker publishes the will (or not)
    sock, rc = lab.raw("gw-0008", will=("$CONTROL/dynamic-security/v1", b"will-to-control"))
    assert rc == 0
    sock.close()
    # control: a will on an allowed topic is published
    sock, rc = lab.raw("gw-0008", will=("suido/v1/gw-0008/death", b"will-ok"))
    assert rc == 0
    sock.close()
    assert wait_until(lambda: ("suido/v1/gw-0008/death", b"will-ok") in spy.messages, 5)
    time.sleep(0.3)
    assert not any(p in (b"will-as-command", b"will-to-control") for _, p in spy.messages)
    assert wait_until(lambda: lab.metric("suido_broker_denied_will_total") >= before + 2, 3)
    assert "event=denied reason=will_topic user=gw-0008 access=will topic=suido/v1/gw-0008/cmd" \
        in lab.text()


def test_kicked_session_does_not_get_its_will_published(lab, spy):
    """A revoked identity's session is cut without its will (kick with_will=false)."""
    text = lab.state.read_text()
    tmp = lab.state.with_name(".identities.state.test")

    def put(t):
        before = lab.text().count("event=state_loaded")
        tmp.write_text(t)
        os.replace(tmp, lab.state)
        return before

    sock, rc = lab.raw("gw-0008", will=("suido/v1/gw-0008/death", b"revoked-will"))
    assert rc == 0
    try:
        put("".join("gw-0008 revoked\n" if l.split()[:1] == ["gw-0008"] else l + "\n"
                    for l in text.splitlines()))
        sock.settimeout(CUT_WITHIN)
        assert sock.recv(16) == b""  # closed by the broker
    finally:
        sock.close()
        before = put(text)
        assert wait_until(lambda: lab.text().count("event=state_loaded") > before, 5, 0.01)
    time.sleep(0.5)
    assert not any(p == b"revoked-will" for _, p in spy.messages)
    assert "event=kick user=gw-0008 reason=state_revoked sessions=1" in lab.text()


@pytest.mark.parametrize("content,needle", [
    (None, "error=\"cannot open: No such file or directory\""),
    ("gw-0001 active\ngw-0002 sleepy\n", "line=2 error=\"unknown state sleepy"),
    ("gw-0001 active\ngw-0002\n", "line=2 error=\"expected '<id> <state> [gateway|sparkplug]', got one field"),
    ("gw-0001 active gateway\ngw-0002 active operator\n",
     "line=2 error=\"expected '<id> <state> [gateway|sparkplug]', got an unknown role"),
    ("gw-0001 active\ngw+#/x active\n", "line=2 error=\"bad id gw+#/x (wildcard_or_slash)"),
    ("gw-0001 active\ngw-0001 revoked\n", "line=2 error=\"gw-0001 is listed twice"),
    ("gw-0001 active", "line=1 error=\"no newline at the end"),
])
def test_broker_refuses_to_start_without_a_good_state_file(suite, tmp_path, content, needle):
    lb = Lab(suite, tmp_path, state_text=content or "")
    if content is None:
        lb.state.unlink()
    code, out = lb.run()
    assert code != 0, out
    line = next((l for l in out.splitlines() if "suido_plugin: event=start_refused" in l), "")
    assert f"file={lb.state}" in line and needle in line, out
