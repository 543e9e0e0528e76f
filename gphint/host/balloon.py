"""virtio-balloon driven by a policy in the spirit of oVirt MOM's balloon.rules.

Policy, every `interval` seconds (MOM: 10 s, scaled to gphint's run lengths):
  host_free = free fraction of host memory (the budget under pressure; the machine's
              available memory in proactive mode, as MOM reads it from the host)
  host_free < threshold (0.20):  shrink each guest: it may keep a free fraction of
              0.20 * host_free / threshold of its memory (critical, host_free < 0.05: a
              negative free fraction -- the guest must drop caches); the balloon grows to
              (guest memory - used - that free reserve)
  otherwise:  deflate by `change` of guest memory per evaluation
  never change a balloon by more than `change` (0.05) of guest memory per evaluation.
A target is only a request: the guest's driver serves it the next time the guest is scheduled
(`Host.on_scheduled`), so idle guests, scheduled rarely, answer late -- the latency recorded
per request is the cost of calling into many guests that hinting avoids.
"""
import numpy as np
import psutil

from ..guest.balloon import BalloonDriver
from .spec import registers
from .strategies import Strategy

PRESSURE_CRITICAL = 0.05
MIN_GUEST_FREE = 0.20


def shrink_target_npages(size, free, balloon, host_free, threshold, change):
    """MOM's shrink_guest: the balloon size (pages) one evaluation may ask for."""
    if host_free <= PRESSURE_CRITICAL:
        free_frac = host_free - 0.05
    else:
        free_frac = MIN_GUEST_FREE * host_free / threshold
    used = size - free - balloon
    want = size - used - int(free_frac * size)
    step = int(change * size)
    return int(np.clip(want, balloon, balloon + step)), used


def grow_target_npages(size, balloon, change):
    """MOM's grow_guest: give memory back, `change` of guest memory per evaluation."""
    return max(0, balloon - int(change * size))


@registers("balloon")
class Balloon(Strategy):
    name = "balloon"

    def attach(self):
        p = self.spec.params
        self.interval_s = float(p["interval"])
        self.threshold = float(p["threshold"])
        self.change = float(p["change"])
        self._next_eval = 0.0
        self.latencies_s = []
        self.requests = 0
        for slot in self.host.slots:
            slot.balloon = BalloonDriver(self.allocator_of(slot), getattr(slot.guest, "reclaim", None))
            slot.request = None          # (target_npages, t_requested)

    def host_free_fraction(self):
        if self.host.budget_npages is None:
            vm = psutil.virtual_memory()
            return vm.available / vm.total
        return max(0.0, 1.0 - self.host.resident_npages / self.host.budget_npages)

    def proactive(self, now):
        """Evaluate the policy; targets become requests served when each guest next runs."""
        if now < self._next_eval:
            return 0
        self._next_eval = now + self.interval_s
        host_free = self.host_free_fraction()
        for slot in self.host.slots:
            size = slot.mem.npages
            if host_free < self.threshold:
                free = int(slot.guest.allocator.free_pages)
                target, _ = shrink_target_npages(size, free, slot.balloon.size_pages, host_free,
                                                 self.threshold, self.change)
            else:
                target = grow_target_npages(size, slot.balloon.size_pages, self.change)
            if target != slot.balloon.size_pages:
                # a newer target replaces an unserved one but keeps its request time
                t_req = slot.request[1] if slot.request else now
                slot.request = (target, t_req)
                self.requests += 1
        return 0

    def on_scheduled(self, slot, now):
        """The guest runs: its driver inflates/deflates to the requested target."""
        if slot.request is None:
            return
        target, t_req = slot.request
        slot.request = None
        delta = target - slot.balloon.size_pages
        if delta > 0:
            pages = np.asarray(slot.balloon.inflate(delta), dtype=np.int64)
            # the device discards what the guest handed over (no states: MADV_DONTNEED)
            self.discard(slot, np.sort(pages), "ballooned", raw=True)
        elif delta < 0:
            slot.balloon.deflate(-delta)
        self.latencies_s.append(now - t_req)

    def stats(self):
        lat = np.asarray(self.latencies_s)
        return {"balloon_requests": self.requests, "balloon_served": int(lat.size),
                "balloon_latency_mean_s": float(lat.mean()) if lat.size else None,
                "balloon_latency_max_s": float(lat.max()) if lat.size else None,
                "balloon_npages": int(sum(s.balloon.size_pages for s in self.host.slots))}
