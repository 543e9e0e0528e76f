"""GuestMemory: a guest's "physical memory" -- one real anonymous private mmap region whose pages
carry guest-page-hinting states, plus the state-aware discard path.

Layout of what a GuestMemory owns (all of it plain memory the C fault thread may read):
    frames          (npages, page_size) uint8 view of the region -- the guest's page frames
    states          npages bytes: usage | content | protocol flags (gphint.states)
    backing_store   npages int32: where a discarded page's content lives (0 = nowhere: zeros)
    backing_offset  npages int64: byte offset in that store
The tables are mmap-backed so their addresses never move while a fault thread reads them.
"""
import mmap

import numpy as np

from . import discard as _discard
from ._lifetime import Closeable
from ._mechanism import mech
# re-exported: gphint.memory.ADVICES, .discard_counters
from .discard import ADVICES, SUBMIT_MODES, discard_counters  # noqa: F401
from .errors import ClosedError, ConfigError, StateError
from .states import (CONTENT_MASK, NEXT_TABLE, USAGE_MASK, HostState, PageState, pair_name,
                     parse_state)
from .units import parse_size

PAGE_SIZE = mmap.PAGESIZE
HUGE_PAGE_SIZE = 2 << 20


def _table(nbytes):
    """Page-aligned zeroed table memory that never moves (the fault thread keeps its address)."""
    return mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def expand_runs(runs):
    """(n, 2) array of (first_page, npages) -> flat array of page indices."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if runs.size == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = runs[:, 1]
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(runs[:, 0], lengths) + offsets


class GuestMemory(Closeable):
    """A guest's physical memory: `GuestMemory("64M")`, `GuestMemory(1 << 26, thp=True)`.

    thp=False (default) marks the region MADV_NOHUGEPAGE so that 4 KiB discards free 4 KiB;
    thp=True aligns it to 2 MiB and asks for huge pages (discard whole 2 MiB units to free any).
    """

    def __init__(self, size, *, thp=False, name=None):
        size_bytes = parse_size(size, "guest memory size")
        unit = HUGE_PAGE_SIZE if thp else PAGE_SIZE
        size_bytes = -(-size_bytes // unit) * unit
        self.name = name
        self.thp = bool(thp)
        self.page_size = PAGE_SIZE
        self.size_bytes = size_bytes
        self.npages = size_bytes // PAGE_SIZE
        # THP needs 2 MiB alignment, which mmap() does not promise: over-map and use an aligned slice.
        extra = HUGE_PAGE_SIZE if thp else 0
        try:
            self._map = mmap.mmap(-1, size_bytes + extra, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:
            raise ConfigError("cannot map guest memory of %d bytes: %s" % (size_bytes, e.strerror)) from None
        base = np.frombuffer(self._map, dtype=np.uint8)
        off = (-base.ctypes.data) % HUGE_PAGE_SIZE if thp else 0
        self._offset = off
        self._map.madvise(mmap.MADV_HUGEPAGE if thp else mmap.MADV_NOHUGEPAGE, off, size_bytes)
        self._region = base[off:off + size_bytes]
        del base
        self._frames = self._region.reshape(self.npages, PAGE_SIZE)
        self.address = self._region.ctypes.data
        # STABLE|RESIDENT: until the guest says otherwise every page must be preserved.
        self._state_map = _table(self.npages)
        self._states = np.frombuffer(self._state_map, dtype=np.uint8, count=self.npages)
        self._store_map = _table(4 * self.npages)
        self.backing_store = np.frombuffer(self._store_map, dtype=np.int32, count=self.npages)
        self._offset_map = _table(8 * self.npages)
        self.backing_offset = np.frombuffer(self._offset_map, dtype=np.int64, count=self.npages)
        self._resident_vec = np.zeros(self.npages, dtype=np.uint8)
        # where discards and page-cache reads go: chosen once, at FaultService.register
        self._path = _discard.Unserved(self._region, PAGE_SIZE, self._states)
        self._stats = {"discard_calls": 0, "discard_runs": 0, "discarded_pages": 0,
                       "discarded_resident_pages": 0, "lazy_freed_pages": 0,
                       "vectored_fallbacks": 0, "hint_ops": 0}
        # usage-change calls, counted where they are made: here, and in C by each HintQueue of
        # this memory (gphint.guest.hints), which shares this counter
        self._hint_ops_total = np.zeros(1, dtype=np.uint64)
        # the guest's setters resolve lazily freed pages against these frames (ext/lazyfree.c)
        mech.frames_register(self._states, self._region, PAGE_SIZE)
        self._closed = False

    # --- views -------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise ClosedError("guest memory%s is closed" % (" %r" % self.name if self.name else ""))

    @property
    def closed(self):
        return self._closed

    @property
    def stats(self):
        """Counters (docs/results.md): discard_calls (madvise/process_madvise system calls),
        discard_runs, discarded_pages (pages the kernel was asked to discard),
        discarded_resident_pages (of those, resident just before: mincore), lazy_freed_pages
        (advised with MADV_FREE), lazy_reused_pages (taken back by the guest while still
        present: no refault), lazy_reclaimed_pages (found reclaimed by the kernel, or faulted on
        after it was), vectored_fallbacks, hint_ops (usage changes)."""
        self._stats["hint_ops"] = int(self._hint_ops_total[0])
        if not self._closed:
            reused, reclaimed = mech.lazy_stats(self._states)
            self._stats["lazy_reused_pages"] = int(reused)
            self._stats["lazy_reclaimed_pages"] = int(reclaimed) + int(self._path.lazy_refaults())
        return self._stats

    @property
    def fault_service(self):
        """The FaultService serving this memory, or None."""
        return self._path.service

    def set_discard_path(self, path):
        """FaultService.register / unregister choose where this memory's discards go: `path`
        (the served path: every page through the state protocol), or None (unserved again).
        Chosen once per registration, so no discard asks again which path it takes."""
        self._check_open()
        self._path = _discard.Unserved(self._region, PAGE_SIZE, self._states) if path is None else path

    @property
    def frames(self):
        """(npages, page_size) uint8, writable: the guest's page frames."""
        self._check_open()
        return self._frames

    @property
    def region(self):
        """The whole region as a flat uint8 array."""
        self._check_open()
        return self._region

    @property
    def states(self):
        """Read-only view of the per-page state bytes (use set_state to change them)."""
        self._check_open()
        v = self._states.view()
        v.flags.writeable = False
        return v

    def usage(self, pages=None):
        """Usage states (PageState codes) of pages (default: all) as a uint8 array."""
        s = self.states if pages is None else self._states[self._pages(pages)]
        return s & USAGE_MASK

    def content(self, pages=None):
        """Host content states (HostState codes) of pages (default: all)."""
        s = self.states if pages is None else self._states[self._pages(pages)]
        return s & CONTENT_MASK

    # --- input --------------------------------------------------------------------------
    def _pages(self, pages):
        """Normalise page indices (int, slice, bool mask, int array, or (n,2) runs) -> int64 array."""
        self._check_open()
        if type(pages) is np.ndarray and pages.dtype == np.int64 and pages.ndim == 1:
            # the hot path (the guest hints a few to a few hundred pages per call): the general
            # path below costs ~5 us of numpy dispatch per call, more than the C state change
            n = pages.size
            if n:
                if n <= 64:   # Python's min/max beat two numpy reductions on small arrays
                    as_list = pages.tolist()
                    lo, hi = min(as_list), max(as_list)
                else:
                    lo, hi = int(pages.min()), int(pages.max())
                if lo < 0 or hi >= self.npages:
                    self._out_of_range(pages)
            return pages if pages.flags.c_contiguous else pages.copy()
        if isinstance(pages, slice):
            return np.arange(self.npages, dtype=np.int64)[pages]
        arr = np.asarray(pages)
        if arr.dtype == bool:
            if arr.shape != (self.npages,):
                raise ConfigError("a page mask must have shape (%d,), got %s" % (self.npages, arr.shape))
            return np.flatnonzero(arr).astype(np.int64)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise ConfigError("page indices must be integers, got dtype %s" % arr.dtype)
        if arr.ndim == 2 and arr.shape[1] == 2:
            if (arr[:, 1] < 0).any():
                raise ConfigError("run lengths must be >= 0, got %d" % arr[:, 1].min())
            arr = expand_runs(arr)
        elif arr.ndim > 1:
            raise ConfigError("pages must be a 1-D index array or (n, 2) runs, got shape %s" % (arr.shape,))
        arr = np.ascontiguousarray(arr.reshape(-1), dtype=np.int64)
        if arr.size and not (0 <= int(arr.min()) and int(arr.max()) < self.npages):
            self._out_of_range(arr)
        return arr

    def _out_of_range(self, arr):
        lo, hi = int(arr.min()), int(arr.max())
        raise ConfigError("page index %d out of range [0, %d)" % (lo if lo < 0 else hi, self.npages))

    # --- guest side -----------------------------------------------------------------------
    def set_state(self, pages, state):
        """Move pages to a guest usage state, atomically per page; refuses forbidden transitions
        (StateError naming the page and both states) before changing anything."""
        usage = parse_state(state)
        idx = self._pages(pages)
        # waits out pages the host or the fault thread holds (the state protocol, ext/protocol.c)
        rc, bad, old = mech.set_usage(self._states, idx, int(usage), NEXT_TABLE)
        if rc < 0:
            page = int(idx[bad])
            raise StateError("page %d: %s -> %s is forbidden (state %s)"
                             % (page, pair_name(old), usage.name, pair_name(old)),
                             page=page, old=pair_name(old), new=usage.name)
        self._hint_ops_total[0] += 1
        return rc

    # --- host side --------------------------------------------------------------------------
    def discard(self, pages, advice="dontneed", submit="vectored", *, skip_stable=False):
        """The state-aware discard: give the host these pages' memory back.

        Refuses (StateError) any STABLE page -- or, skip_stable=True (the host protocol's own
        rule: FaultService.discard), leaves them alone.  VOLATILE and POT_VOLATILE pages need a
        discard-fault service to come back (Unsupported otherwise).  With a service, every page
        goes through its state protocol: pages that changed meanwhile are skipped, and a
        POT_VOLATILE page the host finds written is preserved in the service's swap instead (or
        left alone without one).  Content states become ZERO only after the discard succeeded
        -- or LAZY (lazily freed) with advice="free": MADV_FREE leaves the page mapped until the
        kernel reclaims it, and the guest's next transition of the page asks the kernel which
        happened (ext/lazyfree.c).  Returns pages discarded.
        """
        idx = self._pages(pages)
        advice_code = _discard.advice_code(advice)
        mode, pidfd, fell_back = _discard.submission(submit)
        if idx.size == 0:
            return 0
        stable = (self._states[idx] & USAGE_MASK) == PageState.STABLE
        if skip_stable:
            idx = idx[~stable]
        elif stable.any():
            first = np.flatnonzero(stable)
            p = int(idx[first[0]])
            raise StateError("page %d is STABLE (%s): discarding it would lose data; %d of %d pages "
                             "in this request are stable" % (p, pair_name(self._states[p]), first.size, idx.size),
                             page=p, old=pair_name(self._states[p]), new="discarded")
        # with a service every discard goes through the state protocol (pick, discard, finish),
        # UNUSED included: a concurrent allocation must never see its page vanish
        if idx.size == 0:
            return 0
        self._stats["vectored_fallbacks"] += fell_back
        got = self._path.discard(idx, advice_code, mode, pidfd)
        self.count_discard(*got)
        return got.pages

    def discard_raw(self, pages, advice="dontneed", submit="vectored"):
        """The raw mechanism: discard whatever pages are named, whatever their state.
        No state is read or written.  pages: indices, or an (n, 2) array of runs."""
        self._check_open()
        advice_code = _discard.advice_code(advice)
        mode, pidfd, fell_back = _discard.submission(submit)
        self._stats["vectored_fallbacks"] += fell_back
        arr = np.asarray(pages)
        if arr.ndim == 2 and arr.shape[1:] == (2,) and arr.dtype.kind in "iu":
            got = mech.discard_runs(self._region, PAGE_SIZE, np.ascontiguousarray(arr, dtype=np.int64),
                                    advice_code, mode, pidfd)
        else:
            got = mech.discard_pages(self._region, PAGE_SIZE, self._pages(arr), advice_code, mode, pidfd)
        self.count_discard(*got)
        return got[0]

    def count_discard(self, npages, calls, runs, resident, lazy):
        """Account one discard: pages discarded, system calls made, runs advised, pages resident
        just before, pages left lazily freed."""
        self._stats["discard_calls"] += int(calls)
        self._stats["discard_runs"] += int(runs)
        self._stats["discarded_pages"] += int(npages)
        self._stats["discarded_resident_pages"] += int(resident)
        self._stats["lazy_freed_pages"] += int(lazy)

    # --- backing records, the guest side of the protocol, page-cache I/O ----------------------
    def set_backing(self, pages, store, offsets):
        """Record where pages' content lives: store (a FileStore or its id), byte offsets (one per
        page, or one start offset for consecutive pages).  Record BEFORE the pages are discarded."""
        idx = self._pages(pages)
        store_id = getattr(store, "id", store)
        if isinstance(store_id, bool) or not isinstance(store_id, (int, np.integer)) or store_id <= 0:
            raise ConfigError("backing store must be a FileStore or a store id > 0, got %r" % (store,))
        if getattr(store, "closed", False):
            raise ConfigError("backing store %r is closed" % (store,))
        offs = self._offsets(idx, offsets)
        # offset first, then the store id the fault thread keys on (x86 keeps store order)
        self.backing_offset[idx] = offs
        self.backing_store[idx] = int(store_id)
        return idx.size

    def clear_backing(self, pages):
        """Forget pages' backing records: a later discard fault serves zeros."""
        idx = self._pages(pages)
        self.backing_store[idx] = 0
        self.backing_offset[idx] = 0

    def _offsets(self, idx, offsets):
        offs = np.asarray(offsets, dtype=np.int64) if not np.isscalar(offsets) else None
        if offs is None:
            offs = int(offsets) + np.arange(idx.size, dtype=np.int64) * PAGE_SIZE
        offs = offs.reshape(-1)
        if offs.size != idx.size:
            raise ConfigError("%d offsets for %d pages" % (offs.size, idx.size))
        if offs.size and offs.min() < 0:
            raise ConfigError("file offset %d is negative" % int(offs.min()))
        return offs

    def make_stable(self, pages):
        """Guest side of the state protocol: make pages STABLE, waiting out any in-flight host
        discard.  Returns the pages found already discarded (Vz): they were NOT made stable --
        the guest must reload (fill_from_file) or drop them."""
        idx = self._pages(pages)
        out = np.empty(idx.size, dtype=np.int64)
        n = mech.make_stable(self._states, idx, out)
        self._hint_ops_total[0] += 1
        return out[:n].copy()

    def fill_from_file(self, pages, fd, offsets):
        """Read page-sized blocks of fd at byte offsets into frames pages (the guest's page-cache
        read miss).  C, GIL released; under UFFD_USER_MODE_ONLY it bounces through user space."""
        return self._page_io(False, pages, fd, offsets)

    def write_to_file(self, pages, fd, offsets):
        """Write frames pages to fd at byte offsets (the guest's writeback)."""
        return self._page_io(True, pages, fd, offsets)

    def _page_io(self, to_file, pages, fd, offsets):
        idx = self._pages(pages)
        offs = self._offsets(idx, offsets)
        if idx.size == 0:
            return 0
        if not to_file:   # served: missing frames are installed without a fault (gphint.faults)
            return self._path.fill(idx, int(fd), offs)
        n, _ = mech.write_to_file(self._region, PAGE_SIZE, idx, int(fd), offs, self._path.bounce)
        return n

    def resolve_lazy(self, pages=None, keep_present=False):
        """Ask the kernel what became of lazily freed (MADV_FREE'd: Uf/Vf) pages (default: all).
        Reclaimed ones become discarded (Xz).  Present ones stay lazily freed unless keep_present,
        which takes them back (written, so the kernel keeps them: Xr) -- what the guest's own
        transitions do (ext/lazyfree.c).  Returns pages resolved."""
        idx = np.flatnonzero((self.states & CONTENT_MASK) == int(HostState.LAZY)) if pages is None \
            else self._pages(pages)
        return int(mech.resolve_lazy(self._states, idx.astype(np.int64), bool(keep_present)))

    # --- measurement --------------------------------------------------------------------------
    def residency(self):
        """Boolean array: which pages the kernel says are resident (mincore)."""
        self._check_open()
        mech.residency(self._region, PAGE_SIZE, self._resident_vec)
        return self._resident_vec.astype(bool)

    def resident_pages(self):
        """How many of this guest's pages are resident (mincore)."""
        self._check_open()
        return int(mech.residency(self._region, PAGE_SIZE, self._resident_vec))

    def resident_bytes(self):
        return self.resident_pages() * PAGE_SIZE

    def census(self):
        """{(usage letter + content letter): page count}, e.g. {'Sr': 10, 'Uz': 6}."""
        codes, counts = np.unique(self.states & 0x0F, return_counts=True)
        return {pair_name(c): int(n) for c, n in zip(codes, counts)}

    # --- lifetime -------------------------------------------------------------------------------
    def close(self):
        """Unmap the region.  Idempotent.  If the caller still holds numpy views of the frames,
        the memory is discarded now and unmapped when the last view goes away (no dangling view)."""
        if self._closed:
            return
        if self.fault_service is not None:
            self.fault_service.unregister(self, materialize=False)   # closing: nothing to keep
        self.stats   # the lazy counters live with the registration: read them one last time
        mech.frames_unregister(self._states)
        self._closed = True
        self._path = _discard.CLOSED   # drops its views of the region: the unmap below can happen
        region_map = self._map
        for attr in ("_frames", "_region", "_states", "backing_store", "backing_offset"):
            setattr(self, attr, None)
        for m in (self._state_map, self._store_map, self._offset_map, region_map):
            try:
                m.close()
            except BufferError:
                # someone still holds a view: free the memory now, unmap when it is dropped
                m.madvise(mmap.MADV_DONTNEED)

    def __repr__(self):
        if self._closed:
            return "<GuestMemory %s closed>" % (self.name or "")
        return "<GuestMemory %s%d pages%s>" % (self.name + " " if self.name else "", self.npages,
                                               " thp" if self.thp else "")
