"""What does the host pay per page without hints, writing guest pages to its own swap?

none: a reclaim under a budget that host-swaps the STABLE half, oldest first (the no-hints
baseline, needs the fault service; group "host take-back").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
import numpy as np

from gphint.host import Host

from benchlib import BENCH_MB, PAGE, ROUNDS, finish, needs_service, retouch


@needs_service
def test_host_take_back_none_swap(benchmark, mem, served):
    """The no-hints baseline: the host writes stable pages to its swap file (oldest first)."""
    svc, _ = served
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    n = mem.npages // 2
    host = Host([mem], mem.size_bytes - n * PAGE, "none:batch=4096", fault_service=svc, headroom=0.0)
    taken = []

    def setup():
        retouch(mem)           # swapped pages come back through the service (Sp -> Sr)
        return (), {}

    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert taken[-1] == n
    swapped = np.flatnonzero(~mem.residency())
    finish(benchmark, mem, swapped, host.swapper.calls // (ROUNDS + 1))
    retouch(mem)                   # swap everything in before the host's swap file closes
    host.close()
