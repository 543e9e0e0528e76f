"""Shared benchmark helpers.

Run the suite with:   pytest bench/ --benchmark-json=results/bench.json
(each bench file's docstring states its method; sizes honour GPHINT_BENCH_MB for quick runs).
"""
import hashlib
import os
import threading

import pytest

# numpy's OpenBLAS starts a thread pool at import whose idle threads poll on the other CPU
# (callgrind counted ~47M instructions of it in a 2-second guest run; `perf` ~5% of samples).
# Nothing gphint does calls BLAS, and on a 2-vCPU machine that poller is noise in every timing.
# Effective only before numpy's first import, which this conftest precedes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

BENCH_MB = int(os.environ.get("GPHINT_BENCH_MB", "256"))


def pytest_configure(config):
    config.addinivalue_line("markers", "target: asserts a speed target against a floor measured in the same test")


class Spinner:
    """A second thread of this process that stays *running* on another CPU (hashlib releases the
    GIL on large buffers), so that every madvise that unmaps pages must send it a TLB-shootdown
    IPI -- the situation of a real multi-threaded host."""

    def __init__(self):
        self._stop = threading.Event()
        self._buf = os.urandom(1 << 20)
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            hashlib.sha256(self._buf).digest()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


@pytest.fixture
def spinner():
    return Spinner


def new_threads(make):
    """Call make() and return (its result, the native ids of the threads it started): the fault
    service's C thread has no Python handle, and its CPU placement is what a 4 KiB reload costs."""
    before = set(os.listdir("/proc/self/task"))
    made = make()
    return made, sorted(int(t) for t in set(os.listdir("/proc/self/task")) - before)


def placements():
    """The two CPU placements of a faulting thread and the fault thread: `same` (both on the
    first CPU this process may use) and `cross` (the fault thread on the next one).  A fault is
    a synchronous round trip between the two threads; on this VM (cpuidle `haltpoll` with
    guest_halt_poll_ns 0: an idle vCPU halts at once) a round trip across CPUs pays two wake-up
    IPIs into halted vCPUs, and costs ten to thirty times the same-CPU one.  Left to the
    scheduler, the placement of a long-lived fault thread is whatever the first wake-ups made
    it, so unpinned reload timings are bimodal; the benchmark names its placement instead."""
    cpus = sorted(os.sched_getaffinity(0))
    out = {"same": ({cpus[0]}, {cpus[0]})}
    if len(cpus) > 1:
        out["cross"] = ({cpus[0]}, {cpus[1]})
    return out


class Placed:
    """Pin the calling thread and the given threads (native ids) for a block, then restore
    every mask as it was."""

    def __init__(self, main_cpus, other_cpus, others):
        self.main_cpus, self.other_cpus, self.others = main_cpus, other_cpus, list(others)

    def __enter__(self):
        self.saved = [(0, os.sched_getaffinity(0))] + [(t, os.sched_getaffinity(t)) for t in self.others]
        os.sched_setaffinity(0, self.main_cpus)
        for t in self.others:
            os.sched_setaffinity(t, self.other_cpus)
        return self

    def __exit__(self, *exc):
        for t, mask in self.saved:
            os.sched_setaffinity(t, mask)
