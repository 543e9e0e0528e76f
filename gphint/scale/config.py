"""What a scale run is: the fleet sizes, the strategies, and the fleet every guest belongs to.

A fleet is N guests of `guest_mem_bytes`, mostly idle and a few busy (`busy_guests`), each
with a resident set like a guest's after a long uptime (page cache, anonymous memory, memory a
finished job freed, a little never touched: `RESIDENT_SET`), and the host must take back
`take` of the fleet's memory.  Every option a user passes is checked here, with one line
naming the bad value (the CLI prints it and exits 2).
"""
import dataclasses

from ..errors import ConfigError
from ..host.spec import parse_strategies
from ..units import parse_size

SCALE_STRATEGIES = ("none", "balloon", "reporting", "unused", "cmma")
DEFAULT_GUESTS = (8, 32, 128, 512)
MAX_GUESTS = 4096
# shares of a guest's usable frames after its workload ended: what the host finds resident
RESIDENT_SET = {"cache": 0.35, "anon": 0.30, "freed": 0.25}      # the rest was never touched
MIN_GUEST_MEM_BYTES = 4 << 20
COLD_FRACTION = 0.25         # of each idle guest's STABLE resident frames, host-swapped before
BUSY_SHARE = 1 / 16          # busy guests: one in 16, at least one


def parse_guests(text):
    """'8,32,128' -> [8, 32, 128]; a 0, a non-number or an empty list is one ConfigError line."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t.strip() for t in str(text).split(",")]
    if not items or items == [""]:
        raise ConfigError("--guests needs a comma-separated list of guest counts, got %r" % (text,))
    out = []
    for item in items:
        try:
            n = int(item)
        except (TypeError, ValueError):
            raise ConfigError("--guests: %r is not a number (expected counts like 8,32,128)" % (item,)) from None
        if isinstance(item, float) or not 1 <= n <= MAX_GUESTS:
            raise ConfigError("--guests: %r is not a guest count in [1, %d]" % (item, MAX_GUESTS))
        out.append(n)
    return out


def parse_take(text):
    try:
        take = float(text)
    except (TypeError, ValueError):
        raise ConfigError("--take %r is not a number (expected a fraction in (0, 1))" % (text,)) from None
    if not 0 < take < 1:
        raise ConfigError("--take %r is outside (0, 1): it is the fraction of the fleet's memory "
                          "the host takes back" % (text,))
    return take


def scale_strategies(text):
    specs = parse_strategies(text)
    for s in specs:
        if s.name not in SCALE_STRATEGIES:
            raise ConfigError("strategy %r is not a scale strategy (expected some of %s)"
                              % (s.name, ", ".join(SCALE_STRATEGIES)))
    return specs


@dataclasses.dataclass
class ScaleConfig:
    """One fleet shape; `guests` is a single N inside a child, the list in the parent."""

    guests: list = dataclasses.field(default_factory=lambda: list(DEFAULT_GUESTS))
    strategies: list = dataclasses.field(default_factory=lambda: list(SCALE_STRATEGIES))
    guest_mem_bytes: int = 16 << 20
    take: float = 0.25
    seed: int = 1
    busy_share: float = BUSY_SHARE
    cold_fraction: float = COLD_FRACTION
    tick_s: float = 1.0              # an idle guest's timer period
    settle_s: float = 0.5            # after the stall window ends, how long ops are still timed
    timeout_s: float = 120.0         # the host gives up on its mechanism and swaps after this

    def validate(self):
        self.guests = parse_guests(self.guests)
        self.strategies = [str(s) for s in scale_strategies(self.strategies)]
        self.guest_mem_bytes = parse_size(self.guest_mem_bytes, "--guest-mem")
        if self.guest_mem_bytes < MIN_GUEST_MEM_BYTES:
            raise ConfigError("--guest-mem %d bytes is too small for a scale guest (at least 4 MiB)"
                              % self.guest_mem_bytes)
        self.take = parse_take(self.take)
        self.check_fits_machine()
        from ..guest.guest_stores import check_fd_limit
        check_fd_limit(max(self.guests))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 62:
            raise ConfigError("--seed must be an integer in [0, 2**62), got %r" % (self.seed,))
        return self

    def check_fits_machine(self, meminfo=None):
        """The largest fleet must fit in the memory available now: its guests touch most of
        what they have before the host takes anything back."""
        from ..experiment import meminfo_bytes
        mi = meminfo or meminfo_bytes()
        need = max(self.guests) * self.guest_mem_bytes
        avail = mi.get("MemAvailable", mi["MemTotal"])
        if need > avail:
            raise ConfigError("--guests %d x --guest-mem %d MiB = %d MiB exceeds the memory available "
                              "on this machine (MemAvailable %d MiB): fewer or smaller guests"
                              % (max(self.guests), self.guest_mem_bytes >> 20, need >> 20, avail >> 20))

    def busy_guests(self, n):
        return max(1, int(n * self.busy_share))

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["resident_set"] = dict(RESIDENT_SET)
        return d
