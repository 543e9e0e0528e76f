"""What the command line must never do, tried with real processes: import the wrong gphint,
drop a record, write into a FIFO or over a device node, start a run the machine cannot hold,
leave a dead run's files or a dead parent's child behind, or answer a bad value with a
traceback."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest

import gphint
from gphint import tmpfiles
from test_experiment import check_document, needs_service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(gphint.__file__))
SMALL = ["--guests", "2", "--guest-mem", "16M", "--duration", "0.5", "--no-probe", "--seed", "2"]
is_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, mknod)")


def gphint_cmd(*args, cwd=None, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "gphint"] + list(args), capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def env_with(**kw):
    env = dict(os.environ)
    env.update({k: str(v) for k, v in kw.items()})
    return env


def one_error_line(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- the gphint that runs ---------------------------------------------------------------------
def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "gphint")
    if not os.access(path, os.X_OK):
        pytest.skip("no gphint console script next to %s" % sys.executable)
    return path


def test_compare_children_run_the_parents_gphint_wherever_the_user_stands(tmp_path):
    """From a directory holding a gphint/ that is not ours (a checkout's root, here one that
    refuses to import), the children still run the parent's package."""
    shadow = tmp_path / "gphint"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing gphint was imported')\n")
    (shadow / "__main__.py").write_text("raise SystemExit('the shadowing gphint ran')\n")
    out = tmp_path / "c.json"
    r = subprocess.run([_console_script(), "compare", "--strategies", "unused,cmma", "--json",
                        "c.json"] + SMALL, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    check_document(doc)
    assert [x["strategy"] for x in doc["results"]] == ["unused", "cmma"]
    assert "shadowing" not in r.stdout + r.stderr


def _copy_package(dst):
    """The package's Python files only: a checkout before `pip install` has no _mech build."""
    import shutil
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("_mech*.so", "__pycache__", "*.pyd"))


def test_python_m_gphint_in_an_unbuilt_source_tree_says_so_in_one_line(tmp_path):
    _copy_package(tmp_path / "gphint")
    (tmp_path / "ext").mkdir()
    for name in ("setup.py", os.path.join("ext", "_mech.pyx")):
        with open(os.path.join(REPO, name)) as src, open(tmp_path / name, "w") as dst:
            dst.write(src.read())
    env = {k: v for k, v in os.environ.items() if k != "GPHINT_PUREPYTHON"}
    r = gphint_cmd("caps", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "source tree %s" % tmp_path in lines[0] and "pip install -e ." in lines[0]
    assert "circular" not in lines[0]
    # the twin on purpose still works there
    r = gphint_cmd("caps", cwd=tmp_path, env=dict(env, GPHINT_PUREPYTHON="1"))
    assert r.returncode == 0 and "pure-python" in r.stdout, r.stderr


def test_an_install_without_the_extension_runs_pure_and_caps_says_why(tmp_path):
    """`GPHINT_PUREPYTHON=1 pip install .` installs no _mech: a later import (variable unset)
    runs the twin, and caps names the reason."""
    site = tmp_path / "site"
    _copy_package(site / "gphint")
    env = {k: v for k, v in os.environ.items() if k != "GPHINT_PUREPYTHON"}
    env["PYTHONPATH"] = str(site)
    r = gphint_cmd("caps", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "mechanism: pure-python" in r.stdout
    line = [x for x in r.stdout.splitlines() if x.strip().startswith("compiled")][0]
    assert "NO" in line and "not installed" in line and "pip install" in line, line


# --- compare's records ------------------------------------------------------------------------
def _corrupt_overlays_until_exit(proc, tmpdir):
    """Overwrite, in place, every overlay copy the run's guests have written (real writes to the
    files the guests' page caches write back to and reload from) until the run ends."""
    corrupted = 0
    while proc.poll() is None:
        for root, _, names in os.walk(tmpdir):
            if os.sep + "overlay" not in root:
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    size = os.path.getsize(path)
                    with open(path, "r+b") as f:
                        f.write(b"\xee" * size)
                    corrupted += 1
                except OSError:
                    pass
        time.sleep(0.02)
    return corrupted


def test_compare_keeps_the_record_of_a_strategy_with_integrity_errors(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "c.json"
    proc = subprocess.Popen([sys.executable, "-m", "gphint", "compare", "--strategies", "none",
                             "--workload", "database", "--guests", "1", "--guest-mem", "8M",
                             "--duration", "3", "--no-probe", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with(TMPDIR=tmpdir))
    corrupted = _corrupt_overlays_until_exit(proc, tmpdir)
    stdout, stderr = proc.communicate()
    assert corrupted > 0, "the run wrote no file to corrupt"
    assert proc.returncode == 1, stdout + stderr
    rec = json.loads(out.read_text())["results"][0]
    assert "error" not in rec, rec
    assert rec["integrity_errors"] > 0 and rec["ops"] > 0
    assert "none: %d pages differ" % rec["integrity_errors"] in stderr
    row = [x for x in stdout.splitlines() if x.startswith("none ")]
    assert row and row[0].split()[-1] == str(rec["integrity_errors"])      # the table has it
    assert "error: exit status" not in stdout + stderr


# --- results go to regular files only ---------------------------------------------------------
def _long_run(*extra):
    # long enough that a check made only after the run would hit the test's timeout
    return ["run", "--strategy", "unused", "--guests", "1", "--guest-mem", "8M", "--duration",
            "600", "--no-probe"] + list(extra)


def test_json_into_a_fifo_is_refused_before_the_run(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = gphint_cmd(*_long_run("--json", str(fifo)), timeout=60)
    one_error_line(r, "--json", str(fifo), "FIFO", "regular files only")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@is_root
def test_json_over_a_device_node_leaves_the_device(tmp_path):
    """A character device made here with /dev/full's numbers (so a regression cannot break the
    machine's /dev/full), directly and through a symlink; /dev/full itself is checked too."""
    full = os.stat("/dev/full")
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, full.st_rdev)
    except OSError as e:
        pytest.skip("mknod: %s" % e)
    link = tmp_path / "link"
    link.symlink_to(node)
    for path, words in ((node, ["character device"]), (link, ["a symlink to %s" % node])):
        r = gphint_cmd(*_long_run("--json", str(path)), timeout=60)
        one_error_line(r, "--json", str(path), *words)
        assert stat.S_ISCHR(os.stat(node).st_mode) and os.stat(node).st_rdev == full.st_rdev
    assert os.path.islink(link)
    r = gphint_cmd(*_long_run("--json", "/dev/full"), timeout=60)
    one_error_line(r, "--json", "/dev/full")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_plot_and_out_dir_are_checked_too(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_error_line(gphint_cmd("compare", "--plot", str(fifo), "--duration", "600", timeout=60),
                   "--plot", "FIFO")
    one_error_line(gphint_cmd("compare", "--plot", str(tmp_path / "x.nope"), timeout=60),
                   "--plot", ".nope")
    one_error_line(gphint_cmd("demo", "--out-dir", "/dev/null", timeout=60), "--out-dir", "/dev/null")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing" / "x.json")
    one_error_line(gphint_cmd(*_long_run("--json", str(dangling)), timeout=60), "dangling")


def test_json_through_a_symlink_replaces_its_target_atomically(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = gphint_cmd("run", "--strategy", "unused", "--json", str(link), *SMALL)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(link) and json.loads(target.read_text())["results"][0]["strategy"] == "unused"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]     # no temp file left


# --- error lines ------------------------------------------------------------------------------
def _meminfo():
    from gphint.experiment import meminfo_bytes
    return meminfo_bytes()


@pytest.mark.parametrize("extra, words", [
    (["--seed=-1"], ["--seed", "-1"]),
    (["--seed", str(1 << 70)], ["--seed", str(1 << 70)]),
    (["--probe-timeout=-1"], ["--probe-timeout", "-1"]),
    (["--probe-timeout", "nan"], ["--probe-timeout", "nan"]),
    (["--guest-mem", "64K"], ["--guest-mem", "64.0 KiB", "at least 1.0 MiB"]),
    (["--guest-mem", "1T"], ["--guest-mem", "1024.0 GiB", "MemTotal"]),
])
def test_bad_values_name_the_option(extra, words):
    one_error_line(gphint_cmd("run", "--strategy", "cmma", "--duration", "600", *extra, timeout=60),
                   *words)


@pytest.mark.parametrize("scale", ["0", "2", "fast"])
def test_a_bad_demo_scale_is_one_line(scale, tmp_path):
    r = gphint_cmd("demo", "--out-dir", str(tmp_path), env=env_with(GPHINT_DEMO_SCALE=scale), timeout=60)
    one_error_line(r, "GPHINT_DEMO_SCALE", repr(scale))
    assert os.listdir(tmp_path) == []


def test_guests_that_do_not_fit_in_memory_are_refused_up_front():
    avail = _meminfo()["MemAvailable"]
    per_guest = "%dM" % (avail // 3 // (1 << 20) + 1)
    r = gphint_cmd("run", "--strategy", "cmma", "--guests", "4", "--guest-mem", per_guest,
                   "--duration", "600", timeout=60)
    one_error_line(r, "--guests 4", "--guest-mem", "MemAvailable", "--host-mem")
    r = gphint_cmd("run", "--strategy", "cmma", "--host-mem", "%dM" % (avail // (1 << 20) + 64),
                   "--duration", "600", timeout=60)
    one_error_line(r, "--host-mem", "MemAvailable")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 10 MiB filesystem (tmpfs) as TMPDIR, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10M", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("mount tmpfs: %s" % r.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_file_set_larger_than_tmpdir_is_refused_up_front(small_tmpfs):
    r = gphint_cmd("run", "--strategy", "cmma", "--guests", "1", "--guest-mem", "8M",
                   "--duration", "600", env=env_with(TMPDIR=small_tmpfs), timeout=60)
    one_error_line(r, "--guest-mem", "TMPDIR=%s" % small_tmpfs, "free", "--files")
    assert os.listdir(small_tmpfs) == []


@needs_service
def test_a_full_tmpdir_names_the_place_and_says_enospc_for_host_swap(small_tmpfs):
    """The file set fits, then host swap fills the disk: the error says ENOSPC and TMPDIR
    (the C swap-out returns its pwrite's own errno, not a generic EIO)."""
    r = gphint_cmd("run", "--strategy", "none", "--guests", "12", "--guest-mem", "4M", "--host-mem",
                   "8M", "--workload", "churn", "--duration", "10", "--no-probe",
                   env=env_with(TMPDIR=small_tmpfs), timeout=120)
    line = one_error_line(r, "TMPDIR=%s" % small_tmpfs)
    assert "[Errno 28]" in line and "No space left on device" in line and "Input/output" not in line
    assert os.listdir(small_tmpfs) == []       # the failed run removed its files


def test_enospc_is_blamed_on_tmpdir_only_when_it_is_full(small_tmpfs, tmp_path):
    """The bare os.write error of a full TMPDIR gets the place named; the same errno from
    something else (a full C table, a roomy TMPDIR) is left as it was."""
    import errno
    from gphint.errors import SyscallError
    from gphint.experiment import explain_full_tmpdir
    bare = OSError(errno.ENOSPC, "No space left on device")
    assert explain_full_tmpdir(bare, str(tmp_path)) is bare          # tmp_path has room
    with open(small_tmpfs / "fill", "wb") as f:                      # really fill the tmpfs
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    try:
        out = explain_full_tmpdir(bare, str(small_tmpfs))
        assert out.errno == errno.ENOSPC and "TMPDIR=%s" % small_tmpfs in str(out)
        table = SyscallError(errno.ENOSPC, "register: region table full")
        assert explain_full_tmpdir(table, str(tmp_path)) is table
        named = OSError(errno.ENOSPC, "No space left on device", "/some/file")
        assert explain_full_tmpdir(named, str(small_tmpfs)) is named
    finally:
        os.unlink(small_tmpfs / "fill")


def test_a_full_tmpdir_met_first_by_the_host_thread_names_the_place(small_tmpfs, tmp_path,
                                                                    monkeypatch):
    """Which thread meets the full disk first is timing: when the host thread's swap-out does,
    its death (HostThreadDied from the pwrite's ENOSPC) still names TMPDIR."""
    import errno
    import tempfile
    from gphint.errors import SyscallError
    from gphint.experiment import runner
    from gphint.experiment.config import RunConfig
    from gphint.host import HostThreadDied

    def host_meets_it_first(self):
        try:
            raise SyscallError(errno.ENOSPC, "pwrite(host swap)", "swap-out: pages 1..1")
        except SyscallError as e:
            raise HostThreadDied("the host thread died at step 6 (%s): the budget is no longer "
                                 "enforced" % e) from e

    with open(small_tmpfs / "fill", "wb") as f:                      # really fill the tmpfs
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))
    monkeypatch.setattr(runner.Runner, "setup", lambda self: None)
    monkeypatch.setattr(runner.Runner, "close", lambda self: None)
    monkeypatch.setattr(runner.Runner, "run", host_meets_it_first)
    try:
        with pytest.raises(HostThreadDied) as died:
            runner.run_one(RunConfig(guests=1, guest_mem_bytes=4 << 20, files=str(tmp_path)), "none")
        line = str(died.value)
        assert "TMPDIR=%s" % small_tmpfs in line and "[Errno 28]" in line, line
        assert "host swap" in line and "No space left on device" in line, line
    finally:
        os.unlink(small_tmpfs / "fill")


# --- what a killed run leaves -----------------------------------------------------------------
def _wait_for(pred, timeout_s=60.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def _ours(tmpdir):
    return sorted(n for n in os.listdir(tmpdir) if n.startswith("gphint-"))


def _start_run(tmpdir, duration="600"):
    return subprocess.Popen([sys.executable, "-m", "gphint", "run", "--strategy", "cmma",
                             "--guests", "2", "--guest-mem", "8M", "--duration", duration,
                             "--no-probe", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env_with(TMPDIR=tmpdir))


def test_the_next_run_removes_what_a_killed_run_left_and_spares_a_live_one(tmp_path):
    dead = _start_run(tmp_path)
    _wait_for(lambda: any("gswap" in n for n in _ours(tmp_path)))
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=30)
    left = _ours(tmp_path)
    assert left and all("-%d-" % dead.pid in n for n in left)
    live = _start_run(tmp_path)
    try:
        _wait_for(lambda: any("-%d-" % live.pid in n for n in _ours(tmp_path)))
        r = gphint_cmd("run", "--strategy", "unused", "--guests", "1", "--guest-mem", "4M",
                       "--duration", "0.3", "--no-probe", env=env_with(TMPDIR=tmp_path))
        assert r.returncode == 0, r.stderr
        now = _ours(tmp_path)
        assert not any("-%d-" % dead.pid in n for n in now)
        assert any("-%d-" % live.pid in n for n in now)        # a running run keeps its files
    finally:
        live.terminate()
        live.wait(timeout=60)
    assert _ours(tmp_path) == []      # SIGTERM unwinds: the live run removed its own files


def test_a_reused_pid_does_not_protect_a_dead_runs_files(tmp_path):
    """An entry named for a live pid but another start time is a dead run's: swept."""
    me = os.getpid()
    stale = tmp_path / ("gphint-files-%d-%d-xyz" % (me, tmpfiles.start_ticks(me) - 1))
    stale.mkdir()
    (stale / "f").write_text("x")
    mine = tmp_path / ("gphint-files-%d-%d-abc" % (me, tmpfiles.start_ticks(me)))
    mine.mkdir()
    foreign = tmp_path / "gphint-files-abcdef"      # not our naming: never touched
    foreign.mkdir()
    assert tmpfiles.sweep(str(tmp_path)) == [str(stale)]
    assert mine.exists() and foreign.exists() and not stale.exists()


def test_a_killed_compare_takes_its_child_with_it(tmp_path):
    parent = subprocess.Popen([sys.executable, "-m", "gphint", "compare", "--strategies", "cmma",
                               "--guests", "1", "--guest-mem", "8M", "--duration", "600",
                               "--no-probe", "--quiet"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env_with(TMPDIR=tmp_path))
    try:
        me = psutil.Process(parent.pid)

        def strategy_child():        # not a short-lived helper the parent may also start
            for c in me.children():
                try:
                    if "--parent-pid" in c.cmdline():
                        return c
                except psutil.Error:
                    pass
        child = _wait_for(strategy_child)
        _wait_for(lambda: any("-%d-" % child.pid in n for n in _ours(tmp_path)))
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        child.wait(timeout=60)          # PR_SET_PDEATHSIG: SIGTERM, the child unwinds and exits
        assert [n for n in _ours(tmp_path) if "-%d-" % child.pid in n] == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
