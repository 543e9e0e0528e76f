#!/usr/bin/env python3
"""Render README.md's machine-level table (`<!-- bench:host -->`) from a gphint results file,
so that no number in it is typed by hand.

    scripts/bench_all                      # measures the demo and renders this block with the rest
    scripts/host_tables.py results/demo.json                    # markdown on stdout
    scripts/host_tables.py results/demo.json --write README.md  # replace the block by hand

The table puts the per-process saving next to what the machine saw (gphint.report.HOST_COLUMNS)
and names the commit, date and machine the numbers come from.  The prose below the table
quotes no number; the ratios it needs are computed here (`kernel` vs `none`).
"""
import argparse
import json
import os
import re
import sys


def render(doc, path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gphint import report
    env = doc["env"]
    recs = {r["strategy_name"]: r for r in doc["results"] if not r.get("error")}
    lines = ["### host", "_machine: Linux %s %s, %s CPUs, %.1f GiB; gphint %s, %s; commit %s; from %s_"
             % (env["kernel"], env["machine"], env["cpu_count"], env["mem_total_bytes"] / 2**30,
                env["gphint_version"], env["mechanism"], (env.get("git_commit") or "?")[:7],
                os.path.relpath(os.path.abspath(path), os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))), "",
             report.summary(doc) + ", cache %s:" % doc["config"].get("cache", "host"), "",
             report.markdown_table(doc["results"], report.HOST_COLUMNS)]
    k, n = recs.get("kernel"), recs.get("none")
    if k and n and n.get("ops_per_s"):
        def swap(r, way):   # all of a run's swap traffic: gphint's host swap and the kernel's
            return (r["host_swap_%s_bytes" % way] + r["host"]["kernel_swap_%s_bytes" % way]) / 2**20
        lines += ["", "_kernel vs none: %.2fx the ops/s, %.2fx the footprint; all swap out %.1f vs "
                  "%.1f MiB, all swap in %.1f vs %.1f MiB_" % (
                      k["ops_per_s"] / n["ops_per_s"],
                      k["host"]["footprint_mib_s"] / max(n["host"]["footprint_mib_s"], 1e-9),
                      swap(k, "out"), swap(n, "out"), swap(k, "in"), swap(n, "in"))]
    return "\n".join(lines)


def write(text, target, group="host"):
    with open(target) as f:
        body = f.read()
    pat = re.compile(r"(<!-- bench:%s -->\n).*?(<!-- /bench:%s -->)" % (group, group), re.S)
    if not pat.search(body):
        raise SystemExit("%s has no <!-- bench:%s --> block" % (target, group))
    with open(target, "w") as f:
        f.write(pat.sub(lambda m: m.group(1) + text + "\n" + m.group(2), body))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--write", metavar="FILE")
    a = p.parse_args(argv)
    with open(a.results) as f:
        text = render(json.load(f), a.results)
    if a.write:
        write(text, a.write)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
