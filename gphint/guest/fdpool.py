"""The guests' file descriptors: one process-wide pool, leased for one I/O at a time.

A guest reads its files, writes them back and swaps through real fds, but holds none between
two operations: a handful per guest (an LRU of its files, its swap file) is what kept 512
guests from fitting in the 1024 fds of `ulimit -n 1024`.  Every such I/O leases an fd here,
`with POOL.lease(path, flags) as fd: ...`, for as long as its syscalls run.  The pool closes
only fds nobody leases, so a lease never sees its fd closed and its number reused by another
open (another guest's thread may be between its lease and its pread).  Leases of one
(path, flags) share one fd -- pread/pwrite name their offset -- so guests that read one file
tree (the fleet's shared file set) also share its fds.  An fd is reused only while its path
still names the file it opened (same st_dev and st_ino): a path deleted and created again
must not be read through the old, unlinked inode.

Not here: the fds the fault thread reads without Python (backing stores, gphint.stores), which
stay open while a page records them.
"""
import collections
import contextlib
import errno
import os
import threading

CAPACITY_MIN = 4              # idle fds kept however low the limit
CAPACITY_MAX = 64             # ... and however high: more buys nothing (few files are hot at once)
LIMIT_SHARE = 16              # at most 1/16 of the soft RLIMIT_NOFILE


def capacity_for(soft_limit):
    """Idle fds the pool keeps under this soft RLIMIT_NOFILE (None: unlimited)."""
    if soft_limit is None:
        return CAPACITY_MAX
    return max(CAPACITY_MIN, min(CAPACITY_MAX, soft_limit // LIMIT_SHARE))


class FdPool:
    """Open fds keyed by (path, flags), least recently used first; capacity bounds the entries
    kept while nobody leases them (leased ones may exceed it: one per concurrent I/O)."""

    def __init__(self, capacity=None):
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()   # (path, flags) -> [fd, leases, (dev, ino)]
        self._capacity = capacity
        self.stats = {"opened": 0, "closed": 0, "hits": 0, "stale": 0}

    @property
    def capacity(self):
        if self._capacity is None:
            from ..stores import raise_nofile_limit
            from resource import RLIM_INFINITY
            soft = raise_nofile_limit()
            self._capacity = capacity_for(None if soft == RLIM_INFINITY else soft)
        return self._capacity

    def open_count(self):
        with self._lock:
            return len(self._entries)

    @contextlib.contextmanager
    def lease(self, path, flags):
        """An fd of path opened with flags (O_CLOEXEC added), valid until the block ends."""
        key = (os.fspath(path), flags)
        entry = self._acquire(key)
        try:
            yield entry[0]
        finally:
            self._release(key, entry)

    def _acquire(self, key):
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not self._names_its_file(key[0], entry):
                self._entries.pop(key)       # the path names another file now (or none)
                if entry[1] == 0:
                    self._close(entry)       # a leased one closes when its last lease ends
                self.stats["stale"] += 1
                entry = None
            if entry is not None:
                entry[1] += 1
                self._entries.move_to_end(key)
                self.stats["hits"] += 1
                return entry
            self._trim(self.capacity - 1)
        fd = self._open(key)
        st = os.fstat(fd)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[2] == (st.st_dev, st.st_ino):
                entry[1] += 1                # another thread opened it meanwhile: use that one
                os.close(fd)
                return entry
            if entry is not None:            # ... and an older file under the path: leave it
                self._entries.pop(key)       # to its leases, which close it when they end
                if entry[1] == 0:
                    self._close(entry)
            entry = self._entries[key] = [fd, 1, (st.st_dev, st.st_ino)]
            self.stats["opened"] += 1
            return entry

    @staticmethod
    def _names_its_file(path, entry):
        """Does path still name the inode entry's fd opened?  One stat(2) per lease (~2 us
        from Python on this 2-core VM), beside a pread that goes to disk (--cache none's
        O_DIRECT) or swap I/O: a price for never reading an unlinked file by its old name."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == entry[2]

    def _open(self, key):
        """open(2); out of fds, the idle ones are given back and it is tried once more.  An
        error names the file (and, for EMFILE, the limit and how to raise it)."""
        from ..stores import nofile_error
        path, flags = key
        for attempt in (0, 1):
            try:
                return os.open(path, flags | os.O_CLOEXEC)
            except OSError as e:
                if attempt or e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise nofile_error(e, path) from None
            with self._lock:
                self._trim(0)

    def _release(self, key, entry):
        with self._lock:
            entry[1] -= 1
            if self._entries.get(key) is not entry:      # forgotten while leased
                if entry[1] == 0:
                    self._close(entry)
            elif len(self._entries) > self.capacity:
                self._trim(self.capacity)

    def _trim(self, keep):
        """Close idle entries, oldest first, until at most keep remain (lock held)."""
        for key in [k for k, e in self._entries.items() if e[1] == 0]:
            if len(self._entries) <= keep:
                break
            self._close(self._entries.pop(key))

    def _close(self, entry):
        try:
            os.close(entry[0])
        except OSError:
            pass
        entry[0] = -1
        self.stats["closed"] += 1

    def forget(self, prefix):
        """Close the fds of paths under prefix (a file set or swap file going away); a leased
        one closes when its lease ends."""
        prefix = os.fspath(prefix)
        with self._lock:
            for key in [k for k in self._entries if k[0] == prefix or k[0].startswith(prefix + os.sep)]:
                entry = self._entries.pop(key)
                if entry[1] == 0:
                    self._close(entry)


POOL = FdPool()
