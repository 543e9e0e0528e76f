"""The guest's page cache over real files (Schwidefsky's guest page hinting patch series, 2006).

A page read from a file is clean and up to date, so VOLATILE: the host may discard it, and the
access that finds it discarded is a discard fault -- served from the backing file by the fault
service (transparent mode), or, guest-visible, the page is dropped and read again.

This module is the cache itself (per-file tables, look-up and fill, read, write); its other
jobs live beside it: the descriptors and the volatile rule (frames.py), the hinter (hinter.py),
what the cache shares with anonymous memory (guestpart.py), writeback (pagecache_writeback.py),
the conditions that keep pages STABLE (pagecache_pins.py), writable mappings
(pagecache_mapped.py) and the expected-content check (pagecache_verify.py).  The names they
define are importable from here, as before the split.
"""
import numpy as np

from ..errors import ConfigError, GphintError
from .content import PAGE_SIZE, generate, page_digest
from .frames import (ANON, DIRTY, FILE, FLAG_DTYPE, FREE, HELD, KIND_NAMES, LOCKED,
                     MAPPED_WRITABLE, MLOCKED, NO_BACKING, PRIVATE, SWAPCACHE, UPTODATE,
                     WRITEBACK, FrameTable, P, S, V)
from .guestpart import GuestPart, mark_touched, set_backing, touch_frames
from .hinter import MAX_RELOAD_TRIES, Hinter
from .pagecache_mapped import WritableMappings
from .pagecache_pins import StableConditions
from .pagecache_verify import ExpectedContent
from .pagecache_writeback import Writeback

# the names importable from gphint.guest.pagecache before the split, kept
__all__ = ["PageCache", "FrameTable", "Hinter", "GuestPart", "set_backing", "mark_touched",
           "touch_frames", "MAX_RELOAD_TRIES", "S", "P", "V", "FREE", "FILE", "ANON", "SWAPCACHE",
           "KIND_NAMES", "UPTODATE", "DIRTY", "WRITEBACK", "LOCKED", "PRIVATE", "MLOCKED",
           "MAPPED_WRITABLE", "HELD", "NO_BACKING", "FLAG_DTYPE"]


class PageCache(Writeback, StableConditions, WritableMappings, ExpectedContent, GuestPart):
    """Files' pages cached in guest frames: per-file tables, look-up and fill, guest-visible
    discard faults, read and write.  Writeback, the conditions that keep pages STABLE, writable
    mappings and the expected-content check are the mixins' jobs (pagecache_*.py)."""

    def __init__(self, mem, table, files, hinter, alloc_frames, free_frames, **kw):
        super().__init__(mem, table, hinter, alloc_frames, free_frames, **kw)
        self.files = files
        n = len(files)
        self.page_frame = [None] * n          # per file: int64 frame per page, -1 = not cached
        self.version = [None] * n             # per file: int64 version per page (0 = original)
        # per file: uint64 digest per page of what the guest last read from the file there (0 =
        # never read): the reference of a version-0 page, independent of today's file
        self.digest = [None] * n
        self.shadow = {}                      # (fid, page) -> digest of a user write's page
        self.stats = {"reads": 0, "writes": 0, "hits": 0, "misses": 0, "fills": 0,
                      "writeback_pages": 0, "dropped_discarded": 0,
                      "reloaded": 0, "mapped_dirty": 0}

    # --- per-file tables ------------------------------------------------------------------
    def _tables(self, fid, npages):
        """The file's page->frame and version arrays, grown to at least npages."""
        pf = self.page_frame[fid]
        if pf is None or pf.size < npages:
            size = max(npages, self.files.npages(fid), 1)
            new_pf = np.full(size, -1, dtype=np.int64)
            new_v = np.zeros(size, dtype=np.int64)
            new_d = np.zeros(size, dtype=np.uint64)
            if pf is not None:
                new_pf[:pf.size] = pf
                new_v[:pf.size] = self.version[fid]
                new_d[:pf.size] = self.digest[fid]
            self.page_frame[fid], self.version[fid], self.digest[fid] = new_pf, new_v, new_d
        return self.page_frame[fid], self.version[fid]

    def _range(self, path, offset, length):
        fid = self.files.lookup(path)
        for name, v in (("offset", offset), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError("%s must be an integer >= 0, got %r (file %r)" % (name, v, path))
        return fid, int(offset), int(length)

    def cached_frames(self):
        return np.flatnonzero(self.table.kind == FILE)

    # --- lookup and fill ------------------------------------------------------------------
    def _get(self, fid, pages):
        """(frames holding these pages of fid, the frames just filled): misses are filled with
        real reads."""
        pf, _ = self._tables(fid, int(pages[-1]) + 1 if pages.size else 0)
        frames = pf[pages]
        if self.discard_mode == "guest" and frames.size:
            self._drop_discarded(frames[frames >= 0])
            frames = pf[pages]
        miss = frames < 0
        nmiss = int(np.count_nonzero(miss))
        self.stats["hits"] += int(frames.size) - nmiss
        self.stats["misses"] += nmiss
        new = frames[:0]
        if nmiss:
            mpages = pages[miss]
            held = frames[~miss]
            self.table.refs[held] += 1        # the reclaim an allocation may run must not take them
            try:
                new = self.alloc_frames(nmiss)
            finally:
                self.table.refs[held] -= 1
            pf, _ = self._tables(fid, int(pages[-1]) + 1)   # reclaim may not shrink it; re-read
            self.table.claim(new, FILE, fid, mpages, 0)
            pf[mpages] = new
            store = self.store_for(self.files.path(fid))
            with self.files.open_read(fid) as fd:
                self.mem.fill_from_file(new, fd, mpages * PAGE_SIZE)
            mark_touched(self.mem, new)
            self.table.flags[new] |= UPTODATE
            # what the guest read is its truth from now on, whatever the file says later
            read = page_digest(self.mem.frames, new)
            self.digest[fid][mpages] = read
            # record before hinting: the host may discard it the moment it is volatile
            set_backing(self.mem, new, store, mpages * PAGE_SIZE, self.table, read)
            self.stats["fills"] += nmiss
            frames = pf[pages]
        self.table.touch(frames)
        return frames, new

    def _drop_discarded(self, frames):
        """Guest-visible discard faults: cached pages the host discarded are dropped from the
        cache and their frames freed, so the access below is an ordinary miss."""
        if frames.size == 0:
            return
        st = self.mem.states[frames]
        gone = frames[((st & 0x0C) >= P) & ((st & 0x03) == 0x03)]
        gone = self._keep_mapped(gone, hold=True)
        if gone.size:
            self.drop(gone)
            self.stats["dropped_discarded"] += int(gone.size)

    def _keep_mapped(self, lost, hold=False):
        """Guest-visible discard faults on pages a writable mapping holds: the mapping keeps
        them in the cache (dropping one would unmap it under the process that mapped it), so
        the guest re-reads each into its frame, as a real guest re-reads a page into the
        mapping that holds it (the fault service serves the access from the backing file: the
        page was clean, so the file holds its bytes), and settles it back to POT_VOLATILE.
        hold=True: the frames' descriptors do not ask for STABLE already, so they are held
        stable (HELD) across the reload.  Returns the frames that are not mapped: the caller
        drops them."""
        mapped = (self.table.flags[lost] & MAPPED_WRITABLE) != 0
        if not mapped.any():
            return lost
        keep = lost[mapped]
        if hold:
            self.table.flags[keep] |= HELD
        try:
            self.hinter.stabilise(keep, self._reload)
        finally:
            if hold:
                self.table.flags[keep] &= ~FLAG_DTYPE(HELD)
        if hold:
            self.hinter.settle(keep)      # -> POT_VOLATILE: a deferred hint, nothing found lost
        return lost[~mapped]

    def drop(self, frames):
        """Remove clean cached frames from the cache and free them."""
        return self._release(frames, FILE, self.page_frame.__getitem__)

    def _stable_frames(self, fid, pages, mark):
        """Frames for pages of fid, made STABLE with the descriptor flags `mark` set first
        (DIRTY for a write, HELD while a descriptor changes): set before settling, so the
        page cannot go back to volatile.  A page found discarded is reloaded (transparent) or,
        guest-visible, dropped and read again -- the original design's discard fault."""
        for _ in range(8):
            frames, _ = self._get(fid, pages)
            self.table.flags[frames] |= mark
            if self.discard_mode == "guest":
                # `mark` asks for STABLE: a mapped page found discarded is reloaded in place
                lost = self._keep_mapped(self.hinter.settle(frames))
                if lost.size == 0:
                    return frames
                self.drop(lost)
                self.stats["dropped_discarded"] += int(lost.size)
                continue
            self.hinter.stabilise(frames, self._reload)
            return frames
        raise GphintError("file %d: pages kept being discarded while being made stable" % fid)

    # --- the file API ---------------------------------------------------------------------
    def read(self, path, offset, length):
        fid, offset, length = self._range(path, offset, length)
        size = int(self.files.size_bytes[fid])
        end = min(offset + length, size)
        self.stats["reads"] += 1
        if end <= offset:
            return b""
        pages = np.arange(offset // PAGE_SIZE, -(-end // PAGE_SIZE), dtype=np.int64)
        frames, new = self._get(fid, pages)
        # a new page becomes VOLATILE once clean and up to date.  A hit needs no state work at
        # all (the minor-fault optimisation, patch 7): every descriptor change settles its page
        # at once, so a cached page is always in the state its descriptor allows -- counted.
        self.hinter.stats["unchanged"] += int(frames.size - new.size)
        self.hinter.fresh_clean(new)
        # copying out of a volatile frame needs no state change: if the host discards it
        # meanwhile, the access is a discard fault the service serves from the backing file
        data = self.mem.frames[frames].reshape(-1)
        start = offset - int(pages[0]) * PAGE_SIZE
        return data[start:start + end - offset].tobytes()

    def write(self, path, offset, data=None, length=None):
        """Write data (bytes-like) at offset; data=None writes the next version of every page
        the range touches (whole pages, deterministic content).  The pages become dirty and
        STABLE before a byte changes."""
        if data is None:
            if length is None:
                raise ConfigError("write of generated content needs a length (file %r)" % (path,))
            fid, offset, length = self._range(path, offset, length)
        else:
            try:
                buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
            except TypeError:
                raise ConfigError("write data must be bytes-like, got %s (file %r)"
                                  % (type(data).__name__, path)) from None
            fid, offset, length = self._range(path, offset, buf.size)
        self.stats["writes"] += 1
        if length == 0:
            return 0
        end = offset + length
        pages = np.arange(offset // PAGE_SIZE, -(-end // PAGE_SIZE), dtype=np.int64)
        _, version = self._tables(fid, int(pages[-1]) + 1)
        # dirty first, then stable, then the bytes: a dirty page never goes back to volatile
        frames = self._stable_frames(fid, pages, DIRTY | UPTODATE)
        _, version = self._tables(fid, int(pages[-1]) + 1)
        if data is None:
            end = int(pages[-1] + 1) * PAGE_SIZE
            nxt = np.maximum(version[pages], 0) + 1
            self._forget_shadow(fid, pages)
            version[pages] = nxt
            self.mem.frames[frames] = generate(self.seed, fid, pages, nxt)
        else:
            # read-modify-write of the cached pages, as a kernel does: their bytes now (stable,
            # reloaded if they were discarded) are the base, not a re-read of the file
            expected = self.mem.frames[frames].copy()
            flat = expected.reshape(-1)
            start = offset - int(pages[0]) * PAGE_SIZE
            flat[start:start + length] = buf
            version[pages] = -1
            # user bytes only: the shadow of a write call, kept as a digest (8 bytes a page)
            self.shadow.update(zip(((fid, p) for p in pages.tolist()), page_digest(expected).tolist()))
            self.mem.frames[frames] = expected
        mark_touched(self.mem, frames)
        self.files.note_extent(fid, end)
        self.table.touch(frames)
        return length

    def _forget_shadow(self, fid, pages):
        if self.shadow:
            for p in pages.tolist():
                self.shadow.pop((fid, p), None)
