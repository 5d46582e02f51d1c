"""The broker lets only this deployment's identities in, and each only where its role allows;
internal sockets let in only the CURVE keys on their allow-lists."""
import time

import pytest
import zmq

from suite import wait_until
from wire import Client, envelope


@pytest.mark.parametrize("who", ["none", "wrongca", "selfsigned", "expired", "notyet", "revoked"])
def test_clients_without_a_valid_certificate_cannot_connect(suite, who):
    cert = key = None
    if who != "none":
        cert, key = suite.tls_files(who)
    c = Client(suite, cert, key, client_id="gw-0001")
    try:
        assert not c.connect(timeout=3), f"{who} certificate was accepted"
    finally:
        c.close()


def test_refusals_inside_the_broker_reach_the_audit_log(suite):
    """TLS refusals and what the broker plugin denies are logged by the broker, which ingest
    reads on $SYS/broker/log/# and hands to the audit log."""
    def count(event, subject=None):
        sql = "SELECT count(*) FROM audit WHERE event=? AND source='ingest' AND actor='broker'"
        args = [event] + ([subject] if subject else [])
        return suite.query(sql + (" AND subject=?" if subject else ""), *args)[0][0]

    tls, denied = count("broker_tls_refused"), count("broker_access_denied", "gw-0001")
    c = Client(suite, *suite.tls_files("wrongca"), client_id="gw-0001")
    try:
        assert not c.connect(timeout=3)
    finally:
        c.close()
    a = Client(suite, *suite.tls_files("gw-0001"), client_id="gw-0001")
    assert a.connect()
    try:
        a.publish("suido/v1/gw-0002/data", b"not mine")
    finally:
        a.close()
    assert wait_until(lambda: count("broker_tls_refused") > tls, 10)
    assert wait_until(lambda: count("broker_access_denied", "gw-0001") > denied, 10)
    detail = suite.query("SELECT detail FROM audit WHERE event='broker_access_denied' AND "
                         "subject='gw-0001' ORDER BY seq DESC LIMIT 1")[0][0]
    assert "topic=suido/v1/gw-0002/data" in detail


def test_a_valid_gateway_connects(suite):
    c = Client(suite, *suite.tls_files("gw-0002"), client_id="gw-0002")
    try:
        assert c.connect()
    finally:
        c.close()


def test_gateway_cannot_publish_to_another_gateways_topic(suite, pb):
    a = Client(suite, *suite.tls_files("gw-0001"), client_id="gw-0001")
    assert a.connect()
    try:
        a.publish("suido/v1/gw-0002/data",
                  envelope(pb, suite, "gw-0001", 1, [("level", 5.0)], epoch=7001))
        a.publish("suido/v1/gw-0002/data",
                  envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=7002))
        a.publish("suido/v1/gw-0002/cmd", b"start pump")
        # control: the same connection's own topic goes through, after the refused ones
        a.publish("suido/v1/gw-0001/data",
                  envelope(pb, suite, "gw-0001", 1, [("raw_flow", 50.0)], epoch=7003))
        assert wait_until(lambda: suite.seen(7003) == 1, 10)
    finally:
        a.close()
    assert suite.seen(7001) == 0 and suite.seen(7002) == 0


@pytest.mark.parametrize("pattern", ["#", "+/+/#", "$SYS/#", "suido/v1/gw-0003/ack",
                                     "suido/v1/+/data"])
def test_gateway_cannot_subscribe_beyond_its_own_topics(suite, pattern):
    spy = Client(suite, *suite.tls_files("gw-0001"), client_id="gw-0001")
    assert spy.connect()
    try:
        spy.subscribe(pattern)
        time.sleep(0.3)
        suite.sim("--ids", "gw-0003", "--max-batches", 3, "--rate", 20, "--wait-acks", 5)
        time.sleep(0.5)
        assert spy.messages == []
    finally:
        spy.close()


def test_service_identity_cannot_publish_gateway_data(suite, pb):
    c = Client(suite, *suite.tls_files("suidoctl"), client_id="suidoctl")
    assert c.connect()
    try:
        c.publish("suido/v1/gw-0002/data",
                  envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=7004))
    finally:
        c.close()
    g = Client(suite, *suite.tls_files("gw-0002"), client_id="gw-0002")
    assert g.connect()
    try:
        g.publish("suido/v1/gw-0002/data",
                  envelope(pb, suite, "gw-0002", 1, [("level", 5.0)], epoch=7005))
        assert wait_until(lambda: suite.seen(7005) == 1, 10)
    finally:
        g.close()
    assert suite.seen(7004) == 0


def curve_push(suite, endpoint_port, server, client_keys, payload):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_serverkey = (suite.dir / "services" / server / "curve.pub").read_bytes().strip()
    s.curve_publickey, s.curve_secretkey = client_keys
    s.connect(f"tcp://127.0.0.1:{endpoint_port}")
    try:
        s.send(payload, flags=0, copy=True)
        time.sleep(0.8)
    finally:
        s.close()


def service_keys(suite, name):
    d = suite.dir / "services" / name
    return (d / "curve.pub").read_bytes().strip(), (d / "curve.key").read_bytes().strip()


def alert_frame(pb, tag):
    a = pb.Alert(id=f"gw-0002/reservoir.level/{tag}", gateway_id="gw-0002", site="reservoir-02",
                 channel="reservoir.level", rule=tag, severity=pb.SEVERITY_ALARM, value=1,
                 timestamp_ms=1, evidence="allow-list test")
    return pb.StageMessage(topic="suido/v1/alerts/reservoir-02", alert=a).SerializeToString()


def test_curve_allow_list_admits_only_the_expected_peers(suite, pb):
    archive_port = suite.base + 2

    def stored(tag):
        return suite.query("SELECT count(*) FROM alerts WHERE rule=?", tag)[0][0]

    # the anomaly checker is on the archive's allow-list: its alert is stored
    curve_push(suite, archive_port, "archive", service_keys(suite, "anomaly"),
               alert_frame(pb, "allowlist_ok"))
    assert wait_until(lambda: stored("allowlist_ok") == 1, 5)
    # a key nobody issued, and a real service key that has no business here, are refused
    denied_before = suite.metric("archive", "suido_zap_denied_total")
    curve_push(suite, archive_port, "archive", zmq.curve_keypair(), alert_frame(pb, "stranger"))
    curve_push(suite, archive_port, "archive", service_keys(suite, "suidoctl"),
               alert_frame(pb, "wrong_peer"))
    assert wait_until(lambda: suite.metric("archive", "suido_zap_denied_total")
                      >= denied_before + 2, 5)
    time.sleep(0.3)
    assert stored("stranger") == 0 and stored("wrong_peer") == 0
    assert "result=denied" in suite.log("archive")


def test_allowed_peer_cannot_send_a_kind_it_has_no_business_with(suite, pb):
    # verify may send refusals to the archive, but not alerts
    before = suite.metric("archive", "suido_stage_denied_total")
    curve_push(suite, suite.base + 2, "archive", service_keys(suite, "verify"),
               alert_frame(pb, "forged_by_verify"))
    assert wait_until(lambda: suite.metric("archive", "suido_stage_denied_total") > before, 5)
    assert suite.query("SELECT count(*) FROM alerts WHERE rule='forged_by_verify'") == [(0,)]


def test_null_mechanism_client_gets_nothing_from_the_registry(suite, pb):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    # a refused handshake leaves the DEALER without a peer, where a send would block for ever
    s.setsockopt(zmq.SNDTIMEO, 2000)
    s.connect(f"tcp://127.0.0.1:{suite.base + 1}")
    try:
        try:
            s.send(pb.RegistryRequest(op=pb.REG_GET_GATEWAY, id="gw-0001").SerializeToString())
        except zmq.Again:
            return  # nothing could even be queued: nothing got through
        assert s.poll(1500) == 0
    finally:
        s.close()


def test_unlisted_curve_key_gets_nothing_from_the_registry_but_a_listed_one_does(suite, pb):
    def ask(keys):
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_serverkey = (suite.dir / "services" / "registry" / "curve.pub").read_bytes().strip()
        s.curve_publickey, s.curve_secretkey = keys
        s.setsockopt(zmq.SNDTIMEO, 2000)  # a refused peer leaves nobody to queue the request for
        s.connect(f"tcp://127.0.0.1:{suite.base + 1}")
        try:
            try:
                s.send(pb.RegistryRequest(op=pb.REG_GET_GATEWAY, id="gw-0001").SerializeToString())
            except zmq.Again:
                return None
            if s.poll(1500) == 0:
                return None
            rep = pb.RegistryReply()
            rep.ParseFromString(s.recv())
            return rep
        finally:
            s.close()

    assert ask(zmq.curve_keypair()) is None
    assert ask(service_keys(suite, "ingest")) is None  # ingest never asks the registry
    rep = ask(service_keys(suite, "verify"))
    assert rep is not None and rep.status == 0 and rep.gateway.id == "gw-0001"
    assert rep.gateway.state == pb.STATE_ACTIVE and len(rep.gateway.sign_pub_der) > 60
