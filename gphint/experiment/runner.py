"""Runner: one strategy, one config, in this process -> one results record.

`run_one(config, strategy)` sets the guests, the host and the real host up (gphint.host.realhost),
runs the workload loop with direct reclaim after each guest's quantum, and returns the record
whose fields docs/results.md documents.
"""
import errno
import os
import tempfile
import threading
import time

import numpy as np

from .. import measure, tmpfiles
from ..host import Host, HostThreadDied, parse_strategy
from ..host.hostswap import fault_service_available
from ..memory import PAGE_SIZE, discard_counters
from ..units import fmt_bytes
from .results import write_json
from .stop import STOP, Stopped

STATUS_INTERVAL_S = 0.5


def _process_cpu_s():
    t = os.times()
    return t.user + t.system


class Runner:
    """One strategy, one config, in this process."""

    def __init__(self, config, strategy, progress=None):
        from ..host import guests as guest_api
        self.config = config.validate()
        self.spec = parse_strategy(strategy)
        self.progress = progress
        self.api = guest_api
        self.svc = None
        self.guests = []
        self.host = None

    def setup(self):
        cfg = self.config
        from ..guest.guest_stores import check_fd_limit
        check_fd_limit(cfg.guests)  # the open-file limit now, not EMFILE half-way
        tmpfiles.sweep()            # what killed runs left in the temp dir
        self.rss_baseline_bytes = measure.rss_bytes()
        self.realhost = _real_host(cfg, self.spec)
        if fault_service_available()[0]:
            self.svc = self.api.fault_service(locking=cfg.locking)
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
            "discard_list": self.api.discard_list_stats(self.guests, self.svc),
            "mappings": self.api.mapping_stats(self.guests),
            "thp": self.api.thp_stats(self.guests),
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
    from ..host.realhost import RealHost
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
    except HostThreadDied as e:
        # the same full TMPDIR, met first by the host thread's swap-out rather than by this
        # thread's own write: which one meets it depends on timing, the place named must not
        cause = e.__cause__
        explained = explain_full_tmpdir(cause) if isinstance(cause, OSError) else cause
        if explained is cause:
            raise
        raise HostThreadDied("the host thread died: %s" % explained) from e
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
