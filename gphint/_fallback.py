"""Pure-Python mechanism with the same names as gphint._mech (msgpack-python style).

Selected with GPHINT_PUREPYTHON=1, or automatically when the extension was not built.  It uses
mmap.madvise for per-run discards, a ctypes syscall for process_madvise and mincore, and numpy
for state updates (the GIL makes each numpy update atomic with respect to other Python threads;
there is no C fault thread in this mode, so nothing else writes the state bytes).

One module over the usual size on purpose: it is the twin of the whole of ext/ behind one name
(gphint._mechanism.mech), and its sections follow ext/'s files one for one (discard.c,
lazyfree.c, protocol.c and fill.c, hostops.c, hintq.c), so a change to a C file has one place
to be mirrored.
"""
import ctypes
import ctypes.util
import errno as _errno
import mmap
import os
import time

import numpy as np

from ._version import __version__  # noqa: F401  (same API: the version check passes)
from .batching import batches, whole_batches
from .errors import mechanism_error
from .states import CONTENT_MASK, FLAG_MASK, USAGE_MASK

COMPILED = False
IOV_MAX = 1024
SYS_PROCESS_MADVISE = 440  # x86_64 and the asm-generic table agree on 440
_MADV = {0: mmap.MADV_DONTNEED, 1: getattr(mmap, "MADV_FREE", 8)}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _address(region):
    return np.frombuffer(region, dtype=np.uint8).ctypes.data


def coalesce(pages):
    """Sorted unique page indices -> (n, 2) array of (first_page, npages) runs."""
    pages = np.asarray(pages, dtype=np.int64).reshape(-1)
    if pages.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # Sort and de-duplicate only when needed (callers usually pass sorted pages); np.unique
    # is ~50x slower than this check on 64k already-sorted pages.
    if (np.diff(pages) <= 0).any():
        pages = np.sort(pages)
        pages = pages[np.concatenate(([True], np.diff(pages) != 0))]
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [pages.size]))
    return np.stack([pages[starts], ends - starts], axis=1)


def _mmap_of(region):
    """The mmap object under a numpy view of it, and the view's byte offset inside it."""
    base = region
    while base is not None and not isinstance(base, mmap.mmap):
        # numpy views chain through .base; numpy wraps foreign buffers in a memoryview (.obj)
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is None:
        raise TypeError("region is not a view of an mmap object")
    return base, _address(region) - _address(base)


def _madvise(mm, ps, first, n, adv, stats):
    mapping, offset = mm
    stats[0] += 1
    try:
        mapping.madvise(adv, offset + first * ps, n * ps)
    except OSError as e:
        raise mechanism_error(e.errno, syscall="madvise", first_page=first, npages=n, context="discard") from None


def _submit(region, ps, runs, advice, submit, pidfd):
    adv = _MADV[advice]
    stats = [0]
    if submit == 0:
        mm = _mmap_of(region)
        for first, n in runs.tolist():
            for p in range(first, first + n):
                _madvise(mm, ps, p, 1, adv, stats)
    elif submit == 1:
        mm = _mmap_of(region)
        for first, n in runs.tolist():
            _madvise(mm, ps, first, n, adv, stats)
    elif submit == 2:
        base = _address(region)
        i = 0
        while i < len(runs):
            chunk = runs[i:i + IOV_MAX]
            iov = (_IOVec * len(chunk))()
            for j, (first, n) in enumerate(chunk.tolist()):
                iov[j].iov_base = base + first * ps
                iov[j].iov_len = n * ps
            stats[0] += 1
            done = _libc.syscall(SYS_PROCESS_MADVISE, pidfd, iov, len(chunk), adv, 0)
            if done < 0:
                e = ctypes.get_errno()
                if e in (_errno.EINTR, _errno.EAGAIN):
                    continue
                raise mechanism_error(e, syscall="process_madvise", first_page=int(chunk[0, 0]),
                                      npages=int(chunk[0, 1]), context="discard")
            want = int(chunk[:, 1].sum()) * ps
            if done == want:
                i += len(chunk)
                continue
            covered = np.cumsum(chunk[:, 1] * ps)
            k = int(np.searchsorted(covered, done, side="right"))
            if k == 0:
                raise mechanism_error(_errno.EIO, syscall="process_madvise", first_page=int(chunk[0, 0]),
                                      npages=1, context="no progress")
            i += k
    else:
        raise mechanism_error(_errno.EINVAL, what="submit mode", first_page=submit, context="discard")
    return stats[0]


def _check_bounds(lo, hi, npages, context):
    if lo < 0 or hi >= npages:
        raise mechanism_error(_errno.ERANGE, what="page index", first_page=lo if lo < 0 else hi, npages=1,
                              bound=npages, context=context)


def _mincore(region, page_size, first, npages):
    """uint8 per page of region[first:first+npages] (bit 0: resident), or None if mincore fails."""
    vec = np.zeros(max(npages, 1), dtype=np.uint8)
    out = (ctypes.c_ubyte * vec.size).from_buffer(vec)
    rc = _libc.mincore(ctypes.c_void_p(_address(region) + first * page_size), npages * page_size, out)
    del out
    return vec[:npages] & 1 if rc == 0 else None


def _resident_in(region, page_size, runs):
    """Pages of runs resident just before the advice (ext/discard.c's count_resident)."""
    if runs.size == 0:
        return 0
    lo, hi = int(runs[:, 0].min()), int((runs[:, 0] + runs[:, 1]).max())
    vec = _mincore(region, page_size, lo, hi - lo)
    if vec is None:
        return 0
    return int(sum(int(vec[a - lo:a - lo + n].sum()) for a, n in runs.tolist()))


def _discard(region, page_size, runs, advice, submit, pidfd):
    resident = _resident_in(region, page_size, runs)
    calls = _submit(region, page_size, runs, advice, submit, pidfd)
    total = int(runs[:, 1].sum())
    return (total, calls, len(runs), resident, total if advice == 1 else 0)


def discard_pages(region, page_size, pages, advice, submit, pidfd):
    """Returns (pages, calls, runs, resident, lazy), as the compiled call."""
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size == 0:
        return (0, 0, 0, 0, 0)
    _check_bounds(int(pages.min()), int(pages.max()), len(region) // page_size, "discard")
    return _discard(region, page_size, coalesce(pages), advice, submit, pidfd)


def discard_runs(region, page_size, runs, advice, submit, pidfd):
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if runs.size == 0:
        return (0, 0, 0, 0, 0)
    npages = len(region) // page_size
    if (runs < 0).any() or (runs.sum(axis=1) > npages).any():
        bad = runs[(runs < 0).any(axis=1) | (runs.sum(axis=1) > npages)][0]
        raise mechanism_error(_errno.ERANGE, what="page run", first_page=int(bad[0]), npages=int(bad[1]),
                              bound=npages, context="discard")
    return _discard(region, page_size, runs, advice, submit, pidfd)


# --- lazily freed pages (ext/lazyfree.c, where the rules are explained) ---------------------
LAZY = CONTENT_LAZY = 0x01
RESOLVE = NEXT_RESOLVE = 0xFE
_frames = {}   # state table address -> [region, page_size, reused, reclaimed]


def frames_register(states, region, page_size):
    _frames[_address(states)] = [region, page_size, 0, 0]


def frames_unregister(states):
    _frames.pop(_address(states), None)


def lazy_stats(states):
    f = _frames.get(_address(states))
    return (0, 0) if f is None else (f[2], f[3])


def _resolve_page(states, p, f, keep_present):
    """Xf -> Xr (present: its byte written back, so the kernel keeps it) or Xz (reclaimed).
    No hold is needed: without a fault thread nothing else writes the state bytes meanwhile."""
    region, ps = f[0], f[1]
    vec = _mincore(region, ps, p, 1)
    present = vec is None or bool(vec[0])
    s = int(states[p])
    if not present:
        states[p] = (s & ~0x03) | 0x03
        f[3] += 1
    elif keep_present:
        region[p * ps] = region[p * ps]    # a write: cancels the lazy free
        states[p] = s & ~0x03
        f[2] += 1
    else:
        return False
    return True


def resolve_lazy(states, pages, keep_present):
    f = _frames.get(_address(states))
    if f is None:
        raise mechanism_error(_errno.ENOENT, what="frames registry", npages=len(states), context="resolve_lazy")
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size:
        _check_bounds(int(pages.min()), int(pages.max()), len(states), "resolve_lazy")
    lazy = pages[(states[pages] & 0x03) == LAZY]
    return sum(_resolve_page(states, p, f, keep_present) for p in lazy.tolist())


def _resolve_for_transition(states, pages):
    """The guest's transitions take lazily freed pages back first; False: table not registered."""
    f = _frames.get(_address(states))
    if f is None:
        return False
    for p in pages.tolist():
        _resolve_page(states, p, f, True)
    return True


def set_usage(states, pages, usage, next_table):
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size == 0:
        return (0, -1, 0)
    bad = np.flatnonzero((pages < 0) | (pages >= len(states)))
    if bad.size:
        return (-_errno.ERANGE, int(bad[0]), 0)
    old = states[pages]
    nxt = next_table[((old & 0x0F).astype(np.int64) << 2) | (int(usage) >> 2)]
    bad = np.flatnonzero(nxt == 0xFF)
    if bad.size:
        return (-_errno.EPERM, int(bad[0]), int(old[bad[0]]))
    resolve = nxt == RESOLVE
    if resolve.any():
        if not _resolve_for_transition(states, pages[resolve]):
            i = int(np.flatnonzero(resolve)[0])
            return (-_errno.EPERM, i, int(old[i]))
        old = states[pages]
        nxt = next_table[((old & 0x0F).astype(np.int64) << 2) | (int(usage) >> 2)]
    states[pages] = (old & 0xF0) | nxt
    return (int(pages.size), -1, 0)


def set_content(states, pages, content):
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size:
        _check_bounds(int(pages.min()), int(pages.max()), len(states), "set_content")
    states[pages] = (states[pages] & ~np.uint8(0x03)) | np.uint8(content & 0x03)
    return int(pages.size)


def residency(region, page_size, vec):
    npages = len(region) // page_size
    if npages == 0:
        return 0
    out = (ctypes.c_ubyte * npages).from_buffer(vec)
    if _libc.mincore(ctypes.c_void_p(_address(region)), npages * page_size, out) != 0:
        raise mechanism_error(ctypes.get_errno(), syscall="mincore", first_page=0, npages=npages, context="residency")
    del out
    vec[:npages] &= 1
    return int(vec[:npages].sum())



def residency_track(region, page_size, vec, resident, since_tick, ever, tick):
    """The host's residency sample of one guest (ext/hostops.c, gph_residency_track): mincore
    into vec, then resident (uint8 0/1), since_tick (= tick where a page arrived) and ever
    updated.  Returns the resident count."""
    npages = len(region) // page_size
    if min(len(vec), len(resident), len(since_tick), len(ever)) < npages:
        raise ValueError("residency arrays shorter than the %d pages of the region" % npages)
    if npages == 0:
        return 0
    residency(region, page_size, vec)
    now = vec[:npages]
    since_tick[:npages][(now != 0) & (resident[:npages] == 0)] = tick
    resident[:npages] = now
    ever[:npages] |= now
    return int(np.count_nonzero(now))

# --- the guest side of the state protocol and page-cache I/O (ext/protocol.c, ext/fill.c) ------
# No fault thread exists in this mechanism, so nothing else holds pages: numpy is enough.
VZ = 0x0C | 0x03     # VOLATILE | ZERO: a discarded cache page


def make_stable(states, pages, out):
    """Make pages STABLE; discarded VOLATILE pages (Vz) go to out instead.  Returns how many."""
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size:
        _check_bounds(int(pages.min()), int(pages.max()), len(states), "make_stable")
    lazy = pages[(states[pages] & 0x03) == LAZY]
    if lazy.size and not _resolve_for_transition(states, lazy):
        raise mechanism_error(_errno.EPERM, what="make_stable: lazily freed page of unregistered frames",
                              first_page=int(lazy[0]), npages=1, context="make_stable")
    s = states[pages]
    vz = (s & 0x0F) == VZ
    n = int(np.count_nonzero(vz))
    out[:n] = pages[vz]
    keep = pages[~vz]
    content = states[keep] & 0x03
    # a POT_VOLATILE page is always resident (Pp/Pz are invalid): it becomes Sr
    states[keep] = np.where((states[keep] & 0x0C) == 0x08, 0, content).astype(np.uint8)
    return n


def _runs_with_offsets(idx, offs, ps):
    """Yield ((first_page, first_offset), npages) for runs contiguous in pages and offsets."""
    if idx.size == 0:
        return
    brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(offs) != ps)) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [idx.size]))
    for a, b in zip(starts.tolist(), ends.tolist()):
        yield (int(idx[a]), int(offs[a])), b - a


def _page_io(to_file, region, ps, pages, fd, offsets):
    for first, n in _runs_with_offsets(np.asarray(pages, dtype=np.int64), np.asarray(offsets, dtype=np.int64), ps):
        view = memoryview(region[first[0] * ps:(first[0] + n) * ps])
        off, done = int(first[1]), 0
        while done < n * ps:
            if to_file:
                got = os.pwrite(fd, view[done:], off + done)
            else:
                try:
                    got = os.preadv(fd, [view[done:]], off + done)
                except OSError as e:
                    # O_DIRECT (--cache none): EINVAL after an unaligned short read is EOF,
                    # as ext/stores.c gph_direct_eof_ rules
                    if e.errno != _errno.EINVAL or done % 512 == 0:
                        raise
                    got = 0
                if got == 0:
                    view[done:] = bytes(len(view) - done)   # past EOF: zeros
                    break
            done += got
    return (len(pages), 0)


def fill_from_file(region, page_size, pages, fd, offsets, force_bounce=False):
    """Read whole pages of fd at offsets into frames pages.  Returns (pages, bounced)."""
    return _page_io(False, region, page_size, pages, fd, offsets)


def write_to_file(region, page_size, pages, fd, offsets, force_bounce=False):
    """Write frames pages to fd at offsets.  Returns (pages, bounced)."""
    return _page_io(True, region, page_size, pages, fd, offsets)


# --- the host side of the state protocol (ext/hostops.c) ---------------------------------------
SP, SZ = 0x02, 0x03   # STABLE | PRESERVED, STABLE | ZERO


def host_discard_uv(states, pages, advice):
    """The host's UNUSED/VOLATILE discard (ext/hostops.c, gph_host_discard: pick_run -> madvise
    -> finish_run) read in Python on a state table nobody writes meanwhile: each asked page that
    is unheld, UNUSED or VOLATILE, and resident -- or lazily freed, under advice 0
    (MADV_DONTNEED; MADV_FREE would change nothing on those) -- is taken: content ZERO, or LAZY
    under advice 1 (MADV_FREE).  Every other page keeps its byte exactly, whatever its
    neighbours (the C claims 8 bytes per CAS only when all 8 are one pickable value).  The
    madvise is not made here.  Returns the pages taken, ascending.  Nothing calls it at run
    time (without the compiled fault service the host discards UNUSED pages only, unpicked:
    gphint.discard.Unserved); the tests hold the C to it."""
    pages = np.unique(np.asarray(pages, dtype=np.int64))
    s = states[pages]
    usage, content = s & USAGE_MASK, s & CONTENT_MASK
    ok_content = (content == 0) | ((content == 1) & (advice == 0))
    take = ((s & FLAG_MASK) == 0) & ((usage == 0x04) | (usage == 0x0C)) & ok_content
    taken = pages[take]
    states[taken] = (states[taken] & USAGE_MASK) | (1 if advice == 1 else 3)
    return taken



def host_candidates(states, resident, usage_mask, advice):
    """bool per page: what the host's reclaim-tier call (ext/hostops.c, gph_host_take /
    gph_host_count) counts as a candidate -- unheld, usage code u with bit 1 << u in usage_mask,
    content RESIDENT (or LAZY under advice 0, MADV_DONTNEED), and resident[p] set."""
    usage = (states & USAGE_MASK) >> 2
    content = states & CONTENT_MASK
    ok_content = (content == 0) | ((content == 1) & (advice == 0))
    in_mask = ((np.uint8(usage_mask) >> usage) & 1).astype(bool)
    return ((states & FLAG_MASK) == 0) & in_mask & ok_content & (np.asarray(resident) != 0)


def host_take(states, resident, usage_mask, advice, need):
    """gph_host_take read in Python on a state table nobody writes meanwhile: the first `need`
    candidates (host_candidates) in page order are chosen and cleared in resident, and -- no
    one racing the pick -- all taken: content ZERO, or LAZY under advice 1.  Every other byte
    keeps its value.  The madvise is not made here.  Returns the pages taken, ascending.
    Nothing calls it at run time (the host's one-call tier needs the compiled fault service);
    the tests hold the C to it."""
    chosen = np.flatnonzero(host_candidates(states, resident, usage_mask, advice))[:max(int(need), 0)]
    resident[chosen] = 0
    states[chosen] = (states[chosen] & USAGE_MASK) | (1 if advice == 1 else 3)
    return chosen.astype(np.int64)

def drop_preserved(states, pages, swap_store, swap_slot, slot_tables):
    """The host's Sp -> Sz (ext/hostops.c, gph_host_drop_preserved) read in Python: each page
    exactly Sp -- not held, no other state -- gives its swap copy up: its slot is freed in
    slot_tables[its store id] (the C reaches the same table through the store registry), its
    record cleared, its content ZERO.  Other pages are left alone.  Returns pages dropped.
    Nothing calls it at run time (without the compiled fault service nothing is preserved);
    the tests hold the C to it."""
    dropped = 0
    for p in np.asarray(pages, dtype=np.int64).tolist():
        if states[p] != SP:
            continue
        store = int(swap_store[p])
        if store:
            table = slot_tables.get(store)
            slot = int(swap_slot[p])
            if table is not None and 0 <= slot < table.size:
                table[slot] = 0
            swap_store[p] = 0
        states[p] = SZ
        dropped += 1
    return dropped


# --- the guest's hint queue (ext/hintq.c) -------------------------------------------------------
NO_PENDING = 0xFF


class HintQueue:
    """Pure-Python twin of the compiled HintQueue (ext/hintq.c, where the rules are explained):
    the same requests, invariant, whole-batch submission and refused list, on numpy; the
    batching rule is gphint.batching's (whole_batches while filling, batches per state change).
    Requests of a few pages run on Python scalars: a numpy call costs more than such a
    request's work."""

    SMALL = 8

    def __init__(self, states, pending, next_table, ops_total, capacity):
        if capacity < 1:
            raise ValueError("capacity must be >= 1, got %d" % capacity)
        if len(states) == 0 or len(pending) != len(states):
            raise ValueError("pending has %d entries for %d pages" % (len(pending), len(states)))
        self._states, self._pending, self._next, self._ops = states, pending, next_table, ops_total
        self._states_mv, self._pending_mv = memoryview(states), memoryview(pending)
        self.capacity = int(capacity)
        self._queue = []           # arrays of deferred pages, oldest first; dead entries allowed
        self.queued = 0            # entries in _queue
        self.npending = 0
        self.hint_ops = self.transitions = self.cancelled = 0
        self._refused = []         # (pages, usage)
        self._unused_since = None  # per page: when it was made UNUSED (record_unused)
        self.now_ns = -1

    def record_unused(self, since_ns, now_ns=-1):
        if len(since_ns) != len(self._states):
            raise ValueError("since_ns has %d entries for %d pages" % (len(since_ns), len(self._states)))
        self._unused_since, self.now_ns = since_ns, int(now_ns)

    def _record_unused(self, pages):
        # before the state bytes change, as the C queue does (ext/hintq.c, record_unused)
        self._unused_since[pages] = self.now_ns if self.now_ns >= 0 else time.monotonic_ns()

    def hint(self, pages, usage):
        if usage & ~0x0C:                 # checked first, as the C call does, even for no pages
            raise mechanism_error(_errno.EINVAL, what="usage state", first_page=usage, context="hint queue")
        pages = np.asarray(pages, dtype=np.int64)
        n = pages.size
        if n == 0:
            return self._nrefused()
        self._check_range(pages)
        if n <= self.SMALL:
            now, deferred = self._classify_small(pages.tolist(), usage)
        else:
            now, deferred = self._classify(pages, usage)
        if now.size:
            self._apply(now, usage)
        if deferred.size:
            self._queue.append(deferred)
            self.queued += deferred.size
        self.submit(whole_batches_only=True)
        return self._nrefused()

    def _classify_small(self, pages, usage):
        states, pend = self._states_mv, self._pending_mv
        now, deferred = [], []
        for p in pages:
            cur = states[p] & 0x0C
            if cur:                       # not STABLE: nothing pending, apply now unless a no-op
                if cur != usage:
                    now.append(p)
                continue
            was = pend[p]
            if usage == 0:
                if was != NO_PENDING:
                    pend[p] = NO_PENDING
                    self.npending -= 1
                    self.cancelled += 1
                continue
            if was == NO_PENDING:
                self.npending += 1
                deferred.append(p)
            else:
                self.cancelled += 1
            pend[p] = usage
        return np.array(now, dtype=np.int64), np.array(deferred, dtype=np.int64)

    def _classify(self, pages, usage):
        cur = self._states[pages] & 0x0C
        stable = cur == 0
        now = pages[~stable & (cur != usage)]
        pages = pages[stable]
        was = self._pending[pages]
        had = was != NO_PENDING
        nhad = int(np.count_nonzero(had))
        if usage == 0:
            self._pending[pages[had]] = NO_PENDING
            self.npending -= nhad
            self.cancelled += nhad
            return now, pages[:0]
        self.cancelled += nhad
        self.npending += pages.size - nhad
        self._pending[pages] = usage
        return now, pages[~had]

    def make_stable(self, pages):
        pages = np.asarray(pages, dtype=np.int64)
        if pages.size == 0:
            return pages[:0].copy()
        self._check_range(pages)
        cur = self._states[pages] & 0x0C
        stable = pages[cur == 0]
        had = stable[self._pending[stable] != NO_PENDING]
        self._pending[had] = NO_PENDING          # still STABLE: cancelling is the whole change
        self.npending -= had.size
        self.cancelled += had.size
        now = pages[cur != 0]
        out = np.empty(now.size, dtype=np.int64)
        ndisc = 0
        for lo, hi in batches(now.size, self.capacity):
            chunk = now[lo:hi]
            n = make_stable(self._states, chunk, out[ndisc:])
            ndisc += n
            self.hint_ops += 1
            self._ops[0] += 1
            self.transitions += chunk.size - n
        return out[:ndisc]

    def _check_range(self, pages):
        _check_bounds(int(pages.min()), int(pages.max()), len(self._states), "hint queue")

    def _apply(self, pages, usage):
        for lo, hi in batches(pages.size, self.capacity):
            chunk = pages[lo:hi]
            if usage == 0x04 and self._unused_since is not None:
                self._record_unused(chunk)
            if set_usage(self._states, chunk, usage, self._next)[0] < 0:
                self._refused.append((chunk.copy(), usage))
                continue
            self.hint_ops += 1
            self._ops[0] += 1
            self.transitions += chunk.size

    def submit(self, whole_batches_only=False):
        cap = self.capacity
        ngo = whole_batches(self.npending, cap) if whole_batches_only else self.npending
        if ngo:
            queued = np.concatenate(self._queue) if len(self._queue) > 1 else self._queue[0]
            live = np.flatnonzero(self._pending[queued] != NO_PENDING)
            if live.size == self.npending:
                # every pending page has a live entry, so equal counts mean one entry each
                go = queued[live[:ngo]]
                end = int(live[ngo - 1]) + 1
            else:
                # a page deferred, cancelled and deferred again has two live entries: take each
                # page once, in queue order (np.unique's first index of each)
                entries = queued[live]
                _, first = np.unique(entries, return_index=True)
                first = np.sort(first)[:ngo]
                go = entries[first]
                end = int(live[first[-1]]) + 1
            targets = self._pending[go]
            self._pending[go] = NO_PENDING
            self.npending -= ngo
            rest = queued[end:] if self.npending else queued[:0]
            self._queue = [rest] if rest.size else []
            self.queued = rest.size
            for u in (0x04, 0x08, 0x0C):
                sel = go[targets == u]
                if sel.size:
                    self._apply(sel, u)
        if self.queued > 4 * cap + 1024:
            self._compact()
        return self._nrefused()

    def _compact(self):
        queued = np.concatenate(self._queue) if self._queue else np.zeros(0, np.int64)
        live = queued[self._pending[queued] != NO_PENDING]
        if live.size:                       # the first entry of each page, in order
            _, first = np.unique(live, return_index=True)
            live = live[np.sort(first)]
        self._queue = [live] if live.size else []
        self.queued = live.size

    def _nrefused(self):
        return sum(p.size for p, _ in self._refused)

    def take_refused(self):
        refused, self._refused = self._refused, []
        if not refused:
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        return (np.concatenate([p for p, _ in refused]),
                np.concatenate([np.full(p.size, u, np.uint8) for p, u in refused]))
