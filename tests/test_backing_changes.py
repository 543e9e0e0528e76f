"""A backing file changed under pages the host discarded: a reload never serves foreign bytes.

Rewritten or truncated in place, a discarded page of it comes back as zeros and is reported lost,
with its page named (FaultService.check() raises ReloadError, lost_pages counts it, Guest.verify()
counts it); renamed or unlinked, it reloads byte-exact.  verify() compares against what the guest
read, not against today's file.  Real files, real discards, the real fault thread."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gphint import PageState
from gphint.faults import ReloadError
from gphint.guest.content import PAGE_SIZE
from gphint.guest.guest import Guest

from helpers import EXAMPLES

V = int(PageState.VOLATILE)
NPAGES = 64


@pytest.fixture
def tree(tmp_path):
    """A small real tree: a.dat (NPAGES pages of random bytes) and b.dat."""
    rng = np.random.default_rng(7)
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("a.dat", "b.dat"):
        (root / name).write_bytes(rng.integers(0, 256, NPAGES * PAGE_SIZE, dtype=np.uint8).tobytes())
    return root


def cache_and_discard(g, path):
    """Read the whole file into the guest's cache, then the host discards every page of it."""
    want = g.read(path, 0, NPAGES * PAGE_SIZE)
    frames = g.cache.page_frame[g.files.lookup(path)][:NPAGES].copy()
    g.allocator.flush_hints()
    assert (g.mem.usage(frames) == V).all()
    assert g.mem.discard(frames) == NPAGES
    return want, frames


def rewrite_in_place(full, keep_mtime):
    st = os.stat(full)
    new = np.random.default_rng(99).integers(0, 256, st.st_size, dtype=np.uint8).tobytes()
    with open(full, "r+b") as f:           # same inode, same size, other bytes
        f.write(new)
    if keep_mtime:
        os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(full).st_mtime_ns == st.st_mtime_ns
    return new


@pytest.mark.parametrize("change, lost_from, reason", [
    ("truncate", 16, "size"),              # pages 16.. are gone, 0..15 keep their bytes
    ("rewrite", 0, "mtime"),
    ("rewrite_keep_mtime", 0, "ctime"),    # size and mtime as before: ctime still tells
])
def test_a_file_changed_in_place_reloads_as_named_lost_pages(svc, tree, change, lost_from, reason):
    with Guest("8M", files=tree, workload=None, fault_service=svc) as g:
        want, frames = cache_and_discard(g, "a.dat")
        full = tree / "a.dat"
        foreign = None
        if change == "truncate":
            os.truncate(full, lost_from * PAGE_SIZE)
        else:
            foreign = rewrite_in_place(full, keep_mtime=change == "rewrite_keep_mtime")
        got = g.read("a.dat", 0, NPAGES * PAGE_SIZE)     # the discard faults: must not hang
        split = lost_from * PAGE_SIZE
        assert got[:split] == want[:split]
        assert got[split:] == bytes(len(got) - split)   # lost pages read as zeros ...
        if foreign is not None:                           # ... never as the new bytes
            pages_got = np.frombuffer(got, np.uint8).reshape(NPAGES, PAGE_SIZE)
            pages_new = np.frombuffer(foreign, np.uint8).reshape(NPAGES, PAGE_SIZE)
            assert not (pages_got == pages_new).all(axis=1).any()
        nlost = NPAGES - lost_from
        assert svc.stats(g.mem)["lost_pages"] == nlost
        with pytest.raises(ReloadError) as err:
            svc.check()
        assert err.value.page in set(frames[lost_from:].tolist())
        assert "backing file changed (%s)" % reason in str(err.value)
        assert "page %d" % err.value.page in str(err.value)
        # verify() checks against what the guest read, so it sees every lost page too
        assert g.verify() == nlost


@pytest.mark.parametrize("change", ["unlink", "rename"])
def test_an_unlinked_or_renamed_file_reloads_byte_exact(svc, tree, change):
    with Guest("8M", files=tree, workload=None, fault_service=svc) as g:
        want, frames = cache_and_discard(g, "a.dat")
        if change == "unlink":
            os.unlink(tree / "a.dat")
        else:
            os.rename(tree / "a.dat", tree / "renamed.dat")
        assert g.read("a.dat", 0, NPAGES * PAGE_SIZE) == want
        assert svc.stats(g.mem)["lost_pages"] == 0
        assert svc.stats(g.mem)["file_reloads"] >= NPAGES
        svc.check()
        assert g.verify() == 0


def test_the_guests_own_writeback_is_not_taken_for_a_foreign_change(svc):
    """Writeback through gphint changes the overlay file's size, mtime and ctime and the written
    page's bytes: the discarded pages of that file still reload, and so does the written page."""
    with Guest("8M", seed=3, workload=None, file_bytes="4M", fault_service=svc) as g:
        path = g.files.paths[int(np.argmax(g.files.size_bytes))]
        fid = g.files.lookup(path)
        n = min(g.files.npages(fid), 32)
        g.write(path, 0, b"first")
        g.writeback(path)                           # the overlay copy is the file from now on
        want = g.read(path, 0, n * PAGE_SIZE)
        frames = g.cache.page_frame[fid][:n].copy()
        g.allocator.flush_hints()
        assert g.mem.discard(frames[1:]) == n - 1
        before = os.stat(g.files.path(fid))
        g.write(path, 0, b"again, and longer")
        assert g.writeback(path) == 1
        assert os.stat(g.files.path(fid)).st_ctime_ns != before.st_ctime_ns
        g.allocator.flush_hints()
        assert g.mem.discard(frames[:1]) == 1       # the written page, clean again
        want = b"again, and longer" + want[17:]
        assert g.read(path, 0, n * PAGE_SIZE) == want
        assert svc.stats(g.mem)["lost_pages"] == 0
        svc.check()
        assert g.verify() == 0


def test_two_guests_that_read_different_bytes_of_one_page_lose_it_on_reload(svc, tree):
    """One store per file is shared by the guests of a tree: when the file changed between their
    reads, neither record stands for both, and a reload of that page is lost for either."""
    with Guest("8M", files=tree, workload=None, fault_service=svc, seed=1) as g1, \
            Guest("8M", files=tree, workload=None, fault_service=svc, seed=2) as g2:
        want1, frames1 = cache_and_discard(g1, "b.dat")
        rewrite_in_place(tree / "b.dat", keep_mtime=False)
        want2, frames2 = cache_and_discard(g2, "b.dat")
        assert want1 != want2
        assert g2.read("b.dat", 0, NPAGES * PAGE_SIZE) == bytes(NPAGES * PAGE_SIZE)
        assert svc.stats(g2.mem)["lost_pages"] == NPAGES
        with pytest.raises(ReloadError):
            svc.check()


def test_store_ids_past_the_old_fixed_table_reload(svc, tree, monkeypatch):
    """The store table grows in chunks: a store with an id far past 4096 still reaches the fault
    thread (hundreds of guests each hold hundreds of files)."""
    from gphint import stores
    monkeypatch.setattr(stores, "_next_id", [70000])
    monkeypatch.setattr(stores, "_free_ids", [])
    with Guest("8M", files=tree, workload=None, fault_service=svc) as g:
        want, frames = cache_and_discard(g, "a.dat")
        assert g._stores[os.path.join(str(tree), "a.dat")].id >= 70000
        assert g.read("a.dat", 0, NPAGES * PAGE_SIZE) == want
        assert svc.stats(g.mem)["file_reloads"] >= NPAGES
        svc.check()
    with pytest.raises(ValueError):
        stores.mech.store_set(stores.MAX_STORES, 0)


CHANGES = st.one_of(
    st.tuples(st.just("discard"), st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=NPAGES)),
    st.tuples(st.just("rewrite"), st.tuples(st.integers(0, NPAGES - 1), st.integers(1, 8), st.booleans())),
    st.tuples(st.just("truncate"), st.integers(0, NPAGES)),
    st.tuples(st.just("rename"), st.none()),
    st.tuples(st.just("read"), st.none()),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(CHANGES, min_size=1, max_size=12), seed=st.integers(0, 2 ** 16))
def test_random_changes_under_discards_never_serve_foreign_bytes(svc, tmp_path_factory, ops, seed):
    """Random discards, in-place rewrites (mtime kept or not), truncations, renames and reads:
    every page reads as what the guest read, or as zeros counted lost -- and verify() counts
    exactly the pages that read as zeros for a loss."""
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("fuzz")
    name = "f.dat"
    known = rng.integers(0, 256, (NPAGES, PAGE_SIZE), dtype=np.uint8)
    (root / name).write_bytes(known.tobytes())
    with Guest("8M", files=root, workload=None, fault_service=svc) as g:
        assert g.read(name, 0, NPAGES * PAGE_SIZE) == known.tobytes()
        frames = g.cache.page_frame[g.files.lookup(name)][:NPAGES].copy()
        current = root / name
        zeroed = np.zeros(NPAGES, dtype=bool)          # pages the guest now holds as zeros
        for op, arg in ops:
            if op == "discard":
                g.allocator.flush_hints()
                pick = frames[np.unique(arg)]
                pick = pick[(g.mem.usage(pick) == V) & (g.mem.content(pick) == 0)]
                g.mem.discard(pick)
            elif op == "rewrite":
                first, n, keep_mtime = arg
                st_ = os.stat(current)
                with open(current, "r+b") as f:
                    f.seek(first * PAGE_SIZE)
                    f.write(rng.integers(0, 256, n * PAGE_SIZE, dtype=np.uint8).tobytes())
                if keep_mtime:
                    os.utime(current, ns=(st_.st_atime_ns, st_.st_mtime_ns))
            elif op == "truncate":
                os.truncate(current, min(arg * PAGE_SIZE, os.stat(current).st_size))
            elif op == "rename":
                renamed = current.with_name(current.name + "x")
                os.rename(current, renamed)
                current = renamed
            got = np.frombuffer(g.read(name, 0, NPAGES * PAGE_SIZE), np.uint8).reshape(NPAGES, PAGE_SIZE)
            same = (got == known).all(axis=1)
            zero = ~got.any(axis=1)
            assert (same | zero).all()                  # never foreign bytes
            zeroed |= zero & ~same
        lost = svc.stats(g.mem)["lost_pages"]
        event("pages lost: %s" % ("none" if lost == 0 else "some"))
        assert lost >= int(zeroed.sum())
        if lost:
            with pytest.raises(ReloadError):
                svc.check()
        assert g.verify() == int(zeroed.sum())
