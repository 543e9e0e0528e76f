"""Backing stores: where a discarded page's content lives (UMap's Store: read page-sized data at
an offset -- the only thing the reload path knows about files).

    FileStore(path)           a guest's backing file, opened read-only; discarded VOLATILE pages
                              reload from it (mem.set_backing records page -> (store, offset))
    HostSwap(size, path=None) the host's swap: a real file (an unlinked temp file by default) with
                              a slot allocator; the fault thread frees a slot after a swap-in

Every store has an id > 0, entered in the C store table (compiled mechanism) so the fault thread
can find its fd without Python.  Ids are recycled after close().
"""
import errno
import mmap
import os
import resource
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


# --- the open-file budget --------------------------------------------------------------------
# The fault thread reads a discarded page's backing file through the store's fd, without Python,
# so a file store stays open while any page records it: open files grow with the files guests
# hold in their caches.  gphint raises its soft RLIMIT_NOFILE to the hard limit (the soft limit
# exists for programs that select(); gphint polls), and callers ask fd_room() before opening
# one more store, so that shortage is met by closing stores nobody records, not by EMFILE.

_nofile = {"raised": False, "since_count": 0, "slack": 0}


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit (once per process); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if not _nofile["raised"]:
        _nofile["raised"] = True
        if hard == resource.RLIM_INFINITY or hard > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass                     # keep the limit we have; fd_room() works within it
    return soft


def open_fds():
    """Open file descriptors of this process now (the kernel's count, /proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1    # less the one listdir itself holds
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):    # not even one more: all are open
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return 0


def fd_room(reserve):
    """May one more store be opened while `reserve` fds stay free for everything else?  Counts
    the process's open fds only now and then: after half the room seen at the last count."""
    soft = raise_nofile_limit()
    if soft == resource.RLIM_INFINITY:
        return True
    if _nofile["since_count"] < _nofile["slack"]:
        _nofile["since_count"] += 1
        return True
    room = soft - open_fds() - reserve
    _nofile["since_count"], _nofile["slack"] = 0, max(room // 2, 0)
    return room > 0


def nofile_error(e, path):
    """e (an OSError opening path) as an error that names the file; for EMFILE/ENFILE also the
    limit and how to raise it."""
    if e.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return GphintError("opening %s: %s (%d files open, RLIMIT_NOFILE %d): raise the limit "
                           "(ulimit -n %d) or run fewer guests"
                           % (path, e.strerror, open_fds(), soft, 2 * max(soft, 1024)))
    return OSError(e.errno, "%s: %s" % (path, e.strerror))


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

    def __init__(self, fd, slot_used=None, digest=None):
        self.fd = fd
        self.id = _take_id()
        if mech.COMPILED:
            try:
                mech.store_set(self.id, fd, slot_used, digest)
            except BaseException:
                _give_id(self.id)
                raise

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


# A page two guests read with different bytes (the file changed between their reads): neither
# record can stand for both, so the page reloads for nobody.  Even, so never a digest (bit 0 set).
CONFLICTING_DIGEST = np.uint64(2)


class FileStore(Store):
    """A read-only regular file backing discarded VOLATILE pages: FileStore("/path/to/file").

    It carries the content record of the file's pages: record(offsets, digests) notes the digest
    (gphint.guest.content.page_digest) of what a guest read from, or wrote to, each page.  The
    fault thread checks every reload against it: a page whose bytes changed since (the file was
    rewritten or truncated in place) is lost -- served as zeros, counted in lost_pages and raised
    by FaultService.check() -- never served as foreign bytes.  Renaming or unlinking the file
    changes nothing: the fd still reads the same inode.  A write through gphint itself records
    the new digest of the pages it wrote (and only those change), so it is never taken for a
    foreign change.  `sharers`: guests recording against this store (see record)."""

    kind = "file store"

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            fd = _open_for_reads(self.path)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise nofile_error(e, self.path) from None
            raise ConfigError("backing file %r: %s" % (self.path, e.strerror)) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ConfigError("backing file %r is not a regular file" % self.path)
        self.size_bytes = st.st_size
        self.direct_io = _is_direct(fd)
        self.sharers = 1
        # every table ever handed to the fault thread stays mapped until close(): a reload
        # that loaded the old pointer just before a growth may still read it
        self._digest_maps = []
        self.digest = self._digest_table(max(-(-st.st_size // PAGE_SIZE), 1))
        try:
            super().__init__(fd, digest=self.digest)
        except BaseException:
            os.close(fd)
            raise

    def _digest_table(self, npages):
        m = mmap.mmap(-1, npages * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._digest_maps.append(m)
        return np.frombuffer(m, dtype=np.uint64, count=npages)

    def record(self, offsets, digests):
        """The guest now holds these digests for the pages at byte offsets (page-aligned): what
        it read from the file there, or wrote there.  With more than one sharer, a page already
        recorded with other bytes becomes CONFLICTING_DIGEST (lost on reload for every guest:
        the file changed between their reads)."""
        self._check_open()
        pages = np.asarray(offsets, dtype=np.int64).reshape(-1) // PAGE_SIZE
        digests = np.asarray(digests, dtype=np.uint64).reshape(-1)
        if pages.size == 0:
            return
        need = int(pages.max()) + 1
        if need > self.digest.size:
            grown = self._digest_table(max(need, 2 * self.digest.size))
            grown[:self.digest.size] = self.digest
            if mech.COMPILED:
                mech.store_set_digests(self.id, grown)
            self.digest = grown
        if self.sharers > 1:
            old = self.digest[pages]
            digests = np.where((old != 0) & (old != digests), CONFLICTING_DIGEST, digests)
        self.digest[pages] = digests

    # close(): the digest tables stay mapped until this object is collected, as a swap store's
    # slot table does: a fault thread that looked the store up just before may still read one

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
