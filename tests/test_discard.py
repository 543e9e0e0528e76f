"""The discard path: real RSS drops, pagemap agrees, bytes are exact, every submission mode
gives the same memory, MADV_FREE is lazy, and the state-aware path never loses a stable page."""
import errno
import math
import threading

import numpy as np
import pytest

import gphint
from gphint import _mechanism, caps, measure
from gphint.states import PageState
from helpers import PAGE, pattern

MODES = ["per_page", "coalesce", "vectored"]


def fill(mem, seed=0):
    content = pattern(mem.npages, seed)
    mem.frames[:] = content
    return content


def test_discard_drops_rss_pagemap_and_reads_back_zeros():
    mem = gphint.GuestMemory("64M")  # 32 MiB discarded: the interpreter's own noise is < 1%
    content = fill(mem)
    rng = np.random.default_rng(1)
    pages = np.sort(rng.choice(mem.npages, mem.npages // 2, replace=False))
    mem.set_state(pages, "unused")
    rss = measure.rss_bytes()
    assert mem.discard(pages) == pages.size
    dropped = rss - measure.rss_bytes()
    assert dropped >= 0.95 * pages.size * PAGE, dropped
    present = measure.pagemap_present(mem.address, mem.npages)
    assert not present[pages].any()
    keep = np.setdiff1d(np.arange(mem.npages), pages)
    assert present[keep].all()
    assert (mem.residency() == present).all()          # mincore and pagemap agree
    assert mem.resident_pages() == keep.size
    assert not mem.frames[pages].any()
    assert np.array_equal(mem.frames[keep], content[keep])
    assert mem.census() == {"Sr": keep.size, "Uz": pages.size}
    mem.close()


@pytest.mark.parametrize("submit", MODES)
@pytest.mark.parametrize("advice", ["dontneed", "free"])
def test_every_submission_mode_gives_the_same_memory(submit, advice):
    with gphint.GuestMemory("8M") as m:
        content = fill(m, seed=2)
        rng = np.random.default_rng(3)
        pages = rng.choice(m.npages, 700, replace=False)        # unsorted on purpose
        m.discard_raw(pages, advice=advice, submit=submit)
        keep = np.setdiff1d(np.arange(m.npages), pages)
        resident = m.resident_pages()     # before any read: reading maps the zero page back
        assert np.array_equal(m.frames[keep], content[keep])
        if advice == "dontneed":
            assert resident == keep.size
            assert not m.frames[pages].any()
        else:   # lazy: still resident until pressure, content either old or zero, never other
            assert resident == m.npages
            same = (m.frames[pages] == content[pages]).all(axis=1)
            zero = ~m.frames[pages].any(axis=1)
            assert (same | zero).all()


def test_vectored_issues_one_call_per_1024_runs():
    with gphint.GuestMemory("24M") as m:
        m.frames[:] = 1
        pages = np.arange(0, m.npages, 2)           # every other page: one run each
        runs = pages.size
        m.discard_raw(pages, submit="vectored")
        if caps.has("process_madvise"):
            assert m.stats["discard_calls"] <= math.ceil(runs / 1024)
            assert m.stats["vectored_fallbacks"] == 0
        else:
            assert m.stats["vectored_fallbacks"] == 1 and m.stats["discard_calls"] == runs
        assert m.stats["discard_runs"] == runs
        assert not m.frames[pages].any() and (m.frames[1::2] == 1).all()


def test_coalesce_merges_runs_and_per_page_does_not(mem):
    mem.frames[:] = 1
    pages = np.concatenate([np.arange(10, 50), np.arange(60, 61), np.arange(100, 300)])[::-1]
    mem.discard_raw(pages, submit="coalesce")
    assert mem.stats["discard_calls"] == 3 and mem.stats["discard_runs"] == 3
    mem.discard_raw(pages, submit="per_page")
    assert mem.stats["discard_calls"] == 3 + pages.size


def test_runs_input(mem):
    mem.frames[:] = 9
    runs = np.array([[5, 10], [100, 1], [2000, 300]], dtype=np.int64)
    assert mem.discard_raw(runs) == 311
    gone = np.concatenate([np.arange(5, 15), [100], np.arange(2000, 2300)])
    assert mem.resident_pages() == mem.npages - 311
    assert not mem.frames[gone].any()


def test_madv_free_is_lazy_and_rewrites_survive():
    if not caps.has("madv_free"):
        with pytest.raises(gphint.Unsupported, match="MADV_FREE"):
            gphint.GuestMemory("4M").discard_raw([0], advice="free")
        return
    with gphint.GuestMemory("32M") as m:
        m.frames[:] = 4
        pages = np.arange(m.npages // 2)
        before = measure.smaps_rollup()
        m.discard_raw(pages, advice="free")
        after = measure.smaps_rollup()
        assert after["LazyFree"] - before.get("LazyFree", 0) >= 0.95 * pages.size * PAGE
        assert after["Rss"] >= before["Rss"] - 2 * 2**20          # RSS stays until pressure
        m.frames[pages[:100]] = 0xAB                               # rewriting cancels the free
        assert (m.frames[pages[:100]] == 0xAB).all()
        assert measure.smaps_rollup()["LazyFree"] < after["LazyFree"]


def test_state_aware_discard_refuses_stable_pages(mem):
    content = fill(mem)
    mem.set_state(np.arange(100), "unused")
    with pytest.raises(gphint.StateError, match=r"page 100 is STABLE") as e:
        mem.discard(np.arange(101))
    assert e.value.page == 100
    assert mem.resident_pages() == mem.npages        # nothing was discarded
    assert np.array_equal(mem.frames, content)


def test_volatile_discard_without_a_fault_service_is_unsupported(mem):
    fill(mem)
    mem.set_state(np.arange(8), PageState.VOLATILE)
    with pytest.raises(gphint.Unsupported, match="VOLATILE page 0"):
        mem.discard(np.arange(8))
    assert mem.resident_pages() == mem.npages


@pytest.mark.parametrize("kw,msg", [({"advice": "dontwant"}, "dontwant"), ({"submit": "batch"}, "batch"),
                                    ({"advice": 7}, "7"), ({"submit": None}, "None")])
def test_unknown_advice_or_mode_names_the_value(mem, kw, msg):
    with pytest.raises(gphint.ConfigError, match=msg):
        mem.discard_raw([0], **kw)


def test_raw_mechanism_refuses_out_of_region_pages(mem):
    """The seam itself bounds-checks: a bad index must never madvise memory outside the region;
    it is the same ConfigError, naming the index, as through GuestMemory.discard."""
    mech = _mechanism.mech
    region = mem.region
    for bad in (mem.npages, -1):
        msg = r"page index %d out of range \[0, %d\)" % (bad, mem.npages)
        with pytest.raises(gphint.ConfigError, match=msg) as e:
            mech.discard_pages(region, PAGE, np.array([bad], dtype=np.int64), 0, 1, -1)
        assert e.value.errno == errno.ERANGE
        mem.set_state([0], "unused")
        with pytest.raises(gphint.ConfigError, match=msg):
            mem.discard(np.array([0, bad], dtype=np.int64))
        with pytest.raises(gphint.ConfigError, match=msg):
            mem.discard_raw(np.array([bad], dtype=np.int64))
    with pytest.raises(gphint.ConfigError, match="page run"):
        mech.discard_runs(region, PAGE, np.array([[mem.npages - 1, 2]], dtype=np.int64), 0, 1, -1)


def test_discard_concurrent_with_another_thread_touching_other_pages():
    """The host discards while a guest thread writes its own half: the guest half is intact."""
    with gphint.GuestMemory("16M") as m:
        half = m.npages // 2
        m.frames[:] = 1
        m.set_state(np.arange(half), "unused")
        stop = threading.Event()

        def guest():
            k = 0
            while not stop.is_set():
                m.frames[half + (k % half)] = 2 + k % 200
                k += 1
        t = threading.Thread(target=guest)
        t.start()
        try:
            for _ in range(20):
                m.discard(np.arange(half), submit="vectored")
        finally:
            stop.set()
            t.join()
        assert not m.frames[:half].any()
        assert (m.frames[half:] != 0).all()


def test_state_updates_are_atomic_against_a_concurrent_writer(compiled_only):
    """Guest usage updates (set_state) and host content updates (the discard marking) race on
    the same bytes: with byte CAS neither overwrites the other's bits."""
    from gphint._mechanism import mech
    from gphint.states import NEXT_TABLE
    states = np.zeros(1 << 16, dtype=np.uint8)
    pages = np.arange(states.size, dtype=np.int64)
    stop = threading.Event()

    def host():
        while not stop.is_set():
            mech.set_content(states, pages, 0)
    t = threading.Thread(target=host)
    t.start()
    try:
        for _ in range(50):
            rc, _, _ = mech.set_usage(states, pages, int(PageState.UNUSED), NEXT_TABLE)
            assert rc == pages.size
            rc, _, _ = mech.set_usage(states, pages, int(PageState.VOLATILE), NEXT_TABLE)
            assert rc == pages.size
    finally:
        stop.set()
        t.join()
    assert (states == int(PageState.VOLATILE)).all()


# --- the counters against the kernel's own record: strace of a child doing known discards -----
COUNTED_CHILD = r'''
import json, sys
import numpy as np
import gphint
served = sys.argv[1] == "served"
mem = gphint.GuestMemory("32M")
svc = None
if served:
    from gphint.faults import FaultService
    svc = FaultService()
    svc.register(mem)
mem.frames[::3] = 1                                   # every third page resident
mem.set_state(np.arange(mem.npages), "unused")
cases = {   # name: (pages, submit); disjoint page ranges so the trace can tell them apart
    "per_page": (np.arange(0, 1000, 2), "per_page"),          # 500 one-page runs
    "coalesce": (np.concatenate([np.arange(1000, 1010), np.arange(1020, 1200),
                                 np.arange(1300, 1301)]), "coalesce"),   # 3 runs
    "vectored": (np.arange(2000, 7000, 2), "vectored"),        # 2500 runs
}
out = {"base": mem.address, "end": mem.address + mem.size_bytes, "cases": {}}
for name, (pages, submit) in cases.items():
    resident = int(mem.residency()[pages].sum())      # mincore before, independent of the counter
    before = dict(mem.stats)
    mem.discard(pages, advice=sys.argv[2], submit=submit)
    out["cases"][name] = {"first": int(pages[0]), "last": int(pages[-1]), "resident_before": resident,
                          **{k: mem.stats[k] - before[k] for k in
                             ("discard_calls", "discard_runs", "discarded_pages",
                              "discarded_resident_pages", "lazy_freed_pages")}}
print(json.dumps(out))
'''


def traced_calls(trace_path, base, page_of):
    """Per case: madvise/process_madvise calls whose (first) address falls in the case's pages."""
    import re
    counts = {}
    for line in open(trace_path):
        m = re.search(r"\b(madvise|process_madvise)\((?:\d+, \[\{iov_base=)?(0x[0-9a-f]+)", line)
        if not m or "resumed>" in line or not re.search(r"MADV_(DONTNEED|FREE)\b", line):
            continue                                  # (the region's own MADV_NOHUGEPAGE)
        case = page_of((int(m.group(2), 16) - base) // PAGE)
        if case is not None:
            counts[case] = counts.get(case, 0) + 1
    return counts


@pytest.mark.parametrize("advice", ["dontneed", "free"])
@pytest.mark.parametrize("served", ["raw", "served"])
def test_discard_counters_match_the_system_calls_strace_sees(tmp_path, served, advice):
    """discard_calls is what the kernel was asked (one per page / run / 1024 runs, whichever
    path discards), discarded_resident_pages what mincore saw resident just before."""
    import json
    import shutil
    import subprocess
    import sys
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: no independent count of the system calls")
    if served == "served" and not caps.has("compiled"):
        pytest.skip("the protocol discard needs the C fault service (this run: %s)" % _mechanism.WHY_PURE)
    if advice == "free" and not caps.has("madv_free"):
        pytest.skip(caps.probe().features["madv_free"].reason)
    trace = tmp_path / "trace"
    script = tmp_path / "child.py"
    script.write_text(COUNTED_CHILD)
    # -f: the protocol discard runs its madvise in C, possibly from any thread
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=madvise,process_madvise", "-o", str(trace),
                        sys.executable, str(script), "served" if served == "served" else "raw", advice],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    cases = got["cases"]

    def page_of(p):
        return next((n for n, c in cases.items() if c["first"] <= p <= c["last"]), None)

    seen = traced_calls(trace, got["base"], page_of)
    vectored_calls = math.ceil(2500 / 1024) if caps.has("process_madvise") else 2500
    assert {n: c["discard_calls"] for n, c in cases.items()} == seen == \
        {"per_page": 500, "coalesce": 3, "vectored": vectored_calls}
    assert [c["discard_runs"] for c in cases.values()] == [500, 3, 2500]
    for name, c in cases.items():
        assert c["discarded_resident_pages"] == c["resident_before"] > 0, name
        assert c["lazy_freed_pages"] == (c["discarded_pages"] if advice == "free" else 0), name
