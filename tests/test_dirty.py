"""POT_VOLATILE pages and the host dirty bit: written pages are preserved, unwritten ones
discarded -- on the kernel's write tracking (UFFD WP_ASYNC + PAGEMAP_SCAN) and on the fallback
(no tracking: every P page counts as dirty, i.e. STABLE)."""
import numpy as np
import pytest

import gphint
from gphint import PageState, caps
from gphint.faults import FaultService, FileStore, HostSwap
from helpers import PAGE, pattern

has_tracking = pytest.mark.skipif(not caps.has("dirty_tracking"),
                                  reason=caps.probe().features["dirty_tracking"].reason)


@pytest.fixture
def setup(compiled_only, tmp_path):
    """A guest whose first 256 pages are file-backed page-cache pages mapped writable (P)."""
    data = pattern(256, seed=21)
    path = tmp_path / "file"
    data.tofile(path)
    store = FileStore(path)
    swap = HostSwap("4M")
    made = []

    def make(**kw):
        svc = FaultService(swap=swap, **kw)
        mem = gphint.GuestMemory("8M")
        svc.register(mem)
        mem.frames[:256] = data
        mem.set_backing(np.arange(256), store, np.arange(256) * PAGE)
        mem.set_state(np.arange(256), PageState.POT_VOLATILE)
        svc.clear_dirty(mem, np.arange(256))   # written back: clean (the guest made them stable first)
        made.append((svc, mem))
        return svc, mem

    yield make, data, swap
    for svc, mem in made:
        svc.stop()
        mem.close()
    store.close()
    swap.close()


@has_tracking
def test_written_pages_are_dirty_and_clearing_write_protects_again(setup):
    make, data, _ = setup
    svc, mem = make()
    assert svc.dirty_tracking
    assert not svc.dirty_pages(mem, np.arange(256)).any()
    mem.frames[[3, 100], 0] = 1
    d = svc.dirty_pages(mem, np.arange(256))
    assert np.array_equal(np.flatnonzero(d), [3, 100])
    assert svc.clear_dirty(mem, np.arange(256)) == 2
    assert not svc.dirty_pages(mem, np.arange(256)).any()
    mem.frames[100, 5] = 2                                  # tracked again after the clear
    assert np.array_equal(np.flatnonzero(svc.dirty_pages(mem, np.arange(256))), [100])


@has_tracking
def test_host_discards_clean_and_preserves_written_pot_volatile_pages(setup):
    make, data, swap = setup
    svc, mem = make()
    written = np.arange(0, 256, 7)
    expect = data.copy()
    mem.frames[written, 1] ^= 0xFF
    expect[written, 1] ^= 0xFF
    n = mem.discard(np.arange(256))
    clean = np.setdiff1d(np.arange(256), written)
    assert n == clean.size
    c = mem.census()
    assert c["Vz"] == clean.size and c["Sp"] == written.size     # Pr -> Vz, dirty Pr -> Sp
    assert swap.used_slots == written.size
    assert np.array_equal(mem.frames[:256], expect)               # nothing lost, nothing stale
    assert svc.stats(mem)["file_reloads"] == clean.size and svc.stats(mem)["swap_ins"] == written.size


@has_tracking
def test_a_write_the_dirty_bit_missed_is_caught_by_the_detach_compare(setup):
    """The window between reading the dirty bit and discarding: model a write landing in it by
    changing a page and clearing its bit -- the host must still preserve the new bytes."""
    make, data, _ = setup
    svc, mem = make()
    mem.frames[9] = 0x5A
    svc.clear_dirty(mem, [9])                               # bit says clean, bytes differ from file
    assert not svc.dirty_pages(mem, [9]).any()
    mem.discard(np.arange(16))
    assert gphint.states.pair_name(mem.states[9]) == "Sp"
    assert (mem.frames[9] == 0x5A).all()
    assert np.array_equal(mem.frames[:9], data[:9])


def test_without_tracking_pot_volatile_pages_are_treated_as_stable(setup):
    make, data, swap = setup
    svc, mem = make(dirty_tracking=False)
    assert not svc.dirty_tracking
    assert svc.dirty_pages(mem, np.arange(256)).all()      # unknown = dirty
    svc.swap, keep = None, svc.swap
    assert mem.discard(np.arange(256)) == 0                   # nowhere to preserve them: left alone
    assert mem.census()["Pr"] == 256 and mem.resident_pages() >= 256
    svc.swap = keep
    if svc.can_swap:
        assert mem.discard(np.arange(256)) == 0               # nothing discarded ...
        assert mem.census()["Sp"] == 256                       # ... all preserved
    assert np.array_equal(mem.frames[:256], data)


@has_tracking
def test_dirty_pot_volatile_pages_stay_when_there_is_no_swap(setup, tmp_path):
    make, data, _ = setup
    svc, mem = make()
    svc.swap = None
    mem.frames[5, 0] ^= 1
    assert mem.discard(np.arange(8)) == 7
    assert gphint.states.pair_name(mem.states[5]) == "Pr"
    assert mem.frames[5, 0] == data[5, 0] ^ 1
