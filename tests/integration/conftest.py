import pathlib

import pytest

from suite import Suite, load_proto


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    return load_proto(tmp_path_factory.mktemp("proto"))


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    s = Suite(tmp_path_factory.mktemp("suite"), gateways=10)
    try:
        s.start()
        s.login_admin()
        yield s
    finally:
        codes = s.stop()
        failed = {n: c for n, c in codes.items() if c != 0}
        assert not failed, f"processes exited with errors: {failed}"
