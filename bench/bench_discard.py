"""How fast does the host give guest memory back?  (issue 2)

Method: one 256 MiB GuestMemory (GPHINT_BENCH_MB overrides).  Each round's setup, outside the
timer, re-dirties every page (so each discard really frees memory) and picks the page set; the
timed call is one discard through the mechanism's seam.  Patterns: `contiguous` (every page of
the region, given as page indices) and `random50` (a fixed random half, 1 run ~ 2 pages).
Submission modes: per_page / coalesce / vectored, for the compiled and the pure-Python
mechanism.  Baseline, in the same run and through the same mechanism: ONE madvise(MADV_DONTNEED)
over the whole region.  Every
case is measured alone and with a second thread running (`threads=2`), where each per-page
madvise pays a TLB-shootdown IPI.  After the timed call the benchmark asserts that the pages are
gone (mincore).  extra_info: pages, ns_per_page, pages_per_s, syscalls.
Targets (asserted in test_targets, on each case's fastest round): contiguous coalesce <= 1.3 x baseline; random50 vectored
<= 0.5 x per_page, with and without the second thread.
"""
import contextlib

import numpy as np
import pytest

import gphint
from gphint import _fallback, _mechanism, caps, measure
from conftest import BENCH_MB, Spinner

PAGE = gphint.PAGE_SIZE
MECHS = {"pure": _fallback}
if _mechanism.COMPILED:
    MECHS["compiled"] = _mechanism.mech
MODES = {"per_page": 0, "coalesce": 1, "vectored": 2}
FASTEST = {}   # key -> fastest round (s); targets compare these (noise only adds time)


@pytest.fixture(scope="module")
def region():
    mem = gphint.GuestMemory("%dM" % BENCH_MB)
    mem.frames[:] = 1                     # prewarm: take the host faults before any timing
    mem.discard_raw(np.array([[0, mem.npages]]))
    yield mem
    mem.close()


def page_set(npages, pattern):
    if pattern == "contiguous":
        return np.arange(npages, dtype=np.int64)
    rng = np.random.default_rng(42)
    return np.sort(rng.choice(npages, npages // 2, replace=False)).astype(np.int64)


def run_case(benchmark, mem, key, discard, pages):
    def setup():
        mem.frames[:] = 1
        return (), {}

    calls = []

    def target():
        calls.append(discard())

    mem.frames[:] = 1
    rss_before = measure.rss_bytes()
    benchmark.pedantic(target, setup=setup, rounds=7, iterations=1, warmup_rounds=1)
    assert mem.resident_pages() == mem.npages - pages.size          # the work happened
    assert rss_before - measure.rss_bytes() >= 0.9 * pages.size * PAGE
    median = benchmark.stats.stats.median
    FASTEST[key] = benchmark.stats.stats.min
    benchmark.extra_info.update(pages=int(pages.size), ns_per_page=median / pages.size * 1e9,
                                pages_per_s=pages.size / median, syscalls=int(calls[-1]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mech", list(MECHS))
def test_baseline_single_madvise(benchmark, region, mech, threads):
    """ONE madvise over the whole region, through the same mechanism (the compiled one releases
    the GIL, so the second thread really runs during the call; the pure one holds it)."""
    mem = region
    whole = np.array([[0, mem.npages]], dtype=np.int64)
    pages = np.arange(mem.npages)
    benchmark.group = "discard %d MiB, threads=%d" % (BENCH_MB, threads)
    with (Spinner() if threads == 2 else contextlib.nullcontext()):
        run_case(benchmark, mem, (mech, "baseline", threads),
                 lambda: MECHS[mech].discard_runs(mem.region, PAGE, whole, 0, 1, -1)[1], pages)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("pattern", ["contiguous", "random50"])
@pytest.mark.parametrize("mech", list(MECHS))
def test_discard(benchmark, region, mech, pattern, mode, threads):
    mem = region
    if mode == "vectored" and not caps.has("process_madvise"):
        pytest.skip("process_madvise on self unavailable: %s" % caps.probe().features["process_madvise"].reason)
    if mech == "pure" and mode == "per_page" and pattern == "contiguous":
        pytest.skip("pure per_page over every page measures the interpreter, not the kernel; "
                    "random50 covers it")
    m = MECHS[mech]
    pages = page_set(mem.npages, pattern)
    pidfd = _mechanism.self_pidfd()
    benchmark.group = "discard %d MiB, threads=%d" % (BENCH_MB, threads)
    with (Spinner() if threads == 2 else contextlib.nullcontext()):
        run_case(benchmark, mem, (mech, pattern, mode, threads),
                 lambda: m.discard_pages(mem.region, PAGE, pages, 0, MODES[mode], pidfd)[1], pages)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mech", list(MECHS))
def test_targets(mech, threads):
    """The issue's targets, from the rounds measured above in this same run.  They compare the
    fastest round of each case (timeit's convention): on a shared 2-core machine preemption only
    ever adds time, and a single preempted round must not decide a 1.3x target."""
    need = [(mech, "baseline", threads), (mech, "contiguous", "coalesce", threads),
            (mech, "random50", "vectored", threads), (mech, "random50", "per_page", threads)]
    if any(k not in FASTEST for k in need):
        pytest.skip("needs the discard cases of this run (not selected, or vectored unavailable)")
    base, contig, vec, per_page = (FASTEST[k] for k in need)
    assert contig <= 1.3 * base, "contiguous coalesce %.1f ms vs single madvise %.1f ms" % (contig * 1e3, base * 1e3)
    assert vec <= 0.5 * per_page, "random50 vectored %.1f ms vs per_page %.1f ms" % (vec * 1e3, per_page * 1e3)
