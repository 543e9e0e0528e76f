"""The page cache over real files: coherence through read/write/writeback/evict, and every
condition of Schwidefsky's guest page hinting patch 3 that keeps a page STABLE."""
import hashlib
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gphint
from gphint import ConfigError, PageState
from gphint.host.hostswap import fault_service_available
from gphint.guest.content import PAGE_SIZE
from gphint.guest.guest import Guest
from gphint.guest.pagecache import FLAG_DTYPE, MAPPED_WRITABLE, UPTODATE

S, V, P, U = (int(PageState.STABLE), int(PageState.VOLATILE), int(PageState.POT_VOLATILE),
              int(PageState.UNUSED))
JSON_DIR = os.path.dirname(json.__file__)      # a real tree: the stdlib's json package


@pytest.fixture
def g(new_guest):
    return new_guest("16M", seed=1, workload=None, file_bytes="8M")


def usage(g, frames):
    g.allocator.flush_hints()
    return g.mem.usage(frames).tolist()


def file_frames(g, path, offset, length):
    fid = g.files.lookup(path)
    pages = np.arange(offset // PAGE_SIZE, -(-(offset + length) // PAGE_SIZE))
    return g.cache.page_frame[fid][pages]


def big_file(g, npages=8):
    sizes = g.files.size_bytes
    return g.files.paths[int(np.flatnonzero(sizes >= npages * PAGE_SIZE)[0])]


def test_read_returns_the_real_file_bytes(g):
    for path in g.files.paths[:20]:
        with open(os.path.join(g.files.root, path), "rb") as f:
            want = f.read()
        assert g.read(path, 0, len(want) + 100) == want          # clipped at end of file
        assert g.read(path, 1, 10) == want[1:11]
        assert g.read(path, len(want) + PAGE_SIZE, 10) == b""
    assert g.verify() == 0


def test_bad_input_names_the_value(g):
    with pytest.raises(ConfigError, match="nope.txt"):
        g.read("nope.txt", 0, 1)
    with pytest.raises(ConfigError, match="offset"):
        g.read(g.files.paths[0], -1, 1)
    with pytest.raises(ConfigError, match="length"):
        g.read(g.files.paths[0], 0, -5)
    with pytest.raises(ConfigError, match="bytes-like"):
        g.write(g.files.paths[0], 0, 12345)
    with pytest.raises(ConfigError, match="not a directory"):
        Guest("4M", files="/nonexistent/dir", workload=None)


def test_read_miss_is_volatile_write_is_stable_writeback_volatile_again(g):
    path = big_file(g)
    g.read(path, 0, 4 * PAGE_SIZE)
    frames = file_frames(g, path, 0, 4 * PAGE_SIZE)
    assert usage(g, frames) == [V] * 4
    g.write(path, PAGE_SIZE + 10, b"x" * 100)
    assert usage(g, frames) == [V, S, V, V]
    assert g.read(path, PAGE_SIZE + 10, 100) == b"x" * 100
    # the real file still has the old bytes until writeback, then the new ones
    assert g.writeback(path) == 1
    assert usage(g, frames) == [V] * 4
    with open(g.files.path(g.files.lookup(path)), "rb") as f:
        f.seek(PAGE_SIZE + 10)
        assert f.read(100) == b"x" * 100
    assert g.verify() == 0


def test_generated_writes_and_file_growth(g):
    path = g.files.paths[3]
    size = int(g.files.size_bytes[3])
    g.write(path, size + 3 * PAGE_SIZE, b"tail")
    assert g.files.size_bytes[3] == size + 3 * PAGE_SIZE + 4
    assert g.read(path, size + 3 * PAGE_SIZE, 10) == b"tail"
    assert g.read(path, size, 10) == b"\0" * 10
    g.write(path, 0, None, 2 * PAGE_SIZE)            # next version of pages 0-1
    assert g.verify() == 0
    g.writeback()
    assert os.path.getsize(g.files.path(3)) == size + 3 * PAGE_SIZE + 4
    assert g.verify() == 0


@pytest.mark.parametrize("condition", ["lock", "private", "pin", "mlock", "writeback", "not_uptodate"])
def test_each_condition_keeps_a_cache_page_stable(g, condition):
    path = big_file(g)
    g.read(path, 0, 2 * PAGE_SIZE)
    frames = file_frames(g, path, 0, 2 * PAGE_SIZE)
    assert usage(g, frames) == [V, V]
    one = (path, 0, PAGE_SIZE)
    if condition == "lock":
        g.lock(*one)
        on_undo = lambda: g.lock(*one, on=False)
    elif condition == "private":
        g.set_private(*one)
        on_undo = lambda: g.set_private(*one, on=False)
    elif condition == "pin":
        g.pin(*one)
        g.pin(*one)                      # two references: one unpin is not enough
        g.unpin(*one)
        assert usage(g, frames) == [S, V]
        on_undo = lambda: g.unpin(*one)
    elif condition == "mlock":
        g.mlock_file(*one)
        on_undo = lambda: g.mlock_file(*one, on=False)
    elif condition == "writeback":
        g.write(*one[:2], b"w")
        g.cache.start_writeback(frames[:1])
        g.cache._settle_cached(frames[:1])
        on_undo = lambda: g.cache.end_writeback(frames[:1])
    else:
        g.table.flags[frames[0]] &= ~FLAG_DTYPE(UPTODATE)
        g.cache._settle_cached(frames[:1])
        def on_undo():
            g.table.flags[frames[0]] |= UPTODATE
            g.cache._settle_cached(frames[:1])
    assert usage(g, frames) == [S, V]
    # a stable page is not reclaimable either
    assert not g.table.reclaimable()[frames[0]]
    on_undo()
    assert usage(g, frames) == [V, V]
    assert g.verify() == 0


def test_anonymous_pages_stay_stable(g):
    pages = g.alloc(64)
    frames = g.frames_of(pages)
    assert set(usage(g, frames)) == {S}
    g.touch(pages)
    assert set(usage(g, frames)) == {S}


def test_hit_path_changes_no_state(g):
    path = big_file(g)
    g.read(path, 0, 8 * PAGE_SIZE)
    g.allocator.flush_hints()
    ops = g.mem.stats["hint_ops"]
    unchanged = g.hinter.stats["unchanged"]
    for _ in range(5):
        g.read(path, 0, 8 * PAGE_SIZE)
    g.allocator.flush_hints()
    assert g.mem.stats["hint_ops"] == ops                 # no set_state at all
    assert g.hinter.stats["unchanged"] == unchanged + 5 * 8


def test_writable_mapping_and_msync(g):
    path = big_file(g)
    frames = g.map_writable(path, 0, 4 * PAGE_SIZE)
    expect = P if g.hinter.pot_volatile_ok else S      # no host dirty tracking: STABLE
    assert usage(g, frames) == [expect] * 4
    g.store_mapped(path, PAGE_SIZE, PAGE_SIZE)          # a store: no guest state change
    assert usage(g, frames) == [expect] * 4
    assert g.verify() == 0
    written = g.msync(path)
    assert written >= 1                                  # at least the stored page
    assert usage(g, frames) == [expect] * 4
    g.unmap(path, 0, 4 * PAGE_SIZE)
    assert usage(g, frames) == [V] * 4
    fid = g.files.lookup(path)
    disk = g.files.path(fid)
    with open(disk, "rb") as f:
        f.seek(PAGE_SIZE)
        assert f.read(PAGE_SIZE) == g.read(path, PAGE_SIZE, PAGE_SIZE)
    assert g.verify() == 0


def test_lru_evicts_clean_pages_and_frees_them():
    with Guest("8M", seed=2, workload=None, file_bytes="24M") as g:
        for path in g.files.paths:
            g.read(path, 0, 1 << 20)
        assert g.stats["evicted"] > 0
        census = g.census()
        # evicted frames went back to the allocator as UNUSED; in-use ones are the cache
        assert census.get("Ur", 0) + census.get("Uz", 0) == g.allocator.free_pages
        assert g.cache_census()["file"] + g.allocator.free_pages == g.mem.npages
        # the most recently read file is still cached, the first ones are not
        last = g.files.lookup(g.files.paths[-1])
        assert (g.cache.page_frame[last] >= 0).any()
        assert g.verify() == 0
        # an evicted page reads back correctly (an ordinary miss)
        with open(os.path.join(g.files.root, g.files.paths[0]), "rb") as f:
            assert g.read(g.files.paths[0], 0, 5000) == f.read(5000)


def test_dirty_pages_are_written_back_not_lost_under_pressure():
    with Guest("8M", seed=3, workload=None, file_bytes="24M") as g:
        paths = g.files.paths[:10]
        for i, p in enumerate(paths):
            g.write(p, 0, bytes([i + 1]) * 3000)
        for p in g.files.paths:                  # push everything out
            g.read(p, 0, 1 << 20)
        for i, p in enumerate(paths):
            assert g.read(p, 0, 3000) == bytes([i + 1]) * 3000
        assert g.verify() == 0


def tree_digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            h.update(full.encode() + str(st.st_mtime_ns).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_real_tree_is_never_modified():
    before = tree_digest(JSON_DIR)
    with Guest("8M", files=JSON_DIR, seed=1, workload=None) as g:
        assert "decoder.py" in g.files.paths
        with open(os.path.join(JSON_DIR, "decoder.py"), "rb") as f:
            src = f.read()
        assert g.read("decoder.py", 0, len(src)) == src
        g.write("decoder.py", 0, b"#!patched")
        g.write("__init__.py", 100, None, PAGE_SIZE)
        g.writeback()
        assert g.read("decoder.py", 0, 9) == b"#!patched"
        # the overlay copy backs the file now
        assert g.files.path(g.files.lookup("decoder.py")).startswith(g.files.overlay_root)
        with open(g.files.path(g.files.lookup("decoder.py")), "rb") as f:
            assert f.read(9) == b"#!patched"
        assert g.verify() == 0
    assert tree_digest(JSON_DIR) == before


def _guest_mode_guest():
    from gphint.faults import FaultService
    ok, why = fault_service_available()
    if not ok:
        pytest.skip("needs the discard-fault service: %s" % why)
    if not gphint.caps.has("dirty_tracking"):
        pytest.skip("no host dirty tracking: mapped pages stay STABLE and are never discarded")
    svc = FaultService()
    return svc, Guest("16M", seed=3, workload=None, file_bytes="8M", discard_mode="guest",
                      fault_service=svc)


@pytest.mark.parametrize("access", ["read", "write", "store_mapped", "msync", "unpin"])
def test_guest_mode_keeps_a_discarded_writable_mapping(access):
    """discard_mode="guest": the host discards clean mapped pages (Pr -> Vz).  The mapping
    holds them, so the guest's next access re-reads them into the same frames -- as a real
    guest re-reads a page into the mapping that holds it -- and a store through the mapping
    still works, whatever touches the pages first."""
    svc, g = _guest_mode_guest()
    try:
        path = big_file(g)
        n = 4
        frames = g.map_writable(path, 0, n * PAGE_SIZE)
        g.msync(path)                                   # written back: clean to the host
        assert usage(g, frames) == [P] * n
        assert g.mem.discard(frames) == n               # clean: discarded
        assert (g.mem.content(frames) == 3).all() and (g.mem.usage(frames) == V).all()
        if access == "read":
            data = g.read(path, 0, n * PAGE_SIZE)
            with open(os.path.join(g.files.root, path), "rb") as f:
                assert data == f.read(n * PAGE_SIZE)
        elif access == "write":
            g.write(path, PAGE_SIZE, b"x" * 100)
        elif access == "store_mapped":
            pass
        elif access == "msync":
            g.msync(path)
        elif access == "unpin":
            g.pin(path, 0, PAGE_SIZE)                   # a pinned page must be STABLE
            g.unpin(path, 0, PAGE_SIZE)
        assert np.array_equal(file_frames(g, path, 0, n * PAGE_SIZE), frames)   # same frames
        g.store_mapped(path, 0, n * PAGE_SIZE)          # the mapping is still there, all of it
        assert g.verify() == 0
        g.msync(path)
        g.unmap(path, 0, n * PAGE_SIZE)
        assert g.verify() == 0
        assert g.cache.stats["dropped_discarded"] == 0  # a mapped page is never dropped
    finally:
        g.close()
        svc.stop()


def test_guest_mode_mappings_survive_random_discards_and_accesses():
    """Random interleavings of host discards (clean P -> Vz, dirty P -> preserved) with every
    guest access to a writably mapped range, guest-visible discard mode: every store through
    the mapping succeeds and every byte is right."""
    svc, g = _guest_mode_guest()
    path = big_file(g, 16)
    frames = g.map_writable(path, 0, 16 * PAGE_SIZE)
    ops = st.lists(st.tuples(st.sampled_from(["discard", "read", "write", "store", "msync", "pin",
                                              "lock", "writeback"]),
                             st.integers(0, 15), st.integers(1, 4)), min_size=1, max_size=30)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=ops)
    def check(ops):
        g.msync(path)                 # clean to the host: a discard now takes clean P pages
        for op, first, n in ops:
            n = min(n, 16 - first)
            off, length = first * PAGE_SIZE, n * PAGE_SIZE
            if op == "discard":
                g.allocator.flush_hints()
                g.mem.discard(frames[first:first + n][g.mem.usage(frames[first:first + n]) != S])
            elif op == "read":
                g.read(path, off, length)
            elif op == "write":
                g.write(path, off + 10, b"w" * 50)
            elif op == "store":
                g.store_mapped(path, off, length)
            elif op == "msync":
                g.msync(path)
            elif op == "pin":
                g.pin(path, off, length)
                g.unpin(path, off, length)
            elif op == "lock":
                g.lock(path, off, length, on=True)
                g.lock(path, off, length, on=False)
            elif op == "writeback":
                g.writeback()
            # the mapping still holds every page (no verify() here: its reads through the
            # fault path would reload the discarded pages before the next access finds them)
            assert np.array_equal(file_frames(g, path, 0, 16 * PAGE_SIZE), frames), op
            assert (g.table.flags[frames] & MAPPED_WRITABLE).all(), op
        g.store_mapped(path, 0, 16 * PAGE_SIZE)
        assert g.verify() == 0

    try:
        check()
    finally:
        g.close()
        svc.stop()
