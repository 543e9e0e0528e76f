"""Free page reporting, host half (what QEMU's and Firecracker's virtio-balloon devices do with
a report): discard every reported block with MADV_DONTNEED and acknowledge.

The guest half -- order threshold, 2 s delay, capacity-32 scatterlist, ~1/16 of each free list
per pass, the watermark rule, isolate/putback/mark-reported -- is gphint.guest.reporting,
faithful to mm/page_reporting.c.  Guests under this strategy run without CMMA states: the host
learns that memory is free only from reports, never from page states.
"""
from functools import partial

import numpy as np

from ..guest.reporting import PageReporting
from ..memory import expand_runs
from .spec import registers
from .strategies import Strategy


@registers("reporting")
class Reporting(Strategy):
    name = "reporting"

    def attach(self):
        p = self.spec.params
        self.reports = 0
        self.reported_blocks = 0
        for slot in self.host.slots:
            slot.reporter = PageReporting(self.allocator_of(slot), partial(self._report, slot), order=p["order"],
                                          capacity=p["capacity"], delay_s=p["delay"])

    def _report(self, slot, runs):
        """Called by the guest's reporting pass with up to `capacity` blocks as (n, 2) runs
        [first_page, npages].  Discards them (the device's handling of the report) and returns
        True: acknowledged, so the guest may mark them reported.  Raising leaves them
        unreported (the kernel's rule: mark only after success)."""
        runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
        with self.host.lock:
            # the blocks are isolated in the guest while reported: raw discard is safe even
            # though a guest without CMMA states still calls them STABLE
            self.discard(slot, expand_runs(runs), "reported", raw=True)
        self.reports += 1
        self.reported_blocks += len(runs)
        return True

    def guest_timer(self, slot, now):
        """page_reporting_process: the delayed work item, due `delay` after a qualifying free."""
        slot.reporter.poll(now)

    def proactive(self, now):
        return 0    # the host waits to be told: reports arrive through _report

    def detach(self):
        for slot in self.host.slots:
            slot.reporter.close()

    def stats(self):
        return {"reports": self.reports, "reported_blocks": self.reported_blocks}

