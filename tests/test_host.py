"""The host's reclaim loop over real guest memory: what it takes is measured by the kernel
(mincore and pagemap), what it must not take is checked byte for byte."""
import time

import numpy as np
import pytest

import gphint
from gphint import ConfigError, PageState, Unsupported, measure
from gphint.guest.allocator import BuddyAllocator
from gphint.host import Host
from gphint.host.spec import share
from gphint.host.hostswap import fault_service_available

from helpers import Clock, pattern


@pytest.fixture
def guests():
    mems = [gphint.GuestMemory("16M", name="g%d" % i) for i in range(2)]
    for i, m in enumerate(mems):
        m.frames[:] = pattern(m.npages, seed=i)       # every page touched: resident
    yield mems
    for m in mems:
        m.close()


def free_half(mem, seed):
    rng = np.random.default_rng(seed)
    free = np.flatnonzero(rng.random(mem.npages) < 0.5)
    mem.set_state(free, PageState.UNUSED)
    return free


# delay=0: the scan itself is under test, not how long a page must stay UNUSED before it is ripe
@pytest.mark.parametrize("strategy", ["unused", "cmma:delay=0", "cmma:batch=1,submit=per_page,delay=0",
                                      "unused:submit=coalesce,batch=4096"])
def test_proactive_scan_discards_unused_and_nothing_else(guests, strategy):
    frees = [free_half(m, 10 + i) for i, m in enumerate(guests)]
    expect = [pattern(m.npages, seed=i) for i, m in enumerate(guests)]
    host = Host(guests, None, strategy)
    taken = host.step()
    assert taken == sum(f.size for f in frees)
    for m, free, want in zip(guests, frees, expect):
        res = m.residency()
        assert not res[free].any()                              # mincore: gone
        assert not measure.pagemap_present(m.address, m.npages)[free].any()   # pagemap agrees
        keep = np.setdiff1d(np.arange(m.npages), free)
        assert res[keep].all()
        assert np.array_equal(m.frames[keep], want[keep])       # stable pages untouched
        assert m.census().get("Uz") == free.size
    assert host.stats()["discarded_pages"] == {"UNUSED": taken}
    assert host.resident_npages == sum(m.npages for m in guests)   # sampled before the scan
    host.sample()
    assert host.resident_npages == sum(m.npages - f.size for m, f in zip(guests, frees))


def test_none_takes_nothing_proactively(guests):
    for i, m in enumerate(guests):
        free_half(m, i)
    host = Host(guests, None, "none")
    assert host.step() == 0
    assert all(m.resident_pages() == m.npages for m in guests)


def test_scan_period_and_delay(guests):
    clock = Clock()
    host = Host(guests, None, "cmma:scan=0.5,delay=1.0", clock=clock)
    free = free_half(guests[0], 3)
    assert host.step() == 0            # first sight of the UNUSED pages: too young
    clock.t += 0.6
    assert host.step() == 0            # 0.6 s old, delay is 1 s
    clock.t += 0.2
    assert host.step() == 0            # next scan not due yet (period 0.5 s)
    clock.t += 0.4
    assert host.step() == free.size    # 1.2 s old at the scan
    assert not guests[0].residency()[free].any()


def test_page_reallocated_before_delay_is_kept(guests):
    clock = Clock()
    host = Host(guests, None, "unused:delay=1.0,scan=0.1", clock=clock)
    m = guests[0]
    m.set_state(np.arange(100), PageState.UNUSED)
    host.step()
    m.set_state(np.arange(50), PageState.STABLE)      # the guest allocates half of them again
    clock.t += 2.0
    assert host.step() == 50
    assert m.residency()[:50].all() and not m.residency()[50:100].any()


def test_thread_discards_concurrently(guests):
    host = Host(guests, None, "cmma:scan=0.01", interval_s=0.005)
    host.start()
    try:
        free = free_half(guests[1], 7)
        deadline = time.monotonic() + 5
        while guests[1].residency()[free].any() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        host.stop()
    assert not guests[1].residency()[free].any()
    assert host.steps >= 1 and host.timeline
    t, rss, resident, swap, rss_anon = host.timeline[-1]
    assert rss == pytest.approx(measure.rss_bytes(), rel=0.5) and swap == 0
    assert 0 < rss_anon <= rss


def test_budget_needs_the_fault_service(guests):
    ok, why = fault_service_available()
    if ok:
        pytest.skip("the fault service is available here; pressure mode is tested elsewhere")
    with pytest.raises(Unsupported, match="host swap"):
        Host(guests, "8M", "cmma")


def test_bad_host_arguments(guests):
    with pytest.raises(ConfigError, match="at least one guest"):
        Host([], None, "cmma")
    with pytest.raises(ConfigError, match="'12Q'"):
        Host(guests, "12Q", "cmma")
    with pytest.raises(ConfigError, match="unknown strategy 'zap'"):
        Host(guests, None, "zap")
    with pytest.raises(ConfigError, match="headroom"):
        Host(guests, None, "cmma", headroom=0.9)


def test_reporting_and_balloon_need_guests_not_bare_memory(guests):
    for name in ("reporting", "balloon"):
        with pytest.raises(Unsupported):
            Host(guests, None, name)


def test_share_is_proportional_and_exact():
    assert list(share([10, 30], 100)) == [10, 30]           # everything when there is too little
    q = share([100, 300, 0], 40)
    assert q.sum() == 40 and list(q) == [10, 30, 0]
    q = share([1, 1, 1], 2)
    assert q.sum() == 2 and q.max() == 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 1000, size=5)
        need = int(rng.integers(0, 3000))
        q = share(counts, need)
        assert (q <= counts).all() and q.sum() == min(need, counts.sum())


class HintedGuest:
    """The least a host needs from a guest with a hint path: its memory and its allocator."""

    def __init__(self, size, clock, batch):
        self.mem = gphint.GuestMemory(size)
        self.allocator = BuddyAllocator(self.mem, batch=batch, clock=clock)

    def close(self):
        self.mem.close()


@pytest.mark.parametrize("strategy", ["unused", "cmma"])
def test_delay_counts_from_the_last_free_not_from_a_scan(strategy):
    """A page freed, re-allocated and freed again between two scans must wait the full delay
    from its last free: a scan sees it UNUSED both times, but the guest dates each free."""
    clock = Clock()
    g = HintedGuest("4M", clock, batch=4)
    try:
        a, mem = g.allocator, g.mem
        host = Host([g], None, "%s:scan=0.1,delay=1.0" % strategy, clock=clock)
        first = a.alloc(64)
        mem.frames[first] = 1
        a.free(first)
        a.flush_hints()                          # t=100.0: UNUSED as the host sees it
        assert host.step() == 0                  # too young
        clock.t = 100.7
        again = a.alloc(16)                      # the guest takes some back ...
        assert np.isin(again, first).all()       # (address-ordered: the same low pages)
        mem.frames[again] = 2
        a.free(again)
        a.flush_hints()                          # ... and frees them again at t=100.7
        clock.t = 101.2
        old = np.setdiff1d(first, again)
        assert host.step() == old.size           # 1.2 s since the first free: only those
        res = mem.residency()
        assert not res[old].any() and res[again].all()
        assert (mem.frames[again] == 2).all()
        clock.t = 101.65
        assert host.step() == 0                  # 0.95 s since the last free
        assert mem.residency()[again].all()
        clock.t = 101.75
        assert host.step() == again.size
        assert not mem.residency()[again].any()
        assert host.stats()["youngest_unused_taken_s"] == pytest.approx(1.05)
    finally:
        g.close()


def test_delay_counts_from_the_hint_submission_not_the_free_call():
    """A free that waits in the hint buffer is not UNUSED to the host yet: its delay starts
    when the buffer submits it."""
    clock = Clock()
    g = HintedGuest("4M", clock, batch=8)
    try:
        a, mem = g.allocator, g.mem
        host = Host([g], None, "cmma:scan=0.1,delay=1.0", clock=clock)
        pages = a.alloc(3)
        mem.frames[pages] = 3
        a.free(pages)                            # t=100.0: fewer than a batch: pending
        assert (mem.usage(pages) == PageState.STABLE).all()
        clock.t = 100.5
        assert host.step() == 0
        a.flush_hints()                          # t=100.5: submitted
        clock.t = 101.4
        assert host.step() == 0                  # 1.4 s after free(), 0.9 s after submission
        assert mem.residency()[pages].all()
        clock.t = 101.6
        assert host.step() == pages.size
        assert not mem.residency()[pages].any()
    finally:
        g.close()


def test_delay_with_the_machine_clock():
    """The same rule on the default clocks (the guest's CLOCK_MONOTONIC and the host's
    time.monotonic are one clock): the bounds are taken around each call, so a slow machine
    can only make the test inconclusive in the safe direction, never wrong."""
    delay_s = 0.4
    g = HintedGuest("4M", None, batch=4)
    try:
        a, mem = g.allocator, g.mem
        host = Host([g], None, "unused:scan=0.001,delay=%g" % delay_s)
        first = a.alloc(32)
        mem.frames[first] = 1
        a.free(first)
        a.flush_hints()
        t_first_hi = time.monotonic()            # the first free is dated before this
        host.step()
        time.sleep(delay_s * 0.6)
        again = a.alloc(8)
        mem.frames[again] = 2
        t_again_lo = time.monotonic()            # the second free is dated after this
        a.free(again)
        a.flush_hints()
        time.sleep(max(0.0, t_first_hi + delay_s * 1.05 - time.monotonic()))
        host.step()                              # its clock reads now, after t_first_hi + delay
        t_scan_hi = time.monotonic()
        res = mem.residency()
        assert not res[np.setdiff1d(first, again)].any()   # >= delay since the first free
        if t_scan_hi - t_again_lo < delay_s:
            assert res[again].all()              # surely < delay since the second free
        time.sleep(delay_s)
        host.step()
        assert not mem.residency()[again].any()
    finally:
        g.close()
