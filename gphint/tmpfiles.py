"""Temporary files that name their owner, so that what a killed run left can be removed later.

A run's generated file set and its guests' swap files must have paths (workloads and the
discard-fault service's stores open them by name), so they cannot be unlinked at creation and
a `kill -9` leaves them behind.  Their names carry the owner's pid and its start time
(/proc/PID/stat field 22, in clock ticks since boot): `sweep()` removes an entry only when no
process with that pid and start time exists, so a recycled pid (same number, later start) does
not protect a dead run's files, and a live run's files -- another user's included -- are never
touched.
"""
import os
import re
import shutil
import tempfile

from .measure import proc_stat

PREFIX = "gphint-"
# gphint-<kind>-<pid>-<start ticks>-<random suffix from tempfile>
_NAME_RE = re.compile(r"^gphint-([a-z]+)-(\d+)-(\d+)-")


def start_ticks(pid):
    """Start time of process `pid` in clock ticks since boot, or None if it does not exist."""
    try:
        _, fields = proc_stat("/proc/%d/stat" % pid)
    except OSError:
        return None
    return int(fields[19])          # field 22 of proc(5); fields[0] is field 3


_own = {}


def prefix(kind):
    """The tempfile prefix for a temporary of `kind` ('files', 'gswap', ...) owned by this
    process (recomputed after fork: a child owns what it creates)."""
    pid = os.getpid()
    if pid not in _own:
        _own.clear()
        _own[pid] = start_ticks(pid)
    return "%s%s-%d-%d-" % (PREFIX, kind, pid, _own[pid])


def owner_alive(pid, ticks):
    return start_ticks(pid) == ticks


def sweep(directory=None):
    """Remove the temporaries in `directory` (default: the temp dir) whose owner is dead;
    returns their paths.  Entries that are not ours, or not removable, are left alone."""
    directory = directory or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _NAME_RE.match(name)
        if not m or owner_alive(int(m.group(2)), int(m.group(3))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue        # not ours to remove (another user's, or already gone)
        removed.append(path)
    return removed
