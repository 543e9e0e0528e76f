"""A real swap area for the `kernel` peer: a swap file on a disk filesystem, for one run.

The kernel's own reclaim can only swap anonymous memory to a swap area.  When the machine has
none, gphint enables one for the run -- `fallocate` + `mkswap` + `swapon` of a file (a swap
file must have no holes: mm/swapfile.c refuses a sparse one) -- and always `swapoff` + unlink
afterwards.  A swap area is visible to the whole machine, so it is kept small and only for the
run; the file is named `gphint-swaparea-<owner pid>-<owner start time>.swap` so that a later
run can remove one whose owner died (kill -9) without touching a live run's.
"""
import errno
import os
import re
import shutil
import subprocess
import tempfile

from ..errors import Unsupported
from ..tmpfiles import owner_alive, start_ticks

NAME_RE = re.compile(r"^gphint-swaparea-(\d+)-(\d+)\.swap$")
MIN_BYTES = 16 << 20
REMEDY = ("run as root on a disk filesystem (ext4, xfs; not tmpfs), or configure a swap area "
          "yourself (swapon)")


def active_areas():
    """[(path, size_bytes, used_bytes)] from /proc/swaps."""
    out = []
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[0].replace("\\040", " "), int(parts[2]) * 1024, int(parts[3]) * 1024))
    return out


def lasting_areas():
    """The active swap areas that outlast any one run: not another gphint run's swap file,
    which its owner swapoffs when it ends -- and swapoff reads every page back in, charging it
    to the cgroup that swapped it (mm/swapfile.c try_to_unuse): a run relying on another's area
    is OOM-killed when that area goes."""
    return [a for a in active_areas() if not NAME_RE.match(os.path.basename(a[0]))]


def _fs_type(directory):
    best, kind = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                m = line.split()
                if directory == m[1] or directory.startswith(m[1].rstrip("/") + "/"):
                    if len(m[1]) >= len(best):
                        best, kind = m[1], m[2]
    except OSError:
        pass
    return kind


def can_enable(directory=None):
    """(ok, reason): could this process enable a swap file in `directory` (TMPDIR default)?"""
    directory = os.path.abspath(directory or tempfile.gettempdir())
    if os.geteuid() != 0:
        return False, "swapon needs root (CAP_SYS_ADMIN); euid is %d" % os.geteuid()
    for tool in ("mkswap", "swapon", "swapoff"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin"):
            return False, "%s is not installed" % tool
    fs = _fs_type(directory)
    if fs in ("tmpfs", "ramfs", "overlay", "squashfs", None):
        return False, "%s is on %s, which cannot hold a swap file" % (directory, fs or "an unknown filesystem")
    return True, "swap file in %s (%s)" % (directory, fs)


def _tool(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin") or name


def _run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise OSError(errno.EIO, "%s: %s" % (" ".join(argv), (r.stderr or r.stdout).strip()))


class SwapArea:
    """SwapArea(size_bytes, directory) enables a swap file now; close() disables and removes it."""

    def __init__(self, size_bytes, directory=None, owner_pid=None):
        directory = os.path.abspath(directory or tempfile.gettempdir())
        ok, why = can_enable(directory)
        if not ok:
            raise Unsupported("a swap area for the kernel peer", why, REMEDY)
        owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.size_bytes = max(MIN_BYTES, int(size_bytes)) // (1 << 20) << 20
        self.path = os.path.join(directory, "gphint-swaparea-%d-%d.swap"
                                 % (owner_pid, start_ticks(owner_pid)))
        self.active = False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size_bytes)   # no holes: swapon refuses them
            finally:
                os.close(fd)
            _run([_tool("mkswap"), self.path])
            _run([_tool("swapon"), self.path])
            self.active = True
            # mkswap wrote the header and zeroed the first pages through the page cache; the
            # swap area itself never uses the file's cache (swap I/O goes to its blocks), so
            # drop those pages: what the witnesses see of this file is then the run's doing
            from .cachemode import drop_cached
            drop_cached([self.path])
        except OSError as e:
            self.close()
            raise Unsupported("a swap area for the kernel peer", "%s: %s" % (self.path, e.strerror or e),
                              REMEDY) from None

    def used_bytes(self):
        for path, _, used in active_areas():
            if path == self.path:
                return used
        return 0

    def close(self):
        """swapoff (the kernel reads every swapped page back first) and unlink; idempotent."""
        disable(self.path)
        self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def disable(path):
    """swapoff `path` if it is active, then unlink it; True when nothing is left."""
    if any(p == path for p, _, _ in active_areas()):
        try:
            _run([_tool("swapoff"), path])
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return not os.path.exists(path) and not any(p == path for p, _, _ in active_areas())


def clean_stale(directory=None):
    """Disable and remove swap files of dead owners in `directory`; returns removed paths."""
    directory = os.path.abspath(directory or tempfile.gettempdir())
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = NAME_RE.match(name)
        if m and not owner_alive(int(m.group(1)), int(m.group(2))):
            path = os.path.join(directory, name)
            if disable(path):
                removed.append(path)
    return removed
