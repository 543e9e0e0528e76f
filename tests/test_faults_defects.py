"""Defects of the C fault service, each reproduced: a request that left a hold behind, a lookup
out of bounds, two registrations in one slot, an unregister the host could overtake, a page
whose read fault was answered EEXIST forever, and the baseline loop's ignored failures.

A regression of the hold or the EEXIST loop hangs the thread that touches the page (and, as it
holds the GIL, the interpreter), so those cases run in a child process with a timeout: a
regression fails the test instead of hanging the suite."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint.errors import SyscallError
from gphint.faults import FaultService, HostSwap
from conftest import PAGE, pattern
from test_faults import backing  # noqa: F401  (the fixture: a page-distinct file and its FileStore)

pytestmark = pytest.mark.usefixtures("compiled_only")
needs_move = pytest.mark.skipif(not caps.has("uffd_move"), reason=caps.probe().features["uffd_move"].reason)
needs_tracking = pytest.mark.skipif(not caps.has("dirty_tracking"),
                                    reason=caps.probe().features["dirty_tracking"].reason)
TESTS = os.path.dirname(os.path.abspath(__file__))
CHILD_TIMEOUT_S = 60   # each child does well under a second of work; this only bounds a hang


def run_child(code, timeout_s=CHILD_TIMEOUT_S):
    """Run code in a fresh interpreter; fail (not hang) if it does not finish.  Returns stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout_s, env=env, cwd=TESTS)
    except subprocess.TimeoutExpired as e:
        pytest.fail("the child hung for %d s; its output so far: %r" % (timeout_s, e.stdout))
    assert p.returncode == 0, "child failed (%d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
    return p.stdout


# --- uffd_baseline: failures of eventfd and pthread_create ----------------------------------------
def test_baseline_reports_an_eventfd_failure_instead_of_hanging():
    """With no descriptor left for the eventfd, the baseline used to run without a stop fd and
    then wait forever for its helper thread."""
    out = run_child("""
        import os, resource, numpy as np, mmap
        from gphint._mechanism import mech
        from gphint.errors import SyscallError
        region = mmap.mmap(-1, 16 * mmap.PAGESIZE)
        buf = np.frombuffer(region, dtype=np.uint8)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(held.pop())                     # exactly one left: the userfaultfd takes it
        try:
            mech.uffd_baseline(buf, mmap.PAGESIZE)
            print("no error")
        except SyscallError as e:
            print("refused", e.errno, str(e))
        for fd in held:
            os.close(fd)
        print("after", mech.uffd_baseline(buf, mmap.PAGESIZE) > 0)
    """)
    assert "refused 24" in out and "eventfd" in out    # EMFILE, named
    assert "after True" in out                         # nothing left behind: it works again


def test_baseline_reports_a_thread_creation_failure_instead_of_hanging():
    """Without its helper thread nothing serves the faults the baseline then takes."""
    out = run_child("""
        import resource, numpy as np, mmap
        from gphint._mechanism import mech
        from gphint.errors import SyscallError
        region = mmap.mmap(-1, 16 * mmap.PAGESIZE)
        buf = np.frombuffer(region, dtype=np.uint8)
        # leave no room for a thread stack (8 MiB by default): pthread_create fails with EAGAIN
        vm_kib = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, ((vm_kib + 2048) * 1024, hard))
        try:
            mech.uffd_baseline(buf, mmap.PAGESIZE)
            print("no error")
        except SyscallError as e:
            print("refused", e.errno, str(e))
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("after", mech.uffd_baseline(buf, mmap.PAGESIZE) > 0)
    """)
    assert "refused 11" in out and "pthread_create" in out   # EAGAIN, named
    assert "after True" in out
