"""The guest's page cache over real files, its page descriptors, and the rule that decides
which pages the host may discard (REFERENCE §1; Schwidefsky's guest page hinting, patch 3).

Page descriptors ("struct page") are parallel numpy arrays over the guest's frames, so that a
read of n pages, a writeback of a file or an LRU scan is a handful of vectorised operations.

The volatile rule (patch 3's ten conditions, as they apply here): a frame may be VOLATILE only
if it is a page-cache or swap-cache page (anonymous pages and pages without a mapping stay
STABLE), up to date, not dirty, not under writeback, not locked, without private data, without
extra references (pins), and not mlocked (patch 5).  A clean page mapped writable is
POT_VOLATILE (patch 6) when the host can track its dirty bit, else STABLE.  Everything else is
STABLE.  Pages found already discarded are the caller's discard faults.
"""
import os

import numpy as np

from .._mechanism import mech
from ..errors import ConfigError, GphintError
from ..states import CONTENT_MASK, HostState, PageState
from .content import PAGE_SIZE, generate, page_digest
from .files import pread_into

S, P, V = int(PageState.STABLE), int(PageState.POT_VOLATILE), int(PageState.VOLATILE)

# frame kinds
FREE, FILE, ANON, SWAPCACHE = 0, 1, 2, 3
KIND_NAMES = {FREE: "free", FILE: "file", ANON: "anon", SWAPCACHE: "swapcache"}

# frame flags (page-flags.h words)
UPTODATE = 1 << 0
DIRTY = 1 << 1
WRITEBACK = 1 << 2
LOCKED = 1 << 3
PRIVATE = 1 << 4
MLOCKED = 1 << 5
MAPPED_WRITABLE = 1 << 6
HELD = 1 << 7            # transient: the guest is changing this page's descriptor right now
NO_BACKING = 1 << 8      # no backing store could be recorded: "no mapping", nothing to reload from
# any of these keeps a frame STABLE, whatever its kind
_PINS_STABLE = DIRTY | WRITEBACK | LOCKED | PRIVATE | MLOCKED | HELD | NO_BACKING
FLAG_DTYPE = np.uint16
_FLAG_BITS = 9                # flags in use: bits 0-8 (desired_usage's table is indexed by them)
assert (UPTODATE | DIRTY | WRITEBACK | LOCKED | PRIVATE | MLOCKED | MAPPED_WRITABLE | HELD
        | NO_BACKING) < 1 << _FLAG_BITS and SWAPCACHE < 4, "grow _FLAG_BITS with the flags"


def _desired_table(pot_volatile_ok):
    """The usage state a frame's (kind, flags) allows, for every combination: VOLATILE for a
    clean, up-to-date, unpinned page-cache or swap-cache page; POT_VOLATILE (or STABLE without
    host dirty tracking) if it is also mapped writable; STABLE for everything else."""
    kind = np.arange(4 << _FLAG_BITS) >> _FLAG_BITS
    flags = np.arange(4 << _FLAG_BITS) & ((1 << _FLAG_BITS) - 1)
    clean = (((kind == FILE) | (kind == SWAPCACHE)) & ((flags & UPTODATE) != 0)
             & ((flags & _PINS_STABLE) == 0))
    mapped = (flags & MAPPED_WRITABLE) != 0
    want = np.where(clean, V, S).astype(np.uint8)
    want[clean & mapped] = P if pot_volatile_ok else S
    return want


_DESIRED = (_desired_table(False), _desired_table(True))

_NONE = np.zeros(0, dtype=np.int64)   # read-only: "no frames"
_NONE.flags.writeable = False
MAX_RELOAD_TRIES = 64    # transparent mode: a page the host keeps discarding while we stabilise


class FrameTable:
    """Per-frame descriptors: kind, owner (fid or pid), index (file page or virtual page), flags,
    extra references and last use (LRU tick)."""

    def __init__(self, npages):
        self.kind = np.zeros(npages, dtype=np.uint8)
        self.owner = np.full(npages, -1, dtype=np.int64)
        self.index = np.full(npages, -1, dtype=np.int64)
        self.flags = np.zeros(npages, dtype=FLAG_DTYPE)
        self.refs = np.zeros(npages, dtype=np.int32)
        self.last_use = np.zeros(npages, dtype=np.int64)
        self.hinted = np.zeros(npages, dtype=np.uint8)   # usage state last hinted (S on alloc)
        self.tick = 0

    def claim(self, frames, kind, owner, index, flags=0):
        self.kind[frames] = kind
        self.owner[frames] = owner
        self.index[frames] = index
        self.flags[frames] = flags
        self.refs[frames] = 0
        self.hinted[frames] = S          # the allocator hands frames out STABLE
        self.touch(frames)

    def reset(self, frames):
        self.kind[frames] = FREE
        self.owner[frames] = -1
        self.index[frames] = -1
        self.flags[frames] = 0
        self.refs[frames] = 0
        self.hinted[frames] = S

    def touch(self, frames):
        self.tick += 1
        self.last_use[frames] = self.tick

    def desired_usage(self, frames, pot_volatile_ok):
        """The usage state each frame's descriptor allows (uint8 PageState codes)."""
        # one table look-up on (kind, flags): settle() runs on every write and writeback, and
        # each numpy call on a few frames costs more than the rule it evaluates
        key = (self.kind[frames].astype(np.intp) << _FLAG_BITS) | self.flags[frames]
        want = _DESIRED[int(bool(pot_volatile_ok))][key]
        refs = self.refs[frames]
        if np.count_nonzero(refs):     # cheaper than refs.any() on a few frames
            want[refs != 0] = S          # extra references pin a page (REFERENCE §1)
        return want

    def reclaimable(self):
        """Frames the LRU may drop: clean, unpinned page-cache and swap-cache pages."""
        kind = self.kind
        # NO_BACKING keeps a page from the host (nothing to reload it from), not from the guest:
        # its file still holds it, and a full store table must not leave the guest out of memory
        return (((kind == FILE) | (kind == SWAPCACHE)) & ((self.flags & UPTODATE) != 0)
                & ((self.flags & (_PINS_STABLE & ~NO_BACKING | MAPPED_WRITABLE)) == 0)
                & (self.refs == 0))


# --- the seam to the discard-fault service (gphint.faults, issue 3) -------------------------
# Page-cache I/O goes through GuestMemory.fill_from_file / write_to_file (C, GIL released; a
# bounce copy under UFFD_USER_MODE_ONLY), state changes to STABLE through the HintBuffer's
# make_stable (the state protocol, ext/protocol.c).

def set_backing(mem, frames, store, offsets, table=None, digests=None):
    """Record where a clean frame's content lives, before it may become volatile, and what it
    holds: the store's content record gets the digest of each frame (digests, if the caller
    has them), which a reload must match.  Call it while the frames equal the file at offsets
    (just read from it, or just written to it).  With a fault service but no store (the store
    table is full) the frames are flagged NO_BACKING: like a page without a mapping they stay
    STABLE, since a discard could not be reloaded."""
    if len(frames) == 0:
        return
    if store is None:
        if table is not None and mem.fault_service is not None:
            table.flags[frames] |= NO_BACKING
        return
    if table is not None:
        table.flags[frames] &= ~FLAG_DTYPE(NO_BACKING)
    record = getattr(store, "record", None)
    if record is not None:
        record(offsets, page_digest(mem.frames, frames) if digests is None else digests)
    mem.set_backing(frames, store, offsets)


def mark_touched(mem, frames):
    """The guest wrote these frames.  With a fault service the touch itself was a served
    fault (Sz -> Sr); without one the kernel zero-filled silently, so record the content as
    resident here -- otherwise a later S -> V would be refused for content the guest owns."""
    if mem.fault_service is not None or len(frames) == 0:
        return
    frames = np.asarray(frames, dtype=np.int64)
    zero = frames[(mem.states[frames] & CONTENT_MASK) == int(HostState.ZERO)]
    if zero.size:
        # GuestMemory owns the table; this is the documented host transition Sz -> Sr
        mech.set_content(mem._states, zero, int(HostState.RESIDENT))


class Hinter:
    """Moves frames to the state their descriptors allow, through the guest's HintBuffer
    (batched transitions), changing only those that differ from what was last hinted (the
    minor-fault optimisation, patch 7: a hit on a page already in the right state costs no
    state change, and is counted).

    table.hinted records the state last asked for; the buffer may still hold it pending (the
    page is then STABLE in mem, see gphint.guest.hints).  A transition to STABLE goes through
    HintBuffer.make_stable: a page still STABLE in mem only has its pending transition
    cancelled; one VOLATILE/POT_VOLATILE in mem goes through the state protocol, which
    detects a completed host discard."""

    def __init__(self, mem, table, buffer, pot_volatile_ok=None):
        self.mem = mem
        self.table = table
        self.buffer = buffer
        self.hinting = bool(buffer.enabled)
        if pot_volatile_ok is None:
            svc = mem.fault_service
            pot_volatile_ok = svc is not None and svc.dirty_tracking
        self.pot_volatile_ok = bool(pot_volatile_ok)
        self.volatile_ok = True     # False: hint level "unused" (s390 mainline), cache stays STABLE
        self.stats = {"unchanged": 0, "to_stable": 0, "to_volatile": 0, "to_pot_volatile": 0,
                      "found_discarded": 0}

    def settle(self, frames):
        """Returns the frames that had to become STABLE but were found discarded (not made
        stable: the caller reloads or drops them)."""
        frames = np.asarray(frames, dtype=np.int64)
        if not self.hinting or frames.size == 0:
            return _NONE
        want = self.table.desired_usage(frames, self.pot_volatile_ok)
        if not self.volatile_ok:
            want[:] = S
        differ = want != self.table.hinted[frames]
        ndiffer = int(np.count_nonzero(differ))
        self.stats["unchanged"] += int(frames.size) - ndiffer
        if ndiffer == 0:
            return _NONE
        if ndiffer < frames.size:
            frames, want = frames[differ], want[differ]
        lost = _NONE
        to_s = frames[want == S]
        if to_s.size:
            # one call: cancels pending hints of pages still STABLE, makes the others STABLE
            # through the state protocol, and lists those the host has discarded meanwhile
            lost = self.buffer.make_stable(to_s)
            done = np.setdiff1d(to_s, lost, assume_unique=True) if lost.size else to_s
            self.table.hinted[done] = S
            self.stats["to_stable"] += int(done.size)
            self.stats["found_discarded"] += int(lost.size)
            if to_s.size == frames.size:
                return lost
        for state, key in ((V, "to_volatile"), (P, "to_pot_volatile")):
            sel = frames[want == state]
            if sel.size:
                self.buffer.hint(sel, state)
                self.table.hinted[sel] = state
                self.stats[key] += int(sel.size)
        return lost

    def fresh_clean(self, frames):
        """Frames just filled by a read miss: clean, up to date, unpinned, so VOLATILE unless
        they have no backing store -- the read path's shortcut past desired_usage()."""
        if not self.hinting or frames.size == 0:
            return
        # NO_BACKING is only ever set on a fill with a fault service but no store for the file
        if not self.volatile_ok or (self.mem.fault_service is not None
                                    and (self.table.flags[frames] & NO_BACKING).any()):
            self.settle(frames)          # nothing to stabilise: they are STABLE already
            return
        self.buffer.hint(frames, V)
        self.table.hinted[frames] = V
        self.stats["to_volatile"] += int(frames.size)

    def resync(self, frames):
        """The host changed these frames' usage on its own (Pr -> Vz, Pr -> Sp): take mem's
        word for what they are now."""
        frames = np.asarray(frames, dtype=np.int64)
        if self.hinting and frames.size:
            in_mem = self.mem.usage(frames)
            pending = self.table.hinted[frames] != S
            # a pending hint leaves the page STABLE in mem: keep our record of it then
            change = (in_mem != S) | ~pending
            self.table.hinted[frames[change]] = in_mem[change]

    def stabilise(self, frames, reload):
        """Make frames STABLE whatever happens: pages found discarded are handed to reload(lost)
        (transparent: touch them; the service reloads) and tried again.  Used where the guest
        must own the content (a write, a swap-in)."""
        lost = self.settle(frames)
        tries = 0
        while lost.size:
            tries += 1
            if tries > MAX_RELOAD_TRIES:
                raise GphintError("%d pages stayed discarded after %d reloads (first: frame %d)"
                                  % (lost.size, MAX_RELOAD_TRIES, int(lost[0])))
            reload(lost)
            lost = self.settle(lost)


def touch_frames(mem, frames):
    """Read one byte of each frame: a discarded page takes its discard fault now (the fault
    service reloads it from its backing store)."""
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size:
        int(mem.region[frames * PAGE_SIZE].sum())


class GuestPart:
    """What the page cache and anonymous memory share: the guest's memory, frame table and
    hinter, its frame supply (`alloc_frames(n)`, `free_frames(frames)`: allocator plus reclaim),
    its content seed, discard-fault mode, and `store_for(path)`: the backing store of a file
    for discard-fault reloads (None without a fault service)."""

    def __init__(self, mem, table, hinter, alloc_frames, free_frames, *, seed,
                 discard_mode="transparent", store_for=None):
        self.mem = mem
        self.table = table
        self.hinter = hinter
        self.alloc_frames = alloc_frames
        self.free_frames = free_frames
        self.seed = seed
        self.discard_mode = discard_mode
        self.store_for = store_for or (lambda path: None)

    def _release(self, frames, kind, frame_map):
        """Free the frames of `kind` among frames, first unlinking each from its owner's
        page -> frame map (`frame_map(owner)`, an int64 array, -1 = none).  Returns how many."""
        frames = np.asarray(frames, dtype=np.int64)
        frames = frames[self.table.kind[frames] == kind]
        if frames.size == 0:
            return 0
        owners, index = self.table.owner[frames], self.table.index[frames]
        for owner in np.unique(owners).tolist():
            frame_map(owner)[index[owners == owner]] = -1
        self.free_frames(frames)
        return int(frames.size)

    def _reload(self, lost):
        """Found discarded while being made stable, transparent mode: touch them (the fault
        service reloads them from their backing store) and try again."""
        touch_frames(self.mem, lost)
        self.stats["reloaded"] += int(lost.size)


class PageCache(GuestPart):
    """Files' pages cached in guest frames."""

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
            self.mem.fill_from_file(new, self.files.read_fd(fid), mpages * PAGE_SIZE)
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

    # --- writeback ------------------------------------------------------------------------
    def dirty_frames(self, fid=None):
        mask = (self.table.kind == FILE) & ((self.table.flags & DIRTY) != 0)
        if fid is not None:
            mask &= self.table.owner == fid
        return np.flatnonzero(mask)

    def start_writeback(self, frames):
        """clear dirty, set writeback (the page stays STABLE: its content is needed for the I/O)."""
        self.table.flags[frames] = (self.table.flags[frames] & ~FLAG_DTYPE(DIRTY)) | WRITEBACK

    def end_writeback(self, frames):
        """The write completed: clean and up to date again, so VOLATILE."""
        self.table.flags[frames] &= ~FLAG_DTYPE(WRITEBACK)
        fids = self.table.owner[frames]
        for fid in np.unique(fids).tolist():
            sel = frames[fids == fid]
            set_backing(self.mem, sel, self.store_for(self.files.path(fid)),
                        self.table.index[sel] * PAGE_SIZE, self.table)
        self._settle_cached(frames)

    def _settle_cached(self, frames):
        lost = self.hinter.settle(frames)
        if lost.size:
            if self.discard_mode == "guest":
                # found discarded while made STABLE: mapped pages are reloaded in place
                self.drop(self._keep_mapped(lost))
            else:
                self.hinter.stabilise(lost, self._reload)

    def writeback(self, frames=None, fid=None):
        """Write dirty pages to their files (real writes to the overlay copy); returns pages."""
        frames = self.dirty_frames(fid) if frames is None else np.asarray(frames, dtype=np.int64)
        frames = frames[(self.table.kind[frames] == FILE) & ((self.table.flags[frames] & DIRTY) != 0)]
        if frames.size == 0:
            return 0
        self.start_writeback(frames)
        fids = self.table.owner[frames]
        for fid_ in np.unique(fids).tolist():
            sel = frames[fids == fid_]
            fd = self.files.write_fd(fid_)
            self.mem.write_to_file(sel, fd, self.table.index[sel] * PAGE_SIZE)
            size = int(self.files.size_bytes[fid_])
            if size % PAGE_SIZE and os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)       # whole-page writes must not lengthen the file
        self.end_writeback(frames)
        self.stats["writeback_pages"] += int(frames.size)
        return int(frames.size)

    # --- conditions that keep pages stable --------------------------------------------------
    def _pages_of(self, path, offset, length):
        fid, offset, length = self._range(path, offset, length)
        size = max(int(self.files.size_bytes[fid]), offset + length)
        end = min(offset + length, size)
        if end <= offset:
            return fid, np.zeros(0, dtype=np.int64)
        return fid, np.arange(offset // PAGE_SIZE, -(-end // PAGE_SIZE), dtype=np.int64)

    def _cached(self, fid, pages):
        pf, _ = self._tables(fid, int(pages[-1]) + 1 if pages.size else 0)
        frames = pf[pages]
        return frames[frames >= 0]

    def _change(self, path, offset, length, on, change):
        """Apply change(frames) to a range's pages: on=True caches them and holds them STABLE
        meanwhile (the change keeps them stable); on=False only touches cached pages (the change
        may let them become volatile again).  Then settle."""
        fid, pages = self._pages_of(path, offset, length)
        if pages.size == 0:
            return pages
        if on:
            frames = self._stable_frames(fid, pages, HELD)
            change(frames)
            self.table.flags[frames] &= ~FLAG_DTYPE(HELD)
        else:
            frames = self._cached(fid, pages)
            change(frames)
        self._settle_cached(frames)
        return frames

    def set_flag(self, path, offset, length, flag, on=True):
        """Set or clear a descriptor flag (LOCKED, PRIVATE, MLOCKED, MAPPED_WRITABLE) on the
        pages of a range, caching them first when setting."""
        def change(frames):
            if on:
                self.table.flags[frames] |= flag
            else:
                self.table.flags[frames] &= ~FLAG_DTYPE(flag)
        return self._change(path, offset, length, on, change)

    def pin(self, path, offset, length, delta=1):
        """Extra references (get_user_pages, direct I/O): pinned pages stay STABLE."""
        def change(frames):
            refs = self.table.refs[frames] + delta
            if (refs < 0).any():
                raise ConfigError("unpin of %r at %d: pages are not pinned" % (path, offset))
            self.table.refs[frames] = refs
        return self._change(path, offset, length, delta > 0, change)

    # --- writable mappings (patch 6) -------------------------------------------------------
    def store_mapped(self, path, offset, length):
        """A store through a writable mapping: next-version content straight into the frames,
        no guest dirty flag and no state change (the host's dirty bit is the record).  Pages the
        host demoted meanwhile (clean P discarded: Vz; dirty P preserved: Sp) are taken back to
        STABLE first -- a store into a VOLATILE page could be discarded -- and hinted
        POT_VOLATILE again afterwards."""
        fid, offset, length = self._range(path, offset, length)
        if length == 0:
            return 0
        pages = np.arange(offset // PAGE_SIZE, -(-(offset + length) // PAGE_SIZE), dtype=np.int64)
        pf, version = self._tables(fid, int(pages[-1]) + 1)
        frames = pf[pages]
        if (frames < 0).any() or ((self.table.flags[np.maximum(frames, 0)] & MAPPED_WRITABLE) == 0).any():
            raise ConfigError("store to %r at %d: range is not mapped writable" % (path, offset))
        if self.hinter.hinting:
            usage = self.mem.usage(frames)
            stale = frames[(usage != P) & (self.table.hinted[frames] == P)]
        else:
            stale = frames[:0]
        if stale.size:
            self.hinter.resync(stale)
            self.table.flags[stale] |= LOCKED
            self.hinter.stabilise(stale, self._reload)
        nxt = np.maximum(version[pages], 0) + 1
        self._forget_shadow(fid, pages)
        version[pages] = nxt
        self.mem.frames[frames] = generate(self.seed, fid, pages, nxt)
        mark_touched(self.mem, frames)
        self.files.note_extent(fid, int(pages[-1] + 1) * PAGE_SIZE)
        if stale.size:
            self.table.flags[stale] &= ~FLAG_DTYPE(LOCKED)
            self._settle_cached(stale)
        self.table.touch(frames)
        return length

    def msync(self, frames):
        """Collect the host's dirty bits of pages mapped writable.  Race rule (REFERENCE §1):
        make the page stable first, then read and clear the dirty bit, so a store between the
        two is never lost; written pages become guest-dirty and are written back."""
        frames = np.asarray(frames, dtype=np.int64)
        frames = frames[(self.table.flags[frames] & MAPPED_WRITABLE) != 0]
        if frames.size == 0:
            return 0
        # a mapped page stays in the cache (the mapping holds it): one the host discarded is
        # reloaded in either discard mode, never dropped
        self.table.flags[frames] |= HELD
        self.hinter.stabilise(frames, self._reload)
        svc = self.mem.fault_service
        if self.hinter.pot_volatile_ok and svc is not None:
            dirty = frames[np.asarray(svc.dirty_pages(self.mem, frames), dtype=bool)]
            svc.clear_dirty(self.mem, frames)
        else:
            dirty = frames          # no dirty tracking: every mapped page may have been written
        self.table.flags[frames] &= ~FLAG_DTYPE(HELD)
        self.table.flags[dirty] |= DIRTY
        self.stats["mapped_dirty"] += int(dirty.size)
        self.writeback(dirty)
        self._settle_cached(frames)
        return int(dirty.size)

    # --- expected content ------------------------------------------------------------------
    def expected_digests(self, fid, pages, on_disk=False):
        """Digest of the content pages of fid must hold: what the guest read (version 0; for a
        page never read and on_disk, what the overlay copy took), the generated version, or the
        shadow of a user write."""
        pages = np.asarray(pages, dtype=np.int64)
        _, version = self._tables(fid, int(pages.max()) + 1 if pages.size else 0)
        v = version[pages]
        out = self.digest[fid][pages].copy()
        if on_disk:
            unread = (v == 0) & (out == 0)
            if unread.any():
                out[unread] = self.files.copy_digests(fid, pages[unread])
        gen = v > 0
        if gen.any():
            out[gen] = page_digest(generate(self.seed, fid, pages[gen], v[gen]))
        user = np.flatnonzero(v < 0)
        if user.size:
            out[user] = [self.shadow[(fid, int(pages[i]))] for i in user.tolist()]
        return out

    def verify(self):
        """Mismatching pages: every cached frame against the digest of what it must hold (read
        through the real fault path), and every written file's clean pages on disk."""
        bad = 0
        frames = self.cached_frames()
        fids = self.table.owner[frames]
        for fid in np.unique(fids).tolist():
            sel = frames[fids == fid]
            pages = self.table.index[sel]
            bad += int(np.count_nonzero(page_digest(self.mem.frames, sel) != self.expected_digests(fid, pages)))
        for fid in np.flatnonzero(self.files.copied).tolist():
            npages = self.files.npages(fid)
            pages = np.arange(npages, dtype=np.int64)
            pf, _ = self._tables(fid, npages)
            f = pf[:npages]
            on_disk = np.ones(npages, dtype=bool)
            cached = f >= 0
            # dirty pages and stores through a mapping not yet msync'ed live only in memory
            on_disk[cached] = (self.table.flags[f[cached]] & (DIRTY | WRITEBACK | MAPPED_WRITABLE)) == 0
            if not on_disk.any():
                continue
            disk = np.zeros((npages, PAGE_SIZE), dtype=np.uint8)
            pread_into(self.files.read_fd(fid), disk, 0)
            want = self.expected_digests(fid, pages[on_disk], on_disk=True)
            bad += int(np.count_nonzero(page_digest(disk[on_disk]) != want))
        return bad
