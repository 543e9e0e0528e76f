"""Page descriptors ("struct page") and the rule that decides which pages the host may discard
(Schwidefsky's guest page hinting patch series, 2006, patch 3).

Descriptors are parallel numpy arrays over the guest's frames, so that a read of n pages, a
writeback of a file or an LRU scan is a handful of vectorised operations.

The volatile rule (patch 3's ten conditions, as they apply here): a frame may be VOLATILE only
if it is a page-cache or swap-cache page (anonymous pages and pages without a mapping stay
STABLE), up to date, not dirty, not under writeback, not locked, without private data, without
extra references (pins), and not mlocked (patch 5).  A clean page mapped writable is
POT_VOLATILE (patch 6) when the host can track its dirty bit, else STABLE.  Everything else is
STABLE.
"""
import numpy as np

from ..states import PageState

S, P, V = int(PageState.STABLE), int(PageState.POT_VOLATILE), int(PageState.VOLATILE)

# frame kinds
FREE, FILE, ANON, SWAPCACHE = 0, 1, 2, 3
KIND_NAMES = {FREE: "free", FILE: "file", ANON: "anon", SWAPCACHE: "swapcache"}

# frame flags (page-flags.h words)
UPTODATE = 1 << 0
DIRTY = 1 << 1
WRITEBACK = 1 << 2
LOCKED = 1 << 3
PRIVATE = 1 << 4
MLOCKED = 1 << 5
MAPPED_WRITABLE = 1 << 6
HELD = 1 << 7            # transient: the guest is changing this page's descriptor right now
NO_BACKING = 1 << 8      # no backing store could be recorded: "no mapping", nothing to reload from
# any of these keeps a frame STABLE, whatever its kind
_PINS_STABLE = DIRTY | WRITEBACK | LOCKED | PRIVATE | MLOCKED | HELD | NO_BACKING
FLAG_DTYPE = np.uint16
_FLAG_BITS = 9                # flags in use: bits 0-8 (desired_usage's table is indexed by them)
assert (UPTODATE | DIRTY | WRITEBACK | LOCKED | PRIVATE | MLOCKED | MAPPED_WRITABLE | HELD
        | NO_BACKING) < 1 << _FLAG_BITS and SWAPCACHE < 4, "grow _FLAG_BITS with the flags"


def _desired_table(pot_volatile_ok):
    """The usage state a frame's (kind, flags) allows, for every combination: VOLATILE for a
    clean, up-to-date, unpinned page-cache or swap-cache page; POT_VOLATILE (or STABLE without
    host dirty tracking) if it is also mapped writable; STABLE for everything else."""
    kind = np.arange(4 << _FLAG_BITS) >> _FLAG_BITS
    flags = np.arange(4 << _FLAG_BITS) & ((1 << _FLAG_BITS) - 1)
    clean = (((kind == FILE) | (kind == SWAPCACHE)) & ((flags & UPTODATE) != 0)
             & ((flags & _PINS_STABLE) == 0))
    mapped = (flags & MAPPED_WRITABLE) != 0
    want = np.where(clean, V, S).astype(np.uint8)
    want[clean & mapped] = P if pot_volatile_ok else S
    return want


_DESIRED = (_desired_table(False), _desired_table(True))


class FrameTable:
    """Per-frame descriptors: kind, owner (fid or pid), index (file page or virtual page), flags,
    extra references and last use (LRU tick)."""

    def __init__(self, npages):
        self.kind = np.zeros(npages, dtype=np.uint8)
        self.owner = np.full(npages, -1, dtype=np.int64)
        self.index = np.full(npages, -1, dtype=np.int64)
        self.flags = np.zeros(npages, dtype=FLAG_DTYPE)
        self.refs = np.zeros(npages, dtype=np.int32)
        self.last_use = np.zeros(npages, dtype=np.int64)
        self.hinted = np.zeros(npages, dtype=np.uint8)   # usage state last hinted (S on alloc)
        self.tick = 0

    def claim(self, frames, kind, owner, index, flags=0):
        self.kind[frames] = kind
        self.owner[frames] = owner
        self.index[frames] = index
        self.flags[frames] = flags
        self.refs[frames] = 0
        self.hinted[frames] = S          # the allocator hands frames out STABLE
        self.touch(frames)

    def reset(self, frames):
        self.kind[frames] = FREE
        self.owner[frames] = -1
        self.index[frames] = -1
        self.flags[frames] = 0
        self.refs[frames] = 0
        self.hinted[frames] = S

    def touch(self, frames):
        self.tick += 1
        self.last_use[frames] = self.tick

    def desired_usage(self, frames, pot_volatile_ok):
        """The usage state each frame's descriptor allows (uint8 PageState codes)."""
        # one table look-up on (kind, flags): settle() runs on every write and writeback, and
        # each numpy call on a few frames costs more than the rule it evaluates
        key = (self.kind[frames].astype(np.intp) << _FLAG_BITS) | self.flags[frames]
        want = _DESIRED[int(bool(pot_volatile_ok))][key]
        refs = self.refs[frames]
        if np.count_nonzero(refs):     # cheaper than refs.any() on a few frames
            want[refs != 0] = S          # extra references pin a page (patch 3)
        return want

    def reclaimable(self):
        """Frames the LRU may drop: clean, unpinned page-cache and swap-cache pages."""
        kind = self.kind
        # NO_BACKING keeps a page from the host (nothing to reload it from), not from the guest:
        # its file still holds it, and a full store table must not leave the guest out of memory
        return (((kind == FILE) | (kind == SWAPCACHE)) & ((self.flags & UPTODATE) != 0)
                & ((self.flags & (_PINS_STABLE & ~NO_BACKING | MAPPED_WRITABLE)) == 0)
                & (self.refs == 0))

