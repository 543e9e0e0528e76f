"""The guest's page allocator: a binary buddy allocator over all of a GuestMemory's frames.

Like Linux's (mm/page_alloc.c) it keeps one free list per order 0..max_order, splits a
bigger block when a smaller one is asked for, and on free merges a block with its buddy
(the block at `first ^ (1 << order)`) for as long as the buddy is free, up to max_order.
So fragmentation is real, and free page reporting's order threshold means what it means in
Linux.  Hints are today's s390 hooks: a freed page becomes UNUSED, an allocated one STABLE,
through a HintBuffer (gphint.guest.hints) that batches the frees.

Vectorised: alloc(n) takes whole free blocks of the smallest orders first (fragments go
first, as Linux's order-0 allocations eat the small lists before splitting) and splits at
most one block; free(pages) merges order by order with numpy over all freed pages at once.
The free lists are Python sets of first pages (O(1) take/insert, bulk updates run in C);
the per-page table `_head_order` answers "is my buddy a free block of this order?" for a
whole array of buddies in one numpy step.

Page reporting support (mm/page_reporting.c): isolate() takes a free block off its list
while it is being reported, putback() returns it (merging, like __putback_isolated_page)
and marks it reported only if it did not merge; a reported block loses its mark when it is
allocated, split, or merged into a bigger one.
"""
import itertools
import threading

import numpy as np

from ..batching import BATCH
from ..errors import ConfigError, OutOfMemory
from ..states import PageState
from .hints import HintBuffer

MAX_ORDER = 10      # the largest block: 4 MiB, Linux's MAX_PAGE_ORDER on x86_64 (include/linux/mmzone.h)

NOT_FREE = -1
STABLE, UNUSED = int(PageState.STABLE), int(PageState.UNUSED)   # ints: an IntEnum costs a slow C conversion per call
MAX_SUPPORTED_ORDER = 20


def _check_int(value, what, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError("%s must be an integer, got %r" % (what, value))
    if value < lo or (hi is not None and value > hi):
        raise ConfigError("%s must be in [%d, %s], got %d" % (what, lo, "inf" if hi is None else hi, value))
    return int(value)


def block_pages(firsts, order):
    """Every page of the blocks of one order starting at firsts, as a flat int64 array."""
    firsts = np.asarray(firsts, dtype=np.int64)
    return (firsts[:, None] + np.arange(1 << order, dtype=np.int64)).reshape(-1)


def aligned_blocks(first, npages, max_order):
    """Split the page range [first, first + npages) into buddy-aligned blocks of order <=
    max_order: [(first_page, order), ...].  Each block's order is the largest its alignment
    and the remaining length allow."""
    out = []
    p, end = int(first), int(first) + int(npages)
    while p < end:
        align = (p & -p).bit_length() - 1 if p else max_order
        k = min(align, max_order, (end - p).bit_length() - 1)
        out.append((p, k))
        p += 1 << k
    return out


class BuddyAllocator:
    """BuddyAllocator(mem, max_order=MAX_ORDER, batch=BATCH, hinting=True, clock=None, mem_map=False):
    every frame of mem starts free (hinted UNUSED at construction).  batch is the HintBuffer
    capacity (1 = unbatched); clock dates the frees (HintBuffer.unused_since_ns).
    mem_map=True keeps the per-frame tables in struct pages inside mem itself (its first
    frames, reserved and never free: gphint.guest.memmap), as a guest kernel does."""

    def __init__(self, mem, max_order=MAX_ORDER, batch=BATCH, hinting=True, clock=None, mem_map=False):
        self.mem = mem
        self.npages = mem.npages
        self.max_order = _check_int(max_order, "max_order", 0, MAX_SUPPORTED_ORDER)
        self.hints = HintBuffer(mem, batch, enabled=hinting, clock=clock)
        self.hinting = bool(hinting)
        self._free_lists = [set() for _ in range(self.max_order + 1)]   # first pages per order
        self._list_peak = [0] * (self.max_order + 1)   # largest size since the set was built
        self.mem_map, self.reserved_pages = None, 0
        if mem_map:
            from .memmap import MemMap
            self.mem_map = mm = MemMap(mem)
            self.reserved_pages = mm.reserved
            self._head_order, self._isolated_order = mm.field("order"), mm.field("isolated")
            self._reported, self._allocated = mm.field("reported"), mm.field("allocated")
            self._head_order[:] = self._isolated_order[:] = NOT_FREE
            self._reported[:] = False
            self._allocated[:] = False
            self._allocated[:mm.reserved] = True     # the mem_map's own frames: never free
        else:
            self._head_order = np.full(self.npages, NOT_FREE, dtype=np.int8)   # order of a listed free block
            self._isolated_order = np.full(self.npages, NOT_FREE, dtype=np.int8)
            self._reported = np.zeros(self.npages, dtype=bool)    # meaningful at listed block heads
            self._allocated = np.zeros(self.npages, dtype=bool)
        self._isolated_pages = 0
        self._nfree = 0           # pages on the free lists, kept by _put/_take/_remove
        self._lock = threading.RLock()
        # Hooks called as hook(first_pages, orders) after a free() placed merged blocks on the
        # free lists; page reporting uses it as Linux's page_reporting_notify_free().
        self.on_free = []
        self.stats = {"allocs": 0, "frees": 0, "alloc_pages": 0, "free_pages": 0,
                      "splits": 0, "merges": 0}
        first_free = self.reserved_pages
        for first, order in aligned_blocks(first_free, self.npages - first_free, self.max_order):
            self._put_one(first, order)
        # boot: all frames are free.  One bulk transition, like s390's arch_set_page_states at
        # boot, rather than npages/batch calls that measure nothing the workloads do.
        if self.hinting:
            self.mem.set_state(slice(first_free, None), PageState.UNUSED)

    # --- free-list primitives (caller holds the lock) -------------------------------------
    def _put(self, firsts, order):
        """Place blocks on the order's free list without merging (fresh ones: unreported)."""
        free_list = self._free_lists[order]
        free_list.update(firsts.tolist())
        self._list_peak[order] = max(self._list_peak[order], len(free_list))
        self._head_order[firsts] = order
        self._reported[firsts] = False
        self._nfree += firsts.size << order

    def _put_one(self, first, order):
        self._free_lists[order].add(first)
        self._head_order[first] = order
        self._reported[first] = False
        self._nfree += 1 << order

    def _take(self, order, count):
        """Take up to count blocks off the order's free list; returns their first pages."""
        free_list = self._free_lists[order]
        # iteration order of a set of ints is roughly by address: low blocks are reused first
        # (address-ordered first fit), which also re-allocates a just-freed low page at once
        firsts = list(itertools.islice(free_list, count))
        free_list.difference_update(firsts)
        if len(free_list) < self._list_peak[order] >> 3:
            # a set never shrinks its table, and iteration walks it from the start: rebuild
            self._free_lists[order] = set(free_list)
            self._list_peak[order] = len(free_list)
        arr = np.array(firsts, dtype=np.int64)
        self._head_order[arr] = NOT_FREE
        self._nfree -= arr.size << order
        self._reported[arr] = False     # allocated or split: no longer reported (as in Linux)
        return arr

    def _remove(self, firsts, order):
        self._free_lists[order].difference_update(firsts.tolist())
        self._head_order[firsts] = NOT_FREE
        self._nfree -= firsts.size << order
        self._reported[firsts] = False  # merged into a bigger block: unreported (as in Linux)

    def _insert(self, firsts, order, sorted_unique=False):
        """Free blocks of one order, merging with free buddies up to max_order.

        Order by order: a block merges if its buddy is also being inserted or is a listed free
        block of the same order (isolated blocks are not listed: they never merge).  Returns
        (first_pages, orders) of the blocks that ended on the free lists."""
        cand = firsts if sorted_unique else np.unique(np.asarray(firsts, dtype=np.int64))
        if cand.size == 1:
            return self._insert_one(int(cand[0]), order)
        out_firsts, out_orders = [], []
        k = order
        while cand.size:
            if k == self.max_order:
                merge = np.zeros(cand.size, dtype=bool)
            else:
                bit = 1 << k
                buddy = cand ^ bit
                pos = np.minimum(np.searchsorted(cand, buddy), cand.size - 1)
                in_cand = cand[pos] == buddy
                # a buddy past the end of memory (npages not a multiple of 2^max_order) is never free
                listed = np.zeros(cand.size, dtype=bool)
                inside = buddy < self.npages
                listed[inside] = self._head_order[buddy[inside]] == k
                merge = in_cand | listed
            stay = cand[~merge]
            if stay.size:
                self._put(stay, k)
                out_firsts.append(stay)
                out_orders.append(np.full(stay.size, k, dtype=np.int64))
            if not merge.any():
                break
            self._remove(buddy[listed], k)
            self.stats["merges"] += int(np.count_nonzero(merge))
            # clearing bit k keeps cand sorted and makes the two halves of a pair equal neighbours
            merged = cand[merge] & ~np.int64(bit)
            cand = merged[np.concatenate(([True], merged[1:] != merged[:-1]))]
            k += 1
        if not out_firsts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_firsts), np.concatenate(out_orders)

    def _insert_one(self, first, order):
        """_insert for a single block: the same walk up the orders with Python ints, because
        a dozen numpy calls per order cost ~20x more than the work for one block."""
        head_order, k = self._head_order, order
        while k < self.max_order:
            buddy = first ^ (1 << k)
            if buddy >= self.npages or head_order[buddy] != k:
                break
            self._free_lists[k].discard(buddy)
            head_order[buddy] = NOT_FREE
            self._nfree -= 1 << k
            self._reported[buddy] = False
            self.stats["merges"] += 1
            first &= ~(1 << k)
            k += 1
        self._put_one(first, k)
        return np.array([first], dtype=np.int64), np.array([k], dtype=np.int64)

    def _split_tail(self, first, order, used):
        """A block of `order` at first whose first `used` pages are handed out: put the tail
        back as aligned free blocks (their buddies hold used pages, so none can merge)."""
        tail = aligned_blocks(first + used, (1 << order) - used, order)
        for tail_first, tail_order in tail:
            self._put_one(tail_first, tail_order)
        self.stats["splits"] += len(tail)

    def _hand_out(self, pages):
        """The last step of every allocation: pages become STABLE before the caller sees them."""
        self._allocated[pages] = True
        self.hints.hint(pages, STABLE)
        self.stats["allocs"] += 1
        self.stats["alloc_pages"] += pages.size

    # --- allocation ---------------------------------------------------------------------------
    def alloc(self, npages):
        """Allocate npages order-0 pages; returns their indices (int64, in block order).

        Takes whole free blocks greedily from the smallest order up (each no larger than what
        is still needed) and splits at most one block for the rest.  Raises OutOfMemory (a
        MemoryError) when fewer than npages are free; nothing is allocated then."""
        npages = _check_int(npages, "npages", 0)
        if npages == 0:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            free = self.free_pages
            if npages > free:
                raise OutOfMemory("cannot allocate %d pages: only %d of %d guest pages are free"
                                  % (npages, free, self.npages))
            remaining, chunks = npages, []
            for k in range(self.max_order + 1):
                want = remaining >> k
                if want == 0:
                    break
                firsts = self._take(k, min(want, len(self._free_lists[k])))
                if firsts.size:
                    chunks.append(block_pages(firsts, k))
                    remaining -= firsts.size << k
            if remaining:
                # every listed block is now larger than what is left: split the smallest one
                k = next(j for j in range(self.max_order + 1) if self._free_lists[j])
                first = int(self._take(k, 1)[0])
                chunks.append(np.arange(first, first + remaining, dtype=np.int64))
                self._split_tail(first, k, remaining)
            pages = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            self._hand_out(pages)
            return pages

    def alloc_up_to(self, npages):
        """Allocate min(npages, free_pages) pages in one step (no OutOfMemory): for callers
        that take what there is, like the balloon, without racing a concurrent allocation."""
        npages = _check_int(npages, "npages", 0)
        with self._lock:
            return self.alloc(min(npages, self.free_pages))

    def alloc_block(self, order):
        """Allocate one aligned block of 2^order pages; returns its first page."""
        order = _check_int(order, "order", 0, self.max_order)
        with self._lock:
            k = next((j for j in range(order, self.max_order + 1) if self._free_lists[j]), None)
            if k is None:
                raise OutOfMemory("no free block of order %d or above (%d pages free, largest free "
                                  "order %d)" % (order, self.free_pages, self.largest_free_order()))
            first = int(self._take(k, 1)[0])
            if k > order:
                self._split_tail(first, k, 1 << order)
            self._hand_out(np.arange(first, first + (1 << order), dtype=np.int64))
            return first

    # --- free -----------------------------------------------------------------------------------
    def free(self, pages):
        """Free allocated pages (int array).  A page freed twice or never allocated is a
        ConfigError naming it, and nothing is freed then."""
        arr = np.asarray(pages)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise ConfigError("pages to free must be a 1-D integer array, got dtype %s shape %s"
                              % (arr.dtype, arr.shape))
        arr = arr.astype(np.int64, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.npages:
            raise ConfigError("page %d out of range [0, %d)" % (lo if lo < 0 else hi, self.npages))
        with self._lock:
            uniq = arr if arr.size == 1 else np.unique(arr)
            if uniq.size != arr.size:
                dup = int(uniq[np.flatnonzero(np.bincount(np.searchsorted(uniq, arr)) > 1)[0]])
                raise ConfigError("page %d appears twice in one free()" % dup)
            if not self._allocated[uniq].all():
                not_allocated = np.flatnonzero(~self._allocated[uniq])
                raise ConfigError("page %d is not allocated (double free, or never allocated); "
                                  "%d of the %d pages are not" % (int(uniq[not_allocated[0]]),
                                                                  not_allocated.size, uniq.size))
            self._allocated[uniq] = False
            self.hints.hint(uniq, UNUSED)
            firsts, orders = self._insert(uniq, 0, sorted_unique=True)
            self.stats["frees"] += 1
            self.stats["free_pages"] += uniq.size
        for hook in list(self.on_free):
            hook(firsts, orders)

    def free_block(self, first, order):
        """Free a block allocated by alloc_block(order)."""
        self.free(np.arange(first, first + (1 << _check_int(order, "order", 0, self.max_order)),
                            dtype=np.int64))

    # --- page reporting's isolation --------------------------------------------------------------
    def isolate(self, first, order):
        """Take the free block (first, order) off its free list so it cannot be allocated while
        it is reported.  ConfigError if no such block is listed."""
        first, order = int(first), _check_int(order, "order", 0, self.max_order)
        with self._lock:
            if not (0 <= first < self.npages) or self._head_order[first] != order:
                raise ConfigError("no free block of order %d at page %d" % (order, first))
            self._remove(np.array([first], dtype=np.int64), order)
            self._isolated_order[first] = order
            self._isolated_pages += 1 << order

    def try_isolate(self, first, order):
        """isolate() if (first, order) is still a listed free block; False otherwise.  One
        step under the lock: a reporter that looked at the free lists earlier may race an
        allocation in another thread."""
        with self._lock:
            if not self.is_free_block(first, order):
                return False
            self.isolate(first, order)
            return True

    def putback(self, first, order, reported=True):
        """Return an isolated block to the free lists, merging with free buddies.  It is marked
        reported only if reported=True and it did not merge (a merged block is new to the host)."""
        first, order = int(first), _check_int(order, "order", 0, self.max_order)
        with self._lock:
            if not (0 <= first < self.npages) or self._isolated_order[first] != order:
                raise ConfigError("no isolated block of order %d at page %d" % (order, first))
            self._isolated_order[first] = NOT_FREE
            self._isolated_pages -= 1 << order
            self._insert(np.array([first], dtype=np.int64), order)
            if reported and self._head_order[first] == order:
                self._reported[first] = True

    def is_free_block(self, first, order):
        """Is (first, order) a listed (free, not isolated) block?"""
        return 0 <= first < self.npages and int(self._head_order[first]) == order

    def unreported_blocks(self, order):
        """Sorted first pages of the listed free blocks of order not yet reported."""
        with self._lock:
            firsts = np.fromiter(self._free_lists[order], dtype=np.int64, count=len(self._free_lists[order]))
            firsts.sort()
            return firsts[~self._reported[firsts]]

    # --- views ---------------------------------------------------------------------------------
    def flush_hints(self):
        """Submit pending state transitions (call before anything that reads page states)."""
        self.hints.flush()

    @property
    def free_pages(self):
        """Pages on the free lists (isolated blocks not counted, as Linux's NR_FREE_PAGES)."""
        return self._nfree

    @property
    def isolated_pages(self):
        return self._isolated_pages

    @property
    def allocated_pages(self):
        return self.npages - self.free_pages - self._isolated_pages

    def nr_free(self, order):
        """Number of free blocks listed at order."""
        return len(self._free_lists[order])

    def largest_free_order(self):
        return max((k for k, s in enumerate(self._free_lists) if s), default=-1)

    def free_blocks(self, min_order=0):
        """(n, 2) int64 array of [first_page, order] of the listed free blocks of order >=
        min_order, sorted by first page."""
        min_order = _check_int(min_order, "min_order", 0, self.max_order)
        with self._lock:
            parts = [np.column_stack([np.fromiter(self._free_lists[k], dtype=np.int64, count=len(self._free_lists[k])),
                                      np.full(len(self._free_lists[k]), k, dtype=np.int64)])
                     for k in range(min_order, self.max_order + 1) if self._free_lists[k]]
        if not parts:
            return np.zeros((0, 2), dtype=np.int64)
        blocks = np.concatenate(parts)
        return blocks[np.argsort(blocks[:, 0], kind="stable")]

    def allocated_mask(self):
        """Bool array over all pages: allocated (handed out and not freed)."""
        with self._lock:
            return self._allocated.copy()

    def reported_mask(self):
        """Bool array over all pages: inside a free block marked reported."""
        with self._lock:
            firsts = np.flatnonzero(self._reported & (self._head_order != NOT_FREE))
            mask = np.zeros(self.npages, dtype=bool)
            for k in np.unique(self._head_order[firsts]):
                mask[block_pages(firsts[self._head_order[firsts] == k], int(k))] = True
            return mask

    def __repr__(self):
        return "<BuddyAllocator %d pages, %d free, max_order %d, %r>" % (
            self.npages, self.free_pages, self.max_order, self.hints)
