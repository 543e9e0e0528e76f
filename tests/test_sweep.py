"""`gphint sweep` and `gphint report` end to end: a 4-cell grid of real runs on this host
(interrupted by SIGKILL and resumed), the same grid as Ray tasks on a local Ray instance, a
failing cell, the report and its plots, and grid mistakes as one line with exit 2."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from gphint import caps, cli
from gphint.sweep import grid as grid_mod
from gphint.sweep import report as report_mod
from gphint.sweep import results as results_mod
from test_experiment import HAS_SERVICE, documented_fields

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "sweep.md")
# identical work per cell (--ops); under a budget where the discard-fault service runs (the
# smallest run that discards under pressure), else proactive mode (the pure-Python twin)
GRID = """
seeds = [1, 2]
[fixed]
workload = "fileserver"
guests = 1
guest-mem = "16M"
%s
duration = 2
ops = 200
[axes]
strategy = ["none", "cmma:batch=256"]
""" % ('host-mem = "12M"' if HAS_SERVICE else 'probe-mem = "2M"\nprobe-timeout = 0.5')
# what two runs of one cell share whatever the timing: the rest (memory figures, CPU, faults)
# depends on when the host's thread ran relative to the guests
UNTIMED = ("strategy", "strategy_name", "params", "mode", "budget_bytes", "ops", "finished_by",
           "integrity_errors", "timeline_fields", "cell")


def sweep_fields():
    """The fields a sweep adds to each record, from docs/sweep.md's table."""
    with open(DOCS) as f:
        text = f.read().split("<!-- fields: sweep -->", 1)[1].split("\n\n", 2)[1]
    return [re.match(r"\| `(\w+)`", line).group(1) for line in text.splitlines() if line.startswith("| `")]


def write(tmp_path, text, name="grid.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def check_records(records, n_cells):
    documented = set(documented_fields()["record"])
    added = set(sweep_fields())
    assert added == {"cell", "node", "sweep"}
    outcome = results_mod.outcomes(records)
    assert len(outcome) == n_cells
    for rec in outcome.values():
        assert not rec.get("error"), rec.get("error")
        assert set(rec) == documented | added, set(rec) ^ (documented | added)
        assert rec["integrity_errors"] == 0
        assert rec["strategy"] == rec["cell"]["strategy"] and rec["cell"]["seed"] in (1, 2)
        assert rec["node"]["hostname"] and rec["node"]["kernel"] == os.uname().release
        assert rec["node"]["caps"]["kernel"] == os.uname().release
        assert rec["node"]["caps"]["mechanism"] == caps.probe().mechanism
        assert {"userfaultfd", "process_madvise"} <= set(rec["node"]["caps"]["features"])
        assert rec["sweep"]["options"]["seed"] == rec["cell"]["seed"]
        assert rec["sweep"]["cell_wall_s"] > 0


def run_killed_midway(grid, results, tmp_path):
    """Start a sweep in a child, SIGKILL it once the first cell's record is on disk."""
    cmd = [sys.executable, "-m", "gphint", "sweep", grid, "--results", results, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if len(results_mod.read(results)) >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return results_mod.read(results)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The 4-cell grid on this host: killed after its first cell, then resumed to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    grid, results = write(tmp, GRID), str(tmp / "results.jsonl")
    before = run_killed_midway(grid, results, tmp)
    assert 1 <= len(before) < 4
    t0 = time.time()
    rc = cli.main(["sweep", grid, "--results", results, "--quiet", "--plot", str(tmp / "plots")])
    return dict(rc=rc, before=before, after=results_mod.read(results), tmp=tmp, grid=grid,
                results=results, resumed_at=t0)


def test_local_sweep_resumes_where_it_was_killed(local_sweep, capsys):
    assert local_sweep["rc"] == 0
    before, after = local_sweep["before"], local_sweep["after"]
    check_records(after, 4)
    # the cells finished before the kill are kept as they were, not run again
    assert after[:len(before)] == before
    keys = [json.dumps(r["cell"], sort_keys=True) for r in after]
    assert len(keys) == len(set(keys)) == 4
    grid = grid_mod.load(local_sweep["grid"])
    assert sorted(keys) == sorted(c.key for c in grid.cells)


def test_report_and_plots_render(local_sweep, capsys):
    rc = cli.main(["report", local_sweep["results"], "--plot", str(local_sweep["tmp"] / "plots2")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "cmma:batch=256" in out and "none" in out and "given back (MiB)" in out
    rep = report_mod.build(local_sweep["after"])
    rows = {r["strategy"]: r for r in rep["rows"]}
    assert set(rows) == {"none", "cmma:batch=256"} and all(r["seeds"] == [1, 2] for r in rows.values())
    # against the same cell without hints: none is exactly 1, cmma measured
    assert rows["none"]["metrics"]["throughput vs none"][0] == 1.0
    assert rows["cmma:batch=256"]["metrics"]["throughput vs none"][0] > 0
    assert rows["none"]["metrics"]["hint ops per guest op"][0] == 0
    assert rows["cmma:batch=256"]["metrics"]["hint ops per guest op"][0] > 0
    pngs = sorted(os.listdir(local_sweep["tmp"] / "plots2"))
    assert pngs == ["sweep.png"]        # nothing varies within a strategy: the overview
    assert os.path.getsize(local_sweep["tmp"] / "plots2" / "sweep.png") > 10000
    assert sorted(os.listdir(local_sweep["tmp"] / "plots")) == ["sweep.png"]


def test_a_changed_grid_is_refused_naming_the_key(local_sweep, tmp_path, capsys):
    changed = write(tmp_path, GRID.replace("ops = 200", "ops = 300"))
    rc = cli.main(["sweep", changed, "--results", local_sweep["results"], "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'ops' was 200" in err[0] and "300" in err[0], err


def test_a_failing_cell_is_recorded_retried_and_does_not_stop_the_sweep(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()                       # a directory with no files: the run itself refuses it
    grid = write(tmp_path, """
seeds = [1]
[fixed]
strategy = "cmma"
guests = 1
guest-mem = "16M"
duration = 0.5
no-probe = true
[axes]
files = ["%s", "%s"]
""" % (empty, os.path.dirname(os.path.abspath(__file__))))
    results = str(tmp_path / "r.jsonl")
    rc = cli.main(["sweep", grid, "--results", results, "--quiet", "--jobs", "2"])
    captured = capsys.readouterr()
    recs = results_mod.read(results)
    assert rc == 1
    assert "--jobs 2 runs 2 cells at once" in captured.err and "disturb" in captured.err
    failed = [r for r in recs if r.get("error")]
    assert [r["sweep"]["attempt"] for r in failed] == [1, 2]
    assert all("holds no readable regular files" in r["error"] for r in failed)
    assert all(r["cell"]["files"] == str(empty) for r in failed)
    ok = [r for r in recs if not r.get("error")]
    assert len(ok) == 1 and ok[0]["integrity_errors"] == 0
    assert "FAILED" in captured.out and "holds no readable regular files" in captured.out


@pytest.mark.parametrize("text, words", [
    ("[fixed]\nbogus = 1\n[axes]\nstrategy = ['none']", ["fixed", "'bogus'"]),
    ("[axes]\nstrategy = ['cmma:bogus=1']", ["axes.strategy", "'bogus'", "valid keys"]),
    ("[axes]\nstrategy = ['none']\n[axes.cmma]\nbogus = [1]", ["axes.cmma.bogus", "'bogus'"]),
    ("[axes]\nstrategy = ['none']\nguests = []", ["axes.guests", "empty"]),
    ("[axes]\nstrategy = []", ["axes.strategy", "empty"]),
    ("[fixed]\nguests = 'two'\n[axes]\nstrategy = ['none']", ["fixed.guests", "'two'", "integer"]),
    ("[fixed]\nduration = 'soon'\n[axes]\nstrategy = ['none']", ["fixed.duration", "number"]),
    ("[fixed]\nno-probe = 1\n[axes]\nstrategy = ['none']", ["fixed.no-probe", "true or false"]),
    ("[fixed]\nguest-mem = '12Q'\n[axes]\nstrategy = ['none']", ["--guest-mem", "'12Q'"]),
    ("[axes]\nstrategy = ['none']\n[axes.cmma]\nbatch = [3]", ["axes.cmma", "batch", "'3'"]),
    ("seeds = 'many'\n[axes]\nstrategy = ['none']", ["seeds", "'many'"]),
    ("[fixed]\nseed = 3\n[axes]\nstrategy = ['none']", ["'seed'", "seeds"]),
    ("[fixed]\nworkload = 'fileserver'", ["no strategy"]),
    ("[axes]\nstrategy = ['none'", ["not valid TOML"]),
])
def test_grid_mistakes_are_one_line_naming_the_key(tmp_path, capsys, text, words):
    rc = cli.main(["sweep", write(tmp_path, text), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    for w in words:
        assert w in err[0], err
    assert not os.path.exists(tmp_path / "r.jsonl")


def test_presets_are_valid_grids():
    names = grid_mod.presets()
    assert {"batching", "reporting", "proactive"} <= set(names)
    for name in names:
        g = grid_mod.load(grid_mod.preset_path(name))
        assert len(g.cells) >= 10
    batching = grid_mod.load(grid_mod.preset_path("batching"))
    assert {"cmma:batch=1,submit=per_page", "cmma:batch=4096", "none", "cmma:host_batch=4096"} <= \
        set(batching.axes["strategy"])


def test_report_shows_integrity_errors_first_and_loudly(tmp_path, capsys):
    """A results file in which one cell lost pages (a record as a broken build would write it)."""
    rec = {"strategy": "cmma", "strategy_name": "cmma", "params": {"batch": 32}, "mode": "pressure",
           "host_saved_bytes": 1 << 20, "guest_touched_bytes": 2 << 20, "host_cpu_s": 0.1,
           "discarded_bytes": 1 << 20, "discard_syscalls": 4, "hint_ops": 10, "ops": 100,
           "ops_per_s": 50.0, "host_swap_out_bytes": 0, "host_swap_in_bytes": 0, "discard_faults": 0,
           "integrity_errors": 0, "host": {}}
    lines = [dict(rec, cell={"strategy": "cmma", "seed": 1}),
             dict(rec, strategy="cmma:batch=256", params={"batch": 256}, integrity_errors=7,
                  cell={"strategy": "cmma:batch=256", "seed": 1})]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rc = cli.main(["report", str(path)])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.startswith("!!! INTEGRITY ERRORS in 1 cell(s)") and "7 pages" in captured.err
    table = captured.out.splitlines()
    assert table[2].startswith("cmma:batch=256")      # the cell that lost pages comes first


def test_ray_missing_and_bad_address_are_one_line(tmp_path, capsys, monkeypatch):
    grid = write(tmp_path, "[fixed]\nguests = 1\nguest-mem = '16M'\n[axes]\nstrategy = ['none']")
    rc = cli.main(["sweep", grid, "--results", str(tmp_path / "r.jsonl"), "--ray", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    if "not installed" in "".join(err):
        pytest.skip("ray is not installed")
    assert rc == 2 and len(err) == 1 and "127.0.0.1:1" in err[0] and "no Ray cluster" in err[0], err
    rc = cli.main(["sweep", grid, "--results", str(tmp_path / "r.jsonl"), "--ray", "nosuch.invalid:6379"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot resolve nosuch.invalid" in err[0], err
    monkeypatch.setitem(sys.modules, "ray", None)        # what `import ray` meets without it
    rc = cli.main(["sweep", grid, "--results", str(tmp_path / "r.jsonl"), "--ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install 'gphint[ray]'" in err[0], err


def test_a_node_without_gphint_says_so(tmp_path):
    """The task Ray ships (by value) run by a Python that has no gphint: the system's, -I."""
    from gphint.sweep import raytask
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('raytask', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(json.dumps(m.run_cell(['--strategy', 'none'], False)))\n")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    r = subprocess.run([python, "-I", "-c", code, raytask.__file__], capture_output=True, text=True,
                       cwd=str(tmp_path), timeout=60)
    if r.returncode == 0 and "error" not in r.stdout:
        pytest.skip("%s has gphint installed" % python)
    rec, node, _ = json.loads(r.stdout)
    assert "has no gphint" in rec["error"] and node["hostname"] in rec["error"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs, one gphint node) for the module."""
    if os.environ.get("GPHINT_REQUIRE_RAY") != "1":
        pytest.importorskip("ray", reason="pip install '.[ray]' for the Ray tests")
    import ray
    for attempt in (1, 2):      # Ray gives its raylet 30 s to start, which a loaded machine misses
        try:
            ray.init(num_cpus=2, resources={"gphint_node": 1}, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


def test_the_same_grid_on_a_local_ray_instance(local_sweep, local_ray, tmp_path, capsys):
    results = str(tmp_path / "ray.jsonl")
    rc = cli.main(["sweep", local_sweep["grid"], "--results", results, "--quiet", "--ray"])
    assert rc == 0, capsys.readouterr().err
    check_records(results_mod.read(results), 4)
    here = results_mod.outcomes(local_sweep["after"])
    there = results_mod.outcomes(results_mod.read(results))
    assert set(here) == set(there)
    for key, rec in there.items():
        assert set(rec) == set(here[key])
        for field in UNTIMED:
            assert rec[field] == here[key][field], field
        assert rec["sweep"]["options"] == here[key]["sweep"]["options"]
        # the same machine, probed by the task (details such as free space may move)
        assert {k: rec["node"][k] for k in ("hostname", "kernel")} == \
            {k: here[key]["node"][k] for k in ("hostname", "kernel")}
        assert rec["node"]["caps"]["mechanism"] == here[key]["node"]["caps"]["mechanism"]
        assert set(rec["node"]["caps"]["features"]) == set(here[key]["node"]["caps"]["features"])
    # a Ray task is a fresh worker process: the run's RSS baseline is a fresh interpreter's too
    for key, rec in there.items():
        assert rec["rss_baseline_bytes"] < 2 * here[key]["rss_baseline_bytes"]
