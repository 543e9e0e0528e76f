"""Guests with transparent huge pages: anonymous memory in 2 MiB huge pages (small allocations
as their subpages), partial frees that free nothing until the whole huge page is free, bounded
per-cpu lists that page reporting never sees,
the deferred split under memory pressure -- and, on the host, discards of whole 2 MiB units
that leave the other huge pages whole (AnonHugePages in /proc/self/smaps)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gphint import ConfigError, GuestMemory, PageState
from gphint.guest.guest import Guest
from gphint.guest.thp import HUGE_PAGES, ThpAllocator

S, U = int(PageState.STABLE), int(PageState.UNUSED)


@pytest.fixture
def g():
    with Guest("32M", seed=1, workload=None, file_bytes="8M", thp=True) as guest:
        yield guest


def usage(g, frames):
    g.allocator.flush_hints()
    return g.mem.usage(frames)


def test_anonymous_memory_comes_in_whole_huge_pages(g):
    a = g.allocator
    pages = g.alloc(2 * HUGE_PAGES + 10)
    frames = g.frames_of(pages)
    units = np.unique(frames // HUGE_PAGES)
    assert units.size == 3 and (frames % HUGE_PAGES == pages % HUGE_PAGES).all()
    assert a.stats["thp_allocs"] == 3 and a.heap_reserved_pages == HUGE_PAGES - 10
    tail = g.mem.frames[units[2] * HUGE_PAGES + 10:(units[2] + 1) * HUGE_PAGES]
    assert not tail.any()                     # the fault zeroed the whole huge page
    assert g.mem.thp and g.mem.address % (2 << 20) == 0
    g.touch(pages)
    assert g.verify() == 0


def test_small_allocations_live_inside_the_processs_huge_page(g):
    """THP `always`: a heap's small allocations are subpages of its huge pages, so 64 KiB
    pieces of a process fill one huge page instead of taking 4 KiB pages each."""
    a = g.allocator
    pieces = [g.alloc(16, pid=7) for _ in range(8)] + [g.alloc(16, pid=8)]
    units = [np.unique(g.frames_of(p, pid=7 if i < 8 else 8) // HUGE_PAGES) for i, p in enumerate(pieces)]
    assert all(u.size == 1 for u in units) and len({int(u[0]) for u in units[:8]}) == 1
    assert int(units[8][0]) != int(units[0][0])          # another process: its own huge page
    assert a.stats["thp_allocs"] == 2 and a.heap_reserved_pages == 2 * HUGE_PAGES - 9 * 16
    free0 = a.free_pages
    for p in pieces[:8]:
        g.free(p, pid=7)                      # every piece freed: the unused rest still mapped
    assert a.free_pages == free0 and a.held_pages == 8 * 16
    assert g.verify() == 0


def test_partial_free_frees_nothing_until_the_whole_huge_page_is_free(g):
    pages = g.alloc(HUGE_PAGES)
    frames = g.frames_of(pages)
    a = g.allocator
    free0 = a.free_pages
    g.free(pages[:16])                        # 64 KiB inside the huge page
    assert a.free_pages == free0 and a.pcp_pages == 0
    assert (usage(g, frames[:16]) == S).all()  # not freed: no UNUSED hint, the host cannot take it
    assert a.stats["thp_splits"] == 1 and a.held_pages == 16
    g.free(pages[16:])
    assert a.held_pages == 0 and a.pcp_pages == HUGE_PAGES
    assert a.free_pages == free0              # on a per-cpu list: not in the free count ...
    assert (usage(g, frames) == U).all()      # ... but hinted UNUSED (arch_free_page runs first)
    first = int(frames.min())
    assert first not in a.unreported_blocks(9).tolist()   # page reporting never sees it


def test_per_cpu_lists_are_bounded_and_drain_to_the_free_lists(g):
    a = g.allocator
    n = a.npages // HUGE_PAGES - 4
    pages = g.alloc(n * HUGE_PAGES)
    g.free(pages)
    assert 0 < a.pcp_pages <= a.cpus * (a.pcp_high + 1) * HUGE_PAGES
    assert a.stats["pcp_drained"] > 0
    held = a.pcp_pages
    assert a.drain_pcp() == held and a.pcp_pages == 0
    assert a.free_pages == a.npages - a.allocated_pages


def test_deferred_split_frees_the_pieces_under_memory_pressure(g):
    a = g.allocator
    pages = g.alloc(8 * HUGE_PAGES)
    g.touch(pages)
    g.free(pages[::2])                        # half of every huge page: nothing freed
    assert a.held_pages == 4 * HUGE_PAGES
    g.alloc(a.free_pages + a.pcp_pages + HUGE_PAGES)   # only the held pieces make this fit
    assert a.stats["deferred_freed"] == 4 * HUGE_PAGES and a.held_pages == 0
    assert g.stats["swapped_out"] == 0        # the pieces went first, before any swapping
    assert g.verify() == 0


def test_bad_thp_input_names_the_value():
    with pytest.raises(ConfigError, match="max_order"):
        Guest("8M", workload=None, file_bytes="1M", thp=True, max_order=8)
    with GuestMemory("4M") as mem, pytest.raises(ConfigError, match="pcp_high"):
        ThpAllocator(mem, pcp_high=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["alloc", "free", "touch", "read"]),
                              st.integers(1, 1200), st.integers(1, 4)), min_size=1, max_size=25))
def test_random_alloc_free_touch_on_a_thp_guest_loses_nothing(ops):
    with Guest("24M", seed=2, workload=None, file_bytes="16M", thp=True) as g:
        live = []
        for op, n, stride in ops:
            if op == "alloc":
                live.append(g.alloc(min(n, g.allocator.free_pages // 2 + 1)))
            elif op == "free" and live:
                block = live.pop(n % len(live))
                gone, keep = block[::stride], np.delete(block, np.s_[::stride])
                g.free(gone)
                if keep.size:
                    live.append(keep)
            elif op == "touch" and live:
                g.touch(live[n % len(live)])
            elif op == "read":
                g.read(g.files.paths[n % len(g.files)], 0, 64 << 10)
        a = g.allocator
        assert a.free_pages + a.pcp_pages + a.allocated_pages + a.isolated_pages == a.npages
        assert g.verify() == 0


def _anon_huge_kib(address):
    """AnonHugePages (KiB) of the mapping holding address, from /proc/self/smaps."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                found = lo <= address < hi
            elif found and head == "AnonHugePages:":
                return int(line.split()[1])
    raise AssertionError("no mapping at %#x in /proc/self/smaps" % address)


def test_host_discards_of_whole_huge_units_do_not_split_the_others():
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        mode = f.read().split("[")[1].split("]")[0]
    if mode == "never":
        pytest.skip("transparent huge pages are 'never' on this host: no huge pages to keep whole")
    with GuestMemory("32M", thp=True) as mem:
        mem.frames[:] = 7                              # first touch: huge pages where the kernel can
        huge = _anon_huge_kib(mem.address) // 2048
        if huge < 8:
            pytest.skip("the kernel gave only %d huge pages to a MADV_HUGEPAGE region (THP %s)" % (huge, mode))
        units = [0, 2, 3]                              # whole 2 MiB units, discarded as the host does
        pages = np.concatenate([np.arange(u * HUGE_PAGES, (u + 1) * HUGE_PAGES) for u in units])
        mem.set_state(pages, PageState.UNUSED)
        assert mem.discard(pages) == pages.size
        assert _anon_huge_kib(mem.address) // 2048 == huge - len(units)    # the rest still whole
        assert (mem.frames[4 * HUGE_PAGES:] == 7).all()
        # the contrast that shows the check can fail: one 4 KiB discard splits its huge page
        mem.set_state([5 * HUGE_PAGES + 1], PageState.UNUSED)
        mem.discard([5 * HUGE_PAGES + 1])
        assert _anon_huge_kib(mem.address) // 2048 == huge - len(units) - 1


@pytest.mark.parametrize("strategy", ["none", "balloon", "reporting:delay=0.2", "unused", "cmma"])
def test_every_strategy_runs_on_thp_guests_and_says_so(strategy):
    from gphint.cli import build_parser, config_from
    from gphint.experiment import RunConfig, results_document, run_one
    from gphint.report import summary
    cfg = RunConfig(workload="churn,database", guests=2, guest_mem_bytes=16 << 20, duration_s=30.0,
                    ops_per_guest=150, seed=3, probe=False, guest_thp=True)
    args = build_parser().parse_args(["run", "--strategy", strategy] + cfg.cli_args())
    assert config_from(args).guest_thp is True
    rec = run_one(cfg, strategy)
    doc = results_document(cfg, [rec])
    assert doc["config"]["guest_thp"] is True and "THP guests" in summary(doc)
    assert rec["integrity_errors"] == 0 and rec["ops"] > 0


def test_the_probes_fragmented_free_frees_nothing_on_a_thp_guest(g):
    from gphint.host.guests import probe_alloc, probe_free
    a = g.allocator
    frames = probe_alloc(g, 4 * HUGE_PAGES)
    free0 = a.free_pages
    pieces = frames[(np.arange(frames.size) // 16) % 2 == 0]       # 64 KiB pieces
    probe_free(g, pieces)
    assert a.free_pages == free0 and a.pcp_pages == 0 and (usage(g, pieces) == S).all()
    probe_free(g, np.setdiff1d(frames, pieces))                     # the rest: whole huge pages
    assert (usage(g, frames) == U).all() and a.held_pages == 0


def test_thp_script_replays_the_real_guests_frees(tmp_path):
    """scripts/thp_guests.py (the `thp` step), small: on THP guests a free of 4 KiB or 64 KiB
    pieces raises no guest's MemFree and gives the host nothing, whatever the strategy; a whole
    free does, except what waits on the per-cpu lists for reporting -- which hinting still takes."""
    import json
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "thp_guests.py")
    out = tmp_path / "thp.json"
    # the compare runs are test_every_strategy_runs_on_thp_guests_and_says_so's; here the frees
    r = subprocess.run([sys.executable, script, "--modes", "", "--free-guest-mem", "64M",
                        "--free-bytes", "48M", "--json", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["runs"] == []
    rows = {(x["strategy"], x["guest_thp"], x["free"]): x for x in doc["frees"]["rows"]}
    for strategy in ("reporting", "unused", "cmma"):
        for piece in ("4 KiB pieces", "64 KiB pieces"):
            thp, base = rows[(strategy, True, piece)], rows[(strategy, False, piece)]
            assert thp["memfree_up_bytes"] == 0 == thp["host_took_bytes"]
            assert base["memfree_up_bytes"] == base["freed_bytes"]
        whole = rows[(strategy, True, "everything left")]
        assert whole["memfree_up_bytes"] == whole["freed_bytes"] - whole["pcp_bytes"]
        assert whole["verify_mismatches"] == 0
    assert rows[("cmma", False, "64 KiB pieces")]["host_took_bytes"] > 0
    assert rows[("reporting", False, "64 KiB pieces")]["host_took_bytes"] == 0
    rep = rows[("reporting", True, "everything left")]
    assert rep["pcp_bytes"] > 0 and rep["host_took_bytes"] <= rep["freed_bytes"] - rep["pcp_bytes"]
    assert rows[("unused", True, "everything left")]["host_took_bytes"] == rep["freed_bytes"]
    assert "| reporting | THP | 64 KiB pieces |" in r.stdout
    bad = subprocess.run([sys.executable, script, "--modes", "sideways"], capture_output=True, text=True)
    assert bad.returncode == 2 and "'sideways'" in bad.stderr
