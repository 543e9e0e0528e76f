"""The host dirty bit of POT_VOLATILE pages: real write tracking by the kernel.

Mechanism (ext/dirty.c): the fault service registers guest memory in userfaultfd write-protect
mode with UFFD_FEATURE_WP_ASYNC, so the kernel resolves writes to protected pages itself and marks
them written; PAGEMAP_SCAN (Linux >= 6.7) reads that bit over page ranges, and test-and-clears it
in the same walk.  Soft-dirty (pagemap bit 55 + clear_refs) would be the next fallback but it is
not offered here (caps: soft_dirty) and clear_refs is process-wide, so where WP_ASYNC is missing
every page reads as dirty: POT_VOLATILE pages are then treated as STABLE, as the original design
does on platforms without a usable dirty bit.

Race rule (Schwidefsky's guest page hinting series, 2006, for potentially volatile pages): the
guest makes a page stable before it clears the page's dirty bit.
"""
import numpy as np

from . import caps
from ._mechanism import mech
from .memory import PAGE_SIZE
from ._fallback import coalesce   # sorted pages -> (first, npages) runs; pure numpy


def available():
    """Is kernel write tracking usable here?  (WP_ASYNC and PAGEMAP_SCAN.)"""
    return caps.has("dirty_tracking")


def _scan(mem, idx, clear):
    written = np.ones(idx.size, dtype=bool)
    if idx.size == 0:
        return written
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    out = np.zeros(idx.size, dtype=bool)
    buf = np.zeros(0, dtype=np.uint8)
    pos = 0
    for first, n in coalesce(sorted_idx).tolist():
        if buf.size < n:
            buf = np.zeros(n, dtype=np.uint8)
        mech.dirty_scan(mem.region, PAGE_SIZE, first, n, clear, buf)
        out[pos:pos + n] = buf[:n] != 0
        pos += n
    written[order] = out
    return written


def dirty_pages(mem, idx):
    """bool per page of idx (int64, no duplicates needed): written since its bit was cleared."""
    if not available():
        return np.ones(idx.size, dtype=bool)
    # duplicates: scan unique pages, map back
    uniq, inv = np.unique(idx, return_inverse=True)
    return _scan(mem, uniq, False)[inv]


def clear_dirty(mem, idx):
    """Test-and-clear: write-protect the pages again.  Returns how many had been written."""
    if not available() or idx.size == 0:
        return 0
    return int(_scan(mem, np.unique(idx), True).sum())
