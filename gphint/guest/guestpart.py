"""What the page cache and anonymous memory share: GuestPart (memory, frame table, hinter,
frame supply), and the seam to the discard-fault service (gphint.faults).

Page-cache I/O goes through GuestMemory.fill_from_file / write_to_file (C, GIL released; a
bounce copy under UFFD_USER_MODE_ONLY), state changes to STABLE through the HintBuffer's
make_stable (the state protocol, ext/protocol.c).
"""
import numpy as np

from .._mechanism import mech
from ..states import CONTENT_MASK, HostState
from .content import PAGE_SIZE, page_digest
from .frames import FLAG_DTYPE, NO_BACKING


def set_backing(mem, frames, store, offsets, table=None, digests=None):
    """Record where a clean frame's content lives, before it may become volatile, and what it
    holds: the store's content record gets the digest of each frame (digests, if the caller
    has them), which a reload must match.  Call it while the frames equal the file at offsets
    (just read from it, or just written to it).  With a fault service but no store (the store
    table is full) the frames are flagged NO_BACKING: like a page without a mapping they stay
    STABLE, since a discard could not be reloaded."""
    if len(frames) == 0:
        return
    if store is None:
        if table is not None and mem.fault_service is not None:
            table.flags[frames] |= NO_BACKING
        return
    if table is not None:
        table.flags[frames] &= ~FLAG_DTYPE(NO_BACKING)
    record = getattr(store, "record", None)
    if record is not None:
        record(offsets, page_digest(mem.frames, frames) if digests is None else digests)
    mem.set_backing(frames, store, offsets)


def mark_touched(mem, frames):
    """The guest wrote these frames.  With a fault service the touch itself was a served
    fault (Sz -> Sr); without one the kernel zero-filled silently, so record the content as
    resident here -- otherwise a later S -> V would be refused for content the guest owns."""
    if mem.fault_service is not None or len(frames) == 0:
        return
    frames = np.asarray(frames, dtype=np.int64)
    zero = frames[(mem.states[frames] & CONTENT_MASK) == int(HostState.ZERO)]
    if zero.size:
        # GuestMemory owns the table; this is the documented host transition Sz -> Sr
        mech.set_content(mem._states, zero, int(HostState.RESIDENT))


def touch_frames(mem, frames):
    """Read one byte of each frame: a discarded page takes its discard fault now (the fault
    service reloads it from its backing store)."""
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size:
        int(mem.region[frames * PAGE_SIZE].sum())


class GuestPart:
    """What the page cache and anonymous memory share: the guest's memory, frame table and
    hinter, its frame supply (`alloc_frames(n)`, `free_frames(frames)`: allocator plus reclaim),
    its content seed, discard-fault mode, and `store_for(path)`: the backing store of a file
    for discard-fault reloads (None without a fault service)."""

    def __init__(self, mem, table, hinter, alloc_frames, free_frames, *, seed,
                 discard_mode="transparent", store_for=None):
        self.mem = mem
        self.table = table
        self.hinter = hinter
        self.alloc_frames = alloc_frames
        self.free_frames = free_frames
        self.seed = seed
        self.discard_mode = discard_mode
        self.store_for = store_for or (lambda path: None)

    def _release(self, frames, kind, frame_map):
        """Free the frames of `kind` among frames, first unlinking each from its owner's
        page -> frame map (`frame_map(owner)`, an int64 array, -1 = none).  Returns how many."""
        frames = np.asarray(frames, dtype=np.int64)
        frames = frames[self.table.kind[frames] == kind]
        if frames.size == 0:
            return 0
        owners, index = self.table.owner[frames], self.table.index[frames]
        for owner in np.unique(owners).tolist():
            frame_map(owner)[index[owners == owner]] = -1
        self.free_frames(frames)
        return int(frames.size)

    def _reload(self, lost):
        """Found discarded while being made stable, transparent mode: touch them (the fault
        service reloads them from their backing store) and try again."""
        touch_frames(self.mem, lost)
        self.stats["reloaded"] += int(lost.size)

