"""Page-cache writeback: dirty pages written to their files (real writes to the overlay copy),
then clean and up to date again, so VOLATILE."""
import os

import numpy as np

from .content import PAGE_SIZE
from .frames import DIRTY, FILE, FLAG_DTYPE, WRITEBACK
from .guestpart import set_backing


class Writeback:
    """PageCache's writeback (a mixin: it uses the cache's table, files, hinter and stores)."""

    mappings = None     # the guest's ProcessMappings: writeback corrects what munmap left lazily

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
        if self.mappings is not None:
            self.mappings.correct_lingering()
        frames = self.dirty_frames(fid) if frames is None else np.asarray(frames, dtype=np.int64)
        frames = frames[(self.table.kind[frames] == FILE) & ((self.table.flags[frames] & DIRTY) != 0)]
        if frames.size == 0:
            return 0
        self.start_writeback(frames)
        fids = self.table.owner[frames]
        for fid_ in np.unique(fids).tolist():
            sel = frames[fids == fid_]
            with self.files.open_write(fid_) as fd:
                self.mem.write_to_file(sel, fd, self.table.index[sel] * PAGE_SIZE)
                size = int(self.files.size_bytes[fid_])
                if size % PAGE_SIZE and os.fstat(fd).st_size > size:
                    os.ftruncate(fd, size)       # whole-page writes must not lengthen the file
        self.end_writeback(frames)
        self.stats["writeback_pages"] += int(frames.size)
        return int(frames.size)
