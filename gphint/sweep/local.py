"""Cells on this host: each one `gphint run` in a fresh child process (a clean RSS baseline,
as `gphint compare` gives each strategy), up to `jobs` at a time.

The children are started and polled from the calling thread: the kernel's parent-death
signal that stops a child when the sweep dies follows the thread that forked it (prctl(2)
PR_SET_PDEATHSIG), and the main thread outlives every child.
"""
import os
import platform
import socket
import subprocess
import time

from .. import experiment
from ..experiment.comparison import child_record


def node_info():
    """What each record says about the machine that ran it."""
    from .. import caps
    return {"hostname": socket.gethostname(), "kernel": platform.release(),
            "caps": caps.probe().to_dict()}


def cell_command(run_argv, out, debug=False):
    """argv of one cell: `gphint run RUN_ARGV --json OUT --quiet` on this very gphint."""
    return experiment.child_command((["--debug"] if debug else []) + ["run"] + list(run_argv) +
                                    ["--json", out, "--quiet"])


def finish(strategy, out, returncode, err):
    """The cell's run record (experiment's rule: its JSON, or an error with the last stderr
    line); the cell's JSON file is removed."""
    from ..host import parse_strategy
    rec = child_record(parse_strategy(strategy), out, returncode, err)
    try:
        os.unlink(out)
    except FileNotFoundError:
        pass
    return rec


def run_cell(run_argv, tmpdir, debug=False):
    """One cell, to its end, in the calling process's child: (record, wall seconds).  What a
    Ray task runs on its node."""
    out = os.path.join(tmpdir, "cell.json")
    t0 = time.monotonic()
    with open(out + ".err", "w") as err:
        rc = subprocess.call(cell_command(run_argv, out, debug), stdout=subprocess.DEVNULL, stderr=err)
    strategy = run_argv[run_argv.index("--strategy") + 1]
    return finish(strategy, out, rc, _read_and_remove(out + ".err")), time.monotonic() - t0


def _read_and_remove(path):
    with open(path) as f:
        text = f.read().strip()
    os.unlink(path)
    return text


class Running:
    def __init__(self, cell, attempt, proc, out):
        self.cell, self.attempt, self.proc, self.out = cell, attempt, proc, out
        self.t0 = time.monotonic()


class LocalCells:
    """start(cell, attempt) / poll() -> [(cell, attempt, record, node, wall_s)] / stop()."""

    def __init__(self, tmpdir, jobs=1, debug=False):
        self.jobs, self.tmpdir, self.debug = jobs, tmpdir, debug
        self.running = []
        self._node = None
        self._n = 0

    def free_slots(self):
        return self.jobs - len(self.running)

    def start(self, cell, attempt):
        self._n += 1
        out = os.path.join(self.tmpdir, "cell-%d.json" % self._n)
        # stderr to a file, not a pipe: a chatty child never blocks on a pipe nobody drains
        with open(out + ".err", "w") as err:
            proc = subprocess.Popen(cell_command(cell.argv(), out, self.debug),
                                    stdout=subprocess.DEVNULL, stderr=err)
        self.running.append(Running(cell, attempt, proc, out))

    def poll(self, timeout=0.1):
        time.sleep(timeout)
        done = []
        for r in list(self.running):
            if r.proc.poll() is None:
                continue
            self.running.remove(r)
            err = _read_and_remove(r.out + ".err")
            if self._node is None:
                self._node = node_info()
            done.append((r.cell, r.attempt, finish(r.cell.options["strategy"], r.out, r.proc.returncode, err),
                         self._node, time.monotonic() - r.t0))
        return done

    def stop(self):
        """Stop the cells still running (SIGTERM: each stops its host and cleans up)."""
        for r in self.running:
            r.proc.terminate()
        for r in self.running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            _read_and_remove(r.out + ".err")
        self.running = []
