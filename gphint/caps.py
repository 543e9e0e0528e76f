"""Probe once what this kernel and user offer; every missing feature names its reason and remedy.

Code and tests ask the same flags (psutil's HAS_* style): `caps.has("userfaultfd")`.
`gphint caps [--json]` prints them.  Probes are real system calls on scratch memory, never
guesses from version numbers.
"""
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import mmap
import os
import platform
import struct
from dataclasses import asdict, dataclass, field

from . import _mechanism
from ._version import __version__

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "riscv64": 282, "s390x": 355, "ppc64le": 364}
SYS_PROCESS_MADVISE = 440
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F            # _IOWR(0xAA, 0x3F, struct uffdio_api)
USERFAULTFD_IOC_NEW = 0xAA00       # _IO(0xAA, 0x00) on /dev/userfaultfd
PAGEMAP_SCAN = 0xC0606610          # _IOWR('f', 16, struct pm_scan_arg), Linux >= 6.7

# UFFD_FEATURE_* bits (include/uapi/linux/userfaultfd.h); distro headers may predate the newest.
UFFD_FEATURES = {
    "PAGEFAULT_FLAG_WP": 1 << 0, "EVENT_FORK": 1 << 1, "EVENT_REMAP": 1 << 2,
    "EVENT_REMOVE": 1 << 3, "MISSING_HUGETLBFS": 1 << 4, "MISSING_SHMEM": 1 << 5,
    "EVENT_UNMAP": 1 << 6, "SIGBUS": 1 << 7, "THREAD_ID": 1 << 8, "MINOR_HUGETLBFS": 1 << 9,
    "MINOR_SHMEM": 1 << 10, "EXACT_ADDRESS": 1 << 11, "WP_HUGETLBFS_SHMEM": 1 << 12,
    "WP_UNPOPULATED": 1 << 13, "POISON": 1 << 14, "WP_ASYNC": 1 << 15, "MOVE": 1 << 16,
}

ROOT_REMEDY = "run as root, or: sysctl vm.unprivileged_userfaultfd=1"


@dataclass
class Feature:
    available: bool
    detail: str = ""      # what was found (version, mode, bits)
    reason: str = ""      # why it is missing
    remedy: str = ""      # how to get it


@dataclass
class Capabilities:
    mechanism: str
    gphint_version: str
    kernel: str
    machine: str
    page_size: int
    euid: int
    thp_mode: str
    uffd_features: list = field(default_factory=list)
    features: dict = field(default_factory=dict)

    def has(self, name):
        return self.features[name].available

    def to_dict(self):
        return asdict(self)


def _errname(e):
    return "%s (%s)" % (errno.errorcode.get(e, str(e)), os.strerror(e))


def _uffd_api(fd):
    buf = bytearray(struct.pack("QQQ", UFFD_API, 0, 0))
    fcntl.ioctl(fd, UFFDIO_API, buf, True)
    return struct.unpack("QQQ", buf)[1]


def _probe_userfaultfd():
    """Returns (syscall Feature, user-mode-only Feature, /dev/userfaultfd Feature, feature bits)."""
    nr = SYS_USERFAULTFD.get(platform.machine())
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    bits = 0
    full = umo = None
    if nr is None:
        full = Feature(False, reason="unknown syscall number on %s" % platform.machine())
    else:
        fd = _libc.syscall(nr, flags)
        if fd >= 0:
            try:
                bits = _uffd_api(fd)
            finally:
                os.close(fd)
            full = Feature(True, detail="userfaultfd(2), kernel faults included")
        else:
            e = ctypes.get_errno()
            full = Feature(False, reason="userfaultfd(2) failed: %s" % _errname(e),
                           remedy=ROOT_REMEDY if e == errno.EPERM else
                           "a kernel built with CONFIG_USERFAULTFD")
        fd = _libc.syscall(nr, flags | UFFD_USER_MODE_ONLY)
        if fd >= 0:
            if not bits:
                try:
                    bits = _uffd_api(fd)
                except OSError:
                    pass
            os.close(fd)
            umo = Feature(True, detail="UFFD_USER_MODE_ONLY: kernel-mode accesses to missing pages "
                                        "fail with EFAULT; gphint fills through user space")
        else:
            umo = Feature(False, reason="userfaultfd(UFFD_USER_MODE_ONLY) failed: %s"
                          % _errname(ctypes.get_errno()), remedy=ROOT_REMEDY)
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        devf = Feature(False, reason="/dev/userfaultfd: %s" % _errname(e.errno),
                       remedy="chmod/ACL /dev/userfaultfd for this user (Linux >= 6.1)")
    else:
        try:
            fd = fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
            os.close(fd)
            devf = Feature(True, detail="/dev/userfaultfd")
        except OSError as e:
            devf = Feature(False, reason="USERFAULTFD_IOC_NEW: %s" % _errname(e.errno))
        finally:
            os.close(dev)
    return full, umo, devf, bits


def _scratch_page():
    m = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[0:1] = b"\x01"
    return m


def _probe_process_madvise():
    if not hasattr(os, "pidfd_open"):
        return Feature(False, reason="os.pidfd_open missing (Python < 3.9)", remedy="Python >= 3.9")
    m = _scratch_page()
    try:
        import numpy as np
        addr = np.frombuffer(m, dtype=np.uint8).ctypes.data
        iov = (ctypes.c_size_t * 2)(addr, mmap.PAGESIZE)
        rc = _libc.syscall(SYS_PROCESS_MADVISE, _mechanism.self_pidfd(), iov, 1, mmap.MADV_DONTNEED, 0)
        if rc == mmap.PAGESIZE:
            if m[0:1] != b"\x00":
                return Feature(False, reason="process_madvise(MADV_DONTNEED) returned but did not discard")
            return Feature(True, detail="process_madvise(pidfd of self, MADV_DONTNEED), <= 1024 iovecs/call")
        e = ctypes.get_errno()
        remedy = ("Linux >= 6.13 accepts MADV_DONTNEED/MADV_FREE for the calling process; "
                  "gphint falls back to one madvise per run") if e == errno.EINVAL else \
            "Linux >= 5.10 for process_madvise; gphint falls back to madvise"
        return Feature(False, reason="process_madvise on self: %s" % _errname(e), remedy=remedy)
    finally:
        m.close()


def _probe_madv_free():
    adv = getattr(mmap, "MADV_FREE", None)
    if adv is None:
        return Feature(False, reason="mmap.MADV_FREE not defined by this Python")
    m = _scratch_page()
    try:
        m.madvise(adv)
        return Feature(True, detail="lazy free: RSS drops only under memory pressure")
    except OSError as e:
        return Feature(False, reason="madvise(MADV_FREE): %s" % _errname(e.errno),
                       remedy="Linux >= 4.5; gphint uses MADV_DONTNEED instead")
    finally:
        m.close()


def _probe_pagemap_scan():
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return Feature(False, reason="/proc/self/pagemap: %s" % _errname(e.errno))
    try:
        # struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len, max_pages,
        # category_inverted, category_mask, category_anyof_mask, return_mask (12 x u64).
        arg = bytearray(struct.pack("12Q", 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        return Feature(True, detail="PAGEMAP_SCAN ioctl (Linux >= 6.7)")
    except OSError as e:
        return Feature(False, reason="PAGEMAP_SCAN ioctl: %s" % _errname(e.errno),
                       remedy="Linux >= 6.7")
    finally:
        os.close(fd)


def _probe_soft_dirty():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
    except OSError as e:
        return Feature(False, reason="/proc/self/clear_refs: %s" % _errname(e.errno))
    m = _scratch_page()
    try:
        import numpy as np
        addr = np.frombuffer(m, dtype=np.uint8).ctypes.data
        m[0:1] = b"\x02"
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // mmap.PAGESIZE * 8)
            entry = struct.unpack("Q", f.read(8))[0]
        if entry >> 55 & 1:
            return Feature(True, detail="pagemap bit 55 + clear_refs 4")
        return Feature(False, reason="pagemap soft-dirty bit stays clear after a write",
                       remedy="a kernel built with CONFIG_MEM_SOFT_DIRTY")
    finally:
        m.close()


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
        return text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return "unavailable"


@functools.lru_cache(maxsize=None)
def probe():
    """Capabilities of this process on this kernel, probed once."""
    full, umo, devf, bits = _probe_userfaultfd()
    names = [n for n, b in UFFD_FEATURES.items() if bits & b]
    feats = {
        "compiled": Feature(_mechanism.COMPILED, detail=_mechanism.NAME,
                            reason=_mechanism.WHY_PURE or "",
                            remedy="" if _mechanism.COMPILED or _mechanism.FORCED_PURE else
                            "install a C compiler and Python headers, then 'pip install .'"),
        "userfaultfd": full,
        "userfaultfd_user_mode_only": umo,
        "dev_userfaultfd": devf,
        "process_madvise": _probe_process_madvise(),
        "madv_free": _probe_madv_free(),
        "pagemap_scan": _probe_pagemap_scan(),
        "soft_dirty": _probe_soft_dirty(),
    }
    wp_async = bool(bits & UFFD_FEATURES["WP_ASYNC"])
    feats["uffd_wp_async"] = Feature(wp_async, detail="UFFD_FEATURE_WP_ASYNC" if wp_async else "",
                                     reason="" if wp_async else "UFFD_FEATURE_WP_ASYNC not offered",
                                     remedy="" if wp_async else "Linux >= 6.7 with userfaultfd access")
    # what the fault service builds on, derived from the probes above
    track = wp_async and feats["pagemap_scan"].available and _mechanism.COMPILED
    feats["dirty_tracking"] = Feature(
        track, detail="host dirty bit of POT_VOLATILE pages: UFFD WP_ASYNC + PAGEMAP_SCAN" if track else "",
        reason="" if track else "no kernel write tracking (UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN, compiled "
        "mechanism): POT_VOLATILE pages are treated as STABLE",
        remedy="" if track else "Linux >= 6.7 with userfaultfd access, and the compiled mechanism")
    move = bool(bits & UFFD_FEATURES["MOVE"])
    feats["uffd_move"] = Feature(
        move, detail="UFFDIO_MOVE: host swap-out detaches a page atomically" if move else "",
        reason="" if move else "UFFD_FEATURE_MOVE not offered: host swap-out is unavailable",
        remedy="" if move else "Linux >= 6.8 with userfaultfd access")
    from .host.realcaps import features as real_host_features   # cgroups, swap, O_DIRECT, ...
    feats.update(real_host_features(Feature))
    return Capabilities(
        mechanism=_mechanism.NAME, gphint_version=__version__, kernel=platform.release(),
        machine=platform.machine(), page_size=mmap.PAGESIZE, euid=os.geteuid(),
        thp_mode=_thp_mode(), uffd_features=names, features=feats)


def has(name):
    """Is feature `name` available here?  (Same flags for code and tests.)"""
    return probe().has(name)


def require(name):
    """Raise Unsupported (with reason and remedy) unless feature `name` is available."""
    from .errors import Unsupported
    f = probe().features[name]
    if not f.available:
        raise Unsupported(name, f.reason, f.remedy)
