"""Guest: a guest OS memory manager that hints, on its own GuestMemory.

It ties together the buddy allocator (frames; free -> UNUSED, alloc -> STABLE, batched), the
page cache over real files (clean pages VOLATILE), anonymous memory with a swap file and a
VOLATILE swap cache, and a workload that drives them.  When free frames run low the guest
reclaims like Linux's kswapd would: clean cache pages first (LRU), then writeback, then swap.

Two ways to take a discard fault (per guest):
  transparent    the fault service reloads a discarded page from its backing file; the guest
                 never notices (like cleancache)
  guest          the original design: the guest drains the discarded-page list and drops
                 those pages from its cache, and a cached page it finds discarded is dropped
                 and read again -- an ordinary cache miss
Both keep the discarded page list (guest_reclaim.py): every free retires its frames from it, so
no drain acts on a frame that was freed and reused after its discard fault.

Beside it: the backing stores its discard faults reload from, within the process's fd budget
(guest_stores.py), and its frame supply and reclaim (guest_reclaim.py).
"""

import numpy as np

from ..batching import BATCH
from ..errors import ConfigError
from ..memory import GuestMemory
from ..units import parse_size
from .allocator import BuddyAllocator
from .anon import AnonMemory, SwapFile
from .files import FileSet
from .frames import (DIRTY, FILE, KIND_NAMES, LOCKED, MAPPED_WRITABLE, MLOCKED, PRIVATE, SWAPCACHE,
                     WRITEBACK, FrameTable)
from .guest_reclaim import DISCARD_LIST_BATCH, RECLAIM_CLUSTER, Reclaim
from .guest_stores import StoreBudget, _live_guests, _release_store, _sweep_epoch
from .hinter import Hinter
from .mappings import ProcessMappings
from .pagecache import PageCache
from .thp import ThpAllocator, ThpHeap

DISCARD_MODES = {"transparent": "transparent", "guest": "guest", "guest-visible": "guest",
                 "guest_visible": "guest"}


class Guest(StoreBudget, Reclaim):
    """Guest("128M", files=None, seed=1, batch=BATCH, hinting=True, discard_mode="transparent",
    fault_service=None, workload="mixed").

    files: None generates a deterministic file set (file_bytes, default twice the memory) in
    a temporary directory; a directory path uses that real tree, which is never modified.
    minor_fault: "lazy" (patch 7: no state change on minor faults and munmap) or "eager"
    (gphint.guest.mappings).  thp=True: a guest with transparent huge pages on 2 MiB-aligned
    host memory that asks for huge pages (gphint.guest.thp).  discard_list_batch: step() drops
    the discarded page list once it holds this many pages (DISCARD_LIST_BATCH; 1: every step).
    """

    def __init__(self, size="128M", files=None, seed=1, batch=BATCH, hinting=True,
                 discard_mode="transparent", fault_service=None, workload="mixed", *,
                 name=None, max_order=10, file_bytes=None, swap_bytes=None, minor_fault="lazy",
                 thp=False, mem_map=False, discard_list_batch=DISCARD_LIST_BATCH):
        if discard_mode not in DISCARD_MODES:
            raise ConfigError("unknown discard_mode %r (expected one of: transparent, guest)"
                              % (discard_mode,))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError("seed must be an integer >= 0, got %r" % (seed,))
        self.seed = int(seed)
        if (isinstance(discard_list_batch, bool) or not isinstance(discard_list_batch, (int, np.integer))
                or discard_list_batch < 1):
            raise ConfigError("discard_list_batch must be an integer >= 1, got %r" % (discard_list_batch,))
        self.discard_list_batch = int(discard_list_batch)
        self.discard_mode = DISCARD_MODES[discard_mode]
        self.name = name
        self._closed = True
        self.thp = bool(thp)
        self.mem = GuestMemory(size, name=name, thp=self.thp)
        self._listed, self._nlisted = np.zeros(self.mem.npages, dtype=bool), 0   # the discarded page list
        self.fault_service = fault_service
        self._stores = {}
        self._swept_epoch = _sweep_epoch[0]
        _live_guests[0] += 1
        self._counted = True
        try:
            if fault_service is not None:
                fault_service.register(self.mem)
            # mem_map=True: the allocator's struct pages live in this guest's own frames
            allocator = ThpAllocator if self.thp else BuddyAllocator
            self.allocator = allocator(self.mem, max_order=max_order, batch=batch,
                                       hinting=hinting, mem_map=mem_map)
            self.hinting = bool(hinting)
            self.table = FrameTable(self.mem.npages)
            self.hinter = Hinter(self.mem, self.table, self.allocator.hints)
            size_bytes = self.mem.size_bytes
            self.files = FileSet(files, seed=self.seed,
                                 total_bytes=parse_size(file_bytes, "file_bytes") if file_bytes
                                 else 2 * size_bytes)
            nslots = (parse_size(swap_bytes, "swap_bytes") if swap_bytes else size_bytes) // self.mem.page_size
            self.swap = SwapFile(nslots)
            self.cache = PageCache(self.mem, self.table, self.files, self.hinter, self._alloc_frames,
                                   self._free_frames, seed=self.seed, discard_mode=self.discard_mode,
                                   store_for=self._store_for)
            self.mappings = self.cache.mappings = ProcessMappings(self.cache, minor_fault)
            # a THP guest's anonymous memory comes in 2 MiB huge pages where it can
            heap = ThpHeap(self.allocator, self.mem, self._alloc_frames,
                           self._alloc_huge_page) if self.thp else None
            self.anon = AnonMemory(self.mem, self.table, self.hinter, self._alloc_frames,
                                   self._free_frames, seed=self.seed, swap=self.swap, heap=heap,
                                   discard_mode=self.discard_mode, store_for=self._store_for)
            # keep a little free memory so that one operation never has to reclaim mid-way
            self.low_watermark = max(RECLAIM_CLUSTER, self.mem.npages // 128)
            self.high_watermark = 3 * self.low_watermark
            self.stats = {"reclaim_calls": 0, "reclaimed": 0, "evicted": 0, "swapped_out": 0,
                          "drained_discarded": 0, "dropped_drained": 0, "dlist_drains": 0,
                          "dlist_high_water": 0, "dlist_retired_by_free": 0, "ops": 0,
                          "stores_refused": 0, "stores_opened": 0, "stores_closed": 0}
            self._closed = False
            self.workload = None
            if workload is not None:
                from .workloads import make_workload
                self.workload = make_workload(workload, self, seed=self.seed)
        except BaseException:
            self._teardown()
            raise

    # --- the researcher's API ----------------------------------------------------------------------
    def read(self, path, offset, length):
        """Read through the guest page cache: bytes."""
        self._check_open()
        return self.cache.read(path, offset, length)

    def write(self, path, offset, data=None, length=None):
        """Write bytes (or, data=None, the next generated version of length bytes' pages)."""
        self._check_open()
        return self.cache.write(path, offset, data, length)

    def writeback(self, path=None):
        """Write dirty file pages back (all, or one file's); returns pages written."""
        self._check_open()
        fid = None if path is None else self.files.lookup(path)
        return self.cache.writeback(fid=fid)

    def sync(self):
        """Writeback everything and submit pending hints."""
        n = self.writeback()
        self.allocator.flush_hints()
        return n

    def alloc(self, npages, pid=0):
        """Anonymous memory of guest process pid: returns its new virtual page numbers."""
        self._check_open()
        return self.anon.alloc(npages, pid)

    def free(self, pages, pid=0):
        self._check_open()
        return self.anon.free(pages, pid)

    def touch(self, pages, pid=0):
        """The process writes its pages (new content version); swapped pages come back first."""
        self._check_open()
        return self.anon.write(pages, pid)

    def frames_of(self, pages, pid=0):
        """Guest frames holding a process's pages (-1: swapped out)."""
        pr, v = self.anon._vpages(pid, pages)
        return pr["frame"][v].copy()

    def mlock(self, pages, pid=0):
        self._check_open()
        return self.anon.mlock(pages, pid, on=True)

    def munlock(self, pages, pid=0):
        self._check_open()
        return self.anon.mlock(pages, pid, on=False)

    def mlock_file(self, path, offset, length, on=True):
        """mlock a file range: its pages are cached and stay STABLE (patch 5)."""
        self._check_open()
        return self.cache.set_flag(path, offset, length, MLOCKED, on)

    def lock(self, path, offset, length, on=True):
        """lock_page on a file range (stays STABLE while locked)."""
        self._check_open()
        return self.cache.set_flag(path, offset, length, LOCKED, on)

    def set_private(self, path, offset, length, on=True):
        """Private data attached (buffer heads, journal): the pages stay STABLE."""
        self._check_open()
        return self.cache.set_flag(path, offset, length, PRIVATE, on)

    def pin(self, path, offset, length):
        """Take an extra reference (get_user_pages): the pages stay STABLE until unpin."""
        self._check_open()
        return self.cache.pin(path, offset, length, +1)

    def unpin(self, path, offset, length):
        self._check_open()
        return self.cache.pin(path, offset, length, -1)

    # --- writable mappings (patch 6) ---------------------------------------------------------------
    def map_writable(self, path, offset, length):
        """mmap(PROT_WRITE, MAP_SHARED) of a file range: the pages become POT_VOLATILE (STABLE
        where the host cannot track dirty bits).  Returns their frames."""
        self._check_open()
        return self.cache.set_flag(path, offset, length, MAPPED_WRITABLE, True)

    def store_mapped(self, path, offset, length):
        """A process stores through its writable mapping: the next version of the pages is
        written straight into the frames, with no guest state change (the host's dirty bit
        records it; msync collects it)."""
        self._check_open()
        return self.cache.store_mapped(path, offset, length)

    def msync(self, path=None):
        """Collect host dirty bits of mapped pages (all, or one file's) and write them back."""
        self._check_open()
        mapped = (self.table.kind == FILE) & ((self.table.flags & MAPPED_WRITABLE) != 0)
        if path is not None:
            mapped &= self.table.owner == self.files.lookup(path)
        return self.cache.msync(np.flatnonzero(mapped))

    def unmap(self, path, offset, length):
        """munmap: msync, then the pages are plain cache pages again (VOLATILE)."""
        self._check_open()
        fid, pages = self.cache._pages_of(path, offset, length)
        self.cache.msync(self.cache._cached(fid, pages))
        return self.cache.set_flag(path, offset, length, MAPPED_WRITABLE, on=False)

    # --- processes' mappings and their faults (patch 7; gphint.guest.mappings) ----------------------
    def mmap(self, path, offset, length, writable=False, pid=0):
        """A guest process maps a file range (read-only, or writable and shared): a Mapping."""
        self._check_open()
        return self.mappings.mmap(path, offset, length, writable, pid)

    def mapped_read(self, mapping, offset, length):
        """The process reads through its mapping (offset inside it); missing entries fault."""
        self._check_open()
        return self.mappings.load(mapping, offset, length)

    def mapped_write(self, mapping, offset, length):
        """The process stores the next version of the pages through its writable mapping."""
        self._check_open()
        return self.mappings.store(mapping, offset, length)

    def munmap(self, mapping):
        self._check_open()
        return self.mappings.munmap(mapping)

    HINT_LEVELS = ("all", "unused", "off")

    def set_hint_level(self, level):
        """'all' (UNUSED, VOLATILE, POT_VOLATILE: full CMMA), 'unused' (free pages only, as s390
        mainline) or 'off' only at construction (hinting=False)."""
        if level not in self.HINT_LEVELS:
            raise ConfigError("unknown hint level %r (expected one of %s)" % (level, ", ".join(self.HINT_LEVELS)))
        if level == "off":
            if self.hinting:
                raise ConfigError("hint level 'off' is chosen at construction: Guest(..., hinting=False)")
            return
        self.hinter.volatile_ok = level == "all"
        cached = np.flatnonzero((self.table.kind == FILE) | (self.table.kind == SWAPCACHE))
        self.cache._settle_cached(cached)

    # --- workloads ----------------------------------------------------------------------------------
    def step(self, nops):
        """Advance this guest's workload by nops operations (deterministic); returns ops done."""
        self._check_open()
        if isinstance(nops, bool) or not isinstance(nops, (int, np.integer)) or nops < 0:
            raise ConfigError("nops must be an integer >= 0, got %r" % (nops,))
        if self.workload is None:
            raise ConfigError("this guest has no workload (Guest(..., workload=NAME))")
        # transparent mode drains too (and only empties the list): the ring must not overflow
        self.drain_discarded(min_batch=self.discard_list_batch)
        done = self.workload.step(int(nops))
        self.stats["ops"] += done
        return done

    # --- views ----------------------------------------------------------------------------------------
    def census(self):
        """{'Sr': n, 'Vr': m, ...}: usage+content pairs of every frame, after pending hints
        were submitted."""
        self._check_open()
        self.allocator.flush_hints()
        return self.mem.census()

    def cache_census(self):
        """Frames by guest use: {'free', 'file', 'anon', 'swapcache', 'dirty', 'mapped', ...}."""
        self._check_open()
        kinds = np.bincount(self.table.kind, minlength=4)
        out = {KIND_NAMES[k]: int(kinds[k]) for k in KIND_NAMES}
        flags = self.table.flags
        for name, bit in (("dirty", DIRTY), ("writeback", WRITEBACK), ("locked", LOCKED),
                          ("mlocked", MLOCKED), ("mapped", MAPPED_WRITABLE), ("private", PRIVATE)):
            out[name] = int(np.count_nonzero(flags & bit))
        out["pinned"] = int(np.count_nonzero(self.table.refs))
        out["allocator_free"] = int(self.allocator.free_pages)
        return out

    def volatile_share(self):
        """Fraction of in-use (not UNUSED) pages that the guest marked VOLATILE/POT_VOLATILE."""
        c = self.census()
        in_use = sum(n for k, n in c.items() if k[0] != "U")
        vol = sum(n for k, n in c.items() if k[0] in "VP")
        return vol / in_use if in_use else 0.0

    def verify(self):
        """Pages whose content differs from what the guest wrote: every cached file page and
        every anonymous page (resident ones read through the real fault path, swapped ones from
        the swap file), and every written file's clean pages on disk.  Must be 0."""
        self._check_open()
        self.allocator.flush_hints()
        if self.discard_mode == "guest":
            self.drain_discarded()
        return self.cache.verify() + self.anon.verify()

    def all_stats(self):
        """Every counter of the guest's parts, flat."""
        out = dict(self.stats)
        for prefix, d in (("cache", self.cache.stats), ("anon", self.anon.stats),
                          ("hint", self.hinter.stats), ("alloc", self.allocator.stats),
                          ("buffer", self.allocator.hints.stats), ("files", self.files.stats),
                          ("swap", self.swap.stats), ("map", self.mappings.stats)):
            out.update({"%s_%s" % (prefix, k): v for k, v in d.items()})
        return out

    # --- lifetime -------------------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            from ..errors import ClosedError
            raise ClosedError("guest%s is closed" % (" %r" % self.name if self.name else ""))

    @property
    def closed(self):
        return self._closed

    def _teardown(self):
        if getattr(self, "_counted", False):
            self._counted = False
            _live_guests[0] -= 1
        if self.fault_service is not None and getattr(self.mem, "fault_service", None) is not None:
            self.fault_service.unregister(self.mem, materialize=False)
        for path in self._stores:
            _release_store(path)
        self._stores.clear()
        for attr in ("swap", "files"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
        self.mem.close()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Guest %s%d pages, %d files, %s%s>" % (
            self.name + " " if self.name else "", self.mem.npages if not self._closed else 0,
            len(self.files) if not self._closed else 0, self.discard_mode,
            "" if self.hinting else ", hinting off")


__all__ = ["Guest", "DISCARD_MODES"]
