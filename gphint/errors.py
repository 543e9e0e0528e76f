"""gphint's exceptions: one base class, each also a builtin so callers can catch the usual way.

Domain errors are raised at one boundary (gphint.memory and friends); the mechanism raises
SyscallError naming the system call, as psutil does ("originated from ...").
"""
import os


class GphintError(Exception):
    """Base class of every error gphint raises on purpose."""


class ConfigError(GphintError, ValueError):
    """Bad input from the user: a size, a state name, a path, an option.  Names the value."""


class StateError(GphintError, ValueError):
    """A page-state transition that the hinting contract forbids (or a discard it forbids)."""

    def __init__(self, message, page=None, old=None, new=None):
        super().__init__(message)
        self.page = page
        self.old = old
        self.new = new


class ClosedError(GphintError, ValueError):
    """An object (guest memory, fault service) used after close()."""


class Unsupported(GphintError, RuntimeError):
    """This kernel or user lacks a feature; says which one and how to get it."""

    def __init__(self, feature, reason, remedy=""):
        msg = "%s is unavailable: %s" % (feature, reason)
        if remedy:
            msg += " (remedy: %s)" % remedy
        super().__init__(msg)
        self.feature = feature
        self.reason = reason
        self.remedy = remedy


class SyscallError(GphintError, OSError):
    """A system call failed; .syscall names it and .detail says on what."""

    def __init__(self, errno_, syscall, detail=""):
        text = "%s failed: %s" % (syscall, os.strerror(errno_))
        if detail:
            text += " (%s)" % detail
        super().__init__(errno_, text)
        self.syscall = syscall
        self.detail = detail


class OutOfMemory(GphintError, MemoryError):
    """The guest ran out of free page frames; says how many were asked for and how many are free."""
