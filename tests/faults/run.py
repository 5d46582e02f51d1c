"""`make test-faults`: the fault plan (tests/faults/README.md) against a real suite on
this machine. See tests/faults/README.md.

    SUIDO_BUILD=build /usr/bin/python3 tests/faults/run.py [F1 F3 ...]

Environment: SUIDO_FAULTS_FULL=1 (the plan's full durations and load), SUIDO_FAULTS_GATEWAYS=N
(load gateways), SUIDO_FAULTS_SEED, SUIDO_FAULTS_KEEP=1 (keep the work directory).
The last line printed is `faults: scenarios=N passed=P gaps=G duplicates=D`; the exit status is
1 when a scenario failed (a known failure, marked KNOWN-FAIL, is not counted as passed but does
not fail the run)."""
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import harness as H  # noqa: E402
import scenarios as SC  # noqa: E402

PROBES = 24  # gateways beyond the load, for the scenarios' own probes


def main(argv):
    full = os.environ.get("SUIDO_FAULTS_FULL") == "1"
    gateways = int(os.environ.get("SUIDO_FAULTS_GATEWAYS", 500 if full else 300))
    only = {a.upper() for a in argv}
    chosen = [s for s in SC.SCENARIOS if not only or s[0] in only]
    if only - {s[0] for s in SC.SCENARIOS}:
        print(f"faults: unknown scenario {sorted(only - {s[0] for s in SC.SCENARIOS})}",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("faults: must run as root (tmpfs mounts)", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so that every process started here is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = pathlib.Path(tempfile.mkdtemp(prefix="suido-faults-"))
    results = []
    h = None
    wanted = len(chosen)
    try:
        print(f"faults: {len(chosen)} scenarios, {gateways} load gateways at 1 batch/s, "
              f"{'full plan' if full else 'scaled'} durations, work dir {work}", flush=True)
        try:
            h = H.Harness(work, gateways, PROBES, full)
        except Exception as ex:  # no suite, no scenario: each one fails with the reason
            traceback.print_exc()
            for key, title, _ in chosen:
                r = SC.Result(key, title)
                r.error = f"the suite did not start: {ex.__class__.__name__}: {ex}"[:500]
                results.append(r)
            chosen = []
        if h:
            h.seed = int(os.environ.get("SUIDO_FAULTS_SEED", int(time.time())))
            h.cut_s = 600 if full else 60
            h.say(f"suite up (broker port {h.suite.port}); seed {h.seed}")
        for key, title, fn in chosen:
            r = SC.Result(key, title)
            h.say(f"{key}: {title}")
            t0 = time.monotonic()
            try:
                fn(h, r)
            except Exception as ex:  # the scenario broke off: a failure, with its reason
                r.error = f"{ex.__class__.__name__}: {ex}"
                traceback.print_exc()
            r.seconds = time.monotonic() - t0
            try:
                dead = h.ensure_running()
                if dead:
                    r.check("every suite process still running at the end", False, str(dead))
            except Exception as ex:
                r.error = r.error or f"suite could not be restored: {ex}"
            results.append(r)
            report(h, r)
    finally:
        # a second Ctrl-C (or a signal relayed twice) must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if h:
            try:
                h.cleanup()
            except Exception:
                traceback.print_exc()
        if os.environ.get("SUIDO_FAULTS_KEEP") != "1" and not any(H.is_mount(p) for p in
                                                                  work.rglob("*") if p.is_dir()):
            shutil.rmtree(work, ignore_errors=True)
    table(results)
    passed = sum(1 for r in results if r.status == "PASS")
    gaps = sum(r.gaps for r in results)
    dups = sum(r.dups for r in results)
    failed = [r.key for r in results if r.status == "FAIL"]
    print(f"faults: scenarios={len(results)} passed={passed} gaps={gaps} duplicates={dups}",
          flush=True)
    return 1 if failed or len(results) < wanted else 0


def report(h, r):
    h.say(f"{r.key}: {r.status} in {r.seconds:.0f} s")
    for desc, ok, detail in r.checks:
        mark = "ok  " if ok else ("KNOWN" if desc.startswith("[known]") and r.known else "FAIL")
        line = f"    {mark} {desc}"
        if not ok and detail:
            line += f"\n           {detail[:600]}"
        print(line, flush=True)
    if r.error:
        print(f"    FAIL {r.error}", flush=True)
    if r.status == "KNOWN-FAIL":
        print(f"    known failure: {r.known}", flush=True)


def table(results):
    print("\nscenario  status      time  gaps  dups  figures")
    for r in results:
        figs = "; ".join(f"{k}={v}" for k, v in r.figures.items())
        print(f"{r.key:<9} {r.status:<10} {r.seconds:5.0f}s {r.gaps:5d} {r.dups:5d}  {figs}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
