"""Run a grid's cells on a backend (gphint.sweep.local or gphint.sweep.raycells), streaming
each attempt's record into the results file as it finishes.

A failed cell is recorded with its reason and queued for one more attempt after the cells
not yet tried; a sweep resumed later runs every cell whose last record is a failure again.
"""
import collections
import json
import time

from .. import experiment
from ..progress import Bar
from . import results as results_mod

ATTEMPTS = 2            # a failed cell is retried once


def record_of(cell, attempt, rec, node, wall_s, digest):
    """The run record plus the sweep's own fields (gphint.sweep.results)."""
    out = dict(rec)
    out["cell"] = dict(cell.coords)
    out["node"] = node
    out["sweep"] = {"grid_digest": digest, "options": dict(cell.options), "attempt": attempt,
                    "cell_wall_s": round(wall_s, 3)}
    return out


def todo(grid, done):
    return [c for c in grid.cells if c.key not in done]


class Progress:
    """The bar over the cells this invocation runs, with the cells done in its description."""

    def __init__(self, total, quiet):
        self.total, self.done = total, 0
        self.bar = Bar("sweep 0/%d cells" % total, quiet)

    def cell_done(self):
        self.done += 1
        self.bar.describe("sweep %d/%d cells" % (self.done, self.total))
        self.bar.update_to(100.0 * self.done / max(1, self.total))

    def close(self):
        self.bar.close()


def run(grid, path, backend, quiet=False, on_record=None):
    """Runs the cells not yet done; returns the records written by this invocation."""
    writer = results_mod.Writer(path)
    done = results_mod.check_resumable(path, grid, results_mod.read(path))
    queue = collections.deque((c, 1) for c in todo(grid, done))
    progress = Progress(len(queue), quiet)
    written = []
    try:
        while queue or backend.running:
            while queue and backend.free_slots() > 0:
                backend.start(*queue.popleft())
            for cell, attempt, rec, node, wall_s in backend.poll():
                full = record_of(cell, attempt, rec, node, wall_s, grid.digest())
                writer.write(full)
                written.append(full)
                if rec.get("error") and attempt < ATTEMPTS:
                    queue.append((cell, attempt + 1))
                else:
                    progress.cell_done()
                if on_record:
                    on_record(full)
            if experiment.STOP.is_set():
                raise experiment.Stopped()
    finally:
        backend.stop()
        progress.close()
        writer.close()
    return written


def summary_line(grid, path, written, started):
    failed = [r for r in written if r.get("error") and r["sweep"]["attempt"] == ATTEMPTS]
    ran = len({json.dumps(r["cell"], sort_keys=True) for r in written})
    return "sweep: %d cells run in %.0f s (%d failed twice); %d of the grid's %d cells done in %s" % (
        ran, time.monotonic() - started, len(failed), len(grid.cells) - len(todo_after(grid, path)),
        len(grid.cells), path)


def todo_after(grid, path):
    recs = results_mod.outcomes(results_mod.read(path))
    return [c for c in grid.cells if c.key not in recs or recs[c.key].get("error")]
