"""The guest's files: a deterministic default file set in a temporary directory, or a real
directory tree (`files=DIR`) that is never modified.

Every guest write goes to a guest-private copy-on-write overlay: the first write to a file
copies it (real read/write syscalls) into the overlay directory, and from then on the overlay
copy is the file -- its fd serves reads, writeback and the host's discard-fault reloads.  The
original stays untouched, so it is also the independent witness of every page's version-0
content for verify().
"""
import os
import shutil
import stat
import tempfile
import weakref

import numpy as np

from ..errors import ConfigError
from . import content
from .content import PAGE_SIZE

DEFAULT_FILE_BYTES = (4 << 10, 1 << 20)   # size range of generated files: small sources to blobs
_FD_CACHE_MAX = 4096                      # open originals kept; overlays stay open


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
        self._tmp = tempfile.mkdtemp(prefix="gphint-files-")
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
        self._orig_fd = {}
        self._overlay_fd = {}
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

    def read_fd(self, fid):
        if self.copied[fid]:
            return self._overlay_fd[fid]
        fd = self._orig_fd.get(fid)
        if fd is None:
            if len(self._orig_fd) >= _FD_CACHE_MAX:
                for old in self._orig_fd.values():
                    os.close(old)
                self._orig_fd.clear()
            fd = self._orig_fd[fid] = os.open(self.original_path(fid),
                                              os.O_RDONLY | os.O_CLOEXEC | _cache_read_flags())
        return fd

    def write_fd(self, fid):
        """fd of the overlay copy, made on the first write (copy-on-write of the whole file)."""
        if not self.copied[fid]:
            dst = os.path.join(self.overlay_root, self.paths[fid])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(self.original_path(fid), dst)
            self._overlay_fd[fid] = os.open(dst, os.O_RDWR | os.O_CLOEXEC)
            self.copied[fid] = True
            self.stats["overlay_copies"] += 1
        return self._overlay_fd[fid]

    def note_extent(self, fid, end_bytes):
        """A write reached end_bytes: the file grew to at least that size."""
        if end_bytes > self.size_bytes[fid]:
            self.size_bytes[fid] = end_bytes

    # --- the witness for verify() ----------------------------------------------------------
    def original_pages(self, fid, pages):
        """(n, PAGE_SIZE) bytes of the original file at those pages (zeros past its end), by
        one real read of the span they cover."""
        pages = np.asarray(pages, dtype=np.int64)
        out = np.zeros((pages.size, PAGE_SIZE), dtype=np.uint8)
        if pages.size == 0:
            return out
        first, last = int(pages.min()), int(pages.max())
        span = np.zeros((last - first + 1, PAGE_SIZE), dtype=np.uint8)
        fd = self.read_fd(fid) if not self.copied[fid] else None
        close = fd is None
        if close:
            fd = os.open(self.original_path(fid), os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = pread_into(fd, span, first * PAGE_SIZE)
        finally:
            if close:
                os.close(fd)
        self.stats["bytes_read"] += done
        out[:] = span[pages - first]
        return out

    def close(self):
        for fd in list(self._orig_fd.values()) + list(self._overlay_fd.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self._orig_fd.clear()
        self._overlay_fd.clear()
        self._cleanup()
