"""The five host strategies: what the host may take, in what order, and when it learns of it.

    none       no hints: only host swap (the Host's last resort, oldest resident first)
    unused     s390 mainline: discard UNUSED pages, then host swap
    cmma       full guest page hinting: UNUSED, VOLATILE, clean POT_VOLATILE (dirty ones are
               preserved), then host swap
    reporting  Linux free page reporting: the guest reports free >= 2^order blocks after a delay,
               the host discards them (gphint.host.reporting), then host swap
    balloon    virtio-balloon with a MOM-like policy (gphint.host.balloon), then host swap

Each strategy is fill -> submit -> drain in `batch`-sized submissions; they differ only in how
they fill.  Host swap under a budget is the Host's, common to all.
"""
import numpy as np

from ..errors import StateError, Unsupported
from ..states import CONTENT_MASK, HostState, PageState, USAGE_MASK


class Strategy:
    """Base: no hints, nothing to take but by swapping."""

    name = "none"

    def __init__(self, spec, host):
        self.spec = spec
        self.host = host
        p = spec.params
        self.batch = int(p.get("batch", 256))
        self.submit = p.get("submit", "vectored")
        self.advice = p.get("discard", "dontneed")

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

    def guest_driver(self, module, cls):
        """The guest-side class a peer needs (the guest half of reporting or the balloon)."""
        from .guests import import_layer
        return getattr(import_layer(module, self.name, "the guest layer (issue 4) provides it"), cls)

    def allocator_of(self, slot):
        """A peer calls into the guest: it needs a guest with an allocator, not bare memory."""
        alloc = getattr(slot.guest, "allocator", None)
        if alloc is None:
            raise Unsupported("%s for %s" % (self.name, slot.name),
                              "a bare GuestMemory has no buddy allocator to call into",
                              "give the host gphint.Guest objects")
        return alloc

    # --- the submit half of the batching cycle, shared by every hinting strategy -------------
    def discard(self, slot, pages, kind, raw=False):
        """Discard pages of one guest in `batch`-sized submissions; returns pages discarded.
        raw=True is the peers' way (no CMMA states: the host only knows the page is free)."""
        if pages.size == 0:
            return 0
        mem = slot.mem
        if raw:
            self._drop_swapped(slot, pages)
        n = 0
        for first in range(0, pages.size, self.batch):
            chunk = pages[first:first + self.batch]
            if raw:
                n += mem.discard_raw(chunk, self.advice, self.submit)
            else:
                n += self._discard_hinted(slot, chunk, kind)
        slot.residency.forget(pages)
        slot.count(kind, n)
        return n

    # tries per chunk before the host gives the chunk up: each failed try means a guest thread
    # made one of its pages STABLE between the host's re-read and discard's own check
    RACE_TRIES = 8

    def _discard_hinted(self, slot, chunk, kind):
        """Discard a chunk chosen from a snapshot of the states, which guest threads not holding
        host.lock may have changed since: a page made STABLE meanwhile is a lost race, so it
        is skipped (and counted), never an error.  With a fault service the state protocol
        decides page by page (pick CAS: a page changed since is left alone), so nothing can be
        lost; without one the host has no hold on a page, and guests must hold host.lock."""
        mem = slot.mem
        for _ in range(self.RACE_TRIES):
            live = chunk[(mem.states[chunk] & USAGE_MASK) != PageState.STABLE]
            try:
                n = self._discard_advised(mem, live) if live.size else 0
                break
            except StateError:
                continue
        else:
            n = 0
        if n < chunk.size:
            slot.count(kind, chunk.size - n, slot.skipped)
        return n


    def _discard_advised(self, mem, pages):
        """discard=free under a budget: a page the host lazily freed before and still finds
        resident is taken now with MADV_DONTNEED -- the host needs the memory, and lazily freed
        pages are what the kernel's own reclaim takes first (mm/vmscan.c: clean lazyfree folios
        are dropped without I/O).  In proactive mode they are left to the kernel."""
        if self.advice == "free" and self.host.budget_bytes is not None:
            lazy = (mem.states[pages] & CONTENT_MASK) == HostState.LAZY
            if lazy.any():
                return (mem.discard(pages[lazy], advice="dontneed", submit=self.submit)
                        + mem.discard(pages[~lazy], advice="free", submit=self.submit))
        return mem.discard(pages, advice=self.advice, submit=self.submit)

    def _drop_swapped(self, slot, pages):
        """A free page the host had swapped out: the device's MADV_DONTNEED drops the swap
        entry too (Linux frees it), so the page's next use is a zero page, not a swap-in of
        stale content.  Hint-less guests keep every page S in the state table, so the host
        does it by the protocol's own steps: Sp -> Uz (copy given up), free the slots,
        Uz -> Sz.  Safe: the page is isolated (reported) or owned by the balloon meanwhile."""
        host = self.host
        if host.swapper is None:
            return
        states = slot.mem.states[pages]
        held = pages[(states & CONTENT_MASK) == HostState.PRESERVED]
        if held.size == 0:
            return
        slot.mem.set_state(held, PageState.UNUSED)
        host.fault_service.reclaim_slots(host.swap)
        slot.mem.set_state(held, PageState.STABLE)
        host.swap_dropped_npages += int(held.size)


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
        from .host import share
        slots = self.host.slots
        cands = [self._candidates(s, state) for s in slots]
        quota = share([c.size for c in cands], need)
        if state == PageState.POT_VOLATILE:
            return sum(self._pot_volatile(s, c[:q]) for s, c, q in zip(slots, cands, quota))
        return sum(self.discard(s, c[:q], state.name) for s, c, q in zip(slots, cands, quota))

    def stats(self):
        return {"scans": self.scans, "youngest_unused_taken_s":
                None if np.isinf(self.youngest_taken_s) else round(self.youngest_taken_s, 4)}


class Cmma(HintScan):
    """Full guest page hinting."""

    name = "cmma"
    TIERS = (PageState.UNUSED, PageState.VOLATILE, PageState.POT_VOLATILE)

    def _pot_volatile(self, slot, pages):
        """Pr pages: the host's dirty bit decides -- clean ones are discarded (Pr -> Vz), dirty
        ones preserved in host swap (Pr -> Sp).  Returns pages taken either way."""
        if pages.size == 0:
            return 0
        svc = self.host.fault_service
        dirty = np.asarray(svc.dirty_pages(slot.mem, pages))
        if dirty.dtype == bool and dirty.shape == pages.shape:
            mask = dirty
        else:
            mask = np.isin(pages, dirty)
        n = self.discard(slot, pages[~mask], "POT_VOLATILE")
        return n + self.host.swap_out(slot, pages[mask], "POT_VOLATILE")


def make_strategy(spec, host):
    from .balloon import Balloon
    from .kernel import KernelPeer
    from .reporting import Reporting
    cls = {"none": Strategy, "unused": HintScan, "cmma": Cmma, "reporting": Reporting,
           "balloon": Balloon, "kernel": KernelPeer}[spec.name]
    return cls(spec, host)
