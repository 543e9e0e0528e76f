"""What does one free page reporting pass cost per page, host and guest side?

reporting: a pass (mm/page_reporting.c's rules) over a guest whose memory is all free: isolate,
report (host MADV_DONTNEED), put back -- at most ~1/16 of each free list per pass (group "host
take-back"); with a report that takes nothing, the guest's share of reporting (group "guest
hints").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
import numpy as np
import pytest

from gphint.host import Host

from benchlib import BENCH_MB, ROUNDS, bench_guest


@pytest.mark.parametrize("side", ["host", "guest"])
def test_reporting_pass(benchmark, mem, side):
    """One free page reporting pass over an all-free guest; side=guest: the report takes
    nothing (the guest's isolate/putback share), side=host: the host discards each report."""
    from gphint.guest.reporting import PageReporting
    # Linux's watermark rule wants 1% + capacity x 2 MiB free: a small GPHINT_BENCH_MB guest
    # gets a smaller capacity (noted in extra_info) rather than a pass that reports nothing
    capacity = 32 if BENCH_MB >= 128 else 4
    benchmark.group = ("host take-back %d MiB" if side == "host" else "guest hints %d MiB") % BENCH_MB
    state = {}

    def setup():
        g = bench_guest(mem, hinting=False)
        if side == "host":
            host = Host([g], None, "reporting:delay=0,capacity=%d" % capacity)
            state["rep"] = g_rep = host.slots[0].reporter
        else:
            g_rep = PageReporting(g.allocator, lambda runs: True, delay_s=0.0, capacity=capacity)
            state["rep"] = g_rep
        state["calls0"] = mem.stats["discard_calls"]
        return (), {}

    benchmark.pedantic(lambda: state.__setitem__("n", state["rep"].poll(1e12)), setup=setup,
                       rounds=ROUNDS, warmup_rounds=1, iterations=1)
    n = state["n"]
    assert n > 0
    reported = np.flatnonzero(state["rep"].allocator.reported_mask())
    assert reported.size >= n
    median = benchmark.stats.stats.median
    if side == "host":
        assert not mem.residency()[reported].any()
    benchmark.extra_info.update(pages=int(n), ns_per_page=median / n * 1e9,
                                syscalls=int(mem.stats["discard_calls"] - state["calls0"]),
                                capacity=capacity)
