"""MADV_FREE (`discard=free`): a lazily freed page (Uf/Vf) reads back right whether or not the
kernel reclaimed it, and the counters say which happened.

The kernel is made to decide with MADV_PAGEOUT: it reclaims a clean lazily freed anonymous page at
once, even without swap (mm/vmscan.c drops a clean lazyfree folio without I/O), and keeps one that
was written since (mm/rmap.c maps a redirtied lazyfree folio back).  Every test checks residency
with mincore, so a kernel that did not reclaim would fail it rather than pass it vacuously."""
import os

import numpy as np
import pytest

import gphint
from gphint import HostState, PageState
from gphint.memory import discard_counters
from helpers import PAGE, pattern

MADV_PAGEOUT = 21
S, U, V = PageState.STABLE, PageState.UNUSED, PageState.VOLATILE

needs_free = pytest.mark.skipif(not gphint.caps.has("madv_free"),
                                reason=gphint.caps.probe().features["madv_free"].reason)
pytestmark = needs_free


@pytest.fixture(autouse=True)
def one_cpu():
    """MADV_FREE queues each folio in a per-CPU batch that holds a reference until drained, and
    MADV_PAGEOUT drains only its own CPU's (mm/swap.c): a thread that migrated in between would
    see the page kept.  Pin the test's thread (and a fault thread it starts) to one CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


def pageout(mem, pages):
    """Ask the kernel to reclaim these pages now."""
    for first in np.asarray(pages, dtype=np.int64).tolist():
        mem._map.madvise(MADV_PAGEOUT, mem._offset + first * PAGE, PAGE)


def lazily_free(mem, pages, data):
    mem.frames[pages] = data
    mem.set_state(pages, U)
    assert mem.discard(pages, advice="free") == pages.size
    assert (mem.content(pages) == HostState.LAZY).all()
    assert mem.residency()[pages].all()                 # still mapped: MADV_FREE frees nothing yet


@pytest.fixture
def small(new_mem):
    return new_mem("1M")


def test_the_mechanism_and_the_contract_agree_on_the_lazily_freed_codes():
    from gphint._mechanism import mech
    assert mech.NEXT_RESOLVE == gphint.states.RESOLVE
    assert mech.CONTENT_LAZY == int(HostState.LAZY) and HostState.LAZY.letter == "f"
    nxt = gphint.states.NEXT_TABLE
    uf, vf = gphint.states.pair(U, HostState.LAZY), gphint.states.pair(V, HostState.LAZY)
    assert nxt[(uf << 2) | (int(S) >> 2)] == gphint.states.RESOLVE     # allocation asks the kernel
    assert nxt[(uf << 2) | (int(U) >> 2)] == uf and nxt[(vf << 2) | (int(U) >> 2)] == uf
    assert nxt[(uf << 2) | (int(V) >> 2)] == 0xFF                      # no content to vouch for


def test_pageout_reclaims_a_lazily_freed_page_and_keeps_a_rewritten_one(small):
    """The witness the other tests rely on: MADV_PAGEOUT really decides both ways here."""
    pages = np.arange(8, dtype=np.int64)
    lazily_free(small, pages, pattern(8, 1))
    small.frames[3, 100] = 7                            # a write cancels the lazy free
    pageout(small, pages)
    res = small.residency()[pages]
    assert res[3] and not res[np.arange(8) != 3].any()


def test_allocating_a_lazily_freed_page_the_kernel_kept_reuses_its_frame(small):
    pages = np.arange(16, 48, dtype=np.int64)
    old = pattern(pages.size, 2)
    lazily_free(small, pages, old)
    small.set_state(pages, S)
    assert small.census().get("Sr", 0) >= pages.size and "Uf" not in small.census()
    assert np.array_equal(small.frames[pages], old)     # no refault: the same bytes are there
    assert small.stats["lazy_reused_pages"] == pages.size
    assert small.stats["lazy_reclaimed_pages"] == 0
    pageout(small, pages)                               # taken back = written: the kernel keeps it
    assert small.residency()[pages].all()
    assert np.array_equal(small.frames[pages], old)


def test_allocating_a_lazily_freed_page_the_kernel_reclaimed_gives_a_zero_page(small):
    pages = np.arange(16, 48, dtype=np.int64)
    lazily_free(small, pages, pattern(pages.size, 3))
    pageout(small, pages)
    assert not small.residency()[pages].any()
    small.set_state(pages, S)
    assert (small.content(pages) == HostState.ZERO).all()        # Sz: logically zero, missing
    assert small.stats["lazy_reclaimed_pages"] == pages.size
    assert small.stats["lazy_reused_pages"] == 0
    assert not small.frames[pages].any()


def test_the_hint_queue_resolves_lazily_freed_pages_on_allocation(small):
    """The allocator's path (HintQueue -> gph_set_usage) knows only the state table: the frames
    registry lets it ask the kernel all the same."""
    from gphint.guest.allocator import BuddyAllocator
    a = BuddyAllocator(small, batch=8)
    pages = a.alloc(64)
    small.frames[pages] = pattern(64, 4)
    a.free(pages)
    a.flush_hints()
    assert small.discard(pages, advice="free") == 64
    pageout(small, pages[:20])
    again = a.alloc(small.npages)                       # everything, whichever order it comes in
    a.flush_hints()
    gone = np.isin(again, pages[:20])
    kept = np.isin(again, pages[20:])
    assert (small.content(again[gone]) == HostState.ZERO).all()
    assert (small.content(again[kept]) == HostState.RESIDENT).all()
    assert small.stats["lazy_reclaimed_pages"] == 20 and small.stats["lazy_reused_pages"] == 44
    assert "Uf" not in small.census() and "Sf" not in small.census()


def test_host_dontneed_takes_a_lazily_freed_page_and_free_leaves_it(small):
    pages = np.arange(8, dtype=np.int64)
    lazily_free(small, pages, pattern(8, 5))
    before = dict(small.stats)
    small.discard(pages, advice="free")                 # already lazily freed: still Uf
    assert (small.content(pages) == HostState.LAZY).all()
    small.discard(pages, advice="dontneed")
    assert (small.content(pages) == HostState.ZERO).all()
    assert not small.residency()[pages].any()
    # the DONTNEED asked the kernel about 8 resident pages
    assert small.stats["discarded_resident_pages"] - before["discarded_resident_pages"] >= 8


def test_results_counters_resolve_what_the_kernel_reclaimed_by_the_end(small):
    pages = np.arange(32, dtype=np.int64)
    lazily_free(small, pages, pattern(32, 6))
    pageout(small, pages[:10])
    got = discard_counters([small])
    assert got["lazy_freed_pages"] == 32
    assert got["lazy_reclaimed_pages"] == 10 and got["lazy_pending_pages"] == 22
    assert got["lazy_reused_pages"] == 0
    assert small.census()["Uz"] >= 10 and small.census()["Uf"] == 22


# --- with the fault service: VOLATILE pages, page-cache fills, fault-around, unregister --------

@pytest.fixture
def served(compiled_only, tmp_path):
    from gphint.faults import FaultService, FileStore
    npages = 64
    data = pattern(npages, 7)
    path = tmp_path / "backing"
    data.tofile(path)
    store = FileStore(path)
    fd = os.open(path, os.O_RDONLY)
    svc = FaultService(window="64K")
    mem = gphint.GuestMemory(npages * PAGE)
    svc.register(mem)
    mem.frames[:] = data                                 # the guest read the file
    mem.set_backing(np.arange(npages), store, np.arange(npages) * PAGE)
    yield mem, svc, data, fd
    svc.stop()
    mem.close()
    os.close(fd)
    store.close()


def test_volatile_page_the_kernel_kept_is_made_stable_without_a_reload(served):
    mem, svc, data, _ = served
    pages = np.arange(8, 24, dtype=np.int64)
    mem.set_state(pages, V)
    assert mem.discard(pages, advice="free") == pages.size
    assert mem.census()["Vf"] == pages.size
    assert mem.make_stable(pages).size == 0             # no discard fault: the bytes are there
    assert (mem.content(pages) == HostState.RESIDENT).all()
    assert svc.stats(mem)["file_reloads"] == 0
    pageout(mem, pages)                                 # made stable = kept for good
    assert mem.residency()[pages].all()
    assert np.array_equal(mem.frames[pages], data[pages])
    assert mem.stats["lazy_reused_pages"] == pages.size


def test_volatile_page_the_kernel_reclaimed_is_a_discard_fault_and_reloads(served):
    mem, svc, data, _ = served
    pages = np.arange(8, 24, dtype=np.int64)
    mem.set_state(pages, V)
    mem.discard(pages, advice="free")
    pageout(mem, pages)
    assert not mem.residency()[pages].any()
    lost = mem.make_stable(pages)
    assert np.array_equal(np.sort(lost), pages)         # Vz: the guest reloads (or drops) them
    int(mem.frames[pages, 0].sum())                     # the guest's touch: the service reloads
    assert np.array_equal(mem.frames[pages], data[pages])
    assert mem.stats["lazy_reclaimed_pages"] == pages.size


def test_reading_a_reclaimed_lazily_freed_page_faults_and_reloads_it(served):
    mem, svc, data, _ = served
    pages = np.arange(32, 40, dtype=np.int64)
    mem.set_state(pages, V)
    mem.discard(pages, advice="free")
    pageout(mem, pages)
    assert np.array_equal(mem.frames[pages], data[pages])   # a page-cache hit, no transition
    assert svc.stats(mem)["lazy_refaults"] >= 1
    assert mem.stats["lazy_reclaimed_pages"] == pages.size   # counted by the fault thread


def test_a_page_cache_fill_into_a_reallocated_lazily_freed_frame_gets_the_file(served):
    """The reported loss: a re-allocated frame the host had MADV_FREE'd was taken as missing
    (Sz), its UFFDIO_COPY met EEXIST and the frame kept its old bytes.  Kept or reclaimed, the
    fill must leave the file's bytes."""
    mem, svc, data, fd = served
    pages = np.arange(0, 16, dtype=np.int64)
    mem.frames[pages] = 0xEE                            # what the frames held before the free
    mem.clear_backing(pages)
    mem.set_state(pages, U)
    mem.discard(pages, advice="free")
    pageout(mem, pages[::2])
    mem.set_state(pages, S)                             # re-allocated as a page-cache frame
    mem.fill_from_file(pages, fd, pages * PAGE)
    assert np.array_equal(mem.frames[pages], data[pages])


def test_fault_around_never_copies_over_a_lazily_freed_neighbour(served):
    """A read fault's window may cover a lazily freed page that is still mapped: it must stay
    lazily freed (marking it resident would let a later make_stable skip the kernel's say)."""
    mem, svc, data, _ = served
    window = np.arange(16, dtype=np.int64)             # one 64 KiB fault-around window
    mem.set_state(window, V)
    assert mem.discard(window[window != 5], advice="dontneed") == 15
    assert mem.discard([5], advice="free") == 1
    assert pair(mem, 5) == "Vf" and pair(mem, 0) == "Vz"
    int(mem.frames[0, 0])                               # fault on page 0: window 0..15 served
    assert pair(mem, 1) == "Vr" and pair(mem, 5) == "Vf"
    pageout(mem, [5])
    lost = mem.make_stable([5])
    assert lost.tolist() == [5]
    int(mem.frames[5, 0])
    assert np.array_equal(mem.frames[window], data[window])


def test_unregister_materializes_lazily_freed_cache_pages_kept_or_reclaimed(served):
    mem, svc, data, _ = served
    pages = np.arange(40, 56, dtype=np.int64)
    mem.set_state(pages, V)
    mem.discard(pages, advice="free")
    pageout(mem, pages[:8])
    svc.unregister(mem)                                 # the memory must now stand on its own
    pageout(mem, pages)                                 # the kept ones were taken back: stay
    assert mem.residency()[pages].all()
    assert np.array_equal(mem.frames[pages], data[pages])


def test_host_discard_counts_real_calls_runs_and_resident_pages(served):
    mem, svc, data, _ = served
    pages = np.arange(0, 64, 2, dtype=np.int64)         # 32 runs of one page
    mem.set_state(pages, U)
    mem.discard(pages[:4], advice="dontneed")
    before = dict(mem.stats)
    assert mem.discard(pages, advice="free", submit="coalesce") == 28   # Uz ones are skipped
    d = {k: mem.stats[k] - before[k] for k in ("discard_calls", "discard_runs", "discarded_pages",
                                               "discarded_resident_pages", "lazy_freed_pages")}
    assert d == {"discard_calls": 28, "discard_runs": 28, "discarded_pages": 28,
                 "discarded_resident_pages": 28, "lazy_freed_pages": 28}


def pair(mem, p):
    return gphint.states.pair_name(mem.states[p])


# --- real memory pressure: a memory cgroup (v1) whose limit is set below what it holds --------
CGROUP_CHILD = r'''
import json, os, sys
import numpy as np
import gphint
cg = sys.argv[1]
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))                       # charged to the test's cgroup from now on
mem = gphint.GuestMemory("64M")
rng = np.random.default_rng(8)
old = rng.integers(0, 256, size=(mem.npages, 4096), dtype=np.uint8)
mem.frames[:] = old
pages = np.arange(mem.npages, dtype=np.int64)
mem.set_state(pages, "unused")
mem.discard(pages, advice="free")
with open(os.path.join(cg, "memory.usage_in_bytes")) as f:
    usage = int(f.read())
# the kernel must reclaim to fit: only the lazily freed pages are reclaimable (there is no swap)
with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
    f.write(str(usage - 32 * 2**20))
resident = mem.residency()
mem.set_state(pages, "stable")                     # the guest allocates every page again
with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
    f.write("-1")                                   # decided: the checks' temporaries need room
content = mem.content()
zero = content == 3
ok_kept = bool((mem.frames[~zero] == old[~zero]).all())
ok_zero = not mem.frames[zero].any()
print(json.dumps({"missing_before": int((~resident).sum()), "zero": int(zero.sum()),
                  "missing_and_kept": int((~resident & ~zero).sum()),
                  "kept": int((~zero).sum()), "ok_kept": ok_kept, "ok_zero": ok_zero,
                  "stats": {k: int(v) for k, v in mem.stats.items()}}))
'''


def test_a_memory_cgroup_limit_makes_the_kernel_reclaim_and_both_fates_read_back(tmp_path):
    import json
    import subprocess
    import sys
    root = "/sys/fs/cgroup/memory"
    if not os.access(os.path.join(root, "cgroup.procs"), os.W_OK):
        pytest.skip("no writable cgroup v1 memory controller at %s" % root)
    prefix = "gphint-test-lazyfree-"
    for stale in os.listdir(root):                   # left by a test run that was killed
        if stale.startswith(prefix) and stale[len(prefix):].isdigit() \
                and not os.path.exists("/proc/%s" % stale[len(prefix):]):
            try:
                os.rmdir(os.path.join(root, stale))
            except OSError:
                pass                                 # not empty: someone's child still runs
    cg = os.path.join(root, prefix + str(os.getpid()))
    os.mkdir(cg)
    try:
        script = tmp_path / "child.py"
        script.write_text(CGROUP_CHILD)
        r = subprocess.run([sys.executable, str(script), cg], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        os.rmdir(cg)                                 # the child has exited: the cgroup is empty
    # the limit made the kernel reclaim (how much of the 32 MiB asked for came from lazily
    # freed pages depends on what else the child had charged: page cache, the interpreter)
    assert got["missing_before"] >= 16 * 256
    # each page missing before is found reclaimed; more may be (the limit still pressed while
    # the guest allocated), never fewer: a missing page does not come back by itself
    assert got["zero"] >= got["missing_before"] and got["missing_and_kept"] == 0
    assert got["kept"] > 0 and got["ok_kept"] and got["ok_zero"]
    assert got["stats"]["lazy_reclaimed_pages"] == got["zero"]
    assert got["stats"]["lazy_reused_pages"] == got["kept"]
