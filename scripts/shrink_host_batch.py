#!/usr/bin/env python3
"""How long one host reclaim pass takes to shrink a touched guest under a budget, per strategy
spec -- the guest's `batch` against the host's `host_batch` -- next to the kernel's floor: one
madvise(MADV_DONTNEED) over as many resident bytes.

    scripts/shrink_host_batch.py [--guest-mem 1G] [--budget 117M] [--repeat 5] [SPEC ...]

The guest (a GuestMemory served by a FaultService, with a BuddyAllocator) is touched whole,
95% of it allocated, 90% of that freed again in random order (UNUSED hints, flushed); then
one Host.step() under the budget is timed.  Each repeat builds a fresh guest.  Needs the
discard-fault service (compiled mechanism, userfaultfd).

Sample output (`--repeat 3`, 2 cores shared with three other jobs, load ~3; before the default
host_batch became 16384, so the first row is what `cmma` was):
    spec                              median ms   min ms  discard calls  taken MiB
    cmma                                  342.2    308.0           7275      909.3
    cmma:batch=4096                        95.9     93.7             57      909.3
    cmma:host_batch=4096                  102.5     94.5             57      909.3
    cmma:host_batch=65536                  92.9     89.6             23      909.3
    cmma:host_batch=262144                157.5    114.2             22      909.3
    one madvise over 909.3 MiB            100.7    100.5              1      909.3
"""
import argparse
import statistics
import sys
import time

import numpy as np

# the old default (host_batch = batch = 32), today's (gphint.host.spec.HOST_BATCH) and its neighbours
DEFAULT_SPECS = ("cmma:host_batch=32", "cmma:host_batch=4096", "cmma", "cmma:host_batch=65536")


class _Guest:
    """The least a Host needs from a hinting guest: its memory and its allocator."""

    def __init__(self, mem, allocator):
        self.mem, self.allocator = mem, allocator


def _prepared_guest(gphint, size, batch, svc, seed):
    from gphint.guest.allocator import BuddyAllocator
    mem = gphint.GuestMemory(size, name="g0")
    svc.register(mem)
    a = BuddyAllocator(mem, batch=batch)
    mem.frames[:] = 1                                     # touched: every frame resident
    got = a.alloc(int(mem.npages * 0.95))
    rng = np.random.default_rng(seed)
    a.free(rng.permutation(got)[:int(got.size * 0.90)])
    a.flush_hints()
    return _Guest(mem, a)


def shrink_once(gphint, spec_text, size, budget, seed):
    from gphint.host import Host, parse_strategy
    spec = parse_strategy(spec_text)
    svc = gphint.FaultService()
    g = _prepared_guest(gphint, size, spec.batch, svc, seed)
    try:
        host = Host([g], budget, spec, fault_service=svc)
        calls0 = g.mem.stats["discard_calls"]
        t0 = time.perf_counter()
        taken = host.step()
        dt = time.perf_counter() - t0
        host.close()
        return dt, g.mem.stats["discard_calls"] - calls0, taken * g.mem.page_size
    finally:
        svc.stop()
        g.mem.close()


def madvise_floor(gphint, nbytes):
    """One madvise over nbytes of touched memory: what the kernel's own work costs."""
    mem = gphint.GuestMemory(nbytes)
    try:
        mem.frames[:] = 1
        t0 = time.perf_counter()
        mem.discard_raw(np.array([[0, mem.npages]]), submit="coalesce")
        return time.perf_counter() - t0
    finally:
        mem.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", default=list(DEFAULT_SPECS), metavar="SPEC")
    ap.add_argument("--guest-mem", default="1G")
    ap.add_argument("--budget", default="117M")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    import gphint
    from gphint.host.hostswap import fault_service_available
    ok, why = fault_service_available()
    if not ok:
        print("shrink_host_batch: needs the discard-fault service: %s" % why, file=sys.stderr)
        return 2
    print("%-32s %10s %8s %14s %10s" % ("spec", "median ms", "min ms", "discard calls", "taken MiB"))
    taken_bytes = 0
    for spec in args.specs:
        runs = [shrink_once(gphint, spec, args.guest_mem, args.budget, seed) for seed in range(args.repeat)]
        times = [r[0] for r in runs]
        taken_bytes = runs[-1][2]
        print("%-32s %10.1f %8.1f %14d %10.1f" % (spec, statistics.median(times) * 1e3, min(times) * 1e3,
                                                  runs[-1][1], taken_bytes / 2**20))
    if taken_bytes:
        floor = [madvise_floor(gphint, taken_bytes) for _ in range(args.repeat)]
        print("%-32s %10.1f %8.1f %14d %10.1f" % ("one madvise over %.1f MiB" % (taken_bytes / 2**20),
                                                  statistics.median(floor) * 1e3, min(floor) * 1e3, 1,
                                                  taken_bytes / 2**20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
