#!/usr/bin/env python3
"""Build the C mechanism (ext/*.c, not the Cython seam) for another architecture with a cross
compiler, and link it with every symbol resolved: the check that the README's arm64 claim holds
on a machine that is not arm64.

Each file is compiled as setup.py compiles it (-O2 -Wall -std=gnu11 -D_GNU_SOURCE), with
warnings as errors (an x86-only builtin shows up as an implicit declaration), against the
target's own kernel and libc headers; then the objects are linked into one shared object with
-Wl,--no-undefined, so a call that exists only on the build host fails here too.  Python.h is
not needed: the C files never include it.

    scripts/cross_build.py                                   # aarch64-linux-gnu-gcc
    scripts/cross_build.py --cc riscv64-linux-gnu-gcc
    apt-get install gcc-aarch64-linux-gnu                    # Debian's cross compiler

Exit status: 0 built, 1 a file did not compile or link, 2 the compiler is not installed.

Sample output:
    aarch64-linux-gnu-gcc (aarch64-linux-gnu): 11 files
      ok    ext/dirty.c
      ok    ext/discard.c
      ...
    linked: 11 objects, no undefined symbols
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CFLAGS = ["-O2", "-Wall", "-Werror", "-Wno-unused-function", "-std=gnu11", "-D_GNU_SOURCE", "-fPIC",
          "-DGPHINT_VERSION=\"cross\""]


def c_sources():
    """The C files setup.py builds (ext/_mech.c is Cython output, not a source)."""
    return sorted(p for p in glob.glob(os.path.join(ROOT, "ext", "*.c")) if os.path.basename(p) != "_mech.c")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", default="aarch64-linux-gnu-gcc", help="cross compiler (default: %(default)s)")
    args = ap.parse_args(argv)
    cc = shutil.which(args.cc)
    if cc is None:
        print("cross_build: compiler %r is not installed (Debian: apt-get install gcc-%s)"
              % (args.cc, args.cc.rsplit("-gcc", 1)[0]), file=sys.stderr)
        return 2
    target = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    sources = c_sources()
    print("%s (%s): %d files" % (args.cc, target, len(sources)))
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gphint-cross-") as tmp:
        objects = []
        for src in sources:
            obj = os.path.join(tmp, os.path.basename(src)[:-2] + ".o")
            r = subprocess.run([cc, *CFLAGS, "-I", os.path.join(ROOT, "ext"), "-c", src, "-o", obj],
                               capture_output=True, text=True)
            rel = os.path.relpath(src, ROOT)
            if r.returncode:
                failed += 1
                print("  FAIL  %s\n%s" % (rel, r.stderr.rstrip()))
            else:
                print("  ok    %s" % rel)
                objects.append(obj)
        if failed:
            print("%d of %d files failed to compile" % (failed, len(sources)))
            return 1
        r = subprocess.run([cc, "-shared", "-pthread", "-Wl,--no-undefined", "-o",
                            os.path.join(tmp, "gphint_c.so"), *objects], capture_output=True, text=True)
        if r.returncode:
            print("link failed:\n%s" % r.stderr.rstrip())
            return 1
    print("linked: %d objects, no undefined symbols" % len(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
