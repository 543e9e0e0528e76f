"""`gphint demo` (foundation version): guests hint their free pages, the host discards them,
and the process RSS -- measured by psutil, not estimated -- shows what came back."""
import numpy as np

from . import measure
from .memory import GuestMemory
from .states import PageState
from .units import fmt_bytes, parse_size


def run_demo(args):
    if args.guests < 1:
        from .errors import ConfigError
        raise ConfigError("--guests must be >= 1, got %d" % args.guests)
    size = parse_size(args.guest_mem, "--guest-mem")
    rng = np.random.default_rng(1)
    guests = [GuestMemory(size, name="g%d" % i) for i in range(args.guests)]
    before = measure.rss_bytes()
    for g in guests:
        g.frames[:] = 1                     # the guest touches all its memory
    touched = measure.rss_bytes()
    print("%d guests x %s: RSS %s before touching, %s after" % (len(guests), fmt_bytes(size),
                                                                fmt_bytes(before), fmt_bytes(touched)))
    print("%-6s %10s %10s %12s %8s" % ("guest", "unused", "discarded", "syscalls", "bytes ok"))
    for g in guests:
        free = np.flatnonzero(rng.random(g.npages) < rng.uniform(0.3, 0.8))
        g.set_state(free, PageState.UNUSED)     # the guest frees memory: hint UNUSED
        n = g.discard(free)                     # the host discards without asking the guest
        keep = np.setdiff1d(np.arange(g.npages), free)
        ok = not g.frames[free].any() and bool((g.frames[keep] == 1).all())
        print("%-6s %10s %10s %12d %8s" % (g.name, fmt_bytes(free.size * g.page_size),
                                           fmt_bytes(n * g.page_size), g.stats["discard_calls"], ok))
    after = measure.rss_bytes()
    print("process RSS: %s -> %s  (host got back %s)" % (fmt_bytes(touched), fmt_bytes(after),
                                                         fmt_bytes(touched - after)))
    for g in guests:
        g.close()
    return 0
