"""Writable mappings of cached file pages (patch 6 of Schwidefsky's guest page hinting series):
POT_VOLATILE pages whose host-side dirty bit is the record of a store, collected by msync."""
import numpy as np

from ..errors import ConfigError
from .content import PAGE_SIZE, generate
from .frames import DIRTY, FLAG_DTYPE, HELD, LOCKED, MAPPED_WRITABLE, P
from .guestpart import mark_touched


class WritableMappings:
    """PageCache's stores through a writable mapping and msync (a mixin)."""

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
        """Collect the host's dirty bits of pages mapped writable.  Race rule (Schwidefsky's
        patch 6): make the page stable first, then read and clear the dirty bit, so a store between the
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
