"""Guest disks like QEMU's cache=none or cache=writeback: does the host keep a second copy?

A real guest caches its disk in its own page cache; a host that opens the image through its
page cache as well holds every such page twice (double caching), and a VOLATILE discard then
looks free only because the host still has the copy.  `--cache none` (the default, as libvirt
recommends for VMs) opens the guests' backing files with O_DIRECT for reads -- guest page-cache
fills and reloads of discarded VOLATILE pages go to the disk -- and `--cache host` reads through
the host page cache (today's behaviour, cache=writeback).  Guest writes go to private overlay
files through the page cache either way (a run never modifies the user's files); an O_DIRECT
read of a range that has dirty cached pages is written back first by the kernel, so reads stay
coherent with them.

O_DIRECT needs the buffer, the offset and the length aligned to the filesystem's logical block
size: every path that reads a backing file reads whole pages at page offsets into page-aligned
frames or buffers (ext/faults.c, ext/fill.c, gphint.stores).
"""
import mmap
import os
import tempfile

MODES = ("none", "host")
O_DIRECT = getattr(os, "O_DIRECT", 0)
PAGE_SIZE = mmap.PAGESIZE

_mode = ["host"]


def set_mode(mode):
    from ..errors import ConfigError
    if mode not in MODES:
        raise ConfigError("--cache %r is not valid (expected one of %s)" % (mode, ", ".join(MODES)))
    _mode[0] = mode


def mode():
    return _mode[0]


def read_flags():
    """Extra open(2) flags for reading a guest's backing file in the current mode."""
    return O_DIRECT if _mode[0] == "none" else 0


def is_direct(fd):
    import fcntl
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT) if O_DIRECT else False
    except OSError:
        return False


def pread_aligned(fd, nbytes, offset):
    """pread through a page-aligned buffer (what O_DIRECT requires); the bytes read."""
    span = -(-(nbytes + offset % PAGE_SIZE) // PAGE_SIZE) * PAGE_SIZE
    start = offset - offset % PAGE_SIZE
    buf = mmap.mmap(-1, max(span, PAGE_SIZE))
    try:
        got = os.preadv(fd, [buf], start)
        lo = offset - start
        return bytes(buf[lo:max(lo, min(got, lo + nbytes))])
    finally:
        buf.close()


def drop_cached(paths):
    """Write back and drop the host's cached pages of these files (POSIX_FADV_DONTNEED);
    returns the bytes that were cached before."""
    from .witness import cached_bytes, each_file

    def drop(fd):
        n = cached_bytes(fd)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return n
    return each_file(paths, drop)


def probe_direct(directory=None):
    """(ok, reason): does O_DIRECT read and write work on `directory`'s filesystem?"""
    directory = directory or tempfile.gettempdir()
    if not O_DIRECT:
        return False, "this platform has no O_DIRECT"
    fd, path = tempfile.mkstemp(prefix="gphint-odirect-", dir=directory)
    try:
        os.unlink(path)
        import fcntl
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT)
        except OSError as e:
            return False, "fcntl(O_DIRECT) on %s: %s" % (directory, e.strerror)
        buf = mmap.mmap(-1, PAGE_SIZE)
        buf[:4] = b"gph!"
        try:
            os.pwritev(fd, [buf], 0)
            buf[:4] = b"\0\0\0\0"
            os.preadv(fd, [buf], 0)
        except OSError as e:
            return False, "O_DIRECT I/O on %s: %s" % (directory, e.strerror)
        finally:
            ok = buf[:4] == b"gph!"
            buf.close()
        return (True, "O_DIRECT works on %s" % directory) if ok else \
            (False, "O_DIRECT read back other bytes on %s" % directory)
    finally:
        os.close(fd)
