"""The README's Quick start, verbatim, as a new user meets it: a fresh `git clone` of this
commit, a fresh venv, the first command exactly as README.md gives it, run from the clone's
root (where a `gphint/` source directory without a built extension sits in the cwd).  The
demo runs at a tenth of its size (GPHINT_DEMO_SCALE, honoured by `gphint demo`); the
extension is really built by `pip install .`.  Then, as an unprivileged user where the machine
has one, `gphint caps` and a pressure-mode `gphint run` from the same install must say what
is unavailable and the remedy in one line, never a traceback.

One test, ~1-2 minutes: it is the only test of the install path itself.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from gphint import caps

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# the demo adds the kernel peer where a memory cgroup and a swap area can be had (gphint caps)
CORE_STRATEGIES = ["none", "balloon", "reporting", "unused", "cmma"]
STRATEGIES = CORE_STRATEGIES + (["kernel"] if caps.has("memory_cgroup") and caps.has("swap_area")
                                else [])


def quick_start_first_command():
    """The first line of the first code block under '## Quick start' in README.md."""
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return block.strip().splitlines()[0].strip()


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _nobody_can_run(python):
    """Can the unprivileged user `nobody` execute this interpreter (its directories readable)?"""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return False
    try:
        import pwd
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    r = _run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], timeout=60)
    return r.returncode == 0


def _base_python():
    """The interpreter to make the fresh venv from: this suite's Python, or -- when the
    unprivileged user cannot reach it (e.g. under /root) -- a system Python of the same
    version, so that the same install can also be run as that user."""
    mine = getattr(sys, "_base_executable", sys.executable)
    if _nobody_can_run(mine):
        return mine, True
    other = shutil.which("python%d.%d" % sys.version_info[:2], path="/usr/bin:/usr/local/bin")
    if other and os.path.realpath(other) != os.path.realpath(mine) and _nobody_can_run(other):
        r = _run([other, "-c", "import sysconfig, os; "
                  "print(os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"])
        if r.stdout.strip() == "True":
            return other, True
    return mine, False


@pytest.mark.skipif(os.environ.get("GPHINT_PUREPYTHON") == "1",
                    reason="the install path is the same in both passes of the suite: it is "
                    "tested once, in the compiled pass (the fresh venv builds the extension)")
def test_quick_start_from_a_fresh_clone():
    command = quick_start_first_command()
    assert "gphint demo" in command and "pip install ." in command, command
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: nothing to clone")
    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
    python, unprivileged = _base_python()
    work = tempfile.mkdtemp(prefix="gphint-quickstart-")
    try:
        os.chmod(work, 0o755)          # the unprivileged user must reach the venv
        clone, venv = os.path.join(work, "gphint"), os.path.join(work, "venv")
        r = _run(["git", "clone", "-q", str(REPO), clone], timeout=120)
        assert r.returncode == 0, r.stderr
        r = _run(["git", "-C", clone, "checkout", "-q", head], timeout=60)
        assert r.returncode == 0, r.stderr
        r = _run([python, "-m", "venv", venv], timeout=120)
        assert r.returncode == 0, r.stderr
        env = {k: v for k, v in os.environ.items()
               if k not in ("GPHINT_PUREPYTHON", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PATH=os.path.join(venv, "bin") + os.pathsep + env.get("PATH", ""),
                   VIRTUAL_ENV=venv, GPHINT_DEMO_SCALE="0.1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        tmp = os.path.join(work, "tmp")
        os.mkdir(tmp)
        os.chmod(tmp, 0o1777)
        env["TMPDIR"] = tmp
        r = _run(["bash", "-c", command], cwd=clone, env=env, timeout=900)
        assert r.returncode == 0, "%s\n%s\n%s" % (command, r.stdout[-3000:], r.stderr[-3000:])
        # the real table: every strategy, no error rows, integrity 0 -- from the extension
        doc = json.loads(pathlib.Path(clone, "results", "demo.json").read_text())
        assert doc["env"]["mechanism"] == "compiled", doc["env"]
        assert [x["strategy"] for x in doc["results"]] == STRATEGIES
        for rec in doc["results"]:
            assert "error" not in rec, rec
            assert rec["integrity_errors"] == 0 and rec["ops"] > 0
        assert doc["config"]["mode"] == "pressure" and doc["config"]["guest_mem_bytes"] < 32 << 20
        table = [line for line in r.stdout.splitlines() if line.split()[:1] in ([s] for s in STRATEGIES)]
        assert [line.split()[0] for line in table] == STRATEGIES, r.stdout
        assert all(line.split()[-1] == "0" for line in table), r.stdout
        assert "error: " not in r.stdout
        assert pathlib.Path(clone, "results", "demo.png").stat().st_size > 20000

        # the same command's source-tree trap, spelled out: `python -m gphint` in the clone's
        # root imports the unbuilt tree and must say so in one line
        r = _run([os.path.join(venv, "bin", "python"), "-m", "gphint", "caps"], cwd=clone, env=env,
                 timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "pip install -e ." in r.stderr, r.stderr

        if not unprivileged:
            return
        user = ["runuser", "-u", "nobody", "--", os.path.join(venv, "bin", "gphint")]
        r = _run(user + ["caps"], cwd=tmp, env=env, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "euid: 65534" in r.stdout or "euid: %d" % _uid("nobody") in r.stdout
        for line in r.stdout.splitlines()[1:]:
            if " NO " in line and "userfaultfd features" not in line:
                assert "->" in line or "GPHINT_PUREPYTHON" in line, line   # a remedy is named
        # what the real host needs is reported to this user too, each with its remedy if missing
        listed = [line.split()[0] for line in r.stdout.splitlines()[1:] if line.startswith("  ")]
        for name in ("memory_cgroup", "swap_area", "o_direct", "cachestat", "psi"):
            assert name in listed, r.stdout
        r = _run(user + ["run", "--strategy", "cmma", "--guests", "2", "--guest-mem", "16M",
                         "--host-mem", "8M", "--duration", "1", "--no-probe"], cwd=tmp, env=env,
                 timeout=300)
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode != 0:     # this user has no userfaultfd: one line, what and the remedy
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert "unavailable" in lines[0] and "remedy" in lines[0], lines[0]
        # the demo itself as that user: the real table, or pressure mode's fallback said once
        res = os.path.join(tmp, "res")
        r = _run(user + ["demo", "--out-dir", res], cwd=tmp, env=dict(env, HOME=tmp), timeout=600)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        doc = json.loads(pathlib.Path(res, "demo.json").read_text())
        # the kernel peer needs cgroup and swapon rights, which this user may lack
        assert [x["strategy"] for x in doc["results"]] in (CORE_STRATEGIES, CORE_STRATEGIES + ["kernel"])
        assert all("error" not in x and x["integrity_errors"] == 0 for x in doc["results"])
        if doc["config"]["mode"] != "pressure":
            assert "running proactive mode instead" in r.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid
