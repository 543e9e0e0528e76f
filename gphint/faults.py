"""The discard-fault service: discarded pages come back on their next access.

    svc = FaultService(window="64K", mode="auto")   # one C pthread (ext/faults.c), no Python in it
    svc.register(mem)                    # userfaultfd MISSING (+ WP for dirty bits) on mem's region
    mem.set_backing(pages, FileStore(path), offsets); mem.discard(pages)   # Vr -> Vz
    ... any access reloads the page from its file (a discard fault)
    svc.swap_out(mem, pages, HostSwap("256M"))     # Sr -> Sp; an access swaps it back in
    svc.drain_discarded(mem); svc.stats(mem); svc.check(); svc.stop()

Policy lives here (which mode, which features, slot allocation, errors); the mechanism -- the
fault thread, the per-page protocol, the detach-and-write swap-out -- is C.  The per-page state
protocol is in docs/state-protocol.md and at the top of ext/protocol.c.
"""
import errno
import mmap
import os
import threading

import numpy as np

from . import caps, dirty
from ._mechanism import COMPILED, WHY_PURE, mech
from .discard import Discarded
from .errors import ClosedError, ConfigError, SyscallError, Unsupported
from .measure import proc_stat
from .memory import PAGE_SIZE, GuestMemory
from .states import FLAG_BUSY, FLAG_SERVING, PAIR_MASK, USAGE_MASK, HostState, PageState
from .stores import FileStore, HostSwap, SwapFull  # noqa: F401  (re-exported: gphint.faults.HostSwap)
from .units import parse_size

MODES = ("auto", "full", "user_mode_only")
# How the state protocol's holds are taken (docs/state-protocol.md): the per-page hold bits of
# the state byte, or the hashed lock on the page index (ext/statelock.h, the series' 2006
# follow-up).  The first is the default: see "Hold bits vs hashed lock" there for the numbers.
LOCKINGS = ("holdbits", "hashed")
DEFAULT_LOCKING = "holdbits"
WINDOW_MAX = 2 << 20
# the C fault thread's name (GPH_FAULT_THREAD_NAME, ext/faults_internal.h): its CPU time can be
# told apart in /proc/self/task (fault_thread_cpu_s)
FAULT_THREAD_NAME = "gphint-faults"
_POT_VOLATILE = int(PageState.POT_VOLATILE)
_HOLD_BITS = FLAG_BUSY | FLAG_SERVING
_NO_SLOTS = np.zeros(0, dtype=np.int64)
_NO_USED = np.zeros(0, dtype=np.uint8)


class ReloadError(SyscallError):
    """The fault service could not read a page's source: it served zeros and counted the page
    lost.  .guest and .page say where; .syscall what failed."""

    def __init__(self, errno_, syscall, guest, page, count):
        super().__init__(errno_, syscall, "reloading page %d of guest %s (%d failure%s recorded)"
                         % (page, guest, count, "" if count == 1 else "s"))
        if errno_ == errno.ESTALE:    # a content check failed, not a call: say what changed
            self.strerror = ("%s since guest %s read page %d: served as zeros (%d failure%s recorded)"
                             % (syscall, guest, page, count, "" if count == 1 else "s"))
        self.guest = guest
        self.page = page
        self.count = count


def _table(dtype, n):
    m = mmap.mmap(-1, max(np.dtype(dtype).itemsize * n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, np.frombuffer(m, dtype=dtype, count=n)


def usage_mask(states):
    """The C host calls' set of usage states: bit (code >> 2) per PageState (ext/hostops.c OK_*)."""
    return sum(1 << (int(s) >> 2) for s in states)

class _Registration:
    """What the service keeps per guest: the C region id and the host swap record tables."""

    def __init__(self, mem, rid, maps, swap_store, swap_slot):
        self.mem, self.rid, self.maps = mem, rid, maps
        self.swap_store, self.swap_slot = swap_store, swap_slot


class _Served:
    """The discard path register() gives a memory (GuestMemory.set_discard_path): every page
    goes through the state protocol in C (ext/hostops.c: pick -> act -> finish), UNUSED pages
    included, and page-cache reads install missing frames without a fault.  It is handed the
    state table at registration and never calls the memory back."""

    def __init__(self, svc, reg, states):
        self.service, self._reg, self._states = svc, reg, states
        self.bounce = svc.mode == "user_mode_only"

    def discard(self, idx, advice, mode, pidfd):
        """UNUSED and VOLATILE pages are discarded; POT_VOLATILE pages only while clean (dirty
        ones go to the service's swap if it has one, else stay).  Pages that changed state
        meanwhile are skipped.  advice=free leaves U/V pages lazily freed (Uf/Vf: the kernel
        decides later); dontneed also takes lazily freed ones."""
        svc, reg = self.service, self._reg
        svc._check_running()
        if idx.size > 1 and not (idx[1:] > idx[:-1]).all():   # the C runs want ascending, unique
            idx = np.unique(idx)
        swap, slots, used = None, _NO_SLOTS, _NO_USED
        if svc.swap is not None and not svc.swap.closed:
            # slots for the POT_VOLATILE pages the host may find written (then preserved)
            npot = int(np.count_nonzero((self._states[idx] & USAGE_MASK) == _POT_VOLATILE))
            if npot:
                swap = svc.swap
                svc._swaps[swap.id] = swap
                slots = swap.alloc(npot)
                used = np.zeros(slots.size, dtype=np.uint8)
        try:
            discarded, preserved, calls, runs, resident, lazy = svc._host_op(
                reg, (0, 0, 0, 0, 0, 0), svc._thread.host_discard, reg.rid, idx, advice,
                mode, pidfd, swap.id if swap is not None else 0, slots, used)
        finally:
            if swap is not None:
                swap.free(slots[used == 0])
        svc._preserved += preserved
        return Discarded(discarded, calls, runs, resident, lazy)

    def fill(self, idx, fd, offsets):
        """Frames whose content the tables say is missing get the file bytes installed
        directly (UFFDIO_COPY, no fault, no zero fill first); the rest are read into in place."""
        n, installed = self.service._thread.fill(self._reg.rid, np.ascontiguousarray(idx, dtype=np.int64), fd,
                                                 np.ascontiguousarray(offsets, dtype=np.int64), self.bounce)
        self.service._installed_fills += installed
        return n

    def lazy_refaults(self):
        got = self.service._thread.stats(self._reg.rid)
        return got[0].get("lazy_refaults", 0) if got is not None else 0


def _percentile_ns(hist, q):
    total = sum(hist)
    if total == 0:
        return 0
    want = q * total
    acc = 0
    for b, n in enumerate(hist):
        acc += n
        if acc >= want:
            if b < 4:
                return b
            e, m = divmod(b, 4)
            lo, hi = (4 + m) << (e - 2), (5 + m) << (e - 2)
            return (lo + hi) // 2
    return 0


def check_locking(locking):
    """The locking name, or ConfigError naming the bad value."""
    if locking not in LOCKINGS:
        raise ConfigError("unknown locking %r (expected one of %s)" % (locking, ", ".join(LOCKINGS)))
    return locking


class FaultService:
    """One userfaultfd and one C pthread serving every registered GuestMemory.

    window: fault-around window (bytes or '64K'), a power of two from one page up to 2 MiB.
    mode:   'full' (kernel-mode faults served too: root or vm.unprivileged_userfaultfd=1),
            'user_mode_only' (UFFD_USER_MODE_ONLY: kernel-mode fills go through a bounce copy),
            'auto' (full if available, else user_mode_only).
    swap:   default HostSwap for swap_out and for POT_VOLATILE pages found written at discard.
    dirty:  use kernel write tracking for POT_VOLATILE pages when available (gphint.dirty).
    locking: 'holdbits' (BUSY / SERVING / FILLED bits in the state byte) or 'hashed' (a table
            of locks indexed by a hash of (region, page)); fixed for the service's life.  The
            pure-Python mechanism has no fault thread, so no service and nothing to lock: there
            the value is checked, then the service is refused as a whole (Unsupported).
    """

    def __init__(self, window="64K", mode="auto", swap=None, dirty_tracking=True,
                 locking=DEFAULT_LOCKING):
        self.locking = check_locking(locking)
        if not COMPILED:
            raise Unsupported("the discard-fault service",
                              "it needs the compiled mechanism (a C fault thread that never takes "
                              "the GIL); this run uses pure Python: %s" % WHY_PURE,
                              "build gphint._mech (python setup.py build_ext --inplace) and unset "
                              "GPHINT_PUREPYTHON")
        self.window_bytes = self._parse_window(window)
        self.mode = self._choose_mode(mode)
        flags = mech.SVC_USER_MODE_ONLY if self.mode == "user_mode_only" else 0
        self.dirty_tracking = bool(dirty_tracking) and dirty.available()
        if self.dirty_tracking:
            flags |= mech.SVC_DIRTY
        self.can_swap = caps.has("uffd_move")
        if self.can_swap:
            flags |= mech.SVC_MOVE
        self._thread = mech.FaultThread(flags, self.window_bytes)
        if self.locking == "hashed":
            self._thread.set_locking(mech.LOCKING_HASHED)
        self._thread.start()
        self._regs = {}
        self._lock = threading.Lock()
        self._errors_raised = 0
        self.swap = swap
        self._installed_fills = 0   # page-cache fills installed without a fault
        self._preserved = 0     # POT_VOLATILE pages found written at discard, preserved instead
        self._swaps = {}        # store id -> HostSwap this service wrote to (slot bookkeeping)
        if swap is not None:
            self._swaps[swap.id] = swap
        self._stopped = False

    # --- configuration ----------------------------------------------------------------------
    @staticmethod
    def _parse_window(window):
        w = parse_size(window, "fault-around window")
        if w % PAGE_SIZE or w > WINDOW_MAX or (w // PAGE_SIZE) & (w // PAGE_SIZE - 1):
            raise ConfigError("fault-around window %r must be a power-of-two number of pages from "
                              "%d bytes to 2 MiB" % (window, PAGE_SIZE))
        return w

    @staticmethod
    def _choose_mode(mode):
        if mode not in MODES:
            raise ConfigError("unknown fault-service mode %r (expected one of %s)" % (mode, ", ".join(MODES)))
        if mode == "auto":
            if caps.has("userfaultfd"):
                return "full"
            mode = "user_mode_only"
        if mode == "full":
            caps.require("userfaultfd")
        else:
            caps.require("userfaultfd_user_mode_only")
        return mode

    @property
    def window(self):
        return self.window_bytes

    @window.setter
    def window(self, window):
        w = self._parse_window(window)
        self._thread.set_window(w)
        self.window_bytes = w

    def set_race_delay(self, ns):
        """Tests only: make every host and fault-thread hold last ns longer, so concurrent
        guest transitions land inside the windows the protocol must make safe."""
        self._thread.set_race_delay(int(ns))

    def is_held(self, mem, page):
        """Tests only: does the host or the fault thread hold mem's page now -- a hold bit
        (BUSY / SERVING) or, with locking='hashed', the page's lock."""
        if self.locking == "hashed":
            return mech.page_lock_taken(mem.states, int(page))
        return bool(mem.states[int(page)] & _HOLD_BITS)

    def _check_running(self):
        if self._stopped:
            raise ClosedError("the fault service is stopped")

    # --- guests -------------------------------------------------------------------------------
    def register(self, mem):
        """Serve mem's discard faults.  A memory is served by at most one service."""
        self._check_running()
        if not isinstance(mem, GuestMemory):
            raise ConfigError("register() takes a GuestMemory, got %r" % (mem,))
        mem._check_open()
        if mem.fault_service is self:
            return
        if mem.fault_service is not None:
            raise ConfigError("guest memory %r is already served by another FaultService" % (mem.name,))
        # pages never touched are logically zero (Sr -> Sz, Ur -> Uz): saying so lets their first
        # faults be served in fault-around runs instead of one round trip per page
        c = mem._states & PAIR_MASK
        fresh = np.flatnonzero(~mem.residency() & ((c == PageState.STABLE) | (c == PageState.UNUSED)))
        mech.set_content(mem._states, fresh.astype(np.int64), int(HostState.ZERO))
        m1, swap_store = _table(np.int32, mem.npages)
        m2, swap_slot = _table(np.int64, mem.npages)
        rid = self._thread.register(mem.region, PAGE_SIZE, mem._states, mem.backing_store,
                                    mem.backing_offset, swap_store, swap_slot)
        reg = _Registration(mem, rid, (m1, m2), swap_store, swap_slot)
        with self._lock:
            self._regs[id(mem)] = reg
        mem.set_discard_path(_Served(self, reg, mem._states))

    def _reg(self, mem):
        reg = self._regs.get(id(mem))
        if reg is None or reg.mem is not mem:
            raise ConfigError("guest memory %r is not registered with this FaultService" % (mem.name,))
        return reg

    def unregister(self, mem, materialize=None):
        """Stop serving mem.  materialize (default: unless mem is closing): first reload every page
        whose content lives in a file or in swap, so the memory stays correct on its own.  The
        host is shut out first: a discard or swap-out under way finishes before the reload, and
        one that arrives later does nothing (returns 0), so no page is left discarded behind it."""
        with self._lock:
            reg = self._regs.pop(id(mem), None)
        if reg is None or reg.mem is not mem:
            return
        if materialize is None:
            materialize = not mem._closed
        self._thread.unregister(reg.rid, bool(materialize))
        # swap slots this guest still holds go back to their swap
        held = np.flatnonzero(reg.swap_store != 0)
        for swap_id in np.unique(reg.swap_store[held]).tolist():
            swap = self._swaps.get(swap_id)
            if swap is not None and not swap.closed:
                swap.free(reg.swap_slot[held[reg.swap_store[held] == swap_id]])
        if not mem.closed:
            mem.set_discard_path(None)

    @property
    def guests(self):
        return [r.mem for r in self._regs.values()]

    # --- host side ----------------------------------------------------------------------------
    def discard(self, mem, pages, advice="dontneed", submit="vectored"):
        """The host's protocol discard of a served memory: mem.discard without its refusal of
        STABLE pages, which the protocol's pick leaves alone like any page it may not take.
        The memory's counters get the real system calls made.  Returns pages discarded."""
        self._check_running()
        self._reg(mem)
        return mem.discard(pages, advice, submit, skip_stable=True)

    def take(self, mem, states, resident, need, host_batch, advice="dontneed", submit="vectored"):
        """A reclaim tier's discard of a served memory in one C call (ext/hostops.c,
        gph_host_take): up to `need` pages whose usage is one of `states` (UNUSED, VOLATILE)
        and that `resident` (the host's residency sample, bool per page) shows resident, chosen
        in page order and cleared in `resident`, then picked, discarded and finished under the
        protocol exactly as discard() does, host_batch pages per submission.  The memory's
        counters get the system calls made.  Returns (discarded, chosen)."""
        self._check_running()
        reg = self._reg(mem)
        advice_code, mode, pidfd = self._advice(mem, advice, submit)
        n, chosen, calls, runs, res, lazy = self._host_op(
            reg, (0, 0, 0, 0, 0, 0), self._thread.host_take, reg.rid, usage_mask(states),
            resident.view(np.uint8), int(need), int(host_batch), advice_code, mode, pidfd)
        mem.count_discard(n, calls, runs, res, lazy)
        return n, chosen

    # --- the host's fleet: one C call for all its guests (gphint.host.residency.FleetResidency)
    def _advice(self, mem, advice, submit):
        from . import discard as _discard
        advice_code = _discard.advice_code(advice)
        mode, pidfd, fell_back = _discard.submission(submit)
        mem._stats["vectored_fallbacks"] += fell_back
        return advice_code, mode, pidfd

    def _rids(self, mems):
        """int32 region ids of mems (-1: not registered with this service)."""
        rids = np.empty(len(mems), dtype=np.int32)
        for i, m in enumerate(mems):
            reg = self._regs.get(id(m))
            rids[i] = reg.rid if reg is not None and reg.mem is m else -1
        return rids

    def sample_fleet(self, fleet, tick):
        """The residency sample of every guest of `fleet` in one call (fleet.counts gets each
        guest's count); None when some guest is not served here (the host then samples guest
        by guest, which raises what is wrong).  Returns resident pages in all."""
        rids = self._rids(fleet.mems)
        if self._stopped or (rids < 0).any():
            return None
        try:
            return self._thread.host_sample(rids, fleet.offsets, fleet.vec, fleet.resident.view(np.uint8),
                                            fleet.since_tick, fleet.ever.view(np.uint8), int(tick),
                                            fleet.counts)
        except ClosedError:     # a guest unregistered meanwhile
            return None

    def count_candidates(self, fleet, states, advice="dontneed"):
        """int64 per guest of `fleet`: how many pages take() would choose in it now (usage in
        `states`, content the advice takes, unheld, resident in its sample); one C call."""
        from . import discard as _discard
        self._check_running()
        counts = np.zeros(len(fleet.mems), dtype=np.int64)
        self._thread.host_count(self._rids(fleet.mems), fleet.offsets, fleet.resident.view(np.uint8),
                                usage_mask(states), _discard.advice_code(advice), counts)
        return counts

    def take_fleet(self, fleet, states, quota, host_batch, advice="dontneed", submit="vectored"):
        """take() on every guest of `fleet` with quota[i] > 0, in one C call.  Returns an (n, 2)
        int64 array: (discarded, chosen) per guest."""
        self._check_running()
        mems = fleet.mems
        out = np.zeros((len(mems), 6), dtype=np.int64)
        quota = np.ascontiguousarray(quota, dtype=np.int64)
        if not quota.any():
            return out[:, :2]
        advice_code, mode, pidfd = self._advice(mems[0], advice, submit)
        try:
            self._thread.host_take_fleet(self._rids(mems), fleet.offsets, quota, fleet.resident.view(np.uint8),
                                         usage_mask(states), int(host_batch), advice_code, mode, pidfd, out)
        except ClosedError:
            pass    # a guest unregistered since the count: the guests before it gave what out says
        finally:   # what was done before a failure is counted too
            for i in np.flatnonzero(out[:, 1]).tolist():
                mems[i].count_discard(*out[i, [0, 2, 3, 4, 5]].tolist())
        return out[:, :2]

    def swap_out(self, mem, pages, swap=None):
        """Host preserves pages in swap: detach atomically, write to slots, record (Sr -> Sp, dirty
        Pr -> Sp).  Pages not STABLE/POT_VOLATILE-resident, or held, are skipped.  Returns pages
        swapped out."""
        self._check_running()
        swap = swap if swap is not None else self.swap
        if swap is None:
            raise ConfigError("swap_out needs a HostSwap (pass swap= or FaultService(swap=...))")
        if self.swap is None:
            self.swap = swap
        self._swaps[swap.id] = swap
        if not self.can_swap:
            f = caps.probe().features["uffd_move"]
            raise Unsupported("host swap-out", f.reason + " (it detaches a page atomically so no "
                              "concurrent write is lost)", f.remedy)
        reg = self._reg(mem)
        idx = np.unique(mem._pages(pages))
        if idx.size == 0:
            return 0
        slots = swap.alloc(idx.size)
        if slots.size < idx.size:
            # preserved pages the guest gave up since (Sp -> Uz/Vz) still hold slots: take them back
            swap.free(slots)
            self.reclaim_slots(swap)
            slots = swap.alloc(idx.size)
        if slots.size == 0:
            raise SwapFull("host swap %r is full (%d slots)" % (swap, swap.nslots))
        used = np.zeros(slots.size, dtype=np.uint8)
        try:
            n = self._host_op(reg, 0, self._thread.host_swap_out, reg.rid, idx, swap.id, slots, used)
        finally:
            swap.free(slots[used == 0])
        return n

    def _host_op(self, reg, nothing, call, *args):
        """call(*args), a host operation on reg's guest.  Another thread may unregister the guest
        while the call is on its way in: the C side then refuses the region (-ENOENT) before it
        takes a page (ClosedError: the region is no longer registered), so the operation did
        nothing, and that (`nothing`) is its result."""
        try:
            return call(*args)
        except ClosedError:
            if self._regs.get(id(reg.mem)) is not reg:
                return nothing
            raise

    def drop_preserved(self, mem, pages):
        """The host gives up its swap copies of preserved pages nobody needs any more (Sp -> Sz:
        slot freed, content zero, ext/hostops.c) -- free pages a hint-less guest handed over.
        Pages in any other state, or held, are left alone.  Returns pages dropped."""
        self._check_running()
        reg = self._reg(mem)
        idx = np.unique(mem._pages(pages))
        if idx.size == 0:
            return 0
        return self._host_op(reg, 0, mech.host_drop_preserved, self._thread, reg.rid, idx)

    def reclaim_slots(self, swap):
        """Free swap slots still held by pages the guest gave up while they were preserved
        (Sp -> Uz/Vz without a later access).  swap_out calls this when slots run short."""
        return sum(self._thread.reclaim_slots(reg.rid, swap.id) for reg in list(self._regs.values()))

    # --- guest-facing results -----------------------------------------------------------------
    def drain_discarded(self, mem):
        """int64 array: VOLATILE pages of mem served as discard faults since the last drain."""
        reg = self._reg(mem)
        out = []
        buf = np.empty(max(1024, min(mem.npages, 65536)), dtype=np.int64)
        while True:
            n = self._thread.drain(reg.rid, buf)
            out.append(buf[:n].copy())
            if n < buf.size:
                break
        return np.concatenate(out)

    def dirty_pages(self, mem, pages):
        """bool per page: written since its dirty bit was last cleared (all True without kernel
        write tracking: POT_VOLATILE pages are then treated as STABLE)."""
        self._reg(mem)
        idx = mem._pages(pages)
        return dirty.dirty_pages(mem, idx) if self.dirty_tracking else np.ones(idx.size, dtype=bool)

    def clear_dirty(self, mem, pages):
        """Clear the pages' dirty bits (the guest does this only after making them stable)."""
        self._reg(mem)
        idx = mem._pages(pages)
        return dirty.clear_dirty(mem, idx) if self.dirty_tracking else 0

    # --- observation ----------------------------------------------------------------------------
    def stats(self, mem=None):
        """Counters (discard_faults, zero_fills, file_reloads, swap_ins, pages_served, bytes_served,
        fault_around_hits, lost_pages, faults, ...) and latency_p50_ns / latency_p99_ns, for one
        guest or (mem=None) for all since the service started."""
        rid = -1 if mem is None else self._reg(mem).rid
        got = self._thread.stats(rid)
        if got is None:
            raise ConfigError("no statistics for %r" % (mem,))
        d, hist = got
        d["latency_p50_ns"] = _percentile_ns(hist, 0.50)
        d["latency_p99_ns"] = _percentile_ns(hist, 0.99)
        if mem is None:
            d["preserved_at_discard"] = self._preserved
            d["installed_fills"] = self._installed_fills
        return d

    def check(self):
        """Re-raise (ReloadError) the first reload failure recorded since the last check."""
        if self._stopped:
            return
        n, errno_, syscall, region, page = self._thread.error()
        if n > self._errors_raised:
            self._errors_raised = n
            guest = next((repr(r.mem.name) for r in self._regs.values() if r.rid == region),
                         "#%d" % region)
            raise ReloadError(errno_, syscall, guest, page, n)

    def stop(self):
        """Reload what still lives elsewhere, unregister every guest, end the thread; then
        re-raise a recorded reload failure.  Idempotent."""
        if self._stopped:
            return
        try:
            for reg in list(self._regs.values()):
                self.unregister(reg.mem)
        finally:
            self._thread.stop()
            err = self._thread.error()
            self._thread.close()
            self._stopped = True
        n, errno_, syscall, region, page = err
        if n > self._errors_raised:
            self._errors_raised = n
            raise ReloadError(errno_, syscall, "#%d" % region, page, n)

    close = stop

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "<FaultService %s %s window=%d guests=%d%s>" % (
            self.mode, self.locking, self.window_bytes, len(self._regs), " stopped" if self._stopped else "")


def fault_thread_cpu_s():
    """CPU seconds (user + system) of this process's fault threads so far, or None where
    /proc/self/task cannot be read.  The kernel counts in clock ticks (10 ms at USER_HZ=100)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            comm, fields = proc_stat("/proc/self/task/%s/stat" % tid)
        except OSError:
            continue             # the thread ended meanwhile
        if comm == FAULT_THREAD_NAME:
            total += int(fields[11]) + int(fields[12])     # utime, stime: proc(5) fields 14, 15
    return total / tick
