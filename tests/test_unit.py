"""Runs every cmocka unit test binary the build produced (build/test/<module dir>/<name>_test)."""
import os
import pathlib
import subprocess

import pytest

BUILD = pathlib.Path(os.environ.get("SUIDO_BUILD", pathlib.Path(__file__).resolve().parents[1] / "build"))
TESTS = sorted(p for p in (BUILD / "test").rglob("*_test") if p.is_file() and os.access(p, os.X_OK))


def test_unit_tests_were_built():
    assert TESTS, f"no unit test binaries under {BUILD / 'test'}"


@pytest.mark.parametrize("binary", TESTS, ids=[str(p.relative_to(BUILD / "test")) for p in TESTS])
def test_unit(binary):
    r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
