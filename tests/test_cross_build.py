"""The C mechanism builds for arm64 (the README says it runs there): compiled and linked with
Debian's cross compiler when it is installed (apt-get install gcc-aarch64-linux-gnu)."""
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "cross_build.py")
CROSS_CC = "aarch64-linux-gnu-gcc"


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which(CROSS_CC) is None,
                    reason="no %s here (Debian: apt-get install gcc-aarch64-linux-gnu)" % CROSS_CC)
def test_the_c_mechanism_compiles_and_links_for_arm64():
    r = run("--cc", CROSS_CC)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(aarch64-linux-gnu)" in r.stdout and "FAIL" not in r.stdout
    nfiles = len([f for f in os.listdir(os.path.join(os.path.dirname(SCRIPT), "..", "ext"))
                  if f.endswith(".c") and f != "_mech.c"])
    assert r.stdout.count("  ok    ext/") == nfiles
    assert "linked: %d objects, no undefined symbols" % nfiles in r.stdout


def test_a_missing_cross_compiler_is_named_with_its_package():
    r = run("--cc", "gphint-no-such-gcc")
    assert r.returncode == 2
    assert "'gphint-no-such-gcc' is not installed" in r.stderr


def test_script_has_help_and_sample_output():
    text = open(SCRIPT).read()
    assert text.startswith("#!/usr/bin/env python3\n\"\"\"") and "Sample output" in text
    assert os.access(SCRIPT, os.X_OK)
    assert run("--help").returncode == 0
