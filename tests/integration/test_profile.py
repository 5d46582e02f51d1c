"""The data profile is loaded, checked, signed and versioned by the registry and distributed to
the services, which verify the signature: a change is audited and in force everywhere within
seconds; a malformed profile, or a changed one under the same version, is refused whole with file,
line and reason, and the version in force stays."""
import json
import re

from suite import wait_until


def in_force(suite):
    return {s: suite.metric(s, "suido_profile_version" if s == "profile"
                            else "suido_registry_profile_version")
            for s in ("profile", "registry")}


def audited(suite, event):
    return suite.query("SELECT detail FROM audit WHERE event=? ORDER BY seq", event)


def write_profile(suite, text):
    path = suite.dir / "profile.conf"
    tmp = path.with_name(".profile.conf.new")
    tmp.write_text(text)
    tmp.replace(path)


def bump(text, version):
    return re.sub(r"(?m)^version = \d+$", f"version = {version}", text, count=1)


def test_services_take_the_registrys_signed_profile_and_follow_its_changes(suite):
    original = (suite.dir / "profile.conf").read_text()
    start = in_force(suite)
    v = int(start["registry"])
    assert start["profile"] == v and v >= 1
    # the services do not read the file: they get it from the registry
    for conf in ("profile.conf", "gate.conf", "anomaly-0.conf"):
        assert "/profile.conf" not in (suite.dir / "etc" / conf).read_text(), conf
    # the gate refuses a valve position the changed profile no longer allows
    narrowed = bump(original, v + 1).replace(
        "[actuator reservoir.inlet_valve]", "[actuator reservoir.inlet_valve]\n# narrowed by a test")
    narrowed = re.sub(r"(\[actuator reservoir\.inlet_valve\][^\[]*?)range = 0, 100",
                      r"\1range = 0, 80", narrowed, count=1, flags=re.S)
    assert narrowed != original
    write_profile(suite, narrowed)
    assert wait_until(lambda: in_force(suite) == {"profile": v + 1, "registry": v + 1}, 10), \
        (in_force(suite), suite.log("registry")[-1500:])
    changed = audited(suite, "profile_changed")
    assert changed and f"from={v} to={v + 1}" in changed[-1][0]
    r = suite.ctl("--json", "command", "gw-0002", "inlet_valve", "90", "--unit", "%", check=False)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["reason"] == "out_of_range" and "80" in out["detail"]

    # malformed: refused whole with file, line and reason; the version in force stays
    broken = bump(narrowed, v + 2).replace("[channel reservoir.level]",
                                           "[channel reservoir.level]\nrange = 10, 0", 1)
    write_profile(suite, broken)
    assert wait_until(lambda: any("profile.conf:" in d and "range" in d
                                  for (d,) in audited(suite, "profile_refused")), 10)
    # changed content under the version in force: refused too
    write_profile(suite, narrowed.replace("# narrowed by a test", "# edited, same version"))
    assert wait_until(lambda: any("needs a version above" in d
                                  for (d,) in audited(suite, "profile_refused")), 10)
    assert in_force(suite) == {"profile": v + 1, "registry": v + 1}
    # back to the original limits, as a new version
    write_profile(suite, bump(original, v + 3))
    assert wait_until(lambda: in_force(suite) == {"profile": v + 3, "registry": v + 3}, 10)
    # every service took each version it was given, and checked its signature first
    # (each fetches it from the registry after the announcement: a moment later than the
    # profile stage that in_force reads)
    for s in ("profile", "gate", "anomaly-0"):
        assert wait_until(lambda: f"version={v + 3} " in suite.log(s), 10), s


def birth_envelope(pb, suite, gw, epoch, channels):
    """A signed birth declaring channels [(name, unit)], as a gateway sends it."""
    import time as _t
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from wire import DOMAIN, key_id, signing_key
    key = signing_key(suite, gw)
    h = pb.Header(version=1, gateway_id=gw, boot_epoch=epoch, seq=0,
                  timestamp_ms=int(_t.time() * 1000), key_id=key_id(key), kind=pb.KIND_BIRTH,
                  cipher=pb.CIPHER_NONE).SerializeToString()
    body = pb.Birth(model="test", firmware="1", site="reservoir-07",
                    channels=[pb.ChannelDecl(name=n, unit=u) for n, u in channels]
                    ).SerializeToString()
    sig = key.sign(DOMAIN + len(h).to_bytes(4, "big") + h + body, ec.ECDSA(hashes.SHA256()))
    return pb.SignedEnvelope(header=h, body=body, signature=sig).SerializeToString()


def test_readings_are_converted_from_the_unit_their_gateway_declared(suite, pb):
    """gw-0007 declares its level in cm: 980 cm is 9.8 m, above the reservoir's HH of 9.5 m (and
    inside its physical range of 0..10 m, which 980 m would not be)."""
    from wire import Client, envelope
    import time as _t
    # a boot epoch as the simulator makes them (Unix seconds): above any earlier one of gw-0007
    gw, epoch = "gw-0007", int(_t.time())
    c = Client(suite, *suite.tls_files(gw), client_id=gw)
    assert c.connect()
    try:
        c.publish(f"suido/v1/{gw}/birth", birth_envelope(pb, suite, gw, epoch, [("level", "cm")]))
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM events WHERE gateway=? AND kind='birth' AND boot_epoch=?",
            gw, epoch)[0][0] == 1, 10)
        for seq, cm in ((1, 500.0), (2, 980.0)):
            c.publish(f"suido/v1/{gw}/data",
                      envelope(pb, suite, gw, seq, [("level", cm)], epoch=epoch))
        assert wait_until(lambda: suite.query(
            "SELECT count(*) FROM alerts WHERE gateway=? AND rule='limit_hh' AND abs(value - 9.8) < 1e-6",
            gw)[0][0] >= 1, 10), suite.query("SELECT rule, value FROM alerts WHERE gateway=?", gw)
    finally:
        c.close()
    assert suite.query("SELECT count(*) FROM alerts WHERE gateway=? AND rule='physical_range'",
                       gw)[0][0] == 0
    assert wait_until(lambda: suite.metric("profile", "suido_profile_converted_total") >= 2, 3)
