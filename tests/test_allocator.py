"""The guest's buddy allocator: splitting, merging, accounting, hints, and bad input, against
a real GuestMemory (states written by the real set_state path)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint.errors import ConfigError, GphintError, OutOfMemory
from gphint.guest.allocator import BuddyAllocator, aligned_blocks, block_pages
from gphint.states import PageState

from helpers import pattern


@pytest.fixture
def small_mem(new_mem):
    return new_mem("4M")      # 1024 pages


def free_mask(a):
    """Pages covered by the allocator's listed free blocks (each page at most once)."""
    mask = np.zeros(a.npages, dtype=int)
    for first, order in a.free_blocks():
        mask[first:first + (1 << order)] += 1
    assert mask.max(initial=0) <= 1, "free blocks overlap"
    return mask.astype(bool)


def check_structure(a):
    """Free blocks and allocated pages partition memory; free blocks are aligned and maximal
    (no two free buddies of the same order remain unmerged)."""
    free = free_mask(a)
    alloc = a.allocated_mask()
    assert not (free & alloc).any()
    assert (free | alloc).sum() + a.isolated_pages == a.npages
    assert a.free_pages == int(free.sum())
    blocks = a.free_blocks()
    assert ((blocks[:, 0] % (1 << blocks[:, 1])) == 0).all(), "misaligned free block"
    listed = {(int(f), int(o)) for f, o in blocks}
    for first, order in listed:
        if order < a.max_order:
            assert (first ^ (1 << order), order) not in listed, "unmerged buddies at %d" % first


# --- helpers of the module -------------------------------------------------------------------
def test_aligned_blocks_cover_a_range_with_maximal_aligned_blocks():
    assert aligned_blocks(0, 12, 10) == [(0, 3), (8, 2)]
    assert aligned_blocks(3, 6, 10) == [(3, 0), (4, 2), (8, 0)]
    assert aligned_blocks(0, 4096, 10) == [(0, 10), (1024, 10), (2048, 10), (3072, 10)]
    assert block_pages([8, 16], 2).tolist() == [8, 9, 10, 11, 16, 17, 18, 19]


# --- construction -----------------------------------------------------------------------------
def test_all_frames_start_free_in_max_order_blocks_and_unused(mem):
    a = BuddyAllocator(mem)
    assert a.free_pages == mem.npages == 8192
    assert a.free_blocks().tolist() == [[i << 10, 10] for i in range(8)]
    assert mem.census() == {"Ur": mem.npages}


def test_memory_not_a_multiple_of_the_max_block_is_carved_into_aligned_blocks():
    m = gphint.GuestMemory(12 * 4096)
    try:
        a = BuddyAllocator(m, max_order=3)
        assert a.free_blocks().tolist() == [[0, 3], [8, 2]]
        pages = a.alloc(12)
        a.free(pages)
        # the block at 8 has its buddy beyond the end of memory: it must not merge
        assert a.free_blocks().tolist() == [[0, 3], [8, 2]]
    finally:
        m.close()


@pytest.mark.parametrize("kwargs, word", [({"max_order": -1}, "max_order"), ({"max_order": 99}, "max_order"),
                                          ({"max_order": 2.5}, "max_order"), ({"batch": 0}, "capacity"),
                                          ({"batch": "x"}, "capacity")])
def test_bad_configuration_is_a_config_error_naming_the_value(small_mem, kwargs, word):
    with pytest.raises(ConfigError, match=word):
        BuddyAllocator(small_mem, **kwargs)


# --- splitting and greedy allocation -----------------------------------------------------------
def test_alloc_splits_only_what_it_needs(small_mem):
    a = BuddyAllocator(small_mem, max_order=10)
    pages = a.alloc(3)
    assert sorted(pages.tolist()) == [0, 1, 2]
    # the rest of the 1024-page block is put back as aligned blocks: 3, 4, 8, 16, ... 512
    assert a.free_blocks().tolist() == [[3, 0]] + [[1 << k, k] for k in range(2, 10)]
    assert a.free_pages == 1021


def test_alloc_takes_small_free_blocks_before_splitting_a_big_one(small_mem):
    a = BuddyAllocator(small_mem, max_order=10)
    pages = a.alloc(16)
    a.free(pages[[0, 4, 5]])                    # fragments: page 0 (order 0), 4-5 (order 1)
    frag = {int(p) for p in pages[[0, 4, 5]]}
    got = a.alloc(3)
    assert set(got.tolist()) == frag           # the fragments go first, no new split
    check_structure(a)


def test_alloc_block_is_aligned_and_whole(small_mem):
    a = BuddyAllocator(small_mem, max_order=10)
    a.alloc(1)
    first = a.alloc_block(4)
    assert first % 16 == 0
    assert a.allocated_mask()[first:first + 16].all()
    a.free_block(first, 4)
    check_structure(a)


def test_running_out_raises_out_of_memory_which_is_a_memory_error(small_mem):
    a = BuddyAllocator(small_mem, max_order=10)
    a.alloc(1000)
    with pytest.raises(OutOfMemory, match="cannot allocate 25 pages: only 24"):
        a.alloc(25)
    with pytest.raises(MemoryError):
        a.alloc_block(5)
    assert issubclass(OutOfMemory, GphintError)
    assert a.free_pages == 24                 # a failed allocation allocates nothing
    assert len(a.alloc(24)) == 24


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_alloc_of_a_bad_count_names_it(small_mem, bad):
    a = BuddyAllocator(small_mem)
    with pytest.raises(ConfigError, match="npages"):
        a.alloc(bad)


def test_alloc_block_of_a_bad_order_names_it(small_mem):
    a = BuddyAllocator(small_mem, max_order=6)
    with pytest.raises(ConfigError, match="order must be in"):
        a.alloc_block(7)


# --- free, merging, bad frees ---------------------------------------------------------------
def test_freeing_everything_coalesces_back_to_max_order_blocks(mem):
    a = BuddyAllocator(mem, max_order=10)
    rng = np.random.default_rng(3)
    held = [a.alloc(int(n)) for n in rng.integers(1, 300, size=40)]
    for i in rng.permutation(len(held)):
        a.free(held[i])
    assert a.free_blocks().tolist() == [[i << 10, 10] for i in range(mem.npages >> 10)]


def test_double_free_names_the_page_and_frees_nothing(small_mem):
    a = BuddyAllocator(small_mem)
    pages = a.alloc(8)
    a.free(pages[:2])
    with pytest.raises(ConfigError, match="page %d is not allocated" % pages[1]):
        a.free(pages[1:4])
    assert a.allocated_mask()[pages[2:]].all()     # pages[2:4] were not freed by the failed call
    with pytest.raises(ConfigError, match="page %d appears twice" % pages[5]):
        a.free(np.array([pages[5], pages[5]]))
    with pytest.raises(ConfigError, match="page 500 is not allocated"):
        a.free(np.array([500]))
    with pytest.raises(ConfigError, match="page 5000 out of range"):
        a.free(np.array([5000]))
    with pytest.raises(ConfigError, match="integer"):
        a.free(np.array([1.0]))
    check_structure(a)


# --- hints through the allocator ---------------------------------------------------------------
def test_allocated_pages_are_stable_when_handed_out_even_with_a_big_batch(small_mem):
    a = BuddyAllocator(small_mem, batch=4096)
    pages = a.alloc(100)
    # no flush: allocation transitions are never deferred
    assert (small_mem.usage(pages) == PageState.STABLE).all()
    a.free(pages)
    assert (small_mem.usage(pages) == PageState.STABLE).all()    # the free is still pending
    a.flush_hints()
    assert (small_mem.usage(pages) == PageState.UNUSED).all()


def test_free_then_realloc_within_a_batch_ends_stable_with_no_transition(small_mem):
    a = BuddyAllocator(small_mem, batch=64)
    pages = a.alloc(10)
    before = a.hints.transitions
    a.free(pages)
    again = a.alloc(10)
    assert set(again.tolist()) == set(pages.tolist())
    a.flush_hints()
    assert (small_mem.usage(again) == PageState.STABLE).all()
    assert a.hints.transitions == before          # the pending UNUSED was cancelled, not applied


def test_contents_of_allocated_pages_survive_other_allocations_and_frees(small_mem):
    """Nothing is lost: pages a user holds keep their bytes while others churn and the host
    discards every page the hints let it discard."""
    a = BuddyAllocator(small_mem, batch=8)
    keep = a.alloc(100)
    data = pattern(100, seed=7)
    small_mem.frames[keep] = data
    rng = np.random.default_rng(1)
    for _ in range(20):
        tmp = a.alloc(int(rng.integers(1, 200)))
        small_mem.frames[tmp] = 0xAA
        a.free(tmp)
        a.flush_hints()
        unused = np.flatnonzero(small_mem.usage() == PageState.UNUSED)
        small_mem.discard(unused)                 # refuses STABLE pages: would raise
    assert np.array_equal(small_mem.frames[keep], data)


def test_hinting_off_leaves_every_page_stable(small_mem):
    a = BuddyAllocator(small_mem, hinting=False)
    a.free(a.alloc(300))
    a.flush_hints()
    assert small_mem.census() == {"Sr": small_mem.npages}
    assert a.hints.hint_ops == 0


# --- isolation and reported marks (page reporting's side) ------------------------------------
def test_isolated_blocks_are_neither_allocated_nor_merged_and_putback_marks_reported(small_mem):
    a = BuddyAllocator(small_mem, max_order=4)
    first = int(a.free_blocks(4)[0, 0])
    a.isolate(first, 4)
    assert a.isolated_pages == 16 and a.free_pages == small_mem.npages - 16
    got = a.alloc(a.free_pages)
    assert not np.isin(np.arange(first, first + 16), got).any()
    with pytest.raises(OutOfMemory):
        a.alloc(1)
    with pytest.raises(ConfigError, match="not allocated"):
        a.free(np.array([first]))
    a.putback(first, 4, reported=True)
    assert a.reported_mask()[first:first + 16].all() and a.reported_mask().sum() == 16
    with pytest.raises(ConfigError, match="no isolated block"):
        a.putback(first, 4)
    with pytest.raises(ConfigError, match="no free block of order 3"):
        a.isolate(first, 3)
    a.free(got)
    check_structure(a)


def test_reported_mark_is_lost_on_allocation_and_on_merge(small_mem):
    a = BuddyAllocator(small_mem, max_order=3)
    a.isolate(0, 3)
    a.putback(0, 3)
    a.isolate(8, 3)
    a.putback(8, 3)
    assert a.reported_mask()[:16].all()
    pages = a.alloc(1)                     # takes from a reported block: split parts unreported
    assert not a.reported_mask()[:8].any() and a.reported_mask()[8:16].all()
    a.free(pages)
    assert not a.reported_mask()[:8].any()
    # a reported block whose buddy comes back merges into an unreported bigger block
    b = BuddyAllocator(gphint.GuestMemory(32 * 4096), max_order=4)
    x = b.alloc_block(3)
    b.isolate(x ^ 8, 3)
    b.putback(x ^ 8, 3)
    assert b.reported_mask().sum() == 8
    b.free_block(x, 3)
    assert b.free_blocks(4).shape[0] == 2 and not b.reported_mask().any()
    b.mem.close()


def test_putback_merges_and_a_merged_block_is_not_marked_reported(small_mem):
    a = BuddyAllocator(small_mem, max_order=4)
    x = a.alloc_block(3)
    a.isolate(x ^ 8, 3)
    a.free_block(x, 3)                    # its buddy is isolated: no merge yet
    assert a.free_blocks(3)[:, 0].tolist().count(x) == 1
    a.putback(x ^ 8, 3)
    assert not a.reported_mask().any()
    check_structure(a)


def test_on_free_hook_sees_the_merged_blocks(small_mem):
    a = BuddyAllocator(small_mem, max_order=10)
    seen = []
    a.on_free.append(lambda firsts, orders: seen.append((firsts.tolist(), orders.tolist())))
    pages = a.alloc(16)
    a.free(pages)
    assert seen == [([0], [10])]


# --- properties ---------------------------------------------------------------------------
OPS = st.lists(st.one_of(st.tuples(st.just("alloc"), st.integers(1, 200)),
                         st.tuples(st.just("block"), st.integers(0, 6)),
                         st.tuples(st.just("free"), st.integers(0, 10 ** 6)),
                         st.tuples(st.just("flush"), st.just(0))),
               min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, batch=st.sampled_from([1, 7, 64]), max_order=st.sampled_from([3, 6]))
def test_random_alloc_free_keeps_every_invariant(ops, batch, max_order):
    mem = gphint.GuestMemory("2M")       # 512 pages
    try:
        a = BuddyAllocator(mem, max_order=max_order, batch=batch)
        held = []                          # the model: arrays the user owns
        owned = np.zeros(mem.npages, dtype=bool)
        for op, arg in ops:
            if op == "alloc":
                if arg > a.free_pages:
                    with pytest.raises(OutOfMemory):
                        a.alloc(arg)
                    continue
                got = a.alloc(arg)
                assert got.size == arg and np.unique(got).size == arg
                assert not owned[got].any(), "a frame was handed out twice"
                assert (mem.usage(got) == PageState.STABLE).all()
                owned[got] = True
                held.append(got)
            elif op == "block":
                arg = min(arg, max_order)
                try:
                    first = a.alloc_block(arg)
                except OutOfMemory:
                    assert a.largest_free_order() < arg
                    continue
                got = np.arange(first, first + (1 << arg))
                assert first % (1 << arg) == 0 and not owned[got].any()
                owned[got] = True
                held.append(got)
            elif op == "free" and held:
                got = held.pop(arg % len(held))
                a.free(got)
                owned[got] = False
            else:
                a.flush_hints()
                usage = mem.usage()
                assert (usage[owned] == PageState.STABLE).all()
                assert (usage[~owned] == PageState.UNUSED).all()
            assert a.free_pages == mem.npages - owned.sum()
            assert np.array_equal(a.allocated_mask(), owned)
        check_structure(a)
        for got in held:
            a.free(got)
        assert a.free_blocks().tolist() == [[i << max_order, max_order] for i in range(mem.npages >> max_order)]
        a.flush_hints()
        assert mem.census() == {"Ur": mem.npages}
    finally:
        mem.close()
