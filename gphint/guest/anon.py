"""Guest processes' anonymous memory, the guest's swap file and its swap cache (patch 4).

Anonymous pages are STABLE: they have no backing the host could reload them from.  When the
guest swaps one out, it writes it to its swap file (a real file, real writes) and keeps the
frame as a clean swap-cache page, which is VOLATILE: backed by the swap slot, the host may
discard it.  An access (swap-in) makes the page STABLE *before* the slot is freed -- if the
host discarded it meanwhile, the content is reloaded from the slot (transparent mode) or read
again from the swap file into a new frame (guest-visible mode).  mlocked pages are never
swapped out and so never leave STABLE (patch 5).

A process's pages are named by virtual page numbers; content is content.generate(seed,
ANON_KEY_BASE + pid, vpage, version).
"""
import os
import tempfile
import weakref

import numpy as np

from .. import tmpfiles
from ..errors import ConfigError, GphintError
from . import content
from .content import ANON_KEY_BASE, PAGE_SIZE
from .fdpool import POOL
from .files import pread_into
from .frames import ANON, FLAG_DTYPE, MLOCKED, SWAPCACHE, UPTODATE
from .guestpart import GuestPart, mark_touched, set_backing


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# Content is generated this many pages (1 MiB) at a time: a guest's write of its whole buffer
# pool would otherwise build the pool's content twice over in numpy temporaries (the result and
# _mix's shifted copy) -- tens of MiB of host memory that is neither guest memory nor part of
# the run's baseline, charged to its memory cgroup while the guest writes.
CONTENT_CHUNK_PAGES = 256

class SwapFile:
    """The guest's swap device: a real file of nslots page slots and a slot bitmap.  It holds no
    fd between swap I/Os: `with swap.opened() as fd` leases one (gphint.guest.fdpool)."""

    def __init__(self, nslots, path=None):
        if path is None:
            fd, path = tempfile.mkstemp(prefix=tmpfiles.prefix("gswap"))
            # dropped without close() (or at exit): the temporary swap file still goes away
            self._cleanup = weakref.finalize(self, _unlink, path)
        else:
            self._cleanup = None
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, nslots * PAGE_SIZE)
        finally:
            os.close(fd)
        self.path = path
        self._open = True
        self.used = np.zeros(nslots, dtype=bool)
        self.stats = {"slots_allocated": 0, "slots_freed": 0}

    @property
    def nslots(self):
        return self.used.size

    @property
    def free_slots(self):
        return int(self.used.size - np.count_nonzero(self.used))

    def alloc(self, n):
        free = np.flatnonzero(~self.used)[:n]
        if free.size < n:
            raise GphintError("guest swap full: %d slots wanted, %d free of %d"
                              % (n, free.size, self.used.size))
        self.used[free] = True
        self.stats["slots_allocated"] += n
        return free.astype(np.int64)

    def free(self, slots):
        slots = np.asarray(slots, dtype=np.int64)
        if not self.used[slots].all():
            raise GphintError("double free of guest swap slot %d" % int(slots[~self.used[slots]][0]))
        self.used[slots] = False
        self.stats["slots_freed"] += int(slots.size)

    def opened(self):
        if not self._open:
            raise GphintError("guest swap file %s is closed" % self.path)
        return POOL.lease(self.path, os.O_RDWR)

    def close(self):
        if self._open:
            self._open = False
            POOL.forget(self.path)
        if self._cleanup is not None:
            self._cleanup()


class AnonMemory(GuestPart):
    """Anonymous memory of the guest's processes, swapped to a SwapFile through a swap cache."""

    def __init__(self, mem, table, hinter, alloc_frames, free_frames, *, swap, heap=None, **kw):
        super().__init__(mem, table, hinter, alloc_frames, free_frames, **kw)
        self.swap = swap
        self.heap = heap          # a THP guest's placement in huge pages (gphint.guest.thp.ThpHeap)
        self._procs = {}          # pid -> dict of per-vpage arrays
        self.stats = {"allocated": 0, "freed": 0, "swap_out": 0, "swap_in": 0,
                      "swapcache_hits": 0, "swapcache_dropped": 0, "reloaded": 0}

    # --- per-process tables ------------------------------------------------------------------
    def _proc(self, pid, need=0):
        pr = self._procs.get(pid)
        if pr is None:
            pr = self._procs[pid] = {"next": 0, "frame": np.full(0, -1, np.int64),
                                     "slot": np.full(0, -1, np.int64), "version": np.zeros(0, np.int64),
                                     "live": np.zeros(0, bool)}
        if pr["frame"].size < need:
            size = max(need, 2 * pr["frame"].size, 256)
            for key, fill in (("frame", -1), ("slot", -1), ("version", 0), ("live", False)):
                old = pr[key]
                new = np.full(size, fill, dtype=old.dtype)
                new[:old.size] = old
                pr[key] = new
        return pr

    def _vpages(self, pid, vpages):
        if pid not in self._procs:
            raise ConfigError("no guest process %r" % (pid,))
        pr = self._procs[pid]
        v = np.atleast_1d(np.asarray(vpages))
        if v.size and v.dtype.kind not in "iu":
            raise ConfigError("anonymous pages must be integer page numbers, got dtype %s" % v.dtype)
        v = v.astype(np.int64).reshape(-1)
        if v.size and (v.min() < 0 or v.max() >= pr["next"] or not pr["live"][v].all()):
            bad = v[(v < 0) | (v >= pr["next"])]
            bad = bad[0] if bad.size else v[~pr["live"][v]][0]
            raise ConfigError("page %d is not allocated in guest process %d" % (int(bad), pid))
        return pr, v

    @property
    def pids(self):
        return sorted(self._procs)

    def live_pages(self, pid):
        pr = self._procs.get(pid)
        return np.zeros(0, np.int64) if pr is None else np.flatnonzero(pr["live"])

    # --- the process API ----------------------------------------------------------------------
    def alloc(self, npages, pid=0):
        """npages new anonymous pages of process pid, first-touched with version-1 content.
        Large requests come in chunks, so that reclaim can swap out earlier chunks to make
        room for later ones (a process may own more pages than the guest has frames)."""
        if isinstance(npages, bool) or not isinstance(npages, (int, np.integer)) or npages < 0:
            raise ConfigError("npages must be an integer >= 0, got %r" % (npages,))
        npages = int(npages)
        start = self._proc(pid)["next"]
        chunk = max(1, self.mem.npages // 8)
        for lo in range(0, npages, chunk):
            n = min(chunk, npages - lo)
            v = np.arange(start + lo, start + lo + n, dtype=np.int64)
            frames = self.alloc_frames(n) if self.heap is None else self.heap.frames_for(pid, v)
            pr = self._proc(pid, start + lo + n)
            pr["next"] = start + lo + n
            pr["live"][v] = True
            pr["frame"][v] = frames
            pr["version"][v] = 1
            self.table.claim(frames, ANON, pid, v, UPTODATE)
            self._fill(frames, pid, v, 1)
            mark_touched(self.mem, frames)
        self.stats["allocated"] += npages
        return np.arange(start, start + npages, dtype=np.int64)

    def _fill(self, frames, pid, v, versions):
        versions = np.broadcast_to(versions, v.shape)
        for lo in range(0, v.size, CONTENT_CHUNK_PAGES):
            hi = lo + CONTENT_CHUNK_PAGES
            self.mem.frames[frames[lo:hi]] = content.generate(self.seed, ANON_KEY_BASE + pid, v[lo:hi],
                                                              versions[lo:hi])

    def write(self, vpages, pid=0):
        """The process writes its pages: next version of each; swapped pages come back first."""
        pr, v_all = self._vpages(pid, vpages)
        chunk = max(1, self.mem.npages // 8)        # more pages than frames: swap as we go
        for lo in range(0, v_all.size, chunk):
            v = v_all[lo:lo + chunk]
            frames = self.swap_in(v, pid)
            pr["version"][v] += 1
            self._fill(frames, pid, v, pr["version"][v])
            mark_touched(self.mem, frames)
        return int(v_all.size)

    def read(self, vpages, pid=0):
        """The process reads its pages (swapping them in): returns their bytes."""
        pr, v = self._vpages(pid, vpages)
        frames = self.swap_in(v, pid)
        return self.mem.frames[frames].tobytes()

    def free(self, vpages, pid=0):
        pr, v = self._vpages(pid, vpages)
        frames = pr["frame"][v]
        res = frames[frames >= 0]
        slots = pr["slot"][v]
        if res.size:
            self.free_frames(res)
        if (slots >= 0).any():
            self.swap.free(slots[slots >= 0])
        pr["frame"][v] = -1
        pr["slot"][v] = -1
        pr["live"][v] = False
        self.stats["freed"] += int(v.size)
        return int(v.size)

    def mlock(self, vpages, pid=0, on=True):
        """mlock: the pages come in and stay STABLE (never swapped out)."""
        pr, v = self._vpages(pid, vpages)
        frames = self.swap_in(v, pid)
        if on:
            self.table.flags[frames] |= MLOCKED
        else:
            self.table.flags[frames] &= ~FLAG_DTYPE(MLOCKED)
        return frames

    # --- swap ---------------------------------------------------------------------------------
    def swap_out_candidates(self):
        """Anonymous frames that may be swapped out (not mlocked), oldest use first."""
        frames = np.flatnonzero((self.table.kind == ANON) & ((self.table.flags & MLOCKED) == 0)
                                & (self.table.refs == 0))
        return frames[np.argsort(self.table.last_use[frames], kind="stable")]

    def swap_out(self, frames):
        """Write anonymous frames to swap slots; they stay as clean swap-cache pages, VOLATILE."""
        frames = np.asarray(frames, dtype=np.int64)
        frames = frames[(self.table.kind[frames] == ANON) & ((self.table.flags[frames] & MLOCKED) == 0)]
        if frames.size == 0:
            return 0
        n = min(frames.size, self.swap.free_slots)
        frames = frames[:n]
        if n == 0:
            return 0
        slots = self.swap.alloc(n)
        with self.swap.opened() as fd:
            self.mem.write_to_file(frames, fd, slots * PAGE_SIZE)
        pids, v = self.table.owner[frames], self.table.index[frames]
        for pid in np.unique(pids).tolist():
            sel = pids == pid
            self._procs[pid]["slot"][v[sel]] = slots[sel]
        self.table.kind[frames] = SWAPCACHE
        # record before hinting: the swap slot is where a discarded swap-cache page comes from
        set_backing(self.mem, frames, self.store_for(self.swap.path), slots * PAGE_SIZE, self.table)
        lost = self.hinter.settle(frames)          # S -> V; nothing to stabilise here
        assert lost.size == 0
        self.stats["swap_out"] += n
        return n

    def drop_swapcache(self, frames):
        """Reclaim: forget the swap-cache copies (the slot keeps the content) and free frames."""
        return self._release(frames, SWAPCACHE, lambda pid: self._procs[pid]["frame"])

    def swap_in(self, v, pid):
        """Frames of these live pages, resident and STABLE, with their swap slots freed."""
        pr = self._procs[pid]
        for _ in range(8):
            frames = pr["frame"][v]
            cached = frames[(frames >= 0) & (self.table.kind[np.maximum(frames, 0)] == SWAPCACHE)]
            if cached.size:
                self.stats["swapcache_hits"] += int(cached.size)
                if self.discard_mode == "guest":
                    lost = self._stabilise_swapcache(cached)
                    if lost.size:
                        # the discard fault of the original design: drop the swap-cache copy and
                        # read the slot again below; the others are stable, their slots go now
                        self._become_anon(np.setdiff1d(cached, lost, assume_unique=True))
                        self.drop_swapcache(lost)
                        self.stats["swapcache_dropped"] += int(lost.size)
                        continue
                else:
                    self._stabilise_swapcache_transparent(cached)
                self._become_anon(cached)
            missing = v[pr["frame"][v] < 0]
            if missing.size:
                slots = pr["slot"][missing]
                if (slots < 0).any():
                    raise GphintError("process %d page %d has neither frame nor swap slot"
                                      % (pid, int(missing[slots < 0][0])))
                self.table.refs[pr["frame"][v][pr["frame"][v] >= 0]] += 1   # not reclaimed under us
                try:
                    new = self.alloc_frames(missing.size)
                finally:
                    held = pr["frame"][v]
                    self.table.refs[held[held >= 0]] -= 1
                with self.swap.opened() as fd:
                    self.mem.fill_from_file(new, fd, slots * PAGE_SIZE)
                mark_touched(self.mem, new)
                self.table.claim(new, ANON, pid, missing, UPTODATE)
                pr["frame"][missing] = new
                self.swap.free(slots)
                pr["slot"][missing] = -1
                self.stats["swap_in"] += int(missing.size)
            frames = pr["frame"][v]
            self.table.touch(frames)
            return frames
        raise GphintError("process %d: swap-cache pages kept being discarded during swap-in" % pid)

    def _mark_anon(self, frames):
        self.table.kind[frames] = ANON

    def _stabilise_swapcache(self, frames):
        """Guest-visible mode: try to make swap-cache frames stable; returns those discarded."""
        self._mark_anon(frames)
        lost = self.hinter.settle(frames)
        self.table.kind[lost] = SWAPCACHE
        return lost

    def _stabilise_swapcache_transparent(self, frames):
        self._mark_anon(frames)
        self.hinter.stabilise(frames, self._reload)

    def _become_anon(self, frames):
        """Stable now: only then free the slot (patch 4's order)."""
        pids, v = self.table.owner[frames], self.table.index[frames]
        for pid in np.unique(pids).tolist():
            pr = self._procs[pid]
            vv = v[pids == pid]
            self.swap.free(pr["slot"][vv])
            pr["slot"][vv] = -1
        self.table.kind[frames] = ANON

    # --- verification ----------------------------------------------------------------------------
    def verify(self):
        """Mismatching anonymous pages: resident ones through the fault path, swapped-out ones
        read back from the swap file."""
        bad = 0
        for pid, pr in self._procs.items():
            live = np.flatnonzero(pr["live"])
            for lo in range(0, live.size, CONTENT_CHUNK_PAGES):
                bad += self._verify_pages(pid, pr, live[lo:lo + CONTENT_CHUNK_PAGES])
        return bad

    def _verify_pages(self, pid, pr, v):
        expected = content.generate(self.seed, ANON_KEY_BASE + pid, v, pr["version"][v])
        frames = pr["frame"][v]
        res = frames >= 0
        bad = int(content.mismatching(self.mem.frames[frames[res]], expected[res]).sum()) if res.any() else 0
        out = ~res
        if out.any():
            slots = pr["slot"][v[out]]
            disk = np.zeros((slots.size, PAGE_SIZE), dtype=np.uint8)
            with self.swap.opened() as fd:
                for lo, hi in _slot_runs(slots):
                    pread_into(fd, disk[lo:hi], int(slots[lo]) * PAGE_SIZE)
            bad += int(content.mismatching(disk, expected[out]).sum())
        return bad


def _slot_runs(slots):
    if slots.size == 0:
        return []
    cut = np.flatnonzero(np.diff(slots) != 1) + 1
    bounds = np.concatenate([[0], cut, [slots.size]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
