"""The guest's files: a deterministic default file set in a temporary directory, or a real
directory tree (`files=DIR`) that is never modified.

Every guest write goes to a guest-private copy-on-write overlay: the first write to a file
copies it (real read/write syscalls) into the overlay directory, and from then on the overlay
copy is the file -- it serves reads, writeback and the host's discard-fault reloads.  The
original stays untouched.  The copy notes the digest of each page it took (copy_digests), the
reference for verify() of version-0 pages the guest never read; a page it did read is checked
against what it read (the page cache's record), not against today's file.

File descriptors are leased from the process-wide pool (gphint.guest.fdpool) for one read,
writeback or copy at a time: a guest holds none between operations, however many files it has,
and guests reading one tree share its fds (the fds the fault thread needs belong to the
backing stores, gphint.stores).
"""
import os
import shutil
import stat
import tempfile
import weakref

import numpy as np

from .. import tmpfiles
from ..errors import ConfigError
from . import content
from .content import PAGE_SIZE, page_digest
from .fdpool import POOL

DEFAULT_FILE_BYTES = (4 << 10, 1 << 20)   # size range of generated files: small sources to blobs
_COPY_CHUNK_BYTES = 8 << 20               # overlay copy: read, digest and write this much at once
ZERO_PAGE_DIGEST = page_digest(np.zeros(PAGE_SIZE, dtype=np.uint8))[0]


def _generate_set(root, seed, total_bytes):
    """Write files f0000..fNNNN (in 16 subdirectories) whose bytes are content.generate(seed, fid,
    page, 0), truncated to a size drawn from a log-uniform law; returns their relative paths."""
    rng = np.random.default_rng([seed, 0x66696C6573])
    lo, hi = np.log(DEFAULT_FILE_BYTES[0]), np.log(DEFAULT_FILE_BYTES[1])
    # draw enough sizes at once: the mean of a log-uniform law is (hi-lo)/(1/lo - 1/hi)-ish
    sizes = np.exp(rng.uniform(lo, hi, size=max(16, int(total_bytes // 100_000) + 64))).astype(np.int64)
    n = int(np.searchsorted(np.cumsum(sizes), total_bytes)) + 1
    while n > sizes.size:
        sizes = np.concatenate([sizes, sizes])
    sizes = sizes[:n]
    paths = []
    for fid, size in enumerate(sizes.tolist()):
        rel = "d%02d/f%05d.dat" % (fid % 16, fid)
        full = os.path.join(root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        npages = -(-size // PAGE_SIZE)
        data = content.generate(seed, fid, np.arange(npages), 0)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data).cast("B")[:size]
            done = 0
            while done < size:               # os.write may be short
                done += os.write(fd, view[done:])
        finally:
            os.close(fd)
        paths.append(rel)
    return paths


def _walk_tree(root):
    """Relative paths of the regular files under root, sorted (deterministic file ids)."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and os.access(full, os.R_OK):
                paths.append(os.path.relpath(full, root))
    return paths


def _cache_read_flags():
    from ..host.cachemode import read_flags     # --cache none|host (gphint.host.cachemode)
    return read_flags()


def _is_direct(fd):
    from ..host.cachemode import is_direct
    return is_direct(fd)


def _pread_into_direct(fd, flat, offset):
    from ..host.cachemode import pread_aligned
    data = pread_aligned(fd, flat.nbytes, offset)
    flat[:len(data)] = data
    return len(data)


def pread_into(fd, buf, offset):
    """Fill the uint8 array buf from fd at offset with real reads, looping over short reads;
    stops at end of file (the rest of buf stays as it was).  Returns bytes read."""
    flat = memoryview(buf).cast("B")
    if _is_direct(fd):   # --cache none: O_DIRECT reads need a page-aligned buffer
        return _pread_into_direct(fd, flat, offset)
    done = 0
    while done < flat.nbytes:
        n = os.preadv(fd, [flat[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


class FileSet:
    """The files a guest reads and writes.  fid = index in sorted path order."""

    def __init__(self, root=None, *, seed=1, total_bytes=64 << 20):
        self._tmp = tempfile.mkdtemp(prefix=tmpfiles.prefix("files"))
        # a FileSet dropped without close() (or an exiting process) still removes its files
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        self.generated = root is None
        if root is None:
            self.root = os.path.join(self._tmp, "base")
            os.makedirs(self.root)
            self.paths = _generate_set(self.root, seed, total_bytes)
        else:
            root = os.fspath(root)
            if not os.path.isdir(root):
                self._cleanup()
                raise ConfigError("files=%r is not a directory" % root)
            self.root = os.path.abspath(root)
            self.paths = _walk_tree(self.root)
            if not self.paths:
                self._cleanup()
                raise ConfigError("files=%r holds no readable regular files" % root)
        self.overlay_root = os.path.join(self._tmp, "overlay")
        os.makedirs(self.overlay_root)
        self.seed = seed
        self._fid = {p: i for i, p in enumerate(self.paths)}
        self.size_bytes = np.array([os.stat(os.path.join(self.root, p)).st_size for p in self.paths],
                                   dtype=np.int64)
        self.copied = np.zeros(len(self.paths), dtype=bool)   # has an overlay copy
        self._copy_digests = {}                  # fid -> uint64 digest per page the copy took
        self.stats = {"overlay_copies": 0, "bytes_read": 0, "bytes_written": 0}

    def __len__(self):
        return len(self.paths)

    @property
    def total_bytes(self):
        return int(self.size_bytes.sum())

    def npages(self, fid):
        return -(-int(self.size_bytes[fid]) // PAGE_SIZE)

    def lookup(self, path):
        """fid of a path relative to the set's root (ConfigError naming an unknown path)."""
        if isinstance(path, (int, np.integer)) and not isinstance(path, bool):
            if 0 <= path < len(self.paths):
                return int(path)
            raise ConfigError("file id %d out of range [0, %d)" % (path, len(self.paths)))
        try:
            key = os.path.normpath(os.fspath(path))
        except TypeError:
            raise ConfigError("file path must be a string, got %r" % (path,)) from None
        fid = self._fid.get(key)
        if fid is None:
            raise ConfigError("no file %r in the guest's file set (%d files under %s)"
                              % (path, len(self.paths), self.root))
        return fid

    # --- file descriptors ------------------------------------------------------------------
    def path(self, fid):
        """The file's current path: its overlay copy once written, else the original."""
        base = self.overlay_root if self.copied[fid] else self.root
        return os.path.join(base, self.paths[fid])

    def original_path(self, fid):
        return os.path.join(self.root, self.paths[fid])

    def _flags(self, fid):
        # an original is only read: O_DIRECT under --cache none (the host keeps no second copy)
        return os.O_RDWR if self.copied[fid] else os.O_RDONLY | _cache_read_flags()

    def open_read(self, fid):
        """`with files.open_read(fid) as fd:` an fd of path(fid) (read-write for an overlay
        copy), valid inside the block only."""
        return POOL.lease(self.path(fid), self._flags(fid))

    def open_write(self, fid):
        """`with files.open_write(fid) as fd:` the overlay copy's fd, the copy made on the
        first write (copy-on-write of the whole file)."""
        if not self.copied[fid]:
            dst = os.path.join(self.overlay_root, self.paths[fid])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            self._copy_digests[fid] = self._copy(fid, dst)
            self.copied[fid] = True
            self.stats["overlay_copies"] += 1
        return self.open_read(fid)

    def _copy(self, fid, dst):
        """Copy the original to dst with real reads and writes; returns the digest of every page
        copied (what the overlay holds before the guest writes it)."""
        with self.open_read(fid) as src_fd:
            return self._copy_from(src_fd, fid, dst)

    def _copy_from(self, src_fd, fid, dst):
        npages = self.npages(fid)
        # pages past the original's end read as zeros in the copy (a hole, or not there at all)
        digests = np.full(max(npages, 1), ZERO_PAGE_DIGEST, dtype=np.uint64)
        chunk = np.zeros((min(max(npages, 1), _COPY_CHUNK_BYTES // PAGE_SIZE), PAGE_SIZE), dtype=np.uint8)
        try:
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _file_error(e, dst) from None
        try:
            first = 0
            while True:
                got = pread_into(src_fd, chunk, first * PAGE_SIZE)
                if got == 0:
                    break
                n = -(-got // PAGE_SIZE)
                chunk.reshape(-1)[got:n * PAGE_SIZE] = 0     # past the end of the file: zeros
                end = min(first + n, digests.size)
                digests[first:end] = page_digest(chunk[:end - first])
                view = memoryview(chunk).cast("B")[:got]
                done = 0
                while done < got:                 # os.pwrite may be short
                    done += os.pwrite(out, view[done:], first * PAGE_SIZE + done)
                first += n
        except OSError as e:
            raise _file_error(e, dst) from None
        finally:
            os.close(out)
        return digests

    def copy_digests(self, fid, pages):
        """Digest of what the overlay copy took from the original at pages (a zero page past the
        original's end: the copy holds a hole there)."""
        copied = self._copy_digests[fid]
        pages = np.asarray(pages, dtype=np.int64)
        out = np.full(pages.size, ZERO_PAGE_DIGEST, dtype=np.uint64)
        inside = pages < copied.size
        out[inside] = copied[pages[inside]]
        return out

    def note_extent(self, fid, end_bytes):
        """A write reached end_bytes: the file grew to at least that size."""
        if end_bytes > self.size_bytes[fid]:
            self.size_bytes[fid] = end_bytes

    def close(self):
        # the fds of its files go with them; those of a shared tree too (other guests reading
        # it reopen theirs on demand), so that nothing of a closed guest stays open
        POOL.forget(self._tmp)
        POOL.forget(self.root)
        self._cleanup()


def _file_error(e, path):
    """An OSError naming the file (EMFILE says what to raise)."""
    from ..stores import nofile_error
    return nofile_error(e, path)
