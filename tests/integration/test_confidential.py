"""Channels the data profile marks `confidential = yes` (the water CPS profile's mandatory item 5:
important data encrypted by itself, under a per-session AES key wrapped with RSA-OAEP-2048):
through the real pipeline, the verifier refuses a plaintext batch carrying one of them, counted
and audited like its other refusals, while the same reading sealed under the session key is
stored; and the archive keeps no aggregate of such a channel in clear."""
import re

import pytest

from suite import TOP, Suite, wait_until
from test_bad_inputs import Crafter, check_fates, fate, publish_all

GW = "gw-0002"  # a reservoir (scripts/mkdeploy.sh: neither n % 10 == 1 nor n % 3 == 0)
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
    try:
        s.start()
        s.login_admin()
        yield s
    finally:
        codes = s.stop()
        assert not {n: c for n, c in codes.items() if c != 0}, codes


class Chlorine(Crafter):
    """Batches of one chlorine reading (or of `channel`), plaintext or sealed."""
    channel = "chlorine"

    def body(self, n=1, channel=None):
        return super().body(n, channel or self.channel)


def test_verify_took_the_confidential_set_of_the_profile_in_force(csuite):
    assert wait_until(lambda: "confidential_channels=1 " in csuite.log("verify"), 15), \
        csuite.log("verify")


def test_plaintext_confidential_readings_are_refused_and_sealed_ones_stored(csuite, pb):
    c = Chlorine(csuite, pb, GW, epoch=7001)
    level = Chlorine(csuite, pb, GW, epoch=7001)
    level.channel = "level"
    cases = [
        ("plaintext chlorine", c.good(1), "plaintext_confidential"),
        ("plaintext level", level.good(2), "stored"),
        ("sealed chlorine", c.sealed(3), "stored"),
    ]
    check_fates(csuite, pb, GW, cases)
    # backfill is stored data too: the same rule (on its own topic)
    env = c.good(4, kind=pb.KIND_BACKFILL)
    publish_all(csuite, GW, [env], topic=f"suido/v1/{GW}/backfill")
    assert wait_until(lambda: fate(csuite, env) is not None, 15)
    assert fate(csuite, env) == "plaintext_confidential"
    # audited like the verifier's other refusals
    assert csuite.query("SELECT count(*) FROM audit WHERE event='message_refused' AND subject=? "
                        "AND detail LIKE 'reason=plaintext_confidential %'", GW)[0][0] == 2
