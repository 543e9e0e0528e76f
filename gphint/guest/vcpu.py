"""A guest that runs like a vCPU: its own thread, halted when it has nothing to do.

An idle vCPU sleeps (HLT) until an interrupt or its timer; the host cannot run guest code, it
can only raise an interrupt and wait until the guest has run.  Vcpu gives a Guest exactly that:
one thread that waits on a condition variable, and wakes for

  * a request the host posted (`post`): balloon inflate or deflate -- the only calls into a
    guest the host makes; hinting strategies read page states and never post;
  * its own timer every `tick_s` (the guest's delayed work: free page reporting's work item);
  * its workload, continuously, when the guest is busy (each operation timed: the stall a
    guest sees while the host takes memory back is in these latencies).

A request is served only when the guest runs, by the guest's own balloon driver and buddy
allocator.  With `Guest(..., mem_map=True)` their per-page state lives in the guest's frames
(gphint.guest.memmap), so a guest whose frames the host swapped out takes real userfaultfd
faults (host swap-ins) before it can answer; `Request` records when it was posted, started
and answered, the guest CPU it cost, and the swap-ins the guest took while serving it.
"""
import collections
import threading
import time

import numpy as np

from ..errors import ConfigError
from .balloon import BalloonDriver

REQUEST_KINDS = ("inflate", "deflate")
MAX_LATENCIES = 1 << 20       # op latencies kept per vCPU (a busy guest's run is bounded by it)


class Request:
    """One request of the host to a guest, and what answering it cost."""

    __slots__ = ("kind", "npages", "t_posted", "t_started", "t_done", "cpu_s", "pages",
                 "swap_ins", "error", "done")

    def __init__(self, kind, npages):
        if kind not in REQUEST_KINDS:
            raise ConfigError("unknown guest request %r (expected one of %s)" % (kind, ", ".join(REQUEST_KINDS)))
        if isinstance(npages, bool) or not isinstance(npages, (int, np.integer)) or npages < 0:
            raise ConfigError("request npages must be an integer >= 0, got %r" % (npages,))
        self.kind, self.npages = kind, int(npages)
        self.t_posted = time.monotonic()
        self.t_started = self.t_done = None
        self.cpu_s = 0.0
        self.pages = np.zeros(0, dtype=np.int64)
        self.swap_ins = 0
        self.error = None
        self.done = threading.Event()

    @property
    def latency_s(self):
        """From the host's post to the guest's answer."""
        return None if self.t_done is None else self.t_done - self.t_posted

    def wait(self, timeout=None):
        return self.done.wait(timeout)


class Vcpu:
    """Vcpu(guest, busy=False, nops=1, tick_s=1.0, timer=None, device=None, fault_service=None).

    timer(now) runs in the guest thread every tick_s; device(pages) is the host's balloon
    device, called by the guest thread with the pages it inflated (the host discards them).
    fault_service, when given, counts the swap-ins the guest took while serving a request."""

    def __init__(self, guest, *, busy=False, nops=1, tick_s=1.0, timer=None, device=None,
                 fault_service=None, name=None):
        if not tick_s > 0:
            raise ConfigError("vcpu tick_s must be > 0 seconds, got %r" % (tick_s,))
        self.guest = guest
        self.name = name or getattr(guest, "name", None) or "vcpu"
        self.busy = bool(busy)
        self.nops = int(nops)
        self.tick_s = float(tick_s)
        self.timer = timer
        self.device = device
        self.fault_service = fault_service
        self.balloon = BalloonDriver(guest.allocator, getattr(guest, "reclaim", None))
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._stop = False
        self._thread = None
        self.error = None
        self.op_latencies_s = []
        self.served = []              # answered Requests, in order
        self.stats = {"wakeups": 0, "requests": 0, "timer_runs": 0, "ops": 0,
                      "serve_cpu_s": 0.0, "timer_cpu_s": 0.0, "work_cpu_s": 0.0, "swap_ins": 0}

    # --- the host's side --------------------------------------------------------------------
    def post(self, kind, npages):
        """Raise the guest's interrupt with a request; returns the Request (wait() on it)."""
        req = Request(kind, npages)
        with self._cv:
            if self._stop or self._thread is None:
                raise ConfigError("vcpu %s is not running: start() it before posting" % self.name)
            self._queue.append(req)
            self._cv.notify()
        return req

    def start(self):
        if self._thread is not None:
            return self
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="vcpu-%s" % self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop the thread (after what it is doing); re-raise what the guest died of."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    # --- the guest's side -------------------------------------------------------------------
    def _run(self):
        next_tick = time.monotonic() + self.tick_s
        try:
            while True:
                with self._cv:
                    # halted: until an interrupt (a request, stop) or the timer; a busy guest
                    # only looks for interrupts between its operations
                    while not (self._queue or self._stop or self.busy):
                        left = next_tick - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                    if self._stop:
                        return
                    reqs = list(self._queue)
                    self._queue.clear()
                self.stats["wakeups"] += 1
                for req in reqs:
                    self._serve(req)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.tick_s
                    self._run_timer(now)
                if self.busy:
                    self._work()
        except BaseException as e:     # reported by stop(), never silent
            self.error = e
            with self._cv:
                for req in self._queue:
                    req.error = e
                    req.done.set()
                self._queue.clear()

    def _swap_ins(self):
        svc = self.fault_service
        if svc is None:
            return 0
        return int(svc.stats(self.guest.mem).get("swap_ins", 0))

    def _serve(self, req):
        """The guest's balloon driver answers: it allocates (or frees) through its allocator,
        whose struct pages are in guest memory, and hands inflated pages to the device."""
        req.t_started = time.monotonic()
        cpu0, faults0 = time.thread_time(), self._swap_ins()
        try:
            if req.kind == "inflate":
                pages = np.sort(np.asarray(self.balloon.inflate(req.npages), dtype=np.int64))
                self.guest.allocator.flush_hints()
                if self.device is not None and pages.size:
                    self.device(pages)
            else:
                pages = np.asarray(self.balloon.deflate(req.npages), dtype=np.int64)
                self.guest.allocator.flush_hints()
            req.pages = pages
        except Exception as e:   # the answer carries the error; the guest keeps running
            req.error = e
        req.cpu_s = time.thread_time() - cpu0
        req.swap_ins = self._swap_ins() - faults0
        req.t_done = time.monotonic()
        self.stats["requests"] += 1
        self.stats["serve_cpu_s"] += req.cpu_s
        self.stats["swap_ins"] += req.swap_ins
        self.served.append(req)
        req.done.set()

    def _run_timer(self, now):
        if self.timer is None:
            return
        cpu0 = time.thread_time()
        self.timer(now)
        self.stats["timer_runs"] += 1
        self.stats["timer_cpu_s"] += time.thread_time() - cpu0

    def _work(self):
        cpu0, t0 = time.thread_time(), time.monotonic()
        done = self.guest.step(self.nops)
        if len(self.op_latencies_s) < MAX_LATENCIES:
            self.op_latencies_s.append((time.monotonic() - t0) / max(int(done or self.nops), 1))
        self.stats["ops"] += int(done or 0)
        self.stats["work_cpu_s"] += time.thread_time() - cpu0

    @property
    def cpu_s(self):
        """Guest CPU of this vCPU thread (serving, timers, workload)."""
        s = self.stats
        return s["serve_cpu_s"] + s["timer_cpu_s"] + s["work_cpu_s"]

    def __repr__(self):
        return "<Vcpu %s %s, %d requests served>" % (self.name, "busy" if self.busy else "idle",
                                                     self.stats["requests"])
