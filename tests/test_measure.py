"""The witnesses: psutil RSS, smaps_rollup, pagemap, mincore -- they must agree with each other."""
import numpy as np

import gphint
from gphint import measure
from helpers import PAGE


def test_rss_and_smaps_rollup_agree_within_a_tolerance():
    with gphint.GuestMemory("32M") as m:
        m.frames[:] = 1
        rss = measure.rss_bytes()
        rollup = measure.smaps_rollup()["Rss"]
        assert abs(rss - rollup) < 4 * 2**20       # two reads a moment apart: < 4 MiB of drift
        assert measure.uss_bytes() >= 32 * 2**20


def test_pagemap_and_mincore_agree_page_by_page(mem):
    rng = np.random.default_rng(5)
    touched = rng.random(mem.npages) < 0.3
    mem.frames[touched] = 1
    present = measure.pagemap_present(mem.address, mem.npages)
    assert (present == touched).all()
    assert (mem.residency() == touched).all()
    assert mem.resident_bytes() == touched.sum() * PAGE


def test_anon_rss_counts_guest_memory_but_not_mapped_file_pages(tmp_path):
    """Why results carry anonymous RSS too: a mapped, read file raises RSS, not RssAnon."""
    import mmap
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * (16 << 20))
    with open(path, "rb") as f, gphint.GuestMemory("16M") as m:
        anon, rss = measure.anon_rss_bytes(), measure.rss_bytes()
        m.frames[:] = 1
        assert measure.anon_rss_bytes() - anon >= 0.95 * (16 << 20)
        anon, rss = measure.anon_rss_bytes(), measure.rss_bytes()
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert sum(mapped[i] for i in range(0, len(mapped), PAGE)) == (16 << 20) // PAGE
        assert measure.rss_bytes() - rss >= 0.95 * (16 << 20)
        assert measure.anon_rss_bytes() - anon < 2 << 20
        assert abs(measure.anon_rss_bytes() - measure.smaps_rollup()["Anonymous"]) < 4 << 20
        mapped.close()
