"""The test edge node (edge_node.py) is itself an implementation of the Sparkplug B payload and
session rules, independent of the host's: its own self-check (selfcheck.py, 59 checks against a
throwaway Mosquitto, field values decoded by a second client) runs with the suite, so the
integration tests never lean on an edge node that drifted from the specification."""
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_the_edge_node_keeps_to_the_specification():
    r = subprocess.run([sys.executable, str(HERE / "selfcheck.py")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 failed" in r.stdout
