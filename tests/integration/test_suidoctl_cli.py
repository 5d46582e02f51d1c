"""suidoctl as an operator meets it: bad numbers are usage errors (exit 2) with or without a
session, refusals say what is unknown, a failed login says so plainly, times are local times,
empty results say "no entries", logout says it ended the session, and a refused command's --json
keeps the unit that was asked for."""
import json
import re

import pytest

from wire import totp


@pytest.mark.parametrize("days", ["abc", "", "30x", "-5", "+5", " 5", "99999999999999999999"])
def test_bad_days_are_usage_errors(suite, days):
    for token in (None, ""):  # with the admin's session, then with none at all
        r = suite.ctl("certs", "--days", days, check=False, token=token)
        assert r.returncode == 2, (days, r.returncode, r.stderr)
        assert "--days takes a whole number" in r.stderr and "denied" not in r.stderr


def test_good_days_are_taken(suite):
    assert suite.ctl("certs", "--days", "0").returncode == 0
    assert suite.ctl("certs", "--days", "36500").returncode == 0


@pytest.mark.parametrize("case", ["-5", "abc", "1.5", ""])
def test_bad_case_numbers_are_usage_errors(suite, case):
    r = suite.ctl("alert", "show", case, check=False, token="")
    # "-5" reads as an unknown option: the usage text; the others name what a CASE is
    assert r.returncode == 2 and ("CASE must be a case number" in r.stderr
                                  or r.stderr.startswith("usage:")), r.stderr
    assert "denied" not in r.stderr


def test_unknown_things_are_named(suite):
    r = suite.ctl("gateway", "suspend", "gw-9999", check=False)
    assert r.returncode == 1 and "unknown: no gateway 'gw-9999'" in r.stderr, r.stderr
    r = suite.ctl("alert", "show", "987654", check=False)
    assert r.returncode == 1 and "unknown: no case 987654" in r.stderr, r.stderr


def test_login_failure_says_login_failed(suite):
    secret = suite.add_operator("cli-carol", "viewer", "carol's long passphrase")
    r = suite.ctl("login", "cli-carol", "--totp", totp(secret), check=False, token="",
                  stdin="not her password\n")
    assert r.returncode == 1 and "login failed (password or code)" in r.stderr, r.stderr
    r = suite.ctl("login", "cli-carol", "--totp", "000000", check=False, token="",
                  stdin="carol's long passphrase\n")
    assert r.returncode == 1 and "login failed (password or code)" in r.stderr, r.stderr
    # a good login prints the expiry as a local date and time, not epoch milliseconds
    r = suite.ctl("login", "cli-carol", "--totp", totp(secret), token="",
                  stdin="carol's long passphrase\n")
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", r.stderr), r.stderr
    tok = r.stdout.strip()
    r = suite.ctl("logout", token=tok)
    assert "logged out" in r.stdout, r.stdout


def test_access_prints_local_times_and_no_entries(suite):
    r = suite.ctl("access", "--operator", "admin")
    first = r.stdout.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", first), first
    r = suite.ctl("access", "--operator", "nobody-ever")
    assert r.stdout.strip() == "no entries", r.stdout


def test_state_column_fits_provisioned(suite):
    lines = suite.ctl("gateway", "list").stdout.splitlines()
    header = lines[0]
    site_at = header.index("SITE")
    for line in lines[1:]:
        state = line.split()[1]
        assert len(state) < site_at - header.index("STATE"), line
        assert line[site_at - 1] == " ", line  # the state never runs into the site


def test_refused_command_json_keeps_the_unit(suite):
    r = suite.ctl("--json", "command", "gw-0001", "no-such-actuator", "9", "--unit", "mg/L",
                  check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert json.loads(r.stdout)["unit"] == "mg/L", r.stdout
