"""Experiments: guests + a host + a strategy, run for a while -> one results record (JSON).

`run_one(config, strategy)` runs in this process; `compare(config, strategies)` runs each
strategy in a fresh child process (`gphint run ... --json tmp` on this very package, dying with
its parent: child_command) so that every RSS baseline starts clean and one strategy's leftovers
(page cache, allocator arenas) cannot be charged to the next.  The record's fields are the
contract documented in docs/results.md.
"""
import dataclasses
import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

from . import caps, childproc, measure, outputs, tmpfiles
from ._version import __version__
from .errors import ConfigError
from .host import Host, parse_strategy
from .host.hostswap import fault_service_available
from .guest.files import DEFAULT_FILE_BYTES
from .memory import PAGE_SIZE, discard_counters
from .units import fmt_bytes

SCHEMA_VERSION = 1
# Set (by the CLI's SIGTERM handler) to end a run early: the runner stops at its next step, from
# a consistent state, and cleans up.  An exception raised from the signal handler itself could
# land anywhere -- inside a finalizer that swallows it, or half-way through a page-state change.
STOP = threading.Event()


class Stopped(BaseException):
    """The run was told to stop (STOP); not an error of the run, so not an Exception."""

MAX_SEED = (1 << 63) - 1
# the workloads allocate up to 64 pages (256 KiB) at once and the guest keeps a low watermark
# free: below 1 MiB a guest cannot boot every workload
MIN_GUEST_MEM_BYTES = 1 << 20
STATUS_INTERVAL_S = 0.5


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

    @property
    def mode(self):
        return "proactive" if self.host_mem_bytes is None else "pressure"

    def validate(self):
        from .host.guests import workload_list, workload_names
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
        from .host.cachemode import MODES
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


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment():
    """What a reader needs to trust (or reproduce) the numbers."""
    c = caps.probe()
    return {"kernel": c.kernel, "machine": c.machine, "python": platform.python_version(),
            "gphint_version": __version__, "git_commit": git_commit(), "mechanism": c.mechanism,
            "cpu_count": os.cpu_count(), "page_size": c.page_size, "thp_mode": c.thp_mode,
            "mem_total_bytes": psutil.virtual_memory().total,
            "capabilities": {n: f.available for n, f in c.features.items()},
            "fault_service": fault_service_available()[0]}


def _process_cpu_s():
    t = os.times()
    return t.user + t.system


class Runner:
    """One strategy, one config, in this process."""

    def __init__(self, config, strategy, progress=None):
        from .host import guests as guest_api
        self.config = config.validate()
        self.spec = parse_strategy(strategy)
        self.progress = progress
        self.api = guest_api
        self.svc = None
        self.guests = []
        self.host = None

    def setup(self):
        cfg = self.config
        tmpfiles.sweep()            # what killed runs left in the temp dir
        self.rss_baseline_bytes = measure.rss_bytes()
        self.realhost = _real_host(cfg, self.spec)
        if fault_service_available()[0]:
            self.svc = self.api.fault_service()
        self.fileset = self.api.shared_files(cfg)
        self.realhost.before_guests(self.fileset)
        self.guests = [self.api.make_guest(i, cfg, self.spec, self.svc, self.fileset)
                       for i in range(cfg.guests)]
        self.host = Host(self.guests, _host_budget(cfg, self.spec), self.spec, fault_service=self.svc,
                         interval_s=cfg.interval_s, sample_interval_s=cfg.sample_interval_s)
        self.realhost.set_budget(self.host)

    def _busy(self, g):
        """Has this guest work left?  Idle guests never do; with ops_per_guest, a guest that
        did its share is idle from then on."""
        target = self.config.ops_per_guest
        return not self.api.is_idle(g) and (target is None or self.ops_by_guest[id(g)] < target)

    def _schedule(self, g, now, last):
        """Run one guest for `nops` operations, if it is its turn; returns ops done.
        A guest without work is scheduled at most every idle_sched_s (it sleeps)."""
        if not self._busy(g) and now - last.get(id(g), -1e9) < self.config.idle_sched_s:
            return 0
        last[id(g)] = now
        host = self.host
        with host.lock:
            host.on_scheduled(g)
            ops = self.api.step(g, self.config.nops)
        if host.over_budget():
            host.step()     # direct reclaim: the guest waits for the host, as in the kernel
        self.ops_by_guest[id(g)] += ops
        return ops

    def run(self):
        cfg, host = self.config, self.host
        me = threading.get_ident()
        cpu0, thread0, wall0 = _process_cpu_s(), time.thread_time(), time.monotonic()
        host.record(force=True)
        self.realhost.start(host, self.fileset)
        host.start()
        ops, last = 0, {}
        self.ops_by_guest = {id(g): 0 for g in self.guests}
        counted = [g for g in self.guests if not self.api.is_idle(g)] or self.guests
        next_status = wall0
        end = wall0 + cfg.duration_s
        self.finished_by = "duration"
        try:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if STOP.is_set():
                    raise Stopped()
                if cfg.ops_per_guest is not None and not any(self._busy(g) for g in counted):
                    self.finished_by = "ops"
                    break
                with host.lock:
                    host.guest_timers()      # guest timers fire whether or not a guest runs
                for g in self.guests:
                    ops += self._schedule(g, now, last)
                if self.progress:
                    self.progress(self._fraction(now - wall0, counted))
                if cfg.status_path and now >= next_status:
                    next_status = now + STATUS_INTERVAL_S
                    self.write_status(now - wall0)
                if not any(self._busy(g) for g in self.guests):
                    time.sleep(0.005)
            wall_s = time.monotonic() - wall0
            probe = self.probe() if cfg.probe and cfg.mode == "proactive" else None
        finally:
            host.stop()
            self.realhost.stop()
        host.sample()
        host.record(force=True)
        if cfg.status_path:
            self.write_status(time.monotonic() - wall0, done=True)
        guest_thread_s = time.thread_time() - thread0 - host.cpu_s_by_thread.get(me, 0.0)
        guest_thread_s += host.guest_timer_cpu_s     # guest timers the host thread fired
        process_s = _process_cpu_s() - cpu0
        return self.record(ops, wall_s, guest_thread_s, process_s, probe)

    def _fraction(self, elapsed_s, counted):
        """How far the run is, 0..1: by time, or by the slowest busy guest's ops."""
        f = elapsed_s / self.config.duration_s
        if self.config.ops_per_guest is not None:
            f = max(f, min(self.ops_by_guest[id(g)] for g in counted) / self.config.ops_per_guest)
        return min(f, 1.0)

    # --- proactive-mode headline: time from a guest's free to the host's RSS drop ----------------
    def probe(self):
        """A guest frees memory it wrote; how long until the host's residency shows it gone?
        Once as one contiguous run (>= 2 MiB blocks) and once fragmented (64 KiB pieces)."""
        out = {}
        g = self.guests[0]
        npages = min(self.config.probe_bytes // PAGE_SIZE, g.mem.npages // 4)
        timeout_s = self.config.probe_timeout_s
        if timeout_s is None:
            timeout_s = max(3.0, 1.5 + float(self.spec.params.get("delay", 0.0)) * 1.5)
        for pattern in ("contiguous", "fragmented"):
            with self.host.lock:
                frames = self.api.probe_alloc(g, npages)
            if pattern == "fragmented":
                # free every other 16-page (64 KiB) piece: no freed run reaches 2 MiB
                free_now = (np.arange(frames.size) // 16) % 2 == 0
            else:
                free_now = np.ones(frames.size, dtype=bool)
            freed = frames[free_now]
            # settle: the pages are resident and counted, and whatever the strategy had
            # pending from before (a reporting pass already due) has run
            self._idle(0.2 + float(self.spec.params.get("delay", 0.0)), g)
            t0 = time.monotonic()
            with self.host.lock:
                self.api.probe_free(g, freed)
            latency, gone = None, 0.0
            while freed.size and time.monotonic() - t0 < timeout_s:
                with self.host.lock:
                    self.host.guest_timers()
                    self.host.on_scheduled(g)
                gone = 1.0 - float(np.count_nonzero(g.mem.residency()[freed])) / freed.size
                if gone >= 0.9:
                    latency = time.monotonic() - t0
                    break
                time.sleep(0.01)
            out[pattern] = {"freed_bytes": int(freed.size * PAGE_SIZE),
                            "latency_s": None if latency is None else round(latency, 4),
                            "dropped_fraction": round(gone, 4), "timeout_s": timeout_s}
            with self.host.lock:
                if (~free_now).any():
                    self.api.probe_free(g, frames[~free_now])
        return out

    def write_status(self, t_s, done=False):
        """A snapshot for scripts/watch.py: per guest residency (mincore) and page states."""
        host = self.host
        guests = []
        for slot in host.slots:
            guests.append({"name": slot.name, "workload": getattr(slot.guest, "workload_name", None),
                           "size_bytes": slot.mem.size_bytes,
                           "resident_bytes": slot.mem.resident_pages() * PAGE_SIZE,
                           "census": slot.mem.census(), "discarded_pages": dict(slot.discarded),
                           "swapped_pages": dict(slot.swapped)})
        write_json(self.config.status_path, option="--status", doc={
            "strategy": str(self.spec), "mode": self.config.mode, "t_s": round(t_s, 2),
            "duration_s": self.config.duration_s, "budget_bytes": self.config.host_mem_bytes,
            "rss_bytes": measure.rss_bytes(), "host_swap_bytes": host.host_swap_bytes(),
            "done": done, "guests": guests})

    def _idle(self, seconds, g):
        """Let time pass with the guest's timers running but no workload."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.host.lock:
                self.host.guest_timers()
            time.sleep(0.01)

    def record(self, ops, wall_s, guest_cpu_s, process_cpu_s, probe):
        host = self.host
        hs = host.stats()
        svc = self.api.service_stats(self.svc)
        mems = [s.mem for s in host.slots]
        timeline = host.timeline
        touched = sum(s.residency.touched_npages for s in host.slots) * PAGE_SIZE
        resident_end = host.resident_npages * PAGE_SIZE
        discard = discard_counters(mems)          # resolves lazily freed pages: before census
        census = self.api.census(self.guests)      # before verify() reads every page back
        integrity = int(sum(self.api.verify(g) for g in self.guests))
        rec = {
            "strategy": str(self.spec), "strategy_name": self.spec.name,
            "params": dict(self.spec.params), "mode": self.config.mode,
            "budget_bytes": self.config.host_mem_bytes,
            "rss_baseline_bytes": self.rss_baseline_bytes,
            "rss_peak_bytes": max(t[1] for t in timeline),
            "rss_end_bytes": timeline[-1][1],
            "rss_anon_peak_bytes": max(t[4] for t in timeline),
            "rss_anon_end_bytes": timeline[-1][4],
            "guest_resident_peak_bytes": host.resident_peak_npages * PAGE_SIZE,
            "guest_resident_end_bytes": resident_end,
            "guest_touched_bytes": touched,
            "host_saved_bytes": max(0, touched - resident_end),
            "host_swap_out_bytes": hs["host_swap_out_bytes"],
            "host_swap_in_bytes": svc.get("swap_ins", 0) * PAGE_SIZE,
            "host_swap_out_pages": hs["host_swap_out_pages"],
            "discarded_pages": hs["discarded_pages"],
            "discarded_bytes": sum(hs["discarded_pages"].values()) * PAGE_SIZE,
            "discard_faults": svc.get("discard_faults", 0),
            "zero_fills": svc.get("zero_fills", 0),
            "file_reloads": svc.get("file_reloads", 0),
            "swap_ins": svc.get("swap_ins", 0),
            "fault_latency_p50_us": _us(svc.get("latency_p50_ns")),
            "fault_latency_p99_us": _us(svc.get("latency_p99_ns")),
            "hint_ops": int(sum(m.stats["hint_ops"] for m in mems)),
            **discard,   # discard_syscalls, discard_advised/resident_pages, lazy_* (docs/results.md)
            "guest_cpu_s": round(guest_cpu_s, 4),
            "host_cpu_s": round(max(0.0, process_cpu_s - guest_cpu_s), 4),
            "ops": int(ops), "wall_s": round(wall_s, 4), "finished_by": self.finished_by,
            "ops_per_s": round(ops / wall_s, 2) if wall_s > 0 else 0.0,
            "budget_overruns": hs["budget_overruns"],
            "host": dict({k: v for k, v in hs.items() if k not in ("discarded_pages",)},
                         **self.realhost.fields(host)),
            "proactive_probe": probe,
            "census_end": census,
            "integrity_errors": integrity,
            "timeline_fields": ["t_s", "rss_bytes", "guest_resident_bytes", "host_swap_bytes",
                                "rss_anon_bytes"],
            "timeline": timeline,
        }
        return rec

    def close(self):
        if getattr(self, "realhost", None) is not None:
            self.realhost.close()
        for g in self.guests:
            self.api.close(g)
        if self.host is not None:
            self.host.close()
        if self.svc is not None:
            self.svc.stop()
        if getattr(self, "fileset", None) is not None:
            self.fileset.close()


# --- the real host (gphint.host.realhost): the cgroup budget, machine witnesses, --cache ------
def _real_host(cfg, spec):
    from .host.realhost import RealHost
    return RealHost(cfg, spec)      # sets --cache for the run; close() restores it


def _host_budget(cfg, spec):
    """The budget gphint's own reclaim loop enforces: none for the kernel peer, whose budget
    is only its memory cgroup's limit (the kernel reclaims, gphint does not)."""
    return None if spec.name == "kernel" else cfg.host_mem_bytes


def _us(ns):
    return None if ns is None else round(ns / 1000.0, 2)


def run_one(config, strategy, progress=None):
    """Run one strategy in this process; returns its results record."""
    r = Runner(config, strategy, progress)
    try:
        r.setup()
        return r.run()
    except OSError as e:
        explained = explain_full_tmpdir(e)
        if explained is e:
            raise
        raise explained from e
    finally:
        r.close()


FULL_BELOW_BYTES = 1 << 20     # a filesystem with less free space than this counts as full


def explain_full_tmpdir(e, tmpdir=None):
    """A write error of the run's temporaries, with the place named: a run writes its generated
    files, the guests' swap files and the host swap into TMPDIR, and the bare errors name no
    path ("[Errno 28] No space left on device" from os.write, or from the host swap-out's
    pwrite in C)."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return e
    tmpdir = tmpdir or tempfile.gettempdir()
    try:
        st = os.statvfs(tmpdir)
    except OSError:
        return e
    free = st.f_bavail * st.f_frsize
    if free >= FULL_BELOW_BYTES:
        return e        # not this filesystem (ENOSPC is also what a full C table says)
    if getattr(e, "filename", None) is not None:
        return e
    what = e.strerror or os.strerror(e.errno)
    if "host swap" in str(e):
        what = "host swap write failed: " + what
    return OSError(e.errno,
                   "%s in TMPDIR=%s (%s free): a run writes its generated files, guest swap and "
                   "host swap there; free space there or set TMPDIR to a larger filesystem"
                   % (what, tmpdir, fmt_bytes(free)))


def results_document(config, records, env=None):
    return {"schema_version": SCHEMA_VERSION, "config": config.to_dict(),
            "env": env or environment(), "results": records}


def write_json(path, doc, option="--json"):
    """Write doc to a regular file (gphint.outputs: never into a FIFO or over a device)."""
    def dump(f):
        json.dump(doc, f, indent=1)
        f.write("\n")
    return outputs.write_atomically(path, dump, option)


def _child_fraction(config, elapsed_s):
    """Progress of a child by its elapsed time (what the parent can see), 0..1."""
    return min(elapsed_s / config.duration_s, 0.99)




def child_command(args):
    """argv that runs `gphint ARGS` in a child on this very gphint, as a child of this process
    (it dies with its parent: cli.child_main)."""
    return childproc.command("gphint.cli:child_main", ["--parent-pid", str(os.getpid())] + list(args))


def _child_record(spec, out, returncode, err):
    """The record of one child: its JSON when it wrote one (a run that found integrity errors
    exits 1 but its record is the evidence), else an error record with its last stderr line."""
    rec = None
    if os.path.exists(out):
        try:
            with open(out) as f:
                rec = json.load(f)["results"][0]
        except (OSError, ValueError, KeyError, IndexError):
            rec = None
    if rec is not None and (returncode == 0 or rec.get("integrity_errors")):
        return rec
    last = err.splitlines()[-1] if err else "exit status %d" % returncode
    return {"strategy": str(spec), "strategy_name": spec.name,
            "error": last.replace("gphint: error: ", "", 1)}


def compare(config, strategies, progress=None, debug=False):
    """Each strategy in a fresh child process; returns the list of records (an error record,
    with `error`, for a strategy that failed -- the others still run)."""
    config.validate()
    specs = [parse_strategy(s) for s in strategies]
    records = []
    tmpfiles.sweep()
    with tempfile.TemporaryDirectory(prefix=tmpfiles.prefix("compare")) as tmp:
        for i, spec in enumerate(specs):
            out = os.path.join(tmp, "%d.json" % i)
            cmd = child_command((["--debug"] if debug else []) +
                                ["run", "--strategy", str(spec), "--json", out, "--quiet"] +
                                config.cli_args())
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            while proc.poll() is None:
                if STOP.is_set():
                    proc.terminate()
                    proc.wait()
                    raise Stopped()
                if progress:
                    progress(i, spec, _child_fraction(config, time.monotonic() - t0))
                time.sleep(0.1)
            err = proc.stderr.read().strip()
            proc.stderr.close()
            records.append(_child_record(spec, out, proc.returncode, err))
            if progress:
                progress(i + 1, None, 0.0)
    return records
