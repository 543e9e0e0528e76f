"""Free page reporting, guest side: the Linux rules (delay, order threshold, capacity, budget,
watermark, reported marks) against a real GuestMemory whose host discards with MADV_DONTNEED."""
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gphint
from gphint import measure
from gphint.errors import ConfigError
from gphint.guest.allocator import BuddyAllocator
from gphint.guest.reporting import IDLE, REQUESTED, PageReporting
from gphint.states import PageState

from helpers import pattern


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class Host:
    """The host end of the reporting device: discards reported runs (state-aware, so a STABLE
    page in a report would raise) and remembers what it was told."""

    def __init__(self, mem, fail=False):
        self.mem, self.fail, self.calls = mem, fail, []

    def __call__(self, runs):
        self.calls.append(runs.copy())
        if self.fail:
            return False
        self.mem.discard(runs)
        return True

    @property
    def pages(self):
        return int(sum(r[:, 1].sum() for r in self.calls))


def test_first_pass_runs_delay_after_registration_not_sooner(mem_and_allocator):
    mem, a = mem_and_allocator
    clock, host = FakeClock(), Host(mem)
    r = PageReporting(a, host, order=9, capacity=4, clock=clock)
    assert r.state == REQUESTED and r.due_at == 102.0
    assert r.poll(101.99) == 0 and host.calls == []
    clock.t = 102.0
    assert r.poll() == 8192                # all memory starts free: all of it is reported
    assert r.state == IDLE and r.due_at is None
    assert a.reported_mask().all()
    assert r.poll(1000.0) == 0             # idle: nothing more without a free


def test_a_big_free_requests_a_pass_and_later_frees_do_not_move_it(mem_and_allocator):
    mem, a = mem_and_allocator
    clock, host = FakeClock(), Host(mem)
    r = PageReporting(a, host, order=9, capacity=4, clock=clock)
    r.poll(102.0)
    blocks = [a.alloc_block(9) for _ in range(3)]
    assert r.state == IDLE
    clock.t = 110.0
    a.free_block(blocks[0], 9)
    assert r.state == REQUESTED and r.due_at == 112.0
    clock.t = 111.5
    a.free_block(blocks[1], 9)             # not rescheduled: still due at 112
    assert r.due_at == 112.0
    assert r.poll(111.9) == 0
    # the two freed blocks merged into one of order 10, and the half left over when the third
    # alloc_block split a reported block is unreported (as Linux's expand() leaves it): 1024 + 512
    assert r.poll(112.0) == 1536
    assert r.stats["passes"] == 2


def test_a_free_that_leaves_only_small_blocks_requests_nothing(mem_and_allocator):
    mem, a = mem_and_allocator
    r = PageReporting(a, Host(mem), order=9, capacity=4, clock=FakeClock())
    r.poll(102.0)
    pages = a.alloc(100)
    a.free(pages[::2])                      # isolated single pages: orders < 9
    assert r.state == IDLE


def test_reported_pages_leave_rss_and_held_pages_keep_their_bytes(mem_and_allocator):
    mem, a = mem_and_allocator
    everything = a.alloc(mem.npages)
    mem.frames[everything] = 1              # touch every frame: all resident
    keep = everything[:1024]                # one whole order-10 block the guest keeps
    data = pattern(1024, seed=5)
    mem.frames[keep] = data
    a.free(everything[1024:])
    assert mem.resident_pages() == mem.npages
    rss_before = measure.rss_bytes()
    host = Host(mem)
    r = PageReporting(a, host, order=9, capacity=4, clock=FakeClock())
    reported = r.poll(102.0)
    assert reported == host.pages == 7 * 1024
    assert r.stats["pages_reported"] == reported and r.stats["blocks_reported"] == 7
    assert r.stats["report_calls"] == 2     # a full batch of 4 and the final flush of 3
    resident = mem.residency()
    assert mem.resident_pages() == mem.npages - reported
    assert resident[keep].all() and not resident[a.reported_mask()].any()
    assert rss_before - measure.rss_bytes() >= 0.8 * reported * mem.page_size
    assert np.array_equal(mem.frames[keep], data)
    assert mem.census() == {"Sr": 1024, "Uz": 7 * 1024}


def test_fragments_below_the_reporting_order_are_never_reported(mem_and_allocator):
    mem, a = mem_and_allocator
    r = PageReporting(a, Host(mem), order=5, capacity=4, clock=FakeClock())
    everything = a.alloc(mem.npages)
    mem.frames[everything] = 1
    r.poll(102.0)                           # nothing free: nothing to report
    a.free(everything[::2])                 # 4096 free pages, all single
    a.free(np.arange(64, 96)[1::2])         # pages 64..95 now free: one order-5 block
    r.request()
    r.poll(1000.0)
    assert r.stats["pages_reported"] == 32
    assert np.flatnonzero(a.reported_mask()).tolist() == list(range(64, 96))
    assert mem.resident_pages() == mem.npages - 32    # the 4096 fragments stay resident


def test_the_budget_reports_about_a_sixteenth_of_a_list_per_pass_then_reschedules(mem_and_allocator):
    mem, a = mem_and_allocator
    a3 = BuddyAllocator(mem, max_order=3)   # 1024 free blocks of order 3
    host = Host(mem)
    r = PageReporting(a3, host, order=3, capacity=4, clock=FakeClock(), low_watermark_pages=0)
    first = r.poll(102.0)
    budget = -(-1024 // (4 * 16))           # 16 reports allowed, Linux checks "< 0": 17 calls
    assert r.stats["report_calls"] == budget + 1
    assert first == (budget + 1) * 4 * 8
    assert 1024 / 16 <= first / 8 <= 1024 / 8
    assert r.state == REQUESTED and r.due_at == 104.0
    t, passes = 104.0, 1
    while r.state != IDLE:
        r.poll(t)
        t, passes = t + 2.0, passes + 1
    assert a3.reported_mask().all() and r.stats["pages_reported"] == mem.npages
    assert passes >= 1024 // ((budget + 1) * 4)


def test_below_the_watermark_a_pass_reports_nothing(mem_and_allocator):
    mem, a = mem_and_allocator
    host = Host(mem)
    r = PageReporting(a, host, order=9, capacity=4, clock=FakeClock(), low_watermark_pages=1000)
    assert r.watermark_pages == 1000 + 4 * 512
    a.alloc(mem.npages - 3000)              # 3000 free < 3048
    assert r.poll(102.0) == 0 and host.calls == [] and r.stats["skipped_watermark"] == 1


def test_a_failed_report_puts_blocks_back_unreported(mem_and_allocator):
    mem, a = mem_and_allocator
    r = PageReporting(a, Host(mem, fail=True), order=9, capacity=4, clock=FakeClock())
    r.poll(102.0)
    assert r.stats["report_errors"] == 1 and r.stats["pages_reported"] == 0
    assert not a.reported_mask().any()
    assert a.free_pages == mem.npages and a.isolated_pages == 0

    def boom(runs):
        raise OSError("device gone")
    r2 = PageReporting(a, boom, order=9, capacity=4, clock=FakeClock())
    with pytest.raises(OSError, match="device gone"):
        r2.poll(102.0)
    assert a.free_pages == mem.npages and not a.reported_mask().any()


def test_blocks_being_reported_are_isolated_and_cannot_be_allocated(mem_and_allocator):
    mem, a = mem_and_allocator
    seen = {}

    def report(runs):
        seen["isolated"] = a.isolated_pages
        seen["free"] = a.free_pages
        got = a.alloc(a.free_pages)         # everything allocatable
        seen["overlap"] = int(np.isin(got, np.concatenate([np.arange(f, f + n) for f, n in runs])).sum())
        a.free(got)
        return True
    r = PageReporting(a, report, order=9, capacity=4, clock=FakeClock())
    r.poll(102.0)
    assert seen["isolated"] == 4096 and seen["free"] == 4096 and seen["overlap"] == 0


def test_a_reported_block_that_is_allocated_and_freed_is_reported_again(mem_and_allocator):
    mem, a = mem_and_allocator
    host = Host(mem)
    r = PageReporting(a, host, order=9, capacity=4, clock=FakeClock())
    r.poll(102.0)
    first = a.alloc_block(10)
    mem.frames[first:first + 1024] = 7
    assert not a.reported_mask()[first:first + 1024].any()
    assert (mem.usage(np.arange(first, first + 1024)) == PageState.STABLE).all()
    a.free_block(first, 10)
    assert r.state == REQUESTED
    assert r.poll(200.0) == 1024
    assert not mem.residency()[first:first + 1024].any()


@pytest.mark.parametrize("kwargs, word", [({"order": 11}, "reporting order"), ({"capacity": 0}, "capacity"),
                                          ({"delay_s": -1}, "delay_s"), ({"low_watermark_pages": -5}, "watermark"),
                                          ({"report": 3}, "callable")])
def test_bad_configuration_names_the_value(mem_and_allocator, kwargs, word):
    mem, a = mem_and_allocator
    args = {"report": Host(mem)}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=word):
        PageReporting(a, **args)


def test_a_block_allocated_while_a_batch_is_reported_is_skipped_not_reported(mem_and_allocator):
    mem, a = mem_and_allocator
    taken = []

    def report(runs):
        if not taken:
            taken.append(a.alloc_block(10))   # one of the blocks the pass has not reached yet
        mem.discard(runs)
        return True
    r = PageReporting(a, report, order=9, capacity=4, clock=FakeClock())
    assert r.poll(102.0) == 7 * 1024
    first = taken[0]
    assert a.allocated_mask()[first:first + 1024].all()
    assert not a.reported_mask()[first:first + 1024].any()
    assert (mem.usage(np.arange(first, first + 1024)) == PageState.STABLE).all()


OPS = st.lists(st.one_of(st.tuples(st.just("alloc"), st.integers(1, 300)),
                         st.tuples(st.just("free"), st.integers(0, 10 ** 6)),
                         st.tuples(st.just("pass"), st.just(0))),
               min_size=1, max_size=30)


@settings(max_examples=25, deadline=None)
@given(ops=OPS, batch=st.sampled_from([1, 32]))
def test_reporting_interleaved_with_guest_churn_loses_nothing(ops, batch):
    """Random allocations (written with distinct content), frees and reporting passes: the
    host only ever discards whole free blocks of order >= 5 (mem.discard refuses a STABLE
    page), every byte the guest holds survives, and reported memory is not resident."""
    mem = gphint.GuestMemory("8M")
    try:
        a = BuddyAllocator(mem, max_order=8, batch=batch)
        host = Host(mem)
        clock = FakeClock()
        r = PageReporting(a, host, order=5, capacity=4, delay_s=2.0, clock=clock, low_watermark_pages=0)
        held = []
        for i, (op, arg) in enumerate(ops):
            if op == "alloc" and arg <= a.free_pages:
                pages = a.alloc(arg)
                data = pattern(arg, seed=i)
                mem.frames[pages] = data
                held.append((pages, data))
            elif op == "free" and held:
                a.free(held.pop(arg % len(held))[0])
            elif op == "pass":
                clock.t += 2.0
                r.poll()
        for runs in host.calls:
            assert (runs[:, 1] >= 32).all() and (runs[:, 0] % runs[:, 1] == 0).all()
        for pages, data in held:
            assert np.array_equal(mem.frames[pages], data)
        assert not mem.residency()[a.reported_mask()].any()
        assert r.stats["pages_reported"] == host.pages
    finally:
        mem.close()


def test_a_pass_in_a_host_thread_races_guest_churn_and_loses_nothing():
    """The host polls from its own thread (as gphint.Host does) while the guest allocates,
    writes and frees: every discard is of UNUSED pages (mem.discard would refuse others) and
    every page the guest holds keeps its bytes."""
    mem = gphint.GuestMemory("16M")
    errors, stop = [], threading.Event()
    a = BuddyAllocator(mem, max_order=8, batch=64)
    host = Host(mem)
    r = PageReporting(a, host, order=5, capacity=4, delay_s=0.0, low_watermark_pages=0)

    def host_loop():
        try:
            while not stop.is_set():
                r.poll()
        except Exception as e:      # surfaced below, never lost in the thread
            errors.append(e)
    t = threading.Thread(target=host_loop)
    t.start()
    try:
        rng = np.random.default_rng(2)
        held = []
        deadline = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < deadline:
            i += 1
            n = int(rng.integers(1, 200))
            if n <= a.free_pages:
                pages = a.alloc(n)
                data = np.full((n, mem.page_size), i % 251, dtype=np.uint8)
                mem.frames[pages] = data
                held.append((pages, data))
            if len(held) > 20:
                a.free(held.pop(int(rng.integers(0, len(held))))[0])
    finally:
        stop.set()
        t.join()
    try:
        assert errors == []
        assert host.pages > 0 and r.stats["passes"] > 1
        for pages, data in held:
            assert np.array_equal(mem.frames[pages], data)
    finally:
        mem.close()
