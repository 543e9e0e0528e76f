"""The host's reclaim loop over real guest memory: what it takes is measured by the kernel
(mincore and pagemap), what it must not take is checked byte for byte."""
import time

import numpy as np
import pytest

import gphint
from gphint import ConfigError, PageState, Unsupported, measure
from gphint.host import Host
from gphint.host.host import share
from gphint.host.hostswap import fault_service_available

from conftest import pattern


class Clock:
    """A host clock the test moves by hand (the scan period and delay rules are timing)."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


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


@pytest.mark.parametrize("strategy", ["unused", "cmma", "cmma:batch=1,submit=per_page",
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
