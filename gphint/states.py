"""The contract, read first: guest usage states, host content states, and what may follow what.

Vocabulary and encodings are those of s390 ESSA (Schwidefsky's guest page hinting series, 2006;
arch/s390/include/asm/page-states.h):
the guest's usage state sits in bits 2-3 of a page's state byte, the host's content state in
bits 0-1.  The pair is written as two letters, e.g. "Vz" = volatile page the host discarded.

    usage   S stable      0x00  content must be preserved
            U unused      0x04  free in the guest; host may discard, it comes back as zeros
            P pot. vol.   0x08  mapped writable: discardable only while the host sees it clean
            V volatile    0x0c  clean cache page: host may discard, guest reloads it
    content r resident    0x00
            f lazily freed 0x01 the host gave it back with MADV_FREE: still mapped with its bytes
                                until the kernel reclaims it (then missing, like z) -- which of
                                the two only the kernel knows (not in ESSA: gphint's own)
            p preserved   0x02  the host paged it out to host swap
            z zero        0x03  logically zero / discarded: nothing resident, nothing saved

Valid pairs: Sr Sp Sz Ur Uf Uz Vr Vf Vz Pr.  Never Up (the host turns Ur into Uz without writing),
never Vp (a volatile page chosen for eviction is discarded), never Pp or Pz; f only with U or V
(the only pages the host madvises: a P page is detached, not advised).
"""
import enum

import numpy as np

from .errors import ConfigError, StateError

USAGE_MASK = 0x0C
CONTENT_MASK = 0x03
PAIR_MASK = 0x0F
FLAG_MASK = 0xF0
# the state protocol's holds (ext/protocol.c; docs/state-protocol.md), inside FLAG_MASK
FLAG_BUSY = 0x10        # the host holds the page (discard / swap-out)
FLAG_FILLED = 0x20      # the fault thread served it while the host held it
FLAG_SERVING = 0x40     # the fault thread (or a fill) holds it


class PageState(enum.IntEnum):
    """Guest usage state (ESSA bits 2-3)."""

    STABLE = 0x00
    UNUSED = 0x04
    POT_VOLATILE = 0x08
    VOLATILE = 0x0C

    @property
    def letter(self):
        return {0x00: "S", 0x04: "U", 0x08: "P", 0x0C: "V"}[int(self)]


class HostState(enum.IntEnum):
    """Host content state (ESSA bits 0-1)."""

    RESIDENT = 0x00
    LAZY = 0x01
    PRESERVED = 0x02
    ZERO = 0x03

    @property
    def letter(self):
        return {0x00: "r", 0x01: "f", 0x02: "p", 0x03: "z"}[int(self)]


S, U, P, V = PageState.STABLE, PageState.UNUSED, PageState.POT_VOLATILE, PageState.VOLATILE
R, F, PRES, Z = HostState.RESIDENT, HostState.LAZY, HostState.PRESERVED, HostState.ZERO


def pair(usage, content):
    """The 4-bit pair code of (usage, content)."""
    return int(usage) | int(content)


def pair_name(code):
    """'Vz' for the pair code of (VOLATILE, ZERO); flags in the upper bits are ignored."""
    code = int(code)
    try:
        return PageState(code & USAGE_MASK).letter + HostState(code & CONTENT_MASK).letter
    except ValueError:
        return "?%#04x" % code


VALID_PAIRS = frozenset(pair(u, c) for u, c in
                        [(S, R), (S, PRES), (S, Z), (U, R), (U, F), (U, Z), (V, R), (V, F), (V, Z),
                         (P, R)])

# What the guest's set_state(page, usage) does to each valid pair; absent = forbidden.
#   resident pages change usage freely (Sr Ur Vr Pr are all reachable from each other);
#   Sp -> U/V: the guest gives up a preserved page, the host drops its copy (Uz, Vz);
#   Uz -> S:   allocating a page the host discarded gives a logically zero stable page (Sz);
#   Vz -> U:   freeing a discarded cache page;
#   Vz -> S is refused here: making a discarded volatile page stable is a discard fault, the
#   guest must reload or drop it (the state protocol of gphint.faults decides which);
#   Sz/Uz -> V/P and Sp -> P are refused: the page holds no content the guest vouches for.
#   Lazily freed (f) pages keep f while they stay U or V (Uf -> U, Vf -> V, Vf -> U give Uf/Vf/Uf);
#   Uf -> V/P is refused like Uz, Vf -> S/P like Vz (make_stable resolves Vf instead).
GUEST_TRANSITIONS = {}
for _u in (S, U, V, P):
    for _frm in (S, U, V, P):
        if pair(_frm, R) in VALID_PAIRS:
            GUEST_TRANSITIONS[(pair(_frm, R), _u)] = pair(_u, R)
GUEST_TRANSITIONS.update({
    (pair(S, PRES), S): pair(S, PRES), (pair(S, PRES), U): pair(U, Z), (pair(S, PRES), V): pair(V, Z),
    (pair(S, Z), S): pair(S, Z), (pair(S, Z), U): pair(U, Z),
    (pair(U, Z), S): pair(S, Z), (pair(U, Z), U): pair(U, Z),
    (pair(V, Z), V): pair(V, Z), (pair(V, Z), U): pair(U, Z),
    (pair(U, F), U): pair(U, F), (pair(V, F), V): pair(V, F), (pair(V, F), U): pair(U, F),
})

# Guest transitions that first ask the kernel what became of a lazily freed page (ext/lazyfree.c):
# present -> the guest writes one of its bytes back, which cancels the lazy free (the kernel's
# reclaim skips a redirtied page), and the page is Xr; missing -> the kernel reclaimed it: Xz.
# Then the transition of the resolved pair applies: allocation Uf -> S gives Sr (the page's old
# bytes: a fresh allocation's content is the guest's to write, as in Linux without __GFP_ZERO)
# or Sz (missing, zero on first touch).  make_stable does the same for Vf: Sr with the file's
# bytes (a volatile page is clean), or Vz, a discard fault.
RESOLVE = 0xFE   # GPH_NEXT_RESOLVE in ext/gphint_internal.h (tests/test_lazyfree.py checks they agree)
LAZY_RESOLVED = {
    (pair(U, F), S): (pair(S, R), pair(S, Z)),
}
MAKE_STABLE_RESOLVED = {pair(V, F): (pair(S, R), pair(V, Z))}

# Content changes made by the host (discard, swap) and by the fault service (reload).
HOST_TRANSITIONS = frozenset([
    (pair(U, R), pair(U, Z)),     # host discards an unused page
    (pair(V, R), pair(V, Z)),     # host discards a volatile page
    (pair(P, R), pair(V, Z)),     # host finds a P page clean: discards it
    (pair(P, R), pair(S, PRES)),  # host finds a P page dirty: preserves it instead
    (pair(S, R), pair(S, PRES)),  # host swaps a stable page
    (pair(S, PRES), pair(S, R)),  # guest access: host swap-in
    (pair(S, Z), pair(S, R)),     # first access of a logically zero page
    (pair(U, Z), pair(U, R)),     # access to a discarded unused page: zero fill
    (pair(V, Z), pair(V, R)),     # discard fault served transparently from the backing file
    (pair(U, R), pair(U, F)),     # host lazily frees an unused page (MADV_FREE)
    (pair(V, R), pair(V, F)),     # host lazily frees a volatile page (MADV_FREE)
    (pair(U, F), pair(U, Z)),     # the kernel reclaimed it (found missing), or the host's DONTNEED
    (pair(V, F), pair(V, Z)),     #   took it
    (pair(U, F), pair(U, R)),     # taken back while present, or a fault after reclaim: zero fill
    (pair(V, F), pair(V, R)),     # taken back while present, or a fault after reclaim: reload
])


def parse_state(state):
    """PageState from a PageState, its int code, or its name ('unused', 'POT_VOLATILE', 'P')."""
    if isinstance(state, PageState):
        return state
    if isinstance(state, str):
        key = state.strip().upper().replace("-", "_")
        for s in PageState:
            if key in (s.name, s.letter):
                return s
    elif isinstance(state, (int, np.integer)) and not isinstance(state, bool):
        try:
            return PageState(int(state))
        except ValueError:
            pass
    raise ConfigError("unknown page state %r (expected one of %s)"
                      % (state, ", ".join(s.name for s in PageState)))


def discardable(state, dirty=False):
    """May the host discard a page in this usage state without losing data?

    UNUSED and VOLATILE: yes.  POT_VOLATILE: only while the host sees it clean.  STABLE: never.
    """
    state = parse_state(state)
    if state in (PageState.UNUSED, PageState.VOLATILE):
        return True
    if state == PageState.POT_VOLATILE:
        return not dirty
    return False


def check_transition(page, old, new):
    """Raise StateError unless old -> new (pair codes) is a guest or host transition."""
    old_p, new_p = int(old) & PAIR_MASK, int(new) & PAIR_MASK
    if old_p == new_p or (old_p, new_p) in HOST_TRANSITIONS:
        return
    if any(k[0] == old_p and v == new_p for k, v in GUEST_TRANSITIONS.items()):
        return
    if any(k[0] == old_p and new_p in v for k, v in LAZY_RESOLVED.items()):
        return
    if new_p in MAKE_STABLE_RESOLVED.get(old_p, ()):
        return
    raise StateError("page %d: transition %s -> %s is forbidden" % (page, pair_name(old_p), pair_name(new_p)),
                     page=page, old=pair_name(old_p), new=pair_name(new_p))


def usage_next_table():
    """The table the C mechanism applies: next[(old_pair << 2) | (usage >> 2)], 0xff (forbidden)
    or RESOLVE (ask the kernel about the lazily freed page first, then look again)."""
    table = np.full(64, 0xFF, dtype=np.uint8)
    for (old_p, usage), new_p in GUEST_TRANSITIONS.items():
        table[(old_p << 2) | (int(usage) >> 2)] = new_p
    for (old_p, usage) in LAZY_RESOLVED:
        table[(old_p << 2) | (int(usage) >> 2)] = RESOLVE
    return table


NEXT_TABLE = usage_next_table()
