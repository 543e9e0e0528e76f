"""Strategy specs as users write them: `NAME:key=value,...`, e.g. `cmma:batch=32,submit=vectored`,
and the registry of the classes that run them.

Each strategy names the keys it understands with their defaults; anything else is a
ConfigError that lists what is valid.  Parsing is pure policy: no memory is touched here.
This module imports nothing else of gphint.host, so every strategy module may import it.
"""
from dataclasses import dataclass, field

import numpy as np

from ..batching import BATCH
from ..discard import ADVICES, SUBMIT_MODES
from ..errors import ConfigError
from ..guest.allocator import MAX_ORDER

BATCHES = (1, 32, 256, 4096)
HOST_BATCH_MAX = 1 << 20   # pages per host submission: 4 GiB, more than any guest here
# The host-side submission size of the strategies that read states (unused, cmma): 16384 pages,
# 64 MiB -- what one free page report carries at most (mm/page_reporting.h: 32 blocks of
# pageblock order 9).  Measured (scripts/shrink_host_batch.py --repeat 3/5, 1 GiB guest shrunk
# to 117 MiB, 2 cores at load ~3, after ext/hostops.c's whole-run pick): host_batch=32 (the
# old default, = batch) took 342 ms in 7275 discard calls; 4096, 16384, 65536 and 262144 pages
# took 90-126 ms at best (93-201 ms median: the machine's noise) in 57 to 22 calls, against
# 89-101 ms for one madvise over the same 909 MiB.  With THP-backed memory (bench_shrink's
# guest; the C host_discard alone timed, 4 runs each) 4096 took 4.0-4.6 ms in 58
# calls, 16384 2.9-3.9 ms in 15, against one madvise per run at 2.5-3.4 ms; 65536 and 262144
# gained nothing more.  A bigger submission also holds its pages (BUSY) longer -- a guest
# allocating one of them waits for the whole madvise -- so the smallest size at the floor wins.
HOST_BATCH = 16384

# Keys every strategy that hands pages to the host understands.
#   batch       the guest's hint buffer capacity (gphint.batching: the guest's cycle); 1 is the
#               unbatched original
#   host_batch  pages per host discard submission (the host's cycle); default: HOST_BATCH for
#               unused and cmma (measured above); for the peers, their device's own request
#               (below: their guests keep no hint buffer, so `batch` says nothing about them);
#               for none, the same number as batch (pages per swap-out)
#   submit      how a submission reaches the kernel: one madvise per page, one per run, or one
#               process_madvise per <= 1024 runs
#   discard     MADV_DONTNEED (RSS drops now) or MADV_FREE (RSS drops only under kernel pressure)
_HINTING = {"batch": BATCH, "host_batch": None, "submit": "vectored", "discard": "dontneed"}

# The peers' host submission is one request of their device, the size the real one carries:
#   balloon    one inflate request holds at most VIRTIO_BALLOON_ARRAY_PFNS_MAX = 256 page numbers
#              (drivers/virtio/virtio_balloon.c, fill_balloon's pfns array); QEMU discards them
#              all before it acknowledges (hw/virtio/virtio-balloon.c)
#   reporting  one report holds `capacity` free blocks of order `order` or above (mm/page_reporting.c's
#              scatterlist), at most capacity blocks of the largest order; QEMU discards every
#              block of it before it acknowledges (virtio_balloon_handle_report)
BALLOON_ARRAY_PFNS = 256

STRATEGY_KEYS = {
    # no hints: the host can only swap, oldest-resident first; host_batch: pages per swap-out
    "none": {"batch": 256, "host_batch": None},
    # virtio-balloon driven by a MOM-like policy (oVirt MOM balloon.rules)
    #   interval   seconds between policy evaluations (MOM: 10 s; scaled to the run length)
    #   threshold  host free fraction below which the host is under pressure (MOM: 0.20)
    #   change     largest balloon change per evaluation, fraction of guest memory (MOM: 0.05)
    #   idle_sched seconds between two schedulings of an idle guest: a request waits for it
    "balloon": dict(_HINTING, host_batch=BALLOON_ARRAY_PFNS, interval=0.5, threshold=0.20,
                    change=0.05, idle_sched=1.0),
    # Linux free page reporting (mm/page_reporting.c)
    #   order     smallest reported block order (pageblock order 9 = 2 MiB)
    #   capacity  blocks per report (the scatterlist), delay: seconds from a free to a pass
    "reporting": dict(_HINTING, order=9, capacity=32, delay=2.0),
    # s390 mainline: UNUSED only;  scan: proactive scan period, delay: seconds from a page's
    # UNUSED hint submission (dated by the guest, HintBuffer.unused_since_ns) to its discard
    "unused": dict(_HINTING, host_batch=HOST_BATCH, scan=0.1, delay=0.0),
    # full guest page hinting: UNUSED, VOLATILE, clean POT_VOLATILE
    "cmma": dict(_HINTING, host_batch=HOST_BATCH, scan=0.1, delay=0.5),
    # no hints, no gphint reclaim: a memory cgroup at the budget and the kernel's own swap
    "kernel": {},
}
STRATEGIES = tuple(STRATEGY_KEYS)

_CHOICES = {"submit": SUBMIT_MODES, "discard": ADVICES, "batch": BATCHES}
_INTS = {"batch", "host_batch", "order", "capacity"}
_BOUNDS = {"host_batch": (1, HOST_BATCH_MAX), "order": (0, 10), "capacity": (1, 1024),
           "delay": (0.0, 60.0), "scan": (0.001, 60.0),
           "interval": (0.01, 60.0), "threshold": (0.0, 1.0), "change": (0.001, 1.0),
           "idle_sched": (0.0, 60.0)}


@dataclass(frozen=True)
class StrategySpec:
    """A parsed strategy: its name and every parameter, defaults filled in."""

    name: str
    params: dict = field(default_factory=dict)

    def __getattr__(self, key):
        try:
            return self.__dict__["params"][key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def hints(self):
        """Which guest states this strategy's guests produce: the host may only act on those.
        none/reporting/balloon guests run without CMMA states (everything stays STABLE)."""
        return {"unused": "unused", "cmma": "full"}.get(self.name, "off")

    def host_side(self):
        """(host_batch, submit, advice): how the host submits what this strategy picks.  kernel
        has no keys: it submits nothing (the kernel reclaims), and any swap-out of the Host's
        goes in HOST_BATCH_UNKEYED pages."""
        p = self.params
        return (p.get("host_batch", HOST_BATCH_UNKEYED), p.get("submit", SUBMIT_MODES[-1]),
                p.get("discard", ADVICES[0]))

    def __str__(self):
        extra = ",".join("%s=%s" % kv for kv in sorted(self.params.items())
                         if _default(self.name, kv[0], self.params) != kv[1])
        return self.name + (":" + extra if extra else "")

    def to_dict(self):
        return {"name": self.name, "spec": str(self), "params": dict(self.params)}


HOST_BATCH_UNKEYED = 256


def _default(name, key, params):
    """A key's default; host_batch's, where the table has None, is the largest report for
    reporting (capacity blocks of the largest order) and the spec's own batch for none."""
    default = STRATEGY_KEYS[name][key]
    if key == "host_batch" and default is None:
        if name == "reporting":
            return params["capacity"] << MAX_ORDER
        return params["batch"]
    return default


def _value(name, key, text):
    default = STRATEGY_KEYS[name][key]
    what = "%s:%s" % (name, key)
    if key in _INTS:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError("%s=%r is not an integer" % (what, text)) from None
    elif isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError("%s=%r is not a number" % (what, text)) from None
    else:
        value = text
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError("%s=%r is not valid (expected one of %s)"
                          % (what, text, ", ".join(str(c) for c in _CHOICES[key])))
    if key in _BOUNDS:
        lo, hi = _BOUNDS[key]
        if not lo <= value <= hi:
            raise ConfigError("%s=%r is out of range [%s, %s]" % (what, text, lo, hi))
    return value


def parse_strategy(text):
    """StrategySpec from 'cmma', 'reporting:order=5,delay=0.5' or an existing StrategySpec."""
    if isinstance(text, StrategySpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("strategy %r is not a strategy spec (expected NAME[:key=value,...], "
                          "NAME one of %s)" % (text, ", ".join(STRATEGIES)))
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in STRATEGY_KEYS:
        raise ConfigError("unknown strategy %r (expected one of %s)" % (name, ", ".join(STRATEGIES)))
    params = defaults(name)
    given = set()
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError("strategy option %r in %r is not key=value" % (item, text))
        if key not in params:
            raise ConfigError("unknown key %r for strategy %s (valid keys: %s)"
                              % (key, name, ", ".join(sorted(STRATEGY_KEYS[name]))))
        params[key] = _value(name, key, val.strip())
        given.add(key)
    if "host_batch" in params and "host_batch" not in given:
        params["host_batch"] = _default(name, "host_batch", params)
    return StrategySpec(name, params)


def defaults(name):
    """Every key of strategy `name` with its default (host_batch: as _default says where the
    table has None)."""
    params = dict(STRATEGY_KEYS[name])
    if "host_batch" in params:
        params["host_batch"] = _default(name, "host_batch", params)
    return params


def parse_strategies(text):
    """A comma-separated list where each item may carry options: 'none,cmma:batch=1,reporting'.
    A comma followed by key=value continues the previous item's options."""
    if isinstance(text, (list, tuple)):
        return [parse_strategy(t) for t in text]
    items = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and items:
            items[-1] += "," + part
        else:
            items.append(part)
    if not items:
        raise ConfigError("no strategies given (expected a list like none,cmma; valid: %s)"
                          % ", ".join(STRATEGIES))
    return [parse_strategy(t) for t in items]


def share(counts, need):
    """Split `need` pages over guests in proportion to what each can give (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= need:
        return counts
    quota = counts * need // total
    rest = need - int(quota.sum())
    order = np.argsort(-(counts * need % total), kind="stable")
    quota[order[:rest]] += 1
    return np.minimum(quota, counts)


# --- the registry: strategy name -> the class that runs it -------------------------------------
STRATEGY_CLASSES = {}


def registers(name):
    """Class decorator: the strategy class that runs specs named `name`."""
    if name not in STRATEGY_KEYS:
        raise ValueError("no spec keys for strategy %r" % name)

    def register(cls):
        STRATEGY_CLASSES[name] = cls
        return cls
    return register


def make_strategy(spec, host, submission):
    """The strategy object for a parsed spec (gphint.host.host imports every strategy module,
    so each has registered its class by then)."""
    return STRATEGY_CLASSES[spec.name](spec, host, submission)
