"""The guest side of Linux free page reporting (mm/page_reporting.c, Linux 5.7).

What it does, as Linux does it:
  * request: a free that leaves a block of order >= `order` on the free lists requests a
    pass.  The request schedules the pass `delay_s` later (2 s) only when reporting is idle;
    further frees while a pass is requested or running do not move it (no rescheduling).
  * pass (poll): skip everything unless free pages exceed the watermark (low watermark +
    `capacity` blocks of `order`).  Then for each order from `order` to max_order, walk the
    unreported free blocks: fill -> report -> drain.  Up to `capacity` blocks are isolated
    (taken off the free lists, so the guest cannot allocate them while the host discards
    them) into a batch -- the scatterlist; report(runs) is called with the batch; the blocks
    are put back and marked reported (only if the report succeeded: record, then mark).
    The batch carries over from one order to the next, and what is left at the end is
    reported too (the final flush).
  * budget: each free list gets ceil(nr_free / (capacity * 16)) reports per pass, about
    1/16 of its blocks; when spent, the pass moves on and asks for another pass.
  * end of pass: if anything requested more work meanwhile, the next pass is due `delay_s`
    after this one; otherwise reporting goes idle until the next qualifying free.
Fragments smaller than 2^order pages are never reported -- the gap guest page hinting closes.

The report callback receives an (n, 2) int64 array of [first_page, npages] runs; the host
discards them (QEMU/Firecracker: MADV_DONTNEED).  A report that returns False or raises
leaves the blocks unreported (they are put back first; the exception is re-raised).
Reported pages are free, so with hinting on they are UNUSED: `mem.discard(runs)` accepts
them.  With hinting off they are still STABLE in the state table, and the host must use
`mem.discard_raw(runs)` -- safe because the blocks are isolated while reported and the
guest writes any page it allocates before reading it.
"""
import threading
import time

import numpy as np

from ..errors import ConfigError
from .allocator import _check_int

IDLE, REQUESTED, ACTIVE = "idle", "requested", "active"   # Linux's PAGE_REPORTING_* states
BUDGET_DIVISOR = 16          # report about 1/16 of each free list per pass
DEFAULT_LOW_WATERMARK = 0.01  # of guest memory, standing in for the zone's low watermark


class PageReporting:
    """PageReporting(allocator, report, order=9, capacity=32, delay_s=2.0, clock=time.monotonic,
    low_watermark_pages=None): registers on allocator.on_free and requests the first pass at
    once, as page_reporting_register() does.  Call poll() from the guest's loop."""

    def __init__(self, allocator, report, order=9, capacity=32, delay_s=2.0, clock=time.monotonic,
                 low_watermark_pages=None):
        self.allocator = allocator
        if not callable(report):
            raise ConfigError("report must be callable, got %r" % (report,))
        self.report = report
        self.order = _check_int(order, "reporting order", 0, allocator.max_order)
        self.capacity = _check_int(capacity, "reporting capacity", 1)
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not delay_s >= 0:
            raise ConfigError("reporting delay_s must be a number >= 0, got %r" % (delay_s,))
        self.delay_s = float(delay_s)
        self.clock = clock
        if low_watermark_pages is None:
            low_watermark_pages = int(allocator.npages * DEFAULT_LOW_WATERMARK)
        self.low_watermark_pages = _check_int(low_watermark_pages, "low_watermark_pages", 0)
        self.state = IDLE
        self.due_at = None           # clock time of the scheduled pass, None when idle
        # Linux changes the state with atomics: a free in the guest thread may request while
        # a pass runs in another (the host's) thread
        self._state_lock = threading.Lock()
        self.stats = {"passes": 0, "blocks_reported": 0, "pages_reported": 0, "report_calls": 0,
                      "report_errors": 0, "skipped_watermark": 0, "requests": 0}
        allocator.on_free.append(self._on_free)
        self.request()

    @property
    def watermark_pages(self):
        """Free pages must exceed this for a pass to report anything (Linux: low watermark +
        PAGE_REPORTING_CAPACITY << page_reporting_order)."""
        return self.low_watermark_pages + (self.capacity << self.order)

    # --- request ---------------------------------------------------------------------------
    def _on_free(self, firsts, orders):
        # page_reporting_notify_free(): only a free that leaves a big enough block counts
        if orders.size and int(orders.max()) >= self.order:
            self.request()

    def request(self, now=None):
        """Ask for a pass: scheduled delay_s from now if idle; otherwise nothing moves."""
        with self._state_lock:
            if self.state == REQUESTED:
                return
            previous, self.state = self.state, REQUESTED
            self.stats["requests"] += 1
            if previous == IDLE:
                self.due_at = (self.clock() if now is None else now) + self.delay_s
            # previous == ACTIVE: the running pass sees REQUESTED at its end and reschedules

    # --- the pass ---------------------------------------------------------------------------
    def poll(self, now=None):
        """Run the pass if one is due at `now` (default: clock()).  Returns pages reported."""
        now = self.clock() if now is None else now
        with self._state_lock:
            if self.state != REQUESTED or now < self.due_at:
                return 0
            self.state, self.due_at = ACTIVE, None
        self.stats["passes"] += 1
        reported = 0
        try:
            reported = self._process()
        finally:
            with self._state_lock:
                if self.state == REQUESTED:
                    # more frees (or an exhausted budget) during the pass: again after the delay
                    self.due_at = now + self.delay_s
                else:
                    self.state = IDLE
        return reported

    def _process(self):
        a = self.allocator
        if a.free_pages <= self.watermark_pages:
            self.stats["skipped_watermark"] += 1
            return 0
        batch, reported = [], 0
        for order in range(self.order, a.max_order + 1):
            budget = -(-a.nr_free(order) // (self.capacity * BUDGET_DIVISOR))
            for first in a.unreported_blocks(order).tolist():
                if budget < 0:
                    self._rerequest()          # budget spent: leave the rest for the next pass
                    break
                if len(batch) == self.capacity:
                    npages, ok = self._report_batch(batch)
                    reported, batch = reported + npages, []
                    budget -= 1
                    if not ok:
                        return reported        # a failed report ends the pass, as in Linux
                    if budget < 0:
                        self._rerequest()
                        break
                # the report ran without the allocator lock: the block may be gone meanwhile
                if a.try_isolate(first, order):
                    batch.append((first, order))
        if batch:
            reported += self._report_batch(batch)[0]    # the final flush of a partial batch
        return reported

    def _rerequest(self):
        with self._state_lock:
            self.state = REQUESTED

    def _report_batch(self, batch):
        """report -> drain: put every block back, marked reported only if the report worked.
        Returns (pages reported, ok)."""
        blocks = np.array(batch, dtype=np.int64)
        runs = np.column_stack([blocks[:, 0], np.left_shift(1, blocks[:, 1])])
        ok = False
        self.stats["report_calls"] += 1
        # The host reads the states of what it is told: pages freed shortly before their block
        # was isolated may still have their UNUSED hint pending (STABLE in mem).  Flushing now,
        # after isolation, is enough: an isolated block has no allocated page to free into it.
        self.allocator.flush_hints()
        try:
            ok = self.report(runs) is not False
        finally:
            for first, order in batch:
                self.allocator.putback(first, order, reported=ok)
            if ok:
                self.stats["blocks_reported"] += len(batch)
                self.stats["pages_reported"] += int(runs[:, 1].sum())
            else:
                self.stats["report_errors"] += 1
        return (int(runs[:, 1].sum()) if ok else 0), ok

    def close(self):
        """Unregister from the allocator (page_reporting_unregister)."""
        if self._on_free in self.allocator.on_free:
            self.allocator.on_free.remove(self._on_free)
        self.state, self.due_at = IDLE, None

    def __repr__(self):
        return "<PageReporting order=%d capacity=%d delay=%gs %s>" % (
            self.order, self.capacity, self.delay_s, self.state)
