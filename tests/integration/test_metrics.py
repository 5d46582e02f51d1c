"""Every daemon's metrics endpoint (common/cm_metrics_http.h): HTTPS with mutual TLS, GET /metrics
only, Prometheus text format; refusals are counted and audited; and the sample scrape
configuration in compose/ works with a real Prometheus against the real daemons."""
import http.client
import json
import pathlib
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import warnings

import pytest
import yaml

from suite import SERVICES, TOP, free_base_port, wait_until

PROM = "prometheus"

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
SAMPLE_RE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? "
                       r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|[+-]Inf|NaN)$")
HELP_RE = re.compile(rf"^# HELP ({NAME}) .*$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def parse_strict(text):
    """Prometheus text format, strictly: every line a HELP, a TYPE or `name{labels} value`; each
    family typed once, before its samples, which come together; histograms cumulative with
    +Inf equal to _count. Returns {"name{labels}": value}."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    samples, types, done, current = {}, {}, set(), None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("#"):
            m = HELP_RE.match(line) or TYPE_RE.match(line)
            assert m, f"line {n}: not a HELP or TYPE line: {line!r}"
            if line.startswith("# TYPE"):
                fam = m.group(1)
                assert fam not in types, f"line {n}: second TYPE for {fam}"
                types[fam] = m.group(2)
                if current:
                    done.add(current)
                current = fam
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"line {n}: not a sample: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        fam = name
        for suffix in SUFFIXES.get(types.get(current), ()):
            if suffix and name == current + suffix:
                fam = current
        assert fam == current, f"line {n}: {name} outside its family (current {current})"
        assert fam not in done, f"line {n}: family {fam} is split"
        key = name + labels
        assert key not in samples, f"line {n}: {key} twice"
        samples[key] = float(value)
    for fam, kind in types.items():
        if kind != "histogram":
            continue
        series = {}
        for key, v in samples.items():
            if key.startswith(fam + "_bucket{"):
                labels = key[len(fam) + 8:-1]
                le = re.search(r'le="([^"]*)"', labels).group(1)
                rest = re.sub(r',?le="[^"]*"', "", labels)
                series.setdefault(rest, []).append((float(le), v))
        assert series, f"histogram {fam} without buckets"
        for rest, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{fam}{{{rest}}}: buckets not cumulative"
            assert buckets[-1][0] == float("inf"), f"{fam}: no +Inf bucket"
            count_key = fam + "_count" + (f"{{{rest}}}" if rest else "")
            assert samples[count_key] == buckets[-1][1], f"{fam}: +Inf bucket != _count"
    return samples


# ---------------------------------------------------------------------------- the endpoints

def conf_value(suite, svc, section, key):
    """A key of a service's generated configuration."""
    cur = None
    for line in (suite.dir / "etc" / f"{svc}.conf").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            cur = line.strip("[]")
        elif cur == section and "=" in line:
            k, _, v = line.partition("=")
            if k.strip() == key:
                return v.strip()
    return None


def port_of(suite, svc):
    return int(conf_value(suite, svc, "metrics", "listen").rpartition(":")[2])


def pki(suite, who):
    """(cert, key) of the scraper, a gateway, a service or a test identity."""
    if who == PROM:
        return str(suite.dir / "prometheus" / "client.crt"), str(suite.dir / "prometheus" / "client.key")
    return suite.tls_files(who)


def tls_context(suite, who=PROM, ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or str(suite.dir / "ca" / "ca.crt"))
    if who:
        ctx.load_cert_chain(*pki(suite, who))
    return ctx


def request(suite, svc, who=PROM, method="GET", path="/metrics", body=None, headers=None):
    """(status, headers, body) of one HTTPS request to svc's endpoint."""
    conn = http.client.HTTPSConnection("127.0.0.1", port_of(suite, svc), timeout=10,
                                       context=tls_context(suite, who))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def scrape(suite, svc):
    status, headers, body = request(suite, svc)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_strict(body.decode())


def refused(suite, svc, who):
    """True if a request with who's certificate got no HTTP answer at all."""
    try:
        request(suite, svc, who)
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return True
    return False


def value(samples, name):
    return samples.get(name, 0)


def refusals(suite, svc, reason):
    return value(scrape(suite, svc), f'suido_metrics_http_refused_total{{reason="{reason}"}}')


def audit_rows(suite, subject):
    return suite.query("SELECT source, event, actor, detail FROM audit "
                       "WHERE event='metrics_access_refused' AND subject=? ORDER BY seq", subject)


def service_name(svc):
    return "anomaly" if svc.startswith("anomaly") else svc


STAGES = ["verify", "profile", "anomaly-0", "anomaly-1", "archive", "gate"]


# ---------------------------------------------------------------------------- what is served

@pytest.mark.parametrize("svc", SERVICES)
def test_every_daemon_serves_its_metrics_to_the_scraper(suite, svc):
    s = scrape(suite, svc)
    assert value(s, "suido_metrics_http_requests_total") >= 0
    days = {k: v for k, v in s.items() if k.startswith("suido_certificate_days_left{")}
    name = service_name(svc)
    assert days[f'suido_certificate_days_left{{cert="metrics.cert",cn="{name}"}}'] > 300
    assert any(k.startswith('suido_certificate_days_left{cert="metrics.ca"') for k in days)
    if svc in ("ingest", "archive", "gate"):
        assert days[f'suido_certificate_days_left{{cert="mqtt.cert",cn="{name}"}}'] > 300
    if svc in STAGES:
        for fam in ("suido_stage_received_total", "suido_stage_sent_total",
                    "suido_stage_handle_seconds_count", "suido_stage_pipeline_seconds_count",
                    "suido_stage_input_burst", "suido_stage_send_blocked"):
            assert fam in s, f"{svc} lacks {fam}"
    if svc == "ingest":
        assert "suido_ingest_handover_seconds_count" in s and "suido_stage_sent_total" in s
    if svc == "archive":
        assert "suido_archive_pending_records" in s and "suido_archive_pending_alerts" in s
    if svc == "registry":
        assert "suido_registry_request_seconds_count" in s


def test_the_values_move_under_load(suite):
    watched = ["ingest", "verify", "profile", "archive"]
    before = {svc: scrape(suite, svc) for svc in watched}
    suite.sim("--ids", "gw-0005", "--max-batches", 6, "--rate", 20, "--wait-acks", 20)

    def moved():
        now = {svc: scrape(suite, svc) for svc in watched}
        checks = [("ingest", "suido_ingest_received_total"),
                  ("ingest", "suido_stage_sent_total"),
                  ("ingest", "suido_ingest_handover_seconds_count"),
                  ("verify", "suido_stage_received_total"),
                  ("verify", "suido_stage_sent_total"),
                  ("verify", "suido_stage_handle_seconds_count"),
                  ("verify", "suido_stage_pipeline_seconds_count"),
                  ("profile", "suido_stage_received_total"),
                  ("archive", "suido_archive_batches_total"),
                  ("archive", "suido_stage_handle_seconds_count")]
        return all(value(now[svc], k) >= value(before[svc], k) + 6 for svc, k in checks) and now
    now = wait_until(moved, 30)
    assert now, "counters did not move with the load"
    # the latency histograms took the observations too
    assert value(now["verify"], "suido_stage_handle_seconds_sum") > \
        value(before["verify"], "suido_stage_handle_seconds_sum")


def test_rejections_are_counted_by_reason(suite):
    before = scrape(suite, "verify")
    suite.sim("--ids", "gw-0006", "--max-batches", 4, "--rate", 20, "--attack", "tampered",
              "--attack-every", 2)
    key = 'suido_rejected_total{reason="bad_signature"}'
    assert wait_until(lambda: value(scrape(suite, "verify"), key) >= value(before, key) + 1, 20)


# ---------------------------------------------------------------------------- who may scrape

def test_no_client_certificate_is_refused(suite):
    before = refusals(suite, "verify", "tls_handshake")
    assert refused(suite, "verify", None)
    assert wait_until(lambda: refusals(suite, "verify", "tls_handshake") >= before + 1, 10)


@pytest.mark.parametrize("who,reason", [("wrongca", "untrusted_certificate"),
                                        ("selfsigned", "untrusted_certificate"),
                                        ("revoked", "revoked_certificate"),
                                        ("expired", "expired_certificate")])
def test_a_certificate_the_deployment_ca_did_not_issue_for_now_is_refused(suite, who, reason):
    before = refusals(suite, "profile", reason)
    assert refused(suite, "profile", who)
    assert wait_until(lambda: refusals(suite, "profile", reason) >= before + 1, 10)


@pytest.mark.parametrize("who", ["gw-0001", "ingest", "suidoctl"])
def test_a_deployment_certificate_whose_cn_is_not_allowed_gets_403(suite, who):
    before = refusals(suite, "gate", "cn_not_allowed")
    status, _, body = request(suite, "gate", who)
    assert status == 403 and b"suido_" not in body
    assert refusals(suite, "gate", "cn_not_allowed") >= before + 1


def test_plain_http_is_refused(suite):
    before = refusals(suite, "registry", "tls_handshake")
    with socket.create_connection(("127.0.0.1", port_of(suite, "registry")), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: registry\r\n\r\n")
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    assert b"HTTP/1." not in got and b"suido_" not in got
    assert wait_until(lambda: refusals(suite, "registry", "tls_handshake") >= before + 1, 10)


def test_tls_below_1_2_is_refused(suite):
    ctx = tls_context(suite)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)) as e:
        with socket.create_connection(("127.0.0.1", port_of(suite, "verify")), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert not s.recv(100)
    # the server refused the TLS 1.1 hello (the client did offer it)
    assert "NO_PROTOCOLS_AVAILABLE" not in str(e.value), e.value


# ---------------------------------------------------------------------------- what is answered

@pytest.mark.parametrize("path", ["/", "/metrics/", "/Metrics", "/metrics/../metrics",
                                  "/favicon.ico", "/%00"])
def test_other_paths_are_404(suite, path):
    status, _, body = request(suite, "archive", path=path)
    assert status == 404 and b"suido_" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_other_methods_are_405(suite, method):
    status, headers, body = request(suite, "archive", method=method)
    assert status == 405 and headers.get("Allow") == "GET" and b"suido_" not in body


def test_a_request_body_is_refused(suite):
    before = refusals(suite, "archive", "body")
    status, _, body = request(suite, "archive", body=b"x" * 1000)
    assert status == 413 and b"suido_" not in body
    status, _, _ = request(suite, "archive", method="GET", headers={"Transfer-Encoding": "chunked"},
                           body=iter([b"abc"]))
    assert status == 413
    assert refusals(suite, "archive", "body") >= before + 2


def raw_tls(suite, svc, payload, read=True):
    """Sends payload over an authenticated TLS connection; returns what came back."""
    ctx = tls_context(suite)
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port_of(suite, svc)), timeout=15) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(payload)
                while read and len(got) < 1 << 20:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
    except (ssl.SSLError, OSError):
        pass
    return got


@pytest.mark.parametrize("svc", ["verify", "ingest"])
def test_oversized_and_malformed_requests_do_not_hurt_the_daemon(suite, svc):
    bad = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /" + b"m" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(3000)),
        b"\x00\xff\xfe garbage \r\n\r\n" * 100,
        b"GET /metrics\r\n\r\n",
        b"G\x01T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ]
    for payload in bad:
        got = raw_tls(suite, svc, payload)
        assert not got.startswith(b"HTTP/1.1 200"), payload[:40]
    # a request that never ends, and a crowd of connections over the limits
    raw_tls(suite, svc, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", read=False)
    crowd = []
    for _ in range(40):
        try:
            crowd.append(socket.create_connection(("127.0.0.1", port_of(suite, svc)), timeout=5))
        except OSError:
            pass
    for c in crowd:
        c.close()
    assert suite.alive(svc), suite.log(svc)
    # still serving, and the refusals were counted (a scrape may meet the connection cap while
    # the crowd's sockets are still being closed: it is tried again)
    def scrape_ok():
        try:
            return scrape(suite, svc)
        except OSError:
            return None
    assert wait_until(scrape_ok, 20)
    assert suite.alive(svc)


# ---------------------------------------------------------------------------- the audit log

@pytest.mark.parametrize("svc", SERVICES)
def test_refusals_reach_the_audit_log(suite, svc):
    subject = f"{service_name(svc)}:metrics"
    n = len(audit_rows(suite, subject))
    status, _, _ = request(suite, svc, "gw-0002")
    assert status == 403
    rows = wait_until(lambda: len(audit_rows(suite, subject)) > n and audit_rows(suite, subject), 15)
    assert rows, f"no audit entry for {subject}"
    source, event, actor, detail = rows[-1]
    # recorded under the authenticated sender (the archive: its own entry)
    assert source in (service_name(svc), "archive") and actor == "https"
    assert "reason=cn_not_allowed" in detail and "cn=gw-0002" in detail


def test_audit_of_refusals_is_rate_limited_and_summed_up(suite):
    svc, subject = "anomaly-1", "anomaly:metrics"
    n = len(audit_rows(suite, subject))
    before = refusals(suite, svc, "cn_not_allowed")
    for _ in range(45):
        assert request(suite, svc, "gw-0003")[0] == 403
    assert refusals(suite, svc, "cn_not_allowed") >= before + 45  # every one is counted
    time.sleep(1)  # let the daemon hand its queue to the archive
    assert wait_until(lambda: len(audit_rows(suite, subject)) > n, 10)
    assert len(audit_rows(suite, subject)) - n <= 30, "over the audit budget of 30 per 10 s"
    # the next window opens with a summary of what was suppressed
    def summed():
        request(suite, svc, "gw-0003")
        return suite.query("SELECT detail FROM audit WHERE event='security_events_suppressed' "
                           "AND source='anomaly' ORDER BY seq")
    assert wait_until(summed, 30, step=2)


# ---------------------------------------------------------------------------- the sample config

# jobs of compose/prometheus.yml whose daemons this suite does not run, and why
NOT_IN_SUITE = {
    "monitor": "the console runs in tests/integration/test_monitor*.py and in compose only",
    "archive-standby": "a standby runs in tests/integration/test_standby.py and in compose only",
}


def sample_targets(job):
    """The services a job of the sample scrapes: static targets and DNS names are each a
    <container>-metrics network name."""
    names = [t.partition(":")[0] for sc in job.get("static_configs", []) for t in sc["targets"]]
    names += [n for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    assert names and all(n.endswith("-metrics") for n in names), (job["job_name"], names)
    return [n[:-len("-metrics")] for n in names]


def test_the_sample_scrape_configuration_scrapes_every_daemon(suite, tmp_path):
    sample = yaml.safe_load((TOP / "compose" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in sample["scrape_configs"]}
    assert len(jobs) == len(sample["scrape_configs"]), "a job name is used twice"
    assert set(NOT_IN_SUITE) <= set(jobs), "a job skipped here is no longer in the sample"
    named = set()
    for name, j in jobs.items():
        assert j["scheme"] == "https"
        assert {"ca_file", "cert_file", "key_file", "server_name"} <= set(j["tls_config"])
        if name not in NOT_IN_SUITE:
            services = sample_targets(j)
            assert set(services) <= set(SERVICES), (name, services)
            named |= set(services)
    assert set(SERVICES) <= named, "a daemon of the suite has no scrape target"
    # the same jobs against this suite (the daemons it runs): its files, its ports; a job found
    # by DNS in compose is a static target here
    files = {"ca.crt": suite.dir / "ca" / "ca.crt",
             "client.crt": suite.dir / "prometheus" / "client.crt",
             "client.key": suite.dir / "prometheus" / "client.key"}
    sample["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    targets, scraped = 0, set()
    for j in sample["scrape_configs"]:
        if j["job_name"] in NOT_IN_SUITE:
            continue
        tls = j["tls_config"]
        for k in ("ca_file", "cert_file", "key_file"):
            tls[k] = str(files[pathlib.PurePath(tls[k]).name])
        live = [f"127.0.0.1:{port_of(suite, svc)}" for svc in sample_targets(j)
                if suite.alive(svc)]
        j.pop("dns_sd_configs", None)
        j["static_configs"] = [{"targets": live}]
        targets += len(live)
        if live:
            scraped.add(j["job_name"])
    sample["scrape_configs"] = [j for j in sample["scrape_configs"] if j["job_name"] in scraped]
    assert scraped == set(jobs) - set(NOT_IN_SUITE), "a job has no live daemon in the suite"
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(sample))
    check = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_base_port(1)
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def api(path, **q):
            url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(q)
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)["data"]

        def all_up():
            try:
                active = api("targets")["activeTargets"]
            except OSError:
                return False
            return len(active) == targets and all(t["health"] == "up" for t in active) and active
        active = wait_until(all_up, 60, step=0.5)
        assert active, (tmp_path / "prometheus.log").read_text()[-3000:] + json.dumps(
            api("targets"), indent=1)[-3000:]
        got = wait_until(lambda: api("query", query="sum by (job) (suido_metrics_http_requests_total)")["result"], 20)
        assert {r["metric"]["job"] for r in got} == scraped
    finally:
        prom.terminate()
        prom.wait(20)
        log.close()
