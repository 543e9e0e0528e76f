"""Batched guest state transitions (the 2006 follow-up to guest page hinting, Schwidefsky et al.).

The guest tells the host each page's usage state.  Doing it one page at a time costs one
state change per page (>100 cycles each on s390; here a call into the state protocol's
setter, ext/protocol.c); the follow-up proposal collects pending transitions in a per-guest
buffer of tunable capacity and submits them together.  HintBuffer is that buffer, the guest's
batching cycle (gphint.batching, where the rule is stated): deferred transitions fill it,
every `capacity` of them are submitted (one state change per target state), `flush()` is the
final flush.  capacity=1 is the unbatched original: one state change per page transition.

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
  * a deferred POT_VOLATILE transition of a page the host swapped out meanwhile (Sr -> Sp) is
    dropped: a preserved page cannot be POT_VOLATILE (its content is not resident), and it
    stays STABLE, which is always safe -- the hint is lost, not the data (counted: dropped).
Invariant this keeps: every page with a pending transition is STABLE in mem.  So a free
followed by a re-allocation inside one batch costs no transition at all (the pending UNUSED
is cancelled and the page is already STABLE), and a later flush can never make an
allocated page discardable.  All guest transitions of a memory must go through its buffer.

Cost (the target: batched hinting within 3% of workload throughput).  hint() runs on
every allocation, free and cache fill, so the buffer's bookkeeping -- classify each page
(apply now / cancel / defer), record it, submit whole batches -- is one C call per request
(ext/hintq.c; gphint._fallback.HintQueue is its pure-Python twin).  This class keeps the
policy around it: input checks, hinting on or off, and turning a refused transition into the
StateError that names it.
"""
import threading
import time

import numpy as np

from .._mechanism import mech
from ..batching import BATCH, check_capacity
from ..errors import StateError
from ..states import NEXT_TABLE, PAIR_MASK, HostState, PageState, parse_state

NO_PENDING = 0xFF
SP = int(PageState.STABLE) | int(HostState.PRESERVED)
POT_VOLATILE = int(PageState.POT_VOLATILE)
UNUSED = int(PageState.UNUSED)


def _int64(pages):
    return np.ascontiguousarray(pages, dtype=np.int64).reshape(-1)


def _locked(lock, *calls):
    """The calls, each taking lock around it."""
    def wrap(call):
        def locked(*args):
            with lock:
                return call(*args)
        return locked
    return tuple(wrap(c) for c in calls)


class HintBuffer:
    """HintBuffer(mem, capacity=BATCH, enabled=True, clock=None): pending (page -> usage state)
    transitions (gphint.batching.BATCH = 32).

    enabled=False turns hinting off entirely: hint() and flush() do nothing, pages stay as
    they are (STABLE), and the host can only swap -- the baseline of the overhead benchmark.

    unused_since_ns (int64 per page) is when each page was last made UNUSED: written at the
    transition, before its state byte, so a free that waits in the buffer is dated from its
    submission -- when the host can first see it.  Like the state byte it is memory the host
    reads without calling the guest (its proactive scan's `delay` rule).  Pages made UNUSED
    outside the buffer (the allocator's boot transition) keep the buffer's creation time.
    The clock is the machine's CLOCK_MONOTONIC (time.monotonic's) unless `clock` (seconds, like
    Host's clock) is given: then each request is dated by one call of it.
    """

    def __init__(self, mem, capacity=BATCH, enabled=True, clock=None):
        self.capacity = check_capacity(capacity, "hint buffer capacity")
        self.mem = mem
        self.enabled = bool(enabled)
        self.dropped = 0          # deferred transitions the host's swap-out made impossible
        # target usage of each page's pending transition, NO_PENDING = none; the queue writes it
        self._pending = np.full(mem.npages, NO_PENDING, dtype=np.uint8)
        self._q = mech.HintQueue(mem._states, self._pending, NEXT_TABLE, mem._hint_ops_total,
                                 self.capacity)
        self._lock = None if mech.COMPILED else threading.RLock()
        self.clock = clock
        self.unused_since_ns = np.full(mem.npages, self._now_ns(), dtype=np.int64)
        self._q.record_unused(self.unused_since_ns, -1)

    @property
    def clock(self):
        return self._clock

    @clock.setter
    def clock(self, clock):
        """Bind the queue's calls: the compiled queue is serialised by the GIL (one C call per
        request); the twin's requests are many Python steps, so they take a lock.  A given
        clock dates each request before the call."""
        self._clock = clock
        calls = (self._q.hint, self._q.make_stable, self._q.submit)
        if clock is not None:
            calls = tuple(self._dated(c) for c in calls)
        if self._lock is not None:
            calls = _locked(self._lock, *calls)
        self._request, self._stabilise, self._submit = calls

    def _dated(self, call):
        q, clock = self._q, self._clock

        def dated(*args):
            q.now_ns = round(clock() * 1e9)
            return call(*args)
        return dated

    def _now_ns(self):
        return time.monotonic_ns() if self._clock is None else round(self._clock() * 1e9)

    # --- the fill side -------------------------------------------------------------------
    def hint(self, pages, state):
        """Request that unique pages (int64 array) move to usage `state`.

        STABLE is applied before returning; transitions from STABLE to anything else may wait
        in the buffer until it holds `capacity` of them or until flush()."""
        if not self.enabled:
            return
        if self.mem._closed:
            self.mem._check_open()
        try:
            refused = self._request(pages, state)
        except (TypeError, ValueError):
            # not the fast path's contiguous int64 array and int code: convert and retry (an
            # error now is the request's own, e.g. a page out of range)
            refused = self._request(_int64(pages), int(parse_state(state)))
        if refused:
            self._redo_refused()

    def make_stable(self, pages):
        """The guest must own pages now (a write, a swap-in, a page-cache page losing its
        discardability): cancel their pending transitions and make the others STABLE through
        the state protocol (waiting out a discard or reload in flight).  Returns the pages found
        discarded (int64), which are NOT stable: the caller reloads or drops them."""
        if self.mem._closed:
            self.mem._check_open()
        try:
            return self._stabilise(pages)
        except (TypeError, ValueError):
            return self._stabilise(_int64(pages))

    def _redo_refused(self):
        """Chunks the state table refused go through mem.set_state, which completes a
        transition a concurrent host change made the C call give up on, or raises the
        StateError naming a forbidden one.  The rest of a refused chunk is still applied (as
        the unbatched guest would have), then the first error is raised."""
        pages, usages = self._q.take_refused()
        host_made = ((self.mem._states[pages] & PAIR_MASK) == SP) & (usages == POT_VOLATILE)
        if host_made.any():
            self.dropped += int(np.count_nonzero(host_made))
            pages, usages = pages[~host_made], usages[~host_made]
        first_error = None
        for usage in np.unique(usages).tolist():
            todo = pages[usages == usage]
            while todo.size:
                try:
                    if usage == UNUSED:     # dated at the transition, as the queue dates it
                        self.unused_since_ns[todo] = self._now_ns()
                    self.mem.set_state(todo, usage)
                    break
                except StateError as e:
                    first_error = first_error or e
                    todo = todo[todo != e.page]
        if first_error is not None:
            raise first_error

    # --- the submit side -----------------------------------------------------------------
    def flush(self):
        """Submit every pending transition.  Call before anything that reads the states."""
        if not self.enabled:
            return
        if self._submit(False):
            self._redo_refused()

    # --- views ---------------------------------------------------------------------------
    @property
    def pending(self):
        """How many page transitions wait in the buffer."""
        return self._q.npending

    @property
    def hint_ops(self):
        """State changes (set_state calls) made."""
        return self._q.hint_ops

    @property
    def transitions(self):
        """Page transitions submitted."""
        return self._q.transitions

    @property
    def cancelled(self):
        """Pending transitions superseded before submission."""
        return self._q.cancelled

    def pending_pages(self):
        """Sorted int64 array of the pages with a pending transition."""
        return np.flatnonzero(self._pending != NO_PENDING).astype(np.int64)

    @property
    def stats(self):
        q = self._q
        return {"hint_ops": q.hint_ops, "transitions": q.transitions, "cancelled": q.cancelled,
                "pending": q.npending, "queued": q.queued, "dropped": self.dropped}

    def __repr__(self):
        return "<HintBuffer capacity=%d%s pending=%d ops=%d>" % (
            self.capacity, "" if self.enabled else " disabled", self.pending, self.hint_ops)


