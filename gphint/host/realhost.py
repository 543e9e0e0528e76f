"""The run's side of the real host: its cgroup budget, its witnesses, its `host` record fields.

The runner calls, in order: `RealHost(config, spec)`, `before_guests(fileset)`,
`set_budget(host)` (the guests and the host exist, nothing ran yet: the baseline is measured and
the cgroup's limit becomes budget + baseline, as a VM's cgroup also holds its VMM; the witness
then calls `follow_baseline` as the run's own memory grows),
`start(host, fileset)`, `stop()`, `fields(host)` (merged into the record's `host` object),
`close()`.
"""
import os

from . import sandbox
from .cachemode import drop_cached


# The limit follows the run's own memory up in steps of at least this much (one write to the
# cgroup per step, not one per sample).
BASELINE_STEP_BYTES = 1 << 20


def own_bytes(cgroup, guest_resident_bytes):
    """What the run holds apart from guest memory, as its cgroup is charged for it: the
    cgroup's usage (the interpreter, libraries, the guest model's tables, the fault service's
    buffers, allocator arenas, the page cache of the guests' overlay and swap files, the kernel
    memory charged to the run) minus the guests' resident pages.  mincore counts a guest page
    in the swap cache as resident, and one the kernel swapped out is in neither term: the
    kernel's own reclaim of the guests never raises this.

    guest_resident_bytes is a callable (mincore of every guest), read between two readings of
    the usage: of the two differences the smaller is taken, which is never above the truth
    whether the guests grew or shrank meanwhile."""
    before = cgroup.usage_bytes()
    guests = guest_resident_bytes()
    after = cgroup.usage_bytes()
    return max(0, min(before, after) - guests)


def no_swap_slack_bytes(budget_bytes):
    """0 where the machine has a swap area.  Without one the kernel's only last resort at the
    limit is the OOM killer, and gphint's loop, which reclaims after a guest's quantum, would
    have the run killed at its first overshoot (measured: a run with TMPDIR on tmpfs, where no
    swap file can be made): then the limit keeps room for one quantum's overshoot."""
    from . import swaparea
    return 0 if swaparea.active_areas() else max(8 << 20, budget_bytes // 20)


class GuestResidency:
    """mincore of every guest into this reader's own vectors (the host thread samples the
    guests' residency at the same time, into theirs)."""

    def __init__(self, host):
        import numpy as np
        from .._mechanism import mech
        from ..memory import PAGE_SIZE
        self.mech, self.page_size = mech, PAGE_SIZE
        self.mems = [s.mem for s in host.slots]
        self.vecs = [np.zeros(m.npages, dtype=np.uint8) for m in self.mems]

    def __call__(self):
        return sum(int(self.mech.residency(m.region, self.page_size, v))
                   for m, v in zip(self.mems, self.vecs)) * self.page_size


class RealHost:
    def __init__(self, config, spec):
        self.config = config
        self.spec = spec
        self.cgroup = sandbox.inside()
        self.baseline_bytes = None
        self.limit_bytes = None
        self.witness = None
        self.backing_dropped_bytes = 0
        self.baseline_start_bytes = None
        self.limit_raises = 0
        self.slack_bytes = None
        self._residency = None
        self._last_own = 0
        from .cachemode import mode, set_mode
        self.previous_cache_mode = mode()
        set_mode(getattr(config, "cache", "host"))

    def before_guests(self, fileset):
        if fileset is not None and getattr(self.config, "cache", "host") == "none":
            # the generated files were just written through the page cache: the host keeps
            # no copy of a cache=none guest's disk, so it must not start with one either
            self.backing_dropped_bytes = drop_cached(_paths(fileset))

    def set_budget(self, host):
        """Baseline and limit, once the guests and the host exist (their tables, the fault
        service's buffers) and before they run: the baseline is what the run holds apart from
        guest memory (usage minus the guests' resident pages), the limit budget + baseline."""
        from ..measure import rss_bytes
        from ..memory import PAGE_SIZE
        guest_resident = sum(s.mem.resident_pages() for s in host.slots) * PAGE_SIZE
        used = self.cgroup.usage_bytes() if self.cgroup is not None else rss_bytes()
        self.baseline_bytes = self.baseline_start_bytes = max(0, used - guest_resident)
        if self.cgroup is not None and self.config.host_mem_bytes is not None:
            self.slack_bytes = no_swap_slack_bytes(self.config.host_mem_bytes)
            self.limit_bytes = self.config.host_mem_bytes + self.baseline_bytes + self.slack_bytes
            self.cgroup.set_limit(self.limit_bytes)
            self.cgroup.reset_peak()

    def follow_baseline(self, host, cg_sample=None):
        """The witness's hook, every sample: the run's own memory keeps growing after the
        guests start (measured: the guest model's per-process page tables and its page-cache
        tables grow with the operations, allocator arenas with their fragmentation, the overlay
        files' page cache with the guests' writes -- tens of MiB for the demo's shape), and a
        limit frozen at the start would make the kernel reclaim that growth from the guests
        for the rest of the run: gphint's loop, which sees only the guests, would then find
        them under budget and never act.  So the baseline is the run's own memory at its
        highest (its steady state), and the limit budget + baseline follows it up, never down
        (lowering it would force a reclaim of memory the run already holds)."""
        if self.limit_bytes is None:
            return
        if self._residency is None:
            self._residency = GuestResidency(host)
        own = own_bytes(self.cgroup, self._residency)
        # raised only when two samples in a row (interval_s apart) agree: a guest's burst
        # between the readings is not the run's own memory
        high = min(own, self._last_own)
        self._last_own = own
        if high >= self.baseline_bytes + BASELINE_STEP_BYTES:
            self.baseline_bytes = high
            self.limit_bytes = self.config.host_mem_bytes + high + self.slack_bytes
            self.cgroup.set_limit(self.limit_bytes)
            self.limit_raises += 1

    def start(self, host, fileset):
        from .witness import Witness

        def swap_fds():
            swap = getattr(host, "swap", None)
            fd = getattr(swap, "fd", -1)
            return [fd] if fd is not None and fd >= 0 else []

        def swap_paths():
            p = os.environ.get("GPHINT_SWAP_AREA")
            return [p] if p else []

        paths = _paths(fileset) if fileset is not None else _tree(self.config.files)
        self.witness = Witness(self.cgroup, backing_paths=lambda: paths, swap_fds=swap_fds,
                               swap_paths=swap_paths, on_sample=lambda cg: self.follow_baseline(host, cg),
                               interval_s=min(0.1, self.config.sample_interval_s),
                               files_interval_s=1.0).start()

    def stop(self):
        if self.witness is not None:
            self.witness.stop()

    def fields(self, host=None):
        out = {"cgroup": self.cgroup.version if self.cgroup is not None else None,
               "cgroup_path": self.cgroup.path if self.cgroup is not None else None,
               "cgroup_limit_bytes": self.limit_bytes,
               "baseline_bytes": self.baseline_bytes,
               "baseline_start_bytes": self.baseline_start_bytes,
               "cgroup_limit_raises": self.limit_raises,
               "cgroup_slack_bytes": self.slack_bytes,
               "cache": getattr(self.config, "cache", "host"),
               "backing_dropped_bytes": self.backing_dropped_bytes,
               "swap_area": os.environ.get("GPHINT_SWAP_AREA"),
               "host_swap_direct_io": getattr(getattr(host, "swap", None), "direct_io", None),
               "host_swap_direct_io_reason": getattr(getattr(host, "swap", None), "direct_io_reason", None)}
        if self.witness is not None:
            out.update(self.witness.summary())
        return out

    def close(self):
        """Stop sampling and give the process its cache mode back (the mode is process-wide:
        a run must not leave its --cache to whatever opens files after it)."""
        from .cachemode import set_mode
        self.stop()
        set_mode(self.previous_cache_mode)


def _paths(fileset):
    out = [os.path.join(fileset.root, p) for p in fileset.paths]
    overlay = getattr(fileset, "overlay_root", None)
    if overlay:
        out += [os.path.join(overlay, p) for p in fileset.paths]
    return out


def _tree(root):
    if not root:
        return []
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return out
