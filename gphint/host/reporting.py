"""Free page reporting, host half (what QEMU's and Firecracker's virtio-balloon devices do with
a report): discard every reported block with MADV_DONTNEED and acknowledge.

The guest half -- order threshold, 2 s delay, capacity-32 scatterlist, ~1/16 of each free list
per pass, the watermark rule, isolate/putback/mark-reported -- is gphint.guest.reporting,
faithful to mm/page_reporting.c.  Guests under this strategy run without CMMA states: the host
learns that memory is free only from reports, never from page states.
"""
from functools import partial

import numpy as np

from ..memory import expand_runs
from .strategies import Strategy


class Reporting(Strategy):
    name = "reporting"

    def attach(self):
        PageReporting = self.guest_driver("guest.reporting", "PageReporting")
        p = self.spec.params
        self.reports = 0
        self.reported_blocks = 0
        for slot in self.host.slots:
            slot.reporter = PageReporting(self.allocator_of(slot), partial(self._report, slot), order=p["order"],
                                          capacity=p["capacity"], delay_s=p["delay"])

    def _report(self, slot, blocks):
        """Called by the guest's reporting pass with up to `capacity` blocks [first_page, order].
        Discards them (the device's handling of the report) and returns True: acknowledged, so
        the guest may mark them reported.  Raising leaves them unreported (the kernel's rule)."""
        blocks = np.asarray(blocks, dtype=np.int64).reshape(-1, 2)
        runs = np.stack([blocks[:, 0], np.left_shift(1, blocks[:, 1])], axis=1)
        with self.host.lock:
            pages = expand_runs(runs)
            self.discard(slot, pages, "reported", raw=True)
        self.reports += 1
        self.reported_blocks += len(blocks)
        return True

    def on_scheduled(self, slot, now):
        """The reporting work item runs in the guest: give it the chance when the guest runs."""
        poll = getattr(slot.reporter, "poll", None)
        if poll is not None:
            poll(now)

    def proactive(self, now):
        return 0    # the host waits to be told: reports arrive through _report

    def detach(self):
        for slot in self.host.slots:
            rep = getattr(slot, "reporter", None)
            close = getattr(rep, "close", None)
            if close is not None:
                close()

    def stats(self):
        return {"reports": self.reports, "reported_blocks": self.reported_blocks}

