"""The discard-fault service: discarded pages come back byte for byte (zeros, backing file, host
swap), on read and on write faults, resident again afterwards -- checked against the file, the
written pattern and the kernel's own view (pagemap)."""
import os

import numpy as np
import pytest

import gphint
from gphint import PageState, measure
from gphint._mechanism import mech
from gphint.faults import FaultService, FileStore, HostSwap, ReloadError
from helpers import PAGE, pattern

needs_service = pytest.mark.usefixtures("compiled_only")
needs_move = pytest.mark.skipif(not gphint.caps.has("uffd_move"),
                                reason=gphint.caps.probe().features["uffd_move"].reason)


def volatile_from_file(mem, data, store, pages, file_pages=None):
    """Guest side of a page-cache fill: copy file pages in, record the backing, make volatile."""
    file_pages = pages if file_pages is None else file_pages
    mem.frames[pages] = data[file_pages]
    mem.set_backing(pages, store, np.asarray(file_pages) * PAGE)
    mem.set_state(pages, PageState.VOLATILE)


def present(mem, pages):
    return measure.pagemap_present(mem.address, mem.npages)[pages]


def test_volatile_pages_reload_from_their_file_on_read(mem, svc, backing):
    data, store, _ = backing
    svc.register(mem)
    pages = np.arange(100, 400)
    volatile_from_file(mem, data, store, pages)
    mem.frames[99] = 0x11
    mem.frames[400] = 0x22
    before = svc.stats(mem)
    assert mem.discard(pages) == pages.size
    assert mem.census()["Vz"] == pages.size
    assert not present(mem, pages).any()            # the kernel agrees they are gone
    assert np.array_equal(mem.frames[pages], data[pages])
    assert present(mem, pages).all()                # and back
    assert (mem.frames[99] == 0x11).all() and (mem.frames[400] == 0x22).all()   # neighbours untouched
    assert (mem.content(pages) == gphint.HostState.RESIDENT).all()
    st = {k: v - before[k] for k, v in svc.stats(mem).items()}
    assert st["file_reloads"] == pages.size and st["lost_pages"] == 0
    assert st["discard_faults"] < pages.size        # fault-around served runs
    assert st["fault_around_hits"] == pages.size - st["discard_faults"]
    total = svc.stats()
    assert 0 < total["latency_p50_ns"] <= total["latency_p99_ns"] < 1e9     # a real histogram
    assert np.array_equal(np.sort(svc.drain_discarded(mem)), pages)
    assert svc.drain_discarded(mem).size == 0       # drained


def test_write_fault_on_a_discarded_page_reloads_then_writes(mem, svc, backing):
    data, store, _ = backing
    svc.register(mem)
    pages = np.arange(0, 64)
    volatile_from_file(mem, data, store, pages, file_pages=np.arange(1000, 1064))
    mem.discard(pages)
    mem.set_state([5], PageState.UNUSED)   # Vz -> Uz: freed, content don't-care
    mem.region[10 * PAGE + 7] = 0xAB        # a write fault on a Vz page: reload, then the store
    expect = data[1010].copy()
    expect[7] = 0xAB
    assert np.array_equal(mem.frames[10], expect)
    others = np.setdiff1d(pages, [5, 10])
    assert np.array_equal(mem.frames[others], data[others + 1000])


def test_unused_pages_read_back_zero_on_read_and_write(mem, svc):
    svc.register(mem)
    mem.frames[:512] = pattern(512, seed=5)
    mem.set_state(np.arange(512), PageState.UNUSED)
    mem.discard(np.arange(512))
    assert not present(mem, np.arange(512)).any()
    assert (mem.frames[:256] == 0).all()            # read faults: zero page
    mem.region[300 * PAGE] = 9                      # write fault: zeroed copy
    assert mem.region[300 * PAGE] == 9 and (mem.frames[300, 1:] == 0).all()
    assert int(mem.frames[256:512].sum()) == 9                 # only that one byte
    st = svc.stats(mem)
    assert st["zero_fills"] >= 512 and st["file_reloads"] == 0


def test_a_page_without_backing_record_reloads_as_zeros(mem, svc, backing):
    data, store, _ = backing
    svc.register(mem)
    pages = np.arange(10)
    volatile_from_file(mem, data, store, pages)
    mem.clear_backing(pages[5:])
    mem.discard(pages)
    assert np.array_equal(mem.frames[:5], data[:5])
    assert (mem.frames[5:10] == 0).all()


@pytest.mark.parametrize("window", ["4K", "64K", "2M"])
def test_fault_around_window_bounds_each_fault(window, svc, backing):
    data, store, _ = backing
    svc.window = window
    with gphint.GuestMemory("16M") as mem:
        svc.register(mem)
        pages = np.arange(mem.npages)
        volatile_from_file(mem, data, store, pages)
        mem.discard(pages)
        assert np.array_equal(mem.frames, data[:mem.npages])
        st = svc.stats(mem)
        wpages = gphint.units.parse_size(window) // PAGE
        assert st["discard_faults"] == mem.npages // wpages   # sequential: one fault per window
        assert st["file_reloads"] == mem.npages


def test_read_past_end_of_file_gives_zeros(mem, svc, tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x07" * (PAGE + 100))        # one page and a bit
    with FileStore(path) as store:
        svc.register(mem)
        mem.frames[:3] = 0xFF
        mem.set_backing([0, 1, 2], store, [0, PAGE, 2 * PAGE])
        mem.set_state([0, 1, 2], "volatile")
        mem.discard([0, 1, 2])
        assert (mem.frames[0] == 7).all()
        assert (mem.frames[1, :100] == 7).all() and (mem.frames[1, 100:] == 0).all()
        assert (mem.frames[2] == 0).all()
        assert svc.stats(mem)["lost_pages"] == 0
        svc.check()


def test_deleted_backing_file_still_reloads_through_the_open_store(mem, svc, backing):
    data, store, path = backing
    svc.register(mem)
    pages = np.arange(50)
    volatile_from_file(mem, data, store, pages)
    os.unlink(path)
    mem.discard(pages)
    assert np.array_equal(mem.frames[pages], data[pages])
    svc.check()


def test_unreadable_source_serves_zeros_counts_lost_and_check_raises(mem, svc, tmp_path):
    path = tmp_path / "gone"
    path.write_bytes(b"\x05" * (4 * PAGE))
    store = FileStore(path)
    svc.register(mem)
    mem.frames[:4] = 5
    mem.set_backing(np.arange(4), store, np.arange(4) * PAGE)
    mem.set_state(np.arange(4), "volatile")
    mem.discard(np.arange(4))
    store.close()                                   # the source is gone for real
    assert (mem.frames[:4] == 0).all()              # the faulting thread was not left hanging
    assert svc.stats(mem)["lost_pages"] == 4
    with pytest.raises(ReloadError) as e:
        svc.check()
    assert e.value.page == 0 and e.value.guest == repr(mem.name) and e.value.errno == 9  # EBADF
    svc.check()                                     # reported once


@needs_move
def test_stable_pages_swapped_out_read_back_exactly(mem, svc):
    swap = HostSwap("8M")
    svc.register(mem)
    data = pattern(1024, seed=7)
    mem.frames[:1024] = data
    pages = np.arange(0, 1024, 2)                   # every other page: neighbours stay
    assert svc.swap_out(mem, pages, swap) == pages.size
    assert mem.census()["Sp"] == pages.size and swap.used_slots == pages.size
    assert not present(mem, pages).any()
    assert present(mem, pages + 1).all()
    assert np.array_equal(swap.read_slot(0), data[0].tobytes())   # really in the file
    mem.frames[10, 0] = 0xEE                        # a write fault swaps in first
    data[10, 0] = 0xEE
    assert np.array_equal(mem.frames[:1024], data)
    assert "Sp" not in mem.census()
    assert swap.used_slots == 0                     # slots freed by the fault thread
    assert svc.stats(mem)["swap_ins"] == pages.size
    swap.close()


@needs_move
def test_contiguous_swapped_pages_come_back_in_runs(mem, svc):
    swap = HostSwap("8M")
    svc.register(mem)
    data = pattern(512, seed=8)
    mem.frames[:512] = data
    svc.swap_out(mem, np.arange(512), swap)
    before = svc.stats(mem)["faults"]
    assert np.array_equal(mem.frames[:512], data)
    st = svc.stats(mem)
    assert st["swap_ins"] == 512 and st["faults"] - before == 512 // 16   # one per 64 KiB window
    swap.close()


@needs_move
def test_swap_out_skips_pages_that_are_not_stable_resident(mem, svc, backing):
    data, store, _ = backing
    swap = HostSwap("1M")
    svc.register(mem)
    volatile_from_file(mem, data, store, np.arange(4))
    assert svc.swap_out(mem, np.arange(8), swap) == 4      # V pages are discarded, never swapped
    assert mem.census()["Vr"] == 4 and mem.census()["Sp"] == 4
    assert swap.used_slots == 4
    assert np.array_equal(mem.frames[:4], data[:4]) and (mem.frames[4:8] == 0).all()
    swap.close()


@needs_move
def test_guest_gives_up_a_preserved_page(mem, svc):
    swap = HostSwap("1M")
    svc.register(mem)
    mem.frames[:8] = 0x33
    svc.swap_out(mem, np.arange(8), swap)
    mem.set_state(np.arange(4), "unused")                   # Sp -> Uz
    assert (mem.frames[:4] == 0).all()                      # don't-care reads as zero
    assert (mem.frames[4:8] == 0x33).all()
    assert swap.used_slots == 0                             # the dropped copies' slots too
    # given up and never touched again: the slot is reclaimed when swap runs short
    full = HostSwap("32K")                                  # 8 slots
    mem.set_state(np.arange(8), "stable")
    assert svc.swap_out(mem, np.arange(8), full) == 8
    mem.set_state(np.arange(8), "unused")                   # Sp -> Uz, no access
    assert full.used_slots == 8
    mem.frames[10:18] = 0x44
    assert svc.swap_out(mem, np.arange(10, 18), full) == 8  # reclaimed the 8 stale slots
    assert (mem.frames[10:18] == 0x44).all() and (mem.frames[:8] == 0).all()
    full.close()
    swap.close()


@needs_move
@needs_service
def test_unregister_materializes_so_nothing_is_lost(backing):
    data, store, _ = backing
    svc = FaultService()
    swap = HostSwap("4M")
    with gphint.GuestMemory("4M") as mem:
        svc.register(mem)
        volatile_from_file(mem, data, store, np.arange(100))
        mem.discard(np.arange(100))
        mem.frames[200:300] = data[200:300]
        svc.swap_out(mem, np.arange(200, 300), swap)
        svc.stop()                                          # unregisters, reloading first
        assert mem.fault_service is None
        assert np.array_equal(mem.frames[:100], data[:100])
        assert np.array_equal(mem.frames[200:300], data[200:300])
        with pytest.raises(gphint.Unsupported):
            mem.discard(np.arange(100))                     # V without a service: refused
    swap.close()


@needs_service
def test_stop_while_a_thread_is_faulting(backing):
    import threading
    data, store, _ = backing
    svc = FaultService(window="4K")
    mem = gphint.GuestMemory("8M")
    svc.register(mem)
    volatile_from_file(mem, data, store, np.arange(mem.npages))
    mem.discard(np.arange(mem.npages))
    seen = []
    t = threading.Thread(target=lambda: seen.append(mem.frames.sum(axis=1)))
    t.start()
    svc.stop()
    t.join(10)
    assert not t.is_alive()
    assert np.array_equal(mem.frames, data[:mem.npages])
    mem.close()


def test_close_guest_while_the_service_runs(svc, backing):
    data, store, _ = backing
    mem = gphint.GuestMemory("4M")
    svc.register(mem)
    volatile_from_file(mem, data, store, np.arange(10))
    mem.discard(np.arange(10))
    mem.close()
    assert svc.guests == []
    with gphint.GuestMemory("4M") as m2:   # the service goes on serving others
        svc.register(m2)
        m2.frames[0, 0] = 1
        assert m2.frames[0, 0] == 1


@needs_service
def test_two_services_each_serve_their_own_guests(backing):
    data, store, _ = backing
    a, b = FaultService(), FaultService()
    with gphint.GuestMemory("4M") as m1, gphint.GuestMemory("4M") as m2:
        a.register(m1)
        b.register(m2)
        with pytest.raises(gphint.ConfigError, match="another FaultService"):
            b.register(m1)
        for m in (m1, m2):
            volatile_from_file(m, data, store, np.arange(20))
            m.discard(np.arange(20))
        assert np.array_equal(m1.frames[:20], data[:20]) and np.array_equal(m2.frames[:20], data[:20])
        assert a.stats(m1)["file_reloads"] == 20 and b.stats(m2)["file_reloads"] == 20
    a.stop()
    b.stop()


@needs_service
def test_user_mode_only_mode_serves_faults_and_bounces_kernel_fills(backing, tmp_path):
    data, store, path = backing
    svc = FaultService(mode="user_mode_only")
    assert svc.mode == "user_mode_only"
    with gphint.GuestMemory("4M") as mem:
        svc.register(mem)
        volatile_from_file(mem, data, store, np.arange(64))
        mem.discard(np.arange(64))
        mem.set_state(np.arange(32, 64), "unused")
        mem.set_state(np.arange(32, 64), "stable")         # Uz -> Sz: missing frames
        fd = os.open(path, os.O_RDONLY)
        try:
            # a kernel-mode pread into missing frames would fail with EFAULT here
            assert mem.fill_from_file(np.arange(32, 64), fd, np.arange(500, 532) * PAGE) == 32
        finally:
            os.close(fd)
        assert np.array_equal(mem.frames[32:64], data[500:532])
        assert np.array_equal(mem.frames[:32], data[:32])
        # the C path itself: a direct pread into missing frames gets EFAULT and bounces
        mem.set_state(np.arange(64, 96), "unused")
        mem.discard(np.arange(64, 96))
        mem.set_state(np.arange(64, 96), "stable")
        fd = os.open(path, os.O_RDWR)
        try:
            n, bounced = mech.fill_from_file(mem.region, PAGE, np.arange(64, 96), fd,
                                             np.arange(600, 632) * PAGE, False)
            assert n == 32 and bounced == 32
            assert np.array_equal(mem.frames[64:96], data[600:632])
            mem.set_state(np.arange(96, 100), "unused")
            mem.discard(np.arange(96, 100))                # missing: kernel-mode reads fault too
            n, bounced = mech.write_to_file(mem.region, PAGE, np.arange(96, 100), fd,
                                            np.arange(4) * PAGE, False)
            assert n == 4 and bounced == 4
            assert os.pread(fd, 4 * PAGE, 0) == bytes(4 * PAGE)
        finally:
            os.close(fd)
    svc.stop()


def test_fill_and_write_roundtrip_through_a_file(mem, tmp_path):
    data = pattern(16, seed=11)
    mem.frames[:16] = data
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert mem.write_to_file(np.arange(16), fd, np.arange(16)[::-1] * PAGE) == 16
        mem.frames[:16] = 0
        assert mem.fill_from_file(np.arange(100, 116), fd, np.arange(16)[::-1] * PAGE) == 16
        assert mem.fill_from_file([200], fd, 16 * PAGE) == 1     # past EOF: zeros
    finally:
        os.close(fd)
    assert np.array_equal(mem.frames[100:116], data)
    assert (mem.frames[200] == 0).all()


@needs_service
@pytest.mark.parametrize("window", ["3K", "96K", "4M", "0", "lots"])
def test_bad_window_names_the_value(window):
    with pytest.raises(gphint.ConfigError, match=repr(window).strip("'")):
        FaultService(window=window)


@needs_service
def test_bad_mode_names_the_value():
    with pytest.raises(gphint.ConfigError, match="'sometimes'"):
        FaultService(mode="sometimes")


def test_bad_backing_names_the_value(mem, tmp_path):
    with pytest.raises(gphint.ConfigError, match="not a regular file"):
        FileStore(tmp_path)
    with pytest.raises(gphint.ConfigError, match="nope"):
        FileStore(tmp_path / "nope")
    with pytest.raises(gphint.ConfigError, match="-4096"):
        mem.set_backing([0], 3, [-4096])
    with pytest.raises(gphint.ConfigError, match="0"):
        mem.set_backing([0], 0, [0])


def test_file_truncated_under_the_service_reloads_zeros_past_the_new_end(mem, svc, tmp_path):
    """The store's mapping is only ever read by the kernel (UFFDIO_COPY): a shrunken file gives
    EFAULT there, the service falls back to pread, and past-EOF pages are zeros -- no SIGBUS."""
    path = tmp_path / "shrinks"
    data = pattern(8, seed=13)
    data.tofile(path)
    with FileStore(path) as store:
        svc.register(mem)
        mem.frames[:8] = data
        mem.set_backing(np.arange(8), store, np.arange(8) * PAGE)
        mem.set_state(np.arange(8), "volatile")
        mem.discard(np.arange(8))
        os.truncate(path, 2 * PAGE)
        assert np.array_equal(mem.frames[:2], data[:2])
        assert (mem.frames[2:8] == 0).all()
        assert svc.stats(mem)["lost_pages"] == 0


@needs_move
def test_huge_page_guest_discards_swaps_and_reloads_4k_pieces(svc, backing):
    """THP guests (transparent huge pages cannot be discarded in 4 KiB pieces without splitting
    the 2 MiB page): a 4 KiB discard or detach inside a huge page splits it; every byte still
    comes back."""
    data, store, _ = backing
    swap = HostSwap("4M")
    with gphint.GuestMemory("8M", thp=True) as mem:
        svc.register(mem)
        mem.frames[:] = data[:mem.npages]
        mem.set_backing(np.arange(mem.npages), store, np.arange(mem.npages) * PAGE)
        mem.set_state(np.arange(0, 512, 3), "volatile")
        assert mem.discard(np.arange(0, 512, 3)) == 171
        assert svc.swap_out(mem, np.arange(600, 700), swap) == 100
        assert mem.resident_pages() == mem.npages - 271
        assert np.array_equal(mem.frames, data[:mem.npages])
    swap.close()


def test_page_cache_fill_installs_missing_frames_without_a_fault(mem, svc, backing):
    data, store, path = backing
    svc.register(mem)
    mem.frames[200:210] = 7                                  # resident frames
    swap = HostSwap("1M")
    mem.frames[300:304] = 9
    svc.swap_out(mem, np.arange(300, 304), swap)             # preserved frames (Sp)
    pages = np.concatenate([np.arange(100, 164), np.arange(200, 210), np.arange(300, 304)])
    before = svc.stats()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert mem.fill_from_file(pages, fd, np.arange(pages.size) * PAGE) == pages.size
    finally:
        os.close(fd)
    after = svc.stats()
    assert after["installed_fills"] - before["installed_fills"] == 64     # the missing ones
    assert after["zero_fills"] == before["zero_fills"]                     # no zero fill first
    assert after["swap_ins"] - before["swap_ins"] == 4       # Sp frames: swapped in, overwritten
    assert np.array_equal(mem.frames[pages], data[:pages.size])
    assert (mem.content(pages) == gphint.HostState.RESIDENT).all() and swap.used_slots == 0
    swap.close()


def test_the_fault_thread_is_named_and_its_cpu_time_is_read(svc):
    # gphint.scale.takeback reports the fault thread's CPU apart from the host's: that works only
    # while ext/faults.c names the thread what gphint.faults looks for
    from gphint.faults import FAULT_THREAD_NAME, fault_thread_cpu_s
    comms = []
    for tid in os.listdir("/proc/self/task"):
        with open("/proc/self/task/%s/comm" % tid) as f:
            comms.append(f.read().strip())
    assert FAULT_THREAD_NAME in comms
    before = fault_thread_cpu_s()
    assert before is not None and before >= 0
    assert fault_thread_cpu_s() >= before
