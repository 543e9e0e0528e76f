"""The guest side of virtio-balloon (drivers/virtio/virtio_balloon.c; Waldspurger, OSDI 2002).

The host asks the guest to inflate its balloon by N pages: the driver allocates them from the
guest's free memory like any kernel user would, and hands their numbers to the host, which
discards them.  Deflating frees pages back to the guest allocator.

Ownership contract (why this is safe without touching page states):
  * a ballooned page is *allocated* in the guest, so it is STABLE in the state table -- the
    allocator made it so before the driver saw it, and nothing in the guest will free,
    reuse or hint it while it is in the balloon;
  * the host owns its content: it discards it raw (`mem.discard_raw`, not the state-aware
    `mem.discard`, which rightly refuses STABLE pages), and the guest never reads or writes a
    ballooned page, so no data is lost;
  * on deflate the page goes back through allocator.free() and becomes UNUSED: its content
    is garbage (zeros) and anyone who allocates it writes before reading, as with any page.
Like Linux's driver, inflate never fails for lack of memory: if free memory is short it
first asks `reclaim(npages_needed) -> npages_freed` (the page cache shrinks itself) and then
takes what it can, returning fewer pages.
"""
import numpy as np

from ..errors import ConfigError
from .allocator import _check_int


class BalloonDriver:
    """BalloonDriver(allocator, reclaim=None): inflate(n) / deflate(n) / size_pages."""

    def __init__(self, allocator, reclaim=None):
        if reclaim is not None and not callable(reclaim):
            raise ConfigError("reclaim must be callable or None, got %r" % (reclaim,))
        self.allocator = allocator
        self.reclaim = reclaim
        self._pages = np.zeros(0, dtype=np.int64)   # in inflation order; deflate takes the newest
        self.stats = {"inflates": 0, "deflates": 0, "inflated_pages": 0, "deflated_pages": 0,
                      "reclaim_calls": 0, "reclaimed_pages": 0, "short_pages": 0}

    @property
    def size_pages(self):
        """Pages currently in the balloon (owned by the host)."""
        return int(self._pages.size)

    @property
    def pages(self):
        """A copy of the ballooned pages, oldest first."""
        return self._pages.copy()

    def inflate(self, npages):
        """Take up to npages from the guest's free memory for the host; returns them (int64).

        Short of free memory, reclaim() is asked for the difference first; then whatever is
        free is taken.  Fewer pages than asked is not an error (the host asks again later)."""
        npages = _check_int(npages, "balloon inflate npages", 0)
        a = self.allocator
        short = npages - a.free_pages
        if short > 0 and self.reclaim is not None:
            self.stats["reclaim_calls"] += 1
            freed = self.reclaim(short)
            self.stats["reclaimed_pages"] += int(freed or 0)
        pages = a.alloc_up_to(npages)
        self._mark(pages, True)
        n = int(pages.size)
        self._pages = np.concatenate([self._pages, pages])
        self.stats["inflates"] += 1
        self.stats["inflated_pages"] += n
        self.stats["short_pages"] += npages - n
        return pages

    def deflate(self, npages):
        """Give up to npages back to the guest (the most recently ballooned first); they are
        freed to the allocator and become UNUSED.  Returns them (int64)."""
        npages = _check_int(npages, "balloon deflate npages", 0)
        n = min(npages, self._pages.size)
        pages = self._pages[self._pages.size - n:].copy()
        self._mark(pages, False)
        self.allocator.free(pages)
        self._pages = self._pages[:self._pages.size - n].copy()
        self.stats["deflates"] += 1
        self.stats["deflated_pages"] += n
        return pages

    def _mark(self, pages, on):
        """The balloon mark in each page's struct page (Linux: __SetPageOffline, and the page
        goes on the balloon's list through page->lru): with a mem_map allocator this writes the
        guest's own memory, so a swapped-out struct page is faulted back first."""
        mem_map = getattr(self.allocator, "mem_map", None)
        if mem_map is not None and len(pages):
            mem_map.field("balloon")[pages] = on

    def __repr__(self):
        return "<BalloonDriver %d pages>" % self.size_pages
