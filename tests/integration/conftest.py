import pathlib

import pytest

from suite import load_proto, running_suite


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    return load_proto(tmp_path_factory.mktemp("proto"))


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    with running_suite(tmp_path_factory.mktemp("suite"), gateways=10) as s:
        yield s
