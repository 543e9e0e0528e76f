"""What does hinting cost the guest?

Method: the same workload and seed on a fresh Guest each round, with no host and no host
pressure, in four configurations: hinting off (no state changes at all: the baseline), and
hinting on with a HintBuffer capacity of 1 (per-transition: the unbatched original), 32 and
256.  The file set is generated once per session (outside every timer) and used as a real
directory (`files=DIR`), so setup is only the guest itself.  Each round's setup -- building the
guest and prewarming its memory (first touches cost host faults: this VM's host runs free page
reporting) -- is outside the timer; the timed call is `guest.step(nops)`.  After the rounds the last guest must verify
to 0 mismatches and have done nops operations.  Guest memory: GPHINT_BENCH_GUEST_MB (default
64), files twice that.  Workloads: fileserver (page-cache transitions: S->V on every fill,
U<->S on every eviction), churn (allocator transitions), build (both).

extra_info: ops, ops_per_s, hint_ops (state-change calls), transitions; the rendered table's
`ratio` = ops/s with hinting / ops/s without is computed by scripts/bench_all from the saved
cases (no case depends on another having run).  Target: batched hinting (32, 256) costs at most 3%
of throughput, i.e. ratio >= 0.97 -- asserted by test_batched_hinting_target, which times the
configurations in interleaved rounds (see its docstring: this VM's speed drifts by more than
3% within seconds, so timing configurations one after the other cannot resolve 3%).
GPHINT_BENCH_ROUNDS (default 15) sets its rounds.  The per-configuration test times each
configuration on its own (3 rounds), so its `ratio` column swings with the machine's speed.
"""
import os
import shutil
import time

import numpy as np
import pytest

from gphint.guest.files import FileSet
from gphint.guest.guest import Guest

GUEST_MB = int(os.environ.get("GPHINT_BENCH_GUEST_MB", "64"))
NOPS = {"fileserver": 3000, "churn": 1500, "build": 1500}
CONFIGS = {"off": dict(hinting=False, batch=32), "batch1": dict(hinting=True, batch=1),
           "batch32": dict(hinting=True, batch=32), "batch256": dict(hinting=True, batch=256)}
# Diagnostic, paired rounds only: hinting on, but the HintBuffer's hint() made a no-op -- what
# the guest's own bookkeeping (desired states, hinted records) costs without any submission.
BOOKKEEPING = "bookkeeping"
TARGET_RATIO = 0.97
TARGET_ROUNDS = int(os.environ.get("GPHINT_BENCH_ROUNDS", "15"))
CHUNKS = 100           # slices per guest in the interleaved rounds of the target test


@pytest.fixture(scope="module")
def file_root():
    fs = FileSet(None, seed=1, total_bytes=2 * GUEST_MB << 20)
    yield fs.root
    shutil.rmtree(os.path.dirname(fs.root), ignore_errors=True)


def make_guest(root, workload, config):
    kw = CONFIGS["batch32" if config == BOOKKEEPING else config]
    g = Guest("%dM" % GUEST_MB, files=root, seed=1, workload=workload, **kw)
    if config == BOOKKEEPING:
        # the one way a request reaches the HintBuffer
        g.allocator.hints.hint = lambda pages, state: None
    g.mem.frames[:] = 0          # prewarm: take the host's first-touch faults outside the timer
    return g


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("workload", list(NOPS))
def test_guest_throughput(benchmark, file_root, workload, config):
    guests = []

    def setup():
        while guests:
            guests.pop().close()
        guests.append(make_guest(file_root, workload, config))
        return (guests[-1],), {}

    def run(g):
        return g.step(NOPS[workload])

    benchmark.group = "guest %d MiB, per configuration" % GUEST_MB
    done = benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    g = guests.pop()
    try:
        assert done == NOPS[workload]
        assert g.verify() == 0
        buf = g.allocator.hints.stats
        benchmark.extra_info.update({
            "workload": workload, "config": config, "ops": done,
            "ops_per_s": done / benchmark.stats.stats.min,
            "hint_ops": buf["hint_ops"], "transitions": buf["transitions"],
            "volatile_share": round(g.volatile_share(), 3)})
        if config == "off":
            assert buf["hint_ops"] == 0 and set(g.census()) == {"Sr"}
        else:
            assert buf["transitions"] > 0
    finally:
        g.close()


@pytest.mark.target
@pytest.mark.parametrize("workload", list(NOPS))
def test_batched_hinting_target(benchmark, file_root, workload):
    """Interleaved rounds.  This VM's speed drifts by tens of percent within seconds (other
    tenants of its host; see bench/README.md), more than the 3% to be measured, so the
    configurations are not timed one after the other: one guest per configuration, all alive
    at once, each running the same nops operations (same seed) in CHUNKS slices, the slices of
    all guests interleaved in rotating order.  Slice i of every configuration thus does the
    same work within a few milliseconds of the others.  A round does that with fresh guests;
    each slice's fastest time over the rounds is kept (noise only ever adds time), and a
    configuration's time is the sum over its slices.  Target: batched hinting (capacity 32
    and 256) keeps >= 97% of the no-hinting throughput.  The unbatched cost (capacity 1) is
    reported, not asserted, and so is `bookkeeping` (HintBuffer.hint stubbed out), which
    splits the cost between the guest's own state bookkeeping and the HintBuffer calls."""
    nops = NOPS[workload]
    configs = list(CONFIGS) + [BOOKKEEPING]
    bounds = np.linspace(0, nops, CHUNKS + 1).astype(int)
    rounds = []       # per round: {config: array of slice times}

    def one_round():
        guests = {c: make_guest(file_root, workload, c) for c in configs}
        t = {c: np.zeros(CHUNKS) for c in configs}
        try:
            for i in range(CHUNKS):
                r = (i + len(rounds)) % len(configs)      # rotate: nobody always goes first
                for c in configs[r:] + configs[:r]:
                    t0 = time.perf_counter()
                    done = guests[c].step(int(bounds[i + 1] - bounds[i]))
                    t[c][i] = time.perf_counter() - t0
                    assert done == bounds[i + 1] - bounds[i]
            for g in guests.values():
                assert g.verify() == 0
        finally:
            for g in guests.values():
                g.close()
        rounds.append(t)

    benchmark.group = "guest %d MiB, hinting overhead (interleaved rounds)" % GUEST_MB
    benchmark.pedantic(one_round, rounds=TARGET_ROUNDS, iterations=1)
    best = {c: float(np.min([r[c] for r in rounds], axis=0).sum()) for c in configs}
    totals = {c: [float(r[c].sum()) for r in rounds] for c in configs}
    ratios = {c: best["off"] / best[c] for c in configs if c != "off"}
    # the plain estimate, for comparison: each round's totals, paired, median over rounds
    plain = {c: float(np.median(np.array(totals["off"]) / np.array(totals[c]))) for c in ratios}
    benchmark.extra_info.update({"workload": workload, "ops": nops, "slices": CHUNKS})
    benchmark.extra_info.update({"ops_per_s_%s" % c: round(nops / t, 1) for c, t in best.items()})
    benchmark.extra_info.update({"ratio_%s" % c: round(r, 4) for c, r in ratios.items()})
    benchmark.extra_info.update({"round_median_ratio_%s" % c: round(r, 4) for c, r in plain.items()})
    worst = min(ratios["batch32"], ratios["batch256"])
    benchmark.extra_info.update(limit=TARGET_RATIO, met=worst >= TARGET_RATIO)   # the table shows the verdict
    print("\n%s: ops/s %s; ratio hinting/no-hinting %s; per-round median %s" % (
        workload, ", ".join("%s %.0f" % (c, nops / t) for c, t in best.items()),
        ", ".join("%s %.3f" % kv for kv in ratios.items()),
        ", ".join("%s %.3f" % kv for kv in plain.items())))
    assert worst >= TARGET_RATIO, ratios


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_discard_fault_modes(benchmark, file_root, mode):
    """Both ways to take a discard fault, measured: a warmed fileserver guest whose VOLATILE
    pages the host has just discarded (setup, outside the timer) runs nops operations.
    transparent: the fault service reloads each discarded page from its file on access;
    guest: the guest drops discarded pages and reads them again as ordinary misses."""
    from gphint import caps
    if not (caps.has("compiled") and caps.has("userfaultfd")):
        pytest.skip("needs the C fault service (compiled mechanism and userfaultfd)")
    from gphint.faults import FaultService
    svc = FaultService()
    g = Guest("%dM" % GUEST_MB, files=file_root, seed=1, workload="fileserver",
              discard_mode=mode, fault_service=svc)
    before = {}
    try:
        g.step(NOPS["fileserver"])                      # warm: the cache is full and VOLATILE

        def setup():
            g.allocator.flush_hints()
            vol = np.flatnonzero((g.mem.states & 0x0F) == 0x0C)
            g.mem.discard(vol)
            before.update(svc.stats(g.mem), **g.cache.stats)
            before["discarded"] = vol.size
            return (), {}

        benchmark.group = "guest %d MiB, discard-fault modes" % GUEST_MB
        benchmark.pedantic(lambda: g.step(NOPS["fileserver"]), setup=setup, rounds=3, iterations=1)
        after = svc.stats(g.mem)
        assert g.verify() == 0
        benchmark.extra_info.update({
            "mode": mode, "ops": NOPS["fileserver"], "discarded": before["discarded"],
            "ops_per_s": round(NOPS["fileserver"] / benchmark.stats.stats.min, 1),
            "file_reloads": after["file_reloads"] - before["file_reloads"],
            "misses": g.cache.stats["misses"] - before["misses"],
            "dropped": g.cache.stats["dropped_discarded"] - before["dropped_discarded"]})
    finally:
        g.close()
        svc.stop()
