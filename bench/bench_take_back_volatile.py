"""What does the host pay per page to take back the pages a guest hinted VOLATILE?

cmma-volatile: a reclaim under a budget that discards the VOLATILE half (file-backed, through
the fault service; group "host take-back").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
from gphint import PageState
from gphint.host import Host

from benchlib import BENCH_MB, PAGE, ROUNDS, finish, needs_service, retouch


@needs_service
def test_host_take_back_volatile(benchmark, mem, half, served):
    svc, store = served
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    host = Host([mem], mem.size_bytes - half.size * PAGE, "cmma", fault_service=svc, headroom=0.0)
    taken = []

    def setup():
        retouch(mem)
        mem.set_backing(half, store, half * PAGE)
        mem.set_state(half, PageState.VOLATILE)
        return (), {}

    calls0 = mem.stats["discard_calls"]
    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert host.stats()["discarded_pages"].get("VOLATILE", 0) >= half.size
    finish(benchmark, mem, half, (mem.stats["discard_calls"] - calls0) // (ROUNDS + 1))
    host.close()
