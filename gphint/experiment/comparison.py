"""compare: each strategy in a fresh child process, so that every RSS baseline starts clean.

Each child runs `gphint run ... --json tmp` on this very package and dies with its parent
(child_command); one strategy's leftovers (page cache, allocator arenas) cannot be charged to
the next.
"""
import json
import os
import subprocess
import tempfile
import time

from .. import childproc, tmpfiles
from ..host import parse_strategy
from .stop import STOP, Stopped

def _child_fraction(config, elapsed_s):
    """Progress of a child by its elapsed time (what the parent can see), 0..1."""
    return min(elapsed_s / config.duration_s, 0.99)




def child_command(args):
    """argv that runs `gphint ARGS` in a child on this very gphint, as a child of this process
    (it dies with its parent: cli.child_main)."""
    return childproc.command("gphint.cli:child_main", ["--parent-pid", str(os.getpid())] + list(args))


def child_record(spec, out, returncode, err):
    """The record of one child (`gphint run` or a scale shape: a document whose `results` holds
    it): its JSON when it wrote one (a run that found integrity errors, or that wrote why it
    failed in `error`, exits 1 but its record is the evidence), else an error record with its
    last stderr line."""
    rec = None
    if os.path.exists(out):
        try:
            with open(out) as f:
                rec = json.load(f)["results"][0]
        except (OSError, ValueError, KeyError, IndexError):
            rec = None
    if rec is not None and (returncode == 0 or rec.get("integrity_errors") or rec.get("error")):
        return rec
    last = err.splitlines()[-1] if err else "exit status %d" % returncode
    return {"strategy": str(spec), "strategy_name": spec.name,
            "error": last.replace("gphint: error: ", "", 1)}


# what is kept of a child's stderr: its last line names the error, and a tail this long always
# holds it (a child may write far more: tracebacks under --debug, a warning per page)
STDERR_TAIL_BYTES = 64 << 10


def run_child(cmd, err_path, on_poll=None):
    """Run one child to its end; (exit status, the tail of its stderr).  on_poll(elapsed_s) is
    called while it runs.  The child's stderr goes to a file, not a pipe: a pipe read only
    after the child exits blocks the child for good once it has written a pipe's capacity
    (64 KiB on Linux, fs/pipe.c)."""
    with open(err_path, "w+b") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.monotonic()
        while proc.poll() is None:
            if STOP.is_set():
                proc.terminate()
                proc.wait()
                raise Stopped()
            if on_poll is not None:
                on_poll(time.monotonic() - t0)
            time.sleep(0.1)
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - STDERR_TAIL_BYTES))
        tail = err.read().decode("utf-8", "replace").strip()
    return proc.returncode, tail


def compare(config, strategies, progress=None, debug=False):
    """Each strategy in a fresh child process; returns the list of records (an error record,
    with `error`, for a strategy that failed -- the others still run)."""
    config.validate()
    specs = [parse_strategy(s) for s in strategies]
    records = []
    tmpfiles.sweep()
    with tempfile.TemporaryDirectory(prefix=tmpfiles.prefix("compare")) as tmp:
        for i, spec in enumerate(specs):
            out = os.path.join(tmp, "%d.json" % i)
            cmd = child_command((["--debug"] if debug else []) +
                                ["run", "--strategy", str(spec), "--json", out, "--quiet"] +
                                config.cli_args())
            rc, err = run_child(cmd, os.path.join(tmp, "%d.err" % i),
                                lambda s: progress and progress(i, spec, _child_fraction(config, s)))
            records.append(child_record(spec, out, rc, err))
            if progress:
                progress(i + 1, None, 0.0)
    return records
