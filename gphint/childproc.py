"""argv for a Python child that runs this very gphint, wherever the user stands.

`python -m gphint` (or `-m gphint.anything`) puts the child's working directory first on
sys.path, so a user standing in a source checkout (its root has a gphint/ directory, usually
unbuilt) would have every child import that checkout instead of the installed package the
parent runs.  Changing the child's cwd would break relative paths in its options (--files,
--status), and putting the package's parent directory first on sys.path would let anything
else installed there shadow the standard library; loading the package from its own
__init__.py changes neither.
"""
import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_BOOTSTRAP = (
    "import importlib, importlib.util, os, sys\n"
    "pkg, entry = sys.argv.pop(1), sys.argv.pop(1)\n"
    "spec = importlib.util.spec_from_file_location('gphint', os.path.join(pkg, '__init__.py'),"
    " submodule_search_locations=[pkg])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules['gphint'] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "module, func = entry.split(':')\n"
    "sys.exit(getattr(importlib.import_module(module), func)())\n")


def command(entry, args):
    """argv that calls entry ("gphint.module:function", which reads sys.argv[1:] = args and
    returns an exit status) in a child process, on the gphint this process runs."""
    return [sys.executable, "-c", _BOOTSTRAP, PACKAGE_DIR, entry] + list(args)
