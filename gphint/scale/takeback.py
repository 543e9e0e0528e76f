"""The host takes back `take` of the fleet's memory: one strategy, one fleet, measured.

The demand is a resident target (what the guests hold, by mincore, minus take x the fleet's
memory).  Each strategy first uses its own mechanism, then host-swaps whatever is still over
the target, oldest resident first (gphint.host.Host.swap_oldest), as every strategy's last
resort is -- in the same submissions as `none` (SWAP_BATCH pages: the host's swap, not the
strategy's hint batch, so a fallback costs the same whoever falls back):
  cmma, unused   the host reads page states and discards (Host.strategy.reclaim): no guest runs
  none           host swap only
  reporting      the guests' own reporting work items (their vCPU timers) report free blocks,
                 the host discards them; the host waits `delay` + two guest ticks, then swaps
  balloon        the host posts an inflate request to every guest (its share of what is still
                 needed) and waits for the answers, up to BALLOON_ROUNDS rounds
The balloon's wait for answers ends at the config's timeout_s (`timed_out`; cmma's and
unused's passes call no guest and are bounded by SWAP_PASSES, reporting's wait by its delay).
The record says who reached the target (`reached_by`): the strategy's own mechanism, or the
host swap it fell back on (when that took more than 1 - MIN_OWN_SHARE of what was taken: a
few pages the busy guests faulted back during the last pass do not count) -- so a time to
target reached by swapping is never read as the mechanism's.
"""
import os
import time

import numpy as np

from ..faults import fault_thread_cpu_s
from ..host import Host
from ..host.spec import parse_strategy
from ..memory import PAGE_SIZE

BALLOON_ROUNDS = 4
SWAP_PASSES = 8
# busy guests fault pages back while the host takes others: the target counts as reached within
# this fraction of what the host takes back
TOLERANCE = 0.01
POLL_S = 0.01
SWAP_BATCH = parse_strategy("none").host_side()[0]     # pages per host swap-out submission
MIN_OWN_SHARE = 0.9     # of the taken memory, the mechanism's own for it to have reached the target


def _process_cpu_s():
    t = os.times()
    return t.user + t.system


def _pct(values, q):
    return None if len(values) == 0 else float(np.percentile(np.asarray(values), q))


class TakeBack:
    """TakeBack(fleet, spec, svc): builds the host; run() -> the measured record fields."""

    def __init__(self, fleet, spec, svc):
        self.fleet, self.spec, self.svc = fleet, spec, svc
        # the balloon's host is a plain one (swap as its last resort): its requests go through
        # the guests' vCPUs, not through Host.on_scheduled's scheduling model
        # (its device discards one request, the balloon spec's host_batch, per submission)
        host_spec = "none:host_batch=%d" % spec.params["host_batch"] if spec.name == "balloon" else spec
        fleet_bytes = sum(g.mem.size_bytes for g in fleet.guests)
        # a budget makes the Host keep a swapper; the target is enforced here, not by step()
        self.host = Host(fleet.guests, budget=fleet_bytes, strategy=host_spec, fault_service=svc)
        self.fleet_bytes = fleet_bytes
        self.requests = []
        self.timed_out = False
        # the host's work done on guests' threads (a device's handling of a request or report):
        # one entry per call, appended (atomic under the GIL) by whichever vCPU thread ran it
        self._device_cpu = []
        timer = self._timer if spec.name == "reporting" else None
        device = self._device if spec.name == "balloon" else None
        fleet.make_vcpus(timer_for=timer, device_for=device)
        if spec.name == "reporting":
            self._time_reports()

    # --- hooks the guests call from their own threads ----------------------------------------
    def _timer(self, i):
        slot = self.host.slots[i]
        return lambda now: self.host.strategy.guest_timer(slot, now)

    def _device(self, i):
        slot = self.host.slots[i]

        def device(pages):
            # virtio-balloon's device: discard what the guest handed over.  It runs on the
            # guest's thread here, but it is the host's work (QEMU's device), counted as such
            cpu0 = time.thread_time()
            with self.host.lock:
                self.host.strategy.discard(slot, pages, "ballooned", raw=True)
            self._device_cpu.append(time.thread_time() - cpu0)
        return device

    def _time_reports(self):
        """Free page reporting's device (the host's discard of a report) runs on the reporting
        guest's thread, inside its work item: timed as the host's, as the balloon's device is."""
        for slot in self.host.slots:
            report = slot.reporter.report

            def timed(runs, report=report):
                cpu0 = time.thread_time()
                try:
                    return report(runs)
                finally:
                    self._device_cpu.append(time.thread_time() - cpu0)
            slot.reporter.report = timed

    # --- the demand ------------------------------------------------------------------------------
    def resident(self):
        with self.host.lock:
            return self.host.sample()

    def run(self, rng):
        host, fleet, cfg = self.host, self.fleet, self.fleet.config
        for v in fleet.vcpus:
            v.start()
        cold = fleet.swap_cold(host, rng)
        self._warm_busy()
        out0 = host.swapper.out_npages
        swap_in0 = self._swap_ins()
        lat0 = [len(v.op_latencies_s) for v in fleet.vcpus]
        guest0 = [v.cpu_s for v in fleet.vcpus]
        start = self.resident()
        take = int(cfg.take * self.fleet_bytes) // PAGE_SIZE
        target = start - take + int(TOLERANCE * take)
        # host CPU = this thread's (the host's reclaim, swap and waiting) + the device work on the
        # guests' threads; the fault thread's and the rest of the process's are reported apart:
        # both grow with the busy guests' work, not with what the host does to take memory back
        cpu0, host0, fault0 = _process_cpu_s(), time.thread_time(), fault_thread_cpu_s()
        device0 = len(self._device_cpu)
        t0 = time.monotonic()
        reached = self._mechanism(target, t0)
        mechanism_s = time.monotonic() - t0
        after_mechanism = self.resident()
        if reached is None:
            reached = self._swap_rest(target)
        t_end = time.monotonic()
        cpu_s = _process_cpu_s() - cpu0
        host_thread_s = time.thread_time() - host0
        fault1 = fault_thread_cpu_s()
        fault_s = None if fault0 is None or fault1 is None else fault1 - fault0
        device_s = sum(self._device_cpu[device0:])
        guest_s = sum(v.cpu_s - c for v, c in zip(fleet.vcpus, guest0))
        end = self.resident()
        own = max(start - after_mechanism, 0) / max(start - end, 1)
        reached_by = None if reached is None else \
            self._own_name() if own >= MIN_OWN_SHARE else "host swap"
        time.sleep(cfg.settle_s)        # the stall window: ops just after the target count too
        lat = [x for v, n in zip(fleet.vcpus, lat0) for x in v.op_latencies_s[n:]]
        for v in fleet.vcpus:
            v.stop()
        taken_mib = max(start - end, 0) * PAGE_SIZE / (1 << 20)
        host_cpu = host_thread_s + device_s
        served = [r for r in self.requests if r.done.is_set()]
        req_lat = [r.latency_s for r in served if r.latency_s is not None]
        serve_cpu = sum(v.stats["serve_cpu_s"] + v.stats["timer_cpu_s"] for v in fleet.vcpus)
        serve_cpu = max(0.0, serve_cpu - sum(self._device_cpu))
        return {
            "time_to_target_s": None if reached is None else round(reached - t0, 4),
            "reached_target": reached is not None,
            "reached_by": reached_by,
            "timed_out": self.timed_out,
            "timeout_s": cfg.timeout_s,
            "mechanism_s": round(mechanism_s, 4),
            "mechanism_share": round(min(own, 1.0), 4),
            "wall_s": round(t_end - t0, 4),
            "host_cpu_s": round(host_cpu, 4),
            "host_cpu_s_per_mib": round(host_cpu / taken_mib, 6) if taken_mib else None,
            "host_device_cpu_s": round(device_s, 4),
            "fault_service_cpu_s": None if fault_s is None else round(fault_s, 4),
            "other_cpu_s": round(max(0.0, cpu_s - host_thread_s - guest_s - (fault_s or 0.0)), 4),
            "guest_calls": len(self.requests),
            "guest_calls_answered": len(served),
            "guest_serve_cpu_s": round(serve_cpu, 4),
            "guest_serve_swap_ins": int(sum(r.swap_ins for r in served)),
            "request_latency_p50_s": _pct(req_lat, 50), "request_latency_p99_s": _pct(req_lat, 99),
            "op_latency_p50_s": _pct(lat, 50), "op_latency_p99_s": _pct(lat, 99),
            "ops_timed": len(lat),
            "host_swap_out_bytes": (host.swapper.out_npages - out0) * PAGE_SIZE,
            "host_swap_in_bytes": (self._swap_ins() - swap_in0) * PAGE_SIZE,
            "cold_swapped_bytes": int(cold) * PAGE_SIZE,
            "fleet_bytes": self.fleet_bytes,
            "resident_start_bytes": start * PAGE_SIZE, "resident_end_bytes": end * PAGE_SIZE,
            "target_tolerance": TOLERANCE, "swap_batch": SWAP_BATCH,
            "target_bytes": target * PAGE_SIZE, "taken_bytes": max(start - end, 0) * PAGE_SIZE,
            "discarded_bytes": sum(sum(s.discarded.values()) for s in host.slots) * PAGE_SIZE,
        }

    def _warm_busy(self):
        """Let every busy guest run a few operations before the demand (its first ones are
        its workload's setup, not the stall the host causes)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if all(v.stats["ops"] >= 8 for v in self.fleet.vcpus if v.busy):
                return
            time.sleep(POLL_S)

    def _swap_ins(self):
        return int(self.svc.stats().get("swap_ins", 0)) if self.svc is not None else 0

    def _own_name(self):
        """Who reached the target when the mechanism did: 'none' has no mechanism but swap."""
        return "host swap" if self.spec.name == "none" else "strategy"

    def _past(self, deadline):
        if time.monotonic() < deadline:
            return False
        self.timed_out = True
        return True

    def _mechanism(self, target, t0):
        """The strategy's own way; returns when the target was reached, or None (it gave what
        it could, or the balloon's timeout_s passed: self.timed_out)."""
        host, name = self.host, self.spec.name
        deadline = t0 + self.fleet.config.timeout_s
        if name in ("cmma", "unused"):
            # read states and discard until the target holds: busy guests fault pages back
            # while a pass runs, so one pass can end just above it -- after the first pass,
            # twice what is still over, as _swap_rest asks (asking for just the overshoot, the
            # passes at 128 guests trailed the busy guests' faults by 20-70 pages each, all 8
            # ran and host swap took the rest)
            # The sample that finds the target held is when it was reached (as in _swap_rest):
            # a further sample would race the busy guests again
            for i in range(SWAP_PASSES):
                with host.lock:
                    over = host.sample() - target
                    if over <= 0:
                        return time.monotonic()
                    if host.strategy.reclaim(over if i == 0 else 2 * over) == 0:
                        break
        elif name == "reporting":
            wait = float(self.spec.params["delay"]) + 2 * self.fleet.config.tick_s
            return self._wait(target, min(t0 + wait, deadline))
        elif name == "balloon":
            return self._balloon(target, deadline)
        return time.monotonic() if self.resident() <= target else None

    def _swap_rest(self, target):
        """The last resort: host swap until the target holds (busy guests fault pages back
        meanwhile, so a few passes may be needed); when it was reached, or None."""
        for i in range(SWAP_PASSES):
            with self.host.lock:
                over = self.host.sample() - target
                if over <= 0:
                    return time.monotonic()
                # after the first pass, twice what is still over: what the busy guests fault
                # back during a pass is of that order
                if self._swap_oldest(over if i == 0 else 2 * over) == 0:
                    return None
        return time.monotonic() if self.resident() <= target else None

    def _swap_oldest(self, npages):
        """Host.swap_oldest in SWAP_BATCH-page submissions (host.lock held): a fallback swap
        costs the same whoever falls back, whatever its own device's request size (a host_batch
        of 32 made the peers' fallback swap 3-4x slower than none's for the same pages)."""
        sub = self.host.submission
        own, sub.host_batch = sub.host_batch, SWAP_BATCH
        try:
            return self.host.swap_oldest(npages)
        finally:
            sub.host_batch = own

    def _progress(self):
        """What the guests have handed over so far (answers, reports): the host re-reads
        residency only when it changed -- a waiting host does no work of its own."""
        st = self.host.strategy
        return (sum(r.done.is_set() for r in self.requests), getattr(st, "reports", 0))

    def _wait(self, target, until, pending=()):
        seen = None
        while time.monotonic() < until:
            now_seen = self._progress()
            if now_seen != seen:
                seen = now_seen
                if self.resident() <= target:
                    return time.monotonic()
            if pending and all(r.done.is_set() for r in pending):
                return time.monotonic() if self.resident() <= target else None
            time.sleep(POLL_S)
        return None

    def _balloon(self, target, deadline):
        vcpus = self.fleet.vcpus
        for _ in range(BALLOON_ROUNDS):
            need = self.resident() - target
            if need <= 0:
                return time.monotonic()
            if self._past(deadline):
                break               # no more requests into guests still serving the last ones
            share = np.full(len(vcpus), need // len(vcpus), dtype=np.int64)
            share[:need % len(vcpus)] += 1
            posted = [v.post("inflate", int(q)) for v, q in zip(vcpus, share) if q]
            self.requests += posted
            got = self._wait(target, deadline, posted)
            if got is not None:
                return got
            if not any(r.pages.size for r in posted):
                break               # the guests have nothing left to give
        return None

    def close(self):
        self.host.close()
