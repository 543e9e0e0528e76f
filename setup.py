"""Build ONE extension, gphint._mech, from the C sources and the Cython seam in ext/.

GPHINT_PUREPYTHON=1 skips the extension entirely (the package then runs on gphint._fallback).
The package version is compiled into the module so that gphint refuses a stale build.
"""
import glob
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "gphint", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def extensions():
    if os.environ.get("GPHINT_PUREPYTHON") == "1":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension
    import numpy  # noqa: F401  (build requirement; the seam uses typed memoryviews only)

    # Every C file in ext/ is one mechanism with one job; new ones are picked up here.
    c_sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "ext", "*.c"))
                       if os.path.basename(p) != "_mech.c")  # _mech.c is Cython output
    ext = Extension(
        "gphint._mech",
        sources=["ext/_mech.pyx"] + c_sources,
        include_dirs=["ext"],
        define_macros=[("GPHINT_VERSION", '"%s"' % read_version()), ("_GNU_SOURCE", "1")],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-std=gnu11"],
        extra_link_args=["-pthread"],
        depends=glob.glob(os.path.join(HERE, "ext", "*.h")) + glob.glob(os.path.join(HERE, "ext", "*.pxi"))
        + glob.glob(os.path.join(HERE, "ext", "*.pxd")),
    )
    return cythonize([ext], language_level=3, include_path=["ext"],
                     compiler_directives={"boundscheck": False, "wraparound": False})


setup(version=read_version(), ext_modules=extensions())
