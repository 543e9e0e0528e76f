"""Choose the mechanism once, at import: the compiled gphint._mech, or gphint._fallback.

GPHINT_PUREPYTHON=1 forces the pure-Python twin.  A compiled module whose version differs
from the package's is refused: a stale build would silently run old C against new Python.

Without the variable, why _mech fails to import decides what happens:
- the module file is absent and this package sits in its source tree (setup.py and ext/ next
  to it): refused with the remedy.  Almost always the tree shadows the installed package
  (`python -m gphint` run from the checkout's root puts the checkout first on sys.path), and
  running on the twin there would silently measure pure Python instead of the C fast path;
- the module file is absent from an installed package: it was installed without the extension
  (`GPHINT_PUREPYTHON=1 pip install .`, or no compiler): run on the twin, and say so in caps;
- the module file is present but does not load (wrong ABI, missing symbol): refused, like a
  stale build -- that is a broken build, not a choice.
"""
import importlib.machinery
import os

from ._version import __version__

FORCED_PURE = os.environ.get("GPHINT_PUREPYTHON") == "1"
WHY_PURE = None
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def compiled_module_files(package_dir=PACKAGE_DIR):
    """Paths of gphint._mech builds next to this package (any suffix this Python loads)."""
    return [os.path.join(package_dir, "_mech" + suffix)
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if os.path.exists(os.path.join(package_dir, "_mech" + suffix))]


def source_tree_of(package_dir=PACKAGE_DIR):
    """The checkout this package directory belongs to, or None for an installed package."""
    root = os.path.dirname(package_dir)
    if os.path.isfile(os.path.join(root, "setup.py")) and \
            os.path.isfile(os.path.join(root, "ext", "_mech.pyx")):
        return root
    return None


def unbuilt_source_tree_message(root):
    return ("gphint is imported from its source tree %s, where the compiled extension is not "
            "built: run 'pip install -e .' there, or run gphint from outside the source tree "
            "(or set GPHINT_PUREPYTHON=1 for the pure-Python mechanism)" % root)


if FORCED_PURE:
    from . import _fallback as mech
    WHY_PURE = "GPHINT_PUREPYTHON=1"
elif not compiled_module_files():
    if source_tree_of() is not None:
        raise ImportError(unbuilt_source_tree_message(source_tree_of()))
    from . import _fallback as mech
    WHY_PURE = ("the compiled extension gphint._mech is not installed in %s (installed without "
                "it: GPHINT_PUREPYTHON=1 or no C compiler at install time)" % PACKAGE_DIR)
else:
    try:
        from . import _mech as mech
    except ImportError as e:
        raise ImportError("broken gphint._mech build %s: %s; rebuild with 'pip install .' (or set "
                          "GPHINT_PUREPYTHON=1)" % (compiled_module_files()[0], e)) from None
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
