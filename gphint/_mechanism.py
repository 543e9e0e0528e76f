"""Choose the mechanism once, at import: the compiled gphint._mech, or gphint._fallback.

GPHINT_PUREPYTHON=1 forces the pure-Python twin.  A compiled module whose version differs
from the package's is refused: a stale build would silently run old C against new Python.
"""
import os

from ._version import __version__

FORCED_PURE = os.environ.get("GPHINT_PUREPYTHON") == "1"
WHY_PURE = None

if FORCED_PURE:
    from . import _fallback as mech
    WHY_PURE = "GPHINT_PUREPYTHON=1"
else:
    try:
        from . import _mech as mech
    except ImportError as e:  # not built (no compiler): run on the twin, and say so in caps
        from . import _fallback as mech
        WHY_PURE = "compiled extension not importable: %s" % e
    else:
        if mech.__version__ != __version__:
            raise ImportError("stale gphint._mech: built for %s, package is %s; rebuild with "
                              "'pip install .'" % (mech.__version__, __version__))

COMPILED = mech.COMPILED
NAME = "compiled" if COMPILED else "pure-python"

_pidfd = {}


def self_pidfd():
    """A pidfd of this process for process_madvise, reopened after fork (a child must not
    advise its parent's memory through an inherited pidfd)."""
    pid = os.getpid()
    fd = _pidfd.get(pid)
    if fd is None:
        for stale in _pidfd.values():
            try:
                os.close(stale)
            except OSError:
                pass
        _pidfd.clear()
        fd = _pidfd[pid] = os.pidfd_open(pid)
    return fd
