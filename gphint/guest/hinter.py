"""Hinter: moves frames to the usage state their descriptors allow, through the guest's
HintBuffer (gphint.guest.hints), and makes them STABLE whatever the host did meanwhile."""
import numpy as np

from ..errors import GphintError
from .frames import NO_BACKING, P, S, V

_NONE = np.zeros(0, dtype=np.int64)   # read-only: "no frames"
_NONE.flags.writeable = False
MAX_RELOAD_TRIES = 64    # transparent mode: a page the host keeps discarding while we stabilise


class Hinter:
    """Moves frames to the state their descriptors allow, through the guest's HintBuffer
    (batched transitions), changing only those that differ from what was last hinted (the
    minor-fault optimisation, patch 7: a hit on a page already in the right state costs no
    state change, and is counted).

    table.hinted records the state last asked for; the buffer may still hold it pending (the
    page is then STABLE in mem, see gphint.guest.hints).  A transition to STABLE goes through
    HintBuffer.make_stable: a page still STABLE in mem only has its pending transition
    cancelled; one VOLATILE/POT_VOLATILE in mem goes through the state protocol, which
    detects a completed host discard."""

    def __init__(self, mem, table, buffer, pot_volatile_ok=None):
        self.mem = mem
        self.table = table
        self.buffer = buffer
        self.hinting = bool(buffer.enabled)
        if pot_volatile_ok is None:
            svc = mem.fault_service
            pot_volatile_ok = svc is not None and svc.dirty_tracking
        self.pot_volatile_ok = bool(pot_volatile_ok)
        self.volatile_ok = True     # False: hint level "unused" (s390 mainline), cache stays STABLE
        self.stats = {"unchanged": 0, "to_stable": 0, "to_volatile": 0, "to_pot_volatile": 0,
                      "found_discarded": 0}

    def settle(self, frames):
        """Returns the frames that had to become STABLE but were found discarded (not made
        stable: the caller reloads or drops them)."""
        frames = np.asarray(frames, dtype=np.int64)
        if not self.hinting or frames.size == 0:
            return _NONE
        want = self.table.desired_usage(frames, self.pot_volatile_ok)
        if not self.volatile_ok:
            want[:] = S
        differ = want != self.table.hinted[frames]
        ndiffer = int(np.count_nonzero(differ))
        self.stats["unchanged"] += int(frames.size) - ndiffer
        if ndiffer == 0:
            return _NONE
        if ndiffer < frames.size:
            frames, want = frames[differ], want[differ]
        lost = _NONE
        to_s = frames[want == S]
        if to_s.size:
            # one call: cancels pending hints of pages still STABLE, makes the others STABLE
            # through the state protocol, and lists those the host has discarded meanwhile
            lost = self.buffer.make_stable(to_s)
            done = np.setdiff1d(to_s, lost, assume_unique=True) if lost.size else to_s
            self.table.hinted[done] = S
            self.stats["to_stable"] += int(done.size)
            self.stats["found_discarded"] += int(lost.size)
            if to_s.size == frames.size:
                return lost
        for state, key in ((V, "to_volatile"), (P, "to_pot_volatile")):
            sel = frames[want == state]
            if sel.size:
                self.buffer.hint(sel, state)
                self.table.hinted[sel] = state
                self.stats[key] += int(sel.size)
        return lost

    def fresh_clean(self, frames):
        """Frames just filled by a read miss: clean, up to date, unpinned, so VOLATILE unless
        they have no backing store -- the read path's shortcut past desired_usage()."""
        if not self.hinting or frames.size == 0:
            return
        # NO_BACKING is only ever set on a fill with a fault service but no store for the file
        if not self.volatile_ok or (self.mem.fault_service is not None
                                    and (self.table.flags[frames] & NO_BACKING).any()):
            self.settle(frames)          # nothing to stabilise: they are STABLE already
            return
        self.buffer.hint(frames, V)
        self.table.hinted[frames] = V
        self.stats["to_volatile"] += int(frames.size)

    def resync(self, frames):
        """The host changed these frames' usage on its own (Pr -> Vz, Pr -> Sp): take mem's
        word for what they are now."""
        frames = np.asarray(frames, dtype=np.int64)
        if self.hinting and frames.size:
            in_mem = self.mem.usage(frames)
            pending = self.table.hinted[frames] != S
            # a pending hint leaves the page STABLE in mem: keep our record of it then
            change = (in_mem != S) | ~pending
            self.table.hinted[frames[change]] = in_mem[change]

    def stabilise(self, frames, reload):
        """Make frames STABLE whatever happens: pages found discarded are handed to reload(lost)
        (transparent: touch them; the service reloads) and tried again.  Used where the guest
        must own the content (a write, a swap-in)."""
        lost = self.settle(frames)
        tries = 0
        while lost.size:
            tries += 1
            if tries > MAX_RELOAD_TRIES:
                raise GphintError("%d pages stayed discarded after %d reloads (first: frame %d)"
                                  % (lost.size, MAX_RELOAD_TRIES, int(lost[0])))
            reload(lost)
            lost = self.settle(lost)

