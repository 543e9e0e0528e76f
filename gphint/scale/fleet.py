"""The fleet: N guests, each on its own vCPU thread, with the resident set of a long uptime.

Every guest keeps its allocator's struct pages in its own memory (`Guest(mem_map=True)`), so a
request the host posts costs the guest what it costs a real one.  Guests under none, reporting
and balloon run without CMMA states; unused guests hint UNUSED only; cmma guests hint all.
Before the host's demand the fleet is in the state an overcommitted host leaves it in: the
host has swapped out `cold_fraction` of each idle guest's STABLE resident frames, chosen at
random (the host's FIFO, with every page equally old), struct pages among them.
"""
import numpy as np

from ..batching import BATCH
from ..guest.files import FileSet
from ..guest.guest import Guest
from ..guest.pagecache import FILE
from ..guest.vcpu import Vcpu
from ..host.hostswap import fault_service_available
from ..states import PAIR_MASK, PageState, pair
from .config import RESIDENT_SET

BUSY_WORKLOAD = "database"
SR = pair(PageState.STABLE, 0)


def make_service():
    """The discard-fault service, or None (pure-Python twin, no userfaultfd: with the reason)."""
    ok, why = fault_service_available()
    if not ok:
        return None, why
    from ..faults import FaultService
    return FaultService(), ""


class Fleet:
    """Fleet(n, config, spec, svc): guests, their vCPUs (not started), the shared file set."""

    def __init__(self, n, config, spec, svc):
        self.n, self.config, self.spec, self.svc = n, config, spec, svc
        self.files = FileSet(None, seed=config.seed, total_bytes=2 * config.guest_mem_bytes)
        self.guests, self.vcpus = [], []
        self.nbusy = config.busy_guests(n)
        rng = np.random.default_rng([config.seed, n])
        self.busy = set(rng.choice(n, self.nbusy, replace=False).tolist())
        try:
            for i in range(n):
                self.guests.append(self._guest(i))
        except BaseException:
            self.close()
            raise

    def _guest(self, i):
        cfg, hints = self.config, self.spec.hints
        busy = i in self.busy
        g = Guest(cfg.guest_mem_bytes, files=self.files.root, seed=cfg.seed + i,
                  batch=self.spec.params.get("batch", BATCH),
                  hinting=hints != "off", fault_service=self.svc, name="g%d" % i, mem_map=True,
                  workload=BUSY_WORKLOAD if busy else None)
        if hints == "unused":
            g.set_hint_level("unused")
        populate(g, np.random.default_rng([cfg.seed, i]))
        g.busy = busy
        return g

    def make_vcpus(self, timer_for=None, device_for=None):
        """One Vcpu per guest; timer_for(i) / device_for(i) give its timer and balloon device."""
        for i, g in enumerate(self.guests):
            self.vcpus.append(Vcpu(g, busy=g.busy, tick_s=self.config.tick_s,
                                   timer=timer_for(i) if timer_for else None,
                                   device=device_for(i) if device_for else None,
                                   fault_service=self.svc, name=g.name))
        return self.vcpus

    def swap_cold(self, host, rng):
        """The precondition: host-swap cold_fraction of each idle guest's STABLE resident frames."""
        if host.swapper is None or self.config.cold_fraction <= 0:
            return 0
        done = 0
        host.sample()
        for slot, g in zip(host.slots, self.guests):
            if g.busy:
                continue
            sr = np.flatnonzero(slot.residency.resident & ((slot.mem.states & PAIR_MASK) == SR))
            k = int(sr.size * self.config.cold_fraction)
            if k:
                # one submission per guest: the precondition, not the strategy's batching
                pages = np.sort(rng.choice(sr, k, replace=False))
                done += host.swapper.swap_out(slot.mem, pages)
                slot.residency.forget(pages)
        return done

    def close(self):
        for v in self.vcpus:
            try:
                v.stop()
            except Exception:
                pass
        for g in self.guests:
            g.close()
        self.guests = []
        self.files.close()


def populate(g, rng):
    """A guest after its workload ended: cache, live anonymous memory, freed memory it had
    touched, and a little never touched (RESIDENT_SET, of the frames its allocator manages)."""
    usable = g.allocator.free_pages
    want_cache = int(RESIDENT_SET["cache"] * usable)
    for fid in rng.permutation(len(g.files)):
        cached = int(np.count_nonzero(g.table.kind == FILE))
        if cached >= want_cache:
            break
        size = int(g.files.size_bytes[fid])
        n = min(size, (want_cache - cached) * g.mem.page_size)
        if n > 0:
            g.read(int(fid), 0, n)
    g.alloc(int(RESIDENT_SET["anon"] * usable), pid=1)
    done = g.alloc(int(RESIDENT_SET["freed"] * usable), pid=2)
    g.free(done, pid=2)
    g.allocator.flush_hints()
