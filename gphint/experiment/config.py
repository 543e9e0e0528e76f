"""RunConfig: every option of a run, resolved and checked against this machine."""
import dataclasses
import os
import tempfile

import numpy as np

from ..errors import ConfigError
from ..guest.files import DEFAULT_FILE_BYTES
from ..units import fmt_bytes

MAX_SEED = (1 << 63) - 1
# the workloads allocate up to 64 pages (256 KiB) at once and the guest keeps a low watermark
# free: below 1 MiB a guest cannot boot every workload
MIN_GUEST_MEM_BYTES = 1 << 20


@dataclasses.dataclass
class RunConfig:
    """Every option of a run, resolved (sizes in bytes).  host_mem_bytes None = proactive."""

    workload: str = "mixed"
    guests: int = 4
    guest_mem_bytes: int = 64 << 20
    host_mem_bytes: int = None
    duration_s: float = 10.0        # workload time; with ops_per_guest: only a cap
    ops_per_guest: int = None       # each busy guest runs this many operations, then stops
    seed: int = 1
    files: str = None
    discard_mode: str = "transparent"
    nops: int = 64                  # guest operations per scheduling of a guest
    idle_sched_s: float = 1.0       # an idle guest is scheduled at most this often
    interval_s: float = 0.02        # host reclaim loop period
    sample_interval_s: float = 0.1  # timeline sampling period
    probe: bool = True              # proactive mode: measure free -> host RSS drop
    probe_bytes: int = 16 << 20
    probe_timeout_s: float = None   # None: max(3 s, 1.5 x the strategy's delay + 1.5 s)
    status_path: str = None         # live per-guest snapshot for scripts/watch.py
    cache: str = "none"             # guest disks: "none" (O_DIRECT reads) or "host" (page cache)
    cgroup: bool = True             # under a budget: run in a memory cgroup at budget + baseline
    guest_thp: bool = False         # guests with transparent huge pages (gphint.guest.thp)
    locking: str = "holdbits"       # the fault service's holds: "holdbits" or "hashed" (gphint.faults)
    minor_fault: str = "lazy"       # "lazy" (patch 7: no state change on minor faults, munmap) or "eager"
    discard_list_batch: int = None  # None: the guest's DISCARD_LIST_BATCH (patch 8's batch, step())

    @property
    def mode(self):
        return "proactive" if self.host_mem_bytes is None else "pressure"

    def validate(self):
        from ..host.guests import workload_list, workload_names
        names = workload_names()
        listed = workload_list(self.workload) if self.workload != "mixed" else ["mixed"]
        bad = [w for w in listed if w not in names] or ([] if listed else [self.workload])
        if bad:
            raise ConfigError("unknown workload %r (expected one of %s, or a comma-separated list "
                              "dealt out to the guests in turn)" % (bad[0], ", ".join(names)))
        if self.guests < 1:
            raise ConfigError("--guests must be >= 1, got %d" % self.guests)
        if not self.duration_s > 0:
            raise ConfigError("--duration must be > 0 seconds, got %r" % self.duration_s)
        if self.ops_per_guest is not None and self.ops_per_guest < 1:
            raise ConfigError("--ops must be >= 1, got %r" % self.ops_per_guest)
        if self.files is not None and not os.path.isdir(self.files):
            raise ConfigError("--files %r is not a directory" % self.files)
        from ..host.cachemode import MODES
        if self.cache not in MODES:
            raise ConfigError("--cache %r is not valid (expected one of %s)" % (self.cache, ", ".join(MODES)))
        if self.host_mem_bytes is not None and self.host_mem_bytes < 4 * (2 << 20):
            raise ConfigError("--host-mem %d bytes is too small (at least 8 MiB)" % self.host_mem_bytes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or \
                not 0 <= self.seed <= MAX_SEED - self.guests:
            # guest i is seeded seed + i, hashed as a 64-bit integer (guest.content)
            raise ConfigError("--seed must be an integer in [0, 2**63 - guests], got %r" % (self.seed,))
        if self.probe_timeout_s is not None and not 0 < self.probe_timeout_s < float("inf"):
            raise ConfigError("--probe-timeout must be > 0 seconds, got %r" % self.probe_timeout_s)
        from ..faults import LOCKINGS
        if self.locking not in LOCKINGS:
            raise ConfigError("--locking %r is not valid (expected one of %s)"
                              % (self.locking, ", ".join(LOCKINGS)))
        from ..guest.mappings import MINOR_FAULT_MODES
        if self.minor_fault not in MINOR_FAULT_MODES:
            raise ConfigError("--minor-fault %r is not valid (expected one of %s)"
                              % (self.minor_fault, ", ".join(MINOR_FAULT_MODES)))
        if self.discard_list_batch is not None and (
                isinstance(self.discard_list_batch, bool) or not isinstance(self.discard_list_batch, int)
                or not 1 <= self.discard_list_batch <= 1 << 30):
            raise ConfigError("--discard-list-batch must be an integer in [1, 2**30], got %r"
                              % (self.discard_list_batch,))
        if self.guest_mem_bytes < MIN_GUEST_MEM_BYTES:
            raise ConfigError("--guest-mem %s is too small: a guest needs at least %s"
                              % (fmt_bytes(self.guest_mem_bytes), fmt_bytes(MIN_GUEST_MEM_BYTES)))
        self.check_fits_machine()
        return self

    def check_fits_machine(self, meminfo=None, tmpdir=None):
        """Refuse sizes this machine cannot hold, before anything is allocated or written: the
        guests' memory against RAM, and the generated file set against TMPDIR's free space."""
        mi = meminfo or meminfo_bytes()
        total = mi["MemTotal"] + mi.get("SwapTotal", 0)
        if self.guest_mem_bytes > total:
            # one anonymous mapping larger than RAM + swap: refused by mmap under the kernel's
            # heuristic overcommit (mm/util.c __vm_enough_memory), and never usable anyway
            raise ConfigError("--guest-mem %s exceeds this machine's memory (MemTotal + SwapTotal = "
                              "%s)" % (fmt_bytes(self.guest_mem_bytes), fmt_bytes(total)))
        need = self.guests * self.guest_mem_bytes
        avail = mi.get("MemAvailable", mi["MemTotal"])
        if self.host_mem_bytes is None and need > avail:
            # proactive mode: guests fill their memory (page cache), nothing caps their RSS
            raise ConfigError("--guests %d x --guest-mem %s = %s exceeds the memory available on "
                              "this machine (MemAvailable %s): give --host-mem, or fewer or smaller "
                              "guests" % (self.guests, fmt_bytes(self.guest_mem_bytes),
                                          fmt_bytes(need), fmt_bytes(avail)))
        if self.host_mem_bytes is not None and self.host_mem_bytes > avail:
            raise ConfigError("--host-mem %s exceeds the memory available on this machine "
                              "(MemAvailable %s)" % (fmt_bytes(self.host_mem_bytes), fmt_bytes(avail)))
        if self.files is None:
            tmpdir = tmpdir or tempfile.gettempdir()
            st = os.statvfs(tmpdir)
            free = st.f_bavail * st.f_frsize
            # host.guests.shared_files generates 2 x guest memory, the last file overshooting by
            # at most the largest generated file
            fileset = 2 * self.guest_mem_bytes + DEFAULT_FILE_BYTES[1]
            if fileset > free:
                raise ConfigError("the generated file set (2 x --guest-mem = %s) does not fit in "
                                  "TMPDIR=%s (%s free): pass --files DIR, a smaller --guest-mem, or "
                                  "set TMPDIR to a larger filesystem"
                                  % (fmt_bytes(fileset), tmpdir, fmt_bytes(free)))

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["mode"] = self.mode
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def cli_args(self):
        """The `gphint run` options that reproduce this config (used for child processes)."""
        args = ["--workload", self.workload, "--guests", str(self.guests),
                "--guest-mem", str(self.guest_mem_bytes), "--duration", repr(self.duration_s),
                "--seed", str(self.seed), "--nops", str(self.nops),
                "--idle-sched", repr(self.idle_sched_s), "--discard-mode", self.discard_mode,
                "--probe-mem", str(self.probe_bytes), "--cache", self.cache]
        if self.probe_timeout_s is not None:
            args += ["--probe-timeout", repr(self.probe_timeout_s)]
        if self.host_mem_bytes is not None:
            args += ["--host-mem", str(self.host_mem_bytes)]
        if self.files:
            args += ["--files", self.files]
        if not self.probe:
            args.append("--no-probe")
        if not self.cgroup:
            args.append("--no-cgroup")
        if self.guest_thp:
            args.append("--guest-thp")
        if self.locking != "holdbits":
            args += ["--locking", self.locking]
        if self.minor_fault != "lazy":
            args += ["--minor-fault", self.minor_fault]
        if self.discard_list_batch is not None:
            args += ["--discard-list-batch", str(self.discard_list_batch)]
        if self.status_path:
            args += ["--status", self.status_path]
        if self.ops_per_guest is not None:
            args += ["--ops", str(self.ops_per_guest)]
        return args


def meminfo_bytes(path="/proc/meminfo"):
    """{field: bytes} of /proc/meminfo (its kB are KiB)."""
    out = {}
    with open(path) as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out
