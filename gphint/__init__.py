"""gphint: guest page hinting (CMMA) made real on a Linux host.

Guests' physical memory is real anonymous mmap memory; the host discards hinted pages with
madvise/process_madvise from a compiled fast path; discarded pages come back through a
userfaultfd service.  Start with GuestMemory and PageState; see README.md.
"""
import sys

from ._version import __version__

try:
    from . import _mechanism  # noqa: F401  (chooses the mechanism; refuses an unbuilt source tree)
except ImportError as e:
    # `python -m gphint` imports this package while it locates gphint.__main__, and sys.argv[0]
    # is "-m" exactly then (documented for the -m option): a user at the command line gets the
    # one line that says what to do, not a traceback through runpy
    if sys.argv[:1] == ["-m"]:
        raise SystemExit("gphint: error: %s" % e) from None
    raise
from .errors import (ClosedError, ConfigError, GphintError, StateError, SyscallError,
                     Unsupported)
from .states import HostState, PageState, discardable
from .memory import GuestMemory, PAGE_SIZE
from . import caps, measure
from .faults import FaultService, ReloadError
from .stores import FileStore, HostSwap
from .host import Host
from .guest.guest import Guest  # noqa: F401  (the guest OS model)

__all__ = ["__version__", "GuestMemory", "PageState", "HostState", "discardable", "PAGE_SIZE",
           "GphintError", "ConfigError", "StateError", "ClosedError", "Unsupported", "SyscallError",
           "caps", "measure", "FaultService", "ReloadError", "FileStore", "HostSwap"]
