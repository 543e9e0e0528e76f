"""What does the guest pay per page to hint the pages it frees, at each buffer capacity?

The buddy allocator frees the random half with hints at capacity 1/32/256/4096, and without
hints (the peers' guests; group "guest hints").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
import numpy as np
import pytest

from gphint import PageState

from benchlib import BENCH_MB, ROUNDS


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
