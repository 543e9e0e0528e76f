"""What does each strategy cost per page -- the guest to hint, the host to take a page back?

Method: one GuestMemory of GPHINT_BENCH_MB (default 256 MiB); each round's setup, outside the
timer, re-touches every page and rebuilds the state the strategy acts on, so every timed call
really frees memory; after the call the benchmark asserts (mincore) that the pages are gone.
Page sets: a fixed random half of the guest (`random50`), the fragmented free memory of a
running guest.  pytest-benchmark `pedantic`, 5 rounds, 1 warm-up.

Host side, per page taken back (group "host take-back"):
  unused/cmma    a proactive scan that discards the UNUSED half; every batch x submit variant
  cmma-volatile  a reclaim under a budget that discards the VOLATILE half (needs the fault service)
  none           a reclaim under a budget that host-swaps the STABLE half (the no-hints baseline;
                 needs the fault service)
  reporting      a free page reporting pass over a guest whose memory is all free: isolate,
                 report (host MADV_DONTNEED), put back -- at most ~1/16 of each free list per pass
  balloon        one inflate request served: the driver allocates, the host discards
Guest side, per page hinted (group "guest hints"): freeing the random half through the buddy
allocator with hints at capacity 1/32/256/4096, and without hints (the peers' guests); the
reporting pass with a report that takes nothing (the guest's share of reporting); a balloon
inflate without the discard (the guest's share of ballooning).
extra_info: pages, ns_per_page, syscalls (host discard calls in the timed call).
"""
import os
import tempfile
import types

import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint.host import Host
from gphint.host.hostswap import fault_service_available
from conftest import BENCH_MB

PAGE = gphint.PAGE_SIZE
ROUNDS = 5
HAS_SERVICE, WHY_NOT = fault_service_available()
needs_service = pytest.mark.skipif(not HAS_SERVICE, reason="needs the discard-fault service: %s" % WHY_NOT)


class Clock:
    """Host clock moved by the benchmark, so every timed step finds its scan due."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def mem():
    m = gphint.GuestMemory("%dM" % BENCH_MB, name="bench")
    m.frames[:] = 1                       # prewarm: take the host faults before any timing
    yield m
    m.close()


@pytest.fixture(scope="module")
def half(mem):
    rng = np.random.default_rng(42)
    return np.sort(rng.choice(mem.npages, mem.npages // 2, replace=False)).astype(np.int64)


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


VARIANTS = [(b, s) for b in (1, 32, 256, 4096) for s in ("per_page", "coalesce", "vectored")]


@pytest.mark.parametrize("batch, submit", VARIANTS, ids=["batch%d-%s" % v for v in VARIANTS])
@pytest.mark.parametrize("name", ["unused", "cmma"])
def test_host_take_back_unused(benchmark, mem, half, name, batch, submit):
    if submit == "vectored" and not caps.has("process_madvise"):
        pytest.skip("process_madvise on self: %s" % caps.probe().features["process_madvise"].reason)
    if name == "unused" and (batch, submit) != (32, "vectored"):
        pytest.skip("unused runs the same scan as cmma: one variant is enough")
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    clock = Clock()
    host = Host([mem], None, "%s:batch=%d,submit=%s,scan=0.001" % (name, batch, submit), clock=clock)
    taken = []

    def setup():
        retouch(mem)
        mem.set_state(half, PageState.UNUSED)
        clock.t += 1.0
        host.sample()
        return (), {}

    calls0 = mem.stats["discard_calls"]
    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert taken[-1] == half.size
    finish(benchmark, mem, half, (mem.stats["discard_calls"] - calls0) // (ROUNDS + 1))


@pytest.fixture
def served(mem):
    """mem registered with a fault service and a backing file holding its content."""
    from gphint.faults import FaultService, FileStore
    fd, path = tempfile.mkstemp(prefix="gphint-bench-")
    os.close(fd)
    with open(path, "wb") as f:
        f.write(b"\x01" * mem.size_bytes)
    # start from nothing resident, so that the service sees (and records) every first touch
    mem.set_state(slice(None), PageState.UNUSED)
    mem.discard(slice(None))
    svc = FaultService()
    svc.register(mem)
    store = FileStore(path)
    yield svc, store
    retouch(mem)                   # everything back before its store and service go away
    mem.clear_backing(slice(None))
    svc.unregister(mem)
    svc.stop()
    store.close()
    os.unlink(path)


@needs_service
def test_host_take_back_volatile(benchmark, mem, half, served):
    svc, store = served
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    host = Host([mem], mem.size_bytes - half.size * PAGE, "cmma", fault_service=svc, headroom=0.0)
    taken = []

    def setup():
        retouch(mem)
        mem.set_backing(half, store, half * PAGE)
        mem.set_state(half, PageState.VOLATILE)
        return (), {}

    calls0 = mem.stats["discard_calls"]
    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert host.stats()["discarded_pages"].get("VOLATILE", 0) >= half.size
    finish(benchmark, mem, half, (mem.stats["discard_calls"] - calls0) // (ROUNDS + 1))
    host.close()


@needs_service
def test_host_take_back_none_swap(benchmark, mem, served):
    """The no-hints baseline: the host writes stable pages to its swap file (oldest first)."""
    svc, _ = served
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    n = mem.npages // 2
    host = Host([mem], mem.size_bytes - n * PAGE, "none:batch=4096", fault_service=svc, headroom=0.0)
    taken = []

    def setup():
        retouch(mem)           # swapped pages come back through the service (Sp -> Sr)
        return (), {}

    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert taken[-1] == n
    swapped = np.flatnonzero(~mem.residency())
    finish(benchmark, mem, swapped, host.swapper.calls // (ROUNDS + 1))
    retouch(mem)                   # swap everything in before the host's swap file closes
    host.close()


def _guest(mem, hinting):
    from gphint.guest.allocator import BuddyAllocator
    mem.set_state(slice(None), PageState.STABLE)
    mem.frames[:] = 1
    return types.SimpleNamespace(mem=mem, allocator=BuddyAllocator(mem, hinting=hinting),
                                 reclaim=None, name="bench")


@pytest.mark.parametrize("side", ["host", "guest"])
def test_reporting_pass(benchmark, mem, side):
    """One free page reporting pass over an all-free guest; side=guest: the report takes
    nothing (the guest's isolate/putback share), side=host: the host discards each report."""
    from gphint.guest.reporting import PageReporting
    # Linux's watermark rule wants 1% + capacity x 2 MiB free: a small GPHINT_BENCH_MB guest
    # gets a smaller capacity (noted in extra_info) rather than a pass that reports nothing
    capacity = 32 if BENCH_MB >= 128 else 4
    benchmark.group = ("host take-back %d MiB" if side == "host" else "guest hints %d MiB") % BENCH_MB
    state = {}

    def setup():
        g = _guest(mem, hinting=False)
        if side == "host":
            host = Host([g], None, "reporting:delay=0,capacity=%d" % capacity)
            state["rep"] = g_rep = host.slots[0].reporter
        else:
            g_rep = PageReporting(g.allocator, lambda runs: True, delay_s=0.0, capacity=capacity)
            state["rep"] = g_rep
        state["calls0"] = mem.stats["discard_calls"]
        return (), {}

    benchmark.pedantic(lambda: state.__setitem__("n", state["rep"].poll(1e12)), setup=setup,
                       rounds=ROUNDS, warmup_rounds=1, iterations=1)
    n = state["n"]
    assert n > 0
    reported = np.flatnonzero(state["rep"].allocator.reported_mask())
    assert reported.size >= n
    median = benchmark.stats.stats.median
    if side == "host":
        assert not mem.residency()[reported].any()
    benchmark.extra_info.update(pages=int(n), ns_per_page=median / n * 1e9,
                                syscalls=int(mem.stats["discard_calls"] - state["calls0"]),
                                capacity=capacity)


@pytest.mark.parametrize("side", ["host", "guest"])
def test_balloon_inflate(benchmark, mem, half, side):
    """One inflate request of half the guest, served when the guest runs; side=host includes
    the host's discard of the ballooned pages."""
    from gphint.guest.balloon import BalloonDriver
    benchmark.group = ("host take-back %d MiB" if side == "host" else "guest hints %d MiB") % BENCH_MB
    state = {}

    def setup():
        g = _guest(mem, hinting=False)
        if side == "host":
            host = Host([g], None, "balloon")
            slot = host.slots[0]
            slot.request = (half.size, 0.0)
            state["run"] = lambda: host.strategy.on_scheduled(slot, 0.0)
            state["pages"] = lambda: slot.balloon.pages
        else:
            drv = BalloonDriver(g.allocator)
            state["run"] = lambda: drv.inflate(half.size)
            state["pages"] = lambda: drv.pages
        state["calls0"] = mem.stats["discard_calls"]
        return (), {}

    benchmark.pedantic(lambda: state["run"](), setup=setup, rounds=ROUNDS, warmup_rounds=1,
                       iterations=1)
    pages = state["pages"]()
    assert pages.size == half.size
    if side == "host":
        finish(benchmark, mem, pages, mem.stats["discard_calls"] - state["calls0"])
    else:
        benchmark.extra_info.update(pages=int(pages.size),
                                    ns_per_page=benchmark.stats.stats.median / pages.size * 1e9,
                                    syscalls=0)


@pytest.mark.parametrize("batch", [0, 1, 32, 256, 4096], ids=["nohints", "batch1", "batch32",
                                                             "batch256", "batch4096"])
def test_guest_free_hints(benchmark, mem, half, batch):
    """The guest frees a fragmented half of its memory: buddy merging plus, with hints, the
    UNUSED transitions at buffer capacity `batch` (0 = a guest without hints: none, reporting,
    balloon)."""
    from gphint.guest.allocator import BuddyAllocator
    benchmark.group = "guest hints %d MiB" % BENCH_MB
    state = {}

    def setup():
        mem.set_state(slice(None), PageState.STABLE)
        a = BuddyAllocator(mem, hinting=batch > 0, batch=max(batch, 1))
        pages = a.alloc(mem.npages)
        state["a"], state["free"] = a, pages[np.isin(pages, half)]
        state["ops0"] = mem.stats["hint_ops"]
        return (), {}

    def target():
        state["a"].free(state["free"])
        state["a"].flush_hints()

    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    usage = mem.usage(half)
    if batch:
        assert (usage == PageState.UNUSED).all()          # every freed page was hinted
    else:
        assert (usage == PageState.STABLE).all()
    benchmark.extra_info.update(pages=int(half.size),
                                ns_per_page=benchmark.stats.stats.median / half.size * 1e9,
                                hint_calls=int(mem.stats["hint_ops"] - state["ops0"]))
