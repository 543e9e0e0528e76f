"""Defects of the C fault service, each reproduced: a request that left a hold behind, a lookup
out of bounds, two registrations in one slot, an unregister the host could overtake, a page
whose read fault was answered EEXIST forever, and the baseline loop's ignored failures.

A regression of the hold or the EEXIST loop hangs the thread that touches the page (and, as it
holds the GIL, the interpreter), so those cases run in a child process with a timeout: a
regression fails the test instead of hanging the suite."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint.errors import ClosedError, SyscallError
from gphint.faults import FaultService, HostSwap
from helpers import PAGE, pattern

pytestmark = pytest.mark.usefixtures("compiled_only")
needs_move = pytest.mark.skipif(not caps.has("uffd_move"), reason=caps.probe().features["uffd_move"].reason)
needs_tracking = pytest.mark.skipif(not caps.has("dirty_tracking"),
                                    reason=caps.probe().features["dirty_tracking"].reason)
TESTS = os.path.dirname(os.path.abspath(__file__))
CHILD_TIMEOUT_S = 60   # each child does well under a second of work; this only bounds a hang


def run_child(code, timeout_s=CHILD_TIMEOUT_S):
    """Run code in a fresh interpreter; fail (not hang) if it does not finish.  Returns stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout_s, env=env, cwd=TESTS)
    except subprocess.TimeoutExpired as e:
        pytest.fail("the child hung for %d s; its output so far: %r" % (timeout_s, e.stdout))
    assert p.returncode == 0, "child failed (%d):\n%s%s" % (p.returncode, p.stdout, p.stderr)
    return p.stdout


# --- gph_service_fill: a bad index after good ones ------------------------------------------------
def test_fill_refusing_a_bad_index_leaves_no_page_held():
    """The fill used to take SERVING holds on the missing frames before it checked the rest of
    the indices: on ERANGE those holds stayed, and every later fault or state change of the
    frames spun forever."""
    out = run_child("""
        import os, tempfile, numpy as np, gphint
        from gphint.errors import ConfigError
        from helpers import PAGE, pattern
        svc = gphint.FaultService()
        mem = gphint.GuestMemory("4M")
        svc.register(mem)                      # never-touched frames: Sz, missing
        path = os.path.join(tempfile.gettempdir(), "fill-erange-%d" % os.getpid())
        pattern(16, seed=4).tofile(path)
        fd = os.open(path, os.O_RDONLY)
        os.unlink(path)
        rid = svc._reg(mem).rid
        pages = np.array(list(range(8)) + [mem.npages + 5], dtype=np.int64)
        try:
            svc._thread.fill(rid, pages, fd, np.arange(pages.size, dtype=np.int64) * PAGE, False)
        except ConfigError as e:
            print("refused", e.errno)
        held = int(np.count_nonzero(mem.states[:8] & 0xf0))
        mem.set_state(np.arange(8), "unused")  # waits out holds: hung here
        pair = gphint.states.pair_name(mem.states[0])
        print("held", held, pair, "zeros", int(mem.frames[:8].sum()))
        os.close(fd)
        svc.stop()
    """)
    assert "refused 34" in out          # ERANGE
    assert "held 0 Uz zeros 0" in out   # nothing held, nothing installed, the state change went through


# --- region ids out of bounds ---------------------------------------------------------------------
@pytest.mark.parametrize("rid", [-1, -2 ** 31, 64, 2 ** 31 - 1])
def test_every_entry_point_refuses_a_region_id_out_of_range(rid, mem):
    svc = FaultService()
    try:
        svc.register(mem)
        t = svc._thread
        one = np.zeros(1, dtype=np.int64)
        with pytest.raises(ClosedError, match="region %d is not registered" % rid):
            t.fill(rid, one, 0, one, False)
        with pytest.raises(ClosedError):
            t.host_discard(rid, one, 0, 0, -1, 0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8))
        if svc.can_swap:
            with pytest.raises(ClosedError):
                t.host_swap_out(rid, one, 0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8))
        assert t.stats(rid) is None if rid != -1 else t.stats(rid) is not None   # -1: the total
        assert t.drain(rid, np.zeros(4, dtype=np.int64)) == 0
        assert t.reclaim_slots(rid, 1) == 0
        t.unregister(rid, True)                  # -ENOENT: already gone, not an error
        mem.frames[0, 0] = 7                     # the real region is still served
        assert mem.frames[0, 0] == 7
    finally:
        svc.stop()


# --- register: two threads, one slot --------------------------------------------------------------
def test_concurrent_registrations_get_distinct_regions(backing):
    """register picked a free slot, dropped the lock and filled the slot later: two threads
    registering at once could both take it.  The race delay widens the gap between the pick and
    the fill, where the second thread used to pick the same slot."""
    data, store, _ = backing
    svc = FaultService(window="4K")
    mems = [gphint.GuestMemory("4M") for _ in range(4)]
    try:
        svc.set_race_delay(50_000_000)
        errors = []

        def reg(m):
            try:
                svc.register(m)
            except Exception as e:   # noqa: BLE001 -- reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=reg, args=(m,)) for m in mems]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        svc.set_race_delay(0)
        assert not errors
        rids = [svc._reg(m).rid for m in mems]
        assert len(set(rids)) == len(mems), rids
        for k, m in enumerate(mems):   # each region serves its own memory, from its own tables
            pages = np.arange(16)
            m.frames[pages] = data[pages + 16 * k]
            m.set_backing(pages, store, (pages + 16 * k) * PAGE)
            m.set_state(pages, PageState.VOLATILE)
            assert m.discard(pages) == pages.size
        for k, m in enumerate(mems):
            assert np.array_equal(m.frames[:16], data[16 * k:16 * k + 16])
            assert svc.stats(m)["file_reloads"] == 16
    finally:
        svc.stop()
        for m in mems:
            m.close()


# --- unregister against a concurrent host operation ----------------------------------------------
def wait_until(cond, what, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting until " + what
        time.sleep(0.001)


def held_by_host(mem):
    return bool((mem.states & 0x10).any())   # GPH_FLAG_BUSY: the host has picked pages


def assert_all_back(mem, data, swap):
    """Every page resident, stable and byte-exact, and no swap slot left behind."""
    assert mem.census() == {"Sr": mem.npages}
    assert np.array_equal(mem.frames, data)
    assert swap.used_slots == 0


@needs_move
def test_unregister_waits_out_a_swap_out_in_flight_and_reloads_its_pages():
    """unregister reloads swapped pages and then unregisters; a swap-out that had passed its
    region check before unregister began used to finish in between, leaving pages Sp that then
    read back as zeros.  The race delay keeps the swap-out inside its hold while unregister runs."""
    swap = HostSwap("8M")
    svc = FaultService()
    mem = gphint.GuestMemory("4M")
    try:
        svc.register(mem)
        data = pattern(mem.npages, seed=1)
        mem.frames[:] = data
        svc.set_race_delay(200_000_000)
        done = []
        host = threading.Thread(target=lambda: done.append(svc.swap_out(mem, np.arange(mem.npages), swap)))
        host.start()
        wait_until(lambda: held_by_host(mem), "the host holds pages (BUSY, inside the delay)")
        svc.unregister(mem)
        host.join(30)
        svc.set_race_delay(0)
        assert done == [mem.npages]
        assert mem.fault_service is None
        assert_all_back(mem, data, swap)
    finally:
        svc.stop()
        mem.close()
        swap.close()


def test_unregister_waits_out_a_discard_in_flight_and_reloads_its_pages(backing):
    data, store, _ = backing
    svc = FaultService()
    mem = gphint.GuestMemory("4M")
    try:
        svc.register(mem)
        pages = np.arange(256)
        mem.frames[pages] = data[pages]
        mem.set_backing(pages, store, pages * PAGE)
        mem.set_state(pages, PageState.VOLATILE)
        svc.set_race_delay(200_000_000)
        done = []
        host = threading.Thread(target=lambda: done.append(svc.discard(mem, pages)))
        host.start()
        wait_until(lambda: held_by_host(mem), "the host holds pages (BUSY, inside the delay)")
        svc.unregister(mem)
        host.join(30)
        svc.set_race_delay(0)
        assert done == [256]
        assert mem.census().get("Vz", 0) == 0
        assert np.array_equal(mem.frames[pages], data[pages])
    finally:
        svc.stop()
        mem.close()


class _LateHost:
    """The service's C thread object, with the host's call into C made late: the host looked the
    guest up (FaultService._reg) before unregister began, and calls in once `when()` is true."""

    def __init__(self, thread, when):
        self._thread, self._when = thread, when

    def __getattr__(self, name):
        return getattr(self._thread, name)

    def host_swap_out(self, *args):
        wait_until(self._when, "the moment to call in")
        return self._thread.host_swap_out(*args)


@needs_move
def test_a_swap_out_arriving_while_unregister_reloads_does_nothing():
    """The host's registration check passed, then unregister began reloading swapped pages, then
    the host's swap-out reached C: it used to swap out pages unregister had already passed,
    which then read back as zeros.  Now the region is closed to the host before the reload."""
    swap = HostSwap("8M")
    svc = FaultService(window="64K")
    mem = gphint.GuestMemory("4M")
    try:
        svc.register(mem)
        data = pattern(mem.npages, seed=5)
        mem.frames[:] = data
        low, high = np.arange(mem.npages // 2), np.arange(mem.npages // 2, mem.npages)
        assert svc.swap_out(mem, high, swap) == high.size   # unregister has these to reload
        svc.set_race_delay(20_000_000)                      # 20 ms per reload window: ~0.6 s
        # call in once unregister is reloading the high half (some back, not all)
        svc._thread = _LateHost(svc._thread, lambda: 0 < np.count_nonzero(mem.content(high) == 0) < high.size)
        done = []
        host = threading.Thread(target=lambda: done.append(svc.swap_out(mem, low, swap)))
        host.start()
        svc.unregister(mem)                                 # reloading the high half when the host calls in
        host.join(30)
        svc._thread = svc._thread._thread
        svc.set_race_delay(0)
        assert done == [0]                                  # refused: it did nothing
        assert_all_back(mem, data, swap)
    finally:
        svc.stop()
        mem.close()
        swap.close()


@needs_move
def test_unregister_against_a_host_swapping_out_loses_nothing():
    """A host thread swapping out a guest's resident pages in a loop while the guest is
    unregistered: whatever it took before unregister comes back, and a call that was already
    under way when unregister began does nothing (0 pages) -- never a page left preserved."""
    swap = HostSwap("16M")
    lost = []
    for trial in range(4):
        svc = FaultService()
        mem = gphint.GuestMemory("8M")
        svc.register(mem)
        data = pattern(mem.npages, seed=trial)
        mem.frames[:] = data
        stop = threading.Event()
        errors = []

        def host():
            while not stop.is_set():
                try:
                    svc.swap_out(mem, np.arange(mem.npages), swap)   # takes the resident ones
                except gphint.ConfigError:   # "not registered": the guest is gone, as it should be
                    return
                except Exception as e:       # noqa: BLE001 -- reported by the assertion below
                    errors.append(e)
                    return

        t = threading.Thread(target=host)
        t.start()
        time.sleep(0.05)
        svc.unregister(mem)
        stop.set()
        t.join(30)
        assert not errors
        lost.append(int(np.count_nonzero((mem.frames != data).any(axis=1))))
        assert "Sp" not in mem.census()
        svc.stop()
        mem.close()
    swap.close()
    assert lost == [0] * 4


# --- clear_dirty on pages that are not there ------------------------------------------------------
@needs_tracking
@pytest.mark.parametrize("how", ["untouched", "unused", "volatile", "swapped"])
@pytest.mark.parametrize("access", ["read", "write"])
def test_clearing_the_dirty_bit_of_a_missing_page_then_touching_it_returns(how, access):
    """PAGEMAP_SCAN's write-protect on a page with no pte installs a uffd-wp marker there; the
    next fault is a missing fault that UFFDIO_ZEROPAGE answered EEXIST (the pte is not none),
    the thread refaulted forever, and with the GIL held so did the interpreter."""
    if how == "swapped" and not caps.has("uffd_move"):
        pytest.skip(caps.probe().features["uffd_move"].reason)
    out = run_child("""
        import os, tempfile, numpy as np, gphint
        from gphint.faults import FileStore, HostSwap
        from helpers import PAGE, pattern
        how, access = %r, %r
        svc = gphint.FaultService()
        mem = gphint.GuestMemory("4M")
        svc.register(mem)
        data = pattern(64, seed=2)
        expect = np.zeros((64, PAGE), dtype=np.uint8)
        pages = np.arange(8, 40)
        path = os.path.join(tempfile.gettempdir(), "cleardirty-%%d" %% os.getpid())
        data.tofile(path)
        store = FileStore(path)
        os.unlink(path)
        swap = HostSwap("1M")
        if how == "unused":
            mem.frames[pages] = 1
            mem.set_state(pages, "unused"); mem.discard(pages)
        elif how == "volatile":
            mem.frames[pages] = data[pages]
            mem.set_backing(pages, store, pages * PAGE)
            mem.set_state(pages, "volatile"); mem.discard(pages)
            expect[pages] = data[pages]
        elif how == "swapped":
            mem.frames[pages] = data[pages]
            assert svc.swap_out(mem, pages, swap) == pages.size
            expect[pages] = data[pages]
        assert not mem.residency()[pages].any()
        svc.clear_dirty(mem, pages)
        if access == "write":
            for p in pages.tolist():
                mem.frames[p, 1] = 0xA5
            expect[pages, 1] = 0xA5
        same = np.array_equal(mem.frames[:64], expect)
        st = svc.stats(mem)
        print("same", same, "eexist", svc.stats()["eexist"], "refault_loops", st["refault_loops"])
        svc.check()
        if how in ("volatile", "swapped"):   # their bytes: still the file's / the swapped ones
            svc.unregister(mem)
            print("after unregister", np.array_equal(mem.frames[:64], expect))
        svc.stop(); store.close(); swap.close()
    """ % (how, access))
    assert "same True" in out, out
    assert "refault_loops 0" in out, out          # the root cause is fixed, not the guard's job
    eexist = int(out.split("eexist ")[1].split()[0])
    assert eexist <= 64, out                      # one per page at most, never a loop
    if how in ("volatile", "swapped"):
        assert "after unregister True" in out


@needs_tracking
def test_written_after_a_clear_of_a_missing_page_reads_dirty(mem):
    """A page filled after its bit was cleared while missing must not read clean: the host
    would discard guest data as if it were its file's."""
    svc = FaultService()
    try:
        svc.register(mem)
        svc.clear_dirty(mem, np.arange(4))      # never touched: Sz, no pte
        mem.frames[2, 0] = 9
        assert svc.dirty_pages(mem, [2]).all()
    finally:
        svc.stop()


@needs_tracking
def test_random_guest_sequences_with_dirty_clears_neither_hang_nor_lose_a_byte():
    """Hypothesis sequences of guest and host operations on a few pages, with dirty-bit clears
    at any point (present or not): every read gives the modelled bytes, nothing loops.  The
    whole search runs in one child with a timeout, since a regression hangs rather than fails."""
    out = run_child("""
        import os, tempfile, numpy as np, gphint
        from hypothesis import given, settings, strategies as st, HealthCheck
        from gphint.faults import FileStore, HostSwap
        from helpers import PAGE, pattern
        NPAGES = 4                     # few pages: sequences revisit each one often
        data = pattern(NPAGES, seed=31)
        path = os.path.join(tempfile.gettempdir(), "dirty-seq-%d" % os.getpid())
        data.tofile(path)
        store = FileStore(path)
        os.unlink(path)
        swap = HostSwap("1M")
        svc = gphint.FaultService(swap=swap)
        OPS = ["cache", "free", "alloc", "discard", "swap", "clear", "read", "peek", "write"]
        runs = []

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, NPAGES - 1), st.integers(0, 255)),
                        min_size=30, max_size=80))
        def run(ops):
            with gphint.GuestMemory("256K") as mem:
                svc.register(mem)
                usage = ["S"] * NPAGES
                expect = [np.full(PAGE, 7 + p, dtype=np.uint8) for p in range(NPAGES)]
                mem.frames[:NPAGES] = np.stack(expect)
                for op, p, v in ops:
                    if op == "cache" and usage[p] == "S":      # a page-cache page of the file
                        mem.frames[p] = data[p]
                        mem.set_backing([p], store, [p * PAGE])
                        mem.set_state([p], "volatile")
                        usage[p], expect[p] = "V", data[p].copy()
                    elif op == "free" and usage[p] in "SV":
                        mem.set_state([p], "unused")
                        usage[p], expect[p] = "U", None      # content don't-care
                    elif op == "alloc" and usage[p] == "U":
                        mem.set_state([p], "stable")
                        mem.frames[p] = v
                        usage[p], expect[p] = "S", np.full(PAGE, v, dtype=np.uint8)
                    elif op == "discard" and usage[p] in "UV":
                        mem.discard([p])
                    elif op == "swap":
                        svc.swap_out(mem, [p])               # STABLE resident only; others skipped
                    elif op == "clear":
                        svc.clear_dirty(mem, [p])
                    elif op == "write" and usage[p] == "S":
                        mem.frames[p, v] = v
                        expect[p][v] = v
                    elif op == "read" and expect[p] is not None:
                        assert np.array_equal(mem.frames[p], expect[p]), (op, p, ops)
                    elif op == "peek":                         # any page, don't-care ones too:
                        int(mem.frames[p].sum())               # the read must return
                for p in range(NPAGES):
                    if expect[p] is not None:
                        assert np.array_equal(mem.frames[p], expect[p]), (p, ops)
                st_ = svc.stats(mem)
                assert st_["lost_pages"] == 0 and st_["refault_loops"] == 0, st_
            runs.append(len(ops))

        run()
        svc.check()
        print("sequences", len(runs), "ops", sum(runs))
        svc.stop(); store.close(); swap.close()
    """, timeout_s=300)
    assert "sequences" in out
    assert int(out.split("sequences ")[1].split()[0]) >= 60


# --- uffd_baseline: failures of eventfd and pthread_create ----------------------------------------
def test_baseline_reports_an_eventfd_failure_instead_of_hanging():
    """With no descriptor left for the eventfd, the baseline used to run without a stop fd and
    then wait forever for its helper thread."""
    out = run_child("""
        import os, resource, numpy as np, mmap
        from gphint._mechanism import mech
        from gphint.errors import SyscallError
        region = mmap.mmap(-1, 16 * mmap.PAGESIZE)
        buf = np.frombuffer(region, dtype=np.uint8)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(held.pop())                     # exactly one left: the userfaultfd takes it
        try:
            mech.uffd_baseline(buf, mmap.PAGESIZE)
            print("no error")
        except SyscallError as e:
            print("refused", e.errno, str(e))
        for fd in held:
            os.close(fd)
        print("after", mech.uffd_baseline(buf, mmap.PAGESIZE) > 0)
    """)
    assert "refused 24" in out and "eventfd" in out    # EMFILE, named
    assert "after True" in out                         # nothing left behind: it works again


def test_baseline_reports_a_thread_creation_failure_instead_of_hanging():
    """Without its helper thread nothing serves the faults the baseline then takes."""
    out = run_child("""
        import resource, numpy as np, mmap
        from gphint._mechanism import mech
        from gphint.errors import SyscallError
        region = mmap.mmap(-1, 16 * mmap.PAGESIZE)
        buf = np.frombuffer(region, dtype=np.uint8)
        # leave no room for a thread stack (8 MiB by default): pthread_create fails with EAGAIN
        vm_kib = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, ((vm_kib + 2048) * 1024, hard))
        try:
            mech.uffd_baseline(buf, mmap.PAGESIZE)
            print("no error")
        except SyscallError as e:
            print("refused", e.errno, str(e))
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("after", mech.uffd_baseline(buf, mmap.PAGESIZE) > 0)
    """)
    assert "refused 11" in out and "pthread_create" in out   # EAGAIN, named
    assert "after True" in out
