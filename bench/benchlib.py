"""Helpers the benchmark files share, imported as a plain module (`from benchlib import ...`);
fixtures and pytest hooks live in conftest.py."""
import hashlib
import os
import threading
import types

import pytest

import gphint
from gphint import PageState
from gphint.host.hostswap import fault_service_available

BENCH_MB = int(os.environ.get("GPHINT_BENCH_MB", "256"))
PAGE = gphint.PAGE_SIZE
ROUNDS = 5              # pedantic rounds of the strategy benchmarks (plus 1 warm-up)
HAS_SERVICE, WHY_NOT = fault_service_available()
needs_service = pytest.mark.skipif(not HAS_SERVICE, reason="needs the discard-fault service: %s" % WHY_NOT)


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


# --- the strategy benchmarks (bench_take_back_*.py, bench_swap_baseline.py, bench_reporting_pass.py,
# bench_balloon_inflate.py, bench_guest_hints.py) -------------------------------------------------
# Method: one GuestMemory of GPHINT_BENCH_MB (default 256 MiB; conftest's `mem`); each round's
# setup, outside the timer, re-touches every page and rebuilds the state the strategy acts on, so
# every timed call really frees memory; after the call the benchmark asserts (mincore) that the
# pages are gone.  Page sets: a fixed random half of the guest (`half`, "random50"), the fragmented
# free memory of a running guest.  pytest-benchmark `pedantic`, ROUNDS rounds, 1 warm-up.
# extra_info: pages, ns_per_page, syscalls (host discard calls in the timed call).
class Clock:
    """Host clock moved by the benchmark, so every timed step finds its scan due."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def retouch(mem):
    """Every page STABLE and resident again: read (a discarded VOLATILE page is reloaded, a
    swapped one swapped in), made STABLE, written."""
    int(mem.region[::PAGE].sum())
    mem.set_state(slice(None), PageState.STABLE)
    mem.frames[:] = 1


def finish(benchmark, mem, pages, calls):
    assert not mem.residency()[pages].any()                    # the work happened
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(pages=int(pages.size), ns_per_page=median / pages.size * 1e9,
                                syscalls=int(calls))


def bench_guest(mem, hinting):
    """A guest as the host sees one (memory, allocator, no reclaim) over mem, every page STABLE
    and resident."""
    from gphint.guest.allocator import BuddyAllocator
    mem.set_state(slice(None), PageState.STABLE)
    mem.frames[:] = 1
    return types.SimpleNamespace(mem=mem, allocator=BuddyAllocator(mem, hinting=hinting),
                                 reclaim=None, name="bench")
