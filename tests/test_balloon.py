"""virtio-balloon, guest side: inflate/deflate accounting, the host's raw discard of ballooned
pages (real MADV_DONTNEED, real RSS), and the reclaim callback when free memory is short."""
import numpy as np
import pytest

from gphint import measure
from gphint.errors import ConfigError, StateError
from gphint.guest.balloon import BalloonDriver
from gphint.states import PageState

from helpers import pattern


def test_inflate_and_deflate_count_pages_and_deflate_takes_the_newest(mem_and_allocator):
    mem, a = mem_and_allocator
    b = BalloonDriver(a)
    first = b.inflate(1000)
    second = b.inflate(500)
    assert first.size == 1000 and second.size == 500 and b.size_pages == 1500
    assert np.unique(np.concatenate([first, second])).size == 1500
    assert a.allocated_mask()[first].all() and a.free_pages == mem.npages - 1500
    back = b.deflate(300)
    assert set(back.tolist()) <= set(second.tolist()) and back.size == 300
    assert b.size_pages == 1200 and a.free_pages == mem.npages - 1200
    assert not a.allocated_mask()[back].any()
    rest = b.deflate(10 ** 6)                 # more than there is: what there is
    assert rest.size == 1200 and b.size_pages == 0 and a.free_pages == mem.npages
    assert b.stats["inflated_pages"] == 1500 and b.stats["deflated_pages"] == 1500


def test_ballooned_pages_are_stable_so_only_a_raw_discard_takes_them(mem_and_allocator):
    mem, a = mem_and_allocator
    b = BalloonDriver(a)
    pages = b.inflate(64)
    a.flush_hints()
    assert (mem.usage(pages) == PageState.STABLE).all()
    with pytest.raises(StateError, match="STABLE"):
        mem.discard(pages)                    # the state-aware path refuses: the contract
    assert mem.discard_raw(pages) == 64


def test_host_discard_of_ballooned_pages_drops_rss_and_loses_nothing_else(mem_and_allocator):
    mem, a = mem_and_allocator
    everything = a.alloc(mem.npages)
    mem.frames[everything] = 1                # every frame resident
    keep = everything[:2048]
    data = pattern(2048, seed=11)
    mem.frames[keep] = data
    a.free(everything[2048:])
    b = BalloonDriver(a)
    rss_before = measure.rss_bytes()
    ballooned = b.inflate(5000)
    assert ballooned.size == 5000
    mem.discard_raw(ballooned)                # the host takes them
    assert mem.resident_pages() == mem.npages - 5000
    assert not mem.residency()[ballooned].any()
    assert rss_before - measure.rss_bytes() >= 0.8 * 5000 * mem.page_size
    assert np.array_equal(mem.frames[keep], data)
    # deflated pages come back free and UNUSED; reused, they are ordinary zero-filled memory
    back = b.deflate(5000)
    a.flush_hints()
    assert (mem.usage(back) == PageState.UNUSED).all()
    again = a.alloc(a.free_pages)
    mem.frames[again] = 3
    assert (mem.frames[again] == 3).all() and np.array_equal(mem.frames[keep], data)


def test_short_of_free_memory_inflate_asks_reclaim_then_takes_what_it_can(mem_and_allocator):
    mem, a = mem_and_allocator
    cache = [a.alloc(1024) for _ in range(7)]     # a "page cache" holding 7/8 of memory
    asked = []

    def reclaim(npages_needed):
        asked.append(npages_needed)
        freed = 0
        while cache and freed < npages_needed:
            pages = cache.pop()
            a.free(pages)
            freed += pages.size
        return freed

    b = BalloonDriver(a, reclaim=reclaim)
    got = b.inflate(3000)                         # 1024 free: 1976 short
    assert asked == [3000 - 1024] and got.size == 3000
    assert b.stats["reclaimed_pages"] == 2048
    got2 = b.inflate(10 ** 5)                     # more than the guest has at all
    assert got2.size == mem.npages - 3000 and b.size_pages == mem.npages
    assert a.free_pages == 0 and not cache
    assert b.stats["short_pages"] == 10 ** 5 - got2.size


def test_without_reclaim_a_short_inflate_returns_fewer_pages(mem_and_allocator):
    mem, a = mem_and_allocator
    a.alloc(mem.npages - 100)
    b = BalloonDriver(a)
    assert b.inflate(500).size == 100 and b.size_pages == 100
    assert b.inflate(5).size == 0


@pytest.mark.parametrize("call, word", [(lambda b: b.inflate(-1), "inflate npages"),
                                        (lambda b: b.deflate(1.5), "deflate npages")])
def test_bad_counts_name_the_value(mem_and_allocator, call, word):
    mem, a = mem_and_allocator
    with pytest.raises(ConfigError, match=word):
        call(BalloonDriver(a))


def test_reclaim_must_be_callable(mem_and_allocator):
    mem, a = mem_and_allocator
    with pytest.raises(ConfigError, match="reclaim"):
        BalloonDriver(a, reclaim=42)
