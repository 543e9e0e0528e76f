"""Strategy specs as users write them: `NAME:key=value,...`, e.g. `cmma:batch=32,submit=vectored`.

Each strategy names the keys it understands with their defaults; anything else is a
ConfigError that lists what is valid.  Parsing is pure policy: no memory is touched here.
"""
from dataclasses import dataclass, field

from ..errors import ConfigError

SUBMIT_MODES = ("per_page", "coalesce", "vectored")
ADVICES = ("dontneed", "free")
BATCHES = (1, 32, 256, 4096)

# Keys every strategy that hands pages to the host understands.
#   batch   pages per host submission (the fill -> submit -> drain cycle) and the guest's hint
#           buffer capacity; 1 is the unbatched original
#   submit  how a batch reaches the kernel: one madvise per page, one per run, or one
#           process_madvise per <= 1024 runs
#   discard MADV_DONTNEED (RSS drops now) or MADV_FREE (RSS drops only under kernel pressure)
_HINTING = {"batch": 32, "submit": "vectored", "discard": "dontneed"}

STRATEGY_KEYS = {
    # no hints: the host can only swap, oldest-resident first
    "none": {"batch": 256},
    # virtio-balloon driven by a MOM-like policy (oVirt MOM balloon.rules)
    #   interval   seconds between policy evaluations (MOM: 10 s; scaled to the run length)
    #   threshold  host free fraction below which the host is under pressure (MOM: 0.20)
    #   change     largest balloon change per evaluation, fraction of guest memory (MOM: 0.05)
    #   idle_sched seconds between two schedulings of an idle guest: a request waits for it
    "balloon": dict(_HINTING, interval=0.5, threshold=0.20, change=0.05, idle_sched=1.0),
    # Linux free page reporting (mm/page_reporting.c)
    #   order     smallest reported block order (pageblock order 9 = 2 MiB)
    #   capacity  blocks per report (the scatterlist), delay: seconds from a free to a pass
    "reporting": dict(_HINTING, order=9, capacity=32, delay=2.0),
    # s390 mainline: UNUSED only;  scan: proactive scan period, delay: seconds from a page's
    # UNUSED hint submission (dated by the guest, HintBuffer.unused_since_ns) to its discard
    "unused": dict(_HINTING, scan=0.1, delay=0.0),
    # full guest page hinting: UNUSED, VOLATILE, clean POT_VOLATILE
    "cmma": dict(_HINTING, scan=0.1, delay=0.0),
    # no hints, no gphint reclaim: a memory cgroup at the budget and the kernel's own swap
    "kernel": {},
}
STRATEGIES = tuple(STRATEGY_KEYS)

_CHOICES = {"submit": SUBMIT_MODES, "discard": ADVICES, "batch": BATCHES}
_INTS = {"batch", "order", "capacity"}
_BOUNDS = {"order": (0, 10), "capacity": (1, 1024), "delay": (0.0, 60.0), "scan": (0.001, 60.0),
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

    def __str__(self):
        extra = ",".join("%s=%s" % kv for kv in sorted(self.params.items())
                         if STRATEGY_KEYS[self.name][kv[0]] != kv[1])
        return self.name + (":" + extra if extra else "")

    def to_dict(self):
        return {"name": self.name, "spec": str(self), "params": dict(self.params)}


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
    params = dict(STRATEGY_KEYS[name])
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError("strategy option %r in %r is not key=value" % (item, text))
        if key not in params:
            raise ConfigError("unknown key %r for strategy %s (valid keys: %s)"
                              % (key, name, ", ".join(sorted(STRATEGY_KEYS[name]))))
        params[key] = _value(name, key, val.strip())
    return StrategySpec(name, params)


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
