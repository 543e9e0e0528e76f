"""Guest reclaim, as Linux's kswapd does it: clean LRU cache pages first, then writeback, then
swap -- and, in guest-visible discard mode, the service's discarded-page list before all."""
import numpy as np

from ..errors import ConfigError
from .frames import FILE, SWAPCACHE

RECLAIM_CLUSTER = 32        # pages reclaimed at least per shortage (Linux SWAP_CLUSTER_MAX)


class Reclaim:
    """Guest's frame supply and reclaim (a mixin: it uses the guest's allocator, frame table,
    page cache, anonymous memory, fault service and stats)."""

    def _alloc_frames(self, npages, huge=False):
        # below the low watermark: reclaim up to the high one, so that reclaim (an LRU scan and
        # one free per pass) runs once per many allocations, as kswapd does.  huge=True: a THP
        # guest's anonymous memory (gphint.guest.thp), whose per-cpu lists are free memory too
        alloc = self.allocator.alloc if not huge else lambda n: self.allocator.alloc(n, huge=True)
        free = self.allocator.free_pages + getattr(self.allocator, "pcp_pages", 0)
        if free - npages < self.low_watermark:
            self.reclaim(npages + self.high_watermark - free)
        try:
            return alloc(npages)
        except MemoryError:
            self.reclaim(npages - self.allocator.free_pages + RECLAIM_CLUSTER)
            return alloc(npages)

    def _free_frames(self, frames):
        frames = np.asarray(frames, dtype=np.int64)
        self.table.reset(frames)
        self.allocator.free(frames)
        # after the free: the page is UNUSED (or pending it), its old backing means nothing now
        self.mem.clear_backing(frames)

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
        freed = self.drain_discarded() if self.discard_mode == "guest" else 0
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

    def drain_discarded(self):
        """Guest-visible discard faults: take the service's discarded-page list and drop those
        pages that are still clean, unpinned cache pages (a frame may have been reused since:
        only a clean cache page can be dropped without loss).  Returns frames freed."""
        svc = self.fault_service
        if svc is None:
            return 0
        frames = np.unique(np.asarray(svc.drain_discarded(self.mem), dtype=np.int64))
        if frames.size == 0:
            return 0
        self.stats["drained_discarded"] += int(frames.size)
        if self.discard_mode != "guest":
            return 0
        frames = frames[self.table.reclaimable()[frames]]
        kind = self.table.kind[frames]
        freed = self.cache.drop(frames[kind == FILE]) + self.anon.drop_swapcache(frames[kind == SWAPCACHE])
        self.stats["dropped_drained"] += freed
        return freed
