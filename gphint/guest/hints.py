"""Batched guest state transitions (the 2006 follow-up to guest page hinting, REFERENCE §1).

The guest tells the host each page's usage state.  Doing it one page at a time costs one
state change per page (>100 cycles each on s390, a set_state call here); the follow-up
proposal collects pending transitions in a per-guest buffer of tunable capacity and submits
them together.  HintBuffer is that buffer: fill -> submit (one mem.set_state per target
state, `capacity` transitions at a time) -> drain; `flush()` submits whatever is pending.
capacity=1 is the unbatched original: one set_state per page transition.

SAFETY ORDER -- nothing is ever lost.  A page the guest is about to use must be STABLE
before the guest writes it, or the host could discard the write.  So:
  * a transition to STABLE is never deferred: it cancels any pending transition of the same
    pages and is applied before hint() returns (the allocator hands pages out only after);
  * only transitions that start from STABLE are deferred (free -> UNUSED, clean cache page
    -> VOLATILE ...).  Delaying them merely keeps a page stable for longer, which the host
    must respect anyway: the host just learns late that it could have discarded the page.
  * a transition between two non-stable states (e.g. VOLATILE -> POT_VOLATILE, which makes
    the page *less* discardable) is applied at once, as is freeing a VOLATILE page: left
    pending, the host could still discard it and raise a discard fault for a page the guest
    no longer owns.
  * a request that changes nothing (a page already in the requested state in mem, nothing
    pending) is skipped: no set_state call at all.
Invariant this keeps: every page with a pending transition is STABLE in mem.  So a free
followed by a re-allocation inside one batch costs no transition at all (the pending UNUSED
is cancelled and the page is already STABLE), and a later flush can never make an
allocated page discardable.  All guest transitions of a memory must go through its buffer.

Cost (issue 4's target: batched hinting within 3% of workload throughput).  hint() runs on
every allocation, free and cache fill, so it spends as few numpy calls as it can: requests of
a few pages take a Python-scalar path; a request to STABLE looks for pending transitions only
among the pages STABLE in mem (by the invariant no other page has one); a queue without
cancelled entries needs no de-duplication at submit; submit groups the pending pages by target
state, one C call per `capacity` pages of a state; and that call goes straight to the state
table (_apply), past set_state's input normalisation.
"""
import threading

import numpy as np

from .._mechanism import mech
from ..errors import ConfigError
from ..states import NEXT_TABLE, USAGE_MASK, PageState, parse_state

NO_PENDING = -1
STABLE = int(PageState.STABLE)   # plain ints on the hot path: enum attribute access is slow
SMALL = 8                        # requests up to this many pages take the Python-scalar path


class HintBuffer:
    """HintBuffer(mem, capacity=32, enabled=True): pending (page -> usage state) transitions.

    enabled=False turns hinting off entirely: hint() and flush() do nothing, pages stay as
    they are (STABLE), and the host can only swap -- the baseline of the overhead benchmark.
    """

    def __init__(self, mem, capacity=32, enabled=True):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ConfigError("hint buffer capacity must be an integer >= 1, got %r" % (capacity,))
        self.mem = mem
        self.capacity = int(capacity)
        self.enabled = bool(enabled)
        # a read-only view kept for the buffer's life (mem.states builds a new view per call),
        # and memoryviews of it and of the pending table: item access on a memoryview costs a
        # fraction of a numpy scalar index, which is what the few-page path runs on
        self._states = mem.states
        self._states_mv = memoryview(self._states)
        # the table set_state's C call writes (see _apply); GuestMemory owns it
        self._state_table = mem._states
        # target usage state of each page's pending transition; NO_PENDING = none.  A per-page
        # table (not a list) so that a later transition supersedes an earlier one in O(1).
        self._pending_state = np.full(mem.npages, NO_PENDING, dtype=np.int8)
        self._pending_mv = memoryview(self._pending_state)
        self._scratch = None      # int64 per page, built on first need (see _live)
        self._queue = []          # arrays of deferred pages, oldest first (may hold cancelled ones)
        self._npending = 0        # pages with a live pending transition
        self._nqueued = 0         # entries in _queue, live or not (bounded by _compact)
        self._kinds = set()       # target states queued since the queue was last empty
        self._lock = threading.RLock()
        self.hint_ops = 0         # mem.set_state calls made
        self.transitions = 0      # page transitions submitted
        self.cancelled = 0        # pending transitions superseded before submission

    # --- the fill side -------------------------------------------------------------------
    def hint(self, pages, state):
        """Request that unique pages (int64 array) move to usage `state`.

        STABLE is applied before returning; transitions from STABLE to anything else may wait
        in the buffer until it holds `capacity` of them or until flush()."""
        if not self.enabled:
            return
        state = int(state) if type(state) is PageState else int(parse_state(state))
        if (type(pages) is not np.ndarray or pages.dtype != np.int64 or pages.ndim != 1
                or not pages.flags.c_contiguous):          # the C call takes contiguous int64
            pages = np.ascontiguousarray(pages, dtype=np.int64).reshape(-1)
        n = pages.size
        if n == 0:
            return
        with self._lock:
            if n <= SMALL:
                self._hint_small(pages, state)
            elif state == STABLE:
                self._make_stable(pages)
            else:
                self._defer(pages, state)

    def hint_allocated(self, pages, state):
        """hint() for pages the allocator has just handed out (a cache fill's fresh frames):
        STABLE in mem with nothing pending -- the hand-out made them so before returning -- so
        the transition out of STABLE is deferred without looking anything up."""
        if not self.enabled:
            return
        state = int(state)
        with self._lock:
            self._npending += pages.size
            self._pending_state[pages] = state
            self._kinds.add(state)
            self._enqueue(pages)

    def _hint_small(self, pages, state):
        """hint() for a few pages: the same rules with Python scalars, since a cache miss or a
        single-page free would otherwise pay a dozen numpy calls for a few bytes."""
        states, pend = self._states_mv, self._pending_mv
        now, deferred = [], []
        for page in pages.tolist():
            usage = states[page] & USAGE_MASK
            if usage:
                # not STABLE, so nothing pending (the invariant): apply now, unless a no-op
                if usage != state:
                    now.append(page)
                continue
            was = pend[page]
            if state == STABLE:
                if was != NO_PENDING:
                    pend[page] = NO_PENDING
                    self._npending -= 1
                    self.cancelled += 1
                continue
            if was == NO_PENDING:
                self._npending += 1
            else:
                self.cancelled += 1
            pend[page] = state
            deferred.append(page)
        if now:
            self._apply(pages if len(now) == pages.size else np.array(now, dtype=np.int64), state)
        if deferred:
            self._kinds.add(state)
            self._enqueue(pages if len(deferred) == pages.size else np.array(deferred, dtype=np.int64))

    def _make_stable(self, pages):
        """Make the non-stable pages STABLE now and cancel the pending transitions of the
        others (already STABLE, e.g. freed and re-allocated within one batch: no transition)."""
        usage = self._states[pages] & USAGE_MASK
        live = usage.nonzero()[0]
        if live.size < pages.size:
            if self._npending:
                self._cancel(pages[usage == STABLE] if live.size else pages)
            if live.size:
                self._apply(pages[live], STABLE)
        else:
            self._apply(pages, STABLE)

    def _defer(self, pages, state):
        """Transitions out of STABLE wait; any other is applied now (never deferred, see top)."""
        usage = self._states[pages] & USAGE_MASK
        if usage.nonzero()[0].size:      # cheaper than usage.any() on small arrays
            live = usage != STABLE
            now = pages[live & (usage != state)]     # a page already in `state`: a no-op
            if now.size:
                self._apply(now, state)
            pages = pages[~live]
            if pages.size == 0:
                return
        if self._npending:
            new = int(np.count_nonzero(self._pending_state[pages] == NO_PENDING))
        else:
            new = pages.size
        self.cancelled += pages.size - new
        self._npending += new
        self._pending_state[pages] = state
        self._kinds.add(state)
        self._enqueue(pages)

    def _enqueue(self, pages):
        """Queue deferred pages (their _pending_state is set); submit when the buffer is full."""
        self._queue.append(pages)
        self._nqueued += pages.size
        if self._npending >= self.capacity:
            self._submit(whole_batches_only=True)
        elif self._nqueued > 4 * self.capacity + 1024:
            # free/re-alloc churn leaves cancelled entries behind: keep the queue bounded
            self._queue = [self._live()]
            self._nqueued = self._queue[0].size

    def _cancel(self, pages):
        had = self._pending_state[pages] != NO_PENDING
        n = int(np.count_nonzero(had))
        if n:
            self._pending_state[pages] = NO_PENDING
            self._npending -= n
            self.cancelled += n

    # --- the submit side -----------------------------------------------------------------
    def _apply(self, pages, state):
        """Submit pages -> state now, `capacity` pages per C state change.

        The C call is the one mem.set_state makes, without its input normalisation (pages here
        are already contiguous int64 arrays, and the C call range-checks them itself), which
        would cost several times the state change.  Anything refused -- a forbidden transition,
        a page out of range, a closed memory -- goes to mem.set_state: the refused call changed
        nothing, so set_state raises the error naming the page and both states (or completes
        a transition that a concurrent host change made the C call give up on)."""
        mem, cap, n = self.mem, self.capacity, pages.size
        if n <= cap:
            if mem._closed or mech.set_usage(self._state_table, pages, state, NEXT_TABLE)[0] < 0:
                mem.set_state(pages, state)
            else:
                mem.stats["hint_ops"] += 1
            self.hint_ops += 1
            self.transitions += n
            return
        for lo in range(0, n, cap):
            self._apply(pages[lo:lo + cap], state)

    def _live(self):
        """Unique pages of the queue whose transition is still pending."""
        if not self._queue:
            return np.zeros(0, np.int64)
        queued = np.concatenate(self._queue) if len(self._queue) > 1 else self._queue[0]
        if self._nqueued == self._npending:
            # every live pending page is queued, so equal counts mean no duplicate and no
            # cancelled entry: nothing to filter
            return queued
        live = queued[self._pending_state[queued] != NO_PENDING]
        if live.size == self._npending:        # each pending page once: no duplicate
            return live
        # a page deferred again after a cancel is queued twice: keep one entry each (O(n), no
        # sort -- the scratch table remembers each page's last position)
        if self._scratch is None:
            self._scratch = np.zeros(self.mem.npages, dtype=np.int64)
        pos = np.arange(live.size, dtype=np.int64)
        self._scratch[live] = pos
        return live[self._scratch[live] == pos]

    def _submit(self, whole_batches_only):
        if not self._queue:
            return
        live = self._live()
        ngo = (live.size // self.capacity) * self.capacity if whole_batches_only else live.size
        go, keep = live[:ngo], live[ngo:]
        # one target state queued since the queue was empty: every pending page goes there
        single = next(iter(self._kinds)) if len(self._kinds) == 1 else None
        targets = self._pending_state[go] if single is None else None
        # clear before submitting: if set_state refuses (StateError), nothing stays half-pending
        self._pending_state[go] = NO_PENDING
        self._queue = [keep] if keep.size else []
        self._nqueued = self._npending = int(keep.size)
        if not keep.size:
            self._kinds = set()
        if go.size == 0:
            return
        # one group per target state (all of them transitions out of STABLE, so their order
        # does not matter), each submitted `capacity` pages per call
        if single is not None:
            self._apply(go, single)
        else:
            for state in np.unique(targets).tolist():
                self._apply(go[targets == state], state)

    def flush(self):
        """Submit every pending transition.  Call before anything that reads the states."""
        if not self.enabled:
            return
        with self._lock:
            self._submit(whole_batches_only=False)

    # --- views ---------------------------------------------------------------------------
    @property
    def pending(self):
        """How many page transitions wait in the buffer."""
        return self._npending

    def pending_pages(self):
        """Sorted int64 array of the pages with a pending transition."""
        with self._lock:
            return np.flatnonzero(self._pending_state != NO_PENDING).astype(np.int64)

    @property
    def stats(self):
        return {"hint_ops": self.hint_ops, "transitions": self.transitions,
                "cancelled": self.cancelled, "pending": self._npending}

    def __repr__(self):
        return "<HintBuffer capacity=%d%s pending=%d ops=%d>" % (
            self.capacity, "" if self.enabled else " disabled", self._npending, self.hint_ops)
