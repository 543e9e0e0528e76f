"""What the host can see of a guest: which pages are resident (mincore), since when, and which
were ever touched.  The host cannot see guest access bits, so "oldest resident first" is the
best order it has for eviction -- FIFO by the time a page was first seen resident.
"""
import numpy as np


class ResidencyTracker:
    """Per-guest residency as measured by the kernel, sampled once per host step."""

    def __init__(self, mem):
        self.mem = mem
        self.npages = mem.npages
        self.resident = np.zeros(self.npages, dtype=bool)
        # tick at which each currently resident page was first seen resident (FIFO order)
        self.since_tick = np.zeros(self.npages, dtype=np.int64)
        self.ever = np.zeros(self.npages, dtype=bool)
        self.resident_npages = 0
        self.peak_npages = 0

    def sample(self, tick):
        """Re-read residency from the kernel; returns the number of resident pages."""
        res = self.mem.residency()
        arrived = res & ~self.resident
        self.since_tick[arrived] = tick
        self.resident = res
        self.ever |= res
        self.resident_npages = int(np.count_nonzero(res))
        self.peak_npages = max(self.peak_npages, self.resident_npages)
        return self.resident_npages

    def forget(self, pages):
        """Pages the host just took away: not resident any more (until the next sample says so)."""
        self.resident[pages] = False

    @property
    def touched_npages(self):
        return int(np.count_nonzero(self.ever))
