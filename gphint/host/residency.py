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
    """Per-guest residency as measured by the kernel, sampled once per host step.  `tables`:
    views of a FleetResidency's arrays (resident, since_tick, ever, mincore scratch) to work
    in, instead of its own."""

    def __init__(self, mem, tables=None):
        self.mem = mem
        self.npages = mem.npages
        if tables is None:
            n = self.npages
            tables = (_touched(np.empty(n, dtype=bool)), _touched(np.empty(n, dtype=np.int64)),
                      _touched(np.empty(n, dtype=bool)), _touched(np.empty(max(n, 1), dtype=np.uint8)))
        # updated in place by each sample (ext/hostops.c, gph_residency_track), never replaced:
        # the host's reclaim call clears the pages it takes in this very array
        # since_tick: tick at which each currently resident page was first seen resident (FIFO)
        self.resident, self.since_tick, self.ever, self._vec = tables
        self.resident_npages = 0
        self.peak_npages = 0

    def sample(self, tick):
        """Re-read residency from the kernel; returns the number of resident pages."""
        region = self.mem._region
        if region is None:
            self.mem._check_open()   # closed: its error
        n = mech.residency_track(region, self.mem.page_size, self._vec, self.resident.view(np.uint8),
                                 self.since_tick, self.ever.view(np.uint8), int(tick))
        return self.sampled(n)

    def sampled(self, n):
        """The sample (own or the fleet's) found n pages resident."""
        self.resident_npages = int(n)
        self.peak_npages = max(self.peak_npages, self.resident_npages)
        return self.resident_npages

    def forget(self, pages):
        """Pages the host just took away: not resident any more (until the next sample says so)."""
        self.resident[pages] = False

    @property
    def touched_npages(self):
        return int(np.count_nonzero(self.ever))


class FleetResidency:
    """Every guest's residency tables as one array each, guest i's at offsets[i]: the fault
    service samples, counts and takes from the whole fleet in one C call each (a Python call
    per guest made the host's cost per MiB grow with the number of guests).  `trackers[i]` is
    guest i's ResidencyTracker, working in views of these arrays."""

    def __init__(self, mems):
        sizes = np.array([m.npages for m in mems], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        total = int(sizes.sum())
        self.resident = _touched(np.empty(total, dtype=bool))
        self.since_tick = _touched(np.empty(total, dtype=np.int64))
        self.ever = _touched(np.empty(total, dtype=bool))
        self.vec = _touched(np.empty(total, dtype=np.uint8))
        self.counts = np.zeros(len(mems), dtype=np.int64)
        self.mems = list(mems)
        self.trackers = [ResidencyTracker(m, tuple(a[o:o + n] for a in (self.resident, self.since_tick,
                                                                         self.ever, self.vec)))
                         for m, o, n in zip(self.mems, self.offsets.tolist(), sizes.tolist())]

    def sample(self, tick, svc=None):
        """Re-read every guest's residency; returns the fleet's resident pages.  One C call
        through `svc` when it serves every guest, else guest by guest."""
        total = svc.sample_fleet(self, tick) if svc is not None else None
        if total is None:
            return sum(tr.sample(tick) for tr in self.trackers)
        for tr, n in zip(self.trackers, self.counts.tolist()):
            tr.sampled(n)
        return total

    # --- the host's swap order over the whole fleet --------------------------------------------
    def oldest(self, need, keep):
        """The `need` oldest resident pages (smallest since_tick) for which keep(guest, pages)
        says True, as (guest index, page numbers in it) pairs, pages ascending.

        Read in the fleet's arrays at once: the oldest resident pages first, and keep() only for
        the guests that hold them -- a numpy call per guest releases the interpreter lock on
        arrays this size, and each release cost the host up to the switch interval (5 ms) to get
        it back behind busy guest threads: a fallback swap over 512 guests spent 7-9 s of wall
        per pass on 0.4 s of CPU.  The oldest `need` among the kept pages are exactly those of a
        per-guest scan (ties at the same tick broken arbitrarily, as there)."""
        res = np.flatnonzero(self.resident)
        if need <= 0 or res.size == 0:
            return []
        ticks = self.since_tick[res]
        k = min(res.size, 2 * need)
        while True:
            cand = res if k == res.size else np.sort(res[np.argpartition(ticks, k - 1)[:k]])
            cand = cand[np.concatenate([keep(g, pages) for g, pages in self._by_guest(cand)])]
            if cand.size >= need or k == res.size:
                break
            k = min(res.size, 4 * k)    # too few kept among the oldest: look further back
        if cand.size > need:
            cand = np.sort(cand[np.argpartition(self.since_tick[cand], need - 1)[:need]])
        return self._by_guest(cand)

    def _by_guest(self, pages):
        """Sorted fleet page indices -> [(guest index, its page numbers)]."""
        if pages.size == 0:
            return []
        owner = np.searchsorted(self.offsets, pages, side="right") - 1
        cuts = np.flatnonzero(np.diff(owner)) + 1
        return [(int(o[0]), p - self.offsets[o[0]]) for o, p in zip(np.split(owner, cuts), np.split(pages, cuts))]
