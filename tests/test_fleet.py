"""Hundreds of guests in one host: one FaultService serves every guest's discard faults (the region
table grows, the fault thread finds a faulting address by binary search), each guest's pages come
back byte for byte, and unregistering or closing them leaves no fd and no mapping behind."""
import gc
import os

import numpy as np
import pytest

import gphint
from gphint import PageState
from gphint import _mechanism
from helpers import PAGE, pattern

GUEST = "1M"                 # small guests: the count is what is under test
NPAGES = (1 << 20) // PAGE
PAGES = np.array([3, 4, 5, 100, 200], dtype=np.int64)   # a run and two strays per guest


def open_fds():
    _mechanism.self_pidfd()      # opened once per process (process_madvise's pidfd): not a leak
    return len(os.listdir("/proc/self/fd"))


def mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


# The allocator's own arenas and heap segments come and go with use (a few lines of
# /proc/self/maps); a leaked guest is at least one mapping per guest (its frames and tables).
MAPS_SLACK = 8


@pytest.fixture
def file_data(tmp_path):
    """A backing file with a distinct page for every (guest, page) pair of a 600-guest fleet."""
    data = pattern(600 * PAGES.size, seed=12)
    path = tmp_path / "fleet.img"
    data.tofile(path)
    return data, path


def _fill(mems, data, store):
    """Guest g caches file pages g*len(PAGES)... in PAGES, VOLATILE; its page 0 is STABLE data."""
    for g, m in enumerate(mems):
        file_pages = g * PAGES.size + np.arange(PAGES.size)
        m.frames[PAGES] = data[file_pages]
        m.set_backing(PAGES, store, file_pages * PAGE)
        m.set_state(PAGES, PageState.VOLATILE)
        m.frames[0] = g % 251
        m.frames[[50, 51]] = 0xEE               # resident, then given up: discarded, reads zeros
        m.set_state([50, 51], PageState.UNUSED)


@pytest.mark.usefixtures("compiled_only")
@pytest.mark.parametrize("n", [100, 600])
def test_one_service_serves_hundreds_of_guests_byte_for_byte(n, file_data):
    """Above the old 64-region table: every guest is registered, discarded and reloaded from its
    file through the one fault thread, in an order that jumps across the whole address range."""
    from gphint.faults import FaultService, FileStore
    data, path = file_data
    gc.collect()
    fds0, maps0 = open_fds(), mappings()
    store = FileStore(path)
    svc = FaultService(window="16K")
    mems = [gphint.GuestMemory(GUEST, name="g%d" % i) for i in range(n)]
    try:
        for m in mems:
            svc.register(m)
        assert len(svc.guests) == n
        assert open_fds() - fds0 < 16           # no fd per guest: one uffd serves them all
        _fill(mems, data, store)
        for m in mems:
            assert m.discard(np.concatenate([PAGES, [50, 51]])) == PAGES.size + 2
        order = np.random.default_rng(n).permutation(n)      # faults spread across all regions
        for g in order.tolist():
            m = mems[g]
            file_pages = g * PAGES.size + np.arange(PAGES.size)
            assert np.array_equal(m.frames[PAGES], data[file_pages]), "guest %d" % g
            assert (m.frames[0] == g % 251).all() and not m.frames[[50, 51]].any()
        total = svc.stats()
        assert total["file_reloads"] == n * PAGES.size and total["lost_pages"] == 0
        assert all(svc.stats(m)["file_reloads"] == PAGES.size for m in mems)
        svc.check()
        # unregister every other guest: the rest are still served (ids stable, lookup intact)
        for m in mems[::2]:
            svc.unregister(m)
        for g, m in enumerate(mems[1::2], start=0):
            m.discard(PAGES)
        for g in range(1, n, 2):
            file_pages = g * PAGES.size + np.arange(PAGES.size)
            assert np.array_equal(mems[g].frames[PAGES], data[file_pages]), "guest %d" % g
        assert len(svc.guests) == n - len(mems[::2])
    finally:
        for m in mems:
            m.close()
        svc.stop()
        store.close()
    del mems
    gc.collect()
    assert open_fds() == fds0
    assert mappings() <= maps0 + MAPS_SLACK


@pytest.mark.usefixtures("compiled_only")
def test_region_ids_are_reused_and_registration_order_does_not_matter(file_data):
    """A guest registered after others were unregistered takes a free id; guests at lower and
    higher addresses than those already registered are found by the fault thread alike."""
    from gphint.faults import FaultService, FileStore
    data, path = file_data
    store = FileStore(path)
    mems = [gphint.GuestMemory(GUEST) for _ in range(8)]
    by_addr = sorted(range(8), key=lambda i: mems[i].address, reverse=True)
    try:
        with FaultService(window="4K") as svc:
            for i in by_addr:                          # highest address first
                svc.register(mems[i])
            rids = {i: svc._reg(mems[i]).rid for i in range(8)}
            assert sorted(rids.values()) == list(range(8))
            gone = by_addr[3]
            svc.unregister(mems[gone])
            late = gphint.GuestMemory(GUEST)
            mems.append(late)
            svc.register(late)
            assert svc._reg(late).rid == rids[gone]     # the freed id
            live = [m for i, m in enumerate(mems) if i != gone]
            _fill(live, data, store)
            for m in live:
                m.discard(PAGES)
            for g, m in enumerate(live):
                assert np.array_equal(m.frames[PAGES], data[g * PAGES.size + np.arange(PAGES.size)])
            assert svc.stats()["file_reloads"] == len(live) * PAGES.size
    finally:
        for m in mems:
            m.close()
        store.close()


@pytest.mark.parametrize("n", [100, 600])
def test_hundreds_of_guest_memories_discard_and_close_without_leaks(n):
    """Both mechanisms: hundreds of guests in one process, UNUSED pages discarded (read back as
    zeros, the kernel frees them), STABLE pages untouched, and closing frees every mapping."""
    gc.collect()
    fds0, maps0 = open_fds(), mappings()
    mems = [gphint.GuestMemory(GUEST) for _ in range(n)]
    for g, m in enumerate(mems):
        m.frames[:8] = (g * 7) % 256
        m.set_state(np.arange(4, 8), PageState.UNUSED)
        assert m.discard(np.arange(4, 8)) == 4
    for g, m in enumerate(mems):
        assert (m.frames[:4] == (g * 7) % 256).all() and not m.frames[4:8].any()
        assert m.resident_pages() == 8        # the discarded ones were faulted back by the read
    for m in mems:
        m.close()
    del mems
    gc.collect()
    assert open_fds() == fds0
    assert mappings() <= maps0 + MAPS_SLACK


def test_a_fleet_fits_in_the_default_open_file_limit():
    """512 guests need no fd each: the guest memories and their tables are anonymous mappings,
    so a user with `ulimit -n 1024` can run them."""
    fds0 = open_fds()
    mems = [gphint.GuestMemory("64K") for _ in range(512)]
    try:
        assert open_fds() - fds0 < 8
    finally:
        for m in mems:
            m.close()
