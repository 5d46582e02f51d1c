"""The water CPS profile's mandatory item 5 (important data encrypted by itself, under a
per-session AES key wrapped with RSA-OAEP-2048), through the real pipeline. Channels the data
profile marks `confidential = yes`: the verifier refuses a plaintext batch carrying one of them,
counted and audited like its other refusals, while the same reading sealed under the session key
is stored; the archive keeps no aggregate of such a channel in clear, and the monitor says so.
Commands are encrypted to each gateway's own RSA key (test_commands.py): a gateway the registry
holds no such key for (one made before) gets none."""
import json
import re

import pytest

from suite import TOP, Suite, running_suite, wait_until
from test_bad_inputs import Crafter, check_fates, fate, publish_all, rejected

GW = "gw-0002"  # a reservoir (scripts/mkdeploy.sh: neither n % 10 == 1 nor n % 3 == 0)
OLD_GW = "gw-0003"  # a pumping station, imported without a command key
CONFIDENTIAL = "reservoir.chlorine"


@pytest.fixture(scope="module")
def csuite(tmp_path_factory):
    """A suite of its own whose profile marks reservoir.chlorine confidential."""
    root = tmp_path_factory.mktemp("confidential")
    text = (TOP / "examples" / "sim-utility" / "profile.conf").read_text()
    text, n = re.subn(r"(?m)^\[channel reservoir\.chlorine\]$",
                      "[channel reservoir.chlorine]\nconfidential = yes", text)
    assert n == 1
    profile = root / "profile.conf"
    profile.write_text(text)
    s = Suite(root, gateways=4, profile=profile)
    # gw-0003 as a gateway made before command keys: the registry imports it without one
    inv = s.dir / "inventory.conf"
    text, n = re.subn(r"(?m)^cmd_pub = .*/gw-0003/cmdwrap\.pub\n", "", inv.read_text())
    assert n == 1
    inv.write_text(text)
    with running_suite(root, suite=s):
        yield s


class Chlorine(Crafter):
    """Batches of one chlorine reading (or of `channel`), plaintext or sealed."""
    channel = "chlorine"

    def body(self, n=1, channel=None):
        return super().body(n, channel or self.channel)


def test_verify_took_the_confidential_set_of_the_profile_in_force(csuite):
    assert wait_until(lambda: "confidential_channels=1 " in csuite.log("verify"), 15), \
        csuite.log("verify")


def refusal(suite, epoch, seq):
    """(reason, stored envelope) of the refusal of (GW, epoch, seq), or None."""
    rows = suite.query("SELECT reason, envelope FROM rejects WHERE gateway=? AND boot_epoch=? "
                       "AND seq=?", GW, epoch, seq)
    return rows[0] if rows else None


def test_plaintext_confidential_readings_are_refused_and_sealed_ones_stored(csuite, pb):
    c = Chlorine(csuite, pb, GW, epoch=7001)
    level = Chlorine(csuite, pb, GW, epoch=7001)
    level.channel = "level"
    # stored: a non-confidential channel in clear, the confidential one sealed (each checked
    # to be counted and audited by check_fates when refused, here stored)
    check_fates(csuite, pb, GW, [("plaintext level", level.good(2), "stored"),
                                 ("sealed chlorine", c.sealed(3), "stored")])
    before = rejected(csuite, "plaintext_confidential")
    plain = c.good(4)
    backfill = c.good(5, kind=pb.KIND_BACKFILL)  # stored data too: the same rule
    publish_all(csuite, GW, [plain])
    publish_all(csuite, GW, [backfill], topic=f"suido/v1/{GW}/backfill")
    assert wait_until(lambda: refusal(csuite, 7001, 4) and refusal(csuite, 7001, 5), 15)
    for seq, env in ((4, plain), (5, backfill)):
        reason, kept = refusal(csuite, 7001, seq)
        assert reason == "plaintext_confidential"
        # kept as evidence without the readings it carried in clear: header and signature
        sent, got = pb.SignedEnvelope.FromString(env), pb.SignedEnvelope.FromString(kept)
        assert got.header == sent.header and got.signature == sent.signature
        assert got.body == b"" and sent.body not in kept
        assert fate(csuite, env) is None  # nowhere stored whole
    # counted once each, and audited like the verifier's other refusals
    assert wait_until(lambda: rejected(csuite, "plaintext_confidential") == before + 2, 5)
    assert csuite.query("SELECT count(*) FROM audit WHERE event='message_refused' AND subject=? "
                        "AND detail LIKE 'reason=plaintext_confidential %'", GW)[0][0] == 2


def aggregates(suite, gw, channel):
    """Rows the archive keeps in clear about one channel of one gateway."""
    return {t: suite.query(f"SELECT count(*) FROM {t} WHERE gateway=? AND channel=?", gw,
                           channel)[0][0]
            for t in ("readings_minute", "readings_hour", "readings_series")}


def test_no_aggregate_of_a_confidential_channel_is_kept_in_clear(csuite):
    # a reservoir gateway sealing its batches (every batch carries its four channels)
    rep = csuite.sim("--ids", GW, "--encrypt", "--rate", "5", "--batch", "8", "--max-batches",
                     "5", "--wait-acks", "20")
    assert rep["acked_batches"] == rep["legit_sent"] == 5, rep
    # the other channels of the same batches are aggregated, the confidential one is not
    assert all(n > 0 for n in aggregates(csuite, GW, "reservoir.level").values())
    assert aggregates(csuite, GW, CONFIDENTIAL) == dict.fromkeys(
        ("readings_minute", "readings_hour", "readings_series"), 0)
    # its readings are stored all the same, inside the encrypted envelopes
    assert csuite.query("SELECT count(*) FROM batches WHERE gateway=? AND kind='data' AND "
                        "encrypted=1", GW)[0][0] >= 5


def test_the_monitor_says_a_confidential_channel_has_no_stored_trend(csuite):
    csuite.start_service("monitor")
    # added once: the login below is tried again while the monitor is still starting
    secret = csuite.add_operator("vicky", "viewer", "vicky has a long passphrase")

    def up():
        try:
            return csuite.monitor_session("vicky", "vicky has a long passphrase", secret)
        except OSError:
            return None
    call = wait_until(up, 30, 0.5)
    assert call, csuite.log("monitor")
    status, t = call("GET", f"/api/trend?gateway={GW}&channel={CONFIDENTIAL}")
    assert status == 200, t
    assert t["confidential"] is True and t["points"] == [] and t["readings"] == 0
    assert "confidential" in t["detail"] and "no trend" in t["detail"]
    status, t = call("GET", f"/api/trend?gateway={GW}&channel=reservoir.level")
    assert status == 200 and not t.get("confidential") and t["readings"] > 0, t
    status, c = call("GET", f"/api/channels?gateway={GW}")
    assert {ch["id"]: ch["confidential"] for ch in c["channels"]}[CONFIDENTIAL] is True


def test_a_gateway_without_a_command_key_gets_no_command(csuite):
    r = csuite.ctl("--json", "command", OLD_GW, "pump1", "1", "--unit", "1", check=False)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["decision"] == "refused", (out, r.stderr)
    assert out["reason"] == "no_command_key" and "encrypted" in out["detail"]
    assert wait_until(lambda: csuite.query(
        "SELECT count(*) FROM audit WHERE event='command_refused' AND subject=? AND detail LIKE ?",
        OLD_GW, "%reason=no_command_key %")[0][0] == 1, 5)
    # a gateway with one is commanded as usual (encrypted)
    r = csuite.ctl("--json", "command", "gw-0002", "inlet_valve", "10", "--unit", "%",
                   check=False)
    assert json.loads(r.stdout)["decision"] == "sent", r.stderr
