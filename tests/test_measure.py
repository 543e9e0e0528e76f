"""The witnesses: psutil RSS, smaps_rollup, pagemap, mincore -- they must agree with each other."""
import numpy as np

import gphint
from gphint import measure
from conftest import PAGE


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
