"""The monitor under test: a whole suite (tests/integration/suite.py) with the monitor started as
one more service and the gateway simulator publishing, so pages show live data. Browser tests
drive Debian's Chromium through Selenium; security tests speak plain HTTPS (http.client) to it.
Screenshots and downloads go to $SUIDO_BUILD/artefacts/monitor/."""
import base64
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import time

import pytest

TOP = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "tests" / "integration"))

from suite import BIN, BUILD, Suite, load_proto, wait_until  # noqa: E402
from wire import totp  # noqa: E402

ARTEFACTS = BUILD / "artefacts" / "monitor"


class Https:
    """One browser-like client of the monitor: its cookies, its CSRF token, plain HTTPS that
    checks the monitor's certificate against the deployment CA."""

    def __init__(self, env, port=None):
        self.env = env
        self.port = port or env.port
        self.cookies = {}
        self.csrf = ""
        self.ctx = ssl.create_default_context(cafile=str(env.suite.dir / "ca" / "ca.crt"))

    def request(self, method, path, body=None, headers=None, raw=False):
        """(status, headers as a list of pairs, body bytes); body: dict (sent as JSON) or bytes."""
        c = http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=30)
        h = {"Host": f"localhost:{self.port}"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        if method == "POST" and self.csrf:
            h["X-CSRF-Token"] = self.csrf
        h.update(headers or {})
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    value = rest.split(";", 1)[0]
                    if "Max-Age=0" in v:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = value
            return r.status, r.getheaders(), data
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body if body is not None else {}, **kw)

    def json(self, method, path, body=None, **kw):
        status, _, data = self.request(method, path, body=body, **kw)
        try:
            return status, json.loads(data or b"null")
        except ValueError:
            return status, None

    def login(self, operator, password, code=None, check=True):
        """The login form's flow: a pre-login token, then password and code."""
        status, form = self.json("GET", "/api/login")
        assert status == 200, form
        self.csrf = form["csrf"]
        status, r = self.json("POST", "/api/login", {"operator": operator, "password": password,
                                                     "totp": code or self.env.code(operator)})
        if check:
            assert status == 200, r
            self.csrf = r["csrf"]
        return status, r


class MonitorEnv:
    def __init__(self, suite, pb):
        self.suite = suite
        self.pb = pb
        self.port = suite.base + 9
        self.url = f"https://localhost:{self.port}"
        self.secrets = {}
        self.passwords = {}
        self.last_step = {}
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        self.artefacts = ARTEFACTS

    def operator(self, ident, role):
        """A new operator of that role; returns its password."""
        password = f"{ident} has a long passphrase"
        self.secrets[ident] = self.suite.add_operator(ident, role, password)
        self.passwords[ident] = password
        return password

    def code(self, ident):
        """A TOTP code of a time step this operator has not used yet (each is accepted once;
        the registry takes one step ahead)."""
        step = int(time.time() // 30)
        while self.last_step.get(ident, -1) >= step:
            step += 1
        if step > int(time.time() // 30) + 1:
            time.sleep((step - 1) * 30 - time.time() + 0.5)
        self.last_step[ident] = step
        return totp(self.secrets[ident], step * 30)

    def client(self, port=None):
        return Https(self, port)

    def audit(self, event, since_seq=0):
        return self.suite.query("SELECT seq, subject, actor, detail FROM audit WHERE event=? AND "
                                "seq>? ORDER BY seq", event, since_seq)

    def audit_head(self):
        return self.suite.query("SELECT coalesce(max(seq), 0) FROM audit")[0][0]

    def spki_hash(self):
        """base64 SHA-256 of the monitor certificate's public key (Chromium's SPKI pin)."""
        crt = self.suite.dir / "services" / "monitor" / "https.crt"
        pub = subprocess.run(["openssl", "x509", "-in", str(crt), "-pubkey", "-noout"],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             capture_output=True, check=True).stdout
        return base64.b64encode(hashlib.sha256(der).digest()).decode()

    def monitor_ready(self, port=None):
        def up():
            try:
                return self.client(port).get("/login")[0] == 200
            except OSError:
                return False
        return wait_until(up, 30, 0.2)


@pytest.fixture(scope="session")
def monitor_env(tmp_path_factory):
    pb = load_proto(tmp_path_factory.mktemp("proto-monitor"))
    s = Suite(tmp_path_factory.mktemp("monitor"), gateways=4)
    try:
        s.start()
        s.login_admin()
        s.start_service("monitor")
        env = MonitorEnv(s, pb)
        assert env.monitor_ready(), "monitor did not serve:\n" + s.log("monitor")
        s._spawn("gateway-sim", [str(BIN / "suido-gateway-sim"), "--broker",
                                 f"ssl://localhost:{s.port}", "--deploy", str(s.dir), "--rate", "1",
                                 "--batch", "16", "--encrypt", "--quiet",
                                 "--state-dir", str(s.root / "sim-state")])
        assert wait_until(lambda: s.metric("archive", "suido_archive_batches_total") >= 8, 30), \
            "no data archived:\n" + s.log("gateway-sim") + s.log("archive")
        yield env
    finally:
        codes = s.stop()
        failed = {n: c for n, c in codes.items() if c != 0}
        assert not failed, f"processes exited with errors: {failed}\n" + s.log("monitor")


@pytest.fixture(scope="session")
def browser(monitor_env):
    """Headless Chromium that trusts exactly the monitor's certificate (its key pinned)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = monitor_env.suite.root / "chromium"
    downloads = monitor_env.artefacts / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--lang=en-GB", f"--user-data-dir={profile}",
              f"--ignore-certificate-errors-spki-list={monitor_env.spki_hash()}"):
        o.add_argument(a)
    o.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                        "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")
                                              or "/usr/bin/chromedriver"), options=o)
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
