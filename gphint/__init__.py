"""gphint: guest page hinting (CMMA) made real on a Linux host.

Guests' physical memory is real anonymous mmap memory; the host discards hinted pages with
madvise/process_madvise from a compiled fast path; discarded pages come back through a
userfaultfd service.  Start with GuestMemory and PageState; see README.md.
"""
from ._version import __version__
from .errors import (ClosedError, ConfigError, GphintError, StateError, SyscallError,
                     Unsupported)
from .states import HostState, PageState, discardable
from .memory import GuestMemory, PAGE_SIZE
from . import caps, measure
from .faults import FaultService, ReloadError
from .stores import FileStore, HostSwap
from .host import Host
from .guest.guest import Guest  # noqa: F401  (issue 4: the guest OS model)

__all__ = ["__version__", "GuestMemory", "PageState", "HostState", "discardable", "PAGE_SIZE",
           "GphintError", "ConfigError", "StateError", "ClosedError", "Unsupported", "SyscallError",
           "caps", "measure", "FaultService", "ReloadError", "FileStore", "HostSwap"]
