"""Readings of quality BAD end to end: a field gateway marks a reading BAD when its device did not
answer, so its value is no measurement. The batch is stored as signed; the reading counts in no
aggregate (trend, latest value); the anomaly checker raises one bad_quality alarm per episode of
the channel, ended by a GOOD reading; the command gate never takes it as an interlock input, so
the interlock fails safe as on missing data.

gw-0006 (a pumping station), with crafted, correctly signed batches (test_bad_inputs.Crafter) of
a boot epoch above any earlier one of it: no later module of the session suite uses gw-0006."""
import json
import time

from suite import wait_until
from test_bad_inputs import Crafter, publish_all

GW = "gw-0006"
FLOW = "pumping.flow"
ALERT_ID = f"{GW}/{FLOW}/bad_quality"
PHRASE = "no valid measurement: the gateway reports the device as not answering"
MADE_UP = 499.5  # what the BAD readings carry: inside the flow's range, never measured here


def new_epoch(suite):
    """A boot epoch as the simulator makes them (Unix seconds), above every earlier one of GW."""
    (last,) = suite.query("SELECT coalesce(max(boot_epoch), 0) FROM batches WHERE gateway=?",
                          GW)[0]
    while int(time.time()) <= last:
        time.sleep(0.05)
    return int(time.time())


def batch(cr, pb, seq, readings, ts_ms):
    """A signed batch of readings [(channel, value, quality)] taken at ts_ms."""
    body = pb.TelemetryBatch(readings=[pb.Reading(channel=c, value=v, offset_ms=0, quality=q)
                                       for c, v, q in readings]).SerializeToString()
    return cr.envelope(cr.header(seq, reading_count=len(readings), timestamp_ms=ts_ms), body)


def stored_seqs(suite, epoch):
    return [s for (s,) in suite.query("SELECT seq FROM batches WHERE gateway=? AND boot_epoch=? "
                                      "ORDER BY seq", GW, epoch)]


def alerts(suite, since_ms):
    """(cleared, severity, channel, evidence) of the bad_quality alerts stored since since_ms."""
    return suite.query("SELECT cleared, severity, channel, evidence FROM alerts WHERE alert_id=? "
                       "AND rule='bad_quality' AND ts_ms>=? ORDER BY id", ALERT_ID, since_ms)


def bad_counted(suite):
    return sum(suite.metric(s, "suido_anomaly_bad_quality_readings_total")
               for s in ("anomaly-0", "anomaly-1"))


def test_a_bad_reading_is_stored_alarmed_once_per_episode_and_never_aggregated(suite, pb):
    epoch = new_epoch(suite)
    cr = Crafter(suite, pb, GW, epoch)
    t0 = int(time.time() * 1000) - 5000  # five readings a second apart, none in the future
    minute0 = t0 - t0 % 60000
    (before,) = suite.query("SELECT coalesce(sum(readings), 0) FROM readings_minute WHERE "
                            "gateway=? AND channel=? AND minute_ms>=?", GW, FLOW, minute0)[0]
    bad_before = bad_counted(suite)
    good, bad = pb.QUALITY_GOOD, pb.QUALITY_BAD

    # a valid reading, then the device stops answering: one alarm, naming channel and gateway
    publish_all(suite, GW, [batch(cr, pb, 1, [("flow", 42.0, good)], t0),
                            batch(cr, pb, 2, [("flow", MADE_UP, bad)], t0 + 1000)])
    assert wait_until(lambda: stored_seqs(suite, epoch) == [1, 2], 10), stored_seqs(suite, epoch)
    assert wait_until(lambda: len(alerts(suite, t0)) == 1, 10), suite.log("anomaly-0")
    cleared, severity, channel, evidence = alerts(suite, t0)[0]
    assert (cleared, severity, channel) == (0, pb.SEVERITY_ALARM, FLOW)
    assert PHRASE in evidence and FLOW in evidence and GW in evidence, evidence
    case = suite.query("SELECT rule, severity, state, active, channel FROM alert_cases WHERE "
                       "alert_id=? AND state!='closed'", ALERT_ID)
    assert case == [("bad_quality", pb.SEVERITY_ALARM, "raised", 1, FLOW)], case

    # still not answering: the same episode, no second alarm; a GOOD reading ends it
    publish_all(suite, GW, [batch(cr, pb, 3, [("flow", MADE_UP, bad)], t0 + 2000),
                            batch(cr, pb, 4, [("flow", 41.0, good)], t0 + 3000)])
    assert wait_until(lambda: len(alerts(suite, t0)) == 2, 10), alerts(suite, t0)
    assert [(c, s) for c, s, _, _ in alerts(suite, t0)] == [(0, pb.SEVERITY_ALARM),
                                                            (1, pb.SEVERITY_INFO)]
    assert wait_until(lambda: suite.query("SELECT active FROM alert_cases WHERE alert_id=? AND "
                                          "state!='closed'", ALERT_ID) == [(0,)], 5)

    # it stops answering again: a new episode, a new alarm (folded into the open case)
    publish_all(suite, GW, [batch(cr, pb, 5, [("flow", MADE_UP, bad)], t0 + 4000)])
    assert wait_until(lambda: len(alerts(suite, t0)) == 3, 10), alerts(suite, t0)
    assert alerts(suite, t0)[2][:2] == (0, pb.SEVERITY_ALARM)
    assert wait_until(lambda: suite.query(
        "SELECT active, occurrences FROM alert_cases WHERE alert_id=? AND state!='closed'",
        ALERT_ID) == [(1, 2)], 5)
    assert wait_until(lambda: bad_counted(suite) - bad_before == 3, 5)

    # every batch is stored as signed; the aggregates hold the two valid readings only
    assert stored_seqs(suite, epoch) == [1, 2, 3, 4, 5]
    (after, top) = suite.query("SELECT coalesce(sum(readings), 0), max(max_value) FROM "
                               "readings_minute WHERE gateway=? AND channel=? AND minute_ms>=?",
                               GW, FLOW, minute0)[0]
    assert after - before == 2 and top < MADE_UP, (before, after, top)
    assert suite.query("SELECT last_value, last_ms FROM readings_series WHERE gateway=? AND "
                       "channel=?", GW, FLOW) == [(41.0, t0 + 3000)]
    (hour_max,) = suite.query("SELECT max(max_value) FROM readings_hour WHERE gateway=? AND "
                              "channel=? AND hour_ms>=?", GW, FLOW, t0 - t0 % 3600000)[0]
    assert hour_max < MADE_UP


def test_an_interlock_whose_input_is_bad_fails_safe_like_missing_data(suite, pb):
    """Stopping pump 1 is refused while pump 2 is off and the tank is below LL; the tank level
    the gateway marks BAD (after a valid 3.0 m in the same batch, which alone would allow it) is
    no input, so the gate cannot rule the interlock out. One batch: the gate sees all of it or
    none, so no command is ever sent here."""
    epoch = new_epoch(suite)
    cr = Crafter(suite, pb, GW, epoch)
    now = int(time.time() * 1000)
    good, bad = pb.QUALITY_GOOD, pb.QUALITY_BAD
    body = pb.TelemetryBatch(readings=[
        pb.Reading(channel="pump2_status", value=0, offset_ms=0, quality=good),
        pb.Reading(channel="tank_level", value=3.0, offset_ms=0, quality=good),
        pb.Reading(channel="tank_level", value=3.0, offset_ms=500, quality=bad)])
    publish_all(suite, GW, [cr.envelope(cr.header(1, reading_count=3, timestamp_ms=now - 1000),
                                        body.SerializeToString())])
    assert wait_until(lambda: stored_seqs(suite, epoch) == [1], 10)

    def refusal():
        r = suite.ctl("--json", "command", GW, "pump1", "0", "--unit", "1", "--reason",
                      "quality test", check=False)
        out = json.loads(r.stdout)
        assert out["decision"] == "refused", out  # never sent, whatever the gate has seen
        return out if "not answering" in out["detail"] else None

    out = wait_until(refusal, 10, 0.5)
    assert out, "the gate never saw the BAD reading"
    assert out["reason"] == "interlock_data_missing"
    assert "pumping.tank_level" in out["detail"] and "quality BAD" in out["detail"], out
