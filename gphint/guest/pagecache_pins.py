"""The descriptor conditions that keep page-cache pages STABLE (patch 3 of Schwidefsky's guest
page hinting series): locked, private data, mlocked, mapped writable, extra references."""
import numpy as np

from ..errors import ConfigError
from .content import PAGE_SIZE
from .frames import FLAG_DTYPE, HELD


class StableConditions:
    """PageCache's flag and pin changes over a file range (a mixin)."""

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
