"""The five host strategies: what the host may take, in what order, and when it learns of it.

    none       no hints: only host swap (the Host's last resort, oldest resident first)
    unused     s390 mainline: discard UNUSED pages, then host swap
    cmma       full guest page hinting: UNUSED, VOLATILE, clean POT_VOLATILE (dirty ones are
               preserved), then host swap
    reporting  Linux free page reporting: the guest reports free >= 2^order blocks after a delay,
               the host discards them (gphint.host.reporting), then host swap
    balloon    virtio-balloon with a MOM-like policy (gphint.host.balloon), then host swap

Each strategy fills the host's batching cycle (gphint.batching) with the pages it picks; the
submission -- host_batch pages per call, the final flush, the counting -- is the same for all
(gphint.host.submission).  Host swap under a budget is the Host's, common to all.
A strategy reads the host (its guests, budget, lock) and writes only its own state and its
guests' slots; everything it takes goes through `self.submission`.
"""
import numpy as np

from ..errors import Unsupported
from ..states import CONTENT_MASK, HostState, PageState, USAGE_MASK
from .spec import registers, share


@registers("none")
class Strategy:
    """Base: no hints, nothing to take but by swapping."""

    name = "none"

    def __init__(self, spec, host, submission):
        self.spec = spec
        self.host = host
        self.submission = submission

    def attach(self):
        """Called once the host knows its guests (drivers are created here)."""

    def detach(self):
        """Called when the host stops."""

    def proactive(self, now):
        """Take what this strategy has been told is free, whatever the budget; returns pages."""
        return 0

    def reclaim(self, need_npages):
        """Under pressure: take up to need_npages by hints (before host swap); returns pages."""
        return 0

    def on_scheduled(self, slot, now):
        """The guest behind `slot` runs now (requests that need the guest are served here)."""

    def guest_timer(self, slot, now):
        """The guest's own delayed work runs (it does not wait to be scheduled by the host)."""

    def stats(self):
        return {}

    def allocator_of(self, slot):
        """A peer calls into the guest: it needs a guest with an allocator, not bare memory."""
        alloc = getattr(slot.guest, "allocator", None)
        if alloc is None:
            raise Unsupported("%s for %s" % (self.name, slot.name),
                              "a bare GuestMemory has no buddy allocator to call into",
                              "give the host gphint.Guest objects")
        return alloc

    def discard(self, slot, pages, kind, raw=False):
        """Hand picked pages of one guest to the host's submission; returns pages discarded."""
        return self.submission.discard(slot, pages, kind, raw)


@registers("unused")
class HintScan(Strategy):
    """unused and cmma: the host reads the guests' page states (no call into the guest)."""

    name = "unused"
    TIERS = (PageState.UNUSED,)

    def attach(self):
        self.scan_s = float(self.spec.params["scan"])
        self.delay_s = float(self.spec.params["delay"])
        self._next_scan = 0.0
        # bare GuestMemory has no hint path to date its frees: the host dates its UNUSED pages
        # from the first scan that sees them (a page freed again between scans keeps its date)
        self._first_seen = [None if s.unused_since_ns is not None else np.full(s.mem.npages, np.inf)
                            for s in self.host.slots]
        self.scans = 0
        self.youngest_taken_s = np.inf

    def _candidates(self, slot, state):
        usage = slot.mem.states & USAGE_MASK
        return np.flatnonzero(slot.residency.resident & (usage == state))

    def proactive(self, now):
        """Proactive mode only: every `scan` seconds discard resident UNUSED pages that became
        UNUSED -- as the host sees it: the guest's hint submission -- at least `delay` seconds
        ago.  Under a budget the host reclaims on demand instead."""
        if self.host.budget_bytes is not None or now < self._next_scan:
            return 0
        self._next_scan = now + self.scan_s
        self.scans += 1
        taken = 0
        for slot, first_seen in zip(self.host.slots, self._first_seen):
            # the states before the dates: the guest dates a free before its state byte
            # changes, so an UNUSED read here is never paired with an older free's date
            unused = (slot.mem.states & USAGE_MASK) == PageState.UNUSED
            if first_seen is None:     # in integer ns, as the guest dated the frees
                age_ns = round(now * 1e9) - slot.unused_since_ns
                old = age_ns >= round(self.delay_s * 1e9)
            else:
                first_seen[~unused] = np.inf
                first_seen[unused & np.isinf(first_seen)] = now
                age_ns = (now - first_seen) * 1e9
                old = now - first_seen >= self.delay_s
            # lazily freed pages were given already: the kernel takes them when it needs to
            lazy = (slot.mem.states & CONTENT_MASK) == HostState.LAZY
            ripe = np.flatnonzero(slot.residency.resident & unused & ~lazy & old)
            if ripe.size:
                # the youngest page taken: what the delay rule promised, as the host measured it
                self.youngest_taken_s = min(self.youngest_taken_s, float(age_ns[ripe].min()) * 1e-9)
            taken += self.discard(slot, ripe, PageState.UNUSED.name)
        return taken

    def reclaim(self, need):
        freed = 0
        for state in self.TIERS:
            if freed >= need:
                break
            freed += self._tier(state, need - freed)
        return freed

    def _tier(self, state, need):
        slots = self.host.slots
        svc = self.submission.service_of(slots)
        if svc is None:
            cands = [self._candidates(s, state) for s in slots]
            quota = share([c.size for c in cands], need)
            if state == PageState.POT_VOLATILE:
                return sum(self._pot_volatile(s, c[:q]) for s, c, q in zip(slots, cands, quota))
            return sum(self.discard(s, c[:q], state.name) for s, c, q in zip(slots, cands, quota))
        # served: the candidates are counted in one C call over every guest's state bytes, and
        # the choice and discard of every guest's share is one C call too -- a pass's cost
        # follows what it takes, not how many guests there are (a Python scan and discard per
        # guest made cmma's host CPU per MiB grow 4x from 8 to 512 guests)
        fleet = self.host.residency
        # (one guest's share is all it has, up to need: take stops where its candidates end)
        quota = (np.array([need], dtype=np.int64) if len(slots) == 1 and state != PageState.POT_VOLATILE
                 else share(self.submission.count(svc, fleet, (state,)), need))
        if state == PageState.POT_VOLATILE:   # the dirty bit decides each page: in Python
            return sum(self._pot_volatile(slots[i], self._candidates(slots[i], state)[:quota[i]])
                       for i in np.flatnonzero(quota).tolist())
        return self.submission.take(svc, slots, fleet, (state,), quota, state.name)

    def stats(self):
        return {"scans": self.scans, "youngest_unused_taken_s":
                None if np.isinf(self.youngest_taken_s) else round(self.youngest_taken_s, 4)}


@registers("cmma")
class Cmma(HintScan):
    """Full guest page hinting."""

    name = "cmma"
    TIERS = (PageState.UNUSED, PageState.VOLATILE, PageState.POT_VOLATILE)

    def _pot_volatile(self, slot, pages):
        """Pr pages: the host's dirty bit decides -- clean ones are discarded (Pr -> Vz), dirty
        ones preserved in host swap (Pr -> Sp).  Returns pages taken either way."""
        if pages.size == 0:
            return 0
        dirty = slot.mem.fault_service.dirty_pages(slot.mem, pages)
        n = self.discard(slot, pages[~dirty], "POT_VOLATILE")
        return n + self.submission.swap_out(slot, pages[dirty], "POT_VOLATILE")
