"""gphint's exceptions: one base class, each also a builtin so callers can catch the usual way.

The mechanism (ext/ C through its seam, or its pure-Python twin gphint._fallback) reports every
failure the same way, as a MechanismError: errno, what was wrong or which call failed, the
pages.  translate() below is the one place that turns it into the error a caller sees, as
psutil's wrap_exceptions turns the C layer's OSError into NoSuchProcess / AccessDenied; so a
bad page index is the same ConfigError whichever entry point it came through.
"""
import errno as _errno
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


class MechanismError(GphintError, OSError):
    """The mechanism's own report of a failure, before translate(): errno; what (what was wrong
    when no call failed: "page index", "region", a mode) or syscall (the call that failed);
    the pages [first_page, first_page + npages); bound (a range error: pages are [0, bound));
    context (what the caller was doing, e.g. "discard")."""

    def __init__(self, errno_, what=None, syscall=None, first_page=-1, npages=0, bound=-1, context=""):
        super().__init__(errno_, "%s: %s" % (syscall or what or "?", os.strerror(errno_)))
        self.what, self.syscall = what, syscall
        self.first_page, self.npages, self.bound, self.context = first_page, npages, bound, context

    def pages(self):
        """"pages a..b" of the failing range, or "" when it names none."""
        if self.npages <= 0:
            return ""
        return "pages %d..%d" % (self.first_page, self.first_page + self.npages - 1)


def translate(e):
    """The domain error for MechanismError e (the one boundary): a page index or run outside the
    memory and a bad mode are the caller's input (ConfigError); a region that is not (or no
    longer) registered, or a closed service, is ClosedError; a call that failed is SyscallError
    naming it; running out of memory outside any call is MemoryError.  Every result keeps
    e.errno and has e as its __cause__."""
    if e.what == "page index" and e.errno == _errno.ERANGE:
        out = ConfigError("page index %d out of range [0, %d)" % (e.first_page, e.bound))
    elif e.what == "page run" and e.errno == _errno.ERANGE:
        out = ConfigError("page run %d..%d out of range [0, %d)"
                          % (e.first_page, e.first_page + e.npages - 1, e.bound))
    elif e.what == "usage state":
        out = ConfigError("not a usage state code: %#x" % e.first_page)
    elif e.what == "submit mode":
        out = ConfigError("unknown submit mode %r" % (e.first_page,))
    elif e.what in ("region", "service"):
        out = ClosedError("the fault service is closed" if e.what == "service" else
                          "region %d is not registered with the fault service" % e.first_page)
    elif e.what is None and e.syscall is None and e.errno == _errno.ENOMEM:
        out = MemoryError("%s: out of memory" % e.context)
    else:
        detail = ": ".join(x for x in (e.context, e.pages()) if x)
        out = SyscallError(e.errno, e.syscall or e.what or "?", detail)
    if not isinstance(out, OSError):
        out.errno = e.errno
    out.__cause__ = e
    return out


def mechanism_error(errno_, what=None, syscall=None, first_page=-1, npages=0, bound=-1, context=""):
    """translate(MechanismError(...)): what the seam's raise helper and the pure-Python twin
    raise, so that both mechanisms give the same error for the same input."""
    return translate(MechanismError(errno_, what, syscall, first_page, npages, bound, context))
