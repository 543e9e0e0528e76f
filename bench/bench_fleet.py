"""Does one fault service keep up with hundreds of guests?

Method: two fleets side by side, each behind its own FaultService (window 4 KiB: one fault per
page, no fault-around): `4` guests and `512` guests (GPHINT_BENCH_FLEET_N overrides) of 16 MiB
(GPHINT_BENCH_FLEET_MB).  Each fleet caches the same number of file pages in total (FAULTS,
spread evenly over its guests, a few pages apart, each next to a resident STABLE page), VOLATILE with a backing record in one file in
the page cache.  A round discards them all through the service (outside the timer), then one
thread touches each once, in an order shuffled across guests, timing every touch from the
faulting thread (time.perf_counter_ns around a one-byte load: the kernel's round trip to the
fault thread, the region lookup, the pread and the UFFDIO_COPY).  The touching thread and both
fault threads are pinned to one CPU (benchlib.placements: a round trip across CPUs on this VM
costs ten times more and the scheduler's choice would decide the result).

After the rounds every page is compared byte for byte with its file and the service's counters
must show one file reload per page per round, none lost.  extra_info: guests, faults per round,
p50/p99 touch latency (ns) from the faulting thread, and the fault thread's own p99 (its
histogram: lookup to wake-up).

Creating and closing 512 guests (test_create_close): the time to create and register them, the
host memory each idle registered guest costs beyond its untouched memory (USS delta / N, from
/proc/self/smaps via psutil), the time to unregister and close them; then no fd, no mapping
and no file in TMPDIR may be left behind.

Why one fault thread: a fault costs one region lookup (binary search, ext/regions.c) on top of
the kernel's round trip, so a thread serving 512 guests does the same work per fault as one
serving 4; several threads, or one epoll over a userfaultfd per guest, would add a context
switch or an fd per guest (512 guests must fit `ulimit -n 1024`) and, on a machine with fewer
CPUs than guests, no capacity.  The targets below hold that claim to a measurement.

Targets (test_fleet_targets, both sides measured in the same test, rounds interleaved):
p99 touch latency at 512 guests within 2x of 4 guests; an idle registered guest costs the host
at most 1/16 of the memory it was given (1 MiB for a 16 MiB guest).
"""
import gc
import os
import time

import numpy as np
import psutil
import pytest

import gphint
from gphint import PageState, _mechanism, caps
from gphint.faults import FaultService, FileStore
from benchlib import Placed, new_threads, placements

PAGE = gphint.PAGE_SIZE
GUEST_MB = int(os.environ.get("GPHINT_BENCH_FLEET_MB", "16"))
MANY = int(os.environ.get("GPHINT_BENCH_FLEET_N", "512"))
FEW = 4
FAULTS = 2048            # touches per round, whatever the fleet size
ROUNDS = 5
TARGET_ROUNDS = 6
P99_RATIO = 2.0          # p99 at MANY guests over p99 at FEW
IDLE_SHARE = 16          # an idle guest costs at most 1/IDLE_SHARE of its size

pytestmark = pytest.mark.skipif(not _mechanism.COMPILED or not caps.has("userfaultfd"),
                                reason="the fault service needs the compiled mechanism and userfaultfd")


class Fleet:
    """n guests behind one FaultService, FAULTS file-backed VOLATILE pages spread over them."""

    def __init__(self, n, store, data):
        self.svc, threads = new_threads(lambda: FaultService(window="4K"))
        assert len(threads) == 1, "expected one fault thread, got %s" % threads
        self.fault_tid = threads[0]
        self.mems = [gphint.GuestMemory("%dM" % GUEST_MB, name="f%d" % i) for i in range(n)]
        for m in self.mems:
            self.svc.register(m)
        per = FAULTS // n
        stride = max(1, self.mems[0].npages // per)
        self.pages = np.arange(per, dtype=np.int64) * stride        # the same pages in each guest
        self.data = data
        for g, m in enumerate(self.mems):
            file_pages = g * per + np.arange(per)
            m.frames[self.pages] = data[file_pages]
            m.set_backing(self.pages, store, file_pages * PAGE)
            m.set_state(self.pages, PageState.VOLATILE)
            m.frames[self.pages + 1] = 1       # a STABLE neighbour: see below
        # each discarded page shares its page table with a resident page, so the discard never
        # empties a page table (Linux >= 6.15 frees empty ones at MADV_DONTNEED, CONFIG_PT_RECLAIM):
        # otherwise the sparse 512-guest layout would pay a page-table allocation per fault that
        # the dense 4-guest one pays once per 64 -- a cost of the layout, not of the service
        order = np.random.default_rng(n).permutation(n * per)
        self.touches = [(self.mems[i // per].frames, int(self.pages[i % per])) for i in order.tolist()]

    def discard(self):
        for m in self.mems:
            assert self.svc.discard(m, self.pages) == self.pages.size

    def touch_round(self):
        """Touch every discarded page once; returns the latencies (ns) seen by the toucher."""
        clock = time.perf_counter_ns
        out = np.empty(len(self.touches), dtype=np.int64)
        for i, (frames, p) in enumerate(self.touches):
            t0 = clock()
            frames[p, 1]
            out[i] = clock() - t0
        return out

    def check(self, rounds_done, before):
        after = self.svc.stats()
        assert after["file_reloads"] - before["file_reloads"] == rounds_done * FAULTS
        assert after["lost_pages"] == 0
        per = self.pages.size
        for g, m in enumerate(self.mems):
            assert np.array_equal(m.frames[self.pages], self.data[g * per + np.arange(per)]), "guest %d" % g

    def close(self):
        for m in self.mems:
            m.close()
        self.svc.stop()


@pytest.fixture(scope="module")
def fleets(tmp_path_factory):
    assert FAULTS % MANY == 0 and FAULTS % FEW == 0
    data = np.random.default_rng(9).integers(0, 256, size=(FAULTS, PAGE), dtype=np.uint8)
    path = tmp_path_factory.mktemp("fleet") / "backing"
    data.tofile(path)
    store = FileStore(path)
    store.read(0)                                  # page cache warm: measure the service
    out = {n: Fleet(n, store, data) for n in (FEW, MANY)}
    yield out
    for f in out.values():
        f.close()
    store.close()


def pinned(*fleets_):
    cpu = placements()["same"][0]
    return Placed(cpu, cpu, [f.fault_tid for f in fleets_])


def record(benchmark, n, lat, svc_stats):
    benchmark.extra_info.update(guests=n, faults=FAULTS, p50_ns=int(np.percentile(lat, 50)),
                                p99_ns=int(np.percentile(lat, 99)),
                                service_p99_ns=int(svc_stats["latency_p99_ns"]))


@pytest.mark.parametrize("n", [FEW, MANY])
def test_discard_fault_latency(benchmark, fleets, n):
    benchmark.group = "fleet: %d discard faults spread over the guests, %d MiB guests" % (FAULTS, GUEST_MB)
    fleet = fleets[n]
    before = fleet.svc.stats()
    lats = []

    def setup():
        fleet.discard()
        return (), {}

    with pinned(fleet):
        benchmark.pedantic(lambda: lats.append(fleet.touch_round()), setup=setup, rounds=ROUNDS,
                           iterations=1, warmup_rounds=0)
    fleet.check(ROUNDS, before)
    record(benchmark, n, np.concatenate(lats), fleet.svc.stats())


def idle_guest_cost(n):
    """(seconds to create+register n guests, host bytes per idle guest, seconds to close) with
    nothing left behind after close."""
    proc = psutil.Process()
    tmpdir = os.environ.get("TMPDIR", "/tmp")
    _mechanism.self_pidfd()
    gc.collect()
    fds0, maps0, files0 = proc.num_fds(), len(proc.memory_maps(grouped=False)), set(os.listdir(tmpdir))
    svc = FaultService(window="64K")
    warm = gphint.GuestMemory("%dM" % GUEST_MB)    # the service's own buffers: not per guest
    svc.register(warm)
    gc.collect()
    uss0 = proc.memory_full_info().uss
    t0 = time.perf_counter()
    mems = [gphint.GuestMemory("%dM" % GUEST_MB) for _ in range(n)]
    for m in mems:
        svc.register(m)
    created = time.perf_counter() - t0
    gc.collect()
    per_guest = (proc.memory_full_info().uss - uss0) / n
    t0 = time.perf_counter()
    for m in mems:
        m.close()
    closed = time.perf_counter() - t0
    warm.close()
    svc.stop()
    del mems
    gc.collect()
    assert proc.num_fds() == fds0, "fds left open after close"
    # the allocator's arenas come and go by a few mappings; a leaked guest leaves several each
    assert len(proc.memory_maps(grouped=False)) <= maps0 + 8, "mappings left after close"
    assert set(os.listdir(tmpdir)) <= files0, "files left in TMPDIR after close"
    return created, per_guest, closed


def test_create_close(benchmark):
    benchmark.group = "fleet: create, register and close %d guests of %d MiB" % (MANY, GUEST_MB)
    got = []
    benchmark.pedantic(lambda: got.append(idle_guest_cost(MANY)), rounds=3, iterations=1)
    created, per_guest, closed = min(got)
    benchmark.extra_info.update(guests=MANY, create_register_s=created, close_s=closed,
                                host_bytes_per_idle_guest=int(per_guest),
                                guest_bytes=GUEST_MB << 20)


@pytest.mark.target
def test_fleet_targets(fleets):
    few, many = fleets[FEW], fleets[MANY]
    before = {n: f.svc.stats() for n, f in fleets.items()}
    lats = {FEW: [], MANY: []}
    with pinned(few, many):
        for _ in range(TARGET_ROUNDS):              # interleaved: both see the same neighbours
            for n in (FEW, MANY):
                fleets[n].discard()
                lats[n].append(fleets[n].touch_round())
    for n, f in fleets.items():
        f.check(TARGET_ROUNDS, before[n])
    p99 = {n: float(np.percentile(np.concatenate(v), 99)) for n, v in lats.items()}
    ratio = p99[MANY] / p99[FEW]
    assert ratio <= P99_RATIO, ("p99 discard-fault latency at %d guests is %.2fx the %d-guest figure "
                                "(%.0f vs %.0f ns; target <= %.1fx)"
                                % (MANY, ratio, FEW, p99[MANY], p99[FEW], P99_RATIO))
    _, per_guest, _ = idle_guest_cost(MANY)
    limit = (GUEST_MB << 20) / IDLE_SHARE
    assert per_guest <= limit, ("an idle registered guest costs the host %.0f KiB (target <= %.0f KiB, "
                                "1/%d of its %d MiB)" % (per_guest / 1024, limit / 1024, IDLE_SHARE, GUEST_MB))
