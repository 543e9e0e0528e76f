"""The peers' host halves on real guests: the balloon's MOM-like policy and its requests that
wait for the guest to be scheduled, and free page reporting's discards of reported blocks."""
import time

import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint.guest.guest import Guest
from gphint.host import Host
from gphint.host.balloon import grow_target_npages, shrink_target_npages
from gphint.host.hostswap import fault_service_available

from helpers import PAGE, pattern
from helpers import Clock


@pytest.fixture
def guest(new_guest):
    g = new_guest("16M", workload=None, hinting=False, file_bytes="1M", name="g0")
    g.mem.frames[:] = 1          # every frame resident, so a discard shows in mincore
    return g


def test_mom_targets():
    size = 1000
    # mild pressure: the guest may keep 0.2 * host_free / threshold of its memory free
    target, used = shrink_target_npages(size, free=600, balloon=0, host_free=0.1, threshold=0.2,
                                        change=0.05)
    assert used == 400 and target == 50               # wants 500 but moves at most 5%
    target, _ = shrink_target_npages(size, free=600, balloon=450, host_free=0.1, threshold=0.2,
                                     change=0.05)
    assert target == 500                               # reaches size - used - 0.1 * size
    # critical pressure (host free <= 5%): a negative free reserve, the guest must shrink caches
    target, _ = shrink_target_npages(size, free=0, balloon=0, host_free=0.02, threshold=0.2,
                                     change=1.0)
    assert target == 30
    assert grow_target_npages(size, balloon=120, change=0.05) == 70
    assert grow_target_npages(size, balloon=20, change=0.05) == 0


def test_balloon_request_waits_for_the_guest(guest):
    clock = Clock()
    # threshold=1.0: the host always counts as under pressure (its free share is below 100%)
    host = Host([guest], None, "balloon:threshold=1.0,interval=0.5", clock=clock)
    slot = host.slots[0]
    host.step()
    target, t_req = slot.request
    assert t_req == clock.t and 0 < target <= int(0.05 * guest.mem.npages)
    assert slot.balloon.size_pages == 0                # nothing happens until the guest runs
    clock.t += 0.7
    host.on_scheduled(guest)
    pages = slot.balloon.pages
    assert pages.size == target and slot.request is None
    assert not guest.mem.residency()[pages].any()      # the host discarded what it got
    s = host.stats()
    assert s["balloon_served"] == 1 and s["balloon_latency_mean_s"] == pytest.approx(0.7)
    assert s["discarded_pages"] == {"ballooned": target}
    clock.t += 0.6
    host.step()
    assert slot.request[0] - target <= int(0.05 * guest.mem.npages)     # <= 5% per evaluation
    host.stop()
    assert guest.verify() == 0


def test_reporting_discards_reported_blocks_and_never_fragments():
    g = Guest("16M", workload=None, hinting=False, file_bytes="1M", name="g0")
    try:
        a = g.allocator
        pages = a.alloc(a.free_pages)
        g.mem.frames[:] = 1
        # free order-3 fragments (every other 8 pages of the first half) and one 64-page block
        first_half = pages[pages < g.mem.npages // 2]
        frag = first_half[(first_half // 8) % 2 == 0]
        block = np.arange(g.mem.npages // 2, g.mem.npages // 2 + 64)
        a.free(frag)
        a.free(block)
        host = Host([g], None, "reporting:order=5,capacity=1,delay=0.2")
        deadline = time.monotonic() + 5
        while host.stats()["reports"] == 0 and time.monotonic() < deadline:
            host.guest_timers()
            time.sleep(0.02)
        res = g.mem.residency()
        assert not res[block].any()                     # the >= 2^order block: reported, discarded
        assert res[frag].all()                          # fragments below the order: never reported
        assert host.stats()["discarded_pages"] == {"reported": 64}
        assert a.reported_mask()[block].all()
        host.stop()
    finally:
        g.close()


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
@pytest.mark.skipif(not caps.has("dirty_tracking"),
                    reason="no kernel write tracking: %s" % caps.probe().features["dirty_tracking"].reason)
def test_cmma_tiers_unused_volatile_clean_pot_volatile_then_swap(tmp_path):
    """Under pressure cmma takes UNUSED, then VOLATILE, then clean POT_VOLATILE pages; a
    written POT_VOLATILE page is preserved in host swap, and so is STABLE memory last.
    Every page reads back what it held."""
    from gphint.faults import FaultService, FileStore
    n = 1024                                            # 4 MiB of each kind
    data = pattern(5 * n, seed=9)
    path = tmp_path / "backing"
    data.tofile(path)
    store = FileStore(path)
    svc = FaultService()
    mem = gphint.GuestMemory("20M", name="g0")
    svc.register(mem)
    try:
        mem.frames[:] = data
        unused, volatile, potv = (np.arange(k * n, (k + 1) * n) for k in range(3))
        mem.set_backing(np.arange(5 * n), store, np.arange(5 * n) * PAGE)
        mem.set_state(unused, PageState.UNUSED)
        mem.set_state(volatile, PageState.VOLATILE)
        mem.set_state(potv, PageState.POT_VOLATILE)     # 3n..5n stay STABLE
        svc.clear_dirty(mem, potv)
        written = potv[::4]
        mem.frames[written, :8] = 0xEE                  # writes through the "mapping": dirty
        want = mem.frames.copy()
        # pages 3n..5n are STABLE.  Budget: room for 1.5n -- UNUSED, VOLATILE, all of P and
        # 0.5n of STABLE must go
        budget = (5 * n - 3 * n - n // 2) * PAGE
        host = Host([mem], budget, "cmma:batch=256", fault_service=svc, headroom=0.0)
        host.step()
        s = host.stats()
        clean = np.setdiff1d(potv, written)
        assert s["discarded_pages"] == {"UNUSED": n, "VOLATILE": n, "POT_VOLATILE": clean.size}
        assert s["host_swap_out_pages"]["POT_VOLATILE"] == written.size
        assert s["host_swap_out_pages"]["STABLE"] == n // 2
        assert mem.resident_pages() <= budget // PAGE
        census = mem.census()
        assert census["Uz"] == n and census["Vz"] == n + clean.size
        assert census["Sp"] == n // 2 + written.size    # dirty P preserved (Pr -> Sp) + STABLE
        host.stop()
        keep = np.setdiff1d(np.arange(5 * n), unused)    # UNUSED content is don't-care
        assert np.array_equal(mem.frames[keep], want[keep])   # reloaded / swapped back in
        host.close()
    finally:
        svc.unregister(mem)
        svc.stop()
        mem.close()
        store.close()


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
def test_balloon_drops_the_host_swap_copy_of_pages_it_takes():
    """A free page the host had swapped out and then gets through the balloon: its swap copy
    is dropped (as MADV_DONTNEED drops a swap entry), so it is never swapped back in."""
    from gphint.faults import FaultService
    svc = FaultService()
    g = Guest("16M", workload=None, hinting=False, file_bytes="1M", fault_service=svc, name="g0")
    try:
        g.mem.frames[:] = 1                                  # all free in the guest, all resident
        host = Host([g], "15M", "balloon:threshold=1.0,change=1.0", fault_service=svc,
                    clock=Clock())
        slot = host.slots[0]
        host.sample()
        free = np.arange(g.mem.npages)
        assert host.swap_out(slot, free[:1024], "STABLE") == 1024   # 4 MiB of free pages in swap
        used = host.swap.used_bytes
        ins = svc.stats()["swap_ins"]
        host.strategy.proactive(host.clock())                # MOM: shrink (threshold 1.0)
        host.on_scheduled(g)
        got = slot.balloon.pages
        dropped = np.intersect1d(got, free[:1024])
        assert dropped.size > 0
        assert host.stats()["swap_dropped_pages"] == dropped.size
        assert host.swap.used_bytes == used - dropped.size * PAGE    # slots given back
        assert set(g.mem.census()) >= {"Sz"} and (g.mem.content(dropped) == 3).all()
        slot.balloon.deflate(got.size)                       # the guest reuses them
        assert not g.mem.frames[dropped].any()               # zero pages ...
        assert svc.stats()["swap_ins"] == ins                # ... not swap-ins of stale data
        host.close()
    finally:
        g.close()
        svc.stop()


def test_a_started_host_runs_its_guests_timers():
    """Free page reporting's work item is the guest's own timer: a started host fires it
    (nobody else calls guest_timers here), so a freed block is reported and discarded."""
    g = Guest("16M", workload=None, hinting=False, file_bytes="1M", name="g0")
    try:
        a = g.allocator
        pages = a.alloc(a.free_pages)
        g.mem.frames[:] = 1
        block = np.arange(g.mem.npages // 2, g.mem.npages)    # above the low watermark
        a.free(block)
        host = Host([g], None, "reporting:order=5,capacity=32,delay=0.1", interval_s=0.01)
        host.start()
        try:
            deadline = time.monotonic() + 10
            while g.mem.residency()[block].any() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            host.stop()
        assert not g.mem.residency()[block].any()
        assert host.stats()["reports"] >= 1
        assert host.stats()["discarded_pages"] == {"reported": block.size}
        keep = np.setdiff1d(pages, block)
        assert g.mem.residency()[keep].all() and (g.mem.frames[keep] == 1).all()
    finally:
        g.close()


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
def test_a_host_with_a_budget_and_no_fault_service_is_refused_at_construction():
    """Host swap needs a fault service: without one (given, or serving the guests), the host
    refuses at once, naming what is missing -- not an AttributeError at the first swap-out."""
    mem = gphint.GuestMemory("4M", name="g0")
    try:
        with pytest.raises(gphint.ConfigError, match="fault service.*g0|g0.*fault service"):
            Host([mem], "2M", "none")
    finally:
        mem.close()


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
def test_a_host_with_a_budget_uses_the_service_that_serves_its_guests():
    from gphint.faults import FaultService
    svc, other = FaultService(), FaultService()
    mems = [gphint.GuestMemory("4M", name="g%d" % i) for i in range(2)]
    try:
        for m in mems:
            svc.register(m)
        data = [pattern(m.npages, seed=20 + i) for i, m in enumerate(mems)]
        for m, d in zip(mems, data):
            m.frames[:] = d
        host = Host(mems, "4M", "none:batch=256", headroom=0.0)
        assert host.fault_service is svc
        host.step()
        assert sum(m.resident_pages() for m in mems) * PAGE <= 4 << 20
        assert host.stats()["host_swap_out_pages"]["STABLE"] >= mems[0].npages
        for m, d in zip(mems, data):
            assert np.array_equal(m.frames, d)                  # swapped back in, byte for byte
        with pytest.raises(gphint.ConfigError, match="g0"):
            Host(mems, "4M", "none", fault_service=other)       # not the guests' service
        host.close()
        lone = gphint.GuestMemory("1M", name="lone")
        try:
            with pytest.raises(gphint.ConfigError, match="lone"):
                Host(mems + [lone], "4M", "none")               # one guest has no service
        finally:
            lone.close()
    finally:
        for m in mems:
            svc.unregister(m)
            m.close()
        svc.stop()
        other.stop()
