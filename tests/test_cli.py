"""The command line end to end, in child processes as a user runs it: errors are one line and
exit 2, results JSON validates against docs/results.md, the demo writes its table, JSON and
plot."""
import json
import os
import subprocess
import sys

import pytest

from gphint import caps
from test_experiment import HAS_SERVICE, check_document

SMALL = ["--guests", "2", "--guest-mem", "16M", "--duration", "0.5", "--probe-mem", "2M",
         "--probe-timeout", "0.5", "--seed", "2"]


def gphint(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gphint"] + list(args), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["run", "--strategy", "zap"], ["unknown strategy 'zap'", "cmma"]),
    (["run", "--strategy", "cmma:bogus=1"], ["'bogus'", "valid keys"]),
    (["run", "--strategy", "cmma", "--guest-mem", "12Q"], ["--guest-mem", "'12Q'"]),
    (["run", "--strategy", "cmma", "--host-mem", "-5"], ["--host-mem", "'-5'"]),
    (["run", "--strategy", "cmma", "--workload", "zap"], ["'zap'", "fileserver"]),
    (["run", "--strategy", "cmma", "--guests", "0"], ["--guests", "0"]),
    (["run", "--strategy", "cmma", "--files", "/nonexistent"], ["/nonexistent"]),
    (["run", "--strategy", "cmma", "--duration", "soon"], ["--duration", "'soon'"]),
    (["run"], ["--strategy"]),
    (["compare", "--strategies", "none,zap"], ["'zap'"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    r = gphint(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]


def test_debug_shows_the_traceback():
    r = gphint("--debug", "run", "--strategy", "zap")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_run_writes_valid_json(tmp_path):
    out = tmp_path / "run.json"
    r = gphint("run", "--strategy", "cmma:batch=256,submit=coalesce", "--json", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    assert "cmma:batch=256,submit=coalesce" in r.stdout and "integrity errors" in r.stdout
    assert "\r" not in r.stderr             # not a TTY: no progress bar
    doc = json.loads(out.read_text())
    check_document(doc)
    assert doc["config"]["guests"] == 2 and doc["config"]["mode"] == "proactive"
    assert doc["results"][0]["params"]["submit"] == "coalesce"


def test_compare_runs_each_strategy_in_a_child(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    r = gphint("compare", "--strategies", "none,unused:batch=1", "--json", str(out),
               "--plot", str(png), *SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    check_document(doc)
    assert [x["strategy"] for x in doc["results"]] == ["none", "unused:batch=1"]
    # fresh child processes: each run starts from an interpreter's RSS, not the last run's
    base = [x["rss_baseline_bytes"] for x in doc["results"]]
    assert max(base) < 2 * min(base)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000


def test_demo_reduced(tmp_path):
    """The headline demo at a reduced size: all five strategies, under a budget when the fault
    service is there (otherwise it says so and runs proactive)."""
    r = gphint("demo", "--out-dir", str(tmp_path), "--host-mem", "12M", *SMALL, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "demo.json").read_text())
    check_document(doc)
    # the kernel peer joins them where a memory cgroup and a swap area can be had (gphint caps)
    kernel = ["kernel"] if HAS_SERVICE and caps.has("memory_cgroup") and caps.has("swap_area") else []
    assert [x["strategy"] for x in doc["results"]] == ["none", "balloon", "reporting", "unused", "cmma"] + kernel
    assert doc["config"]["mode"] == ("pressure" if HAS_SERVICE else "proactive")
    if not HAS_SERVICE:
        assert "running proactive mode instead" in r.stderr
    for name in ("none", "balloon", "reporting", "unused", "cmma"):
        assert name in r.stdout
    assert os.path.getsize(tmp_path / "demo.png") > 20000


def _stderr_on_a_tty(*args):
    """Run gphint with stderr on a pseudo-terminal; returns (exit status, what the tty got)."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    # a real terminal has a size; a fresh pty is 0 x 0, where tqdm draws an empty bar
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "gphint"] + list(args), stdout=subprocess.DEVNULL,
                         stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:            # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_quiet_turns_it_off():
    args = ["run", "--strategy", "unused", "--guests", "1", "--guest-mem", "16M",
            "--duration", "1.5", "--no-probe"]
    rc, tty = _stderr_on_a_tty(*args)
    assert rc == 0 and "run unused:" in tty and "%|" in tty
    rc, tty = _stderr_on_a_tty(*(args + ["--quiet"]))
    assert rc == 0 and "%|" not in tty


def test_compare_where_every_strategy_fails_says_it_once_and_plots_nothing(tmp_path):
    """Every child fails (every guest fails to boot from an empty --files tree): the reason is
    said once, the JSON keeps an error record per strategy, no table, no plot, exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    r = gphint("compare", "--strategies", "none,cmma", "--files", str(empty), "--json", str(out),
               "--plot", str(png), *SMALL)
    assert r.returncode == 1
    doc = json.loads(out.read_text())
    check_document(doc)
    assert [x["strategy"] for x in doc["results"]] == ["none", "cmma"]
    for rec in doc["results"]:
        assert str(empty) in rec["error"] and "readable" in rec["error"]
        assert not rec["error"].startswith("gphint: error:")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "every strategy failed (none, cmma)" in lines[0], r.stderr
    assert str(empty) in lines[0]
    assert "integrity errors" not in r.stdout       # no table of nothing
    assert not png.exists()
