"""Alert cases through suidoctl and the archive's API: one case per problem however often the
detector flaps, acknowledged by an operator, closed only once the condition cleared and only
with the cause and the action taken; the next case of the same kind on the same asset shows
those past cases, in suidoctl and in the alert published to operators."""
import json
import time

from suite import wait_until
from test_access import curve_push, service_keys
from wire import Client, totp

ALERT_ID = "gw-0004/reservoir.chlorine/limit"


def alert(pb, cleared=False, value=0.15):
    a = pb.Alert(id=ALERT_ID, gateway_id="gw-0004", site="reservoir-04",
                 channel="reservoir.chlorine", rule="limit_ll", severity=pb.SEVERITY_ALARM,
                 value=value, limit=0.2, timestamp_ms=int(time.time() * 1000),
                 evidence=f"{value} mg/L below LL 0.2", cleared=cleared)
    return pb.StageMessage(topic="suido/v1/alerts/reservoir-04", alert=a).SerializeToString()


def send(suite, pb, **kw):
    curve_push(suite, suite.base + 2, "archive", service_keys(suite, "anomaly"), alert(pb, **kw))


def cases(suite, *args, token=None):
    r = suite.ctl("--json", "alert", *args, token=token)
    return json.loads(r.stdout)


def open_case(suite):
    found = [c for c in cases(suite, "list")["cases"] if c["alert_id"] == ALERT_ID]
    return found[0] if found else None


def test_an_alert_case_is_acknowledged_closed_with_its_cause_and_remembered(suite, pb):
    send(suite, pb)
    assert wait_until(lambda: open_case(suite) is not None, 5)
    send(suite, pb, cleared=True)
    send(suite, pb, value=0.1)  # back before anyone looked: the same case
    assert wait_until(lambda: open_case(suite)["occurrences"] == 2, 5)
    case = open_case(suite)
    assert case["state"] == "raised" and case["active"] and case["severity"] == "alarm"
    cid = str(case["case_id"])

    # a viewer may look but not change
    secret = suite.add_operator("vicky", "viewer", "viewer password 2")
    viewer = suite.login("vicky", "viewer password 2", totp(secret))
    assert cases(suite, "show", cid, token=viewer)["cases"][0]["case_id"] == case["case_id"]
    r = suite.ctl("alert", "ack", cid, token=viewer, check=False)
    assert r.returncode == 1 and "denied" in r.stderr

    acked = cases(suite, "ack", cid)["cases"][0]
    assert acked["state"] == "acknowledged" and acked["acked_by"] == "admin"
    # still active: the episode is not over, so it cannot be closed yet
    r = suite.ctl("alert", "close", cid, "--cause", "x", "--action", "y", check=False)
    assert r.returncode == 1 and "still active" in r.stderr
    # cause and action are required
    r = suite.ctl("alert", "close", cid, "--cause", "x", check=False)
    assert r.returncode == 2 and "--action" in r.stderr

    send(suite, pb, cleared=True)
    assert wait_until(lambda: not open_case(suite)["active"], 5)
    cause = "hypochlorite day tank ran dry overnight"
    action = "refilled the tank, moved the low-level alarm to 30 %"
    closed = cases(suite, "close", cid, "--cause", cause, "--action", action)["cases"][0]
    assert closed["state"] == "closed" and closed["cause"] == cause and closed["action"] == action
    assert open_case(suite) is None
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='alert_closed' AND subject=? AND actor='admin'",
        f"case-{cid}")[0][0] == 1, 5)

    # the same kind of alert on the same asset again: operators see what was found last time
    monitor = Client(suite, *suite.tls_files("monitor"), client_id="monitor")
    assert monitor.connect()
    try:
        monitor.subscribe("suido/v1/alerts/reservoir-04")
        time.sleep(0.3)
        send(suite, pb, value=0.12)
        assert wait_until(lambda: monitor.messages, 5)
    finally:
        monitor.close()
    published = pb.Alert.FromString(monitor.messages[-1][1])
    assert len(published.past_cases) == 1
    assert cause in published.past_cases[0] and action in published.past_cases[0]
    new = open_case(suite)
    assert new["case_id"] != case["case_id"] and new["occurrences"] == 1
    shown = cases(suite, "show", str(new["case_id"]))
    assert [p["case_id"] for p in shown["past"]] == [case["case_id"]]
    assert shown["past"][0]["cause"] == cause
    text = suite.ctl("alert", "show", str(new["case_id"])).stdout
    assert "past cases of this kind on this asset: 1" in text and cause in text


def test_alert_requests_need_a_session_and_a_real_case(suite):
    r = suite.ctl("alert", "list", token="bogus", check=False)
    assert r.returncode == 1 and "denied" in r.stderr
    r = suite.ctl("alert", "ack", "999999", check=False)
    assert r.returncode == 1 and "unknown" in r.stderr
    r = suite.ctl("alert", "ack", "12x", check=False)
    assert r.returncode == 2


def test_a_case_of_a_gateway_that_will_never_report_again_can_be_closed(suite, pb, tmp_path):
    """A case stays active while its condition holds; a revoked (or disposed) gateway will never
    report the condition cleared, so its case may then be closed with cause and action, and the
    case and the audit log say it closed while active."""
    gw, alert_id = "gw-0390", "gw-0390/reservoir.level/limit"
    suite.ctl("gateway", "provision", gw, "--site", "old-tower", "--kind", "reservoir",
              "--out", tmp_path / "bundle")
    suite.ctl("gateway", "activate", gw)
    a = pb.Alert(id=alert_id, gateway_id=gw, site="old-tower", channel="reservoir.level",
                 rule="limit_ll", severity=pb.SEVERITY_ALARM, value=0.2, limit=0.5,
                 timestamp_ms=int(time.time() * 1000), evidence="0.2 m below LL 0.5")
    curve_push(suite, suite.base + 2, "archive", service_keys(suite, "anomaly"),
               pb.StageMessage(topic="suido/v1/alerts/old-tower", alert=a).SerializeToString())

    def case():
        found = [c for c in cases(suite, "list")["cases"] if c["alert_id"] == alert_id]
        return found[0] if found else None
    assert wait_until(lambda: case() is not None, 5)
    cid = str(case()["case_id"])
    r = suite.ctl("alert", "close", cid, "--cause", "tower taken out of service", "--action",
                  "none", check=False)
    assert r.returncode == 1 and "still active" in r.stderr
    suite.ctl("gateway", "revoke", gw, "--reason", "tower decommissioned")
    closed = cases(suite, "close", cid, "--cause", "tower taken out of service",
                   "--action", "none")["cases"][0]
    assert closed["state"] == "closed" and closed["active"]
    assert closed["cause"] == "tower taken out of service [closed while active: gateway revoked]"
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM audit WHERE event='alert_closed' AND subject=? AND detail LIKE ?",
        f"case-{cid}", "%gateway=revoked%")[0][0] == 1, 5)
