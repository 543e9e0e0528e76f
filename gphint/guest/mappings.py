"""Guest processes mapping page-cache pages: page-table entries, the minor and major fault, and
munmap -- and patch 7 of Schwidefsky's guest page hinting series (2006), "no state change on
minor faults".

Without patch 7 ("eager") a minor fault -- the page is in the cache, only the page-table entry
is missing -- makes the page STABLE while it is looked up (find_get_page) and hints it back to
VOLATILE (POT_VOLATILE for a writable mapping) once it is mapped, and munmap of the last
writable mapping collects the host dirty bit and hints the page VOLATILE again: two state
changes each, every one an ESSA costing more than 100 cycles on s390.  With patch 7 ("lazy")
a minor fault installs the entry and changes nothing: a discarded page is handled by the
discard fault the access takes anyway.  Only a page that is not yet in a writable-mapped state
changes (VOLATILE -> POT_VOLATILE, through STABLE so that no store lands in a page the host may
discard).  munmap leaves a POT_VOLATILE page POT_VOLATILE: that is safe -- the host preserves it
if its dirty bit is set (Pr -> Sp) and discards it only if clean (Pr -> Vz) -- and the state is
corrected lazily, the next time the guest evaluates the page: at writeback (which reclaim runs),
where its dirty bit is collected and the page becomes VOLATILE, or not at all if a new mapping
takes it first.

A page-table entry is the frame it maps; it is valid while the cache still maps that page to
that frame (reclaim unmapping a read-only page through the reverse map is modelled by the entry
going stale)."""
import numpy as np

from ..errors import ConfigError
from .content import PAGE_SIZE
from .frames import FLAG_DTYPE, HELD, MAPPED_WRITABLE, S

MINOR_FAULT_MODES = ("lazy", "eager")


class Mapping:
    """One mmap of a file range by a guest process: its page-table entries (frame per page,
    -1 = not present)."""

    def __init__(self, mid, pid, fid, first_page, npages, writable):
        self.id, self.pid, self.fid = mid, pid, fid
        self.first_page, self.npages, self.writable = first_page, npages, bool(writable)
        self.pte = np.full(npages, -1, dtype=np.int64)
        self.closed = False

    def __repr__(self):
        return "<Mapping %d pid %d file %d pages %d+%d %s%s>" % (
            self.id, self.pid, self.fid, self.first_page, self.npages,
            "rw" if self.writable else "ro", " unmapped" if self.closed else "")


class ProcessMappings:
    """ProcessMappings(cache, minor_fault="lazy"): guest processes' mappings of the page cache.
    minor_fault="lazy" follows patch 7, "eager" changes state on every minor fault and unmap."""

    def __init__(self, cache, minor_fault="lazy"):
        if minor_fault not in MINOR_FAULT_MODES:
            raise ConfigError("unknown minor_fault %r (expected one of: %s)"
                              % (minor_fault, ", ".join(MINOR_FAULT_MODES)))
        self.cache = cache
        self.lazy = minor_fault == "lazy"
        self.minor_fault = minor_fault
        npages = cache.mem.npages
        self.wmaps = np.zeros(npages, dtype=np.int32)      # writable entries per frame
        self.lingering = np.zeros(npages, dtype=bool)      # unmapped, state not yet corrected
        self._next_id = 0
        self.live = {}
        self.stats = {"mmaps": 0, "munmaps": 0, "minor_faults": 0, "major_faults": 0,
                      "changes_saved": 0, "corrected": 0, "correction_changes": 0}

    def state_changes(self):
        """Every state change the guest's hinter asked for so far."""
        h = self.cache.hinter.stats
        return h["to_stable"] + h["to_volatile"] + h["to_pot_volatile"]

    # --- mmap / munmap ------------------------------------------------------------------------
    def mmap(self, path, offset, length, writable=False, pid=0):
        """Map a file range (whole pages): no page is touched until it is accessed."""
        fid, pages = self.cache._pages_of(path, offset, length)
        if pages.size == 0:
            raise ConfigError("mmap of %r at %d: empty range" % (path, offset))
        m = Mapping(self._next_id, int(pid), fid, int(pages[0]), int(pages.size), writable)
        self._next_id += 1
        self.live[m.id] = m
        self.stats["mmaps"] += 1
        return m

    def _check(self, m):
        if not isinstance(m, Mapping) or self.live.get(m.id) is not m:
            raise ConfigError("%r is not a live mapping of this guest" % (m,))

    def _valid(self, m):
        """Entries still mapping what the cache holds (reclaim made the others stale)."""
        pf, _ = self.cache._tables(m.fid, m.first_page + m.npages)
        now = pf[m.first_page:m.first_page + m.npages]
        return (m.pte >= 0) & (m.pte == now)

    def munmap(self, m):
        self._check(m)
        valid = self._valid(m)
        frames = m.pte[valid]
        m.pte[:] = -1
        m.closed = True
        del self.live[m.id]
        self.stats["munmaps"] += 1
        if not m.writable or frames.size == 0:
            return 0            # a read-only entry's removal changes nothing in either mode
        self.wmaps[frames] -= 1
        last = frames[self.wmaps[frames] == 0]
        if last.size == 0:
            return 0
        if self.lazy:
            self.lingering[last] = True
            self.stats["changes_saved"] += 2 * int(np.count_nonzero(self.cache.table.hinted[last] != S))
            return 0
        return self._unmap_writable(last)

    def _unmap_writable(self, frames):
        """The last writable entry is gone: collect the host dirty bits (stable first, patch 6's
        race rule), then the page is a plain cache page again."""
        cache = self.cache
        written = cache.msync(frames)
        cache.table.flags[frames] &= ~FLAG_DTYPE(MAPPED_WRITABLE)
        cache._settle_cached(frames)
        return written

    def correct_lingering(self):
        """Patch 7's lazy correction: pages left POT_VOLATILE by munmap become plain cache pages
        (their dirty bits collected and written back).  Writeback runs this."""
        frames = np.flatnonzero(self.lingering)
        if frames.size == 0:
            return 0
        self.lingering[frames] = False
        frames = frames[self.wmaps[frames] == 0]
        before = self.state_changes()
        self._unmap_writable(frames)
        self.stats["corrected"] += int(frames.size)
        self.stats["correction_changes"] += self.state_changes() - before
        return int(frames.size)

    # --- faults ----------------------------------------------------------------------------
    def fault_in(self, m, offset, length):
        """Install the missing entries of [offset, offset + length) of the mapping: major
        faults fill the page cache, minor faults only map.  Returns the frames of the range."""
        self._check(m)
        lo, hi = self._span(m, offset, length)
        cache = self.cache
        if cache.discard_mode == "guest":
            # the access traps on a page the host discarded: dropped and read again
            valid = self._valid(m)
            cache._drop_discarded(m.pte[lo:hi][valid[lo:hi]])
        idx = np.arange(lo, hi, dtype=np.int64)
        missing = idx[~self._valid(m)[lo:hi]]
        if missing.size:
            pages = missing + m.first_page
            frames, new = cache._get(m.fid, pages)
            cache.hinter.fresh_clean(new)
            minor = frames[~np.isin(frames, new)]
            self.stats["major_faults"] += int(new.size)
            self.stats["minor_faults"] += int(minor.size)
            if m.writable:
                frames = self._fault_writable(m.fid, pages, frames, new)
            elif not self.lazy and minor.size:
                self._make_stable_and_back(m.fid, pages[np.isin(frames, minor)])
            else:
                self.stats["changes_saved"] += 2 * int(np.count_nonzero(cache.table.hinted[minor] != S))
                cache.hinter.stats["unchanged"] += int(minor.size)
            pf, _ = cache._tables(m.fid, m.first_page + m.npages)
            m.pte[missing] = pf[pages]
            if m.writable:
                self.wmaps[m.pte[missing]] += 1
                self.lingering[m.pte[missing]] = False
        return m.pte[lo:hi].copy()

    def _span(self, m, offset, length):
        for name, v in (("offset", offset), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError("%s must be an integer >= 0, got %r (%r)" % (name, v, m))
        end = int(offset) + int(length)
        if end > m.npages * PAGE_SIZE or length == 0:
            raise ConfigError("access [%d, %d) outside %r (%d bytes)" % (offset, end, m, m.npages * PAGE_SIZE))
        return int(offset) // PAGE_SIZE, -(-end // PAGE_SIZE)

    def _make_stable_and_back(self, fid, pages):
        """Without patch 7: find_get_page makes the page STABLE, mapping it hints it back."""
        frames = self.cache._stable_frames(fid, pages, HELD)
        self.cache.table.flags[frames] &= ~FLAG_DTYPE(HELD)
        self.cache._settle_cached(frames)
        return frames

    def _fault_writable(self, fid, pages, frames, new):
        """A write fault: the page must be in the writable-mapped state (POT_VOLATILE, or STABLE
        without host dirty tracking).  Lazy: a page already in it changes nothing."""
        table = self.cache.table
        todo = np.ones(pages.size, dtype=bool)
        if self.lazy:
            todo = (table.flags[frames] & MAPPED_WRITABLE) == 0
            done = frames[~todo]
            self.stats["changes_saved"] += 2 * int(np.count_nonzero(table.hinted[done] != S))
            self.cache.hinter.stats["unchanged"] += int(done.size)
        if todo.any():
            held = self.cache._stable_frames(fid, pages[todo], HELD)
            table.flags[held] = (table.flags[held] & ~FLAG_DTYPE(HELD)) | MAPPED_WRITABLE
            self.cache._settle_cached(held)
        pf, _ = self.cache._tables(fid, int(pages[-1]) + 1)
        return pf[pages]

    # --- accesses ----------------------------------------------------------------------------
    def load(self, m, offset, length):
        """A process reads through its mapping: bytes (clipped at the end of the file)."""
        frames = self.fault_in(m, offset, length)
        lo = int(offset) // PAGE_SIZE
        start = m.first_page * PAGE_SIZE + int(offset)
        size = int(self.cache.files.size_bytes[m.fid])
        end = min(start + int(length), max(size, start))
        data = self.cache.mem.frames[frames].reshape(-1)
        skip = start - (m.first_page + lo) * PAGE_SIZE
        return data[skip:skip + end - start].tobytes()

    def store(self, m, offset, length):
        """A process stores through its writable mapping: the next version of the pages, with
        no guest state change (the host dirty bit records it)."""
        if not m.writable:
            raise ConfigError("store through read-only %r" % (m,))
        self.fault_in(m, offset, length)
        start = m.first_page * PAGE_SIZE + int(offset)
        return self.cache.store_mapped(m.fid, start, int(length))
