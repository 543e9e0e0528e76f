#!/usr/bin/env python3
"""Render the performance tables of README.md / bench/README.md from saved pytest-benchmark
JSON, so that no number in them is ever typed by hand.  `scripts/bench_all` runs the whole suite
and renders every block of both documents with this module; by hand:

    pytest bench/bench_guest_hints.py --benchmark-json=results/bench.json
    scripts/bench_tables.py results/bench.json                  # markdown on stdout
    scripts/bench_tables.py results/bench.json --group "guest hints 256 MiB" --write bench/README.md

One table per benchmark group (pytest-benchmark's `group`, else the bench file); a row per
case: its name, the median and fastest round, and every number in the case's extra_info
(ns_per_page, pages, syscalls...).  A gphint results file (`gphint compare/demo --json`) is
rendered as its comparison table, in a group named after the file (results/demo.json: "demo").  --write replaces the text between the markers
`<!-- bench:GROUP -->` and `<!-- /bench:GROUP -->` in FILE and leaves the rest alone.

Sample output:
    ### strategies
    _machine: Linux 6.18.0 x86_64, 2 CPUs; gphint 0.1.0 (commit 673030e); 2026-11-26_

    | case | median ms | min ms | ns_per_page | pages |
    |---|---|---|---|---|
    | test_host_take_back[cmma-batch32-vectored] | 3.21 | 2.95 | 196 | 16384 |
"""
import argparse
import json
import os
import re
import sys


def results_table(path, doc):
    """A gphint results document -> (group, markdown) via gphint.report."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gphint import report
    env = doc["env"]
    group = os.path.splitext(os.path.basename(path))[0]
    text = "\n".join(["### %s" % group, "_machine: Linux %s %s, %s CPUs; python %s; gphint %s, %s; "
                      "commit %s_" % (env["kernel"], env["machine"], env["cpu_count"], env["python"],
                                      env["gphint_version"], env["mechanism"],
                                      (env.get("git_commit") or "?")[:7]), "",
                      report.summary(doc) + ":", "", report.markdown_table(doc["results"])])
    return group, text


def load(paths):
    benches, machine, commit, runs = [], {}, {}, {}
    doc = {}
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        if "results" in d and "config" in d:
            group, text = results_table(p, d)
            runs[group] = text
            continue
        doc = d
        benches += doc.get("benchmarks", [])
        machine = doc.get("machine_info", machine)
        commit = doc.get("commit_info", commit)
    return benches, machine, commit, (doc.get("datetime") or "")[:10], runs


def group_of(b):
    return b.get("group") or b.get("fullname", "").split("::")[0].rsplit("/", 1)[-1].replace(".py", "")


def fmt(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer():
        return "%d" % v
    return "%.3g" % v if abs(v) < 100 else "%.0f" % v


def table(group, benches, machine, commit, date):
    extra = []
    for b in benches:
        for k in b.get("extra_info", {}):
            if k not in extra:
                extra.append(k)
    cpu = machine.get("cpu", {}) or {}
    head = ["### %s" % group,
            "_machine: %s %s %s, %s CPUs; python %s; commit %s; %s_" % (
                machine.get("system", "?"), machine.get("release", "?"), machine.get("machine", "?"),
                cpu.get("count", "?"), machine.get("python_version", "?"),
                (commit.get("id") or "?")[:7], date), ""]
    cols = ["case", "median ms", "min ms"] + extra
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for b in benches:
        st = b["stats"]
        row = [b["name"], "%.3f" % (st["median"] * 1e3), "%.3f" % (st["min"] * 1e3)]
        row += [fmt(b.get("extra_info", {}).get(k, "")) for k in extra]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(head + lines)


def render(paths, groups=None):
    benches, machine, commit, date, runs = load(paths)
    by = {}
    for b in benches:
        by.setdefault(group_of(b), []).append(b)
    tables = {g: table(g, bs, machine, commit, date) for g, bs in by.items()}
    tables.update(runs)
    if groups:
        missing = [g for g in groups if g not in tables]
        if missing:
            raise ValueError("no benchmarks in group(s) %s (found: %s)"
                             % (", ".join(missing), ", ".join(sorted(tables)) or "none"))
        tables = {g: tables[g] for g in groups}
    return tables


def write(path, tables):
    with open(path) as f:
        text = f.read()
    for g, t in tables.items():
        start, end = "<!-- bench:%s -->" % g, "<!-- /bench:%s -->" % g
        pat = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if not pat.search(text):
            raise ValueError("%s has no %s ... %s markers" % (path, start, end))
        text = pat.sub(lambda m: start + "\n" + t + "\n" + end, text)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s)")
    ap.add_argument("--group", action="append", help="only this group (repeatable)")
    ap.add_argument("--write", metavar="FILE", help="replace the marked block(s) in FILE")
    args = ap.parse_args(argv)
    try:
        tables = render(args.json, args.group)
        if args.write:
            write(args.write, tables)
    except (OSError, ValueError, KeyError) as e:
        print("bench_tables: %s" % e, file=sys.stderr)
        return 2
    if not args.write:
        print("\n\n".join(tables.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
