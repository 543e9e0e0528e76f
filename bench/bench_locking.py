"""Hold bits vs hashed lock: the guest's state changes under a concurrent host and fault thread.

Method: one served guest of NPAGES file-backed pages (docs/state-protocol.md).  The timed work:
the guest flips pages between STABLE and VOLATILE in CALLS calls of BATCH pages (`make_stable`,
then `set_state(VOLATILE)`: each call one C loop, each page one transition under the protocol),
while a host thread discards every page it can (`svc.discard`, one vectored madvise per call) and
a reader touches random pages, so the fault thread reloads discarded ones (with fault-around).
Reported: state changes per second (CALLS x BATCH / the median round) and the p99 of a guest
call's wall time (what its waits for holds cost: a host's madvise, a reload).  Setup (service,
memory, file, the two threads) is outside the timer and rebuilt each round; after each round
every page is compared with its file.  The hashed case pairs each of its timed rounds with a
hold-bit round run just before it (in its setup), so both see the same load; its ratio is the
median over those pairs.

Target: hashed >= 0.5x the hold bits' state changes per second, the floor paired in the same
run.  Why 0.5: a transition is one CAS on the state byte; the hashed lock adds one CAS to take the
lock and one store to release it, on a second cache line.  If the guest ran at less than half the
hold bits' rate, the lock -- not the protocol's waits, which both lockings share -- would cost more
than the transition it guards, and that is what the bound catches (a bucket collision storm, a
lock held across more than one call).  The table size was tried at 65536 buckets too: no faster
(the table then misses in the cache), so 4096 stays.
"""
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState
from gphint.host.hostswap import fault_service_available

PAGE = gphint.PAGE_SIZE
NPAGES = 4096
BATCH = 64
ROUNDS = 9
LOCKINGS = ("holdbits", "hashed")
TARGET_RATIO = 0.5
HAS_SERVICE, WHY_NOT = fault_service_available()
pytestmark = pytest.mark.skipif(not HAS_SERVICE, reason="needs the discard-fault service: %s" % WHY_NOT)


class World:
    """A served, file-backed guest; closed by close()."""

    def __init__(self, tmpdir, locking):
        from gphint.faults import FaultService, FileStore
        self.data = np.random.default_rng(7).integers(0, 256, size=(NPAGES, PAGE), dtype=np.uint8)
        path = tmpdir / ("backing-%s" % locking)
        self.data.tofile(path)
        self.store = FileStore(path)
        self.svc = FaultService(window="16K", locking=locking)
        self.mem = gphint.GuestMemory(NPAGES * PAGE)
        self.svc.register(self.mem)
        self.mem.frames[:NPAGES] = self.data
        self.mem.set_backing(np.arange(NPAGES), self.store, np.arange(NPAGES) * PAGE)

    def close(self):
        self.svc.stop()
        self.mem.close()
        self.store.close()


class Round:
    """One round's world with its host and reader threads running until stop()."""

    def __init__(self, tmpdir, locking):
        self.w = World(tmpdir, locking)
        self.done = threading.Event()
        self.discarded = 0
        self.waits = []
        self.threads = [threading.Thread(target=self.host), threading.Thread(target=self.reader)]
        for t in self.threads:
            t.start()

    def host(self):
        allp = np.arange(NPAGES)
        while not self.done.is_set():
            self.discarded += self.w.svc.discard(self.w.mem, allp)

    def reader(self):
        rng = np.random.default_rng(1)
        frames = self.w.mem.frames
        while not self.done.is_set():
            int(frames[int(rng.integers(NPAGES)), 0])

    def guest(self):
        """The timed work: CALLS calls of BATCH pages each, one transition per page."""
        mem = self.w.mem
        for k in range(CALLS // 2):
            b = BATCHES[k % len(BATCHES)]
            s = time.perf_counter_ns()
            mem.make_stable(b)
            m = time.perf_counter_ns()
            mem.set_state(b, PageState.VOLATILE)
            self.waits += (m - s, time.perf_counter_ns() - m)

    def stop(self):
        """Stop the threads, check that nothing was lost, close; returns (p99 us, discards)."""
        self.done.set()
        for t in self.threads:
            t.join()
        w = self.w
        try:
            # every page reads back its file bytes: a stable page is never discarded, a
            # volatile one reloads from its backing
            assert all(np.array_equal(w.mem.frames[p], w.data[p]) for p in range(NPAGES))
            assert w.svc.stats(w.mem)["lost_pages"] == 0
            w.svc.check()
        finally:
            w.close()
        return float(np.percentile(self.waits, 99)) / 1e3, self.discarded


CALLS = 2000                      # guest calls per round (BATCH transitions each)
BATCHES = [np.arange(i, i + BATCH) for i in range(0, NPAGES, BATCH)]


def timed_round(tmpdir, locking):
    """An untimed-by-pytest round of the other locking: (seconds, p99 us, discards)."""
    r = Round(tmpdir, locking)
    t0 = time.perf_counter()
    r.guest()
    dt = time.perf_counter() - t0
    return (dt,) + r.stop()


@pytest.mark.target
@pytest.mark.parametrize("locking", LOCKINGS)
def test_state_changes_under_a_concurrent_host(benchmark, tmp_path, locking):
    """Each timed round of `locking` is paired with a hold-bit round run just before it (its
    setup), so the pair shares the machine's load; the ratio is the median over the pairs."""
    benchmark.group = "locking, state changes under a concurrent host"
    rounds, results, floor = [], [], []

    def setup():
        if rounds:
            results.append(rounds.pop().stop())
        if locking != "holdbits":
            floor.append(timed_round(tmp_path, "holdbits"))
        rounds.append(Round(tmp_path, locking))
        return (), {}

    benchmark.pedantic(lambda: rounds[-1].guest(), setup=setup, rounds=ROUNDS, iterations=1)
    results.append(rounds.pop().stop())
    times = benchmark.stats.stats.data
    ratio = float(np.median([f[0] / t for f, t in zip(floor, times)])) if floor else 1.0
    benchmark.extra_info.update(
        locking=locking, changes_per_s=round(CALLS * BATCH / benchmark.stats.stats.median),
        p99_call_us=round(float(np.median([r[0] for r in results])), 1),
        host_discards=int(np.median([r[1] for r in results])), batch_pages=BATCH,
        ratio_vs_holdbits=round(ratio, 3), target_ratio=TARGET_RATIO)
    if floor:
        benchmark.extra_info.update(
            holdbits_changes_per_s=round(CALLS * BATCH / float(np.median([f[0] for f in floor]))),
            holdbits_p99_call_us=round(float(np.median([f[1] for f in floor])), 1))
    assert all(r[1] > 0 for r in results), "the host discarded nothing: no concurrency measured"
    assert ratio >= TARGET_RATIO, "hashed lock: %.2fx the hold bits' state changes per second" % ratio
