"""512 guests in the 1024 open files of `ulimit -n 1024` (soft = hard, as a stock user has):
a guest holds no fd between operations (its file and swap I/O lease them from one pool,
gphint.guest.fdpool), so the fleet runs to the end with every byte; a fleet that cannot fit is
refused before it starts, in one line that says how to raise the limit -- never EMFILE half-way.
Each run is a child with the limit set in preexec_fn: this process's own limit is untouched."""
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOFILE = 1024
FLEET = 512


def limited(nofile):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return set_limit


def run_child(cmd, tmp_path, nofile=NOFILE, timeout=900, env=None):
    env = dict(os.environ if env is None else env, TMPDIR=str(tmp_path))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                          preexec_fn=limited(nofile), timeout=timeout)


def gphint(*args):
    return [sys.executable, "-m", "gphint"] + list(args)


def _assert_run_ok(p, out):
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Too many open files" not in p.stderr
    rec = json.loads(out.read_text())["results"][0]
    assert rec["integrity_errors"] == 0 and rec["ops"] > 0, rec
    return rec


def test_512_guests_run_under_ulimit_n_1024(tmp_path):
    out = tmp_path / "run.json"
    p = run_child(gphint("run", "--strategy", "cmma", "--guests", str(FLEET), "--guest-mem", "1M",
                         "--duration", "2", "--quiet", "--json", str(out)), tmp_path)
    _assert_run_ok(p, out)


def _unprivileged_python(work):
    """argv prefix running this tree's gphint as the user `nobody`, or None where this machine
    cannot: not root, no runuser or nobody, or no interpreter nobody may execute with this
    one's packages (a system Python of the same version).  Where this interpreter's packages
    sit under a directory nobody may not read (a pyenv under /root), the ones gphint imports
    are copied into `work` first."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return None
    import site
    python = shutil.which("python%d.%d" % sys.version_info[:2], path="/usr/bin:/usr/local/bin")
    if python is None:
        return None

    def probe(paths):
        cmd = ["runuser", "-u", "nobody", "--", "env", "PYTHONPATH=" + os.pathsep.join(paths), python]
        r = subprocess.run(cmd + ["-c", "import gphint, numpy, psutil"], capture_output=True,
                           text=True, cwd="/", timeout=120)
        return cmd if r.returncode == 0 else None

    sites = site.getsitepackages()
    cmd = probe([ROOT] + sites)
    if cmd is None:
        staged = work / "site"
        for src in _installed_packages_a_run_imports(sites):
            for extra in (src, src + ".libs"):     # numpy's wheel keeps its libraries beside it
                if os.path.isdir(extra):
                    shutil.copytree(extra, staged / os.path.basename(extra), dirs_exist_ok=True)
                elif os.path.isfile(extra):
                    staged.mkdir(exist_ok=True)
                    shutil.copy(extra, staged)
        for d in [staged] + [p for p in staged.rglob("*") if p.is_dir()]:
            os.chmod(d, 0o755)
        cmd = probe([ROOT, str(staged)])
    return cmd


def _installed_packages_a_run_imports(sites):
    """Top-level packages (directories or single modules) from `sites` that `gphint run`'s
    modules import, found by importing them in a child."""
    code = textwrap.dedent("""
        import os, sys
        import gphint.cli, gphint.progress, gphint.experiment, gphint.host, gphint.faults
        sites = sys.argv[1:]
        for m in list(sys.modules.values()):
            f = getattr(m, "__file__", None) or ""
            for s in sites:
                if f.startswith(s + os.sep):
                    top = f[len(s) + 1:].split(os.sep)[0]
                    print(os.path.join(s, top))
    """)
    r = subprocess.run([sys.executable, "-c", code] + sites, capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    return sorted(set(r.stdout.split())) if r.returncode == 0 else []


def test_512_guests_run_as_an_unprivileged_user_under_ulimit_n_1024():
    # pytest's tmp_path sits under a root-only directory: the user needs one it can reach
    work = pathlib.Path(tempfile.mkdtemp(prefix="gphint-nobody-"))
    try:
        os.chmod(work, 0o1777)
        cmd = _unprivileged_python(work)
        if cmd is None:
            pytest.skip("no way to run this tree as the unprivileged user nobody here")
        out = work / "run.json"
        p = run_child(cmd + ["-m", "gphint", "run", "--strategy", "cmma", "--guests", str(FLEET),
                             "--guest-mem", "1M", "--duration", "2", "--quiet", "--json", str(out)],
                      work)
        _assert_run_ok(p, out)
        assert os.stat(out).st_uid != 0          # it really ran as another user
    finally:
        shutil.rmtree(work, ignore_errors=True)


LEAK_SCRIPT = textwrap.dedent("""
    import gc, json, os
    from gphint.guest.files import FileSet
    from gphint.guest.guest import Guest
    from gphint.host.hostswap import fault_service_available
    from gphint.stores import open_fds

    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    def tmp_entries():
        return sorted(os.listdir(os.environ["TMPDIR"]))

    def service():
        if not fault_service_available()[0]:
            return None
        from gphint.faults import FaultService
        return FaultService()

    # what a process opens once for good (its pidfd for process_madvise) opens before the count
    svc = service()
    warm = Guest("1M", seed=1, fault_service=svc, workload="mixed")
    warm.step(16)
    warm.close()
    if svc is not None:
        svc.stop()
    fds0, maps0, files0 = open_fds(), maps(), tmp_entries()
    svc = service()
    tree = FileSet(None, seed=1, total_bytes=2 << 20)
    guests = [Guest("1M", files=tree.root, seed=1 + i, fault_service=svc, workload="mixed")
              for i in range(%(n)d)]
    peak = open_fds()
    for _ in range(3):
        for g in guests:
            g.step(16)
        peak = max(peak, open_fds())
    bad = sum(g.verify() for g in guests)
    ops = sum(g.stats["ops"] for g in guests)
    refused = sum(g.stats["stores_refused"] for g in guests)
    if svc is not None:
        svc.check()
    for g in guests:
        g.close()
    tree.close()
    if svc is not None:
        svc.stop()
    del guests, g
    gc.collect()
    print(json.dumps({"peak": peak, "bad": bad, "ops": ops, "refused": refused,
                      "fds": [fds0, open_fds()], "maps": [maps0, maps()],
                      "files": [files0, tmp_entries()], "service": svc is not None}))
""")


def test_512_guests_fit_and_leave_nothing_behind(tmp_path):
    """The fleet never nears the limit, loses nothing, and after close no fd, file or mapping
    of it is left (/proc/self/fd, TMPDIR, /proc/self/maps)."""
    p = run_child([sys.executable, "-c", LEAK_SCRIPT % {"n": FLEET}], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bad"] == 0 and r["ops"] > 0
    assert r["service"] == (os.environ.get("GPHINT_PUREPYTHON") != "1")
    assert r["peak"] < NOFILE - 64, r["peak"]      # the reserve the process keeps stays free
    assert r["fds"][1] == r["fds"][0], r["fds"]
    assert r["files"][1] == r["files"][0], r["files"]
    # the allocator's arenas may keep a few mappings; a guest's would be hundreds
    assert r["maps"][1] <= r["maps"][0] + 16, r["maps"]


@pytest.mark.parametrize("command", [
    ["run", "--strategy", "cmma", "--guests", "1100", "--guest-mem", "1M", "--duration", "1"],
    ["compare", "--strategies", "none,cmma", "--guests", "1100", "--guest-mem", "1M", "--duration", "1"],
    ["scale", "--guests", "8,1100", "--guest-mem", "4M", "--strategies", "cmma"],
])
def test_a_fleet_too_large_for_the_limit_is_refused_up_front(tmp_path, command):
    p = run_child(gphint(*command, "--quiet"), tmp_path, timeout=120)
    assert p.returncode == 2, (p.stdout[-2000:], p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert "1100" in line and "RLIMIT_NOFILE is %d" % NOFILE in line and "ulimit -n" in line, line
    assert "Traceback" not in p.stderr and "Too many open files" not in p.stderr
    assert not os.listdir(tmp_path)           # refused before it wrote anything


def test_closing_guests_of_a_users_tree_leaves_none_of_its_fds_open(tmp_path):
    """A tree the user gave (files=DIR) outlives its guests: closing them still closes every fd
    the pool opened for it."""
    from gphint.guest.fdpool import POOL
    from gphint.guest.guest import Guest
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(8):
        (tree / ("f%d" % i)).write_bytes(bytes([i]) * (64 << 10))

    def tree_fds():
        out = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                out += os.readlink("/proc/self/fd/" + fd).startswith(str(tree))
            except OSError:
                pass
        return out

    guests = [Guest("2M", files=str(tree), seed=i, workload="fileserver") for i in range(3)]
    for g in guests:
        g.step(40)
    assert POOL.stats["opened"] > 0
    for g in guests:
        assert g.verify() == 0
        g.close()
    assert tree_fds() == 0


def test_a_path_deleted_and_created_again_is_read_as_the_new_file(tmp_path):
    """The pool keys fds by path: reusing one after the path was replaced would read the old,
    unlinked inode.  The new file's bytes come back, idle or leased meanwhile."""
    from gphint.guest.fdpool import FdPool
    pool = FdPool(capacity=8)
    p = tmp_path / "f"
    p.write_bytes(b"old" * 1000)
    with pool.lease(p, os.O_RDONLY) as fd:
        assert os.pread(fd, 3, 0) == b"old"
    os.unlink(p)
    p.write_bytes(b"new" * 1000)
    with pool.lease(p, os.O_RDONLY) as fd:
        assert os.pread(fd, 3, 0) == b"new"
        os.unlink(p)                                   # replaced while this lease holds the old
        p.write_bytes(b"3rd" * 1000)
        with pool.lease(p, os.O_RDONLY) as fd2:
            assert fd2 != fd and os.pread(fd2, 3, 0) == b"3rd"
        assert os.pread(fd, 3, 0) == b"new"            # the lease's own fd stays valid
    assert pool.stats["stale"] == 2 and pool.open_count() == 1
    os.unlink(p)
    with pytest.raises(OSError):                       # gone: an error, not the old bytes
        with pool.lease(p, os.O_RDONLY):
            pass
    assert pool.open_count() == 0
