#!/usr/bin/env python3
"""How many instructions does hinting add to the guest?  A count, not a timing.

This VM's speed drifts by more than the 3% that the batched-hinting target is about (see
bench/README.md), so besides the interleaved timing of bench/bench_guest.py this script counts
what hinting costs in a way no neighbour can disturb: it runs one guest workload under
valgrind's callgrind, once per configuration, and reports the user-space instructions of
`guest.step(ops)` (the run minus the same guest built with 0 operations) and the overhead of
each hinting configuration over hinting off.  Needs valgrind on PATH.

    scripts/hint_instructions.py                                  # markdown table on stdout
    scripts/hint_instructions.py --workload churn --ops 500
    scripts/hint_instructions.py --json results/hint_instructions.json --write bench/README.md

Sample output (`--workload churn --ops 50 --configs off,batch32`; numbers vary with the
workload, the ops and the Python and numpy versions):
    | workload | config | ops | instructions | per op | overhead vs off % |
    |---|---|---|---|---|---|
    | churn | off | 50 | 161123919 | 3222478 | 0.00 |
    | churn | batch32 | 50 | 164021909 | 3280438 | 1.80 |

--write replaces the block between `<!-- bench:hint instructions -->` and
`<!-- /bench:hint instructions -->` in FILE.  Instructions are not time: kernel work (the page
cache's file reads) is left out, and so are cache misses and the latency of the state
changes' atomic instructions, which the timing includes.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIGS = {"off": (False, 32), "batch1": (True, 1), "batch32": (True, 32), "batch256": (True, 256)}
DEFAULT_OPS = {"fileserver": 3000, "churn": 1500, "build": 1500}
RUNNER = """
import sys
from gphint.guest.guest import Guest
root, workload, hinting, batch, ops, mem = sys.argv[1:]
g = Guest(mem, files=root, seed=1, workload=workload, hinting=hinting == "1", batch=int(batch))
assert g.step(int(ops)) == int(ops)
g.close()
"""
MARK = "hint instructions"


def count(root, workload, config, ops, mem):
    hinting, batch = CONFIGS[config]
    # no idle BLAS thread in the count, and one string-hash seed: the same run, the same count
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           "-c", RUNNER, root, workload, "1" if hinting else "0", str(batch), str(ops), mem]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError("%s %s under callgrind failed: %s" % (workload, config, tail))
    return int(m.group(1))


def measure(args, root):
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for w in args.workload:
            ops = args.ops or DEFAULT_OPS[w]
            jobs[(w, "setup")] = pool.submit(count, root, w, "off", 0, args.guest_mem)
            for c in args.configs:
                jobs[(w, c)] = pool.submit(count, root, w, c, ops, args.guest_mem)
        got = {k: f.result() for k, f in jobs.items()}
    rows = []
    for w in args.workload:
        base = got[(w, "off")] - got[(w, "setup")]
        for c in args.configs:
            work = got[(w, c)] - got[(w, "setup")]
            ops = args.ops or DEFAULT_OPS[w]
            rows.append({"workload": w, "config": c, "ops": ops, "instructions": work,
                         "per_op": round(work / ops), "overhead_pct": round(100.0 * (work - base) / base, 2)})
    return rows


def table(rows, machine):
    out = ["### hint instructions", "_%s_" % machine, "",
           "| workload | config | ops | instructions | per op | overhead vs off % |", "|---|---|---|---|---|---|"]
    out += ["| %(workload)s | %(config)s | %(ops)d | %(instructions)d | %(per_op)d | %(overhead_pct).2f |" % r
            for r in rows]
    return "\n".join(out)


def write_block(path, text):
    with open(path) as f:
        doc = f.read()
    start, end = "<!-- bench:%s -->" % MARK, "<!-- /bench:%s -->" % MARK
    if start not in doc or end not in doc:
        raise SystemExit("error: %s has no %s ... %s block to replace" % (path, start, end))
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + start + "\n" + text + "\n" + end + tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", action="append", choices=sorted(DEFAULT_OPS),
                   help="workload to count (repeatable; default: fileserver, churn, build)")
    p.add_argument("--configs", default="off,batch32,batch256",
                   help="comma-separated, from %s (default: %%(default)s; off is always run)" % ", ".join(CONFIGS))
    p.add_argument("--ops", type=int, default=None, help="operations per run (default: as bench_guest.py)")
    p.add_argument("--guest-mem", default="64M", help="guest memory (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="callgrind runs at once (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also save the rows as JSON")
    p.add_argument("--write", metavar="FILE", help="replace the table block in FILE")
    args = p.parse_args(argv)
    args.workload = args.workload or ["fileserver", "churn", "build"]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error("unknown config %r (expected some of %s)" % (bad[0], ", ".join(CONFIGS)))
    args.configs = ["off"] + [c for c in configs if c != "off"]
    if args.ops is not None and args.ops < 1:
        p.error("--ops must be >= 1, got %d" % args.ops)
    if args.jobs < 1:
        p.error("--jobs must be >= 1, got %d" % args.jobs)
    if shutil.which("valgrind") is None:
        p.error("valgrind is not on PATH: this script counts instructions with callgrind "
                "(Debian/Ubuntu: apt install valgrind)")
    from gphint.guest.files import FileSet
    from gphint.units import parse_size
    try:
        parse_size(args.guest_mem)
    except ValueError as e:
        p.error(str(e))
    import platform
    fs = FileSet(None, seed=1, total_bytes=2 * parse_size(args.guest_mem))   # generated, like the bench's
    try:
        rows = measure(args, fs.root)
    except RuntimeError as e:
        raise SystemExit("error: %s" % e)
    finally:
        fs.close()
    machine = "%s %s, python %s; callgrind user-space instructions; `%s`" % (
        platform.system(), platform.release(), platform.python_version(),
        " ".join(["scripts/hint_instructions.py"] + (argv if argv is not None else sys.argv[1:])))
    text = table(rows, machine)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    if args.write:
        write_block(args.write, text)


if __name__ == "__main__":
    main()
