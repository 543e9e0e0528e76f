"""Host swap that leaves RAM: the host swap file is written and read with O_DIRECT.

A buffered swap file keeps every swapped page in the host's page cache (62 MiB "swapped" raised
/proc/meminfo Cached by 62 MiB here), so its I/O is a memcpy and the machine gets nothing back.
With O_DIRECT the bytes go to the disk and the cache stays empty.  The C paths that touch the
swap file already use page-aligned buffers at page offsets (ext/hostops.c writes from the
mmap'd scratch area, the fault thread reads into its mmap'd bounce buffer and never maps an
O_DIRECT store: ext/stores.c); `enable_direct` checks that this filesystem accepts it by a real
aligned write and read, and otherwise leaves the file buffered and says why.
"""
import fcntl
import mmap
import os

PAGE_SIZE = mmap.PAGESIZE


def enable_direct(fd):
    """Set O_DIRECT on fd if the filesystem honours it; (enabled, reason when not)."""
    o_direct = getattr(os, "O_DIRECT", 0)
    if not o_direct:
        return False, "this platform has no O_DIRECT"
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | o_direct)
    except OSError as e:
        return False, "fcntl(F_SETFL, O_DIRECT) refused: %s" % e.strerror
    buf = mmap.mmap(-1, PAGE_SIZE)
    try:
        os.pwritev(fd, [buf], 0)          # slot 0 is free: zeros are what it holds anyway
        os.preadv(fd, [buf], 0)
    except OSError as e:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return False, "O_DIRECT I/O failed on the swap file's filesystem (%s): buffered" % e.strerror
    finally:
        buf.close()
    return True, None
