"""How fast does the host give guest memory back?

Method: one 256 MiB GuestMemory (GPHINT_BENCH_MB overrides).  Each round's setup, outside the
timer, re-dirties every page (so each discard really frees memory) and picks the page set; the
timed call is one discard through the mechanism's seam.  Patterns: `contiguous` (every page of
the region, given as page indices) and `random50` (a fixed random half, 1 run ~ 2 pages).
Submission modes: per_page / coalesce / vectored, for the compiled and the pure-Python
mechanism.  The floor, through the same mechanism: ONE madvise(MADV_DONTNEED) over the whole
region (`test_baseline_single_madvise`).  Every case is measured alone and with a second thread
running (`threads=2`), where each per-page madvise pays a TLB-shootdown IPI.  After the timed
call the benchmark asserts that the pages are gone (mincore).  extra_info: pages, ns_per_page,
pages_per_s, syscalls.

Targets (test_discard_target; each measures its subject and its floor itself, in interleaved
rounds, and compares fastest rounds, per page): see TARGETS.  Each compares two things that do
the same kernel work in different ways, so either side can win: the run-finding and call
overhead of coalesce against the one-call floor over the same pages; the cost of a scattered
half given back in vectored calls against the same floor, per page (compiled mechanism).
"""
import contextlib
import time

import numpy as np
import pytest

import gphint
from gphint import _fallback, _mechanism, caps, measure
from benchlib import BENCH_MB, Spinner

PAGE = gphint.PAGE_SIZE
MECHS = {"pure": _fallback}
if _mechanism.COMPILED:
    MECHS["compiled"] = _mechanism.mech
MODES = {"per_page": 0, "coalesce": 1, "vectored": 2}
# name -> ((pattern, mode) of the subject, its floor, the most the subject may cost per page
# over the floor, the mechanisms it applies to)
TARGETS = {
    # same pages, the same one madvise: what finding the runs in the page indices adds
    "coalesce_contiguous": (("contiguous", "coalesce"), "floor", 1.3, ("pure", "compiled")),
    # a scattered half in calls of up to 1024 runs vs one call over a contiguous range, per page
    "vectored_random50": (("random50", "vectored"), "floor", 2.0, ("compiled",)),
}
TARGET_ROUNDS = 7


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


def discard_call(mech, mem, pattern, mode, pidfd):
    """(the call, pages it gives back): one discard through mechanism `mech`."""
    m = MECHS[mech]
    if pattern == "floor":
        whole = np.array([[0, mem.npages]], dtype=np.int64)
        return (lambda: m.discard_runs(mem.region, PAGE, whole, 0, 1, -1)[1]), mem.npages
    pages = page_set(mem.npages, pattern)
    return (lambda: m.discard_pages(mem.region, PAGE, pages, 0, MODES[mode], pidfd)[1]), pages.size


def run_case(benchmark, mem, discard, npages):
    def setup():
        mem.frames[:] = 1
        return (), {}

    calls = []

    def target():
        calls.append(discard())

    mem.frames[:] = 1
    rss_before = measure.rss_bytes()
    benchmark.pedantic(target, setup=setup, rounds=7, iterations=1, warmup_rounds=1)
    assert mem.resident_pages() == mem.npages - npages               # the work happened
    assert rss_before - measure.rss_bytes() >= 0.9 * npages * PAGE
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(pages=int(npages), ns_per_page=median / npages * 1e9,
                                pages_per_s=npages / median, syscalls=int(calls[-1]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mech", list(MECHS))
def test_baseline_single_madvise(benchmark, region, mech, threads):
    """ONE madvise over the whole region, through the same mechanism (the compiled one releases
    the GIL, so the second thread really runs during the call; the pure one holds it)."""
    call, npages = discard_call(mech, region, "floor", None, -1)
    benchmark.group = "discard %d MiB, threads=%d" % (BENCH_MB, threads)
    with (Spinner() if threads == 2 else contextlib.nullcontext()):
        run_case(benchmark, region, call, npages)


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
    call, npages = discard_call(mech, mem, pattern, mode, _mechanism.self_pidfd())
    benchmark.group = "discard %d MiB, threads=%d" % (BENCH_MB, threads)
    with (Spinner() if threads == 2 else contextlib.nullcontext()):
        run_case(benchmark, mem, call, npages)


@pytest.mark.target
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mech", list(MECHS))
@pytest.mark.parametrize("name", list(TARGETS))
def test_discard_target(benchmark, region, name, mech, threads):
    """Subject and floor measured here, in interleaved rounds: each round's setup (outside the
    subject's timer) re-dirties the region, times one round of the floor, and re-dirties it
    again, so floor and subject alternate within the same second of the machine's life.  The
    fastest round of each is compared, per page (noise only ever adds time)."""
    (pattern, mode), floor_kind, limit, mechs = TARGETS[name]
    if mech not in mechs:
        pytest.skip("%s is a target for the %s mechanism" % (name, " and ".join(mechs)))
    if mode == "vectored" and not caps.has("process_madvise"):
        pytest.skip("process_madvise on self unavailable: %s" % caps.probe().features["process_madvise"].reason)
    mem, pidfd = region, _mechanism.self_pidfd()
    subject, n_subject = discard_call(mech, mem, pattern, mode, pidfd)
    floor, n_floor = discard_call(mech, mem, floor_kind, None, pidfd)
    floor_s = []

    def setup():
        mem.frames[:] = 1
        t0 = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t0)
        assert mem.resident_pages() == mem.npages - n_floor
        mem.frames[:] = 1
        return (), {}

    benchmark.group = "discard targets"
    with (Spinner() if threads == 2 else contextlib.nullcontext()):
        benchmark.pedantic(subject, setup=setup, rounds=TARGET_ROUNDS, iterations=1, warmup_rounds=1)
    assert mem.resident_pages() == mem.npages - n_subject             # the work happened
    subject_ns = benchmark.stats.stats.min / n_subject * 1e9
    floor_ns = min(floor_s) / n_floor * 1e9
    ratio = subject_ns / floor_ns
    floor_name = "%s single madvise" % mech
    benchmark.extra_info.update(subject="%s %s %s" % (mech, pattern, mode), floor=floor_name, threads=threads,
                                subject_ns_per_page=subject_ns, floor_ns_per_page=floor_ns,
                                ratio=round(ratio, 3), limit=limit, met=ratio <= limit)
    assert ratio <= limit, "%s (%s, threads=%d): %.0f ns/page vs %s %.0f ns/page = %.2f x > %.2f x" % (
        name, mech, threads, subject_ns, floor_name, floor_ns, ratio, limit)
