"""The peers' host halves on real guests: the balloon's MOM-like policy and its requests that
wait for the guest to be scheduled, and free page reporting's discards of reported blocks."""
import time

import numpy as np
import pytest

from gphint.guest.guest import Guest
from gphint.host import Host
from gphint.host.balloon import grow_target_npages, shrink_target_npages


class Clock:
    def __init__(self):
        self.t = 50.0

    def __call__(self):
        return self.t


@pytest.fixture
def guest():
    g = Guest("16M", workload=None, hinting=False, file_bytes="1M", name="g0")
    g.mem.frames[:] = 1          # every frame resident, so a discard shows in mincore
    yield g
    g.close()


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
