"""A sweep's results file: JSON lines, one per finished attempt of a cell, appended as cells
finish (flushed and fsynced, so an interrupted sweep loses at most the cells still running).

Each line is the documented run record (docs/results.md) plus `cell` (its coordinates,
`seed` included), `node` (hostname, kernel, `gphint caps` of the machine that ran it) and
`sweep` (grid digest, the cell's full options, attempt number, the cell's wall time).  A
failed attempt is a line with `error`.  The last line of a cell is its outcome: resuming skips
cells whose last line has no error and runs the others again.
"""
import json
import os

from .. import outputs
from ..errors import ConfigError


def read(path):
    """The records of a results file, in order ([] when it does not exist yet).  A torn last
    line (the sweep was killed mid-write) is ignored."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ConfigError("%s line %d is not JSON: not a sweep results file" % (path, i + 1)) from None
        if not isinstance(rec, dict) or "cell" not in rec:
            raise ConfigError("%s line %d has no `cell`: not a sweep results file" % (path, i + 1))
        records.append(rec)
    return records


def outcomes(records):
    """{cell key: the cell's last record}."""
    last = {}
    for rec in records:
        last[json.dumps(rec["cell"], sort_keys=True)] = rec
    return last


def check_resumable(path, grid, records):
    """Refuse a results file written by a different grid, naming what changed; returns the
    keys of the cells already done."""
    by_key = {c.key: c for c in grid.cells}
    done = set()
    for key, rec in outcomes(records).items():
        cell = by_key.get(key)
        if cell is None:
            raise ConfigError("%s has cell %s, which grid %s does not: the grid changed (use a new "
                              "--results file, or restore the grid)" % (path, key, grid.path))
        before = (rec.get("sweep") or {}).get("options", {})
        changed = sorted(k for k in set(before) | set(cell.options) if before.get(k) != cell.options.get(k))
        if changed:
            k = changed[0]
            raise ConfigError("%s was written by a different grid: %r was %r, grid %s now gives %r "
                              "(use a new --results file, or restore the grid)"
                              % (path, k, before.get(k), grid.path, cell.options.get(k)))
        if not rec.get("error"):
            done.add(key)
    return done


class Writer:
    """Appends one JSON line per record, durable before the next cell is reported done."""

    def __init__(self, path):
        outputs.target_of(path, "--results")
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self._f = open(path, "a+")
        if self._f.tell() > 0:          # after a torn last line, start a line of our own
            self._f.seek(self._f.tell() - 1)
            if self._f.read(1) != "\n":
                self._f.write("\n")

    def write(self, record):
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        self._f.close()
