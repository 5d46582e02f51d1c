"""Every daemon refuses to start — one clear line naming the file and the problem, exit 1 — on a
missing, unreadable or malformed configuration or key, and never runs with an empty allow-list."""
import os
import re
import shutil
import subprocess

import pytest

DAEMONS = ["registry", "ingest", "verify", "profile", "anomaly-0", "archive"]


def check(suite, name, conf):
    argv = suite.service_argv(name)
    argv[-1] = str(conf)
    return subprocess.run(argv + ["-n"], capture_output=True, text=True, timeout=20)


def refused(r, *needles):
    lines = [l for l in r.stderr.splitlines() if l.startswith("suido-")]
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert lines, r.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def edited(suite, tmp_path, name, fn):
    text = (suite.dir / "etc" / f"{name}.conf").read_text()
    out = tmp_path / f"{name}.conf"
    out.write_text(fn(text))
    return out


@pytest.mark.parametrize("name", DAEMONS)
def test_good_configuration_passes_the_check(suite, name):
    r = check(suite, name, suite.dir / "etc" / f"{name}.conf")
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout


@pytest.mark.parametrize("name", DAEMONS)
def test_missing_config(suite, tmp_path, name):
    refused(check(suite, name, tmp_path / "nope.conf"), "nope.conf", "cannot open")


@pytest.mark.parametrize("name", DAEMONS)
def test_malformed_config_names_file_and_line(suite, tmp_path, name):
    conf = edited(suite, tmp_path, name, lambda t: t + "\nthis is not a pair\n")
    line = refused(check(suite, name, conf), f"{name}.conf:")
    assert re.search(r"\.conf:\d+: expected 'key = value'", line), line


@pytest.mark.parametrize("name", DAEMONS)
def test_unknown_key_is_refused(suite, tmp_path, name):
    conf = edited(suite, tmp_path, name, lambda t: t.replace("[service]\n", "[service]\nnmae = x\n"))
    refused(check(suite, name, conf), "unknown key 'nmae'")


@pytest.mark.parametrize("name", DAEMONS)
def test_missing_secret_key_file(suite, tmp_path, name):
    conf = edited(suite, tmp_path, name,
                  lambda t: re.sub(r"curve_secret = .*", f"curve_secret = {tmp_path}/gone.key", t))
    refused(check(suite, name, conf), "CURVE keypair")


@pytest.mark.parametrize("name", DAEMONS)
def test_secret_key_readable_by_others_is_refused(suite, tmp_path, name):
    svc = name.split("-")[0]
    key = tmp_path / "curve.key"
    shutil.copy(suite.dir / "services" / svc / "curve.key", key)
    os.chmod(key, 0o644)
    conf = edited(suite, tmp_path, name,
                  lambda t: re.sub(r"curve_secret = .*", f"curve_secret = {key}", t))
    refused(check(suite, name, conf), "CURVE keypair")


@pytest.mark.parametrize("name", ["registry", "verify", "profile", "anomaly-0", "archive"])
def test_empty_allow_list_is_refused(suite, tmp_path, name):
    conf = edited(suite, tmp_path, name, lambda t: re.sub(r"allow = .*", "allow = ", t))
    # an empty list is caught by the check (-n) or, at the latest, before binding
    argv = suite.service_argv(name)
    argv[-1] = str(conf)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    refused(r, "allow")


def test_malformed_profile_is_refused_with_line(suite, tmp_path):
    prof = tmp_path / "utility-profile.conf"
    prof.write_text((suite.dir / "profile.conf").read_text().replace(
        "limits = 0.5, 1.0, 9.0, 9.5", "limits = 9.5, 1.0, 9.0, 0.5"))
    # the registry loads the profile (and signs and distributes it): -n checks it
    conf = edited(suite, tmp_path, "registry",
                  lambda t: re.sub(r"(?m)^file = .*profile\.conf$", f"file = {prof}", t))
    line = refused(check(suite, "registry", conf), "utility-profile.conf:")
    assert "LL <= L < H <= HH" in line


def test_inventory_with_a_bad_key_is_refused(suite, tmp_path):
    inv = tmp_path / "inventory.conf"
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    inv.write_text(re.sub(r"sign_pub = \S*gw-0001/+sign.pub", f"sign_pub = {bad}",
                          (suite.dir / "inventory.conf").read_text()))
    conf = edited(suite, tmp_path, "registry",
                  lambda t: re.sub(r"inventory = .*", f"inventory = {inv}", t))
    refused(check(suite, "registry", conf), "inventory.conf:", "bad.pub")


@pytest.mark.parametrize("name", ["registry", "archive", "gate", "anomaly-0", "ingest"])
def test_a_second_instance_is_refused_at_start(suite, name):
    """A service that owns its state (a database, a broker identity, a shard's alerts) refuses a
    second copy on the same state folder with one line, and the running one carries on."""
    first = suite.procs[name]
    assert first.poll() is None
    second = subprocess.run(suite.service_argv(name), capture_output=True, text=True, timeout=20)
    line = refused(second, "is in use by another running suido-", f"(pid {first.pid})",
                   "runs as one instance only")
    assert str(suite.dir / "state") in line
    assert first.poll() is None
    holder = (suite.dir / "state" / name / "instance.lock").read_text().strip()
    assert holder == str(first.pid)


def test_inventory_with_a_command_key_that_is_not_rsa_2048_is_refused(suite, tmp_path):
    # commands are encrypted to this key: a P-256 key (the gateway's signing key) is no such key
    inv = tmp_path / "inventory.conf"
    text, n = re.subn(r"cmd_pub = (\S*gw-0001/+)cmdwrap.pub", r"cmd_pub = \1sign.pub",
                      (suite.dir / "inventory.conf").read_text())
    assert n == 1
    inv.write_text(text)
    conf = edited(suite, tmp_path, "registry",
                  lambda t: re.sub(r"inventory = .*", f"inventory = {inv}", t))
    refused(check(suite, "registry", conf), "inventory.conf:", "sign.pub",
            "not an RSA-2048 public key")
