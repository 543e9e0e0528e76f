"""What every cached page and every written file must hold, and the byte-for-byte check of it."""
import numpy as np

from .content import PAGE_SIZE, generate, page_digest
from .files import pread_into
from .frames import DIRTY, MAPPED_WRITABLE, WRITEBACK


class ExpectedContent:
    """PageCache's expected digests and verify() (a mixin)."""

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
            with self.files.open_read(fid) as fd:
                pread_into(fd, disk, 0)
            want = self.expected_digests(fid, pages[on_disk], on_disk=True)
            bad += int(np.count_nonzero(page_digest(disk[on_disk]) != want))
        return bad
