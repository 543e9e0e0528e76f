"""The backing stores a guest's discard faults reload from, within the process's fd budget.

Each file whose pages may become VOLATILE needs an open FileStore (a slot in the process-wide C
store table and an fd) for as long as a frame records it; the budget below shares both among
the live guests.
"""
import threading
from resource import RLIM_INFINITY

import numpy as np

from ..errors import ConfigError
from ..stores import FileStore, fd_room, raise_nofile_limit
from .fdpool import POOL

MAX_STORES_PER_GUEST = 2048  # backing files a guest may reference (the C store table is shared)

# Guests that read one tree (a shared file set, files=DIR) share one read-only FileStore per
# file: store ids are a process-wide C table (gphint.stores.MAX_STORES), and a file's content
# is the same whichever guest reloads from it.  path -> [store, references]
_SHARED_STORES = {}
_SHARED_LOCK = threading.Lock()


def _store_is_open(path):
    """Another guest already holds this file's store: sharing it costs no fd."""
    with _SHARED_LOCK:
        return path in _SHARED_STORES


def _shared_store(path):
    with _SHARED_LOCK:
        entry = _SHARED_STORES.get(path)
        if entry is None:
            try:
                entry = _SHARED_STORES[path] = [FileStore(path), 0]
            except ConfigError:
                return None
        entry[1] += 1
        entry[0].sharers = entry[1]          # record() keeps a conflicting read from passing
        return entry[0]


def _release_store(path):
    with _SHARED_LOCK:
        entry = _SHARED_STORES.get(path)
        if entry is not None:
            entry[1] -= 1
            entry[0].sharers = max(entry[1], 1)
            if entry[1] == 0:
                del _SHARED_STORES[path]
                entry[0].close()

# Open files: a store stays open while a frame records it (the fault thread may need it), and is
# closed once none does.  When the process runs short of fds (gphint.stores.fd_room) the epoch
# goes up and every guest, at its next store look-up, closes the stores none of its frames
# records (each guest only its own: another guest's thread may be between look-up and record).
# A guest holds no other fd of its own between operations: its file and swap I/O lease theirs
# from one process-wide pool (gphint.guest.fdpool), whose capacity is reserved here.
_FD_RESERVE = 64                 # fds kept free for the process itself (uffd, /proc reads, ...)
FDS_PER_GUEST = 1                # what a guest needs at least: one store of its own (its swap
#                                  file's or an overlay copy's), or its hints are all refused
_sweep_epoch = [0]
_live_guests = [0]


def fds_needed(nguests):
    """Open files a process of nguests guests needs at least (check_fd_limit)."""
    return _FD_RESERVE + POOL.capacity + FDS_PER_GUEST * int(nguests)


def check_fd_limit(nguests, option="--guests"):
    """Before a run: ConfigError (one line: the guests, the fds needed, the limit, the remedy)
    when nguests guests cannot fit in RLIMIT_NOFILE even after gphint raises the soft limit
    to the hard one -- so that a run never meets EMFILE half-way."""
    soft = raise_nofile_limit()
    if soft == RLIM_INFINITY:
        return
    need = fds_needed(nguests)
    if need > soft:
        raise ConfigError("%s %d needs at least %d open files, but RLIMIT_NOFILE is %d: raise it "
                          "(ulimit -n %d) or run fewer guests" % (option, nguests, need, soft,
                                                                  max(need, 2 * soft)))


class StoreBudget:
    """Guest's store look-up and release (a mixin: it uses the guest's fault service, memory,
    stats and its own `_stores` map, path -> store)."""

    def _store_for(self, path):
        """The FileStore the fault service reloads a discarded page of `path` from; None when
        there is no service, or no store id or file descriptor left even after closing the
        stores no frame records (those pages then stay STABLE, counted in stores_refused)."""
        if self.fault_service is None:
            return None
        if self._swept_epoch != _sweep_epoch[0]:
            self._release_unrecorded()
        store = self._stores.get(path)
        if store is None:
            if not (_store_is_open(path) or self._room_for_store()):
                self.stats["stores_refused"] += 1
                return None
            store = _shared_store(path)
            if store is None:                # the process-wide store table is full
                self.stats["stores_refused"] += 1
                return None
            self._stores[path] = store
            self.stats["stores_opened"] += 1
        return store

    def _own_stores(self):
        """Stores only this guest holds: the fds its share is counted in."""
        return sum(1 for st in self._stores.values() if st.sharers <= 1)

    def _room_for_store(self):
        """May this guest open a store (one more fd) now?  Within its share, after closing
        its unrecorded stores if needed, and while the process keeps its reserve free."""
        limit = self._store_share()
        if self._own_stores() >= limit:
            self._release_unrecorded()
            if self._own_stores() >= limit:
                return False
        reserve = _FD_RESERVE + POOL.capacity
        if not fd_room(reserve):
            _sweep_epoch[0] += 1
            self._release_unrecorded()
            if not fd_room(reserve):
                return False
        return True

    @staticmethod
    def _store_share():
        """Stores one guest may hold alone: an equal share of the fds the process may open, so
        the first guest to fill its cache does not leave the others without any."""
        soft = raise_nofile_limit()
        if soft == RLIM_INFINITY:
            return MAX_STORES_PER_GUEST
        guests = max(_live_guests[0], 1)
        share = (soft - _FD_RESERVE - POOL.capacity) // guests
        return max(min(share, MAX_STORES_PER_GUEST), FDS_PER_GUEST)

    def _release_unrecorded(self):
        """Close (release) this guest's stores that no frame's backing record names."""
        self._swept_epoch = _sweep_epoch[0]
        recorded = set(np.unique(self.mem.backing_store).tolist())
        for path, store in list(self._stores.items()):
            if store.id not in recorded:
                del self._stores[path]
                _release_store(path)
                self.stats["stores_closed"] += 1
