"""Discard submission: how the pages a host picked reach the kernel (the memory/faults seam).

The layers, each calling only the one below it and handed data, never called back:
  guest model    gphint.guest (allocator, page cache, Guest) decides each page's usage state
  hint buffer    gphint.guest.hints.HintBuffer -> ext/hintq.c: batched usage transitions
  host           gphint.host (Host, strategies): reads the state bytes, picks pages to take
  discard        GuestMemory.discard -> the memory's discard path (this module), chosen once:
                 Unserved below, or the served path FaultService.register installs
  C              ext/discard.c (madvise / process_madvise), ext/hostops.c (pick -> act ->
                 finish), ext/faults.c (the userfaultfd thread that reloads)
The one path a discarded page takes: the guest frees it (BuddyAllocator.free -> HintBuffer.hint:
Sr -> Ur, submitted by the guest's batching cycle, gphint.batching); the host takes it in one
of two ways.  The proactive scan (HintScan.proactive) picks it from the state bytes and fills
its host cycle (gphint.host.submission.Submission.discard); each host_batch pages become one
GuestMemory.discard -> the served path (gphint.faults._Served.discard) ->
FaultThread.host_discard -> gph_host_discard (ext/hostops.c: CAS pick, one vectored madvise,
finish: Ur -> Uz).  A reclaim tier under a budget (HintScan._tier -> Submission.take ->
FaultService.take_fleet) chooses in C too: gph_host_take_fleet -> gph_host_take per guest
(ext/hostops.c: choose by state byte and residency sample, then the same pick, madvise,
finish).  The guest
allocates it again (Uz -> Sz) and its first touch faults: the fault thread (ext/faults.c,
serve_page) fills zeros, Sz -> Sr.  A VOLATILE page goes the same way to Vz, and its touch
reloads the file's bytes (Vz -> Vr) before the access continues.  No layer calls back up.

This module owns the names users pass (`advice`, `submit`) and the one choice of submit mode.
"""
from collections import namedtuple

import numpy as np

from . import _mechanism, caps
from ._mechanism import mech
from .errors import ConfigError, Unsupported
from .states import CONTENT_MASK, USAGE_MASK, HostState, PageState

# The index of each name is its code in ext/gphint.h (GPH_ADVICE_*, GPH_SUBMIT_*).
ADVICES = ("dontneed", "free")
#   per_page  one madvise per page; coalesce  one madvise per run of consecutive pages;
#   vectored  one process_madvise per <= 1024 runs (Linux >= 5.10)
SUBMIT_MODES = ("per_page", "coalesce", "vectored")
VECTORED = SUBMIT_MODES.index("vectored")
COALESCE = SUBMIT_MODES.index("coalesce")

# What one discard submission did: pages discarded, system calls made, runs advised, pages
# resident just before (mincore), pages left lazily freed (MADV_FREE).
Discarded = namedtuple("Discarded", "pages calls runs resident lazy")
NOTHING = Discarded(0, 0, 0, 0, 0)


def advice_code(advice):
    """The code of an advice name (or code); Unsupported when the kernel lacks MADV_FREE."""
    if advice not in ADVICES:
        if isinstance(advice, int) and advice in (0, 1):
            return advice
        raise ConfigError("unknown advice %r (expected one of %s)" % (advice, ", ".join(ADVICES)))
    if advice == "free" and not caps.has("madv_free"):
        f = caps.probe().features["madv_free"]
        raise Unsupported("MADV_FREE", f.reason, f.remedy)
    return ADVICES.index(advice)


def submission(submit):
    """The one choice of submit mode: (code, pidfd, fell_back).  vectored needs process_madvise;
    where the kernel lacks it, coalesce makes the same advice in one madvise per run instead
    (fell_back=True: the caller counts it).  pidfd is this process's, for vectored only."""
    if submit in SUBMIT_MODES:
        code = SUBMIT_MODES.index(submit)
    elif isinstance(submit, int) and 0 <= submit < len(SUBMIT_MODES):
        code = submit
    else:
        raise ConfigError("unknown submit mode %r (expected one of %s)" % (submit, ", ".join(SUBMIT_MODES)))
    fell_back = code == VECTORED and not caps.has("process_madvise")
    if fell_back:
        code = COALESCE
    return code, (_mechanism.self_pidfd() if code == VECTORED else -1), fell_back


def discard_counters(mems):
    """The results record's discard and MADV_FREE fields (docs/results.md), summed over mems.
    First asks the kernel about pages still lazily freed, so lazy_reclaimed_pages includes
    those reclaimed by now; lazy_pending_pages are the rest (present, fate still open)."""
    for m in mems:
        m.resolve_lazy()
    total = {}
    for m in mems:
        for k, v in m.stats.items():
            total[k] = total.get(k, 0) + int(v)
    pending = sum(int(np.count_nonzero((m.states & CONTENT_MASK) == int(HostState.LAZY))) for m in mems)
    return {"discard_syscalls": total.get("discard_calls", 0),
            "discard_advised_pages": total.get("discarded_pages", 0),
            "discard_resident_pages": total.get("discarded_resident_pages", 0),
            "lazy_freed_pages": total.get("lazy_freed_pages", 0),
            "lazy_reused_pages": total.get("lazy_reused_pages", 0),
            "lazy_reclaimed_pages": total.get("lazy_reclaimed_pages", 0),
            "lazy_pending_pages": pending}


class Unserved:
    """The discard path of a memory no fault service serves (until FaultService.register):
    nothing could bring a VOLATILE or POT_VOLATILE page's data back, so only UNUSED pages go,
    by a plain madvise; their content becomes ZERO (or LAZY under MADV_FREE)."""

    service = None
    bounce = False   # page-cache I/O reads into the frames directly

    def __init__(self, region, page_size, states):
        self.region, self.page_size, self.states = region, page_size, states

    def discard(self, idx, advice, mode, pidfd):
        usage = self.states[idx] & USAGE_MASK
        reloadable = np.flatnonzero(usage != PageState.UNUSED)
        if reloadable.size:
            i = reloadable[0]
            raise Unsupported("discard of %s page %d" % (PageState(int(usage[i])).name, int(idx[i])),
                              "without a discard-fault service its next access would read zeros "
                              "instead of its data",
                              "serve this memory with gphint.FaultService (needs userfaultfd)")
        got = Discarded(*mech.discard_pages(self.region, self.page_size, idx, advice, mode, pidfd))
        # MADV_FREE: still mapped until the kernel reclaims it -- lazily freed, not zero
        mech.set_content(self.states, idx, int(HostState.LAZY if advice == 1 else HostState.ZERO))
        return got

    def fill(self, idx, fd, offsets):
        return mech.fill_from_file(self.region, self.page_size, idx, fd, offsets, False)[0]

    def lazy_refaults(self):
        return 0   # a fault on a reclaimed lazily freed page is the kernel's zero fill: not seen


CLOSED = Unserved(None, 0, None)   # a closed memory's path: every call is refused before it
