"""Memory cgroups: the budget the kernel enforces, as libvirt's memtune puts each VM in one.

Which hierarchy offers the memory controller is detected, never assumed: cgroup v2 when
`memory` is listed in a v2 mount's `cgroup.controllers`, else the v1 `memory` hierarchy.  A
cgroup is created *below the cgroup this process already runs in* (hierarchical delegation:
whatever limits the machine puts on us still hold, and nothing outside our subtree is
touched), named `gphint-<owner pid>-<owner start time>-<tag>` so that a later run can tell a
stale one (its owner is dead) from a live one (someone else's run) and remove only the first.

Charges do not move with a task (v1 `move_charge_at_immigrate` is deprecated and refused on
recent kernels; v2 never moves them), so a process must enter its cgroup *before* it touches
the memory that should be charged: `preexec()` is meant for the child side of a fork.
"""
import errno
import os
import re
import time

from ..errors import SyscallError, Unsupported
from ..tmpfiles import owner_alive, start_ticks

V1_ROOT = "/sys/fs/cgroup/memory"
UNLIMITED_V1 = 1 << 62          # v1 reads back "no limit" as a page-rounded LLONG_MAX
NAME_RE = re.compile(r"^gphint-(\d+)-(\d+)-[\w.-]+$")


def _mounts():
    try:
        with open("/proc/self/mounts") as f:
            return [line.split() for line in f]
    except OSError:
        return []


def _own_path(version):
    """This process's cgroup path in the v1 memory hierarchy or in the v2 one."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return "/"
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if version == "v2" and hid == "0":
            return path
        if version == "v1" and "memory" in ctrls.split(","):
            return path
    return "/"


def detect():
    """(version, parent directory for our cgroups, reason) -- version None when no hierarchy
    offers the memory controller here (reason says why)."""
    for m in _mounts():
        if len(m) > 2 and m[2] == "cgroup2":
            try:
                with open(os.path.join(m[1], "cgroup.controllers")) as f:
                    ctrls = f.read().split()
            except OSError:
                continue
            if "memory" in ctrls:
                return "v2", os.path.join(m[1], _own_path("v2").lstrip("/")), ""
    for m in _mounts():
        if len(m) > 3 and m[2] == "cgroup" and "memory" in m[3].split(","):
            return "v1", os.path.join(m[1], _own_path("v1").lstrip("/")), ""
    return None, None, ("no cgroup hierarchy offers the memory controller (v2 mounts list no "
                        "'memory' in cgroup.controllers, and no v1 'memory' hierarchy is mounted)")


def _write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise SyscallError(e.errno, "write", "%r to %s" % (text, path)) from None


def _read(path):
    with open(path) as f:
        return f.read()


class MemoryCgroup:
    """One memory cgroup of ours.  MemoryCgroup.create(tag) makes it; close() removes it."""

    def __init__(self, version, path):
        self.version = version
        self.path = path

    @classmethod
    def create(cls, tag, owner_pid=None):
        version, parent, why = detect()
        if version is None:
            raise Unsupported("a memory cgroup", why, "mount cgroup v2 with the memory controller "
                              "enabled, or the v1 memory hierarchy")
        owner_pid = os.getpid() if owner_pid is None else owner_pid
        name = "gphint-%d-%d-%s" % (owner_pid, start_ticks(owner_pid), tag)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError as e:
            remedy = "run as root" if e.errno in (errno.EACCES, errno.EPERM) else \
                "check that %s is writable" % parent
            raise Unsupported("a memory cgroup", "mkdir %s: %s" % (path, e.strerror), remedy) from None
        cg = cls(version, path)
        if version == "v2":
            # a v2 child has only what its parent delegates in cgroup.subtree_control
            try:
                ctrls = _read(os.path.join(path, "cgroup.controllers")).split()
            except OSError:
                ctrls = []
            if "memory" not in ctrls:
                cg.remove()
                raise Unsupported("a memory cgroup", "%s does not delegate the memory controller to "
                                  "its children" % parent, "echo +memory > %s/cgroup.subtree_control"
                                  % parent)
        return cg

    @classmethod
    def attach(cls, version, path):
        """The cgroup a parent made for us (its path passed down)."""
        return cls(version, path)

    # --- control ----------------------------------------------------------------------------
    def set_limit(self, nbytes):
        """Hard limit on memory (anon + page cache): v1 limit_in_bytes, v2 memory.max."""
        if self.version == "v1":
            _write(os.path.join(self.path, "memory.limit_in_bytes"), str(int(nbytes)))
        else:
            _write(os.path.join(self.path, "memory.max"), str(int(nbytes)))

    def reset_peak(self):
        """Restart the kernel's high-water mark (v1: write to max_usage_in_bytes; v2: to
        memory.peak, Linux >= 6.12), so that it covers the run, not its setup."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            _write(os.path.join(self.path, name), "0")
            return True
        except OSError:
            return False

    def limit_bytes(self):
        name = "memory.limit_in_bytes" if self.version == "v1" else "memory.max"
        text = _read(os.path.join(self.path, name)).strip()
        if text == "max":
            return None
        v = int(text)
        return None if v >= UNLIMITED_V1 else v

    def add_pid(self, pid=0):
        """Move a process in (0: the writer itself: what a forked child does before exec)."""
        _write(os.path.join(self.path, "cgroup.procs"), str(int(pid)))

    def preexec(self):
        """A function for the child side of a fork: enter this cgroup (before exec, so that
        everything the new program touches is charged here)."""
        procs = os.path.join(self.path, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write("0")
        return enter

    def pids(self):
        try:
            return [int(x) for x in _read(os.path.join(self.path, "cgroup.procs")).split()]
        except OSError:
            return []

    # --- counters ---------------------------------------------------------------------------
    def stat(self):
        """memory.stat as {name: int}."""
        out = {}
        for line in _read(os.path.join(self.path, "memory.stat")).splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def usage_bytes(self):
        name = "memory.usage_in_bytes" if self.version == "v1" else "memory.current"
        return int(_read(os.path.join(self.path, name)))

    def max_usage_bytes(self):
        """The kernel's own high-water mark (v1 max_usage_in_bytes, v2 memory.peak), or None."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            return int(_read(os.path.join(self.path, name)).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def sample(self):
        """One reading: usage, anon, file, swap (bytes), major faults, OOM kills so far."""
        st = self.stat()
        if self.version == "v1":
            swap = st.get("swap", 0)
            anon, file = st.get("rss", 0) + st.get("rss_huge", 0), st.get("cache", 0)
            oom = self._oom_kills("memory.oom_control")
        else:
            try:
                swap = int(_read(os.path.join(self.path, "memory.swap.current")))
            except (OSError, ValueError):
                swap = 0
            anon, file = st.get("anon", 0), st.get("file", 0)
            oom = self._oom_kills("memory.events")
        return {"usage_bytes": self.usage_bytes(), "anon_bytes": anon, "file_bytes": file,
                "swap_bytes": swap, "pgmajfault": st.get("pgmajfault", 0),
                # v2 counts swap traffic per cgroup (pswpin/pswpout in memory.stat, Linux >= 6.x);
                # v1 has none: the machine's /proc/vmstat is the witness there
                "pswpin": st.get("pswpin"), "pswpout": st.get("pswpout"), "oom_kills": oom}

    def _oom_kills(self, name):
        try:
            for line in _read(os.path.join(self.path, name)).splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    # --- removal ------------------------------------------------------------------------------
    def kill_all(self):
        import signal
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self, timeout_s=10.0):
        """rmdir once empty (a killed member takes a moment to leave); True when gone."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > end:
                    return False
            time.sleep(0.05)

    def __repr__(self):
        return "<MemoryCgroup %s %s>" % (self.version, self.path)


def stale_cgroups():
    """Our cgroups whose owner is dead: [(path, member pids)]."""
    version, parent, _ = detect()
    if version is None or not os.path.isdir(parent):
        return []
    out = []
    for name in os.listdir(parent):
        m = NAME_RE.match(name)
        if not m or owner_alive(int(m.group(1)), int(m.group(2))):
            continue
        path = os.path.join(parent, name)
        out.append((path, MemoryCgroup(version, path).pids()))
    return out


def clean_stale():
    """Remove stale cgroups of dead owners; returns (removed paths, [(path, why kept)]).
    A stale cgroup that still has members is named, not emptied: its processes are not ours
    to kill (the owner's reaper or PR_SET_PDEATHSIG would have ended our own)."""
    removed, kept = [], []
    version = detect()[0]
    for path, pids in stale_cgroups():
        if pids:
            kept.append((path, "still holds processes %s" % ",".join(map(str, pids))))
        elif MemoryCgroup(version, path).remove(timeout_s=1.0):
            removed.append(path)
        else:
            kept.append((path, "rmdir failed"))
    return removed, kept
