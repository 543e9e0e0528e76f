"""GuestMemory: sizes, views, lifetime, bad input."""
import gc
import subprocess
import sys

import numpy as np
import pytest

import gphint
from gphint import measure
from helpers import PAGE


@pytest.mark.parametrize("size,npages", [("64M", 16384), ("1k", 1), (4097, 2), ("1.5M", 384), ("8 KiB", 2)])
def test_sizes_round_up_to_whole_pages(size, npages):
    with gphint.GuestMemory(size) as m:
        assert m.npages == npages and m.size_bytes == npages * PAGE
        assert m.frames.shape == (npages, PAGE) and m.frames.dtype == np.uint8


@pytest.mark.parametrize("bad", [0, -4096, "", "12X", "ten megabytes", "-1M", None, 3.5, True])
def test_bad_sizes_name_the_value(bad):
    with pytest.raises(gphint.ConfigError) as e:
        gphint.GuestMemory(bad)
    assert repr(bad) in str(e.value)


def test_many_guests_in_one_process_are_independent():
    gs = [gphint.GuestMemory("4M", name="g%d" % i) for i in range(8)]
    for i, g in enumerate(gs):
        g.frames[:] = i
    for i, g in enumerate(gs):
        assert (g.frames == i).all()
    assert len({g.address for g in gs}) == 8
    for g in gs:
        g.close()


def test_fresh_memory_is_stable_and_not_resident(mem):
    assert mem.census() == {"Sr": mem.npages}
    assert mem.resident_pages() == 0


def test_close_unmaps_and_use_after_close_is_an_error():
    m = gphint.GuestMemory("16M")
    m.frames[:] = 1
    rss = measure.rss_bytes()
    m.close()
    assert rss - measure.rss_bytes() >= 0.95 * 16 * 2**20
    m.close()  # idempotent
    for use in (lambda: m.frames, lambda: m.set_state([0], "unused"), lambda: m.discard([0]),
                lambda: m.resident_pages(), lambda: m.states):
        with pytest.raises(gphint.ClosedError):
            use()


def test_close_with_a_live_view_frees_memory_without_a_dangling_pointer():
    m = gphint.GuestMemory("16M")
    view = m.frames
    view[:] = 3
    rss = measure.rss_bytes()
    m.close()
    assert rss - measure.rss_bytes() >= 0.95 * 16 * 2**20
    assert not view[::97].any()      # still mapped (discarded to zeros), no crash
    del view
    gc.collect()


@pytest.mark.parametrize("pages,msg", [
    ([0, 1, 99999], "99999"), ([-1], "-1"), (np.array([1.0, 2.0]), "float64"),
    (np.zeros((2, 3), dtype=np.int64), r"\(2, 3\)"), (np.zeros(5, dtype=bool), r"\(5,\)"),
    (["a"], "<U1"),
])
def test_bad_page_arguments_name_the_value(mem, pages, msg):
    with pytest.raises(gphint.ConfigError, match=msg):
        mem.set_state(pages, "unused")
    with pytest.raises(gphint.ConfigError, match=msg):
        mem.discard_raw(pages)


def test_pages_accept_masks_slices_and_runs(mem):
    mask = np.zeros(mem.npages, dtype=bool)
    mask[10:20] = True
    mem.set_state(mask, "unused")
    mem.set_state(slice(100, 110), "unused")
    mem.set_state(np.array([[200, 10]]), "unused")
    assert mem.census()["Ur"] == 30


def test_stale_extension_is_refused():
    code = ("import sys, types; fake = types.ModuleType('gphint._mech'); fake.__version__ = '0.0.0';"
            "fake.COMPILED = True; sys.modules['gphint._mech'] = fake; import gphint")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "GPHINT_PUREPYTHON": "0"})
    assert r.returncode != 0
    assert "stale gphint._mech" in r.stderr and "0.0.0" in r.stderr


def test_thp_region_is_2mib_aligned_and_discards_whole_huge_pages():
    with gphint.GuestMemory("8M", thp=True) as m:
        assert m.address % (2 << 20) == 0 and m.thp
        before = measure.smaps_rollup().get("AnonHugePages", 0)
        m.frames[:] = 5
        if gphint.caps.probe().thp_mode in ("always", "madvise"):
            assert measure.smaps_rollup().get("AnonHugePages", 0) - before >= 2 << 20
        huge = 512  # 4 KiB pages per 2 MiB
        m.set_state(slice(huge, 2 * huge), "unused")
        m.discard(slice(huge, 2 * huge))
        assert m.resident_pages() == m.npages - huge
        assert not m.frames[huge:2 * huge].any() and (m.frames[:huge] == 5).all()
        assert (m.frames[2 * huge:] == 5).all()
