"""Witnesses of the whole machine, sampled during a run: what the host (not the process) saw.

A process's RSS says what it maps; the machine gets memory back only if the kernel's own
counters agree.  A `Witness` thread samples, every `interval_s`:
  - the run's memory cgroup (usage, anon, file, swap, major faults: memory.stat);
  - /proc/meminfo MemAvailable and /proc/vmstat pswpin/pswpout/pgmajfault (machine-wide);
  - the page cache held for the guests' backing files and for the swap file: cachestat(2)
    (Linux >= 6.5, syscall 451 on every architecture: it was added after the unified table),
    else mincore(2) over a read-only mapping of the file;
  - PSI /proc/pressure/memory `some total` (microseconds stalled), where the kernel has it;
and integrates the footprint (host memory x time, MiB.s, as HyperAlloc reports GiB.min): the
cgroup's usage when the run has one, else the process's RSS.
"""
import ctypes
import mmap
import os
import threading
import time

import numpy as np

SYS_CACHESTAT = 451
PAGE_SIZE = mmap.PAGESIZE
MiB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


def cachestat_pages(fd):
    """Pages of the file behind fd in the page cache (cachestat(2)), or None if the kernel has
    no cachestat."""
    rng, cs = _Range(0, 0), _Cachestat()    # len 0: to the end of the file
    rc = _libc.syscall(ctypes.c_long(SYS_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng),
                       ctypes.byref(cs), ctypes.c_uint(0))
    if rc != 0:
        return None
    return int(cs.nr_cache)


def mincore_pages(fd):
    """Pages of the file behind fd in the page cache, by mincore(2) over a shared read-only
    mapping (mapping a file does not read it)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    addr = _libc.mmap(None, ctypes.c_size_t(size), mmap.PROT_READ, mmap.MAP_SHARED, fd, ctypes.c_long(0))
    if addr in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        vec = (ctypes.c_ubyte * -(-size // PAGE_SIZE))()
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            return None
        return int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1))
    finally:
        _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))


def has_cachestat():
    """Does the kernel offer cachestat(2)?  Asked of a temporary file of our own: any file this
    process may open will do, and the interpreter's binary may not be one (an unprivileged
    user running a root-installed Python, or a process that changed its uid)."""
    import tempfile
    try:
        with tempfile.TemporaryFile() as f:
            return cachestat_pages(f.fileno()) is not None
    except OSError:
        return False


def cached_bytes(fd, use_cachestat=True):
    n = cachestat_pages(fd) if use_cachestat else None
    if n is None:
        n = mincore_pages(fd)
    return 0 if n is None else n * PAGE_SIZE


def each_file(paths, fn):
    """Sum of fn(fd) over the files that can be opened (a file gone meanwhile counts 0)."""
    total = 0
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            total += fn(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    return total


def cached_bytes_of_paths(paths, use_cachestat=True):
    return each_file(paths, lambda fd: cached_bytes(fd, use_cachestat))


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def vmstat(names=("pswpin", "pswpout", "pgmajfault")):
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in names:
                out[k] = int(v)
    return out


def psi_memory_some_us():
    """`some total` of /proc/pressure/memory (microseconds), None where the kernel has no PSI."""
    try:
        with open("/proc/pressure/memory") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


class Witness:
    """Witness(cgroup=None, backing_paths=callable, swap_fds=callable, swap_paths=callable,
    on_sample=callable(cgroup sample)).
    start() samples in a thread until stop(); summary() gives the record's `host` fields."""

    def __init__(self, cgroup=None, backing_paths=None, swap_fds=None, swap_paths=None,
                 interval_s=0.1, files_interval_s=0.5, on_sample=None):
        self.cgroup = cgroup
        self.on_sample = on_sample      # called with each cgroup sample (the witness's thread)
        self.backing_paths = backing_paths or (lambda: [])
        self.swap_fds = swap_fds or (lambda: [])
        self.swap_paths = swap_paths or (lambda: [])
        self.interval_s = float(interval_s)
        self.files_interval_s = float(files_interval_s)
        self.use_cachestat = has_cachestat()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.error = None
        self.nsamples = 0
        self.usage = []          # (t, bytes)
        self.peak = {"usage": 0, "anon": 0, "file": 0, "swap": 0, "swap_cached": 0, "backing_cached": 0}
        self.mem_available_min = None
        self.footprint_byte_s = 0.0
        self._last_swap = None
        self.swap_growth_bytes = 0      # sum of the increases of the cgroup's swap between samples

    # --- sampling ------------------------------------------------------------------------------
    def _counters(self):
        c = {"vm": vmstat(), "psi": psi_memory_some_us(), "t": time.monotonic()}
        if self.cgroup is not None:
            c["cg"] = self.cgroup.sample()
        return c

    def _sample_files(self):
        swap = 0
        for fd in self.swap_fds():
            try:
                swap += cached_bytes(fd, self.use_cachestat)
            except OSError:
                pass
        swap += cached_bytes_of_paths(self.swap_paths(), self.use_cachestat)
        backing = cached_bytes_of_paths(self.backing_paths(), self.use_cachestat)
        with self._lock:
            self.peak["swap_cached"] = max(self.peak["swap_cached"], swap)
            self.peak["backing_cached"] = max(self.peak["backing_cached"], backing)

    def sample(self, files=True):
        now = time.monotonic()
        avail = meminfo().get("MemAvailable", 0)
        if self.cgroup is not None:
            cg = self.cgroup.sample()
            used = cg["usage_bytes"]
        else:
            cg, used = None, _rss_bytes()
        with self._lock:
            if self.usage:
                t0, u0 = self.usage[-1]
                self.footprint_byte_s += (now - t0) * (u0 + used) / 2.0
            self.usage.append((now, used))
            self.nsamples += 1
            self.peak["usage"] = max(self.peak["usage"], used)
            if cg is not None:
                for k in ("anon", "file", "swap"):
                    self.peak[k] = max(self.peak[k], cg[k + "_bytes"])
                if self._last_swap is not None and cg["swap_bytes"] > self._last_swap:
                    self.swap_growth_bytes += cg["swap_bytes"] - self._last_swap
                self._last_swap = cg["swap_bytes"]
            self.mem_available_min = avail if self.mem_available_min is None else min(self.mem_available_min, avail)
        if cg is not None and self.on_sample is not None:
            self.on_sample(cg)
        if files:
            self._sample_files()

    def start(self):
        self.start_counters = self._counters()
        self.mem_available_start = meminfo().get("MemAvailable", 0)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gphint-witness", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        next_files = time.monotonic() + self.files_interval_s
        try:
            while not self._stop.wait(self.interval_s):
                now = time.monotonic()
                self.sample(files=now >= next_files)
                if now >= next_files:
                    next_files = now + self.files_interval_s
        except BaseException as e:     # reported in summary(); a witness never kills the run
            self.error = "%s: %s" % (type(e).__name__, e)

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
            self.end_counters = self._counters()
            self.mem_available_end = meminfo().get("MemAvailable", 0)

    # --- the record --------------------------------------------------------------------------------
    def summary(self):
        a, b = self.start_counters, self.end_counters
        span = b["t"] - a["t"]
        times = np.array([t for t, _ in self.usage]) if self.usage else np.zeros(1)
        cg_a, cg_b = a.get("cg"), b.get("cg")

        def vm(name):
            return (b["vm"].get(name, 0) - a["vm"].get(name, 0))

        def cg_delta(name):
            if cg_a is None or cg_a.get(name) is None or cg_b.get(name) is None:
                return None
            return cg_b[name] - cg_a[name]

        avg = (self.footprint_byte_s / (times[-1] - times[0])) if times[-1] > times[0] else \
            float(self.usage[-1][1] if self.usage else 0)
        psi = None if a["psi"] is None or b["psi"] is None else b["psi"] - a["psi"]
        cg_out, cg_in = cg_delta("pswpout"), cg_delta("pswpin")
        if cg_out is not None:          # v2: the kernel counts the cgroup's swap traffic
            swap_out, swap_in, source = cg_out * PAGE_SIZE, cg_in * PAGE_SIZE, "cgroup"
        elif self.cgroup is not None:
            # v1 counts no swap traffic per cgroup, and the machine's counters include whoever
            # else swapped meanwhile (the swap area is the machine's): out = the growth of the
            # cgroup's swap between samples (a lower bound); in = the smaller of two upper
            # bounds, the machine's swap-ins and the cgroup's major faults
            swap_out = self.swap_growth_bytes
            swap_in = min(vm("pswpin"), cg_delta("pgmajfault") or 0) * PAGE_SIZE
            source = "cgroup_v1_bounds"
        else:
            swap_out, swap_in, source = vm("pswpout") * PAGE_SIZE, vm("pswpin") * PAGE_SIZE, "vmstat"
        return {
            "cgroup_peak_bytes": self.peak["usage"] if self.cgroup is not None else None,
            "cgroup_avg_bytes": int(avg) if self.cgroup is not None else None,
            "cgroup_anon_peak_bytes": self.peak["anon"] if self.cgroup is not None else None,
            "cgroup_file_peak_bytes": self.peak["file"] if self.cgroup is not None else None,
            "cgroup_swap_peak_bytes": self.peak["swap"] if self.cgroup is not None else None,
            "cgroup_kernel_max_usage_bytes": self.cgroup.max_usage_bytes() if self.cgroup is not None else None,
            "cgroup_major_faults": cg_delta("pgmajfault"),
            "cgroup_oom_kills": cg_delta("oom_kills"),
            "kernel_swap_out_bytes": int(swap_out),
            "kernel_swap_in_bytes": int(swap_in),
            "kernel_swap_source": source,
            "machine_swap_out_bytes": vm("pswpout") * PAGE_SIZE,
            "machine_swap_in_bytes": vm("pswpin") * PAGE_SIZE,
            "machine_major_faults": vm("pgmajfault"),
            "swap_file_cached_peak_bytes": self.peak["swap_cached"],
            "backing_cached_peak_bytes": self.peak["backing_cached"],
            "page_cache_witness": "cachestat" if self.use_cachestat else "mincore",
            "mem_available_start_bytes": self.mem_available_start,
            "mem_available_min_bytes": self.mem_available_min,
            "mem_available_end_bytes": self.mem_available_end,
            "footprint_mib_s": round(self.footprint_byte_s / MiB, 3),
            "footprint_source": "cgroup" if self.cgroup is not None else "process_rss",
            "psi_memory_some_us": psi,
            "witness_samples": self.nsamples,
            "witness_span_s": round(span, 3),
            "witness_error": self.error,
        }
