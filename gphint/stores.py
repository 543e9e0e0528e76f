"""Backing stores: where a discarded page's content lives (UMap's Store: read page-sized data at
an offset -- the only thing the reload path knows about files).

    FileStore(path)           a guest's backing file, opened read-only; discarded VOLATILE pages
                              reload from it (mem.set_backing records page -> (store, offset))
    HostSwap(size, path=None) the host's swap: a real file (an unlinked temp file by default) with
                              a slot allocator; the fault thread frees a slot after a swap-in

Every store has an id > 0, entered in the C store table (compiled mechanism) so the fault thread
can find its fd without Python.  Ids are recycled after close().
"""
import mmap
import os
import stat
import tempfile
import threading

import numpy as np

from ._lifetime import Closeable
from ._mechanism import mech
from .errors import ClosedError, ConfigError, GphintError
from .units import parse_size

PAGE_SIZE = mmap.PAGESIZE
MAX_STORES = getattr(mech, "MAX_STORES", 4096)

_ids_lock = threading.Lock()
_free_ids = []
_next_id = [1]


def _cache_read_flags():
    from .host.cachemode import read_flags
    return read_flags()


def _open_for_reads(path):
    """open(2) for a backing file: O_DIRECT under --cache none, buffered where the filesystem
    (or the file type: a directory) refuses it -- FileStore.direct_io says which it got."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    extra = _cache_read_flags()
    if extra:
        try:
            return os.open(path, flags | extra)
        except OSError as e:
            import errno
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags)


def _is_direct(fd):
    from .host.cachemode import is_direct
    return is_direct(fd)


def _direct_pread(fd, nbytes, offset):
    from .host.cachemode import pread_aligned
    return pread_aligned(fd, nbytes, offset)


def _enable_direct(fd):
    from .host.hostswap_direct import enable_direct
    return enable_direct(fd)


class SwapFull(GphintError, MemoryError):
    """The host swap has no free slot left."""


def _take_id():
    with _ids_lock:
        if _free_ids:
            return _free_ids.pop()
        if _next_id[0] >= MAX_STORES:
            raise ConfigError("too many open stores (%d): close some" % (MAX_STORES - 1))
        _next_id[0] += 1
        return _next_id[0] - 1


def _give_id(store_id):
    with _ids_lock:
        _free_ids.append(store_id)


class Store(Closeable):
    """Base: an fd, an id in the C store table, read(offset, nbytes)."""

    kind = "store"

    def __init__(self, fd, slot_used=None):
        self.fd = fd
        self.id = _take_id()
        if mech.COMPILED:
            mech.store_set(self.id, fd, slot_used)

    @property
    def closed(self):
        return self.fd < 0

    def _check_open(self):
        if self.fd < 0:
            raise ClosedError("%s %s is closed" % (self.kind, self))

    def read(self, offset, nbytes=PAGE_SIZE):
        """nbytes at offset; past the end of the file reads as zeros (file-mapping semantics)."""
        self._check_open()
        if getattr(self, "direct_io", False):
            data = _direct_pread(self.fd, nbytes, offset)
        else:
            data = os.pread(self.fd, nbytes, offset)
        return data + bytes(nbytes - len(data))

    def close(self):
        """Close the fd.  Pages still recorded against this store reload as lost (zeros, and
        FaultService.check() raises) -- close a store only after its pages are back."""
        if self.fd < 0:
            return
        if mech.COMPILED:
            mech.store_clear(self.id)
        os.close(self.fd)
        self.fd = -1
        _give_id(self.id)


class FileStore(Store):
    """A read-only regular file backing discarded VOLATILE pages: FileStore("/path/to/file")."""

    kind = "file store"

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            fd = _open_for_reads(self.path)
        except OSError as e:
            raise ConfigError("backing file %r: %s" % (self.path, e.strerror)) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ConfigError("backing file %r is not a regular file" % self.path)
        self.size_bytes = st.st_size
        self.direct_io = _is_direct(fd)
        super().__init__(fd)

    def __repr__(self):
        return "<FileStore %d %r%s>" % (self.id, self.path, " closed" if self.closed else "")


class HostSwap(Store):
    """The host's swap: HostSwap(size="256M", path=None).  A real file (an unlinked temp file unless
    path is given), one page per slot; alloc(n) -> slots, free(slots)."""

    kind = "host swap"

    def __init__(self, size="256M", path=None, direct=True):
        size_bytes = parse_size(size, "host swap size")
        self.nslots = -(-size_bytes // PAGE_SIZE)
        self.size_bytes = self.nslots * PAGE_SIZE
        if path is None:
            fd, tmp = tempfile.mkstemp(prefix="gphint-swap-")
            os.unlink(tmp)   # anonymous: gone when closed, even after a crash
            self.path = None
        else:
            self.path = os.fspath(path)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise ConfigError("host swap file %r: %s" % (self.path, e.strerror)) from None
        os.set_inheritable(fd, False)
        os.ftruncate(fd, self.size_bytes)
        # O_DIRECT: a swapped page must leave RAM -- buffered, it would sit in the host's page
        # cache and the "swap" would be a memcpy (gphint.host.hostswap_direct)
        self.direct_io, self.direct_io_reason = _enable_direct(fd) if direct else \
            (False, "direct=False was asked for")
        # slot-in-use table: mmap-backed (never moves) because the fault thread clears entries
        self._slot_map = mmap.mmap(-1, max(self.nslots, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.slot_used = np.frombuffer(self._slot_map, dtype=np.uint8, count=self.nslots)
        self._lock = threading.Lock()
        super().__init__(fd, self.slot_used)

    def alloc(self, npages):
        """Up to npages free slots (int64, ascending: contiguous when free space is)."""
        self._check_open()
        with self._lock:
            slots = np.flatnonzero(self.slot_used == 0)[:int(npages)].astype(np.int64)
            self.slot_used[slots] = 1
        return slots

    def free(self, slots):
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if slots.size and (slots.min() < 0 or slots.max() >= self.nslots):
            raise ConfigError("swap slot out of range [0, %d)" % self.nslots)
        with self._lock:
            self.slot_used[slots] = 0

    def read_slot(self, slot):
        return self.read(int(slot) * PAGE_SIZE, PAGE_SIZE)

    @property
    def used_slots(self):
        return int(np.count_nonzero(self.slot_used))

    @property
    def used_bytes(self):
        return self.used_slots * PAGE_SIZE

    @property
    def free_slots(self):
        return self.nslots - self.used_slots

    def close(self):
        # the slot table stays mapped until this object is collected: a fault thread that looked
        # the store up just before close() may still clear a slot in it
        super().close()

    def __repr__(self):
        return "<HostSwap %d %d slots, %d used%s>" % (self.id, self.nslots, self.used_slots,
                                                     " closed" if self.closed else "")
