"""One signed reading travels gateway -> broker -> ingest -> verify -> profile -> anomaly/archive,
and is stored exactly once; what is not authentic or not fresh is refused, counted and not
stored."""
import time

from suite import wait_until
from wire import Client, envelope


def batches(suite, gw, epoch=None):
    """Stored batches of gw (of one boot epoch if given)."""
    rows = suite.query("SELECT boot_epoch, seq, status, length(envelope) FROM batches "
                       "WHERE gateway=? ORDER BY boot_epoch, seq", gw)
    return [r for r in rows if epoch is None or r[0] == epoch]


def test_signed_batches_are_archived_exactly_once(suite):
    rep = suite.sim("--ids", "gw-0001", "--max-batches", 5, "--rate", 10, "--wait-acks", 10)
    g = rep["gateways"][0]
    assert g["legit_sent"] == 5
    epoch = g["boot_epoch"]
    rows = wait_until(lambda: len(batches(suite, "gw-0001", epoch)) >= 5
                      and batches(suite, "gw-0001", epoch))
    assert [r[1] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r[2] == "verified" and r[3] > 64 for r in rows)
    # the end-to-end ack covered everything only after it was committed
    assert g["acked_seq"] == 5
    # stored with the signature: the envelope keeps header, body and signature
    (readings,) = suite.query("SELECT sum(readings) FROM batches WHERE gateway='gw-0001' "
                              "AND boot_epoch=?", epoch)[0]
    assert readings == 5 * 16


def test_a_gateway_that_stopped_in_order_is_not_reported_missing(suite):
    """An orderly stop (the death message) tells the anomaly checker that silence is expected;
    a gateway that goes quiet without one is reported (missing_data) after a few periods."""
    t0 = int(time.time() * 1000)
    suite.sim("--ids", "gw-0006", "--max-batches", 3, "--rate", 10, "--wait-acks", 10)
    assert wait_until(lambda: suite.query(
        "SELECT count(*) FROM events WHERE gateway='gw-0006' AND kind='death' "
        "AND received_ms >= ?", t0)[0][0] == 1, 10)
    time.sleep(8)  # beyond the 6 s silence limit of its 1 s channels
    raised = suite.query("SELECT count(*) FROM alerts WHERE gateway='gw-0006' AND "
                         "rule='missing_data' AND cleared=0 AND received_ms >= ?", t0)[0][0]
    assert raised == 0


def test_encrypted_batches_are_opened_and_archived(suite):
    unwraps = suite.metric("verify", "suido_verify_unwraps")
    rep = suite.sim("--ids", "gw-0002", "--max-batches", 4, "--rate", 10, "--encrypt",
                    "--wait-acks", 10)
    g = rep["gateways"][0]
    assert g["acked_seq"] == 4
    rows = suite.query("SELECT seq, encrypted FROM batches WHERE gateway='gw-0002' "
                       "AND boot_epoch=? ORDER BY seq", g["boot_epoch"])
    assert rows == [(1, 1), (2, 1), (3, 1), (4, 1)]
    # one RSA unwrap for the session (birth and batches share it), not one per batch
    assert wait_until(lambda: suite.metric("verify", "suido_verify_unwraps") == unwraps + 1, 3)


def rejected(suite, reason):
    return suite.metric("verify", f'suido_verify_rejected_total{{reason="{reason}"}}')


def refusals(suite, gw, reason, epoch):
    return suite.query("SELECT seq FROM rejects WHERE gateway=? AND reason=? AND boot_epoch=? "
                       "ORDER BY seq", gw, reason, epoch)


def test_tampered_batches_are_refused_and_not_archived(suite):
    before = rejected(suite, "bad_signature")
    rep = suite.sim("--ids", "gw-0003", "--max-batches", 6, "--rate", 20,
                    "--attack", "tampered", "--attack-every", 2)
    g = rep["gateways"][0]
    attacked = set(g["attacked_seqs"])
    assert attacked, rep
    assert wait_until(lambda: rejected(suite, "bad_signature") >= before + len(attacked))
    assert wait_until(lambda: len(refusals(suite, "gw-0003", "bad_signature", g["boot_epoch"]))
                      == len(attacked))
    stored = {r[1] for r in batches(suite, "gw-0003", g["boot_epoch"])}
    assert stored and not (stored & attacked)


def test_batches_signed_with_another_gateways_key_are_refused(suite):
    before = rejected(suite, "bad_signature")
    rep = suite.sim("--ids", "gw-0004", "--max-batches", 4, "--rate", 20,
                    "--attack", "wrong-key", "--attack-every", 1)
    g = rep["gateways"][0]
    attacked = set(g["attacked_seqs"])
    assert len(attacked) == 4
    assert wait_until(lambda: rejected(suite, "bad_signature") >= before + 4)
    assert wait_until(lambda: len(refusals(suite, "gw-0004", "bad_signature", g["boot_epoch"])) == 4)
    assert batches(suite, "gw-0004", g["boot_epoch"]) == []


def test_replayed_batches_are_refused_and_never_stored_twice(suite):
    rep = suite.sim("--ids", "gw-0005", "--max-batches", 6, "--rate", 20,
                    "--attack", "replay", "--attack-every", 3, "--wait-acks", 5)
    g = rep["gateways"][0]
    assert g["attacked_sent"] >= 1
    assert wait_until(lambda: len(suite.query(
        "SELECT 1 FROM rejects WHERE gateway='gw-0005' AND reason IN ('replay','duplicate')"))
        >= g["attacked_sent"])
    rows = batches(suite, "gw-0005", g["boot_epoch"])  # the suite is shared: other runs' epochs aside
    seqs = [r[1] for r in rows]
    assert len(seqs) == len(set(seqs))
    (dups,) = suite.query("SELECT count(*) - count(DISTINCT boot_epoch || '/' || seq) "
                          "FROM batches WHERE gateway='gw-0005'")[0]
    assert dups == 0


def test_skewed_clock_is_refused(suite):
    before = rejected(suite, "outside_time_window")
    rep = suite.sim("--ids", "gw-0006", "--max-batches", 2, "--rate", 20,
                    "--attack", "skew", "--skew-s", 900, "--attack-every", 1)
    g = rep["gateways"][0]
    assert g["attacked_sent"] == 2
    assert wait_until(lambda: rejected(suite, "outside_time_window") >= before + 2)
    assert batches(suite, "gw-0006", g["boot_epoch"]) == []


def test_malformed_payloads_are_refused_and_the_suite_keeps_serving(suite):
    before = rejected(suite, "malformed_envelope") + rejected(suite, "malformed_header")
    suite.sim("--ids", "gw-0007", "--max-batches", 4, "--rate", 20,
              "--attack", "malformed", "--attack-every", 2)
    assert wait_until(lambda: rejected(suite, "malformed_envelope")
                      + rejected(suite, "malformed_header") > before)
    for s in ("ingest", "verify", "profile", "archive"):
        assert suite.alive(s), suite.log(s)
    # and a real gateway is still served
    rep = suite.sim("--ids", "gw-0007", "--max-batches", 2, "--rate", 20, "--wait-acks", 10)
    assert rep["gateways"][0]["acked_seq"] >= 2


def test_limit_breach_raises_an_alert_that_is_stored_and_published(suite, pb):
    mon = Client(suite, *suite.tls_files("monitor"), client_id="monitor")
    assert mon.connect()
    mon.subscribe("suido/v1/alerts/#")
    # a gateway asking for the same alerts gets none: alerts are for operators only
    spy = Client(suite, *suite.tls_files("gw-0001"), client_id="gw-0001")
    assert spy.connect()
    spy.subscribe("suido/v1/alerts/#")
    gw = Client(suite, *suite.tls_files("gw-0008"), client_id="gw-0008")
    assert gw.connect()
    try:
        time.sleep(0.3)
        # reservoir.level: HH is 9.5 m; 9.8 m is an alarm, 5 m clears it (deadband 0.1)
        for seq, level in ((1, 5.0), (2, 9.8), (3, 9.85), (4, 5.0)):
            gw.publish("suido/v1/gw-0008/data",
                       envelope(pb, suite, "gw-0008", seq, [("level", level)], epoch=4242))
        assert wait_until(lambda: len(suite.query(
            "SELECT 1 FROM alerts WHERE gateway='gw-0008' AND rule='limit_hh'")) == 2, 10)
        rows = suite.query("SELECT alert_id, severity, value, cleared, evidence FROM alerts "
                           "WHERE gateway='gw-0008' AND rule='limit_hh' ORDER BY id")
        assert [r[3] for r in rows] == [0, 1]          # raised once (9.85 is no new alert), cleared
        assert rows[0][0] == "gw-0008/reservoir.level/limit"
        assert rows[0][1] == pb.SEVERITY_ALARM and rows[0][2] == 9.8 and "9.8" in rows[0][4]
        # (other gateways' alerts may arrive meanwhile: only this site's are looked at)
        mine = lambda: [m for m in mon.messages if m[0] == "suido/v1/alerts/reservoir-08"]
        assert wait_until(lambda: len(mine()) >= 2, 5)
        topic, payload = mine()[0]
        a = pb.Alert()
        a.ParseFromString(payload)
        assert a.rule == "limit_hh" and a.gateway_id == "gw-0008" and not a.cleared
        assert spy.messages == []
    finally:
        gw.close()
        mon.close()
        spy.close()


def test_reading_on_a_channel_the_profile_does_not_know_is_counted(suite, pb):
    before = suite.metric("profile", "suido_profile_unknown_channel_total")
    gw = Client(suite, *suite.tls_files("gw-0008"), client_id="gw-0008")
    assert gw.connect()
    try:
        gw.publish("suido/v1/gw-0008/data",
                   envelope(pb, suite, "gw-0008", 1, [("level", 5.0), ("voltage", 230.0)],
                            epoch=4343))
        assert wait_until(lambda: suite.metric("profile", "suido_profile_unknown_channel_total")
                          == before + 1, 10)
        assert wait_until(lambda: suite.query("SELECT unknown_channels FROM batches WHERE "
                                              "gateway='gw-0008' AND boot_epoch=4343") == [(1,)])
    finally:
        gw.close()


def test_header_for_another_gateway_on_own_topic_is_refused(suite, pb):
    # gw-0008 signs a batch claiming to be gw-0002 and sends it on its own topic
    before = rejected(suite, "topic_gateway_mismatch")
    gw = Client(suite, *suite.tls_files("gw-0008"), client_id="gw-0008")
    assert gw.connect()
    try:
        gw.publish("suido/v1/gw-0008/data",
                   envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=4444,
                            signer="gw-0008"))
        assert wait_until(lambda: rejected(suite, "topic_gateway_mismatch") == before + 1, 10)
    finally:
        gw.close()
    assert suite.query("SELECT count(*) FROM batches WHERE boot_epoch=4444") == [(0,)]


def test_oversized_message_is_refused_by_the_broker_and_the_gateway_carries_on(suite):
    rep = suite.sim("--ids", "gw-0005", "--max-batches", 4, "--rate", 10,
                    "--attack", "oversize", "--attack-every", 2, "--wait-acks", 15)
    g = rep["gateways"][0]
    assert g["attacked_sent"] == 2
    legit = set(range(g["first_seq"], g["last_seq"] + 1)) - set(g["attacked_seqs"])
    stored = {r[1] for r in batches(suite, "gw-0005", g["boot_epoch"])}
    assert stored == legit                       # every real batch, and nothing oversized
    for s in ("ingest", "verify", "archive"):
        assert suite.alive(s)
