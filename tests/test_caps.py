"""Capabilities are probed, shown, and used; missing features carry a reason and a remedy."""
import json
import subprocess
import sys

import pytest

import gphint
from gphint import caps


def test_probe_is_cached_and_complete():
    c = caps.probe()
    assert caps.probe() is c
    for name in ("compiled", "userfaultfd", "userfaultfd_user_mode_only", "dev_userfaultfd",
                 "process_madvise", "madv_free", "pagemap_scan", "soft_dirty", "uffd_wp_async"):
        f = c.features[name]
        assert isinstance(f.available, bool)
        if not f.available:
            assert f.reason, name     # every missing feature says why
    assert c.page_size == gphint.PAGE_SIZE
    assert c.thp_mode in ("always", "madvise", "never", "unavailable")
    assert c.features["compiled"].available == gphint._mechanism.COMPILED


def test_userfaultfd_flag_matches_a_real_syscall():
    """The flag is the kernel's answer: a root process (or unprivileged_userfaultfd=1) gets it."""
    import ctypes
    import os
    nr = caps.SYS_USERFAULTFD.get(caps.platform.machine())
    if nr is None:
        pytest.skip("no userfaultfd syscall number known for this machine")
    fd = caps._libc.syscall(nr, os.O_CLOEXEC)
    if fd >= 0:
        os.close(fd)
    assert caps.has("userfaultfd") == (fd >= 0), ctypes.get_errno()


def test_require_raises_unsupported_with_remedy(monkeypatch):
    c = caps.probe()
    monkeypatch.setitem(c.features, "userfaultfd",
                        caps.Feature(False, reason="userfaultfd(2) failed: EPERM", remedy=caps.ROOT_REMEDY))
    with pytest.raises(gphint.Unsupported) as e:
        caps.require("userfaultfd")
    assert "EPERM" in str(e.value) and "vm.unprivileged_userfaultfd=1" in str(e.value)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gphint", *args], capture_output=True, text=True)


def test_cli_caps_json():
    r = run_cli("caps", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["page_size"] == gphint.PAGE_SIZE
    assert data["features"]["userfaultfd"]["available"] == caps.has("userfaultfd")
    assert data["mechanism"] == gphint._mechanism.NAME


def test_cli_caps_text_names_every_feature():
    r = run_cli("caps")
    assert r.returncode == 0, r.stderr
    for name in caps.probe().features:
        assert name in r.stdout


def test_cli_bad_option_is_one_line_exit_2():
    r = run_cli("caps", "--jsn")
    assert r.returncode == 2 and "Traceback" not in r.stderr
