"""The archive's operator API checks every operation's rights from one table (archive_api.c)
before it answers: spoken to over its real CURVE socket, as the monitor and as suidoctl, with
live sessions of each role, every operation refuses each role below its own, and every refusal
is counted (suido_archive_api_denied_total) and written to the audit log."""
import zmq

from suite import wait_until
from wire import totp

DENIED = 15  # cm_err CM_ERR_DENIED

# op -> (least role, the peer that asks it); the monitor's page rights
RIGHTS = {
    "ALERT_LIST": ("viewer", "monitor"),
    "ALERT_SHOW": ("viewer", "monitor"),
    "ALERT_ACK": ("operator", "monitor"),
    "ALERT_CLOSE": ("operator", "monitor"),
    "REPL_STATUS": ("viewer", "suidoctl"),
    "REPL_PROMOTE": ("admin", "suidoctl"),
    "TREND": ("viewer", "monitor"),
    "GATEWAY_STATS": ("viewer", "monitor"),
    "PLANNING": ("viewer", "monitor"),
    "COMMAND_LOG": ("operator", "monitor"),
    "AUDIT_LIST": ("admin", "monitor"),
    "AUDIT_VERIFY": ("admin", "monitor"),
}
ORDER = ["viewer", "operator", "admin"]


def api_socket(suite, peer):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    d = suite.dir / "services"
    s.curve_serverkey = (d / "archive" / "curve.pub").read_bytes().strip()
    s.curve_publickey = (d / peer / "curve.pub").read_bytes().strip()
    s.curve_secretkey = (d / peer / "curve.key").read_bytes().strip()
    s.connect(f"tcp://127.0.0.1:{suite.base + 8}")
    return s


def ask(pb, sock, op, token, n=[0]):
    n[0] += 1
    q = pb.ArchiveRequest(op=getattr(pb, op), token=token, request_id=n[0], case_id=987654,
                          from_ms=1, to_ms=3600000, limit=5)
    sock.send(q.SerializeToString())
    rep = pb.ArchiveReply()
    rep.ParseFromString(sock.recv())
    assert rep.request_id == n[0]
    return rep


def denials(suite):
    return suite.query("SELECT count(*) FROM audit WHERE source='archive' AND "
                       "event='request_denied' AND detail LIKE '%reason=role%'")[0][0]


def test_every_operation_refuses_each_role_below_its_own(suite, pb):
    tokens = {"admin": suite.token}
    for role in ("viewer", "operator"):
        secret = suite.add_operator(f"rights-{role}", role, f"{role} password for rights")
        tokens[role] = suite.login(f"rights-{role}", f"{role} password for rights", totp(secret))
    socks = {p: api_socket(suite, p) for p in ("monitor", "suidoctl")}
    audited = denials(suite)
    counted = suite.metric("archive", "suido_archive_api_denied_total")
    refused = []
    try:
        for op, (least, peer) in RIGHTS.items():
            for role in ORDER:
                rep = ask(pb, socks[peer], op, tokens[role])
                if ORDER.index(role) < ORDER.index(least):
                    assert rep.status == DENIED, f"{op} answered a {role}: {rep}"
                    # nothing of the answer leaks with the refusal
                    assert not (rep.commands or rep.audit or rep.cases or rep.points or
                                rep.HasField("audit_check") or rep.summaries)
                    refused.append((op, role))
                else:
                    assert rep.status != DENIED, f"{op} refused a {role}: {rep.error}"
        # the command log is an operator's page: a viewer never sees it
        assert ("COMMAND_LOG", "viewer") in refused
    finally:
        for s in socks.values():
            s.close()
    # every refusal counted and audited, with the operation and the reason
    assert wait_until(lambda: denials(suite) >= audited + len(refused), 5)
    assert suite.query("SELECT count(*) FROM audit WHERE event='request_denied' AND "
                       "actor='rights-viewer' AND detail LIKE 'op=command_log %reason=role'"
                       )[0][0] >= 1
    assert wait_until(lambda: suite.metric("archive", "suido_archive_api_denied_total") >=
                      counted + len(refused), 10)


def test_a_peer_not_on_an_operations_row_is_refused_whatever_its_session(suite, pb):
    sock = api_socket(suite, "suidoctl")
    try:
        # the monitor's reads are not suidoctl's, even for an admin
        assert ask(pb, sock, "AUDIT_LIST", suite.token).status == DENIED
        assert ask(pb, sock, "ALERT_LIST", suite.token).status == 0
    finally:
        sock.close()
