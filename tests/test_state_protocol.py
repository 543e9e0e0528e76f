"""The per-page state protocol, one interleaving at a time (docs/state-protocol.md).

A test-only delay held inside the host's and the fault thread's critical sections
(FaultService.set_race_delay) makes each window wide enough to land a guest action in it
deterministically; the outcome is then checked byte for byte."""
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState
from gphint.faults import FaultService, FileStore, HostSwap
from gphint.states import pair_name
from helpers import PAGE, pattern

needs_move = pytest.mark.skipif(not gphint.caps.has("uffd_move"),
                                reason=gphint.caps.probe().features["uffd_move"].reason)

DELAY_NS = 200_000_000   # 0.2 s inside each hold


@pytest.fixture(params=["holdbits", "hashed"])
def world(compiled_only, tmp_path, request):
    """Every interleaving runs with both ways of holding a page (docs/state-protocol.md)."""
    data = pattern(64, seed=31)
    path = tmp_path / "f"
    data.tofile(path)
    store = FileStore(path)
    swap = HostSwap("1M")
    svc = FaultService(window="4K", swap=swap, locking=request.param)
    mem = gphint.GuestMemory("1M")
    svc.register(mem)
    mem.frames[:64] = data
    mem.set_backing(np.arange(64), store, np.arange(64) * PAGE)
    yield svc, mem, data, swap
    svc.stop()
    mem.close()
    store.close()
    swap.close()


def in_background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def test_make_stable_reports_discarded_pages_and_keeps_the_rest(world):
    svc, mem, data, _ = world
    mem.set_state(np.arange(8), PageState.VOLATILE)
    svc.discard(mem, np.arange(4))
    got = mem.make_stable(np.arange(8))
    assert np.array_equal(got, np.arange(4))                 # Vz: not made stable
    assert [pair_name(s) for s in mem.states[:8]] == ["Vz"] * 4 + ["Sr"] * 4
    assert np.array_equal(mem.frames[4:8], data[4:8])


def test_guest_stable_first_host_pick_skips_the_page(world):
    """1. make_stable before the host's pick: the pick's CAS fails, nothing is discarded."""
    svc, mem, data, _ = world
    mem.set_state(np.arange(4), PageState.VOLATILE)
    mem.make_stable([2])
    assert svc.discard(mem, np.arange(4)) == 3
    assert pair_name(mem.states[2]) == "Sr" and mem.residency()[2]
    mem.frames[2] = 0x77                                      # the guest's write survives
    assert (mem.frames[2] == 0x77).all()


def test_make_stable_waits_out_an_inflight_discard_and_reports_it(world):
    """2. The host picked the page first: make_stable waits, then sees Vz and reports it."""
    svc, mem, data, _ = world
    mem.set_state(np.arange(4), PageState.VOLATILE)
    svc.set_race_delay(DELAY_NS)
    host, _ = in_background(lambda: svc.discard(mem, np.arange(4)))
    time.sleep(0.05)                                          # the host now holds the pages
    assert svc.is_held(mem, 1)                                # BUSY, or its lock
    t0 = time.monotonic()
    got = mem.make_stable([1])
    assert time.monotonic() - t0 > 0.1                        # it waited for the discard
    host.join(5)
    assert np.array_equal(got, [1]) and pair_name(mem.states[1]) == "Vz"
    assert np.array_equal(mem.frames[1], data[1])             # and the page reloads on access


@needs_move
def test_write_during_swap_out_is_not_lost(world):
    """3. A guest store while the host swaps the page out lands before or after the detach --
    either way its bytes come back."""
    svc, mem, data, swap = world
    svc.set_race_delay(DELAY_NS)
    host, out = in_background(lambda: svc.swap_out(mem, np.arange(8), swap))
    time.sleep(0.05)                                          # picked, not yet detached
    assert mem.residency()[3]
    mem.frames[3, :8] = 0xCD                                  # a store in the window
    host.join(5)
    assert out["r"] == 8
    svc.set_race_delay(0)
    expect = data[3].copy()
    expect[:8] = 0xCD
    assert np.array_equal(mem.frames[3], expect)
    assert np.array_equal(mem.frames[[0, 1, 2, 4, 5, 6, 7]], data[[0, 1, 2, 4, 5, 6, 7]])


@needs_move
def test_fault_on_a_page_being_swapped_out_waits_and_swaps_in(world):
    """3'. An access after the detach faults; the fault thread waits for the host's write and
    serves the page from swap."""
    svc, mem, data, swap = world
    svc.set_race_delay(DELAY_NS)
    host, _ = in_background(lambda: svc.swap_out(mem, np.arange(8), swap))
    time.sleep(0.3)        # past the pick delay: detached, not yet written (second window)
    assert not mem.residency()[:8].any() and svc.is_held(mem, 0)
    t0 = time.monotonic()
    assert np.array_equal(mem.frames[:8], data[:8])
    assert time.monotonic() - t0 > 0.02                          # it waited for the write
    host.join(5)
    assert svc.stats(mem)["swap_ins"] == 8


def test_free_waits_for_a_reload_in_progress(world):
    """5. The fault thread holds a page it is filling; the guest's free waits, so a page freed and
    re-allocated never receives the old file bytes afterwards."""
    svc, mem, data, _ = world
    mem.set_state([5], PageState.VOLATILE)
    svc.discard(mem, [5])
    svc.set_race_delay(DELAY_NS)
    reader, out = in_background(lambda: mem.frames[5].copy())     # discard fault
    time.sleep(0.05)
    assert svc.is_held(mem, 5)                                    # SERVING, or its lock
    t0 = time.monotonic()
    mem.set_state([5], PageState.UNUSED)
    assert time.monotonic() - t0 > 0.1
    reader.join(5)
    assert np.array_equal(out["r"], data[5])
    mem.set_state([5], PageState.STABLE)
    mem.frames[5] = 0                                             # the guest zeroes its new page
    assert (mem.frames[5] == 0).all()


def test_access_during_a_discard_is_served_and_stays_resident(world):
    """6. The host holds a V page across its madvise; an access after the madvise faults, the
    fault thread reloads it (FILLED) and the host's finish leaves it resident, not zero."""
    svc, mem, data, _ = world
    mem.set_state(np.arange(4), PageState.VOLATILE)
    svc.set_race_delay(DELAY_NS)
    mem.discard_raw(np.arange(4))        # the memory is already gone: accesses fault at once
    host, _ = in_background(lambda: svc.discard(mem, np.arange(4)))
    time.sleep(0.05)
    assert np.array_equal(mem.frames[2], data[2])                 # served while the host holds it
    host.join(5)
    assert pair_name(mem.states[2]) == "Vr" and pair_name(mem.states[0]) == "Vz"
    assert np.array_equal(mem.frames[:4], data[:4])


@needs_move
def test_guest_changes_are_refused_when_the_contract_forbids_them(world):
    svc, mem, _, swap = world
    svc.swap_out(mem, [0], swap)
    with pytest.raises(gphint.StateError, match="Sp -> POT_VOLATILE"):
        mem.set_state([0], PageState.POT_VOLATILE)
    mem.set_state([1], PageState.VOLATILE)
    svc.discard(mem, [1])
    with pytest.raises(gphint.StateError, match="Vz -> STABLE"):
        mem.set_state([1], PageState.STABLE)     # a discard fault: make_stable decides
