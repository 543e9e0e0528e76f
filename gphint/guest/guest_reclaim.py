"""Guest reclaim, as Linux's kswapd does it: clean LRU cache pages first, then writeback, then
swap -- and, in guest-visible discard mode, the discarded page list before all.

The discarded page list (patch 8 of the series): the fault service lists the VOLATILE pages it
served as discard faults (a ring in C); the guest pulls them onto its own list and acts on them
in a batch later.  The race it closes: a listed frame is freed by the guest (truncate, eviction)
and reused for another page before the drain -- a drain that then acted on the frame would drop
(guest mode) or count (transparent mode) a page that was never discarded.  So every free is a
drain point: `_free_frames` pulls the ring first and retires the freed frames from the list (their
free is the final one), and a listed frame can never outlive its page.  A fault still in flight
when the frame is freed is covered too: the free clears the frame's backing record before it
drains, and the fault thread lists a page only while that record still names the file page it
served, checked under the ring's lock (ext/serve.c ring_append) -- so the fault either lands on the
list before the drain (and is retired) or not at all (counted as the service's ring_stale).
Drain points that drop:
`step` (once the list holds `discard_list_batch` entries), `reclaim` and `verify` (all of it).
"""
import numpy as np

from ..errors import ConfigError
from .frames import FILE, SWAPCACHE
from .thp import HUGE_PAGES

RECLAIM_CLUSTER = 32        # pages reclaimed at least per shortage (Linux SWAP_CLUSTER_MAX)
DISCARD_LIST_BATCH = 32     # listed discarded pages dropped at once by step() (Guest(discard_list_batch=))


class Reclaim:
    """Guest's frame supply and reclaim (a mixin: it uses the guest's allocator, frame table,
    page cache, anonymous memory, fault service and stats)."""

    def _alloc_frames(self, npages):
        # below the low watermark: reclaim up to the high one, so that reclaim (an LRU scan and
        # one free per pass) runs once per many allocations, as kswapd does.  A THP guest's
        # per-cpu lists (gphint.guest.thp) are free memory too
        self._watermark(npages)
        try:
            return self.allocator.alloc(npages)
        except MemoryError:
            self.reclaim(npages - self.allocator.free_pages + RECLAIM_CLUSTER)
            return self.allocator.alloc(npages)

    def _alloc_huge_page(self):
        """A THP guest's huge page for a process's heap (gphint.guest.thp.ThpHeap): its first
        frame, or -1 (no free 2 MiB block even after the watermark reclaim)."""
        self._watermark(HUGE_PAGES)
        return self.allocator.alloc_huge_page()

    def _watermark(self, npages):
        free = self.allocator.free_pages + getattr(self.allocator, "pcp_pages", 0)
        if free - npages < self.low_watermark:
            self.reclaim(npages + self.high_watermark - free)

    def _free_frames(self, frames):
        frames = np.asarray(frames, dtype=np.int64)
        self.table.reset(frames)
        self.allocator.free(frames)
        # after the free: the page is UNUSED (or pending it), its old backing means nothing now
        self.mem.clear_backing(frames)
        # then the list: a fault still being served lists the frame only if it finishes before
        # this drain (the fault thread checks the backing record under the ring's lock)
        self._retire_listed(frames)

    # --- reclaim --------------------------------------------------------------------------------
    def reclaim(self, npages):
        """Free at least npages frames if the guest can (the balloon and memory shortage call
        this): drained discards, then clean LRU pages, then writeback, then swap.  Returns frames
        freed."""
        self._check_open()
        if isinstance(npages, bool) or not isinstance(npages, (int, np.integer)) or npages < 0:
            raise ConfigError("reclaim npages must be an integer >= 0, got %r" % (npages,))
        npages = int(npages)
        self.stats["reclaim_calls"] += 1
        freed = self.drain_discarded()   # transparent mode: empties the list, frees nothing
        if getattr(self, "thp", False):   # the deferred-split shrinker runs with reclaim (mm/huge_memory.c)
            freed += self.allocator.split_deferred()
        if freed < npages:
            freed += self._evict(npages - freed)
        if freed < npages:
            self.cache.writeback(self._oldest(self.cache.dirty_frames(), npages - freed))
            freed += self._evict(npages - freed)
        if freed < npages:
            n = self.anon.swap_out(self.anon.swap_out_candidates()[:npages - freed])
            self.stats["swapped_out"] += n
            freed += self._evict(npages - freed)
        self.stats["reclaimed"] += freed
        return freed

    def _oldest(self, frames, n):
        if frames.size <= n:
            return frames
        return frames[np.argpartition(self.table.last_use[frames], n)[:n]]

    def _evict(self, n):
        """Drop the n least recently used clean cache and swap-cache pages."""
        if n <= 0:
            return 0
        victims = self._oldest(np.flatnonzero(self.table.reclaimable()), n)
        if victims.size == 0:
            return 0
        kind = self.table.kind[victims]
        freed = self.cache.drop(victims[kind == FILE]) + self.anon.drop_swapcache(victims[kind == SWAPCACHE])
        self.stats["evicted"] += freed
        return freed

    # --- the discarded page list ------------------------------------------------------------------
    def _pull_discarded(self):
        """Move the service's ring onto the guest's list: a bit per frame (the free path tests
        its frames against it at the cost of one gather) and a count."""
        svc = self.fault_service
        if svc is None:
            return
        got = svc.drain_discarded(self.mem)
        if got.size == 0:
            return
        self.stats["drained_discarded"] += int(got.size)
        new = np.unique(got[~self._listed[got]])
        self._listed[new] = True
        self._nlisted += int(new.size)
        self.stats["dlist_high_water"] = max(self.stats["dlist_high_water"], self._nlisted)

    def listed_frames(self):
        """The frames on the discarded page list now (after pulling the service's ring)."""
        self._pull_discarded()
        return np.flatnonzero(self._listed)

    def _retire_listed(self, frames):
        """The free path's drain point: frames being freed leave the list now -- their page is
        gone, and a later drain must not act on whatever page reuses the frame."""
        if self.fault_service is None or frames.size == 0:
            return
        self._pull_discarded()
        if self._nlisted == 0:
            return
        hit = frames[self._listed[frames]]
        if hit.size:
            self._listed[hit] = False
            self._nlisted -= int(hit.size)
            self.stats["dlist_retired_by_free"] += int(hit.size)

    def drain_discarded(self, min_batch=0):
        """Drain the discarded page list: pull the service's ring, and once the list holds at
        least min_batch entries drop (guest mode) those still clean, unpinned cache pages --
        only a clean cache page can be dropped without loss.  Transparent mode's fault service
        already reloaded them: the drain only empties the list.  Returns frames freed."""
        self._pull_discarded()
        if self._nlisted == 0 or self._nlisted < min_batch:
            return 0
        frames = np.flatnonzero(self._listed)
        self._listed[frames] = False
        self._nlisted = 0
        self.stats["dlist_drains"] += 1
        if self.discard_mode != "guest":
            return 0
        frames = frames[self.table.reclaimable()[frames]]
        kind = self.table.kind[frames]
        freed = self.cache.drop(frames[kind == FILE]) + self.anon.drop_swapcache(frames[kind == SWAPCACHE])
        self.stats["dropped_drained"] += freed
        return freed
