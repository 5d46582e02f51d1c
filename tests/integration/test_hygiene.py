"""Text from operators and gateways cannot forge audit entries; names that reach MQTT topics and
gateway.conf (site, kind, model, firmware) are checked wherever they enter: suidoctl's
provisioning, the registry's provisioning request and inventory, a gateway's birth; disposal
destroys key files only, never what a symbolic link points at."""
import json
import os
import subprocess
import time

import zmq

from suite import BIN, wait_until


def audit(suite, event, subject):
    return [d for (d,) in suite.query("SELECT detail FROM audit WHERE event=? AND subject=? "
                                      "ORDER BY seq", event, subject)]


def test_a_reason_stays_one_quoted_value_in_the_audit_log(suite):
    forged = 'maintenance" result=ok\nlevel=info forged=1'
    suite.ctl("gateway", "suspend", "gw-0005", "--reason", forged)
    suite.ctl("gateway", "activate", "gw-0005")
    assert wait_until(lambda: len(audit(suite, "identity_state_changed", "gw-0005")) >= 2, 5)
    detail = [d for d in audit(suite, "identity_state_changed", "gw-0005")
              if "to=suspended" in d][-1]
    assert "\n" not in detail
    assert detail.endswith('reason="maintenance\\" result=ok\\x0alevel=info forged=1"')
    # one result: the real one, before the quoted reason
    assert detail.count(" result=") == 2 and detail.split(" result=")[1].startswith("ok reason=")


def suidoctl_registry(suite, pb, req):
    """Sends one RegistryRequest as suidoctl (with the admin's session); the reply."""
    d = suite.dir / "services"
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_serverkey = (d / "registry" / "curve.pub").read_bytes().strip()
    s.curve_publickey = (d / "suidoctl" / "curve.pub").read_bytes().strip()
    s.curve_secretkey = (d / "suidoctl" / "curve.key").read_bytes().strip()
    s.connect(f"tcp://127.0.0.1:{suite.base + 1}")
    try:
        req.token = suite.token
        s.send(req.SerializeToString())
        assert s.poll(10000), "no reply from the registry"
        rep = pb.RegistryReply()
        rep.ParseFromString(s.recv())
        return rep
    finally:
        s.close()


def issued(suite, gw):
    return [l.split("\t")[0] for l in
            (suite.dir / "ca" / "db" / "index.txt").read_text().splitlines()
            if l.endswith(f"/CN={gw}")]


def test_provisioning_refuses_names_that_could_leave_their_place(suite, pb, tmp_path):
    for opt, bad in (("--site", "res/#"), ("--kind", "a b"), ("--model", "x\nbroker = evil"),
                     ("--firmware", "1.0\"")):
        args = {"--site": "hill-res", "--kind": "reservoir", opt: bad}
        r = suite.ctl("gateway", "provision", "gw-0104", *[x for kv in args.items() for x in kv],
                      "--out", tmp_path / "b", check=False)
        assert r.returncode == 2 and opt in r.stderr and "[A-Za-z0-9._-]" in r.stderr, r.stderr
    assert issued(suite, "gw-0104") == [] and not (tmp_path / "b").exists()
    # straight to the registry (a client that skips suidoctl's check): refused and audited
    rejected = suite.metric("registry", "suido_registry_rejected_total")
    g = pb.GatewayInfo(id="gw-0105", site="res/+/x", kind="reservoir", sign_pub_der=b"k" * 91)
    rep = suidoctl_registry(suite, pb, pb.RegistryRequest(op=pb.REG_ADD_GATEWAY, gateway=g,
                                                          cert_pem=b"-----BEGIN"))
    assert rep.status != 0 and "[A-Za-z0-9._-]" in rep.error
    g = pb.GatewayInfo(id="gw-0105", site="res", kind="reservoir", model="m\nx",
                       sign_pub_der=b"k" * 91)
    rep = suidoctl_registry(suite, pb, pb.RegistryRequest(op=pb.REG_ADD_GATEWAY, gateway=g,
                                                          cert_pem=b"-----BEGIN"))
    assert rep.status != 0 and "[A-Za-z0-9._-]" in rep.error
    assert wait_until(lambda: len(audit(suite, "gateway_provision_refused", "gw-0105")) == 2, 5)
    assert 'site="res/+/x"' in audit(suite, "gateway_provision_refused", "gw-0105")[0]
    assert wait_until(lambda: suite.metric("registry", "suido_registry_rejected_total")
                      >= rejected + 2, 5)


def test_inventory_with_a_bad_name_is_refused_at_start(suite, tmp_path):
    inv = (suite.dir / "inventory.conf").read_text()
    assert "site = reservoir-02\n" in inv
    bad = tmp_path / "inventory.conf"
    bad.write_text(inv.replace("site = reservoir-02\n", "site = reservoir/02\n"))
    conf = tmp_path / "registry.conf"
    conf.write_text((suite.dir / "etc" / "registry.conf").read_text().replace(
        f"inventory = {suite.dir / 'inventory.conf'}", f"inventory = {bad}"))
    r = subprocess.run([str(BIN / "suido-registry"), "-n", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "[gateway gw-0002]" in r.stderr and "[A-Za-z0-9._-]" in r.stderr


def test_a_birth_with_a_bad_model_is_rejected(suite, pb):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from wire import DOMAIN, Client, key_id, signing_key
    gw, epoch = "gw-0003", int(time.time()) + 7
    key = signing_key(suite, gw)
    h = pb.Header(version=1, gateway_id=gw, boot_epoch=epoch, seq=0,
                  timestamp_ms=int(time.time() * 1000), key_id=key_id(key), kind=pb.KIND_BIRTH,
                  cipher=pb.CIPHER_NONE).SerializeToString()
    body = pb.Birth(model="SG-200/#", firmware="2.4.1", site="pumping-03").SerializeToString()
    sig = key.sign(DOMAIN + len(h).to_bytes(4, "big") + h + body, ec.ECDSA(hashes.SHA256()))
    env = pb.SignedEnvelope(header=h, body=body, signature=sig).SerializeToString()
    c = Client(suite, *suite.tls_files(gw), client_id=gw)
    assert c.connect()
    try:
        c.publish(f"suido/v1/{gw}/birth", env)
        assert wait_until(lambda: suite.query(
            "SELECT reason FROM rejects WHERE gateway=? AND boot_epoch=?", gw, epoch), 10) == \
            [("invalid_birth_name",)]
    finally:
        c.close()
    assert suite.query("SELECT count(*) FROM events WHERE gateway=? AND kind='birth' AND "
                       "boot_epoch=?", gw, epoch)[0][0] == 0


def test_dispose_leaves_what_a_symlink_points_at(suite, tmp_path):
    out = json.loads(suite.ctl("--json", "gateway", "provision", "gw-0106", "--site", "hill-res",
                               "--kind", "reservoir", "--out", tmp_path / "bundle").stdout)
    assert out["state"] == "provisioned"
    suite.ctl("gateway", "revoke", "gw-0106")
    victim = tmp_path / "precious.txt"
    victim.write_text("not a key of this gateway\n")
    link = suite.dir / "gateways" / "gw-0106" / "sign.key"
    link.unlink()
    os.symlink(victim, link)
    r = suite.ctl("gateway", "dispose", "gw-0106", check=False)
    assert r.returncode == 1 and "sign.key" in r.stderr
    assert victim.read_text() == "not a key of this gateway\n"
    assert link.is_symlink()
    # the regular key file next to it was destroyed
    assert not (suite.dir / "gateways" / "gw-0106" / "client.key").exists()
