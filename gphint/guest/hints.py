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
Invariant this keeps: every page with a pending transition is STABLE in mem.  So a free
followed by a re-allocation inside one batch costs no transition at all (the pending UNUSED
is cancelled and the page is already STABLE), and a later flush can never make an
allocated page discardable.  All guest transitions of a memory must go through its buffer.
"""
import threading

import numpy as np

from ..errors import ConfigError
from ..states import USAGE_MASK, PageState, parse_state

NO_PENDING = -1
STABLE = int(PageState.STABLE)   # plain ints on the hot path: enum attribute access is slow


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
        # a read-only view kept for the buffer's life (mem.states builds a new view per call)
        self._states = mem.states
        # target usage state of each page's pending transition; NO_PENDING = none.  A per-page
        # table (not a list) so that a later transition supersedes an earlier one in O(1).
        self._pending_state = np.full(mem.npages, NO_PENDING, dtype=np.int8)
        self._queue = []          # arrays of deferred pages, oldest first (may hold cancelled ones)
        self._npending = 0        # pages with a live pending transition
        self._nqueued = 0         # entries in _queue, live or not (bounded by _compact)
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
        pages = np.asarray(pages, dtype=np.int64).reshape(-1)
        if pages.size <= 1:
            if pages.size:
                self._hint_one(pages, state)
            return
        with self._lock:
            if state == STABLE:
                self._make_stable(pages)
                return
            usage = self._states[pages] & USAGE_MASK
            if usage.any():            # STABLE is 0: some page is not stable
                # between non-stable states, or freeing a volatile page: never deferred (see top)
                live = usage != STABLE
                self._cancel(pages[live])
                self._apply(pages[live], state)
                pages = pages[~live]
            new = int(np.count_nonzero(self._pending_state[pages] == NO_PENDING))
            self.cancelled += pages.size - new
            self._npending += new
            self._pending_state[pages] = state
            self._enqueue(pages)

    def _hint_one(self, page_arr, state):
        """hint() for a single page: the same rules with Python scalars, since a cache miss or
        a single-page free would otherwise pay a dozen numpy calls for one byte."""
        page = int(page_arr[0])
        with self._lock:
            was = int(self._pending_state[page])
            non_stable = int(self._states[page]) & USAGE_MASK
            if state == STABLE or non_stable:
                if was != NO_PENDING:
                    self._pending_state[page] = NO_PENDING
                    self._npending -= 1
                    self.cancelled += 1
                if non_stable:
                    self._apply(page_arr, state)
                return
            if was == NO_PENDING:
                self._npending += 1
            else:
                self.cancelled += 1
            self._pending_state[page] = state
            self._enqueue(page_arr)

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

    def _make_stable(self, pages):
        """Cancel pending transitions of pages and make the non-stable ones STABLE now."""
        self._cancel(pages)
        usage = self._states[pages] & USAGE_MASK
        # already STABLE (e.g. freed and re-allocated within one batch): no transition at all
        if usage.any():
            self._apply(pages[usage != STABLE], STABLE)

    def _cancel(self, pages):
        had = self._pending_state[pages] != NO_PENDING
        if had.any():
            n = int(np.count_nonzero(had))
            self._pending_state[pages] = NO_PENDING
            self._npending -= n
            self.cancelled += n

    # --- the submit side -----------------------------------------------------------------
    def _apply(self, pages, state):
        """Submit pages -> state now, `capacity` pages per set_state call."""
        for lo in range(0, pages.size, self.capacity):
            chunk = pages[lo:lo + self.capacity]
            self.mem.set_state(chunk, state)
            self.hint_ops += 1
            self.transitions += chunk.size

    def _live(self):
        """Sorted unique pages of the queue whose transition is still pending."""
        queued = np.unique(np.concatenate(self._queue)) if self._queue else np.zeros(0, np.int64)
        return queued[self._pending_state[queued] != NO_PENDING]

    def _submit(self, whole_batches_only):
        if not self._queue:
            return
        live = self._live()
        ngo = (live.size // self.capacity) * self.capacity if whole_batches_only else live.size
        go, keep = live[:ngo], live[ngo:]
        targets = self._pending_state[go]
        # clear before submitting: if set_state refuses (StateError), nothing stays half-pending
        self._pending_state[go] = NO_PENDING
        self._queue = [keep] if keep.size else []
        self._nqueued = self._npending = int(keep.size)
        for lo in range(0, go.size, self.capacity):
            chunk, chunk_targets = go[lo:lo + self.capacity], targets[lo:lo + self.capacity]
            for state in np.unique(chunk_targets):
                sel = chunk[chunk_targets == state]
                self.mem.set_state(sel, int(state))
                self.hint_ops += 1
                self.transitions += sel.size

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
