"""What does one balloon inflate request cost per page, host and guest side?

balloon: one inflate request of half the guest served when the guest runs: the driver
allocates, the host discards (group "host take-back"); without the discard, the guest's share
of ballooning (group "guest hints").

Method: the strategy benchmarks' own, stated once in bench/benchlib.py.
"""
import pytest

from gphint.host import Host

from benchlib import BENCH_MB, ROUNDS, bench_guest, finish


@pytest.mark.parametrize("side", ["host", "guest"])
def test_balloon_inflate(benchmark, mem, half, side):
    """One inflate request of half the guest, served when the guest runs; side=host includes
    the host's discard of the ballooned pages."""
    from gphint.guest.balloon import BalloonDriver
    benchmark.group = ("host take-back %d MiB" if side == "host" else "guest hints %d MiB") % BENCH_MB
    state = {}

    def setup():
        g = bench_guest(mem, hinting=False)
        if side == "host":
            host = Host([g], None, "balloon")
            slot = host.slots[0]
            slot.request = (half.size, 0.0)
            state["run"] = lambda: host.strategy.on_scheduled(slot, 0.0)
            state["pages"] = lambda: slot.balloon.pages
        else:
            drv = BalloonDriver(g.allocator)
            state["run"] = lambda: drv.inflate(half.size)
            state["pages"] = lambda: drv.pages
        state["calls0"] = mem.stats["discard_calls"]
        return (), {}

    benchmark.pedantic(lambda: state["run"](), setup=setup, rounds=ROUNDS, warmup_rounds=1,
                       iterations=1)
    pages = state["pages"]()
    assert pages.size == half.size
    if side == "host":
        finish(benchmark, mem, pages, mem.stats["discard_calls"] - state["calls0"])
    else:
        benchmark.extra_info.update(pages=int(pages.size),
                                    ns_per_page=benchmark.stats.stats.median / pages.size * 1e9,
                                    syscalls=0)
