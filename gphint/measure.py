"""What the kernel says about memory: process RSS/USS (psutil), smaps_rollup, pagemap.

These are the independent witnesses for what gphint claims (mincore-based residency lives on
GuestMemory).  smaps_rollup walks every mapping: ~15 ms per read at 1 GiB RSS, so read it
sparingly (never per page, never in a timed loop).
"""
import mmap
import os

import numpy as np
import psutil

PAGEMAP_PRESENT = 1 << 63
PAGEMAP_SWAPPED = 1 << 62
PAGEMAP_SOFT_DIRTY = 1 << 55

_proc = {}


def _process():
    pid = os.getpid()
    p = _proc.get(pid)
    if p is None:
        _proc.clear()
        p = _proc[pid] = psutil.Process(pid)
    return p


def rss_bytes():
    """Resident set size of this process (psutil)."""
    return _process().memory_info().rss


def anon_rss_bytes():
    """Anonymous resident memory of this process (RssAnon of /proc/self/status): the guests'
    memory plus the interpreter's heap, WITHOUT file pages the process has mapped (the fault
    service reloads from mappings of the guests' files and of the host swap file; those pages
    are the kernel's page cache, reclaimable, and would otherwise count as RSS)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"RssAnon:"):
                return int(line.split()[1]) * 1024
    return rss_bytes()   # kernels before 4.5: no split available


def uss_bytes():
    """Unique set size of this process (psutil; reads smaps, so it is slow)."""
    return _process().memory_full_info().uss


def smaps_rollup(pid="self"):
    """/proc/PID/smaps_rollup as {field: bytes}, e.g. 'Rss', 'LazyFree', 'AnonHugePages'."""
    out = {}
    with open("/proc/%s/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def pagemap(address, npages, pid="self"):
    """Raw 64-bit /proc/PID/pagemap entries for npages pages starting at address."""
    entries = np.zeros(npages, dtype=np.uint64)
    if npages == 0:
        return entries
    with open("/proc/%s/pagemap" % pid, "rb", buffering=0) as f:
        raw = os.pread(f.fileno(), npages * 8, address // mmap.PAGESIZE * 8)
    entries[: len(raw) // 8] = np.frombuffer(raw, dtype=np.uint64)
    return entries


def pagemap_present(address, npages, pid="self"):
    """Boolean array: which pages the kernel's page tables say are present in RAM."""
    return (pagemap(address, npages, pid) & np.uint64(PAGEMAP_PRESENT)) != 0


def proc_stat(path):
    """(comm, fields) of a proc(5) stat file (/proc/PID/stat, /proc/self/task/TID/stat): comm
    is in parentheses and may itself hold spaces and ')', so the fields start after the last
    ')'; fields[0] is proc(5)'s field 3.  OSError (the process or thread is gone) passes."""
    with open(path, "rb") as f:
        stat = f.read()
    end = stat.rindex(b")")
    return stat[stat.index(b"(") + 1:end].decode(errors="replace"), stat[end + 2:].split()
