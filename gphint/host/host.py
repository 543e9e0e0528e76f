"""Host: many guests, one memory budget, one reclaim strategy.

`Host(guests, budget="512M", strategy="cmma")` keeps the guests' total resident memory -- as
the kernel reports it (mincore), never an estimate -- at or below `budget`.  Without a budget
the host is proactive: it gives back free memory as soon as its strategy lets it know, and
touches nothing else.

The loop (`step`) is: sample residency -> let the strategy take what it is told is free ->
if over budget, reclaim by the strategy's hint tiers -> host-swap the rest, oldest resident
first.  `start()` runs it in a thread every `interval_s`, together with the guests' own timers
(`guest_timers`); tests call `step()` (the reclaim pass only) directly.
Guest code and the host loop are serialised by `host.lock`: the runner holds it around each
guest step, so the host's picture of the states (one mincore + state snapshot per pass) is
never stale while it acts on it, and the accounting (what was taken, by which tier) is exact.
Guest threads that do not take the lock race the host; with a fault service the C state
protocol makes that safe: the host picks each page by a CAS on its state byte, so a page the
guest changed since the snapshot is skipped (counted in `skipped_pages`), never taken and
never an error.  Without a fault service the host has no hold on a page (its UNUSED discards
are plain madvise calls), so there the guests must hold the lock.

A host thread that dies anyway is reported: the error is re-raised by the next call a runner
makes into the host (`on_scheduled`, `guest_timers`, `over_budget`, `check`) as HostThreadDied,
since from then on the budget is no longer enforced.
"""
import threading
import time

import numpy as np

from .. import measure
from ..errors import ConfigError, GphintError
from ..memory import PAGE_SIZE
from ..states import PAIR_MASK, PageState, pair
from ..stores import HostSwap
from ..units import parse_size
# every strategy module registers its class in spec.STRATEGY_CLASSES when imported
from . import balloon, kernel, reporting, strategies  # noqa: F401
from .hostswap import HostSwapper, require_fault_service
from .residency import FleetResidency, ResidencyTracker
from .spec import make_strategy, parse_strategy
from .submission import Submission

SR = pair(PageState.STABLE, 0)


class GuestSlot:
    """The host's view of one guest: its memory, residency, and per-guest strategy state."""

    def __init__(self, guest, index, residency=None):
        self.guest = guest
        self.mem = getattr(guest, "mem", guest)
        self.name = getattr(guest, "name", None) or getattr(self.mem, "name", None) or "g%d" % index
        self.index = index
        self.residency = residency if residency is not None else ResidencyTracker(self.mem)
        # when each page was made UNUSED, dated by the guest's hint path (shared memory the
        # host reads, like the state byte); None for a bare GuestMemory, which has no hint path
        hints = getattr(getattr(guest, "allocator", None), "hints", None)
        self.unused_since_ns = getattr(hints, "unused_since_ns", None)
        self.discarded = {}       # kind -> pages the host discarded from this guest
        self.swapped = {}         # usage state -> pages the host wrote to host swap
        self.skipped = {}         # kind -> pages chosen but not taken: they changed state (or
                                  # were held) between the host's snapshot and its pick
        self.swap_skipped = {}    # usage state -> pages chosen for swap-out but skipped so
        self.dropped = {}         # "swap_dropped" -> swapped-out free pages whose copy a peer's
                                  # discard dropped (Sp -> Sz)

    def count(self, kind, npages, table=None):
        table = self.discarded if table is None else table
        table[kind] = table.get(kind, 0) + int(npages)


class HostThreadDied(GphintError, RuntimeError):
    """The host's reclaim thread stopped on an error: the budget is no longer enforced."""


def serving_service(slots, given, required=True):
    """The fault service the host swaps through: `given`, else the one serving every guest.
    Host swap-out and the swap-in on access go through the service that serves the guest's
    memory, so a guest served by another service (or none) is refused here, by name, rather
    than failing at the first swap-out.  required=False: None when the guests have none."""
    served = [s.mem.fault_service for s in slots]
    if given is None:
        given = next((svc for svc in served if svc is not None), None)
        if given is None:
            if not required:
                return None
            raise ConfigError("host swap under a budget needs a fault service: guest %s is served "
                              "by none (register the guests' memory with a FaultService, or pass "
                              "Host(..., fault_service=svc))" % slots[0].name)
    for slot, svc in zip(slots, served):
        if svc is not given:
            if not required and svc is None:
                continue
            raise ConfigError("guest %s is %s, not by the host's fault service %r: register it "
                              "with that service" % (slot.name, "served by no fault service"
                                                     if svc is None else "served by %r" % (svc,), given))
    return given


class Host:
    """A host with `guests` (Guest objects or bare GuestMemory), a `budget` for their total
    resident memory (None: proactive mode) and a reclaim `strategy` spec."""

    def __init__(self, guests, budget=None, strategy="cmma", *, fault_service=None, swap=None,
                 interval_s=0.02, headroom=0.02, sample_interval_s=0.1, clock=time.monotonic):
        if not guests:
            raise ConfigError("a host needs at least one guest")
        self.spec = parse_strategy(strategy)
        self.budget_bytes = None if budget is None else parse_size(budget, "host budget")
        if not 0 <= headroom < 0.5:
            raise ConfigError("headroom %r must be in [0, 0.5)" % headroom)
        # every guest's residency tables in one array each: sampled in one C call per step
        self.residency = FleetResidency([getattr(g, "mem", g) for g in guests])
        self.slots = [GuestSlot(g, i, tr) for i, (g, tr) in enumerate(zip(guests, self.residency.trackers))]
        self._slot_of = {}
        for s in self.slots:
            self._slot_of.setdefault(id(s.guest), s)
            self._slot_of.setdefault(id(s.mem), s)
        self.swapper = None
        self._own_swap = None
        if self.budget_bytes is not None:
            # under pressure every strategy may have to swap: the host's last resort
            require_fault_service("host swap under a budget (strategy %s)" % self.spec.name)
            fault_service = serving_service(self.slots, fault_service)
        elif fault_service is None:
            fault_service = serving_service(self.slots, None, required=False)
        self.fault_service = fault_service
        if self.budget_bytes is not None:
            if swap is None:
                swap = self._own_swap = HostSwap(size=sum(s.mem.size_bytes for s in self.slots))
            self.swapper = HostSwapper(fault_service, swap)
        self.swap = swap
        self.interval_s = float(interval_s)
        self.headroom = float(headroom)
        self.sample_interval_s = float(sample_interval_s)
        self.clock = clock
        self.lock = threading.RLock()
        self.submission = Submission(self.spec, self.swapper, self.budget_bytes is not None)
        self.strategy = make_strategy(self.spec, self, self.submission)
        self.tick = 0
        self.t0 = clock()
        self.timeline = []
        self._next_sample = self.t0
        self.cpu_s_by_thread = {}
        self.guest_timer_cpu_s = 0.0    # guest timers the host thread fired (guest work)
        self.steps = 0
        self.reclaim_calls = 0
        self.budget_overruns = 0
        self.resident_npages = 0
        self.resident_peak_npages = 0   # highest sampled residency, before reclaim acted on it
        self.samples = 0
        self._thread = None
        self._stop = threading.Event()
        self.error = None           # what the host thread died of, until reported
        self.reported_error = None  # ... and once check() reported it
        self.died_at_step = None
        self.strategy.attach()

    # --- measurement ---------------------------------------------------------------------
    @property
    def budget_npages(self):
        return None if self.budget_bytes is None else self.budget_bytes // PAGE_SIZE

    def sample(self):
        """Re-read every guest's residency from the kernel; returns total resident pages."""
        self.tick += 1
        self.samples += 1
        self.resident_npages = self.residency.sample(self.tick, self.fault_service)
        self.resident_peak_npages = max(self.resident_peak_npages, self.resident_npages)
        return self.resident_npages

    def guest_resident_bytes(self):
        return sum(s.mem.resident_pages() for s in self.slots) * PAGE_SIZE

    def host_swap_bytes(self):
        return self.swapper.used_bytes() if self.swapper else 0

    def record(self, force=False):
        """Append a timeline sample [t_s, rss_bytes, guest_resident_bytes, host_swap_bytes,
        rss_anon_bytes]."""
        now = self.clock()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + self.sample_interval_s
        self.timeline.append([round(now - self.t0, 4), measure.rss_bytes(),
                              self.resident_npages * PAGE_SIZE, self.host_swap_bytes(),
                              measure.anon_rss_bytes()])

    def over_budget(self):
        """Cheap check for direct reclaim: are the guests above budget right now (mincore)?"""
        self.check()
        if self.budget_bytes is None:
            return False
        return self.guest_resident_bytes() > self.budget_bytes

    # --- the loop ----------------------------------------------------------------------------
    def step(self):
        """One pass of the reclaim loop; returns pages taken from the guests in this pass."""
        t_cpu = time.thread_time()
        with self.lock:
            now = self.clock()
            self.sample()
            taken = self.strategy.proactive(now)
            if self.budget_bytes is not None:
                self.resident_npages -= taken
                taken += self._enforce_budget()
            self.steps += 1
            self.record()
        ident = threading.get_ident()
        self.cpu_s_by_thread[ident] = self.cpu_s_by_thread.get(ident, 0.0) + time.thread_time() - t_cpu
        return taken

    def _enforce_budget(self):
        target = int(self.budget_npages * (1.0 - self.headroom))
        if self.resident_npages <= self.budget_npages:
            return 0
        self.budget_overruns += 1
        self.reclaim_calls += 1
        need = self.resident_npages - target
        freed = self.strategy.reclaim(need)
        if freed < need:
            freed += self.swap_oldest(need - freed)
        self.resident_npages -= freed
        return freed

    def swap_oldest(self, need):
        """Host-swap `need` resident STABLE pages, oldest resident first across all guests
        (the host cannot see guest access bits: FIFO is the order it has)."""
        def stable(g, pages):
            return (self.slots[g].mem.states[pages] & PAIR_MASK) == SR
        return sum(self.swap_out(self.slots[g], pages, "STABLE")
                   for g, pages in self.residency.oldest(need, stable))

    def swap_out(self, slot, pages, kind="STABLE"):
        """Write pages to host swap, host_batch pages per submission; returns pages written."""
        return self.submission.swap_out(slot, pages, kind)

    # --- guests' side of the host -----------------------------------------------------------
    def on_scheduled(self, guest):
        """The runner is about to run `guest`: deliver what the host asked of it (balloon)."""
        self.check()
        slot = self.slot_of(guest)
        with self.lock:
            self.strategy.on_scheduled(slot, self.clock())

    def guest_timers(self):
        """Guests' own timers (the free page reporting work item) fire now; called by the
        runner every round whether or not a guest is scheduled (and by the started host)."""
        self.check()
        now = self.clock()
        with self.lock:
            for slot in self.slots:
                self.strategy.guest_timer(slot, now)

    def slot_of(self, guest):
        s = self._slot_of.get(id(guest))
        if s is not None and (s.guest is guest or s.mem is guest):
            return s
        raise ConfigError("%r is not a guest of this host" % (guest,))

    # --- thread --------------------------------------------------------------------------------
    def start(self):
        """Run the reclaim loop in its own thread until stop(); every `interval_s` the thread
        also fires the guests' timers (guest_timers: free page reporting's delayed work item),
        so a started host needs no one else to drive them.  Calling guest_timers() as well
        (the runner does, between guest steps) is harmless: a timer runs only when due."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gphint-host", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.wait(self.interval_s):
                t_cpu = time.thread_time()
                self.guest_timers()
                # the guests' own work, though this thread ran it: not the host's CPU
                self.guest_timer_cpu_s += time.thread_time() - t_cpu
                self.step()
        except BaseException as e:   # recorded and reported by check() / stop(): never silent
            self.error = e
            self.died_at_step = self.steps

    def check(self):
        """Raise HostThreadDied if the started host thread stopped on an error (once; the
        original error is its __cause__).  The runner's calls into the host make this check,
        so a dead host thread stops the run instead of leaving the budget unenforced."""
        err = self.error
        if err is None or self._thread is None:
            return
        self.error = None
        self.reported_error = err
        raise HostThreadDied("the host thread died at step %d (%s: %s): the %s is no longer "
                             "enforced" % (self.died_at_step, type(err).__name__, err,
                                           "budget" if self.budget_bytes is not None
                                           else "proactive scan")) from err

    def stop(self):
        """Stop the loop thread; re-raise anything it failed with."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.strategy.detach()
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def close(self):
        """Stop, and close the host swap file if the host created it (after the guests are
        closed: a swapped page must stay readable while its guest may still touch it)."""
        self.stop()
        if self._own_swap is not None:
            self._own_swap.close()
            self._own_swap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- results ---------------------------------------------------------------------------------
    def stats(self):
        """Counters for the results record."""
        discarded, swapped, skipped, swap_skipped = {}, {}, {}, {}
        for s in self.slots:
            for table, total in ((s.discarded, discarded), (s.swapped, swapped),
                                 (s.skipped, skipped), (s.swap_skipped, swap_skipped)):
                for k, v in table.items():
                    total[k] = total.get(k, 0) + v
        out = {"strategy": str(self.spec), "mode": "pressure" if self.budget_bytes else "proactive",
               "budget_bytes": self.budget_bytes, "steps": self.steps, "samples": self.samples,
               "reclaim_calls": self.reclaim_calls, "budget_overruns": self.budget_overruns,
               "discarded_pages": discarded, "host_swap_out_pages": swapped,
               "skipped_pages": skipped, "host_swap_skipped_pages": swap_skipped,
               "host_swap_out_bytes": (self.swapper.out_npages if self.swapper else 0) * PAGE_SIZE,
               "host_swap_calls": self.swapper.calls if self.swapper else 0,
               "swap_dropped_pages": sum(s.dropped.get("swap_dropped", 0) for s in self.slots),
               "host_step_cpu_s": sum(self.cpu_s_by_thread.values()),
               "guest_timer_cpu_s": self.guest_timer_cpu_s}
        out.update(self.strategy.stats())
        return out
