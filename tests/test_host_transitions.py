"""The host's Sp -> Sz transition (ext/hostops.c gph_host_drop_preserved; its pure-Python reading
gphint._fallback.drop_preserved): a preserved page nobody needs gives its swap copy up -- and
nothing else changes.  The two readings must leave the same states, records and slot tables."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import PageState, _fallback
from gphint.host.hostswap import fault_service_available
from gphint.states import pair_name

from helpers import pattern

SP, SZ, SR, UZ, VR = 0x02, 0x03, 0x00, 0x07, 0x0C


def test_the_pure_reading_drops_exactly_the_preserved_pages():
    states = np.array([SP, SP | 0x10, SR, UZ, VR, SP, SP | 0x40, SZ], dtype=np.uint8)
    store = np.array([5, 5, 0, 0, 0, 5, 5, 0], dtype=np.int32)
    slot = np.array([3, 4, 0, 0, 0, 7, 8, 0], dtype=np.int64)
    used = np.zeros(16, dtype=np.uint8)
    used[[3, 4, 7, 8]] = 1
    got = _fallback.drop_preserved(states, np.arange(8), store, slot, {5: used})
    assert got == 2                                           # pages 0 and 5; held ones stay
    assert [pair_name(s) for s in states[[0, 5]]] == ["Sz", "Sz"]
    assert list(states[[1, 2, 3, 4, 6, 7]]) == [SP | 0x10, SR, UZ, VR, SP | 0x40, SZ]
    assert list(store) == [0, 5, 0, 0, 0, 0, 5, 0]
    assert list(np.flatnonzero(used)) == [4, 8]


@pytest.mark.skipif(not fault_service_available()[0], reason="needs the discard-fault service: %s"
                    % fault_service_available()[1])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(swapped=st.sets(st.integers(0, 63), max_size=40), volatile=st.sets(st.integers(0, 63), max_size=20),
       asked=st.sets(st.integers(0, 63), max_size=64))
def test_compiled_and_pure_drops_agree_and_the_rest_comes_back(swapped, volatile, asked):
    svc = gphint.FaultService()
    mem = gphint.GuestMemory(64 * 4096)
    swap = gphint.HostSwap("1M")
    try:
        svc.register(mem)
        data = pattern(64, seed=len(swapped))
        mem.frames[:] = data
        vol = np.array(sorted(volatile - swapped), dtype=np.int64)
        mem.set_state(vol, PageState.VOLATILE)                # not preserved: never dropped
        out = np.array(sorted(swapped), dtype=np.int64)
        assert svc.swap_out(mem, out, swap) == out.size       # Sr -> Sp
        reg = svc._regs[id(mem)]
        states, store, slot = mem.states.copy(), reg.swap_store.copy(), reg.swap_slot.copy()
        used = swap.slot_used.copy()
        ask = np.array(sorted(asked), dtype=np.int64)
        expected = _fallback.drop_preserved(states, ask, store, slot, {swap.id: used})
        assert svc.drop_preserved(mem, ask) == expected == len(swapped & asked)
        assert np.array_equal(mem.states, states)
        assert np.array_equal(reg.swap_store, store) and np.array_equal(swap.slot_used, used)
        dropped = np.array(sorted(swapped & asked), dtype=np.int64)
        kept = np.array(sorted(set(range(64)) - (swapped & asked)), dtype=np.int64)
        assert not mem.frames[dropped].any()                  # zero pages, never stale copies
        assert np.array_equal(mem.frames[kept], data[kept])   # everything else byte-exact
        assert swap.used_slots == 0                           # the swap-ins freed the rest
    finally:
        svc.stop()
        mem.close()
        swap.close()
