"""Anonymous memory, guest swap (a real file) and the VOLATILE swap cache (patch 4)."""
import numpy as np
import pytest

from gphint import ConfigError, PageState
from gphint.guest import content
from gphint.guest.content import ANON_KEY_BASE, PAGE_SIZE
from gphint.guest.pagecache import ANON, SWAPCACHE

S, V = int(PageState.STABLE), int(PageState.VOLATILE)


@pytest.fixture
def g(new_guest):
    return new_guest("8M", seed=5, workload=None, file_bytes="4M")


def usage(g, frames):
    g.allocator.flush_hints()
    return g.mem.usage(frames)


def test_alloc_touch_free_content(g):
    pages = g.alloc(100)
    assert pages.tolist() == list(range(100))
    frames = g.frames_of(pages)
    want = content.generate(5, ANON_KEY_BASE + 0, pages, 1)
    assert np.array_equal(g.mem.frames[frames], want)
    g.touch(pages[:10])
    assert np.array_equal(g.mem.frames[frames[:10]], content.generate(5, ANON_KEY_BASE, pages[:10], 2))
    assert (usage(g, frames) == S).all()
    g.free(pages[::2])
    assert (usage(g, frames[::2]) == int(PageState.UNUSED)).all()
    with pytest.raises(ConfigError, match="not allocated"):
        g.free(pages[:1])
    with pytest.raises(ConfigError, match="no guest process"):
        g.free(pages[1:2], pid=99)
    assert g.verify() == 0


def test_swap_out_leaves_a_volatile_swap_cache_written_to_the_real_swap_file(g):
    pages = g.alloc(64)
    frames = g.frames_of(pages)
    n = g.anon.swap_out(frames[:32])
    assert n == 32
    assert (g.table.kind[frames[:32]] == SWAPCACHE).all()
    assert (usage(g, frames[:32]) == V).all() and (usage(g, frames[32:]) == S).all()
    # the swap file holds the bytes (real writes), read back independently
    slots = g.anon._procs[0]["slot"][pages[:32]]
    with open(g.swap.path, "rb") as f:
        for slot, frame in zip(slots[:4].tolist(), frames[:4].tolist()):
            f.seek(slot * PAGE_SIZE)
            assert f.read(PAGE_SIZE) == g.mem.frames[frame].tobytes()
    # swap-in from the swap cache: stable first, then the slot is freed
    used = g.swap.nslots - g.swap.free_slots
    g.touch(pages[:8])
    assert (usage(g, frames[:8]) == S).all()
    assert (g.table.kind[frames[:8]] == ANON).all()
    assert g.swap.nslots - g.swap.free_slots == used - 8
    assert g.verify() == 0


def test_swap_cache_eviction_then_swap_in_from_file(g):
    pages = g.alloc(64)
    frames = g.frames_of(pages)
    g.anon.swap_out(frames)
    assert g.anon.drop_swapcache(frames) == 64
    assert (g.frames_of(pages) == -1).all()
    assert g.verify() == 0                      # checked against the swap file
    data = g.anon.read(pages[10:12])
    assert data == content.generate(5, ANON_KEY_BASE, pages[10:12], 1).tobytes()
    assert g.swap.nslots - g.swap.free_slots == 62
    g.free(pages)
    assert g.swap.free_slots == g.swap.nslots
    assert g.verify() == 0


def test_overcommitted_anon_memory_swaps_and_comes_back(g):
    pages = g.alloc(g.mem.npages + 500)          # more than the guest has: reclaim swaps
    assert g.anon.stats["swap_out"] > 0
    g.touch(pages[:200])
    assert g.verify() == 0
    g.free(pages)
    assert g.verify() == 0 and g.swap.free_slots == g.swap.nslots


def test_mlocked_pages_never_leave_stable(g):
    locked = g.alloc(100)
    g.mlock(locked)
    frames = g.frames_of(locked)
    other = g.alloc(g.mem.npages)                # pressure: everything else swaps
    assert (g.frames_of(locked) == frames).all()
    assert (g.table.kind[frames] == ANON).all()
    assert (usage(g, frames) == S).all()
    assert g.anon.swap_out(frames) == 0
    g.munlock(locked)
    g.free(other)
    assert g.anon.swap_out(frames) == 100
    assert g.verify() == 0
