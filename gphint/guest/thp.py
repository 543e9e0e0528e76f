"""A guest with transparent huge pages: the buddy allocator as Linux runs it with THP `always`.

Three behaviours change what a host can take back (measured on a real Linux 6.1 guest: freeing
4 KiB or 64 KiB pieces inside THP-backed memory left MemFree unchanged, and about 9.5% of a
400 MiB free sat on the per-cpu lists, never reported):

- anonymous memory comes in whole 2 MiB huge pages (order 9): a process's heap grows in
  2 MiB-aligned virtual ranges, the first use of each faults in one huge page zeroed whole
  (mm/huge_memory.c: do_huge_pmd_anonymous_page), and the process's next pages in that range
  are its subpages (ThpHeap) -- so small allocations live inside huge pages too, as a
  process's heap does under THP `always`;
- a partial free inside a huge page frees nothing: the huge page is only split (queued for the
  deferred split, mm/huge_memory.c: deferred_split_huge_page), its freed 4 KiB pieces stay
  allocated -- STABLE, no arch_free_page hint, not on a free list -- until the whole 2 MiB is
  free (then it is freed as one huge page) or memory runs short and the deferred-split shrinker
  frees the pieces;
- a freed huge page goes to the freeing CPU's per-cpu list first (mm/page_alloc.c keeps pcp
  lists for the THP order since Linux 5.13), bounded by pcp_high blocks per CPU; past it half
  the list goes to the buddy free lists.  Pages on a per-cpu list are hinted UNUSED (s390's
  arch_free_page runs before them) but are on no free list, so free page reporting never sees
  them; they count as used in free_pages (NR_FREE_PAGES excludes pcp pages too).
"""
import numpy as np

from ..batching import BATCH
from ..errors import ConfigError, OutOfMemory
from .allocator import MAX_ORDER, UNUSED, BuddyAllocator, _check_int, block_pages
from .guestpart import mark_touched

HUGE_ORDER = 9
HUGE_PAGES = 1 << HUGE_ORDER


class ThpAllocator(BuddyAllocator):
    """ThpAllocator(mem, max_order=MAX_ORDER, batch=BATCH, hinting=True, clock=None, mem_map=False, cpus=2,
    pcp_high=None):
    a BuddyAllocator whose alloc(n, huge=True) hands out 2 MiB huge pages.  pcp_high: huge
    pages per CPU list (None: 1/16 of memory's huge pages, at least 1 -- Linux sizes its pcp
    high mark from the zone's size too)."""

    def __init__(self, mem, max_order=MAX_ORDER, batch=BATCH, hinting=True, clock=None, mem_map=False, *,
                 cpus=2, pcp_high=None):
        if _check_int(max_order, "max_order", 0) < HUGE_ORDER:
            raise ConfigError("a THP guest needs max_order >= %d (2 MiB blocks), got %d" % (HUGE_ORDER, max_order))
        if mem.npages % HUGE_PAGES:
            raise ConfigError("a THP guest's memory must be a multiple of 2 MiB, got %d pages" % mem.npages)
        super().__init__(mem, max_order=max_order, batch=batch, hinting=hinting, clock=clock,
                         mem_map=mem_map)
        self.cpus = _check_int(cpus, "cpus", 1, 1024)
        nunits = mem.npages // HUGE_PAGES
        self.pcp_high = max(1, nunits // 16) if pcp_high is None else _check_int(pcp_high, "pcp_high", 1)
        self._huge = np.zeros(nunits, dtype=bool)           # unit handed out as one huge page
        self._split = np.zeros(nunits, dtype=bool)          # partly freed, deferred split pending
        self._held = np.zeros(mem.npages, dtype=bool)       # freed by its user inside a huge page
        self._held_count = np.zeros(nunits, dtype=np.int32)
        self._reserved = np.zeros(mem.npages, dtype=bool)   # a heap's huge page, not yet used
        self._pcp = [[] for _ in range(self.cpus)]          # per CPU: first pages of huge pages
        self._cpu = 0
        self.stats.update({"thp_allocs": 0, "thp_fallbacks": 0, "thp_frees": 0, "thp_splits": 0,
                           "thp_held_pages": 0, "deferred_freed": 0, "pcp_frees": 0, "pcp_reused": 0,
                           "pcp_drained": 0})

    # --- views -----------------------------------------------------------------------------
    @property
    def pcp_pages(self):
        """Pages of free huge pages on the per-cpu lists (free, but on no free list)."""
        return HUGE_PAGES * sum(len(lst) for lst in self._pcp)

    @property
    def held_pages(self):
        """Pages freed by their users inside huge pages not yet split: still allocated."""
        return int(self._held_count.sum())

    @property
    def heap_reserved_pages(self):
        """Zeroed subpages of processes' huge pages their processes have not used yet:
        allocated (MemFree excludes them), STABLE, resident on the host."""
        return int(np.count_nonzero(self._reserved))

    @property
    def allocated_pages(self):
        return self.npages - self.free_pages - self._isolated_pages - self.pcp_pages

    # --- allocation ------------------------------------------------------------------------
    def alloc(self, npages, huge=False):
        """alloc(npages): 4 KiB pages as BuddyAllocator.alloc.  huge=True (anonymous memory):
        every whole 2 MiB of the request is one huge page where a free one exists (the
        freeing CPU's per-cpu list first), the rest 4 KiB pages."""
        npages = _check_int(npages, "npages", 0)
        with self._lock:
            if npages > self.free_pages:
                self.drain_pcp()
            if npages > self.free_pages + self.pcp_pages:
                self.split_deferred()
            if npages > self.free_pages + self.pcp_pages:
                raise OutOfMemory("cannot allocate %d pages: only %d of %d guest pages are free "
                                  "(THP guest)" % (npages, self.free_pages + self.pcp_pages, self.npages))
            chunks = [self._alloc_huge(npages // HUGE_PAGES)] if huge and npages >= HUGE_PAGES else []
            rest = npages - sum(c.size for c in chunks)
            if rest > self.free_pages:
                self.drain_pcp()
            chunks.append(super().alloc(rest))
            return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def _alloc_huge(self, nhuge):
        local = self._pcp[self._cpu]
        firsts = [local.pop() for _ in range(min(nhuge, len(local)))]
        self.stats["pcp_reused"] += len(firsts)
        if firsts:
            self._hand_out(block_pages(firsts, HUGE_ORDER))
        while len(firsts) < nhuge and any(self._free_lists[k] for k in range(HUGE_ORDER, self.max_order + 1)):
            firsts.append(self.alloc_block(HUGE_ORDER))
        self.stats["thp_fallbacks"] += nhuge - len(firsts)     # no free 2 MiB block: 4 KiB pages
        self.stats["thp_allocs"] += len(firsts)
        units = np.asarray(firsts, dtype=np.int64) >> HUGE_ORDER
        self._huge[units] = True
        return block_pages(firsts, HUGE_ORDER)

    def alloc_huge_page(self):
        """One huge page for a process's heap: its first page, or -1 when no free 2 MiB block
        is on this CPU's list or the free lists (the fault falls back to 4 KiB pages).  Its
        pages are reserved for the process until it uses them (take_reserved)."""
        with self._lock:
            pages = self._alloc_huge(1)
            if pages.size == 0:
                return -1
            self._reserved[pages] = True
            return int(pages[0])

    def take_reserved(self, frames):
        """The process uses these reserved subpages (its heap reached them)."""
        with self._lock:
            if not self._reserved[frames].all():
                raise ConfigError("take_reserved: page %d is not a reserved subpage" % int(
                    np.asarray(frames)[~self._reserved[frames]][0]))
            self._reserved[frames] = False

    def mark_huge(self, firsts):
        """Blocks allocated with alloc_block(9) become huge pages (their frees split them)."""
        firsts = np.asarray(firsts, dtype=np.int64)
        with self._lock:
            if firsts.size and ((firsts % HUGE_PAGES).any() or not self._allocated[firsts].all()):
                raise ConfigError("mark_huge: not allocated 2 MiB blocks: %r" % (firsts[:4].tolist(),))
            self._huge[firsts >> HUGE_ORDER] = True

    # --- free ------------------------------------------------------------------------------
    def free(self, pages):
        arr = np.asarray(pages)
        if arr.size == 0 or arr.dtype.kind not in "iu" or arr.ndim != 1:
            return super().free(arr)          # empty, or the base's error naming the input
        arr = arr.astype(np.int64, copy=False)
        if int(arr.min()) < 0 or int(arr.max()) >= self.npages:
            return super().free(arr)
        with self._lock:
            in_huge = self._huge[arr >> HUGE_ORDER]
            if in_huge.any():
                self._free_in_huge(arr[in_huge])
                arr = arr[~in_huge]
        if arr.size:
            super().free(arr)

    def _free_in_huge(self, pages):
        uniq = np.unique(pages)
        bad = uniq[self._held[uniq] | ~self._allocated[uniq]]
        if bad.size or uniq.size != pages.size:
            page = int(bad[0]) if bad.size else int(pages[0])
            raise ConfigError("page %d is not allocated or appears twice (double free inside a "
                              "huge page)" % page)
        self._held[uniq] = True
        units, counts = np.unique(uniq >> HUGE_ORDER, return_counts=True)
        self._held_count[units] += counts
        whole = units[self._held_count[units] == HUGE_PAGES]
        partial = units[(self._held_count[units] < HUGE_PAGES) & ~self._split[units]]
        self._split[partial] = True
        self.stats["thp_splits"] += int(partial.size)
        self.stats["thp_held_pages"] += int(uniq.size)
        if whole.size:
            self._free_whole(whole << HUGE_ORDER)

    def _free_whole(self, firsts):
        """Whole huge pages freed: UNUSED, onto the freeing CPU's per-cpu list."""
        units = firsts >> HUGE_ORDER
        pages = block_pages(firsts, HUGE_ORDER)
        self._huge[units] = self._split[units] = False
        self._held[pages] = False
        self._held_count[units] = 0
        self._allocated[pages] = False
        self.hints.hint(pages, UNUSED)
        self.stats["thp_frees"] += int(firsts.size)
        self.stats["frees"] += 1
        self.stats["free_pages"] += int(pages.size)
        local = self._pcp[self._cpu]
        local.extend(firsts.tolist())
        self.stats["pcp_frees"] += int(firsts.size)
        self._cpu = (self._cpu + 1) % self.cpus    # the next free runs on the next CPU
        if len(local) > self.pcp_high:
            self._to_buddy([local.pop(0) for _ in range(len(local) - (self.pcp_high + 1) // 2)])

    def _to_buddy(self, firsts):
        if not firsts:
            return
        firsts = np.sort(np.asarray(firsts, dtype=np.int64))
        self.stats["pcp_drained"] += int(firsts.size)
        out_firsts, out_orders = self._insert(firsts, HUGE_ORDER, sorted_unique=True)
        for hook in list(self.on_free):
            hook(out_firsts, out_orders)

    def drain_pcp(self):
        """Every per-cpu list to the buddy free lists (drain_all_pages, under memory pressure)."""
        with self._lock:
            firsts = [f for lst in self._pcp for f in lst]
            for lst in self._pcp:
                lst.clear()
            self._to_buddy(firsts)
            return len(firsts) * HUGE_PAGES

    def split_deferred(self):
        """The deferred-split shrinker: split every partly freed huge page and free the pieces
        its users freed (they become UNUSED and go to the free lists).  Returns pages freed."""
        with self._lock:
            units = np.flatnonzero(self._split)
            if units.size == 0:
                return 0
            pages = block_pages(units << HUGE_ORDER, HUGE_ORDER)
            pages = pages[self._held[pages]]
            self._held[pages] = False
            self._held_count[units] = 0
            self._huge[units] = self._split[units] = False
            self.stats["deferred_freed"] += int(pages.size)
        super().free(pages)
        return int(pages.size)

    def thp_stats(self):
        """The THP counters with the lists' sizes now (as /proc/vmstat's thp_* and the pcp
        counts would show them)."""
        return dict(self.stats, pcp_pages=self.pcp_pages, held_now=self.held_pages,
                    heap_reserved_pages=self.heap_reserved_pages, huge_now=int(np.count_nonzero(self._huge)))

    def __repr__(self):
        return "<ThpAllocator %d pages, %d free, %d on pcp lists, %d held in split huge pages>" % (
            self.npages, self.free_pages, self.pcp_pages, self.held_pages)


class ThpHeap:
    """ThpHeap(allocator, mem, alloc_frames, alloc_huge_page): where a THP guest places its
    processes' anonymous pages.  A process's virtual pages are handed out in order (gphint.guest
    .anon); the first page of each 2 MiB-aligned virtual range faults in a huge page
    (alloc_huge_page(), after the guest's watermark reclaim), zeroed and so touched whole, and
    the range's later pages are its subpages.  Without a free 2 MiB block the range's pages
    are 4 KiB pages (alloc_frames(n)), as the THP fault falls back.  Only the process's
    newest range can hold reserved subpages: one huge page per process at most."""

    def __init__(self, allocator, mem, alloc_frames, alloc_huge_page):
        self.allocator = allocator
        self.mem = mem
        self.alloc_frames = alloc_frames
        self.alloc_huge_page = alloc_huge_page
        self._tail = {}          # pid -> (virtual range, first frame of its huge page or -1)

    def frames_for(self, pid, vpages):
        """Frames for process pid's new virtual pages (ascending, never handed out before)."""
        out = np.empty(vpages.size, dtype=np.int64)
        ranges = vpages >> HUGE_ORDER
        for r in np.unique(ranges).tolist():
            sel = ranges == r
            tail, first = self._tail.get(pid, (-1, -1))
            if tail != r:
                first = self.alloc_huge_page()
                if first >= 0:            # clear_huge_page: the fault zeroes all 2 MiB
                    whole = np.arange(first, first + HUGE_PAGES, dtype=np.int64)
                    self.mem.frames[whole] = 0
                    mark_touched(self.mem, whole)
                self._tail[pid] = (r, first)
            if first >= 0:
                frames = first + (vpages[sel] & (HUGE_PAGES - 1))
                self.allocator.take_reserved(frames)
                out[sel] = frames
            else:
                out[sel] = self.alloc_frames(int(np.count_nonzero(sel)))
        return out
