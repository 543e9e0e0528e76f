"""The guest and protocol options drawn together: THP guests or 4 KiB ones, hold bits or the
hashed lock, lazy or eager minor faults (patch 7), transparent or guest discard mode, the
discarded page list's batch (patch 8), the read()/write() workloads or their mmap variants,
under every strategy and both advices -- randomised sequences of guest steps, host passes,
timers, time passing and the kernel's lazy reclaim, every guest page checked byte for byte
after each (hypothesis).

test_advice_sequences.py crosses strategy x advice x discard mode x pressure exhaustively; here
hypothesis picks the combination per example, so the product of all options is sampled
without multiplying the suite's time."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gphint import caps
from gphint.experiment import RunConfig
from gphint.host import guests as guest_api, parse_strategy
from test_advice_sequences import OPS, STRATEGY_PARAMS, run_sequence

EXAMPLES = max(4, int(os.environ.get("GPHINT_EXAMPLES", 10)) * 2)
WORKLOADS = ["churn,fileserver-mmap", "build-mmap,database", "fileserver,build-mmap"]

OPTIONS = st.fixed_dictionaries({
    "strategy": st.sampled_from(sorted(STRATEGY_PARAMS)),
    "advice": st.sampled_from(["dontneed", "free"]),
    "discard_mode": st.sampled_from(["transparent", "guest"]),
    "guest_thp": st.booleans(),
    "locking": st.sampled_from(["holdbits", "hashed"]),
    "minor_fault": st.sampled_from(["lazy", "eager"]),
    "discard_list_batch": st.sampled_from([None, 1, 7]),
    "workload": st.sampled_from(WORKLOADS),
    "pressure": st.booleans(),
})


@pytest.fixture(scope="module")
def served():
    """The options only the C fault service has (the hashed lock, a budget's host swap)."""
    if not (caps.has("compiled") and caps.has("userfaultfd")):
        pytest.skip("the locking and the budget are the C fault service's: this run has none")
    return True


def test_random_option_combinations_lose_nothing(served):
    free_ok = caps.has("madv_free")

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(opts=OPTIONS, ops=OPS, seed=st.integers(0, 1000))
    def check(opts, ops, seed):
        advice = opts["advice"] if free_ok else "dontneed"
        name = opts["strategy"]
        spec = parse_strategy("%s:%sdiscard=%s" % (name, STRATEGY_PARAMS[name], advice)
                              if name != "none" else "none")
        cfg = RunConfig(workload=opts["workload"], guests=2, guest_mem_bytes=4 << 20,
                        host_mem_bytes=(6 << 20) if opts["pressure"] else None, seed=seed,
                        discard_mode=opts["discard_mode"], guest_thp=opts["guest_thp"],
                        locking=opts["locking"], minor_fault=opts["minor_fault"],
                        discard_list_batch=opts["discard_list_batch"])
        svc = guest_api.fault_service(locking=cfg.locking)

        def options_took(g):
            assert g.thp == cfg.guest_thp and g.mappings.minor_fault == cfg.minor_fault, opts
            assert cfg.discard_list_batch in (None, g.discard_list_batch), opts
        try:
            assert svc.locking == cfg.locking
            run_sequence(cfg, spec, svc, ops, options_took)
        finally:
            svc.stop()
    check()
