"""A run inside a memory cgroup, with what it changed on the machine always undone.

Charges do not follow a task into a cgroup, so a run that the kernel should budget must start
inside it: `run_contained` (the process the user started, outside the cgroup) makes the cgroup,
enables a swap area when the `kernel` peer needs one, and starts the real run as a child that
enters the cgroup between fork and exec.  The child learns its cgroup from GPHINT_CGROUP.

Cleanup holds after a normal run, a failed run and kill -9:
  - the child has PR_SET_PDEATHSIG(SIGKILL): it dies with this process;
  - a reaper (`reap_main`, started through gphint.childproc; its own session, so a terminal's
    ^C does not reach it) blocks on a pipe whose only writer is this process: when this process
    ends, however it ends, the pipe reads EOF and the reaper kills what is left in the cgroup,
    removes it, and swapoffs and unlinks the swap file.  Cleanup is idempotent, so the normal
    path does it itself and the reaper then finds nothing to do;
  - names carry the owner's pid and start time: a later run removes what a dead owner left
    (should the reaper itself have been killed) and never touches a live run's.
"""
import ctypes
import json
import os
import signal
import subprocess
import re
import shutil
import sys
import tempfile

from .. import childproc, tmpfiles
from ..errors import Unsupported
from . import cgroup as cgroup_mod
from . import swaparea

ENV = "GPHINT_CGROUP"
PR_SET_PDEATHSIG = 1
SWAP_SLACK_BYTES = 32 << 20
MAX_SWAP_AREA_BYTES = 512 << 20
RUNDIR_RE = re.compile(r"^gphint-run-(\d+)-(\d+)-\w+$")


def inside():
    """The cgroup this process was started in by run_contained, or None."""
    val = os.environ.get(ENV)
    if not val:
        return None
    version, _, path = val.partition(":")
    return cgroup_mod.MemoryCgroup.attach(version, path)


def wanted(config, spec):
    """Should this run be contained?  Under a budget, when not contained already.  Raises
    Unsupported for the kernel peer when no memory cgroup can be had (without one there is
    no budget at all)."""
    if config.host_mem_bytes is None or os.environ.get(ENV):
        if spec.name == "kernel" and config.host_mem_bytes is None:
            from ..errors import ConfigError
            raise ConfigError("strategy kernel needs --host-mem (the budget its memory cgroup "
                              "enforces)")
        return False
    if spec.name != "kernel":
        from .hostswap import fault_service_available
        if not fault_service_available()[0]:
            return False     # the run itself will refuse, naming why: no cgroup to make first
    version, _, why = cgroup_mod.detect()
    if version is None or os.geteuid() != 0:
        if spec.name == "kernel":
            raise Unsupported("strategy kernel", why or "creating a memory cgroup needs root",
                              "run as root on a machine with the memory cgroup controller")
        return False
    return True


def swap_area_bytes(config):
    """Enough for what the guests can hold above the budget, and no more: a swap area is seen
    by the whole machine, so it is capped (MAX_SWAP_AREA_BYTES) however large the guests."""
    total = config.guests * config.guest_mem_bytes
    want = total - config.host_mem_bytes + SWAP_SLACK_BYTES
    return max(swaparea.MIN_BYTES, min(want, MAX_SWAP_AREA_BYTES))


def clean_stale(directory=None):
    """What dead runs left: cgroups, swap files and run directories of owners that are gone."""
    removed, kept = cgroup_mod.clean_stale()
    removed += swaparea.clean_stale(directory)
    directory = directory or tempfile.gettempdir()
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        m = RUNDIR_RE.match(name)
        if m and not tmpfiles.owner_alive(int(m.group(1)), int(m.group(2))):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(os.path.join(directory, name))
    for path, why in kept:
        print("gphint: stale memory cgroup %s left in place: %s" % (path, why), file=sys.stderr)
    return removed


def _swap_area(config, spec):
    """The kernel's last resort at the cgroup's limit is swapping, as on a real host: without a
    swap area it could only OOM-kill the run.  The kernel peer cannot do without one; for the
    others (whose own loop acts first) a swap area is enabled when it can be, and
    `kernel_swap_out_bytes` shows whether the kernel ever had to use it."""
    try:
        return swaparea.SwapArea(swap_area_bytes(config))
    except Unsupported:
        if spec.name == "kernel":
            raise
        return None


def _enter(cg, parent_pid):
    libc = ctypes.CDLL(None, use_errno=True)
    enter = cg.preexec()

    def child():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:     # the parent died before prctl took effect
            os._exit(1)
        enter()
    return child


def _start_reaper(cg, swap_path, rundir):
    r, w = os.pipe()
    cmd = childproc.command("gphint.host.sandbox:reap_main", [
        "--reap", json.dumps({"cgroup": [cg.version, cg.path], "swap": swap_path, "rundir": rundir})])
    proc = subprocess.Popen(cmd, stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    os.close(r)
    os.set_inheritable(w, False)
    return proc, w


def run_contained(config, spec, argv):
    """Run `python -m gphint <argv>` inside a fresh memory cgroup (and, for the kernel peer,
    with a swap area); returns its exit status."""
    clean_stale()
    cg = cgroup_mod.MemoryCgroup.create(spec.name)
    area, reaper, wfd = None, None, None
    # the run's own TMPDIR (generated files, guest swap): a kill -9 cannot leave them behind
    rundir = tempfile.mkdtemp(prefix="gphint-run-%d-%d-" % (os.getpid(),
                                                            tmpfiles.start_ticks(os.getpid())))
    try:
        if not swaparea.lasting_areas():
            area = _swap_area(config, spec)
        reaper, wfd = _start_reaper(cg, area.path if area else None, rundir)
        env = dict(os.environ)
        env[ENV] = "%s:%s" % (cg.version, cg.path)
        env["TMPDIR"] = rundir
        if area is not None:
            env["GPHINT_SWAP_AREA"] = area.path
        proc = subprocess.Popen(childproc.command("gphint.cli:child_main",
                                                  ["--parent-pid", str(os.getpid())] + list(argv)),
                                env=env, preexec_fn=_enter(cg, os.getpid()))
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        if rc < 0:
            sig = -rc
            # SIGKILL is also what anyone's kill -9 sends: the cgroup's OOM count tells them apart
            why = ("killed by the kernel's OOM killer in its memory cgroup"
                   if sig == signal.SIGKILL and _oom_kills(cg) else "killed by signal %d" % sig)
            print("gphint: error: strategy %s was %s (%s)" % (spec, why, cg.path), file=sys.stderr)
            rc = 1
        return rc
    finally:
        cg.kill_all()
        cg.remove()
        if area is not None:
            area.close()
        shutil.rmtree(rundir, ignore_errors=True)
        if wfd is not None:
            os.close(wfd)        # the reaper reads EOF, finds nothing left, exits
        if reaper is not None:
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _oom_kills(cg):
    try:
        return cg.sample()["oom_kills"]
    except (OSError, ValueError):
        return 0


def reap(spec):
    """The reaper: wait for the owner to end (EOF on stdin), then undo what it set up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    version, path = spec["cgroup"]
    cg = cgroup_mod.MemoryCgroup.attach(version, path)
    if os.path.isdir(path):
        cg.kill_all()
        cg.remove(timeout_s=60.0)
    if spec.get("swap"):
        swaparea.disable(spec["swap"])
    if spec.get("rundir"):
        shutil.rmtree(spec["rundir"], ignore_errors=True)


def reap_main():
    """Entry point of the reaper child (gphint.childproc.command): `--reap JSON`."""
    if len(sys.argv) == 3 and sys.argv[1] == "--reap":
        reap(json.loads(sys.argv[2]))
        return 0
    print("usage: gphint.host.sandbox --reap JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(reap_main())
