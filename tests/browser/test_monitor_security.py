"""The monitor's defences, seen by a plain HTTPS client: TLS only, with the deployment's
certificate; no page and no data without a session; sessions that end (idle, absolute, logout,
suspension); the CSRF token on every change; no escalation beyond the role; and every malformed,
oversized, unknown or injected request refused with a clear 4xx and an audit entry, before
anything reaches the registry or the archive."""
import json
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import time

import pytest

from suite import BIN, free_base_port, wait_until

PAGES = ["/overview", "/trends", "/alerts", "/planning", "/commands", "/audit"]
APIS = ["/api/session", "/api/overview", "/api/channels?gateway=gw-0001",
        "/api/trend?gateway=gw-0001&channel=treatment.ph", "/api/alerts", "/api/alerts/live",
        "/api/alert?id=1", "/api/commands", "/api/audit", "/api/audit/verify",
        "/api/planning?from=2026-01-01&to=2026-01-31",
        "/api/planning.csv?from=2026-01-01&to=2026-01-31"]


def registry_access(env, operator):
    path = env.suite.dir / "state" / "registry" / "registry.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
        return c.execute("SELECT result FROM access WHERE operator=?", (operator,)).fetchall()


def logged_in(env, ident, role):
    if ident not in env.passwords:
        env.operator(ident, role)
    c = env.client()
    c.login(ident, env.passwords[ident])
    return c


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_https_only_with_the_deployment_certificate(monitor_env):
    env = monitor_env
    ctx = ssl.create_default_context(cafile=str(env.suite.dir / "ca" / "ca.crt"))
    with socket.create_connection(("127.0.0.1", env.port), 5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cert = tls.getpeercert()
    assert ("DNS", "localhost") in cert["subjectAltName"]
    # plain HTTP gets no page
    with socket.create_connection(("127.0.0.1", env.port), 5) as raw:
        raw.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw.settimeout(5)
        try:
            reply = raw.recv(4096)
        except (ConnectionResetError, socket.timeout):
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200")
    # TLS before 1.2 is refused
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
    except ValueError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        with socket.create_connection(("127.0.0.1", env.port), 5) as raw:
            with old.wrap_socket(raw, server_hostname="localhost"):
                pass


def test_no_page_or_data_without_login(monitor_env):
    env = monitor_env
    before = env.audit_head()
    c = env.client()
    for page in PAGES:
        status, headers, body = c.get(page)
        assert status == 303 and dict(headers)["Location"] == "/login", page
        assert b"gw-0001" not in body
    for api in APIS:
        status, data = c.json("GET", api)
        assert status == 401 and set(data) == {"error", "status"}, api
    # a made-up session id is no session
    c.cookies["__Host-suido-sid"] = "a" * 64
    assert c.json("GET", "/api/overview")[0] == 401
    assert c.request("POST", "/api/alert/ack", {"case_id": 1})[0] == 401
    # the login form and its assets need none; the pages' HTML is not reachable as an asset
    assert c.get("/login")[0] == 200 and c.get("/static/app.js")[0] == 200
    assert c.get("/static/overview.html")[0] == 404
    # each is counted; audited within the budget for what outsiders can repeat at will
    assert wait_until(lambda: env.suite.metric(
        "monitor", 'suido_rejected_total{reason="no_session"}') >= len(PAGES) + len(APIS) + 2, 10)
    assert wait_until(lambda: env.audit("monitor_unauthenticated", before), 10)


def test_responses_carry_the_security_headers_and_strict_cookies(monitor_env):
    env = monitor_env
    c = env.client()
    status, headers, _ = c.get("/api/login")
    h = {k.lower(): v for k, v in headers}
    assert status == 200
    assert "default-src 'none'" in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert h["strict-transport-security"].startswith("max-age=")
    assert h["cache-control"] == "no-store"
    env.operator("sam", "viewer")
    c.login("sam", env.passwords["sam"])
    status, headers, _ = c.get("/api/session")
    assert status == 200
    # the session cookie as the login answer set it
    c2 = env.client()
    form = json.loads(c2.get("/api/login")[2])
    c2.csrf = form["csrf"]
    status, headers, _ = c2.request("POST", "/api/login", {"operator": "sam",
                                                            "password": env.passwords["sam"],
                                                            "totp": env.code("sam")})
    assert status == 200
    cookie = [v for k, v in headers if k.lower() == "set-cookie" and "sid=" in v][0]
    assert cookie.startswith("__Host-suido-sid=")
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attr in cookie
    assert "Domain" not in cookie
    assert re.match(r"__Host-suido-sid=[0-9a-f]{64};", cookie)


class SecondMonitor:
    """Another monitor process on the same deployment with short session limits (its MQTT
    identity points nowhere, so it cannot push the suite's monitor off the broker)."""

    def __init__(self, env, idle_s, session_s):
        s = env.suite
        self.port = free_base_port(2)
        text = (s.dir / "etc" / "monitor.conf").read_text()
        out, section = [], ""
        for line in text.splitlines():
            m = re.match(r"\s*\[(.+)\]", line)
            if m:
                section = m.group(1)
            key = line.split("=", 1)[0].strip()
            if section == "metrics":
                continue
            if section == "http" and key == "bind":
                line = f"bind = 127.0.0.1:{self.port}"
            elif section == "service" and key in ("metrics_file", "state_dir"):
                line = f"{key} = {s.root / 'monitor2'}" + (".prom" if key == "metrics_file" else "")
            elif section == "mqtt" and key == "uri":
                line = f"uri = ssl://localhost:{self.port + 1}"
            out.append(line)
            if m and section == "http":
                out += [f"idle_s = {idle_s}", f"session_s = {session_s}"]
        conf = s.root / "monitor2.conf"
        conf.write_text("\n".join(out) + "\n")
        self.log = open(s.logs / "monitor2.log", "ab")
        self.proc = subprocess.Popen([str(BIN / "suido-monitor"), "-c", str(conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert env.monitor_ready(self.port), (s.logs / "monitor2.log").read_text()[-3000:]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self.log.close()
        return code


def test_sessions_end_when_idle_at_their_limit_on_logout_and_on_suspension(monitor_env):
    env = monitor_env
    for ident in ("ines", "iris", "ivy", "ida"):
        env.operator(ident, "viewer")
    second = SecondMonitor(env, idle_s=2, session_s=5)
    try:
        before = env.audit_head()
        c = env.client(second.port)
        c.login("ines", env.passwords["ines"])
        assert c.json("GET", "/api/session")[0] == 200
        time.sleep(3)  # longer than idle_s without a request
        status, data = c.json("GET", "/api/session")
        assert status == 401 and "expired" in data["error"]
        assert wait_until(lambda: [r for r in env.audit("monitor_session_expired", before)
                                   if r[2] == "ines" and "reason=idle" in r[3]], 10)
        # busy, but past the absolute limit
        c.login("iris", env.passwords["iris"])
        assert wait_until(lambda: c.json("GET", "/api/session")[0] == 401, 15, 0.5)
        assert wait_until(lambda: [r for r in env.audit("monitor_session_expired", before)
                                   if r[2] == "iris" and "reason=absolute" in r[3]], 10)
    finally:
        assert second.stop() == 0
    # logout ends the session here and in the registry
    c = env.client()
    c.login("ivy", env.passwords["ivy"])
    sid = c.cookies["__Host-suido-sid"]
    assert c.request("POST", "/api/logout")[0] == 200
    assert "__Host-suido-sid" not in c.cookies
    c.cookies["__Host-suido-sid"] = sid
    assert c.json("GET", "/api/session")[0] == 401
    assert wait_until(lambda: [r for r in env.audit("monitor_logout", before) if r[2] == "ivy"], 10)
    # an operator suspended in the registry loses the session at once
    c = env.client()
    c.login("ida", env.passwords["ida"])
    assert c.json("GET", "/api/overview")[0] == 200
    env.suite.ctl("operator", "suspend", "ida")
    status, data = c.json("GET", "/api/overview")
    assert status == 401 and "ended" in data["error"]
    assert wait_until(lambda: [r for r in env.audit("monitor_session_expired", before)
                               if r[2] == "ida" and "reason=registry" in r[3]], 10)


def test_state_changes_need_the_sessions_csrf_token(monitor_env):
    env = monitor_env
    c = logged_in(env, "chad", "operator")
    before = env.audit_head()
    good = c.csrf
    for token in ("", "0" * 64, good[:-1], good.upper()):
        c.csrf = token
        status, data = c.json("POST", "/api/alert/ack", {"case_id": 1})
        assert status == 403 and "token" in data["error"], token
    c.csrf = good
    # another origin, or a cross-site fetch, with the right token
    assert c.json("POST", "/api/alert/ack", {"case_id": 1},
                  headers={"Origin": "https://evil.example"})[0] == 403
    assert c.json("POST", "/api/alert/ack", {"case_id": 1},
                  headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    # another session's token is not this session's
    other = logged_in(env, "chloe", "operator")
    c.csrf = other.csrf
    assert c.json("POST", "/api/alert/ack", {"case_id": 1})[0] == 403
    c.csrf = good
    # a form post (what a cross-site page can send without script) is not JSON
    assert c.request("POST", "/api/alert/ack", b"case_id=1", headers={
        "Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    # with the token, the request is handled (case 999999 does not exist)
    assert c.json("POST", "/api/alert/ack", {"case_id": 999999})[0] == 404
    # logging in needs the login form's token too
    anon = env.client()
    assert anon.json("POST", "/api/login", {"operator": "chad", "password": "x" * 20,
                                            "totp": "123456"})[0] == 403
    assert wait_until(lambda: len(env.audit("monitor_csrf_rejected", before)) >= 8, 10)
    assert not registry_access(env, "chad") or all(
        r[0] == "ok" for r in registry_access(env, "chad"))


def test_an_operator_cannot_escalate_to_admin(monitor_env):
    env = monitor_env
    c = logged_in(env, "oscar", "operator")
    before = env.audit_head()
    for path in ("/audit", "/api/audit", "/api/audit/verify"):
        status, _, body = c.get(path)
        assert status == 403 and b"your role may not" in body, path
    # a role cannot be asked for: the session's role comes from the registry
    for extra in ({"role": "admin"}, {"operator": "admin"}):
        status, data = c.json("POST", "/api/alert/ack", dict({"case_id": 1}, **extra))
        assert status == 400
    assert c.json("GET", "/api/session")[1]["role"] == "operator"
    # a viewer cannot do an operator's work either
    v = logged_in(env, "vince", "viewer")
    assert v.json("POST", "/api/alert/ack", {"case_id": 1})[0] == 403
    assert v.json("GET", "/api/commands")[0] == 403
    assert wait_until(lambda: len([r for r in env.audit("monitor_access_denied", before)
                                   if r[2] in ("oscar", "vince")]) == 5, 10)
    # and the archive itself refuses audit reads to anyone but an admin
    assert not env.suite.query("SELECT count(*) FROM audit WHERE event='monitor_audit_checked' "
                               "AND actor IN ('oscar', 'vince')")[0][0]


MALFORMED = [
    # (method, path, body, headers, status)
    ("PUT", "/api/alerts", None, {}, 405),
    ("DELETE", "/overview", None, {}, 405),
    ("OPTIONS", "/api/login", None, {}, 405),
    ("GET", "/api/nothing-here", None, {}, 404),
    ("GET", "/etc/passwd", None, {}, 404),
    ("GET", "/static/../main.c", None, {}, 404),
    ("GET", "/static/%2e%2e/main.c", None, {}, 404),
    ("GET", "/overview%00.css", None, {}, 404),
    ("GET", "/api/alerts?all=1&all=0", None, {}, 400),
    ("GET", "/api/alerts?x=" + "a" * 300, None, {}, 400),
    ("GET", "/api/alerts?bogus=1", None, {}, 400),
    ("GET", "/api/alerts?a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9", None, {}, 400),
    ("POST", "/api/alert/ack", b"{", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alert/ack", b"[1]", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alert/ack", b'{"case_id":1,"case_id":2}', {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alert/ack", b'{"case_id":1,"x":1}', {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alert/ack", b'{"case_id":1}', {"Content-Type": "text/plain"}, 415),
    ("GET", "/api/alerts", b'{"a":1}', {"Content-Type": "application/json"}, 400),
]


@pytest.fixture(scope="module")
def mallory(monitor_env):
    return logged_in(monitor_env, "mallory", "operator")


@pytest.mark.parametrize("method,path,body,headers,status", MALFORMED,
                         ids=[f"{m} {p[:40]} {s}" for m, p, _, _, s in MALFORMED])
def test_malformed_requests_get_a_clear_4xx_and_an_audit_entry(monitor_env, mallory, method,
                                                               path, body, headers, status):
    env = monitor_env
    c = mallory
    before = env.audit_head()
    got, hdrs, data = c.request(method, path, body=body, headers=headers)
    assert got == status, data
    assert dict((k.lower(), v) for k, v in hdrs)["content-type"].startswith("application/json")
    assert json.loads(data)["status"] == status
    events = ("monitor_bad_request", "monitor_not_found")
    assert wait_until(lambda: env.suite.query(
        "SELECT count(*) FROM audit WHERE seq>? AND source='monitor' AND actor='mallory' AND "
        "event IN (?, ?)", before, *events)[0][0] == 1, 10), (method, path)
    # the monitor goes on serving
    assert c.json("GET", "/api/session")[0] == 200


def raw_request(env, head, chunks=()):
    """Sends a request head and then body chunks over TLS, as far as the server reads them, and
    returns the status line and body of the answer."""
    ctx = ssl.create_default_context(cafile=str(env.suite.dir / "ca" / "ca.crt"))
    with socket.create_connection(("127.0.0.1", env.port), 10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(head)
            try:
                for chunk in chunks:
                    tls.sendall(chunk)
            except (ssl.SSLError, OSError):
                pass  # refused before it was all sent
            reply = b""
            try:
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    reply += data
                    if b"\r\n\r\n" in reply and reply.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                        break
            except (ssl.SSLError, OSError):
                pass
    status = reply.split(b"\r\n", 1)[0]
    return status, reply.split(b"\r\n\r\n", 1)[-1]


def test_oversized_bodies_are_refused_before_they_are_read(monitor_env, mallory):
    env = monitor_env
    before = env.audit_head()
    cookie = "; ".join(f"{k}={v}" for k, v in mallory.cookies.items())
    head = (f"POST /api/alert/ack HTTP/1.1\r\nHost: localhost:{env.port}\r\nCookie: {cookie}\r\n"
            f"X-CSRF-Token: {mallory.csrf}\r\nContent-Type: application/json\r\n")
    # announced as too large: answered at once
    status, body = raw_request(env, (head + "Content-Length: 10000000\r\n\r\n").encode())
    assert status == b"HTTP/1.1 413 Content Too Large" or status.startswith(b"HTTP/1.1 413"), status
    assert json.loads(body)["status"] == 413
    # sent in chunks without a length: refused once it passes the limit
    chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
    status, body = raw_request(env, (head + "Transfer-Encoding: chunked\r\n\r\n").encode(),
                               [chunk] * 32 + [b"0\r\n\r\n"])
    assert status.startswith(b"HTTP/1.1 413"), status
    assert wait_until(lambda: len([r for r in env.audit("monitor_bad_request", before)
                                   if "reason=body_too_big" in r[3] and r[2] == "mallory"]) == 2,
                      10)
    assert mallory.json("GET", "/api/session")[0] == 200


INJECTIONS = ["x' OR '1'='1", "1; DROP TABLE audit; --", "../../etc/passwd", "<script>x</script>",
              "gw-0001\r\nSet-Cookie: a=b", "\u0000", "%00", "${jndi:ldap://x}", "-1", "1e9",
              "９９", "gw-0001 ", "A" * 70]


def test_injection_attempts_are_refused_before_the_registry_or_archive(monitor_env):
    env = monitor_env
    c = logged_in(env, "ivan", "operator")
    before = env.audit_head()
    archive_denied = env.suite.query("SELECT count(*) FROM audit WHERE source='archive' AND "
                                     "event='request_denied'")[0][0]
    sent = 0
    for bad in INJECTIONS:
        q = "".join(ch if ch.isalnum() or ch in "-._" else "%{:02X}".format(ord(ch))
                    if ord(ch) < 128 else ch for ch in bad)
        q = q.encode("utf-8", "surrogatepass").decode("latin-1")
        for path in (f"/api/channels?gateway={q}", f"/api/trend?gateway=gw-0002&channel={q}",
                     f"/api/trend?gateway={q}&channel=reservoir.level",
                     f"/api/trend?gateway=gw-0002&channel=reservoir.level&span={q}",
                     f"/api/alert?id={q}", f"/api/alerts?all={q}", f"/api/alerts/live?after={q}",
                     f"/api/commands?gateway={q}", f"/api/commands?before={q}",
                     f"/api/planning?from={q}&to=2026-01-31",
                     f"/api/planning.csv?from=2026-01-01&to={q}"):
            try:
                status, data = c.json("GET", path)
            except UnicodeEncodeError:
                continue
            sent += 1
            # a value that is a well-formed gateway id ("-1", "1e9") is one, just unknown
            well_formed = re.fullmatch(r"[a-z0-9-]{1,64}", bad) and "gateway=" in path
            assert 400 <= status < 500 or (well_formed and status == 200), (path, status, data)
        for body in ({"case_id": bad}, {"case_id": 1, "cause": bad + "\x01", "action": "ok"},
                     {"case_id": 1, "cause": "ok", "action": "x" * 501},
                     {"case_id": [bad]}, {"case_id": {"$gt": 0}}):
            path = "/api/alert/close" if "cause" in body else "/api/alert/ack"
            status, data = c.json("POST", path, body)
            sent += 1
            assert status == 400, (path, body, status, data)
    # logins with injected names never reach the registry
    for bad in ("admin' --", "admin\u0000", "ADMIN", "a" * 65, "../admin"):
        anon = env.client()
        status, _ = anon.login(bad, "whatever password", "123456", check=False)
        assert status == 400
        assert not registry_access(env, bad)
    anon = env.client()
    status, _ = anon.login("admin", "x", "12345a", check=False)
    assert status == 400
    # each refusal is audited (within the audit budget for outsider-driven events)
    assert wait_until(lambda: env.suite.query(
        "SELECT count(*) FROM audit WHERE seq>? AND source='monitor' AND actor='ivan' AND "
        "event='monitor_bad_request'", before)[0][0] >= sent - 20, 10)
    assert wait_until(lambda: env.audit("monitor_login_failed", before), 10)
    # nothing made the archive refuse a request, and no injected text got stored
    assert env.suite.query("SELECT count(*) FROM audit WHERE source='archive' AND "
                           "event='request_denied'")[0][0] == archive_denied
    assert not env.suite.query("SELECT count(*) FROM audit WHERE seq>? AND detail LIKE "
                               "'%DROP TABLE%'", before)[0][0]
    assert sent > 100
    assert c.json("GET", "/api/session")[0] == 200


def test_lockout_applies_to_logins_through_the_monitor(monitor_env):
    env = monitor_env
    env.operator("lena", "operator")
    before = env.audit_head()
    for i in range(5):
        status, data = env.client().login("lena", "not her password!", "123456", check=False)
        # the fifth failure is the one that locks
        assert (status, "wrong" in data["error"]) == (401, True) or (i == 4 and status == 429)
    status, data = env.client().login("lena", env.passwords["lena"], "123456", check=False)
    assert status == 429 and "locked out" in data["error"]
    assert wait_until(lambda: [r for r in env.audit("lockout", before) if r[1] == "lena"], 10)
    assert wait_until(lambda: [r for r in env.audit("monitor_login_failed", before)
                               if "locked_out" in r[3]], 10)
    # the lock is keyed by source: from the control room's terminal she still gets in
    tok = env.suite.login("lena", env.passwords["lena"], env.code("lena"), source="control-room")
    assert isinstance(tok, str)


def test_a_session_id_planted_before_login_is_never_used(monitor_env):
    env = monitor_env
    env.operator("fay", "viewer")
    c = env.client()
    c.get("/api/login")
    planted = c.cookies["__Host-suido-pre"]
    c.cookies["__Host-suido-sid"] = planted
    c.login("fay", env.passwords["fay"])
    assert c.cookies["__Host-suido-sid"] != planted
    assert "__Host-suido-pre" not in c.cookies
    attacker = env.client()
    attacker.cookies["__Host-suido-sid"] = planted
    assert attacker.json("GET", "/api/session")[0] == 401
