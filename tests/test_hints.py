"""Batched state transitions: capacity, supersession, the safety order, and counters, against
the real set_state path of a GuestMemory."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint.errors import ConfigError
from gphint.guest.hints import HintBuffer
from gphint.states import PageState

S, U, V, P = PageState.STABLE, PageState.UNUSED, PageState.VOLATILE, PageState.POT_VOLATILE


def pages(*p):
    return np.array(p, dtype=np.int64)


def test_deferred_transitions_wait_for_capacity_then_go_in_one_call_per_state(mem):
    h = HintBuffer(mem, capacity=8)
    h.hint(np.arange(0, 5), U)
    h.hint(np.arange(5, 7), V)
    assert h.pending == 7 and h.hint_ops == 0
    assert (mem.usage(np.arange(7)) == S).all()          # nothing applied yet
    ops_before = mem.stats["hint_ops"]
    h.hint(pages(7), U)                                   # the 8th fills the buffer
    assert h.pending == 0
    assert h.hint_ops == 2 and mem.stats["hint_ops"] - ops_before == 2   # one per target state
    assert h.transitions == 8
    assert (mem.usage(np.arange(5)) == U).all() and (mem.usage(pages(5, 6)) == V).all()
    assert mem.usage(pages(7))[0] == U


def test_a_big_request_is_submitted_capacity_pages_per_call_and_the_rest_waits(mem):
    h = HintBuffer(mem, capacity=32)
    h.hint(np.arange(100), U)
    assert h.hint_ops == 3 and h.transitions == 96 and h.pending == 4
    h.flush()
    assert h.hint_ops == 4 and h.pending == 0
    assert (mem.usage(np.arange(100)) == U).all()


def test_capacity_one_is_the_unbatched_original(mem):
    h = HintBuffer(mem, capacity=1)
    h.hint(np.arange(10), U)
    assert h.hint_ops == 10 and h.transitions == 10 and h.pending == 0
    h.hint(np.arange(10), S)
    assert h.hint_ops == 20


def test_stable_is_applied_at_once_and_cancels_a_pending_unused(mem):
    h = HintBuffer(mem, capacity=1024)
    h.hint(np.arange(10), U)
    h.hint(np.arange(10), S)          # free then re-alloc within the batch
    assert h.pending == 0 and h.cancelled == 10 and h.transitions == 0
    h.flush()
    assert (mem.usage(np.arange(10)) == S).all()


def test_stable_of_an_unused_page_is_applied_before_hint_returns(mem):
    h = HintBuffer(mem, capacity=1024)
    h.hint(np.arange(10), U)
    h.flush()
    h.hint(np.arange(10), S)
    assert (mem.usage(np.arange(10)) == S).all() and h.pending == 0


def test_a_later_transition_supersedes_an_earlier_one_in_the_same_batch(mem):
    h = HintBuffer(mem, capacity=1024)
    h.hint(pages(1, 2), V)
    h.hint(pages(2), U)
    assert h.pending == 2
    h.flush()
    assert mem.usage(pages(1))[0] == V and mem.usage(pages(2))[0] == U


def test_transitions_between_non_stable_states_are_never_deferred(mem):
    """VOLATILE -> POT_VOLATILE makes a page less discardable: it cannot wait."""
    h = HintBuffer(mem, capacity=1024)
    h.hint(pages(3), V)
    h.flush()
    h.hint(pages(3), P)
    assert mem.usage(pages(3))[0] == P and h.pending == 0
    h.hint(pages(3), U)                # freeing a non-stable page: at once too
    assert mem.usage(pages(3))[0] == U


def test_disabled_buffer_never_hints(mem):
    h = HintBuffer(mem, capacity=1, enabled=False)
    h.hint(np.arange(10), U)
    h.flush()
    assert h.hint_ops == 0 and mem.census() == {"Sr": mem.npages}


@pytest.mark.parametrize("cap", [0, -3, 2.0, True, "32"])
def test_bad_capacity_names_it(mem, cap):
    with pytest.raises(ConfigError, match="capacity"):
        HintBuffer(mem, capacity=cap)


def test_an_unknown_state_names_it(mem):
    h = HintBuffer(mem)
    with pytest.raises(ConfigError, match="'gone'"):
        h.hint(pages(1), "gone")


def test_queue_stays_bounded_under_free_realloc_churn(mem):
    h = HintBuffer(mem, capacity=128)
    for _ in range(200):                 # 12800 deferrals, all cancelled: never a full buffer
        h.hint(np.arange(64), U)
        h.hint(np.arange(64), S)
    assert h.stats["queued"] <= 4 * 128 + 1024 + 64 and h.pending == 0 and h.hint_ops == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.sampled_from([1, 3, 16]),
       ops=st.lists(st.tuples(st.lists(st.integers(0, 31), min_size=1, max_size=12, unique=True),
                              st.sampled_from([S, U, V])), max_size=30))
def test_after_flush_each_page_is_in_its_last_requested_state_and_stable_is_never_late(mem, cap, ops):
    """The model: the last request per page wins; a STABLE request is visible immediately;
    a page with a transition still pending is STABLE (deferral only ever delays discardability)."""
    h = HintBuffer(mem, capacity=cap)
    h.hint(np.arange(32), S)
    h.flush()
    last = {}
    for req, state in ops:
        h.hint(np.array(req), state)
        for p in req:
            last[p] = state
        if state == S:
            assert (mem.usage(np.array(req)) == S).all()
        pending = h.pending_pages()
        assert (mem.usage(pending) == S).all()
        assert pending.size == h.pending
    h.flush()
    for p, state in last.items():
        assert mem.usage(pages(p))[0] == state


def test_queue_stays_bounded_under_single_page_churn(mem):
    h = HintBuffer(mem, capacity=128)
    for _ in range(3000):
        h.hint(pages(5), U)
        h.hint(pages(5), S)
    assert h.stats["queued"] <= 4 * 128 + 1024 + 1 and h.pending == 0 and h.hint_ops == 0


# --- errors: the queue's refusals become the errors that name them ------------------------------
def zeroed_stable(mem, page):
    """Page in Sz: freed, discarded by the host, allocated again (logically zero, no content)."""
    h = HintBuffer(mem, capacity=1)
    h.hint(pages(page), U)
    mem.discard(pages(page))
    h.hint(pages(page), S)
    assert mem.census().get("Sz") == 1


def test_a_deferred_forbidden_transition_raises_at_submission_naming_page_and_states(mem):
    zeroed_stable(mem, 9)
    h = HintBuffer(mem, capacity=4)
    h.hint(pages(9), V)                     # Sz -> V: no content the guest vouches for
    assert h.pending == 1                   # deferred: a transition out of STABLE
    with pytest.raises(gphint.StateError, match=r"page 9: Sz -> VOLATILE"):
        h.flush()
    assert h.pending == 0 and mem.census().get("Sz") == 1     # nothing half-done


def test_an_immediate_forbidden_transition_raises_before_hint_returns(mem):
    zeroed_stable(mem, 9)
    h = HintBuffer(mem, capacity=1)
    with pytest.raises(gphint.StateError, match="page 9"):
        h.hint(pages(9), V)


def test_the_rest_of_a_batch_is_applied_when_one_page_is_refused(mem):
    zeroed_stable(mem, 9)
    h = HintBuffer(mem, capacity=4)
    h.hint(pages(7, 8, 10), V)
    with pytest.raises(gphint.StateError, match="page 9"):
        h.hint(pages(9), V)                 # the 4th fills the batch: submitted, one refused
    assert (mem.usage(pages(7, 8, 10)) == V).all()


@pytest.mark.parametrize("bad", [-1, 8192])
def test_a_page_out_of_range_names_it_and_changes_nothing(mem, bad):
    h = HintBuffer(mem, capacity=4)
    with pytest.raises(gphint.ConfigError, match="page index %d out of range" % bad):
        h.hint(pages(1, bad), U)
    assert h.pending == 0 and mem.census() == {"Sr": mem.npages}


def test_a_closed_memory_refuses_hints(mem):
    h = HintBuffer(mem, capacity=4)
    mem.close()
    with pytest.raises(gphint.ClosedError):
        h.hint(pages(1), U)


def test_lists_and_other_integer_dtypes_are_accepted(mem):
    h = HintBuffer(mem, capacity=2)
    h.hint([1, 2], "unused")
    h.hint(np.array([3, 4], dtype=np.int32), int(V))
    h.hint(np.arange(10, dtype=np.int64)[5:9:2], U)       # not contiguous
    h.flush()
    assert list(mem.usage(pages(1, 2, 3, 4, 5, 7))) == [U, U, V, V, U, U]


def test_a_page_deferred_cancelled_and_deferred_again_is_submitted_once(mem):
    h = HintBuffer(mem, capacity=1024)
    h.hint(pages(1, 2, 3), U)
    h.hint(pages(2), S)                     # cancelled: its queue entry is dead
    h.hint(pages(2), V)                     # deferred again: a second entry for page 2
    assert h.pending == 3
    h.flush()
    assert h.transitions == 3 and h.pending == 0 and h.stats["queued"] == 0
    assert list(mem.usage(pages(1, 2, 3))) == [U, V, U]


def test_memory_counts_the_buffers_state_changes(mem):
    before = mem.stats["hint_ops"]
    h = HintBuffer(mem, capacity=8)
    h.hint(np.arange(20), U)                # two whole batches
    mem.set_state(pages(30), U)             # and one direct change
    assert h.hint_ops == 2 and mem.stats["hint_ops"] - before == 3


# --- the two mechanisms agree -----------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.sampled_from([1, 2, 5, 32]),
       ops=st.lists(st.tuples(st.lists(st.integers(0, 63), min_size=0, max_size=40, unique=True),
                              st.sampled_from([S, U, V, P, None])), max_size=40))
def test_compiled_and_pure_queues_agree_step_by_step(compiled_only, cap, ops):
    """The pure-Python twin is the spec's second reading: the same requests leave the same
    states, pending table and counters after every step (None = flush)."""
    from gphint import _fallback, _mech
    from gphint.states import NEXT_TABLE
    sides = []
    for impl in (_mech, _fallback):
        states = np.zeros(64, np.uint8)
        pend = np.full(64, 0xFF, np.uint8)
        ops_total = np.zeros(1, np.uint64)
        q = impl.HintQueue(states, pend, NEXT_TABLE, ops_total, cap)
        since = np.full(64, -1, np.int64)
        q.record_unused(since, 0)
        sides.append((q, states, pend, ops_total, since))
    for step, (req, state) in enumerate(ops):
        for q, *_ in sides:
            q.now_ns = step
            if state is None:
                q.submit(False)
            else:
                q.hint(np.array(req, dtype=np.int64), int(state))
        (qc, sc, pc, oc, tc), (qp, sp, pp, op, tp) = sides
        assert np.array_equal(sc, sp) and np.array_equal(pc, pp) and np.array_equal(tc, tp)
        assert (qc.npending, qc.hint_ops, qc.transitions, qc.cancelled, int(oc[0])) == \
               (qp.npending, qp.hint_ops, qp.transitions, qp.cancelled, int(op[0]))


class StepClock:
    def __init__(self):
        self.t = 10.0

    def __call__(self):
        return self.t


def test_a_free_is_dated_when_it_is_submitted_not_when_it_is_requested(mem):
    """unused_since_ns is the host's view: a page is UNUSED from the submission of its hint."""
    clock = StepClock()
    h = HintBuffer(mem, capacity=4, clock=clock)
    boot = h.unused_since_ns.copy()
    assert (boot == 10_000_000_000).all()                # created at t=10
    clock.t = 11.0
    h.hint(pages(0, 1, 2), U)                            # pending: not dated
    assert np.array_equal(h.unused_since_ns, boot)
    clock.t = 12.0
    h.hint(pages(3), U)                                  # fills the batch: all four submitted
    assert (h.unused_since_ns[:4] == 12_000_000_000).all()
    assert (h.unused_since_ns[4:] == boot[4:]).all()
    clock.t = 13.0
    h.hint(pages(0), S)                                  # re-allocated: the date stays, the
    h.hint(pages(0), U)                                  # state says STABLE, then pending again
    assert h.unused_since_ns[0] == 12_000_000_000
    clock.t = 14.0
    h.flush()
    assert h.unused_since_ns[0] == 14_000_000_000
    h.hint(pages(5), V)
    h.flush()
    clock.t = 15.0
    h.hint(pages(5), U)                                  # V -> U is applied at once
    assert h.unused_since_ns[5] == 15_000_000_000
    assert list(mem.usage(pages(0, 1, 5))) == [U, U, U]


def test_frees_are_dated_with_the_machine_clock_by_default(mem):
    import time
    h = HintBuffer(mem, capacity=1)
    lo = time.monotonic_ns()
    h.hint(pages(7), U)
    hi = time.monotonic_ns()
    assert lo <= h.unused_since_ns[7] <= hi


def test_a_deferred_pot_volatile_the_host_made_impossible_is_dropped_and_nothing_is_lost(compiled_only):
    """The guest defers S -> P (a page mapped writable); before the batch is submitted the host
    swaps the page out (Sr -> Sp).  Sp cannot become POT_VOLATILE (its content is not
    resident): the transition is dropped, the page stays STABLE, its bytes come back intact."""
    from gphint.faults import FaultService
    from gphint.stores import HostSwap
    if not gphint.caps.has("uffd_move"):
        pytest.skip(gphint.caps.probe().features["uffd_move"].reason)
    swap = HostSwap("1M")
    svc = FaultService(window="4K", swap=swap)
    m = gphint.GuestMemory("1M")
    try:
        svc.register(m)
        data = np.arange(8 * 4096, dtype=np.uint8).reshape(8, 4096) ^ 0x5A
        m.frames[:8] = data
        h = HintBuffer(m, capacity=16)
        h.hint(np.arange(8), P)                             # deferred: all 8 are STABLE
        assert svc.swap_out(m, pages(2, 5), swap) == 2      # the host preserves two of them
        h.flush()                                           # no StateError
        assert h.stats["dropped"] == 2
        assert list(m.usage(np.arange(8))) == [P, P, S, P, P, S, P, P]
        assert m.census()["Sp"] == 2
        assert np.array_equal(m.frames[:8], data)           # swapped pages come back on access
    finally:
        svc.stop()
        m.close()
        swap.close()


@pytest.mark.parametrize("code", [0x10, 0x05, -4])
def test_a_bad_usage_code_is_refused_even_for_no_pages(mem, code):
    h = HintBuffer(mem)
    with pytest.raises(gphint.ConfigError):
        h.hint(np.zeros(0, np.int64), code)
    with pytest.raises(gphint.ConfigError):
        h.hint(pages(1), code)
    assert h.pending == 0 and mem.census() == {"Sr": mem.npages}
