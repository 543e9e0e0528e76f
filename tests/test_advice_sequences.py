"""Every strategy x {dontneed, free} x {transparent, guest discard mode}: randomised sequences of
guest workload steps, host passes, guest timers, time passing and the kernel reclaiming lazily
freed pages (MADV_PAGEOUT) -- every guest page checked byte for byte after each sequence (hypothesis).

Proactive mode runs on both mechanisms; under a budget the host needs the C fault service."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import caps
from gphint.experiment import RunConfig
from gphint.host import Host, guests as guest_api, parse_strategy
from helpers import PAGE

EXAMPLES = max(2, int(os.environ.get("GPHINT_EXAMPLES", 10)) // 2)
MADV_PAGEOUT = 21
STRATEGY_PARAMS = {   # short delays and periods: a sequence is a few fake seconds
    "none": "", "balloon": "interval=0.5,",
    "reporting": "order=5,delay=0.2,", "unused": "scan=0.1,", "cmma": "scan=0.1,"}

OPS = st.lists(st.tuples(st.sampled_from(["step", "step", "step", "host", "timers", "tick", "pageout"]),
                         st.integers(0, 1), st.integers(1, 160)),
               min_size=6, max_size=30)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def pageout(mem, first, npages):
    """The kernel reclaims what it can of these pages now (lazily freed ones, unless rewritten)."""
    npages = min(npages, mem.npages - first)
    mem._map.madvise(MADV_PAGEOUT, mem._offset + first * PAGE, npages * PAGE)


def run_ops(guests, host, clock, ops):
    for op, gi, n in ops:
        g = guests[gi]
        if op == "step":
            with host.lock:
                host.on_scheduled(g)
                g.step(n)
            if host.over_budget():
                host.step()                          # direct reclaim, as the runner does
        elif op == "host":
            host.step()
        elif op == "timers":
            host.guest_timers()
        elif op == "tick":
            clock.t += n / 32.0
        elif op == "pageout":
            pageout(g.mem, (n * 61) % g.mem.npages, 8 * n)


def run_sequence(cfg, spec, svc, ops, check_guest=lambda g: None):
    """cfg's two guests and a host under spec run ops; then every guest page is verified."""
    fileset = guest_api.shared_files(cfg)
    guests = [guest_api.make_guest(i, cfg, spec, svc, fileset) for i in range(cfg.guests)]
    clock = FakeClock()
    host = Host(guests, cfg.host_mem_bytes, spec, fault_service=svc, clock=clock)
    try:
        run_ops(guests, host, clock, ops)
        for g in guests:
            g.sync()
            assert g.verify() == 0, g.name
            check_guest(g)
        if svc is not None:
            svc.check()
    finally:
        for g in guests:
            g.close()
        host.close()
        fileset.close()


@pytest.mark.parametrize("pressure", [False, True], ids=["proactive", "pressure"])
@pytest.mark.parametrize("mode", ["transparent", "guest"])
@pytest.mark.parametrize("advice", ["dontneed", "free"])
@pytest.mark.parametrize("strategy", sorted(STRATEGY_PARAMS))
def test_random_sequences_lose_nothing(tmp_path, strategy, advice, mode, pressure):
    if advice == "free" and not caps.has("madv_free"):
        pytest.skip(caps.probe().features["madv_free"].reason)
    served = caps.has("compiled") and caps.has("userfaultfd")
    if pressure and not served:
        pytest.skip("a budget needs the C fault service (host swap): this run has none")
    svc = guest_api.fault_service() if served else None
    spec = parse_strategy("%s:%sdiscard=%s" % (strategy, STRATEGY_PARAMS[strategy], advice)
                          if strategy != "none" else "none")
    try:
        @settings(max_examples=EXAMPLES, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(ops=OPS, seed=st.integers(0, 1000))
        def check(ops, seed):
            cfg = RunConfig(workload="churn,fileserver", guests=2, guest_mem_bytes=4 << 20,
                            host_mem_bytes=(6 << 20) if pressure else None, seed=seed,
                            discard_mode=mode)
            run_sequence(cfg, spec, svc, ops)
        check()
    finally:
        if svc is not None:
            svc.stop()
