"""Open files under a normal non-root limit (RLIMIT_NOFILE 1024, soft = hard, as `ulimit -n 1024`
sets it): runs complete with every byte, and a guest closes the backing stores no frame records
when the process runs short.  Each run is a child with the limit set in preexec_fn, so this
process's own limit is never touched."""
import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from gphint import caps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def limited(nofile):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return set_limit


def run_child(args, nofile, timeout=600):
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=limited(nofile), timeout=timeout)


@pytest.mark.parametrize("workload", ["mixed", "build"])
def test_two_32M_guests_run_under_ulimit_n_1024(tmp_path, workload):
    out = tmp_path / "run.json"
    p = run_child(["-m", "gphint", "run", "--strategy", "cmma", "--workload", workload,
                   "--guests", "2", "--guest-mem", "32M", "--duration", "3", "--quiet",
                   "--json", str(out)], nofile=1024)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads(out.read_text())
    recs = results if isinstance(results, list) else results.get("results", [results])
    assert recs and all(r["integrity_errors"] == 0 for r in recs)
    assert all(r["ops"] > 0 for r in recs)


def test_a_guest_short_of_fds_closes_the_stores_no_frame_records():
    """A limit far below what 2 guests' files would take open: stores are closed and reopened
    as needed, the process never reaches the limit, and nothing is lost."""
    if not (caps.has("compiled") and caps.has("userfaultfd")):
        pytest.skip("backing stores are opened only with the C fault service")
    nofile = 256
    script = textwrap.dedent("""
        import json, os
        from gphint.faults import FaultService
        from gphint.guest.guest import Guest
        from gphint.stores import open_fds
        svc = FaultService()
        guests = [Guest("16M", seed=i, workload="fileserver", fault_service=svc) for i in range(2)]
        peak = 0
        for _ in range(40):
            for g in guests:
                g.step(100)
            peak = max(peak, open_fds())
        stats = [g.stats for g in guests]
        bad = sum(g.verify() for g in guests)
        svc.check()
        print(json.dumps({"peak": peak, "bad": bad, "stats": stats}))
        for g in guests:
            g.close()
        svc.stop()
    """)
    p = run_child(["-c", script], nofile=nofile)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bad"] == 0
    assert r["peak"] < nofile
    opened = sum(s["stores_opened"] for s in r["stats"])
    closed = sum(s["stores_closed"] for s in r["stats"])
    assert opened > nofile and closed > 0            # more files than fds: stores were recycled
