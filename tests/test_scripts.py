"""scripts/ are runnable tools: run each as a user would, on real inputs."""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPTS = os.path.join(ROOT, "scripts")


def script(name, *args, timeout=120, **kw):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name)] + list(args),
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_every_script_has_a_docstring_with_sample_output():
    for name in ("bench_tables.py", "watch.py", "balloon_latency.py", "hint_instructions.py", "bench_all",
                 "scale_tables.py", "minor_faults.py", "thp_guests.py", "discard_list.py"):
        text = open(os.path.join(SCRIPTS, name)).read()
        assert text.startswith("#!/usr/bin/env python3\n\"\"\"") and "Sample output" in text
        assert os.access(os.path.join(SCRIPTS, name), os.X_OK)
        assert script(name, "--help").returncode == 0


def test_bench_tables_renders_real_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, GPHINT_BENCH_MB="8")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "bench", "bench_guest_hints.py"), "-k",
                        "guest_free_hints and (batch32 or nohints)", "--benchmark-json", str(out)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    r = script("bench_tables.py", str(out))
    assert r.returncode == 0, r.stderr
    assert "### guest hints 8 MiB" in r.stdout
    rows = [l for l in r.stdout.splitlines() if l.startswith("| test_guest_free_hints")]
    assert len(rows) == 2
    saved = json.loads(out.read_text())["benchmarks"]
    ns = {b["name"]: b["extra_info"]["ns_per_page"] for b in saved}
    for row in rows:                                    # the numbers are the saved ones
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[4]) == float("%.3g" % ns[cells[0]]) or \
            float(cells[4]) == round(ns[cells[0]])

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:guest hints 8 MiB -->\nold\n<!-- /bench:guest hints 8 MiB -->\nend\n")
    r = script("bench_tables.py", str(out), "--group", "guest hints 8 MiB", "--write", str(readme))
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "test_guest_free_hints[batch32]" in text

    r = script("bench_tables.py", str(out), "--group", "nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr and len(r.stderr.splitlines()) == 1
    r = script("bench_tables.py", str(out), "--group", "guest hints 8 MiB", "--write",
               str(tmp_path / "bench.json"))
    assert r.returncode == 2 and "markers" in r.stderr


def test_watch_follows_a_running_experiment(tmp_path):
    status = tmp_path / "status.json"
    run = subprocess.Popen([sys.executable, "-m", "gphint", "run", "--strategy", "cmma",
                            "--guests", "2", "--guest-mem", "16M", "--duration", "2",
                            "--no-probe", "--quiet", "--status", str(status)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        r = script("watch.py", str(status), "--interval", "0.2", timeout=60)
    finally:
        assert run.wait(timeout=60) == 0, run.stderr.read()
    assert r.returncode == 0, r.stderr
    snapshots = r.stdout.count("process RSS")
    assert snapshots >= 2                               # it refreshed while the run went on
    last = r.stdout.split("cmma  proactive")[-1]
    assert "(done)" in last and "g0" in last and "g1" in last and "fileserver" in last
    # the view's numbers are the run's own: total residency matches the snapshot file
    snap = json.loads(status.read_text())
    total = sum(g["resident_bytes"] for g in snap["guests"]) / (1 << 20)
    assert "all guests resident %.1f MiB" % total in last


def test_watch_without_a_run_is_one_line_exit_2(tmp_path):
    t0 = time.monotonic()
    r = script("watch.py", str(tmp_path / "none.json"), "--wait", "0.3")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "--status" in r.stderr
    assert time.monotonic() - t0 < 10


def test_bench_tables_renders_a_results_file(tmp_path):
    """A `gphint compare --json` file becomes its comparison table (group = file name)."""
    from gphint.experiment import RunConfig, results_document, run_one, write_json
    cfg = RunConfig(guests=1, guest_mem_bytes=16 << 20, duration_s=0.5, probe=False)
    path = str(tmp_path / "mini.json")
    write_json(path, results_document(cfg, [run_one(cfg, "unused")]))
    r = script("bench_tables.py", path, "--group", "mini")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "### mini" and "proactive mode, 1 x 16.0 MiB guests" in r.stdout
    assert any(l.startswith("| unused |") for l in lines)


def test_balloon_latency_sweep(tmp_path):
    from gphint.host.hostswap import fault_service_available
    out = tmp_path / "bl.json"
    r = script("balloon_latency.py", "--guests", "2,3", "--ops", "2000", "--json", str(out))
    if not fault_service_available()[0]:
        # the sweep runs under a budget: without the fault service it must say why, in a line
        assert r.returncode == 2 and "host swap" in r.stderr and len(r.stderr.splitlines()) == 1
        return
    assert r.returncode == 0, r.stderr
    docs = json.loads(out.read_text())
    rows = [l for l in r.stdout.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [l.split("|")[1].strip() for l in rows] == ["2", "3"]
    for row, doc in zip(rows, docs):
        cells = [c.strip() for c in row.strip("|").split("|")]
        rec = doc["results"][0]
        assert rec["strategy"] == "balloon" and rec["integrity_errors"] == 0
        assert int(cells[1]) == doc["config"]["workload"].count("idle") == int(cells[0]) - 1
        assert int(cells[2]) == rec["host"]["balloon_requests"]
    r = script("balloon_latency.py", "--guests", "1")
    assert r.returncode == 2 and "--guests" in r.stderr and len(r.stderr.splitlines()) == 1


def test_watch_follows_a_comparison_from_strategy_to_strategy(tmp_path):
    status = tmp_path / "status.json"
    cmp = subprocess.Popen([sys.executable, "-m", "gphint", "compare", "--strategies", "none,unused",
                            "--guests", "1", "--guest-mem", "16M", "--duration", "1.5", "--no-probe",
                            "--quiet", "--status", str(status)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "watch.py"), str(status),
                              "--follow", "--interval", "0.2"], stdout=subprocess.PIPE, text=True)
    try:
        assert cmp.wait(timeout=120) == 0
        time.sleep(0.5)
    finally:
        watch.terminate()
        out = watch.communicate(timeout=30)[0]
    assert "none  proactive" in out and "unused  proactive" in out


def test_hint_instructions_refuses_bad_input_in_one_line(tmp_path):
    r = script("hint_instructions.py", "--configs", "off,batch7")
    assert r.returncode == 2 and "'batch7'" in r.stderr and "Traceback" not in r.stderr
    r = script("hint_instructions.py", "--ops", "0")
    assert r.returncode == 2 and "--ops" in r.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    r = script("hint_instructions.py", env=dict(os.environ, PATH=str(empty)))
    assert r.returncode == 2 and "valgrind is not on PATH" in r.stderr


def test_hint_instructions_counts_a_real_guest_under_callgrind(tmp_path):
    import shutil
    import pytest
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:hint instructions -->\nold\n<!-- /bench:hint instructions -->\nb\n")
    out = tmp_path / "instr.json"
    r = script("hint_instructions.py", "--workload", "churn", "--ops", "20", "--configs", "off,batch32",
               "--guest-mem", "16M", "--json", str(out), "--write", str(readme), timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["config"] for row in rows] == ["off", "batch32"]
    assert all(row["instructions"] > 0 for row in rows) and rows[0]["overhead_pct"] == 0
    # hinting does work the unhinted guest does not: it can only add instructions
    assert rows[1]["instructions"] > rows[0]["instructions"]
    text = readme.read_text()
    assert "old" not in text and "| churn | batch32 | 20 |" in text and text.endswith("b\n")


# --- scripts/bench_all: every number of the READMEs rendered from bench/results ---------------
DOCS = ("README.md", os.path.join("bench", "README.md"), os.path.join("docs", "state-protocol.md"))


def copy_docs(dst):
    import shutil
    (dst / "bench").mkdir(parents=True, exist_ok=True)
    (dst / "docs").mkdir(parents=True, exist_ok=True)
    for d in DOCS:
        shutil.copy(os.path.join(ROOT, d), dst / d)


def test_bench_all_render_only_reproduces_the_committed_docs():
    """The docs are exactly what the committed JSON renders: a typed edit inside a block, or a
    block the renderer would now write differently, fails here."""
    r = script("bench_all", "--check")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_bench_all_check_catches_a_typed_edit_and_stale_json(tmp_path):
    import re
    import shutil
    copy_docs(tmp_path)
    doc = tmp_path / "bench" / "README.md"
    text = doc.read_text()
    block = re.search(r"<!-- bench:reload targets -->.*?<!-- /bench:reload targets -->", text, re.S).group(0)
    row = next(l for l in block.splitlines() if l.startswith("| test_reload_target"))
    edited = re.sub(r"\| (\d+)\.(\d+) \|", lambda m: "| %d.%s |" % (int(m.group(1)) + 1, m.group(2)), row, count=1)
    assert edited != row
    doc.write_text(text.replace(row, edited))
    r = script("bench_all", "--check", "--root", str(tmp_path))
    assert r.returncode == 1 and edited in r.stdout and "differ" in r.stderr

    copy_docs(tmp_path)                                  # clean docs, but results that moved on
    res = tmp_path / "results"
    shutil.copytree(os.path.join(ROOT, "bench", "results"), res)
    d = json.loads((res / "bench.json").read_text())
    d["measured"]["commit"] = "0" * 40
    for b in d["benchmarks"]:
        b.pop("measured", None)
    (res / "bench.json").write_text(json.dumps(d))
    r = script("bench_all", "--check", "--root", str(tmp_path), "--results", str(res))
    assert r.returncode == 1 and "measured at commit 0000000" in r.stdout
    r = script("bench_all", "--render-only", "--root", str(tmp_path), "--results", str(res))
    assert r.returncode == 0, r.stderr
    assert "measured at commit 0000000" in doc.read_text()


def test_bench_all_renders_every_marked_block_and_only_those():
    import importlib.machinery
    import importlib.util
    import re
    loader = importlib.machinery.SourceFileLoader("bench_all", os.path.join(SCRIPTS, "bench_all"))
    bench_all = importlib.util.module_from_spec(importlib.util.spec_from_loader("bench_all", loader))
    loader.exec_module(bench_all)
    for d in DOCS:
        text = open(os.path.join(ROOT, d)).read()
        marked = set(re.findall(r"<!-- bench:(.*?) -->", text)) - {"..."}   # the intro names the form
        assert marked == set(re.findall(r"<!-- /bench:(.*?) -->", text))
        assert marked == {name for doc, name, _ in bench_all.BLOCKS if doc == d.replace(os.sep, "/")}, d


def test_bench_readme_prose_quotes_no_figure():
    """Outside rendered blocks and code, bench/README.md holds no digit: every figure is in a
    table or a rendered sentence (and an inline code span is a name or a command, not a figure)."""
    import re
    text = open(os.path.join(ROOT, "bench", "README.md")).read()
    prose = re.sub(r"<!-- bench:(.*?) -->.*?<!-- /bench:\1 -->", "", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    spans = re.findall(r"`[^`]*`", prose)
    figure = re.compile(r"^`?[~\d.,\s]+(x|×|%|ms|s|us|µs|ns|GB/s|MiB|GiB|KiB)?`?$")
    assert not [s for s in spans if figure.match(s)], "figures in code spans"
    prose = re.sub(r"`[^`]*`", "", prose)
    lines = [l for l in prose.splitlines() if re.search(r"\d", l)]
    assert not lines, "typed numbers in bench/README.md prose:\n" + "\n".join(lines)


def test_bench_all_results_are_small_and_traceable():
    res = os.path.join(ROOT, "bench", "results")
    names = sorted(n for n in os.listdir(res) if n.endswith(".json"))
    assert names == ["balloon_latency.json", "bench.json", "demo.json", "discard_list.json", "hint_instructions.json",
                     "lazyfree.json", "minor_faults.json", "proactive.json", "scale.json", "sweep.json",
                     "thp_guests.json"]
    # besides the JSON, only the plots the README shows: scale's and the sweep step's
    plots = [n for n in os.listdir(res) if n not in names]
    assert all(n == "scale.png" or (n.startswith("sweep-") and n.endswith(".png")) for n in plots), plots
    for n in plots:        # a small-multiples figure is larger than a JSON, but still bounded
        assert os.path.getsize(os.path.join(res, n)) < 512 << 10, n
    for n in names:
        assert os.path.getsize(os.path.join(res, n)) < 256 << 10, n
        doc = json.load(open(os.path.join(res, n)))
        m = doc["measured"]
        assert len(m["commit"]) == 40 and m["date"] and m["command"] and m["seconds"] > 0
    bench = json.load(open(os.path.join(res, "bench.json")))
    assert all("data" not in b["stats"] for b in bench["benchmarks"])      # per-round samples stripped
    assert {b["group"].split(" ")[0] for b in bench["benchmarks"]} >= {"discard", "reload", "guest", "host"}


def test_bench_all_refuses_a_bad_step_in_one_line():
    r = script("bench_all", "--only", "nosuch")
    assert r.returncode == 2 and "'nosuch'" in r.stderr and "Traceback" not in r.stderr


def test_bench_all_only_scale_is_the_step_and_bench_scale_the_file():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("bench_all", os.path.join(SCRIPTS, "bench_all"))
    bench_all = importlib.util.module_from_spec(importlib.util.spec_from_loader("bench_all", loader))
    loader.exec_module(bench_all)
    steps = ["bench", "demo", "scale"]
    assert bench_all.selection("scale", steps) == (["scale"], [])
    assert bench_all.selection("bench_scale", steps) == (["bench"], ["scale"])
    assert bench_all.selection("shrink,bench_shrink,scale", steps) == (["bench", "scale"], ["shrink"])
    with pytest.raises(ValueError, match="bench_nosuch"):
        bench_all.selection("bench_nosuch", steps)
    r = script("bench_all", "--help")
    assert "bench_scale" in r.stdout
