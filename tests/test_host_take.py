"""The host's reclaim tier in one C call (ext/hostops.c gph_host_take: choose by the state bytes
and the host's residency sample, then pick_run -> madvise -> finish_run; gph_host_count: the
same choice counted over many guests) keeps every guarantee of the per-page protocol
(docs/state-protocol.md):

- only unheld UNUSED/VOLATILE pages the sample shows resident are chosen, in page order, at
  most `need`; a STABLE, POT_VOLATILE, held or zero page is never taken, whatever its word
  neighbours are -- the C agrees byte for byte with its pure reading (gphint._fallback.host_take);
- a guest thread changing states and writing inside the runs while the host takes them loses
  nothing: every page it kept reads back byte for byte, every discarded V page reloads its file;
- the residency sample (gph_residency_track) says what the numpy sample said.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import PageState, _fallback
from gphint._mechanism import mech
from gphint.faults import usage_mask
from gphint.host.residency import FleetResidency, ResidencyTracker
from gphint.states import pair_name
from helpers import EXAMPLES, PAGE, pattern
from test_host_run_pick import race_guests_against, served  # noqa: F401  (the fixture)

BUSY, FILLED, SERVING = 0x10, 0x20, 0x40
SR, SZ, UR, UF, UZ, VR, VF, VZ, PR = 0x00, 0x03, 0x04, 0x05, 0x07, 0x0C, 0x0D, 0x0F, 0x08
UV = (PageState.UNUSED, PageState.VOLATILE)


def count(svc, mems, states, residents, advice="dontneed"):
    """svc.count_candidates over a fleet of mems whose samples are `residents`."""
    fleet = FleetResidency(mems)
    for tr, res in zip(fleet.trackers, residents):
        tr.resident[:] = res
    return svc.count_candidates(fleet, states, advice).tolist()


def test_takes_only_resident_unheld_u_and_v_pages_in_order_up_to_need(served):
    svc, make = served.svc, served.make
    mem = make(64)
    data = pattern(64, seed=3)
    mem.frames[:] = data
    mem.set_state(np.arange(64), PageState.UNUSED)
    mem._states[40:48] = PR                               # POT_VOLATILE: the detach path's, never here
    mem.set_state([3], PageState.STABLE)
    mem._states[12] |= BUSY                               # another host operation holds it
    resident = mem.residency()
    resident[20] = False                                  # the sample says it is not resident
    n, chosen = svc.take(mem, UV, resident, 30, host_batch=7)
    # pages 0..32 less 3 (stable), 12 (held), 20 (not resident in the sample): 30 chosen
    want = np.setdiff1d(np.arange(33), [3, 12, 20])
    assert (n, chosen) == (30, 30)
    assert (mem.states[want] == UZ).all()
    assert not resident[want].any() and resident[33:40].all()   # chosen pages forgotten, no more
    assert pair_name(mem.states[3]) == "Sr" and mem.states[12] == UR | BUSY
    assert (mem.states[33:40] == UR).all() and (mem.states[40:48] == PR).all()
    keep = np.setdiff1d(np.arange(64), want)
    unheld = keep[keep != 12]
    assert np.array_equal(mem.frames[unheld], data[unheld])      # never discarded
    assert mem.stats["discard_calls"] >= 5                       # 30 chosen, 7 per submission
    # left: 20 (resident in a new sample), 33..39, 48..63; not the held 12
    assert count(svc, [mem], UV, [mem.residency()]) == [1 + 7 + 16]


def test_refuses_pot_volatile_and_counts_zero_for_a_gone_guest(served):
    svc, make = served.svc, served.make
    mem, other = make(16), make(16)
    with pytest.raises(gphint.GphintError):
        svc._thread.host_take(svc._reg(mem).rid, usage_mask([PageState.POT_VOLATILE]),
                              np.ones(16, dtype=np.uint8), 4, 4, 0, 1, -1)
    other.frames[:] = 1                                   # Ur: touched, then freed
    other.set_state(np.arange(16), PageState.UNUSED)
    res = [np.ones(16, dtype=bool), np.ones(16, dtype=bool)]
    assert count(svc, [mem, other], UV, res) == [0, 16]
    svc.unregister(other, materialize=False)
    assert count(svc, [mem, other], UV, res) == [0, 0]
    fleet = FleetResidency([mem, other])
    assert svc.sample_fleet(fleet, 1) is None      # not every guest served: guest by guest
    svc.register(other)


PAIRS = (SR, SZ, UR, UF, UZ, VR, VF, VZ, PR)
state_bytes = st.tuples(st.sampled_from(PAIRS), st.sampled_from((0, 0, 0, BUSY, SERVING))).map(
    lambda t: t[0] | t[1])


@settings(max_examples=max(EXAMPLES, 25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), need=st.integers(0, 120), host_batch=st.integers(1, 40),
       tiers=st.sampled_from((UV, (PageState.UNUSED,), (PageState.VOLATILE,))),
       advice=st.sampled_from(("dontneed", "free")))
def test_compiled_and_pure_readings_agree(served, data, need, host_batch, tiers, advice):
    """Random states in long same-valued stretches (so whole words happen), a random residency
    sample: the C and the pure reading choose and take the same pages and leave the same
    states and sample; what was not taken keeps its bytes; the count is the candidates'."""
    if advice == "free" and not gphint.caps.has("madv_free"):
        pytest.skip(gphint.caps.probe().features["madv_free"].reason)
    svc, make = served.svc, served.make
    npages = 100
    if "mem" not in served.cache:
        served.cache["mem"] = make(npages)
    mem = served.cache["mem"]
    content = pattern(npages, seed=need)
    mem._states[:] = UZ              # the last example's discards fault back in as zero pages
    mem.frames[:] = content
    stretches = data.draw(st.lists(st.tuples(state_bytes, st.integers(1, 20)), min_size=1, max_size=12))
    states = np.resize(np.concatenate([np.full(n, b, dtype=np.uint8) for b, n in stretches]), npages)
    for i in data.draw(st.sets(st.integers(0, npages - 1), max_size=6)):
        states[i] = data.draw(state_bytes)
    mem._states[:] = states
    resident = np.ones(npages, dtype=bool)
    for a, n in data.draw(st.lists(st.tuples(st.integers(0, npages - 1), st.integers(1, 12)), max_size=4)):
        resident[a:a + n] = False
    mask, code = usage_mask(tiers), 1 if advice == "free" else 0
    assert count(svc, [mem], tiers, [resident], advice) == \
        [int(np.count_nonzero(_fallback.host_candidates(states, resident, mask, code)))]
    expect, expect_res = states.copy(), resident.view(np.uint8).copy()
    taken = _fallback.host_take(expect, expect_res, mask, code, need)
    got = resident.copy()
    n, chosen = svc.take(mem, tiers, got, need, host_batch, advice)
    assert (n, chosen) == (taken.size, taken.size)
    assert np.array_equal(mem.states, expect), (mem.states, expect)
    assert np.array_equal(got.view(np.uint8), expect_res)
    kept = np.setdiff1d(np.arange(npages), taken)
    unheld = kept[(mem.states[kept] & (BUSY | SERVING)) == 0]
    assert np.array_equal(mem.frames[unheld], content[unheld])
    mem._states[:] = UZ      # no hold outlives the example


def test_the_fleet_calls_sample_count_and_take_each_guest_as_its_own_call_would(served):
    """sample_fleet = every guest's own sample; take_fleet with quotas = take() guest by guest
    (the pure reading), the guests' tables at their offsets and nowhere else."""
    svc, make = served.svc, served.make
    mems = [make(n) for n in (24, 40, 17)]
    rng = np.random.default_rng(4)
    for m in mems:
        m.frames[: m.npages * 3 // 4] = 1
        m._states[:] = rng.choice(np.array([SR, UR, VR, UZ, PR, UR | BUSY], dtype=np.uint8), m.npages)
    fleet = FleetResidency(mems)
    own = [ResidencyTracker(m) for m in mems]
    assert svc.sample_fleet(fleet, 3) == sum(tr.sample(3) for tr in own)
    for tr, mine in zip(fleet.trackers, own):
        assert np.array_equal(tr.resident, mine.resident) and np.array_equal(tr.since_tick, mine.since_tick)
    assert fleet.counts.tolist() == [tr.resident_npages for tr in own]
    quota = np.array([5, 0, 100], dtype=np.int64)
    expect = []
    for m, tr, q in zip(mems, own, quota.tolist()):
        st = m.states.copy()
        expect.append((_fallback.host_take(st, tr.resident.view(np.uint8), usage_mask(UV), 0, q), st))
    got = svc.take_fleet(fleet, UV, quota, host_batch=3)
    assert got.tolist() == [[t.size, t.size] for t, _ in expect]
    for m, tr, mine, (_, st) in zip(mems, fleet.trackers, own, expect):
        assert np.array_equal(m.states, st)
        assert np.array_equal(tr.resident, mine.resident)
    assert mems[1].stats["discard_calls"] == 0


@pytest.mark.parametrize("race_delay_ns", [0, 100_000], ids=["natural", "widened-holds"])
def test_guest_threads_flipping_states_inside_the_runs_lose_nothing(served, tmp_path, stress, race_delay_ns):
    """The host takes both tiers in passes (a fresh residency sample each) while two guest
    threads allocate, write, read back and free inside its U runs and a third reads, stabilises
    and re-volatilises its V pages (test_host_run_pick's race, the host's call swapped)."""
    svc, make = served.svc, served.make
    mem = make(2048)
    tracker = ResidencyTracker(mem)
    chosen = [0]

    def host_pass(npass):
        tracker.sample(npass + 1)
        n, c = svc.take(mem, UV, tracker.resident, mem.npages, 97)
        chosen[0] += c
        return n
    got = race_guests_against(host_pass, svc, mem, tmp_path, 30.0 if stress else 2.5, race_delay_ns, seed=9)
    print("host take race: %d passes, %d discarded (%d chosen), %d guest writes" % (
        got[0], got[1], chosen[0], got[2]))


def test_residency_sample_matches_the_kernel_and_dates_arrivals(new_mem):
    """Both mechanisms: resident = mincore, since_tick set only where a page arrived, ever
    accumulates -- what the numpy sample computed."""
    mem = new_mem(40 * PAGE)
    tr = ResidencyTracker(mem)
    assert tr.sample(1) == 0 and not tr.ever.any()
    mem.frames[3:17] = 1
    assert tr.sample(2) == 14
    assert np.array_equal(tr.resident, mem.residency())
    assert (tr.since_tick[3:17] == 2).all() and (tr.since_tick[17:] == 0).all()
    mem.frames[30:33] = 1
    mem.discard_raw(np.arange(3, 8))
    assert tr.sample(3) == 12
    assert (tr.since_tick[8:17] == 2).all() and (tr.since_tick[30:33] == 3).all()
    assert not tr.resident[3:8].any() and tr.ever[3:8].all() and tr.touched_npages == 17
    mem.frames[4] = 2
    assert tr.sample(4) == 13 and tr.since_tick[4] == 4
    mem.discard_raw(np.arange(mem.npages))
    assert tr.sample(5) == 0 and not tr.resident.any() and tr.touched_npages == 17
    with pytest.raises(ValueError):
        mech.residency_track(mem._region, PAGE, np.zeros(39, dtype=np.uint8), tr.resident.view(np.uint8),
                             tr.since_tick, tr.ever.view(np.uint8), 5)


def test_a_host_takes_each_guests_share_of_a_tier_in_one_call(served, tmp_path):
    """Host.step over three served guests: the UNUSED tier's need split in proportion to what
    each guest can give (spec.share), then VOLATILE; each slot counts what it gave, and every
    page that was not UNUSED reads back what it held."""
    from gphint.faults import FileStore
    from gphint.host import Host
    from gphint.host.spec import share
    svc, make = served.svc, served.make
    mems = [make(256) for _ in range(3)]
    data = pattern(256, seed=2)
    data.tofile(tmp_path / "f")
    store = FileStore(tmp_path / "f")
    try:
        for m, nu in zip(mems, (100, 50, 10)):
            m.frames[:] = data
            m.set_backing(np.arange(256), store, np.arange(256) * PAGE)
            m.set_state(np.arange(nu), PageState.UNUSED)
            m.set_state(np.arange(200, 240), PageState.VOLATILE)
        resident = 3 * 256
        budget = (resident - 80) * PAGE             # 80 pages: all from the UNUSED tier
        host = Host(mems, budget, "cmma", fault_service=svc, headroom=0.0)
        assert host.step() == 80
        want = share([100, 50, 10], 80).tolist()
        assert [s.discarded.get("UNUSED", 0) for s in host.slots] == want
        assert [m.resident_pages() for m in mems] == [256 - q for q in want]
        host.budget_bytes = (resident - 200) * PAGE  # the rest of UNUSED (80), then 40 VOLATILE
        assert host.step() == 120
        assert [s.discarded.get("UNUSED", 0) for s in host.slots] == [100, 50, 10]
        assert sum(s.discarded.get("VOLATILE", 0) for s in host.slots) == 40
        host.close()
        for m in mems:
            keep = np.arange(100, 256)
            assert np.array_equal(m.frames[keep], data[keep])   # V pages reload their file
    finally:
        store.close()
