"""The host's submission: the submit -> drain half of its batching cycle (gphint.batching),
shared by every strategy, so that strategies differ only in how they fill.

A strategy picks pages of one guest and hands them to `discard` (or the Host its oldest stable
pages to `swap_out`); each is one cycle of capacity `host_batch`: every full batch is one call
into the memory's discard path (or the fault service's swap-out), and the cycle's end flushes
the rest.  What was taken is counted on the guest's slot; nothing here writes host state.
"""
import numpy as np

from .. import batching
from ..errors import StateError
from ..states import CONTENT_MASK, USAGE_MASK, HostState, PageState


class Submission:
    """Submission(spec, swapper, under_budget): how the host's picks reach the kernel."""

    # tries per batch before the host gives the batch up: each failed try means a guest thread
    # made one of its pages STABLE between the host's re-read and discard's own check
    RACE_TRIES = 8

    def __init__(self, spec, swapper, under_budget):
        self.host_batch, self.submit, self.advice = spec.host_side()
        self.swapper = swapper
        self.under_budget = bool(under_budget)

    def discard(self, slot, pages, kind, raw=False):
        """Discard pages of one guest, host_batch pages per submission; returns pages discarded.
        raw=True is the peers' way (no CMMA states: the host only knows the page is free)."""
        if pages.size == 0:
            return 0
        mem = slot.mem
        if raw:
            self._drop_preserved(slot, pages)
            n = batching.run(pages, self.host_batch,
                             lambda batch: mem.discard_raw(batch, self.advice, self.submit))
        else:
            n = batching.run(pages, self.host_batch, lambda batch: self._discard_hinted(slot, batch, kind))
        slot.residency.forget(pages)
        slot.count(kind, n)
        return n

    def service_of(self, slots):
        """The fault service through which a reclaim tier over `slots` is one C call for all
        of them (count, take), or None: every guest served by that one service, and an advice the C
        choice makes as this module would -- under a budget with discard=free, lazily freed
        pages are taken with MADV_DONTNEED instead (_discard_advised), which stays in Python."""
        if self.advice == "free" and self.under_budget:
            return None
        svc = slots[0].mem.fault_service if slots else None
        if svc is None or any(s.mem.fault_service is not svc for s in slots):
            return None
        return svc

    def count(self, svc, fleet, states):
        """int64 per guest: the pages take() would choose now (one C call for the fleet)."""
        return svc.count_candidates(fleet, states, self.advice)

    def take(self, svc, slots, fleet, states, quota, kind):
        """Up to quota[i] resident pages of guest i whose usage is one of `states`, chosen,
        picked, discarded and finished in one C call for the fleet, host_batch pages per
        submission (the same cycle discard() makes); chosen pages are forgotten in the
        residency sample.  Returns pages discarded; chosen pages the protocol skipped are
        counted as such on their guest's slot."""
        got = svc.take_fleet(fleet, states, quota, self.host_batch, self.advice, self.submit)
        for i in np.flatnonzero(got[:, 1]).tolist():
            n, chosen = got[i].tolist()
            slots[i].count(kind, n)
            if chosen > n:
                slots[i].count(kind, chosen - n, slots[i].skipped)
        return int(got[:, 0].sum())

    def swap_out(self, slot, pages, kind="STABLE"):
        """Write pages to host swap, host_batch pages per submission; returns pages written."""
        if self.swapper is None or pages.size == 0:
            return 0
        n = batching.run(pages, self.host_batch, lambda batch: self.swapper.swap_out(slot.mem, batch))
        slot.residency.forget(pages)
        slot.count(kind, n, slot.swapped)
        if n < pages.size:        # the protocol skipped pages that changed since the snapshot
            slot.count(kind, pages.size - n, slot.swap_skipped)
        return n

    def _discard_hinted(self, slot, batch, kind):
        """Discard a batch chosen from a snapshot of the states, which guest threads not holding
        host.lock may have changed since: a page made STABLE meanwhile is a lost race, so it
        is skipped (and counted), never an error.  With a fault service the state protocol
        decides page by page (pick CAS: a page changed since is left alone), so nothing can be
        lost; without one the host has no hold on a page, and guests must hold host.lock."""
        mem = slot.mem
        for _ in range(self.RACE_TRIES):
            live = batch[(mem.states[batch] & USAGE_MASK) != PageState.STABLE]
            try:
                n = self._discard_advised(mem, live) if live.size else 0
                break
            except StateError:
                continue
        else:
            n = 0
        if n < batch.size:
            slot.count(kind, batch.size - n, slot.skipped)
        return n

    def _discard_advised(self, mem, pages):
        """discard=free under a budget: a page the host lazily freed before and still finds
        resident is taken now with MADV_DONTNEED -- the host needs the memory, and lazily freed
        pages are what the kernel's own reclaim takes first (mm/vmscan.c: clean lazyfree folios
        are dropped without I/O).  In proactive mode they are left to the kernel."""
        if self.advice == "free" and self.under_budget:
            lazy = (mem.states[pages] & CONTENT_MASK) == HostState.LAZY
            if lazy.any():
                return (mem.discard(pages[lazy], advice="dontneed", submit=self.submit)
                        + mem.discard(pages[~lazy], advice="free", submit=self.submit))
        return mem.discard(pages, advice=self.advice, submit=self.submit)

    def _drop_preserved(self, slot, pages):
        """A free page the host had swapped out: the device's MADV_DONTNEED drops the swap
        entry too (Linux frees it), so the page's next use is a zero page, not a swap-in of
        stale content.  Hint-less guests keep every page STABLE, so this is the host's own
        transition Sp -> Sz (FaultService.drop_preserved: slot freed, content zero), safe
        because the page is isolated (reported) or owned by the balloon meanwhile."""
        if self.swapper is None:
            return      # only the host's swap-out under a budget preserves pages
        svc = slot.mem.fault_service
        held = pages[(slot.mem.states[pages] & CONTENT_MASK) == HostState.PRESERVED]
        if held.size:
            slot.count("swap_dropped", svc.drop_preserved(slot.mem, held), slot.dropped)
