"""Bad inputs every release must survive (the project's list of hostile inputs): its
sections "TLS and certificates", "MQTT framing and topics", "ZeroMQ / CURVE between services" and
"Protobuf and the crypto envelope", sent to the running suite.

Each test sends the bad input, checks that it is refused with the reason the suite can observe (a
TLS alert, the connection closed, nothing delivered or stored, verify's refusal counter by reason,
a row in the archive's rejects table and one audit event), and then that the suite still serves a
real gateway and that every process is still running.

What other files already cover is not repeated here: the certificate refusals and the ACL
(test_access.py), the CN "gw+#/x", retained data and wills on the lab broker
(test_broker_plugin.py), tampered / wrong-key / replayed / skewed / malformed / oversized batches
from the simulator (test_pipeline.py).

Boot epochs 9101..9117 are this file's; they increase in file order, because the verifier
remembers the highest (boot epoch, sequence) it accepted per gateway (the last test sends gw-0004
births and data of the current second's boot epoch). Batches that must be accepted are sent as
gw-0004 and gw-0007 only; the real-gateway check runs the simulator as
gw-0003 (its boot epoch is the current second, so two runs are kept a second apart)."""
import datetime
import json
import os
import re
import socket
import shutil
import ssl
import subprocess
import time
import warnings

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                              encode_dss_signature)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import rawmqtt as R
from suite import BIN, broker_owned, free_base_port, port_free, wait_until
from test_access import alert_frame, curve_push, service_keys
from wire import DOMAIN, Client, envelope, key_id, signing_key

SERVICES = ["registry", "archive", "profile", "verify", "ingest", "anomaly-0", "anomaly-1"]
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
MiB = 1 << 20


# ==================================================================================== helpers

def broker_audit_mark(suite):
    """What the audit log holds of the broker's refusals now (see broker_audited)."""
    return (suite.query("SELECT count(*) FROM audit WHERE source='ingest' AND actor='broker'")[0][0],
            suite.metric("ingest", "suido_ingest_broker_events_suppressed_total"))


def broker_audited(suite, mark, event):
    """A refusal inside the broker since mark reached the audit log as `event`, or was counted
    over the audit budget (30 per 10 s; summed up in one broker_events_suppressed entry)."""
    n, suppressed = mark

    def seen():
        rows = suite.query("SELECT event FROM audit WHERE source='ingest' AND actor='broker' "
                           "ORDER BY seq LIMIT -1 OFFSET ?", n)
        return any(e == event for (e,) in rows) or \
            suite.metric("ingest", "suido_ingest_broker_events_suppressed_total") > suppressed
    return wait_until(seen, 5)


def all_alive(suite):
    broker = suite.procs["mosquitto"]
    assert broker.poll() is None, "the broker died:\n" + suite.log("mosquitto")
    dead = [n for n in SERVICES if not suite.alive(n)]
    assert not dead, "\n".join(f"{n} died:\n{suite.log(n)}" for n in dead)


def real_gateway_served(suite, gw="gw-0003"):
    """The simulator, a real gateway, gets two batches acknowledged end to end."""
    # its boot epoch is the current second: a run within the same second as an earlier one
    # (of any test) would be refused as a replay
    (last,) = suite.query("SELECT coalesce(max(boot_epoch), 0) FROM batches WHERE gateway=?",
                          gw)[0]
    while int(time.time()) <= last:
        time.sleep(0.05)
    rep = suite.sim("--ids", gw, "--max-batches", 2, "--rate", 20, "--wait-acks", 20)
    g = rep["gateways"][0]
    assert g["legit_sent"] == 2 and g["acked_seq"] >= 2, rep


def still_serving(suite):
    all_alive(suite)
    real_gateway_served(suite)
    all_alive(suite)


def broker_rss_kb(suite):
    with open(f"/proc/{suite.procs['mosquitto'].pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def broker_log(suite):
    try:
        return (suite.logs / "mosquitto.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def log_since(suite, mark):
    return broker_log(suite)[mark:]


def log_mark(suite):
    return len(broker_log(suite))


def settled(suite, svc, name, timeout=8):
    """A counter's value once it has stopped moving (traffic of an earlier test may still be
    arriving, and the metrics file is rewritten only every second)."""
    last = suite.metric(svc, name)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(1.1)
        now = suite.metric(svc, name)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{svc} {name} keeps moving")


def rejected(suite, reason):
    return suite.metric("verify", f'suido_verify_rejected_total{{reason="{reason}"}}')


def refusal_counts(suite):
    out = {}
    f = suite.dir / "state" / "metrics" / "verify.prom"
    for line in f.read_text().splitlines():
        m = re.match(r'suido_verify_rejected_total\{reason="(\w+)"\} (\d+)$', line)
        if m:
            out[m[1]] = int(m[2])
    return out


def stored(suite, gw, epoch):
    return [r[0] for r in suite.query("SELECT seq FROM batches WHERE gateway=? AND boot_epoch=? "
                                      "ORDER BY seq", gw, epoch)]


def fate(suite, env):
    """'stored', the reason it was refused with, or None (not seen yet) for these exact bytes."""
    if suite.query("SELECT count(*) FROM batches WHERE envelope=?", env)[0][0]:
        return "stored"
    rows = suite.query("SELECT reason FROM rejects WHERE envelope=?", env)
    if len(rows) > 1:
        return "refused twice: " + ",".join(r[0] for r in rows)
    return rows[0][0] if rows else None


AUDIT_EVENT = {"bad_signature": "signature_rejected", "replay": "replay",
               "duplicate": "replay", "outside_time_window": "stale_data"}


def audit_count(suite, gw, reason, epoch=0, seq=0, kind="data"):
    """Audit entries the archive wrote for one refusal (the detail names reason, epoch, seq)."""
    detail = f"reason={reason} topic=suido/v1/{gw}/{kind} epoch={epoch} seq={seq}"
    return suite.query("SELECT count(*) FROM audit WHERE event=? AND subject=? AND detail=?",
                       AUDIT_EVENT.get(reason, "message_refused"), gw, detail)[0][0]


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def ld(field, data):
    """A length-delimited protobuf field."""
    return bytes([(field << 3) | 2]) + varint(len(data)) + data


class Crafter:
    """Envelopes of one gateway built field by field, signed exactly as a gateway signs them
    (wire.envelope), so that one thing at a time can be made wrong."""

    def __init__(self, suite, pb, gw, epoch):
        self.suite, self.pb, self.gw, self.epoch = suite, pb, gw, epoch
        self.key = signing_key(suite, gw)
        self.kid = key_id(self.key)
        self.wrap = serialization.load_pem_public_key(
            (suite.dir / "platform" / "wrap.pub").read_bytes())
        self.topic = f"suido/v1/{gw}/data"

    def header(self, seq, **kw):
        f = dict(version=1, gateway_id=self.gw, boot_epoch=self.epoch, seq=seq,
                 timestamp_ms=int(time.time() * 1000), key_id=self.kid,
                 kind=self.pb.KIND_DATA, cipher=self.pb.CIPHER_NONE, reading_count=1)
        f.update(kw)
        return self.pb.Header(**f).SerializeToString()

    def body(self, n=1, channel="level"):
        return self.pb.TelemetryBatch(readings=[self.pb.Reading(channel=channel, value=5.0)
                                                for _ in range(n)]).SerializeToString()

    def sign(self, hb, body):
        return self.key.sign(DOMAIN + len(hb).to_bytes(4, "big") + hb + body,
                             ec.ECDSA(hashes.SHA256()))

    def envelope(self, hb, body, sig=None):
        return self.pb.SignedEnvelope(header=hb, body=body,
                                      signature=self.sign(hb, body) if sig is None else sig
                                      ).SerializeToString()

    def good(self, seq, **kw):
        hb = self.header(seq, **kw)
        b = self.body()
        return self.envelope(hb, b)

    OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

    def sealed(self, seq, key=None, wrapped=None, iv=None, header_iv=None, aad=None,
               mutate=None):
        """An AES-GCM body under a session key RSA-OAEP wrapped to the platform, as the gateway
        seals it (header = AAD); each argument replaces one ingredient."""
        key = key if key is not None else os.urandom(32)
        iv = iv if iv is not None else os.urandom(12)
        wrapped = wrapped if wrapped is not None else self.wrap.encrypt(key, self.OAEP)
        hb = self.header(seq, cipher=self.pb.CIPHER_AES_256_GCM,
                         iv=iv if header_iv is None else header_iv, key_seq=1,
                         wrapped_key=wrapped)
        ct = AESGCM(key).encrypt(iv, self.body(), hb if aad is None else aad)
        if mutate:
            ct = mutate(ct)
        return self.envelope(hb, ct)


def publish_all(suite, gw, payloads, topic=None):
    c = Client(suite, *suite.tls_files(gw), client_id=gw)
    assert c.connect(), f"{gw} could not connect"
    try:
        for p in payloads:
            info = c.publish(topic or f"suido/v1/{gw}/data", p)
            assert info.is_published(), "the broker did not acknowledge a publish"
    finally:
        c.close()


# refusals for which the verifier has no decoded header: audited with epoch 0 and seq 0
HEADERLESS = ("malformed_envelope", "malformed_header", "too_big")


def check_fates(suite, pb, gw, cases, timeout=20, kind="data"):
    """cases: [(name, envelope bytes, expected fate)]. Publishes them in order as gw on its
    `kind` topic, waits for every one to be stored or refused, then compares; also checks
    verify's per-reason counters and that each refusal got exactly one audit entry."""
    before = refusal_counts(suite)
    audit_before = {w: audit_count(suite, gw, w, kind=kind) for _, _, w in cases
                    if w in HEADERLESS}
    publish_all(suite, gw, [env for _, env, _ in cases], topic=f"suido/v1/{gw}/{kind}")
    assert wait_until(lambda: all(fate(suite, env) is not None for _, env, _ in cases),
                      timeout, 0.1), \
        {n: fate(suite, e) for n, e, _ in cases}
    got = {name: fate(suite, env) for name, env, _ in cases}
    want = {name: w for name, _, w in cases}
    assert got == want
    # every refusal counted once under its reason ...
    expect = {}
    for _, _, w in cases:
        if w != "stored":
            expect[w] = expect.get(w, 0) + 1
    assert wait_until(lambda: all(refusal_counts(suite).get(r, 0) - before.get(r, 0) == n
                                  for r, n in expect.items()), 5), (expect, refusal_counts(suite))
    # ... and audited once
    for name, env, w in cases:
        if w == "stored" or w in HEADERLESS:
            continue
        e = pb.SignedEnvelope()
        e.ParseFromString(env)
        h = pb.Header()
        h.ParseFromString(e.header)
        n = audit_count(suite, gw, w, h.boot_epoch, h.seq, kind=kind)
        assert n == 1, f"{name}: {n} audit entries for {w} epoch={h.boot_epoch} seq={h.seq}"
    for w, n0 in audit_before.items():
        n = sum(1 for _, _, x in cases if x == w)
        assert audit_count(suite, gw, w, kind=kind) == n0 + n, f"audit entries for {w}"


# ===================================================================== TLS and certificates

def handshake(suite, ctx, port=None):
    """(True, protocol/cipher) or (False, error text) for a TLS handshake with the broker."""
    raw = socket.create_connection(("localhost", port or suite.port), timeout=5)
    try:
        t = ctx.wrap_socket(raw, server_hostname="localhost")
        out = (True, f"{t.version()} {t.cipher()[0]}")
        t.close()
        return out
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return False, str(e)


def gw_ctx(suite, who="gw-0004"):
    return R.tls_context(suite, who)


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_below_1_2_is_refused_with_a_protocol_version_alert(suite, version):
    ctx = gw_ctx(suite)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = getattr(ssl.TLSVersion, version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers the old version
    mark = broker_audit_mark(suite)
    ok, why = handshake(suite, ctx)
    assert not ok, f"{version} accepted: {why}"
    assert broker_audited(suite, mark, "broker_tls_refused")
    # the alert comes from the broker (a client that could not offer it fails differently)
    assert "ALERT_PROTOCOL_VERSION" in why, why
    # control: the same client allowed up to TLS 1.2 gets in
    ctx = gw_ctx(suite)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ok, why = handshake(suite, ctx)
    assert ok and why.startswith("TLSv1.2 "), why
    all_alive(suite)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
                                    "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-CCM",
                                    "AES128-GCM-SHA256"])
def test_tls12_without_an_allowed_aead_ecdhe_suite_is_refused(suite, cipher):
    ctx = gw_ctx(suite)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher + ":@SECLEVEL=0")
    ok, why = handshake(suite, ctx)
    assert not ok, f"{cipher} accepted: {why}"
    assert "ALERT_HANDSHAKE_FAILURE" in why, why
    ctx = gw_ctx(suite)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(suite, ctx) == (True, "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256")


def test_tls13_ccm_suite_is_refused(suite):
    """ciphers_tls1.3 keeps the CCM suites out (Python cannot choose TLS 1.3 suites: openssl)."""
    cert, key = suite.tls_files("gw-0004")

    def s_client(suites):
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"localhost:{suite.port}", "-tls1_3",
             "-ciphersuites", suites, "-cert", cert, "-key", key,
             "-CAfile", str(suite.dir / "ca" / "ca.crt"), "-verify_return_error", "-brief"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)

    r = s_client("TLS_AES_128_CCM_SHA256")
    assert r.returncode != 0 and "handshake failure" in (r.stdout + r.stderr), r.stdout + r.stderr
    ok = s_client("TLS_AES_128_GCM_SHA256")
    assert ok.returncode == 0 and "TLS_AES_128_GCM_SHA256" in ok.stdout + ok.stderr, \
        ok.stdout + ok.stderr


def test_plain_mqtt_to_the_tls_port_is_closed_without_an_answer(suite):
    c = R.Conn(suite, tls=False)
    try:
        c.send(R.connect("gw-0004"))
        c.sock.settimeout(5)
        data = b""
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        data = b""
    finally:
        c.close()
    # nothing MQTT comes back (at most a TLS alert record), and the connection is closed
    assert not data.startswith(bytes([R.CONNACK << 4])), data
    assert data == b"" or data[0] == 0x15, data
    all_alive(suite)


class ExtraBroker:
    """Another broker of the same deployment in its own folder and on its own port (its own
    state file copy, persistence and metrics), from the suite's mosquitto.conf with some lines
    replaced: another server certificate, or another ACL file."""

    def __init__(self, suite, root, cert=None, key=None, acl=None):
        self.root, self.port, self.proc = root, free_base_port(span=1), None
        src = suite.dir / "mosquitto"
        (root / "data").mkdir(exist_ok=True)
        # the broker runs as its own user: it writes its metrics and persistence here
        broker_owned(root)
        broker_owned(root / "data")
        if cert:  # of the test PKI, in root's folders: the broker's user gets its own copies
            cert = shutil.copyfile(cert, root / "server.crt")
            shutil.copyfile(key, root / "server.key")
            key = broker_owned(root / "server.key")
        state = root / "identities.state"
        state.write_text((src / "identities.state").read_text())
        subs = [(r"(?m)^listener \d+ ", f"listener {self.port} "),
                (r"(?m)^persistence_location .*$", f"persistence_location {root / 'data'}/"),
                (r"(?m)^plugin_opt_state_file .*$", f"plugin_opt_state_file {state}"),
                (r"(?m)^plugin_opt_metrics_file .*$",
                 f"plugin_opt_metrics_file {root / 'mosquitto.prom'}")]
        if cert:
            subs += [(r"(?m)^certfile .*$", f"certfile {cert}"),
                     (r"(?m)^keyfile .*$", f"keyfile {key}")]
        if acl:
            subs += [(r"(?m)^acl_file .*$", f"acl_file {acl}")]
        conf = (src / "mosquitto.conf").read_text()
        for pat, rep in subs:
            conf, n = re.subn(pat, rep, conf)
            assert n == 1, pat
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(conf)
        self.log = root / "mosquitto.log"

    def run(self, timeout=5):
        """Runs it to its end (for refusals at start): (exit code, output), or None if it is
        still running after timeout seconds (then it is stopped)."""
        try:
            r = subprocess.run(["mosquitto", "-c", str(self.conf)], capture_output=True,
                               text=True, timeout=timeout)
            return r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        if not (wait_until(lambda: not port_free(self.port) or self.proc.poll() is not None, 10)
                and self.proc.poll() is None):
            self.__exit__()
            raise AssertionError("the extra broker did not start:\n" + self.log.read_text())
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def wrongname_broker(suite, tmp_path):
    """A broker presenting test/wrongname's certificate: issued by the real CA, but for
    wrong.example."""
    wn = suite.dir / "test" / "wrongname"
    with ExtraBroker(suite, tmp_path, cert=wn / "server.crt", key=wn / "server.key") as b:
        yield b.port


def test_gateway_refuses_a_broker_certificate_for_another_name(suite, wrongname_broker, tmp_path):
    port = wrongname_broker
    # paho with the suite's TLS context (hostname checked)
    c = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    c.port = port
    try:
        assert not c.connect(timeout=3)
    finally:
        c.close()
    assert isinstance(c.error, ssl.SSLCertVerificationError), c.error
    assert "Hostname mismatch" in str(c.error), c.error
    # the real gateway (suido-gateway-sim, Paho C with verify on) never gets a session
    report = tmp_path / "wrongname.json"
    r = subprocess.run([str(BIN / "suido-gateway-sim"), "--broker", f"ssl://localhost:{port}",
                        "--deploy", str(suite.dir), "--ids", "gw-0004", "--max-batches", "1",
                        "--duration", "3", "--report", str(report), "--quiet"],
                       capture_output=True, text=True, timeout=60)
    g = json.loads(report.read_text())["gateways"][0]
    assert g["connections"] == 0 and g["legit_sent"] == 0 and g["births_sent"] == 0, g
    assert "connect_failed" in r.stderr, r.stderr
    # control: that broker works, and only its name is wrong
    ctx = gw_ctx(suite)
    ctx.check_hostname = False
    conn = R.Conn(suite, port=port, ctx=ctx)
    try:
        assert conn.mqtt_connect("gw-0004") == 0
    finally:
        conn.close()
    all_alive(suite)


def test_client_id_takeover_does_not_disturb_the_real_gateway(suite, pb):
    """gw-0007's valid certificate asks for gw-0004's client id, with the user name "gw-0004" or
    "gw+#/x": use_identity_as_username and use_username_as_clientid make it gw-0007 whatever it
    sends, so gw-0004's session is never replaced. The "gw+#/x" certificate asking for gw-0004
    does not replace it either."""
    victim = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    assert victim.connect()
    victim.subscribe("suido/v1/gw-0004/ack")
    mark = log_mark(suite)
    attackers = []
    try:
        time.sleep(0.3)
        for user in ("gw-0004", "gw+#/x"):
            a = R.Conn(suite, "gw-0007")
            attackers.append(a)
            assert a.mqtt_connect("gw-0004", username=user, password="x") == 0
            time.sleep(0.2)
        a5 = R.Conn(suite, "gw-0007")
        attackers.append(a5)
        assert a5.mqtt_connect("gw-0004", version=5) == 0
        bad = R.Conn(suite, "badcn")
        attackers.append(bad)
        bad.mqtt_connect("gw-0004")
        time.sleep(1.5)
        assert not victim.refused.is_set(), "gw-0004's session was taken over"
        log = log_since(suite, mark)
        assert len(re.findall(r"New client connected from \S+ as gw-0007 "
                              r"\(p2, c1, k30, u'gw-0007'\)", log)) == 2, log
        assert re.search(r"New client connected from \S+ as gw-0007 \(p5, c1, k30, u'gw-0007'\)",
                         log), log
        assert "as gw+#/x" in log and "as gw-0004" not in log, log
        # and the real gw-0004 keeps publishing: stored and acknowledged
        victim.publish("suido/v1/gw-0004/data",
                       envelope(pb, suite, "gw-0004", 1, [("level", 5.0)], epoch=9101))
        assert wait_until(lambda: stored(suite, "gw-0004", 9101) == [1], 10)
        assert wait_until(lambda: any(t == "suido/v1/gw-0004/ack" for t, _ in victim.messages), 10)
        assert not victim.refused.is_set()
    finally:
        for a in attackers:
            a.close()
        victim.close()
    still_serving(suite)


def make_cert(suite, tmp_path, name, cn_attr=None, cn_bytes=None):
    """A client certificate from the deployment CA with an odd CN: cn_attr is a cryptography
    NameAttribute; cn_bytes (raw, e.g. not UTF-8) goes through openssl as a T61String."""
    crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    ca_crt, ca_key = suite.dir / "ca" / "ca.crt", suite.dir / "ca" / "ca.key"
    if cn_bytes is not None:
        cnf = tmp_path / f"{name}.cnf"
        cnf.write_text("[req]\ndistinguished_name=dn\nstring_mask=nombstr\nprompt=no\n[dn]\n"
                       "[ext]\nbasicConstraints=critical,CA:false\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
        csr = tmp_path / f"{name}.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                        b"/CN=" + cn_bytes, "-config", str(cnf), "-out", str(csr)],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt),
                        "-CAkey", str(ca_key), "-set_serial", str(int.from_bytes(os.urandom(8),
                                                                                   "big")),
                        "-days", "2", "-extfile", str(cnf), "-extensions", "ext", "-out",
                        str(crt)], check=True, capture_output=True)
        os.chmod(key, 0o600)
        return str(crt), str(key)
    cakey = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    cacert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    k = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([cn_attr]))
            .issuer_name(cacert.subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(cakey, hashes.SHA256()))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(key, 0o600)
    return str(crt), str(key)


def test_certificate_cn_not_utf8_with_a_control_character_or_a_nul_gets_no_session(
        suite, pb, tmp_path):
    """Valid certificates from the deployment CA whose CN is not a usable identity: raw byte 0xff
    (not UTF-8), U+0085 (a C1 control), and "gw-0004<NUL>x" (which a C string would read as
    gw-0004). ("gw+#/x" is covered by test_broker_plugin.py.)"""
    victim = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    assert victim.connect()
    refused_before = suite.metric("mosquitto", "suido_broker_refused_identity_total")
    mark = log_mark(suite)
    try:
        for name, kw, reason in [
                ("notutf8", dict(cn_bytes=b"gw-\xff004"), "invalid_utf8"),
                ("c1", dict(cn_attr=x509.NameAttribute(NameOID.COMMON_NAME, "gw-\u0085004")),
                 "control_character")]:
            crt, key = make_cert(suite, tmp_path, name, **kw)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(str(suite.dir / "ca" / "ca.crt"))
            ctx.load_cert_chain(crt, key)
            c = R.Conn(suite, ctx=ctx)
            try:
                # 2.0.11 has no CONNECT hook for certificate usernames: CONNACK 0 ...
                assert c.mqtt_connect("gw-0004") == 0
                c.send(R.subscribe("suido/v1/gw-0004/cmd"))
                c.try_send(R.publish("suido/v1/gw-0004/data",
                                     envelope(pb, suite, "gw-0004", 2, [("level", 5.0)],
                                              epoch=9102)))
                # ... but its first packet is refused and the session cut at the next tick
                assert c.closed_within(3), f"{name}: the session was not cut"
                assert (R.SUBACK, 0, b"\x00\x01\x80") in c.seen, c.seen
            finally:
                c.close()
            assert re.search(rf"suido_plugin: event=refused reason={reason} user=gw-\S+ ",
                             log_since(suite, mark)), log_since(suite, mark)
        # an embedded NUL: Mosquitto itself refuses it at CONNECT (bad user name or password)
        crt, key = make_cert(suite, tmp_path, "nul",
                             cn_attr=x509.NameAttribute(NameOID.COMMON_NAME, "gw-0004\x00x"))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(suite.dir / "ca" / "ca.crt"))
        ctx.load_cert_chain(crt, key)
        c = R.Conn(suite, ctx=ctx)
        try:
            assert c.mqtt_connect("gw-0004") == 4
            assert c.closed_within(3)
        finally:
            c.close()
        assert wait_until(lambda: suite.metric("mosquitto", "suido_broker_refused_identity_total")
                          >= refused_before + 2, 3)
        time.sleep(0.3)
        assert not victim.refused.is_set(), "the real gw-0004 lost its session"
        victim.publish("suido/v1/gw-0004/data",
                       envelope(pb, suite, "gw-0004", 1, [("level", 5.0)], epoch=9102))
        assert wait_until(lambda: stored(suite, "gw-0004", 9102) == [1], 10)
    finally:
        victim.close()
    all_alive(suite)


# ===================================================================== MQTT framing and topics

def control_publish_acked(suite, who="gw-0004"):
    """A fresh session of `who` still gets a PUBACK for a publish on its own topic."""
    c = R.open_session(suite, who)
    try:
        c.send(R.publish(f"suido/v1/{who}/cmdres", b"ping", pid=7))
        p = c.read(5)
        assert p == (R.PUBACK, 0, b"\x00\x07"), p
    finally:
        c.close()


FIRST_PACKETS = {
    "publish": R.publish("suido/v1/gw-0004/data", b"x"),
    "subscribe": R.subscribe("suido/v1/gw-0004/cmd"),
    "pingreq": bytes([0xC0, 0x00]),
    "connack": bytes([0x20, 0x02, 0x00, 0x00]),
    "reserved_type_0": bytes([0x00, 0x00]),
}


@pytest.mark.parametrize("first", list(FIRST_PACKETS))
def test_first_packet_not_connect_is_closed(suite, first):
    mark = broker_audit_mark(suite)
    c = R.Conn(suite, "gw-0004")
    try:
        c.send(FIRST_PACKETS[first])
        assert c.closed_within(5), "the broker kept the connection open"
        assert c.seen == [], c.seen
    finally:
        c.close()
    assert broker_audited(suite, mark, "broker_protocol_error")
    all_alive(suite)
    control_publish_acked(suite)


def test_maximum_remaining_length_is_closed_without_allocating_it(suite):
    """A CONNECT, and a PUBLISH inside a good session, that claim 268,435,455 bytes (the MQTT
    maximum), each followed by 64 KiB: closed at once, and the broker allocates nothing like it;
    a remaining length of five bytes (invalid) is closed too."""
    rss0 = broker_rss_kb(suite)
    mark = log_mark(suite)
    for _ in range(5):
        c = R.Conn(suite, "gw-0004")
        try:
            c.send(bytes([0x10]) + R.varint(268_435_455) + R.s16("MQTT") + b"\x04\x02\x00\x1e")
            c.try_send(os.urandom(65536))
            assert c.closed_within(5), "a 256 MiB CONNECT was waited for"
            assert c.seen == []
        finally:
            c.close()
        p = R.open_session(suite, "gw-0004")
        try:
            p.send(bytes([0x32]) + R.varint(268_435_455) + R.s16("suido/v1/gw-0004/data") +
                   b"\x00\x01")
            p.try_send(os.urandom(65536))
            assert p.closed_within(5), "a 256 MiB PUBLISH was waited for"
            assert all(x[0] != R.PUBACK for x in p.seen)
        finally:
            p.close()
    c = R.Conn(suite, "gw-0004")
    try:
        c.send(bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]))
        assert c.closed_within(5)
    finally:
        c.close()
    assert log_since(suite, mark).count("Client gw-0004 disconnected due to oversize packet.") \
        == 5, log_since(suite, mark)
    grown = broker_rss_kb(suite) - rss0
    assert grown < 50 * 1024, f"broker RSS grew by {grown} kB"
    all_alive(suite)
    control_publish_acked(suite)


def test_second_connect_on_one_connection_is_closed(suite):
    c = R.open_session(suite, "gw-0004")
    try:
        c.send(R.connect("gw-0004"))
        assert c.closed_within(5)
        assert all(p[0] != R.CONNACK for p in c.seen), c.seen
    finally:
        c.close()
    control_publish_acked(suite)


BAD_TOPICS = {
    "plus": (b"suido/v1/+/data", "protocol error"),
    "hash": (b"suido/v1/gw-0004/#", "protocol error"),
    "plus_own_level": (b"suido/v1/gw-0004/+", "protocol error"),
    "nul": (b"suido/v1/gw-0004/data\x00x", "malformed packet"),
    "invalid_utf8": (b"suido/v1/gw-0004/data\xff", "malformed packet"),
    "overlong_utf8": (b"suido/v1/gw-0004/\xc0\xafdata", "malformed packet"),
    "utf16_surrogate": (b"suido/v1/gw-0004/\xed\xa0\x80", "malformed packet"),
    "c0_control": (b"suido/v1/gw-0004/da\x01ta", "malformed packet"),
    "c1_control": ("suido/v1/gw-0004/da\u0085ta".encode(), "malformed packet"),
    "empty": (b"", "malformed packet"),
    "65535_bytes": (b"suido/v1/gw-0004/data/" + b"a" * (65535 - 22), "oversize packet"),
    "10000_levels": (b"suido/v1/gw-0004/data" + b"/x" * 9999, "protocol error"),
}


@pytest.mark.parametrize("case", list(BAD_TOPICS))
def test_malformed_publish_topic_closes_the_connection(suite, pb, case):
    topic, why = BAD_TOPICS[case]
    mark = log_mark(suite)
    env = envelope(pb, suite, "gw-0004", 1, [("level", 5.0)], epoch=9103)
    c = R.open_session(suite, "gw-0004")
    try:
        c.try_send(R.publish(topic, env))
        assert c.closed_within(5), f"topic {topic[:40]!r}: connection kept"
        assert all(p[0] != R.PUBACK for p in c.seen), c.seen
    finally:
        c.close()
    assert wait_until(lambda: f"Client gw-0004 disconnected due to {why}."
                      in log_since(suite, mark), 3), log_since(suite, mark)
    all_alive(suite)
    control_publish_acked(suite)
    assert suite.query("SELECT count(*) FROM rejects WHERE envelope=?", env) == [(0,)]
    assert stored(suite, "gw-0004", 9103) == []


def test_long_topic_within_the_packet_limit_is_denied_and_the_session_kept(suite, pb):
    """A 60,000-byte topic fits in 64 KiB: it is an ordinary topic the ACL does not grant."""
    c = R.open_session(suite, "gw-0004")
    try:
        c.send(R.publish(b"suido/v1/gw-0004/data/" + b"a" * 60000, b"x", pid=3))
        assert c.read(5) == (R.PUBACK, 0, b"\x00\x03")  # MQTT 3.1.1: dropped, acknowledged
        c.send(R.publish("suido/v1/gw-0004/cmdres", b"y", pid=4))
        assert c.read(5) == (R.PUBACK, 0, b"\x00\x04")
    finally:
        c.close()
    all_alive(suite)


def sized_envelope(pb, suite, gw, epoch, seq, size):
    """A real, signed batch whose envelope is exactly `size` bytes (about 3,200 readings on a
    channel the profile does not know, so that no checker has work with them)."""
    cr = Crafter(suite, pb, gw, epoch)

    def build(n, k):
        readings = [pb.Reading(channel="padding", value=1.0)] * (n - 1) + \
                   [pb.Reading(channel="p" * k, value=1.0)]
        return (cr.header(seq, reading_count=n),
                pb.TelemetryBatch(readings=readings).SerializeToString())

    def length(hb, body, siglen):
        return len(pb.SignedEnvelope(header=hb, body=body,
                                     signature=b"\x00" * siglen).SerializeToString())

    n = (size - 300) // 20
    while length(*build(n + 1, 1), 70) <= size:
        n += 1
    while length(*build(n, 1), 70) > size:
        n -= 1
    for k in range(1, 64):
        hb, body = build(n, k)
        for siglen in (70, 71, 72):
            if length(hb, body, siglen) == size:
                for _ in range(500):  # the DER signature is 70, 71 or 72 bytes
                    sig = cr.sign(hb, body)
                    if len(sig) == siglen:
                        env = cr.envelope(hb, body, sig)
                        assert len(env) == size
                        return env
    raise AssertionError(f"could not make an envelope of {size} bytes")


def test_payload_over_the_packet_limit_closes_the_connection_and_is_not_delivered(suite, pb):
    """max_packet_size 65536 counts remaining length + 1: a PUBLISH of remaining length 65535
    is delivered, one byte more closes the connection (the simulator's 'oversize' attack in
    test_pipeline.py is far above the limit; this is the exact edge)."""
    topic = "suido/v1/gw-0004/data"
    room = 65535 - (2 + len(topic) + 2)
    fits = sized_envelope(pb, suite, "gw-0004", 9104, 1, room)
    over = sized_envelope(pb, suite, "gw-0004", 9104, 2, room + 1)
    mark = log_mark(suite)
    audit_mark = broker_audit_mark(suite)
    c = R.open_session(suite, "gw-0004")
    try:
        try:
            c.send(R.publish(topic, over, pid=2))
        except (ssl.SSLError, OSError):
            pass  # the broker may close the connection while the packet is still being written
        assert c.closed_within(5), "an oversized packet was accepted"
        assert all(p[0] != R.PUBACK for p in c.seen)
    finally:
        c.close()
    assert "Client gw-0004 disconnected due to oversize packet." in log_since(suite, mark)
    assert broker_audited(suite, audit_mark, "broker_protocol_error")
    c = R.open_session(suite, "gw-0004")
    try:
        c.send(R.publish(topic, fits, pid=1))
        assert c.read(5) == (R.PUBACK, 0, b"\x00\x01")
    finally:
        c.close()
    assert wait_until(lambda: stored(suite, "gw-0004", 9104) == [1], 15)
    time.sleep(0.5)
    assert fate(suite, over) is None, "the oversized batch got through"
    still_serving(suite)


def test_flood_of_qos1_publishes_without_reading_acks(suite, pb):
    """20,000 QoS 1 publishes the ACL drops (another gateway's topic) with 200 real batches in
    between, written in one go without reading a single PUBACK: every real batch is stored,
    every publish is acknowledged in the end, the broker's memory stays bounded."""
    legit = [envelope(pb, suite, "gw-0004", i + 1, [("level", 5.0)], epoch=9105)
             for i in range(200)]
    junk = b"j" * 200
    pkts, pid = [], 0
    for e in legit:
        for _ in range(100):
            pid = pid % 65535 + 1
            pkts.append(R.publish("suido/v1/gw-0001/data", junk, pid=pid))
        pid = pid % 65535 + 1
        pkts.append(R.publish("suido/v1/gw-0004/data", e, pid=pid))
    rss0 = broker_rss_kb(suite)
    c = R.open_session(suite, "gw-0004")
    try:
        c.send(R.subscribe("suido/v1/gw-0004/ack", pid=1))  # acks it will not acknowledge
        c.sock.settimeout(120)
        c.sock.sendall(b"".join(pkts))
        assert wait_until(lambda: len(stored(suite, "gw-0004", 9105)) == 200, 60, 0.2), \
            len(stored(suite, "gw-0004", 9105))
        grown = broker_rss_kb(suite) - rss0
        assert grown < 50 * 1024, f"broker RSS grew by {grown} kB"
        acks = 0
        deadline = time.monotonic() + 60
        while acks < len(pkts) and time.monotonic() < deadline:
            p = c.read(10)
            assert p is not None, "the broker closed the flooding session"
            acks += p[0] == R.PUBACK
        assert acks == len(pkts)
    finally:
        c.close()
    assert suite.query("SELECT count(*) FROM rejects WHERE envelope=?", junk) == [(0,)]
    still_serving(suite)


def test_thousands_of_mqtt5_user_properties_are_bounded(suite, pb):
    """MQTT 5 CONNECT and PUBLISH with 8,000 user properties (56 kB, inside the packet limit)
    are taken and the batch is stored unchanged; 20,000 (140 kB) close the connection."""
    rss0 = broker_rss_kb(suite)
    env = envelope(pb, suite, "gw-0004", 1, [("level", 5.0)], epoch=9106)
    many = R.user_props([("k", "v")] * 8000)
    c = R.Conn(suite, "gw-0004")
    try:
        c.send(R.connect("gw-0004", version=5, connect_props=many))
        p = c.read(5)
        assert p is not None and p[0] == R.CONNACK and p[2][1] == 0, p
        c.send(R.publish("suido/v1/gw-0004/data", env, version=5, pid=9, publish_props=many))
        p = c.read(5)
        assert p is not None and p[0] == R.PUBACK and p[2][:2] == b"\x00\x09", p
    finally:
        c.close()
    assert wait_until(lambda: stored(suite, "gw-0004", 9106) == [1], 10)
    env2 = envelope(pb, suite, "gw-0004", 2, [("level", 5.0)], epoch=9106)
    too_many = R.user_props([("k", "v")] * 20000)
    for where in ("connect", "publish"):
        c = R.Conn(suite, "gw-0004")
        try:
            if where == "connect":  # the broker may close before the send ends
                c.try_send(R.connect("gw-0004", version=5, connect_props=too_many))
            else:
                c.send(R.connect("gw-0004", version=5))
                assert c.read(5)[0] == R.CONNACK
                c.try_send(R.publish("suido/v1/gw-0004/data", env2, version=5, pid=10,
                                     publish_props=too_many))
            assert c.closed_within(5)
            assert all(p[0] != R.PUBACK for p in c.seen)
        finally:
            c.close()
    time.sleep(0.5)
    assert stored(suite, "gw-0004", 9106) == [1]
    grown = broker_rss_kb(suite) - rss0
    assert grown < 50 * 1024, f"broker RSS grew by {grown} kB"
    all_alive(suite)


def test_retained_publish_and_retained_will_are_refused(suite, pb):
    """Retain is available on the broker for one topic only, a Sparkplug host's STATE
    (broker/mkconf.sh): every other retained publish is denied by the plugin, counted, never
    delivered nor stored: an MQTT 5 retained data publish is answered "not authorized" (0x87), an
    MQTT 3.1.1 retained command goes nowhere, a retained will on the gateway's death topic is
    denied when it fires; afterwards a new subscriber gets nothing replayed.
    (MQTT 3.1.1 retained data: test_broker_plugin.)"""
    denied0 = suite.metric("mosquitto", "suido_broker_denied_retain_total")
    env = envelope(pb, suite, "gw-0004", 1, [("level", 5.0)], epoch=9107)
    c = R.open_session(suite, "gw-0004", version=5)
    try:
        c.send(R.publish("suido/v1/gw-0004/data", env, retain=True, version=5))
        assert not c.closed_within(2)  # collects the broker's answers meanwhile
        acks = [b for t, _, b in c.seen if t == R.PUBACK]
        assert acks and acks[0][2:3] == b"\x87", c.seen
    finally:
        c.close()
    # a retained command (MQTT 3.1.1): denied (a gateway may not write its cmd topic anyway)
    c = R.open_session(suite, "gw-0004")
    try:
        c.send(R.publish("suido/v1/gw-0004/cmd", b"open valve 3", retain=True))
        c.closed_within(1)
    finally:
        c.close()
    # a retained will: accepted at CONNECT (Mosquitto 2.0 checks a will when it fires), denied
    # then: the connection ends without DISCONNECT and nothing is published or retained
    c = R.Conn(suite, "gw-0004")
    try:
        assert c.mqtt_connect("gw-0004", will=("suido/v1/gw-0004/death", b"w"),
                              will_retain=True) == 0
    finally:
        c.close()
    assert wait_until(lambda: suite.metric("mosquitto", "suido_broker_denied_retain_total")
                      >= denied0 + 3, 5), suite.metric("mosquitto", "suido_broker_denied_retain_total")
    time.sleep(1.0)
    assert fate(suite, env) is None and stored(suite, "gw-0004", 9107) == []
    # nothing was retained: a new subscriber to everything it may read gets nothing
    late = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    assert late.connect()
    try:
        late.subscribe("#")
        time.sleep(0.8)
        assert late.messages == []
    finally:
        late.close()
    all_alive(suite)


def test_gateway_subscribed_to_control_topics_gets_nothing(suite):
    spy = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    assert spy.connect()
    other = Client(suite, *suite.tls_files("gw-0007"), client_id="gw-0007")
    assert other.connect()
    try:
        spy.subscribe("$CONTROL/#")
        spy.subscribe("$CONTROL/dynamic-security/v1/response")
        time.sleep(0.3)
        other.publish("$CONTROL/dynamic-security/v1", b'{"commands":[{"command":"listClients"}]}')
        other.publish("$CONTROL/dynamic-security/v1/response", b'{"responses":[]}')
        time.sleep(0.8)
        assert spy.messages == []
        assert not other.refused.is_set()  # MQTT 3.1.1: dropped without notice
    finally:
        spy.close()
        other.close()
    all_alive(suite)


def test_last_will_aimed_at_a_command_or_control_topic_is_not_delivered(suite, pb):
    """On the suite's own broker: gw-0008 leaves wills on gw-0004's cmd topic and on $CONTROL/
    (the plugin denies them when the broker publishes them), and an MQTT 5 will with a delay
    (not recognised as a will by the plugin; the acl_file denies it). gw-0004, listening on its
    own cmd topic, gets nothing. Control: a signed death will on gw-0008's own death topic is
    delivered and stored."""
    spy = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
    assert spy.connect()
    spy.subscribe("suido/v1/gw-0004/cmd")
    denied0 = suite.metric("mosquitto", "suido_broker_denied_will_total")
    mark = log_mark(suite)
    cr = Crafter(suite, pb, "gw-0008", 9108)
    hb = cr.header(0, kind=pb.KIND_DEATH, reading_count=0)
    death = cr.envelope(hb, pb.Death(reason="will test").SerializeToString())
    try:
        time.sleep(0.3)
        for topic in ("suido/v1/gw-0004/cmd", "$CONTROL/dynamic-security/v1"):
            c = R.Conn(suite, "gw-0008")
            assert c.mqtt_connect("gw-0008", will=(topic, b"open-valve")) == 0
            c.close()  # no DISCONNECT: the broker publishes the will (or not)
            time.sleep(0.2)
        c = R.Conn(suite, "gw-0008")
        c.send(R.connect("gw-0008", version=5, will=("suido/v1/gw-0004/cmd", b"open-valve"),
                         will_props=bytes([R.PROP_WILL_DELAY]) + (1).to_bytes(4, "big")))
        assert c.read(5)[0] == R.CONNACK
        c.close()
        time.sleep(0.2)
        c = R.Conn(suite, "gw-0008")
        assert c.mqtt_connect("gw-0008", will=("suido/v1/gw-0008/death", death)) == 0
        c.close()
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM events WHERE gateway='gw-0008' AND kind='death' "
            "AND boot_epoch=9108")[0][0] == 1, 10), "the allowed will was not delivered"
        time.sleep(1.0)  # past the MQTT 5 will delay
        assert spy.messages == []
    finally:
        spy.close()
    assert wait_until(lambda: suite.metric("mosquitto", "suido_broker_denied_will_total")
                      >= denied0 + 2, 3)
    log = log_since(suite, mark)
    assert "event=denied reason=will_topic user=gw-0008 access=will " \
           "topic=suido/v1/gw-0004/cmd" in log, log
    assert "event=denied reason=will_topic user=gw-0008 access=will " \
           "topic=$CONTROL/dynamic-security/v1" in log, log
    all_alive(suite)


ACL_GOOD_LINES = "user gw-0004\ntopic write suido/v1/gw-0004/data\n"
BAD_ACLS = {
    "missing": (None, "Unable to open acl_file"),
    "unknown_keyword": (ACL_GOOD_LINES + "frobnicate gw-0004\n", "Invalid line in acl_file"),
    "topic_without_topic": (ACL_GOOD_LINES + "topic\n", "Empty topic in acl_file"),
    "bad_access_type": (ACL_GOOD_LINES + "topic rw suido/#\n", "Invalid topic access type"),
    "user_without_name": ("user\n" + ACL_GOOD_LINES, "Missing username in acl_file"),
}


@pytest.mark.parametrize("case", list(BAD_ACLS))
def test_broker_refuses_to_start_with_a_missing_or_malformed_acl_file(suite, tmp_path, case):
    text, needle = BAD_ACLS[case]
    acl = tmp_path / "acl"
    if text is not None:
        acl.write_text(text)
    result = ExtraBroker(suite, tmp_path, acl=acl).run()
    assert result is not None, "the broker started with a bad acl_file"
    code, out = result
    assert code != 0 and needle in out and str(acl) in out, out


def test_empty_or_nul_filled_acl_file_denies_everything(suite, tmp_path):
    """bad-inputs.md wants the broker to refuse to start on an empty ACL file. Mosquitto 2.0.11
    starts (an empty file, or one whose lines begin with NUL bytes, is read as no rules; reported),
    so what is checked is that it fails closed: nothing at all is delivered. Control: the same
    broker with the suite's own ACL delivers."""

    def delivered(acl):
        root = tmp_path / ("broker-" + (acl.name if acl else "good"))
        root.mkdir()
        with ExtraBroker(suite, root, acl=acl) as b:
            spy = Client(suite, *suite.tls_files("ingest"), client_id="ingest")
            spy.port = b.port
            gw = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
            gw.port = b.port
            assert spy.connect() and gw.connect()
            try:
                spy.subscribe("suido/v1/+/data")
                gw.subscribe("suido/v1/gw-0004/cmd")
                time.sleep(0.3)
                gw.publish("suido/v1/gw-0004/data", b"acl probe")
                spy.publish("suido/v1/gw-0004/cmd", b"acl probe cmd")
                time.sleep(0.7)
                return spy.messages + gw.messages
            finally:
                spy.close()
                gw.close()

    empty = tmp_path / "acl.empty"
    empty.write_text("")
    nul = tmp_path / "acl.nul"
    nul.write_bytes(b"\x00" * 4096 + b"\n")
    assert delivered(empty) == []
    assert delivered(nul) == []
    assert delivered(None) == [("suido/v1/gw-0004/data", b"acl probe")]


def test_idle_and_stalled_connections_do_not_keep_real_gateways_out(suite):
    """200 idle TCP connections, 30 TLS handshakes stopped half way and 20 TLS sessions that
    never send CONNECT, all held open: real gateways still connect and are served, and the
    broker's memory stays bounded. (That the broker closes them, within 90 s, is the slow test
    below.)"""
    rss0 = broker_rss_kb(suite)
    held = []
    try:
        for _ in range(200):
            held.append(socket.create_connection(("localhost", suite.port), timeout=5))
        for _ in range(30):
            s = socket.create_connection(("localhost", suite.port), timeout=5)
            s.sendall(bytes.fromhex("1603010200010001fc0303"))  # a ClientHello, cut short
            held.append(s)
        ctx = gw_ctx(suite, "gw-0007")
        for _ in range(20):
            held.append(ctx.wrap_socket(socket.create_connection(("localhost", suite.port),
                                                                 timeout=5),
                                        server_hostname="localhost"))
        time.sleep(0.5)
        still_serving(suite)
        c = Client(suite, *suite.tls_files("gw-0004"), client_id="gw-0004")
        try:
            assert c.connect()
        finally:
            c.close()
        grown = broker_rss_kb(suite) - rss0
        assert grown < 50 * 1024, f"broker RSS grew by {grown} kB"
    finally:
        for s in held:
            s.close()
    all_alive(suite)


@pytest.mark.skipif(os.environ.get("SUIDO_SLOW") != "1",
                    reason="takes about 100 s: run with SUIDO_SLOW=1")
def test_idle_and_stalled_connections_are_closed_within_90_seconds(suite):
    """Slow (about 100 s, runs only with SUIDO_SLOW=1): an idle TCP connection, a TLS handshake
    stopped half way and a TLS session that never sends CONNECT must each be closed by the
    broker within 90 s of being opened (bad-inputs.md).

    Mosquitto 2.0.11 gives a connection that has not sent CONNECT a keepalive of 60 s, closes it
    once 1.5 x 60 s = 90 s have passed, and checks that only every 6 s: measured, they are closed
    after 91-96 s. So this test fails on Mosquitto 2.0.11 (reported); it checks the requirement,
    not what the broker happens to do."""
    opened = {}
    socks = {}
    socks["idle_tcp"] = socket.create_connection(("localhost", suite.port))
    opened["idle_tcp"] = time.monotonic()
    s = socket.create_connection(("localhost", suite.port))
    s.sendall(bytes.fromhex("1603010200010001fc0303"))
    socks["stalled_tls"], opened["stalled_tls"] = s, time.monotonic()
    ctx = gw_ctx(suite, "gw-0007")
    socks["tls_no_connect"] = ctx.wrap_socket(socket.create_connection(("localhost", suite.port)),
                                              server_hostname="localhost")
    opened["tls_no_connect"] = time.monotonic()
    closed = {}
    deadline = time.monotonic() + 130
    for s in socks.values():
        s.settimeout(0.2)
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for name, s in socks.items():
            if name in closed:
                continue
            try:
                if s.recv(4096) == b"":
                    closed[name] = time.monotonic() - opened[name]
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            except (OSError, ssl.SSLError):
                closed[name] = time.monotonic() - opened[name]
    for s in socks.values():
        s.close()
    print("closed after: " + ", ".join(f"{k} {v:.1f} s" for k, v in closed.items()))
    assert set(closed) == set(socks), f"still open after 130 s: {set(socks) - set(closed)}"
    late = {k: round(v, 1) for k, v in closed.items() if v > 90.0}
    assert not late, f"closed later than 90 s: {late}"


# ============================================================== ZeroMQ / CURVE between services

def stage_frame(pb, gw, env):
    return pb.StageMessage(topic=f"suido/v1/{gw}/data", received_ms=int(time.time() * 1000),
                           envelope=env).SerializeToString()


def zmq_push_plain(port, payload, mechanism):
    """A PUSH with the NULL or PLAIN mechanism (no CURVE) that sends one frame."""
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    if mechanism == "plain":
        s.plain_username = b"ingest"
        s.plain_password = b"ingest"
    s.connect(f"tcp://127.0.0.1:{port}")
    try:
        s.send(payload, copy=True)
        time.sleep(0.8)
    finally:
        s.close()


def handshake_audits(suite, socket_name, *reasons):
    return sum(suite.query("SELECT count(*) FROM audit WHERE event='zmq_handshake_refused' AND "
                           "subject=? AND detail LIKE ?", socket_name, f"%reason={r} %")[0][0]
               for r in reasons)


def test_null_and_plain_mechanism_clients_get_nothing_through(suite, pb):
    verify_port, archive_port = suite.base + 4, suite.base + 2
    env = envelope(pb, suite, "gw-0007", 1, [("level", 5.0)], epoch=9109)
    recv0 = {s: settled(suite, s, "suido_stage_received_total") for s in ("verify", "archive")}
    zap0 = {s: suite.metric(s, "suido_zap_denied_total") for s in ("verify", "archive")}
    # libzmq reports a mechanism mismatch as a protocol error, or as a failure without detail
    # when the client has already gone: either way refused below ZAP, and audited
    below_zap = ("protocol_error", "handshake_failed")
    audited0 = {s: handshake_audits(suite, f"{s}:input", *below_zap)
                for s in ("verify", "archive")}
    for mech in ("null", "plain"):
        zmq_push_plain(verify_port, stage_frame(pb, "gw-0007", env), mech)
        zmq_push_plain(archive_port, alert_frame(pb, f"{mech}_mechanism"), mech)
    time.sleep(1.3)  # metrics are rewritten every second
    # (the archive does receive frames meanwhile: the audit events of these refusals)
    assert suite.metric("verify", "suido_stage_received_total") == recv0["verify"]
    for s in ("verify", "archive"):
        # the handshake fails on the mechanism, before any ZAP request
        assert suite.metric(s, "suido_zap_denied_total") == zap0[s], s
    assert fate(suite, env) is None
    assert suite.query("SELECT count(*) FROM alerts WHERE rule IN "
                       "('null_mechanism','plain_mechanism')") == [(0,)]
    # refused below ZAP, and still in the audit log: two attempts on each socket
    for s in ("verify", "archive"):
        assert wait_until(lambda: handshake_audits(suite, f"{s}:input", *below_zap)
                          >= audited0[s] + 2, 5), s
    # control: the very same frame over CURVE as ingest is verified and stored
    curve_push(suite, verify_port, "verify", service_keys(suite, "ingest"),
               stage_frame(pb, "gw-0007", env))
    assert wait_until(lambda: fate(suite, env) == "stored", 10)
    all_alive(suite)


@pytest.mark.parametrize("target,server,port_off", [("verify", "verify", 4),
                                                    ("profile", "profile", 3)])
def test_curve_keys_not_on_the_allow_list_of_verify_and_profile_are_refused(
        suite, pb, target, server, port_off):
    """(archive and registry: test_access.py)"""
    port = suite.base + port_off
    recv0 = settled(suite, target, "suido_stage_received_total")
    denied0 = suite.metric(target, "suido_zap_denied_total")
    audited0 = handshake_audits(suite, f"{target}:input", "auth_refused")
    env = envelope(pb, suite, "gw-0007", 2, [("level", 5.0)], epoch=9109)
    for keys in (zmq.curve_keypair(), service_keys(suite, "archive")):
        curve_push(suite, port, server, keys, stage_frame(pb, "gw-0007", env))
    assert wait_until(lambda: suite.metric(target, "suido_zap_denied_total") >= denied0 + 2, 5)
    assert wait_until(lambda: handshake_audits(suite, f"{target}:input", "auth_refused")
                      >= audited0 + 2, 5)
    time.sleep(1.2)
    assert suite.metric(target, "suido_stage_received_total") == recv0
    assert fate(suite, env) is None
    all_alive(suite)


@pytest.mark.parametrize("target,port_off", [("archive", 2), ("verify", 4)])
def test_malformed_and_stalled_handshakes_do_not_stop_a_legitimate_sender(suite, pb, target,
                                                                          port_off):
    port = suite.base + port_off
    garbage = []
    for n in (1, 64, 4096):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(os.urandom(n))
        garbage.append(s)
    # a valid ZMTP 3 signature and version, then nothing: the handshake stalls
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
    stalled.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03")
    t0 = time.monotonic()
    try:
        if target == "archive":
            curve_push(suite, port, "archive", service_keys(suite, "anomaly"),
                       alert_frame(pb, "after_bad_handshakes"))
            assert wait_until(lambda: suite.query("SELECT count(*) FROM alerts WHERE "
                                                  "rule='after_bad_handshakes'") == [(1,)], 5)
        else:
            env = envelope(pb, suite, "gw-0007", 3, [("level", 5.0)], epoch=9109)
            curve_push(suite, port, "verify", service_keys(suite, "ingest"),
                       stage_frame(pb, "gw-0007", env))
            assert wait_until(lambda: fate(suite, env) == "stored", 5)
        # the stalled peer is dropped after the handshake interval (5 s)
        stalled.settimeout(15)
        data = b""
        try:
            while True:
                chunk = stalled.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        waited = time.monotonic() - t0
        assert waited < 12, f"a stalled handshake was held for {waited:.1f} s"
        assert data.startswith(b"\xff"), data[:16]  # the server's greeting came first
        assert b"CURVE" in data
        for s in garbage:  # the garbage connections were closed
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        stalled.close()
        for s in garbage:
            s.close()
    all_alive(suite)


def test_frame_over_1_mib_from_an_allowed_peer_is_dropped_and_the_peer_carries_on(suite, pb):
    port = suite.base + 2
    big = pb.StageMessage(topic="suido/v1/alerts/reservoir-02",
                          alert=pb.Alert(id="big", rule="oversized_frame",
                                         evidence="x" * MiB)).SerializeToString()
    assert len(big) > MiB
    recv0 = settled(suite, "archive", "suido_stage_received_total")
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_serverkey = (suite.dir / "services" / "archive" / "curve.pub").read_bytes().strip()
    s.curve_publickey, s.curve_secretkey = service_keys(suite, "anomaly")
    s.connect(f"tcp://127.0.0.1:{port}")
    try:
        s.send(big)
        time.sleep(1.5)
        # dropped by the socket: never received, let alone stored
        assert suite.metric("archive", "suido_stage_received_total") == recv0
        # the same peer (its socket reconnects) still gets normal frames through
        s.send(alert_frame(pb, "after_oversized_same_socket"))
        assert wait_until(lambda: suite.query("SELECT count(*) FROM alerts WHERE "
                                              "rule='after_oversized_same_socket'") == [(1,)], 10)
    finally:
        s.close()
    curve_push(suite, port, "archive", service_keys(suite, "anomaly"),
               alert_frame(pb, "after_oversized_new_socket"))
    assert wait_until(lambda: suite.query("SELECT count(*) FROM alerts WHERE "
                                          "rule='after_oversized_new_socket'") == [(1,)], 5)
    assert suite.query("SELECT count(*) FROM alerts WHERE rule='oversized_frame'") == [(0,)]
    assert wait_until(lambda: suite.metric("archive", "suido_stage_received_total")
                      == recv0 + 2, 3)
    all_alive(suite)


def forged_batch(pb, gw, epoch, seq):
    """What the profile hands the archive for a verified batch: stored as is if accepted."""
    h = pb.Header(version=1, gateway_id=gw, boot_epoch=epoch, seq=seq,
                  timestamp_ms=int(time.time() * 1000), key_id="forged", kind=pb.KIND_DATA,
                  reading_count=1)
    return pb.StageMessage(topic=f"suido/v1/{gw}/data", received_ms=int(time.time() * 1000),
                           envelope=b"forged", status=pb.VERIFY_OK, reason="ok", header=h,
                           batch=pb.TelemetryBatch(readings=[pb.Reading(channel="level",
                                                                        value=1.0)]),
                           site="reservoir-07").SerializeToString()


@pytest.mark.parametrize("sender,target,kind,seq", [
    ("anomaly", "archive", "data", 1),
    ("verify", "archive", "data", 2),
    ("registry", "archive", "data", 3),
    ("profile", "archive", "alert", 0),
    ("ingest", "verify", "alert", 0),
])
def test_allowed_peer_sending_a_kind_it_has_no_business_with_is_refused(suite, pb, sender,
                                                                        target, kind, seq):
    """Beyond test_access.py's verify->archive alert: a verified batch handed to the archive by
    anyone but the profile (it would be stored without verification: the control test below
    shows the same frame from the profile is stored), an alert from the profile, and an alert
    from ingest to the verifier."""
    port = suite.base + (2 if target == "archive" else 4)
    tag = f"forged_{sender}_to_{target}"
    frame = forged_batch(pb, "gw-0007", 9110, seq) if kind == "data" else alert_frame(pb, tag)
    denied0 = suite.metric(target, "suido_stage_denied_total")
    curve_push(suite, port, target, service_keys(suite, sender), frame)
    assert wait_until(lambda: suite.metric(target, "suido_stage_denied_total") == denied0 + 1, 5)
    assert f"peer={sender} kind={kind} error=\"message kind not accepted from this peer\"" \
        in suite.log(target), suite.log(target)
    if kind == "data":
        assert seq not in stored(suite, "gw-0007", 9110)
    else:
        assert suite.query("SELECT count(*) FROM alerts WHERE rule=?", tag) == [(0,)]
    all_alive(suite)


def test_the_same_forged_batch_from_the_profile_is_stored(suite, pb):
    """Control for the test above: the frame itself is acceptable, only its sender was not."""
    curve_push(suite, suite.base + 2, "archive", service_keys(suite, "profile"),
               forged_batch(pb, "gw-0007", 9110, 6))
    assert wait_until(lambda: stored(suite, "gw-0007", 9110) == [6], 5)


# ============================================================ Protobuf and the crypto envelope

def test_malformed_protobuf_is_refused_by_reason_and_audited(suite, pb):
    cr = Crafter(suite, pb, "gw-0007", 9111)
    good2 = cr.good(2)
    hb3, b3 = cr.header(3), cr.body()
    sig3 = cr.sign(hb3, b3)
    now = int(time.time() * 1000)
    base_h = pb.Header(version=1, gateway_id="gw-0007", boot_epoch=9111, timestamp_ms=now,
                       key_id=cr.kid, kind=pb.KIND_DATA, reading_count=1).SerializeToString()
    b = cr.body()
    h_overlong = base_h + b"\x20" + b"\x84" + b"\x80" * 9 + b"\x00"   # seq as an 11-byte varint
    h_wiretype = b"\x08\x01\x10\x07" + pb.Header(  # gateway_id (field 2) as a varint
        boot_epoch=9111, seq=5, timestamp_ms=now, key_id=cr.kid, kind=pb.KIND_DATA,
        reading_count=1).SerializeToString()
    h_past_end = base_h + b"\x32\x40gw"                                 # key_id: 64 bytes, 2 there
    hb = {n: cr.header(n) for n in (8, 9, 10)}
    cases = [
        ("control_first", cr.good(1), "stored"),
        ("truncated_in_half", good2[:len(good2) // 2], "malformed_envelope"),
        ("signature_cut_short", good2[:-5], "malformed_envelope"),
        ("body_length_past_the_end", ld(1, hb3) + b"\x12" + varint(5000) + b3 + ld(3, sig3),
         "malformed_envelope"),
        ("overlong_varint_tag", b"\x8a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00" + good2,
         "malformed_envelope"),
        ("overlong_varint_length", b"\x0a" + b"\x80" * 10 + b"\x01" + good2,
         "malformed_envelope"),
        ("header_as_varint", b"\x08\x05" + ld(2, b3) + ld(3, sig3), "malformed_envelope"),
        ("signed_header_overlong_varint", cr.envelope(h_overlong, b), "malformed_header"),
        ("signed_header_wrong_wire_type", cr.envelope(h_wiretype, b), "malformed_header"),
        ("signed_header_length_past_end", cr.envelope(h_past_end, b), "malformed_header"),
        ("signed_body_wrong_wire_type", cr.envelope(hb[8], b"\x08\x01"), "malformed_body"),
        ("signed_body_truncated", cr.envelope(hb[9], cr.body()[:-3]), "malformed_body"),
        ("signed_body_length_past_end", cr.envelope(hb[10], b"\x0a\x40" + cr.body()),
         "malformed_body"),
        ("control_last", cr.good(11), "stored"),
    ]
    check_fates(suite, pb, "gw-0007", cases)
    still_serving(suite)


def test_body_packed_with_tiny_repeated_fields_is_refused_and_the_verifier_stays_responsive(
        suite, pb):
    """A million readings cannot fit in 64 KiB: the largest message the broker passes, full of
    empty readings (about 30,000), is refused by count; the verifier answers the next batch at
    once. A stage frame of a million bytes of them, as ingest (no broker limit), is refused by
    size before it is decoded."""
    cr = Crafter(suite, pb, "gw-0007", 9112)
    n = 30000
    many = b"\x0a\x00" * n
    cases = [
        ("declared", cr.envelope(cr.header(1, reading_count=n), many), "reading_count"),
        ("undeclared", cr.envelope(cr.header(2, reading_count=1), many), "reading_count"),
        ("control", cr.good(3), "stored"),
    ]
    assert all(len(e) < 65500 for _, e, _ in cases)
    t0 = time.monotonic()
    check_fates(suite, pb, "gw-0007", cases)
    assert time.monotonic() - t0 < 15
    # as ingest, straight to the verifier: a 1,000,000-byte envelope of 500,000 empty readings
    huge = ld(1, cr.header(4, reading_count=1)) + ld(2, b"\x0a\x00" * 500_000) + ld(3, b"\x30")
    before = rejected(suite, "too_big")
    audited = audit_count(suite, "gw-0007", "too_big")
    curve_push(suite, suite.base + 4, "verify", service_keys(suite, "ingest"),
               stage_frame(pb, "gw-0007", huge))
    # a refusal keeps at most the first 64 KiB of the envelope as evidence (so it always fits
    # the archive's frame limit)
    assert wait_until(lambda: fate(suite, huge[:65536]) == "too_big", 10)
    assert wait_until(lambda: rejected(suite, "too_big") == before + 1, 5)
    assert audit_count(suite, "gw-0007", "too_big") == audited + 1
    still_serving(suite)


def test_broken_aes_gcm_and_rsa_oaep_are_one_uniform_decrypt_refusal(suite, pb):
    cr = Crafter(suite, pb, "gw-0007", 9113)
    k32 = os.urandom(32)

    def flip_last(ct):
        return ct[:-1] + bytes([ct[-1] ^ 0x01])

    def wrapped(key, algorithm=hashes.SHA256(), mgf=hashes.SHA256(), label=None):
        return cr.wrap.encrypt(key, padding.OAEP(mgf=padding.MGF1(mgf), algorithm=algorithm,
                                                 label=label))

    k = [os.urandom(32) for _ in range(6)]
    cases = [
        ("control_first", cr.sealed(1, key=k32), "stored"),
        # AES-GCM (session key cached from the control: only the GCM check differs)
        ("tag_one_bit_flipped", cr.sealed(2, key=k32, wrapped=None, mutate=flip_last), "decrypt"),
        ("tag_truncated", cr.sealed(3, mutate=lambda ct: ct[:-4]), "decrypt"),
        ("no_room_for_a_tag", cr.sealed(4, mutate=lambda ct: ct[:10]), "decrypt"),
        ("iv_16_bytes", cr.sealed(5, iv=os.urandom(16)), "decrypt"),
        ("iv_8_bytes", cr.sealed(6, iv=os.urandom(8)), "decrypt"),
        ("header_iv_differs", cr.sealed(7, header_iv=os.urandom(12)), "decrypt"),
        ("aad_changed", cr.sealed(8, aad=cr.header(1008)), "decrypt"),
        # RSA-OAEP
        ("oaep_bad_padding", cr.sealed(9, wrapped=b"\x00" + os.urandom(255)), "decrypt"),
        ("oaep_not_below_modulus", cr.sealed(10, wrapped=b"\xff" * 256), "decrypt"),
        ("oaep_255_bytes", cr.sealed(11, wrapped=wrapped(k[0])[:255]), "decrypt"),
        ("oaep_257_bytes", cr.sealed(12, wrapped=wrapped(k[0]) + b"\x00"), "decrypt"),
        ("oaep_empty", cr.sealed(13, wrapped=b""), "decrypt"),
        ("oaep_sha1", cr.sealed(14, key=k[1], wrapped=wrapped(k[1], hashes.SHA1(),
                                                                hashes.SHA1())), "decrypt"),
        ("oaep_mgf1_sha1", cr.sealed(15, key=k[2], wrapped=wrapped(k[2], mgf=hashes.SHA1())),
         "decrypt"),
        ("oaep_label", cr.sealed(16, key=k[3], wrapped=wrapped(k[3], label=b"suido")),
         "decrypt"),
        ("pkcs1_v1_5", cr.sealed(17, key=k[4], wrapped=cr.wrap.encrypt(k[4],
                                                                       padding.PKCS1v15())),
         "decrypt"),
        ("unwrapped_key_20_bytes", cr.sealed(18, key=k[5], wrapped=wrapped(os.urandom(20))),
         "decrypt"),
        ("control_last", cr.sealed(19), "stored"),
    ]
    check_fates(suite, pb, "gw-0007", cases)
    assert suite.query("SELECT seq, encrypted FROM batches WHERE gateway='gw-0007' AND "
                       "boot_epoch=9113 ORDER BY seq") == [(1, 1), (19, 1)]
    still_serving(suite)


def test_ecdsa_signature_not_strict_der_or_out_of_range_is_refused(suite, pb):
    cr = Crafter(suite, pb, "gw-0007", 9114)

    def der_int(v, pad=0):
        b = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return b"\x02" + bytes([len(b) + pad]) + b"\x00" * pad + b

    def seq(content, long_form=False):
        return (b"\x30\x81" if long_form else b"\x30") + bytes([len(content)]) + content

    def signed(n, make):
        """The envelope of seq n with a signature made from the real (r, s); the real
        signature is chosen short (r and s below 2^255: 70 bytes) so that the BER variants
        still fit the 72-byte signature field and reach the signature check."""
        hb, b = cr.header(n), cr.body()
        while True:
            der = cr.sign(hb, b)
            if len(der) <= 70:
                break
        r, s = decode_dss_signature(der)
        return cr.envelope(hb, b, make(r, s))

    def unknown_key_signed(n):
        """Signed correctly, with the right key id even, by a key the registry never saw."""
        other = ec.generate_private_key(ec.SECP256R1())
        hb, b = cr.header(n), cr.body()
        return cr.envelope(hb, b, other.sign(DOMAIN + len(hb).to_bytes(4, "big") + hb + b,
                                             ec.ECDSA(hashes.SHA256())))

    cases = [
        ("control_first", signed(1, encode_dss_signature), "stored"),
        ("ber_long_form_length", signed(2, lambda r, s: seq(der_int(r) + der_int(s), True)),
         "bad_signature"),
        ("ber_padded_integer", signed(3, lambda r, s: seq(der_int(r, pad=1) + der_int(s))),
         "bad_signature"),
        ("ber_indefinite_length", signed(4, lambda r, s: b"\x30\x80" + der_int(r) + der_int(s)
                                         + b"\x00\x00"), "bad_signature"),
        ("trailing_byte", signed(5, lambda r, s: encode_dss_signature(r, s) + b"\x00"),
         "bad_signature"),
        ("r_zero", signed(6, lambda r, s: encode_dss_signature(0, s)), "bad_signature"),
        ("s_zero", signed(7, lambda r, s: encode_dss_signature(r, 0)), "bad_signature"),
        ("r_plus_n", signed(8, lambda r, s: encode_dss_signature(r + P256_N, s)),
         "bad_signature"),
        ("s_plus_n", signed(9, lambda r, s: encode_dss_signature(r, s + P256_N)),
         "bad_signature"),
        ("r_equals_n", signed(10, lambda r, s: encode_dss_signature(P256_N, s)),
         "bad_signature"),
        ("s_negative", signed(11, lambda r, s: seq(der_int(r) + b"\x02\x01\xff")),
         "bad_signature"),
        ("valid_signature_by_an_unknown_key", unknown_key_signed(12), "bad_signature"),
        ("control_last", signed(13, encode_dss_signature), "stored"),
    ]
    check_fates(suite, pb, "gw-0007", cases)
    still_serving(suite)


def test_sequence_or_boot_epoch_going_back_and_old_data_are_refused(suite, pb):
    """Replay of the same (epoch, seq) and the +300 s side are in test_pipeline.py; here: a
    sequence lower than one already accepted (never stored itself, so the archive could not
    catch it), a boot epoch lower than one already accepted, and data 310 s old."""
    now = int(time.time() * 1000)
    old = Crafter(suite, pb, "gw-0004", 9115)
    cr = Crafter(suite, pb, "gw-0004", 9116)
    cases = [
        ("seq_5", cr.good(5), "stored"),
        ("seq_3_after_5", cr.good(3), "replay"),
        ("earlier_boot_epoch", old.good(99), "replay"),
        ("310_s_old", cr.good(6, timestamp_ms=now - 310_000), "outside_time_window"),
        ("280_s_old", cr.good(7, timestamp_ms=now - 280_000), "stored"),
        ("seq_8", cr.good(8), "stored"),
    ]
    check_fates(suite, pb, "gw-0004", cases)
    assert stored(suite, "gw-0004", 9116) == [5, 7, 8]
    assert stored(suite, "gw-0004", 9115) == []
    still_serving(suite)


def test_data_or_backfill_stamped_in_the_future_is_refused_and_audited(suite, pb):
    """Nothing may be stamped more than 10 s ahead of the receive time ([verify] max_ahead_s):
    a backfill (no time window: it may be a day old) whose header or one of whose readings (batch
    time + offset) runs ahead is refused as future_timestamp, counted and audited, and so is a
    live batch on time whose reading runs ahead. Kept, such a reading would be the gate's and the
    anomaly checker's latest value until the clock caught up."""
    now = int(time.time() * 1000)
    cr = Crafter(suite, pb, "gw-0004", 9117)

    def batch(seq, ts, offset=0, kind=pb.KIND_BACKFILL):
        body = pb.TelemetryBatch(readings=[pb.Reading(channel="level", value=5.0,
                                                      offset_ms=offset)]).SerializeToString()
        return cr.envelope(cr.header(seq, kind=kind, timestamp_ms=ts), body)

    check_fates(suite, pb, "gw-0004", [
        ("day_old", batch(1, now - 86_400_000), "stored"),
        ("an_hour_ahead", batch(2, now + 3_600_000), "future_timestamp"),
        ("a_minute_ahead", batch(3, now + 60_000), "future_timestamp"),
        ("reading_ten_minutes_ahead", batch(4, now - 60_000, offset=660_000), "future_timestamp"),
        ("reading_in_the_past", batch(5, now - 600_000, offset=300_000), "stored"),
    ], kind="backfill")
    check_fates(suite, pb, "gw-0004", [
        ("live_reading_two_minutes_ahead", batch(6, now, 120_000, pb.KIND_DATA),
         "future_timestamp"),
        ("live_on_time", batch(7, now, 0, pb.KIND_DATA), "stored"),
    ])
    assert stored(suite, "gw-0004", 9117) == [1, 5, 7]
    still_serving(suite)


def birth_fate(suite, env):
    """'stored' (in events), the reason a birth was refused with, or None (not seen yet)."""
    if suite.query("SELECT count(*) FROM events WHERE envelope=?", env)[0][0]:
        return "stored"
    rows = suite.query("SELECT reason FROM rejects WHERE envelope=?", env)
    return rows[0][0] if rows else None


def test_birth_of_an_older_boot_epoch_is_refused_even_after_a_registry_restart(suite, pb):
    """A birth of a boot epoch older than the newest birth of its gateway may not change the
    units it declared (a replayed or late birth would make every reading be converted wrongly):
    refused as stale_birth, counted, stored as a refusal and audited; the same epoch may repeat
    (a gateway re-announces itself after every reconnect); the registry keeps the newest epoch
    across a restart. The newest birth declares the profile's own unit (m), the stale one cm: had
    it been applied, the next reading would be converted."""
    from test_profile import birth_envelope
    gw, new = "gw-0004", int(time.time())
    old = new - 100

    def send_birth(epoch, unit):
        env = birth_envelope(pb, suite, gw, epoch, [("level", unit)])
        publish_all(suite, gw, [env], topic=f"suido/v1/{gw}/birth")
        assert wait_until(lambda: birth_fate(suite, env) is not None, 10)
        return env, birth_fate(suite, env)

    def stale_audits():
        return suite.query("SELECT count(*) FROM audit WHERE event='message_refused' AND "
                           "subject=? AND detail=?", gw,
                           f"reason=stale_birth topic=suido/v1/{gw}/birth epoch={old} seq=0")[0][0]

    refused = suite.metric("profile", 'suido_rejected_total{reason="stale_birth"}')
    audits = stale_audits()
    # refused by the profile itself, before the registry is asked: the epoch is not recorded
    assert send_birth(new + 1, "furlong")[1] == "unit_mismatch"
    assert send_birth(new, "m")[1] == "stored"
    time.sleep(1.1)  # another birth of the same epoch: other bytes (its timestamp)
    assert send_birth(new, "m")[1] == "stored"
    assert send_birth(old, "cm")[1] == "stale_birth"
    assert wait_until(lambda: suite.metric(
        "profile", 'suido_rejected_total{reason="stale_birth"}') == refused + 1, 5)
    assert wait_until(lambda: stale_audits() == audits + 1, 5)
    # the units declared by the newest birth still hold: no conversion of the next reading
    converted = suite.metric("profile", "suido_profile_converted_total")
    cr = Crafter(suite, pb, gw, new)
    env = cr.good(1)
    publish_all(suite, gw, [env])
    assert wait_until(lambda: fate(suite, env) == "stored", 10)
    time.sleep(1.5)
    assert suite.metric("profile", "suido_profile_converted_total") == converted
    # the registry remembers the newest epoch across a restart
    suite.stop("registry")
    suite.start_service("registry")
    assert wait_until(lambda: suite.ctl("inventory", check=False).returncode == 0, 10)
    fates = []
    for _ in range(5):  # the profile's registry client may time out once while it reconnects
        fates.append(send_birth(old, "cm")[1])
        if fates[-1] == "stale_birth":
            break
        time.sleep(1)
    assert fates[-1] == "stale_birth", fates
    assert send_birth(new, "m")[1] == "stored"
    still_serving(suite)
