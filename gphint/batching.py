"""The batching cycle, stated once: fill -> submit -> drain, with a capacity, then a final flush.

Linux's free page reporting (mm/page_reporting.c, page_reporting_cycle) is the model: the
driver fills a scatterlist of at most `capacity` entries; when it is full the batch is
reported (submit), the entries are handed back as reported (drain), and filling goes on; at
the end of the pass whatever is left -- a partial batch -- is reported too (the final flush).
gphint batches the same way on both sides of the guest/host boundary:

  guest  the hint buffer (gphint.guest.hints.HintBuffer, mechanism ext/hintq.c, twin
         gphint._fallback.HintQueue): deferred usage transitions fill it; every `capacity` of
         them are submitted as state changes at once; flush() is the final flush.  Its capacity
         is the strategy spec's `batch`.
  host   the host's discard submission (gphint.host.strategies.Strategy.discard) and its swap-out
         (Host.swap_out): the strategy fills a cycle with the pages it picked; every `capacity`
         pages become one discard (or swap-out) call into ext/; the cycle's end flushes the rest.
         Its capacity is the spec's `host_batch` (by default gphint.host.spec.HOST_BATCH for
         unused and cmma, one device request for the balloon and reporting, the spec's
         `batch` for none).

Strategies differ only in how they fill (a state scan, a free page report, a balloon inflation).
The rule in numbers: with n items and capacity c, a cycle makes n // c full submissions and, at
the flush, one more of n % c items if that is not zero; a submission never holds more than c.
"""
import numpy as np

from .errors import ConfigError

# The guest's hint-buffer capacity (and the host's submission size where `host_batch` follows it):
# 32 transitions per state change is the follow-up proposal's order of magnitude and free page
# reporting's capacity (PAGE_REPORTING_CAPACITY in include/linux/page_reporting.h).  The batching
# sweep (`gphint sweep --preset batching`, 3 seeds) does not separate it from 256 on the host's
# cost: at cmma's other defaults, one run (e481f71) gave 256 the lower host CPU per MiB given back
# (1.70 [1.57-1.91] vs 2.06 [2.04-2.11] ms) and a rerun after the host's reclaim became one C
# call per fleet (ced90a9, with 256 as the default) gave it to 32 (1.90 [1.59-1.92] vs 2.19
# [2.14-2.20] ms); both halve the hint operations per guest operation at 256 (0.334 vs 0.682)
# and give back the same memory.  The README's sweep section renders the current run's figures.
BATCH = 32


def check_capacity(capacity, what="batch capacity"):
    """capacity as an int >= 1, or ConfigError naming the value."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ConfigError("%s must be an integer >= 1, got %r" % (what, capacity))
    return int(capacity)


def whole_batches(npending, capacity):
    """How many of npending items a submission takes while filling: whole batches only."""
    return npending // capacity * capacity


def batches(n, capacity):
    """(lo, hi) bounds of the submissions that n items make: full batches, then the remainder."""
    return ((lo, min(lo + capacity, n)) for lo in range(0, n, capacity))


class Cycle:
    """One fill -> submit -> drain cycle: `Cycle(capacity, submit)`.

    fill(items) appends items (a 1-D array); each time `capacity` are waiting, submit(batch) is
    called with exactly that many, and its return value (what the submission achieved, e.g.
    pages discarded) is added to `done` -- the drain.  flush() submits the remainder, so that a
    cycle run to its end has submitted every item in order, never more than `capacity` at once.
    """

    def __init__(self, capacity, submit):
        self.capacity = check_capacity(capacity)
        self._submit = submit
        self._waiting = []
        self._nwaiting = 0
        self.done = 0
        self.submissions = 0

    def fill(self, items):
        items = np.asarray(items)
        if items.size == 0:
            return self
        self._waiting.append(items)
        self._nwaiting += items.size
        if self._nwaiting >= self.capacity:
            full = np.concatenate(self._waiting) if len(self._waiting) > 1 else self._waiting[0]
            take = whole_batches(full.size, self.capacity)
            for lo, hi in batches(take, self.capacity):
                self._submit_one(full[lo:hi])
            rest = full[take:]
            self._waiting = [rest] if rest.size else []
            self._nwaiting = rest.size
        return self

    def flush(self):
        """The final flush: submit whatever waits (a partial batch).  Returns `done`."""
        if self._nwaiting:
            rest = np.concatenate(self._waiting) if len(self._waiting) > 1 else self._waiting[0]
            self._waiting, self._nwaiting = [], 0
            self._submit_one(rest)
        return self.done

    def _submit_one(self, batch):
        self.submissions += 1
        self.done += int(self._submit(batch))


def run(items, capacity, submit):
    """A whole cycle over items: fill them all, flush, return what the submissions achieved."""
    return Cycle(capacity, submit).fill(items).flush()
