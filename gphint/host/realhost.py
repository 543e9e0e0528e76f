"""The run's side of the real host: its cgroup budget, its witnesses, its `host` record fields.

The runner calls, in order: `RealHost(config, spec)`, `before_guests(fileset)`,
`set_budget(host)` (the guests and the host exist, nothing ran yet: the baseline is measured and
the cgroup's limit becomes budget + baseline, as a VM's cgroup also holds its VMM),
`start(host, fileset)`, `stop()`, `fields(host)` (merged into the record's `host` object),
`close()`.
"""
import os

from . import sandbox
from .cachemode import drop_cached


SLACK_MIN_BYTES = 8 << 20


def reclaim_slack_bytes(budget_bytes):
    """How far above budget + baseline the kernel's limit sits: gphint's loop reclaims after a
    guest overshoots (direct reclaim after each scheduling quantum, the loop every interval),
    while the kernel reclaims synchronously at the charge.  With no slack the kernel would take
    every overshooting page first -- by its LRU, guest pages and the interpreter's alike -- and
    the kernel, not the strategy, would be measured.  The slack covers one quantum's overshoot
    (guest_resident_peak_bytes - budget_bytes shows it: a few MiB) and the run's own growth, so
    that the kernel is the last resort, as on a real host.  Every strategy, `kernel` included,
    gets the same limit."""
    return max(SLACK_MIN_BYTES, budget_bytes // 20)


class RealHost:
    def __init__(self, config, spec):
        self.config = config
        self.spec = spec
        self.cgroup = sandbox.inside()
        self.baseline_bytes = None
        self.limit_bytes = None
        self.witness = None
        self.backing_dropped_bytes = 0
        self.slack_bytes = None
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
        self.baseline_bytes = max(0, used - guest_resident)
        if self.cgroup is not None and self.config.host_mem_bytes is not None:
            self.slack_bytes = reclaim_slack_bytes(self.config.host_mem_bytes)
            self.limit_bytes = self.config.host_mem_bytes + self.baseline_bytes + self.slack_bytes
            self.cgroup.set_limit(self.limit_bytes)
            self.cgroup.reset_peak()

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
                               swap_paths=swap_paths,
                               interval_s=min(0.1, self.config.sample_interval_s),
                               files_interval_s=1.0).start()

    def stop(self):
        if self.witness is not None:
            self.witness.stop()

    def fields(self, host=None):
        out = {"cgroup": self.cgroup.version if self.cgroup is not None else None,
               "cgroup_path": self.cgroup.path if self.cgroup is not None else None,
               "cgroup_limit_bytes": self.limit_bytes,
               "cgroup_slack_bytes": self.slack_bytes,
               "baseline_bytes": self.baseline_bytes,
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
