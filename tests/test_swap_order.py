"""The host's swap order over a fleet (FleetResidency.oldest): the `need` oldest resident pages
that pass the host's filter (STABLE, for Host.swap_oldest), read in the fleet's arrays at once,
are the ones a scan of every guest would choose; and a host under a budget that swaps by it
gives every page back byte for byte."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gphint
from gphint.host.residency import FleetResidency


def _naive(fleet, keep):
    """Every guest scanned: the ticks of all its kept resident pages."""
    ticks = []
    for g, tr in enumerate(fleet.trackers):
        p = np.flatnonzero(tr.resident)
        ticks.append(tr.since_tick[p[keep(g, p)]])
    return np.concatenate(ticks)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), nguests=st.integers(1, 6), need=st.integers(0, 300))
def test_oldest_are_the_scan_of_every_guest(data, nguests, need):
    sizes = data.draw(st.lists(st.sampled_from([64, 128, 256]), min_size=nguests, max_size=nguests))
    mems = [gphint.GuestMemory(n * gphint.PAGE_SIZE) for n in sizes]
    try:
        fleet = FleetResidency(mems)
        seed = data.draw(st.integers(0, 2**31))
        rng = np.random.default_rng(seed)
        fleet.resident[:] = rng.random(fleet.resident.size) < data.draw(st.floats(0.0, 1.0))
        fleet.since_tick[:] = rng.integers(0, data.draw(st.integers(1, 50)), fleet.since_tick.size)
        kept = [rng.random(n) < data.draw(st.floats(0.0, 1.0)) for n in sizes]

        def keep(g, pages):
            return kept[g][pages]
        got = fleet.oldest(need, keep)
        ticks = _naive(fleet, keep)
        want = min(need, ticks.size)
        assert sum(p.size for _, p in got) == want
        chosen = set()
        for g, p in got:
            assert (np.diff(p) > 0).all() and kept[g][p].all() and fleet.trackers[g].resident[p].all()
            chosen |= {(g, int(x)) for x in p}
        assert len(chosen) == want
        if want:
            # the chosen ticks are the `want` smallest of the scan (ties may pick other pages)
            chosen_ticks = np.sort([fleet.trackers[g].since_tick[x] for g, x in chosen])
            assert (chosen_ticks == np.sort(ticks)[:want]).all()
    finally:
        for m in mems:
            m.close()


def test_a_budget_that_swaps_by_it_loses_nothing(svc, new_mem):
    """Four served guests of distinct bytes, all STABLE, over a budget of half of them: the
    host swaps the oldest pages of the fleet (the first guests written), and every page of
    every guest reads back as written."""
    from gphint.host import Host
    if not svc.can_swap:
        pytest.skip("host swap needs UFFDIO_MOVE here")
    mems = [new_mem("4M") for _ in range(4)]
    for m in mems:
        svc.register(m)
    host = Host(mems, budget="8M", strategy="none", fault_service=svc, headroom=0.0)
    try:
        want = []
        for i, m in enumerate(mems):
            m.set_state(slice(None), "stable")
            m.frames[:] = (np.arange(m.npages, dtype=np.uint16)[:, None] * 7 + i).astype(np.uint8)
            want.append(m.frames.copy())
            host.step()
        assert host.swapper.out_npages > 0
        assert sum(m.resident_pages() for m in mems) <= host.budget_npages
        assert mems[0].resident_pages() < mems[3].resident_pages()     # oldest first
        for m, w in zip(mems, want):
            assert np.array_equal(m.frames, w)
    finally:
        host.close()
