"""The archive's reads for the monitor and its aggregates (services/archive/archive_query.c) on
PostgreSQL: the same unit checks that run on SQLite (archive_query_test), against a real
PostgreSQL 15 server on a free loopback port (tests/integration/pg.py), so the upserts and
queries are shown to be SQL both engines accept."""
import os
import subprocess

import pytest

import pg as pgmod
from suite import BUILD

why_not = pgmod.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


def test_archive_query_checks_pass_against_postgresql(tmp_path):
    server = pgmod.PostgreSQL()
    try:
        server.create_database("querytest")
        conninfo = server.write_conninfo(tmp_path / "querytest.conninfo", database="querytest")
        binary = BUILD / "test" / "services" / "archive" / "archive_query_test"
        r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, SUIDO_SQL_TEST_PG=str(conninfo)))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "[       OK ] test_postgresql" in r.stdout and "SKIPPED" not in r.stdout
        # the tables are where the archive would have them
        assert int(server.psql("SELECT count(*) FROM readings_minute", "querytest")[0][0]) > 0
        assert server.psql("SELECT sum(minutes) FROM readings_hour WHERE "
                           "channel='reservoir.level'", "querytest") == [["2"]]
    finally:
        server.destroy()
