"""What a sweep adds to each cell: process start (interpreter, numpy, gphint), the node's
`caps` probe, the record's line in the results file -- and with `--ray`, the task's dispatch
and its fresh worker process -- against the run itself.

Method: the floor is the cell's `gphint run` executed in this process (already imported), the
subject the same cell as a one-cell sweep (gphint.sweep.runner with the local backend, or a
local Ray instance); each the best of ROUNDS.  overhead = subject - floor, reported as a
fraction of the floor.  Target: under 5% of a 10 s cell locally (GPHINT_BENCH_SWEEP_S shortens
the cell for a quick check; the target is asserted only at 10 s).

extra_info: cell_s, run_s, overhead_s, overhead_fraction.
"""
import os
import tempfile
import time

import pytest

from gphint import cli
from gphint.sweep import grid as grid_mod
from gphint.sweep import runner
from gphint.sweep.local import LocalCells

CELL_S = float(os.environ.get("GPHINT_BENCH_SWEEP_S", "10"))
ROUNDS = 2
TARGET = 0.05
OPTIONS = {"strategy": "cmma", "workload": "fileserver", "guests": 1, "guest-mem": "32M",
           "duration": CELL_S, "no-probe": True}


def one_cell_grid():
    return grid_mod.parse({"seeds": [1], "fixed": {k: v for k, v in OPTIONS.items()}}, "<bench>")


def run_in_process():
    argv = ["run", "--quiet"] + grid_mod.options_argv(dict(OPTIONS, seed=1))
    t0 = time.monotonic()
    assert cli.main(argv) == 0
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def floor_s():
    return min(run_in_process() for _ in range(ROUNDS))


def sweep_once(make_backend):
    g = one_cell_grid()
    with tempfile.TemporaryDirectory(prefix="gphint-bench-sweep-") as tmp:
        backend = make_backend(tmp)
        try:
            written = runner.run(g, os.path.join(tmp, "r.jsonl"), backend, quiet=True)
        finally:
            getattr(backend, "close", lambda: None)()
    assert len(written) == 1 and not written[0].get("error"), written
    assert written[0]["integrity_errors"] == 0
    return written[0]["sweep"]["cell_wall_s"]


def _report(benchmark, cells, floor_s):
    cell_s = min(cells)
    overhead = cell_s - floor_s
    benchmark.extra_info.update(cell_s=cell_s, run_s=floor_s, overhead_s=overhead,
                                overhead_fraction=overhead / floor_s)
    return overhead / floor_s


@pytest.mark.target
def test_sweep_overhead_local(benchmark, floor_s):
    benchmark.group = "sweep overhead per cell"
    cells = []
    benchmark.pedantic(lambda: cells.append(sweep_once(lambda tmp: LocalCells(tmp))),
                       rounds=ROUNDS, iterations=1, warmup_rounds=0)
    fraction = _report(benchmark, cells, floor_s)
    if CELL_S >= 10:
        assert fraction < TARGET, "local sweep overhead %.1f%% of a %.0f s cell (target < %.0f%%)" % (
            100 * fraction, floor_s, 100 * TARGET)


def test_sweep_overhead_ray(benchmark, floor_s):
    """Reported, not a target: a Ray worker is a fresh process that imports Ray as well."""
    ray = pytest.importorskip("ray")
    from gphint.sweep.raycells import RESOURCE, RayCells
    benchmark.group = "sweep overhead per cell"
    ray.init(num_cpus=2, resources={RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        cells = []
        benchmark.pedantic(lambda: cells.append(sweep_once(lambda tmp: RayCells(None))),
                           rounds=ROUNDS, iterations=1, warmup_rounds=0)
    finally:
        ray.shutdown()
    _report(benchmark, cells, floor_s)
