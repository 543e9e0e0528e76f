"""The Guest API, its errors, reclaim, and verify() == 0 after randomised operation sequences
interleaved with host discards of every discardable state (hypothesis)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import ClosedError, ConfigError, PageState
from gphint.guest.content import PAGE_SIZE
from gphint.guest.guest import Guest
from gphint.guest.workloads import make_workload

from helpers import EXAMPLES, fault_service_or_skip


U, V, P = int(PageState.UNUSED), int(PageState.VOLATILE), int(PageState.POT_VOLATILE)


def host_discard(g, rng, states=(U,), fraction=0.5):
    """The host discards a random part of the guest's pages in the given usage states."""
    g.allocator.flush_hints()
    usage = g.mem.usage()
    content = g.mem.content()
    cand = np.flatnonzero(np.isin(usage, states) & (content == 0))
    if cand.size == 0:
        return 0
    pick = cand[rng.random(cand.size) < fraction]
    return g.mem.discard(pick) if pick.size else 0


def test_api_basics_and_errors():
    with pytest.raises(ConfigError, match="discard_mode"):
        Guest("4M", discard_mode="sometimes", workload=None)
    with pytest.raises(ConfigError, match="seed"):
        Guest("4M", seed=-1, workload=None)
    with pytest.raises(ConfigError, match="guest memory size"):
        Guest("lots", workload=None)
    g = Guest("8M", seed=1, workload=None, file_bytes="4M")
    assert g.mem.npages == 2048 and g.allocator.free_pages == 2048
    assert set(g.census()) == {"Ur"}
    with pytest.raises(ConfigError, match="npages"):
        g.alloc(-3)
    with pytest.raises(ConfigError, match="reclaim"):
        g.reclaim("x")
    with pytest.raises(ConfigError, match="hint level"):
        g.set_hint_level("some")
    g.close()
    g.close()
    with pytest.raises(ClosedError):
        g.read(g.files.paths[0] if False else "x", 0, 1)


def test_reclaim_for_the_balloon_frees_frames():
    with Guest("8M", seed=2, workload="fileserver", file_bytes="16M") as g:
        g.step(600)
        free_before = g.allocator.free_pages
        freed = g.reclaim(500)
        assert freed >= 500
        assert g.allocator.free_pages >= free_before + 500
        assert g.verify() == 0


def test_hint_level_unused_keeps_the_cache_stable():
    with Guest("8M", seed=2, workload="fileserver", file_bytes="16M") as g:
        g.step(200)
        assert g.census().get("Vr", 0) > 0
        g.set_hint_level("unused")
        assert "Vr" not in g.census()
        g.step(200)
        assert "Vr" not in g.census() and g.census().get("Ur", 0) > 0
        g.set_hint_level("all")
        assert g.census().get("Vr", 0) > 0
        assert g.verify() == 0


def test_gphint_exports_guest():
    assert gphint.Guest is Guest


OPS = st.lists(st.tuples(st.sampled_from(["read", "write", "wgen", "writeback", "alloc", "free",
                                          "touch", "swap", "reclaim", "pin", "discard_u",
                                          "discard_v", "hostswap", "map", "store", "msync",
                                          "mlock", "lock", "level", "step"]),
                         st.integers(0, 10 ** 6), st.integers(1, 40)),
               min_size=5, max_size=40)


def run_sequence(g, ops, rng, volatile_discards, host_swap=None):
    anon = []
    pinned = []
    mapped = []
    paths = g.files.paths
    for op, a, b in ops:
        path = paths[a % len(paths)]
        size = int(g.files.size_bytes[g.files.lookup(path)])
        off = (a * 7919) % max(1, size)
        if op == "read":
            g.read(path, off, b * 1000)
        elif op == "write":
            g.write(path, off, bytes([a % 251]) * (b * 100))
        elif op == "wgen":
            g.write(path, off, None, b * 500)
        elif op == "writeback":
            g.writeback()
        elif op == "alloc":
            anon.append((a % 3, g.alloc(b * 8, pid=a % 3)))
        elif op == "free" and anon:
            pid, pages = anon.pop(a % len(anon))
            g.free(pages, pid=pid)
        elif op == "touch" and anon:
            pid, pages = anon[a % len(anon)]
            g.touch(pages[::2], pid=pid)
        elif op == "swap":
            g.anon.swap_out(g.anon.swap_out_candidates()[:b * 4])
        elif op == "reclaim":
            g.reclaim(b * 10)
        elif op == "pin":
            if pinned and a % 2:
                g.unpin(*pinned.pop())
            else:
                g.pin(path, off, b * 10)
                pinned.append((path, off, b * 10))
        elif op == "discard_u":
            host_discard(g, rng, (U,))
        elif op == "discard_v" and volatile_discards:
            host_discard(g, rng, (U, V, P))          # dirty P pages are preserved, not lost
        elif op == "hostswap" and host_swap is not None:
            g.allocator.flush_hints()
            resident = np.flatnonzero((g.mem.states & 0x0F) == 0)      # Sr: the host swaps them
            pick = resident[rng.random(resident.size) < 0.3]
            if pick.size:
                g.fault_service.swap_out(g.mem, pick, host_swap)
        elif op == "map":
            g.map_writable(path, off, b * 100)
            mapped.append((path, off, b * 100))
        elif op == "store" and mapped:
            g.store_mapped(*mapped[a % len(mapped)])
        elif op == "msync":
            g.msync()
        elif op == "mlock" and anon:
            pid, pages = anon[a % len(anon)]
            (g.mlock if a % 2 else g.munlock)(pages[:b], pid=pid)
        elif op == "lock":
            g.lock(path, off, b * 50, on=bool(a % 2))
        elif op == "level":
            g.set_hint_level(("all", "unused")[a % 2])
        elif op == "step":
            g.workload = g.workload or make_workload(("build", "churn", "database")[a % 3], g, seed=a)
            g.step(b)
        assert g.verify() == 0, "after %s" % op
    for p in pinned:
        g.unpin(*p)


@settings(max_examples=EXAMPLES + 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 1000))
def test_random_sequences_with_unused_discards_lose_nothing(ops, seed):
    with Guest("4M", seed=seed, workload=None, file_bytes="6M") as g:
        run_sequence(g, ops, np.random.default_rng(seed), volatile_discards=False)
        g.sync()
        assert g.verify() == 0


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_random_sequences_with_volatile_discards_lose_nothing(mode):
    svc = fault_service_or_skip()
    host_swap = gphint.HostSwap("16M") if svc.can_swap else None
    try:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(ops=OPS, seed=st.integers(0, 1000))
        def check(ops, seed):
            with Guest("4M", seed=seed, workload=None, file_bytes="6M", discard_mode=mode,
                       fault_service=svc) as g:
                run_sequence(g, ops, np.random.default_rng(seed), volatile_discards=True,
                             host_swap=host_swap)
                g.sync()
                assert g.verify() == 0
        check()
    finally:
        svc.stop()
        if host_swap is not None:
            host_swap.close()


def test_verify_catches_a_corrupted_page():
    """verify() is a real witness: one flipped byte in a cached page, an anonymous page, or a
    written-back file is counted."""
    with Guest("8M", seed=3, workload="database", file_bytes="8M") as g:
        g.step(300)
        g.sync()
        assert g.verify() == 0
        cached = np.flatnonzero(g.table.kind == 1)
        anon = np.flatnonzero(g.table.kind == 2)
        g.mem.frames[cached[5], 17] ^= 0xFF
        g.mem.frames[anon[3], 4000] ^= 0x01
        assert g.verify() == 2
        g.mem.frames[cached[5], 17] ^= 0xFF
        g.mem.frames[anon[3], 4000] ^= 0x01
        fid = int(np.flatnonzero(g.files.copied)[0])
        with open(g.files.path(fid), "r+b") as f:     # the overlay copy on disk
            f.seek(1)
            b = f.read(1)
            f.seek(1)
            f.write(bytes([b[0] ^ 0x80]))
        assert g.verify() >= 1


def discard_cached(g, frames):
    g.allocator.flush_hints()
    assert (g.mem.usage(frames) == V).all()
    return g.mem.discard(frames)


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_discarded_cache_pages_come_back_right_in_both_modes(svc, mode):
    with Guest("8M", seed=4, workload=None, file_bytes="8M", fault_service=svc,
               discard_mode=mode) as g:
        path = g.files.paths[int(np.argmax(g.files.size_bytes))]
        want = g.read(path, 0, 64 * PAGE_SIZE)
        fid = g.files.lookup(path)
        frames = g.cache.page_frame[fid][:64].copy()
        assert discard_cached(g, frames) == 64
        assert set(g.census()) >= {"Vz"}
        misses = g.cache.stats["misses"]
        assert g.read(path, 0, 64 * PAGE_SIZE) == want
        if mode == "transparent":
            # the service reloaded them; the guest never noticed: all hits, same frames
            assert g.cache.stats["misses"] == misses
            assert (g.cache.page_frame[fid][:64] == frames).all()
            assert svc.stats(g.mem)["file_reloads"] >= 64
        else:
            # the guest saw the discards: dropped the pages, the read was an ordinary miss
            assert g.cache.stats["misses"] == misses + 64
            assert g.cache.stats["dropped_discarded"] == 64
        assert g.verify() == 0


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_write_to_a_discarded_page_reloads_or_refills_first(svc, mode):
    with Guest("8M", seed=5, workload=None, file_bytes="8M", fault_service=svc,
               discard_mode=mode) as g:
        path = g.files.paths[int(np.argmax(g.files.size_bytes))]
        g.read(path, 0, 8 * PAGE_SIZE)
        frames = g.cache.page_frame[g.files.lookup(path)][:8].copy()
        discard_cached(g, frames)
        g.write(path, 100, b"abc")                    # partial write: needs the old bytes
        assert g.verify() == 0
        g.writeback()
        with open(g.files.path(g.files.lookup(path)), "rb") as f, \
                open(g.files.original_path(g.files.lookup(path)), "rb") as o:
            new, old = f.read(PAGE_SIZE), o.read(PAGE_SIZE)
        assert new[100:103] == b"abc" and new[:100] == old[:100] and new[103:] == old[103:]


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_discarded_swap_cache_swaps_in_right(svc, mode):
    with Guest("8M", seed=6, workload=None, file_bytes="2M", fault_service=svc,
               discard_mode=mode) as g:
        pages = g.alloc(64)
        frames = g.frames_of(pages)
        g.anon.swap_out(frames)
        assert discard_cached(g, frames) == 64
        g.touch(pages[:32])                           # swap-in: stable before the slot is freed
        assert g.verify() == 0
        assert (g.mem.usage(g.frames_of(pages[:32])) == int(PageState.STABLE)).all()
        if mode == "guest":
            assert g.anon.stats["swapcache_dropped"] == 32
        assert g.swap.nslots - g.swap.free_slots == 32
        g.free(pages)
        assert g.verify() == 0


def test_pot_volatile_pages_with_real_dirty_tracking(svc):
    if not svc.dirty_tracking:
        pytest.skip("no kernel write tracking here: POT_VOLATILE pages are treated as STABLE")
    with Guest("8M", seed=7, workload=None, file_bytes="8M", fault_service=svc) as g:
        path = g.files.paths[int(np.argmax(g.files.size_bytes))]
        frames = g.map_writable(path, 0, 16 * PAGE_SIZE)
        g.allocator.flush_hints()
        assert (g.mem.usage(frames) == P).all()
        svc.clear_dirty(g.mem, frames)
        g.store_mapped(path, 0, 4 * PAGE_SIZE)        # real stores into 4 frames
        written = svc.dirty_pages(g.mem, frames)
        assert written[:4].all() and not written[4:].any()
        g.mem.discard(frames)                         # the host discards the clean ones only
        census = g.census()
        assert census.get("Pr", 0) == 4 and census.get("Vz", 0) == 12
        assert g.verify() == 0                        # stores kept, discarded pages reloaded
        # the stored pages are collected (a reloaded page may conservatively count as written)
        assert g.msync(path) >= 4
        fid = g.files.lookup(path)
        with open(g.files.path(fid), "rb") as f:
            assert f.read(4 * PAGE_SIZE) == g.read(path, 0, 4 * PAGE_SIZE)
        assert g.verify() == 0


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_workload_with_a_concurrent_host_thread_loses_nothing(svc, mode):
    """The host discards (and, where it can, swaps) in its own thread while the guest runs its
    workload: the state protocol must keep every page right."""
    import threading
    host_swap = gphint.HostSwap("32M") if svc.can_swap else None
    with Guest("8M", seed=8, workload="mixed", file_bytes="16M", fault_service=svc,
               discard_mode=mode) as g:
        stop = threading.Event()
        errors = []
        counts = {"discarded": 0, "swapped": 0, "refused": 0}

        def host():
            rng = np.random.default_rng(1)
            try:
                while not stop.is_set():
                    s = g.mem.states & 0x0F
                    cand = np.flatnonzero(np.isin(s, (U, V, P)))
                    if cand.size:
                        try:
                            counts["discarded"] += g.mem.discard(cand[rng.random(cand.size) < 0.3])
                        except gphint.StateError:
                            # the guest made one of them stable since the snapshot: refused
                            # whole, nothing discarded -- the protocol working, not a failure
                            counts["refused"] += 1
                    if host_swap is not None and host_swap.free_slots > 256:
                        sr = np.flatnonzero(s == 0)
                        counts["swapped"] += svc.swap_out(g.mem, sr[rng.random(sr.size) < 0.05][:128],
                                                          host_swap)
            except Exception as e:          # reported below, never swallowed
                errors.append(e)

        t = threading.Thread(target=host)
        t.start()
        try:
            for _ in range(10):
                g.step(100)
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        assert counts["discarded"] > 0
        assert g.verify() == 0
        svc.check()
    if host_swap is not None:
        host_swap.close()


@pytest.mark.parametrize("mode", ["transparent", "guest"])
def test_swap_in_with_part_of_the_swap_cache_discarded_frees_every_slot(svc, mode):
    with Guest("8M", seed=6, workload=None, file_bytes="2M", fault_service=svc,
               discard_mode=mode) as g:
        pages = g.alloc(64)
        frames = g.frames_of(pages)
        g.anon.swap_out(frames)
        discard_cached(g, frames[::2])
        g.touch(pages)                 # half from the swap cache, half discarded
        assert g.swap.free_slots == g.swap.nslots
        assert g.verify() == 0


def test_close_and_garbage_collection_remove_the_temporary_files():
    import gc
    g = Guest("4M", workload=None, file_bytes="1M")
    paths = [g.files._tmp, g.swap.path]
    assert all(os.path.exists(p) for p in paths)
    g.close()
    assert not any(os.path.exists(p) for p in paths)
    g = Guest("4M", workload=None, file_bytes="1M")
    paths = [g.files._tmp, g.swap.path]
    del g
    gc.collect()
    assert not any(os.path.exists(p) for p in paths)


def test_guests_on_one_tree_share_their_backing_stores(svc):
    from gphint.guest import guest_stores
    from gphint.guest.files import FileSet
    fs = FileSet(None, seed=1, total_bytes=8 << 20)
    try:
        guests = [Guest("8M", files=fs.root, seed=i, workload="fileserver", fault_service=svc)
                  for i in range(3)]
        for g in guests:
            g.step(200)
        refs = sum(len(g._stores) for g in guests)
        shared = len(guest_stores._SHARED_STORES)
        assert 0 < shared < refs                  # one store id per file, not per guest
        for g in guests:
            assert g.verify() == 0
            g.close()
        assert len(guest_stores._SHARED_STORES) == 0
    finally:
        fs.close()


def test_verify_compares_with_what_the_guest_read_not_with_todays_file(tmp_path):
    """A file changed in place after the guest read it: the guest's cached pages still hold what
    it read, and verify() says so (it used to re-read the file and count them wrong); a frame
    that really changed is still caught.  No fault service needed: both mechanisms."""
    rng = np.random.default_rng(11)
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.dat").write_bytes(rng.integers(0, 256, 16 * PAGE_SIZE, dtype=np.uint8).tobytes())
    (root / "b.dat").write_bytes(rng.integers(0, 256, 16 * PAGE_SIZE, dtype=np.uint8).tobytes())
    with Guest("8M", files=root, workload=None) as g:
        want = g.read("a.dat", 0, 16 * PAGE_SIZE)
        g.write("b.dat", PAGE_SIZE + 7, b"written")      # b.dat gets an overlay copy ...
        g.writeback("b.dat")
        (root / "a.dat").write_bytes(bytes(16 * PAGE_SIZE))          # ... then both originals
        (root / "b.dat").write_bytes(bytes(8 * PAGE_SIZE))           # change under the guest
        assert g.read("a.dat", 0, 16 * PAGE_SIZE) == want            # cache hits
        assert g.verify() == 0
        frame = int(g.cache.page_frame[g.files.lookup("a.dat")][3])
        g.mem.frames[frame, 100] ^= 1
        assert g.verify() == 1
        g.mem.frames[frame, 100] ^= 1
        # the overlay copy's pages on disk are checked against what the copy took
        with open(g.files.path(g.files.lookup("b.dat")), "r+b") as f:
            f.seek(9 * PAGE_SIZE)
            f.write(b"foreign")
        g.cache.drop(g.cache.cached_frames())
        assert g.verify() == 1


def test_a_guest_without_backing_stores_still_evicts_its_clean_cache(svc, monkeypatch):
    """No store for any file (fds or store ids exhausted): the cache pages stay STABLE -- the host
    could not reload them -- but the guest itself may still drop them (its file holds them), so
    a file set larger than memory does not run the guest out of frames."""
    monkeypatch.setattr(Guest, "_store_share", staticmethod(lambda: 0))
    with Guest("8M", seed=6, workload="fileserver", file_bytes="32M", fault_service=svc) as g:
        g.step(3000)
        assert g.stats["stores_refused"] > 0 and not g._stores
        assert g.stats["evicted"] > 0
        assert not (g.mem.usage(g.cache.cached_frames()) == V).any()
        assert g.verify() == 0
