"""What the host can see of a guest: which pages are resident (mincore), since when, and which
were ever touched.  The host cannot see guest access bits, so "oldest resident first" is the
best order it has for eviction -- FIFO by the time a page was first seen resident.
"""
import numpy as np

from .._mechanism import mech


def _touched(arr):
    """arr with its pages faulted in now: np.zeros maps them lazily, and the host's first sample
    of a 1 GiB guest then paid ~1.5 ms of page faults on its 10 bytes of tables per page (the
    shrink benchmark times that first step).  A real host allocates this with the guest."""
    arr.fill(0)
    return arr


class ResidencyTracker:
    """Per-guest residency as measured by the kernel, sampled once per host step."""

    def __init__(self, mem):
        self.mem = mem
        self.npages = mem.npages
        # updated in place by each sample (ext/hostops.c, gph_residency_track), never replaced:
        # the host's reclaim call clears the pages it takes in this very array
        self.resident = _touched(np.empty(self.npages, dtype=bool))
        # tick at which each currently resident page was first seen resident (FIFO order)
        self.since_tick = _touched(np.empty(self.npages, dtype=np.int64))
        self.ever = _touched(np.empty(self.npages, dtype=bool))
        self._vec = _touched(np.empty(max(self.npages, 1), dtype=np.uint8))   # mincore's output
        self.resident_npages = 0
        self.peak_npages = 0

    def sample(self, tick):
        """Re-read residency from the kernel; returns the number of resident pages."""
        region = self.mem._region
        if region is None:
            self.mem._check_open()   # closed: its error
        n = mech.residency_track(region, self.mem.page_size, self._vec, self.resident.view(np.uint8),
                                 self.since_tick, self.ever.view(np.uint8), int(tick))
        self.resident_npages = int(n)
        self.peak_npages = max(self.peak_npages, self.resident_npages)
        return self.resident_npages

    def forget(self, pages):
        """Pages the host just took away: not resident any more (until the next sample says so)."""
        self.resident[pages] = False

    @property
    def touched_npages(self):
        return int(np.count_nonzero(self.ever))
