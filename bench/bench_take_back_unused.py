"""What does the host pay per page to take back the pages a guest hinted UNUSED?

unused/cmma: a proactive scan that discards the UNUSED half; every batch x submit variant
(group "host take-back").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
import pytest

from gphint import PageState, caps
from gphint.host import Host

from benchlib import BENCH_MB, ROUNDS, Clock, finish, retouch


VARIANTS = [(b, s) for b in (1, 32, 256, 4096) for s in ("per_page", "coalesce", "vectored")]


@pytest.mark.parametrize("batch, submit", VARIANTS, ids=["batch%d-%s" % v for v in VARIANTS])
@pytest.mark.parametrize("name", ["unused", "cmma"])
def test_host_take_back_unused(benchmark, mem, half, name, batch, submit):
    if submit == "vectored" and not caps.has("process_madvise"):
        pytest.skip("process_madvise on self: %s" % caps.probe().features["process_madvise"].reason)
    if name == "unused" and (batch, submit) != (32, "vectored"):
        pytest.skip("unused runs the same scan as cmma: one variant is enough")
    benchmark.group = "host take-back %d MiB" % BENCH_MB
    clock = Clock()
    host = Host([mem], None, "%s:batch=%d,submit=%s,scan=0.001" % (name, batch, submit), clock=clock)
    taken = []

    def setup():
        retouch(mem)
        mem.set_state(half, PageState.UNUSED)
        clock.t += 1.0
        host.sample()
        return (), {}

    calls0 = mem.stats["discard_calls"]
    benchmark.pedantic(lambda: taken.append(host.step()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    assert taken[-1] == half.size
    finish(benchmark, mem, half, (mem.stats["discard_calls"] - calls0) // (ROUNDS + 1))
