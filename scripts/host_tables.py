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
        lines += ["", kernel_vs_none(k, n)]
    return "\n".join(lines)


# `scripts/bench_all --only lazyfree`: discard=free against discard=dontneed and the kernel peer,
# each in its memory cgroup at the budget (its step runs `gphint compare` with these options)
LAZYFREE_STRATEGIES = "cmma:discard=free,cmma:discard=dontneed,kernel"
LAZYFREE_OPTIONS = ["--guests", "2", "--guest-mem", "64M", "--host-mem", "48M", "--ops", "3000",
                    "--duration", "120", "--no-probe"]


def lazyfree_render(doc, path):
    """README's `<!-- bench:lazyfree -->` block: what the kernel took of the lazily freed pages,
    and the kernel's swap traffic beside it, per strategy; the sentence under it is computed."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gphint import report
    page = doc["env"]["page_size"]

    def pages(key):
        return lambda r: "%.1f" % (r.get(key, 0) * page / 2**20)
    def label(r):       # cmma's default discard is spelt out: it is what this table compares
        d = (r.get("params") or {}).get("discard")
        return "%s:discard=%s" % (r["strategy_name"], d) if d and not r.get("error") else r["strategy"]
    columns = [("strategy", label), ("lazily freed MiB", pages("lazy_freed_pages")),
               ("reclaimed by the kernel MiB", pages("lazy_reclaimed_pages")),
               ("taken back intact MiB", pages("lazy_reused_pages")),
               ("gphint discarded MiB", report._mib("discarded_bytes")),
               ("kernel swap out MiB", report._host("kernel_swap_out_bytes")),
               ("kernel swap in MiB", report._host("kernel_swap_in_bytes")),
               ("cgroup peak MiB", report._host("cgroup_peak_bytes")),
               ("integrity errors", dict(report.COLUMNS)["integrity errors"])]
    env = doc["env"]
    lines = ["### lazyfree", "_machine: Linux %s %s, %s CPUs; commit %s; from %s_" % (
        env["kernel"], env["machine"], env["cpu_count"], (env.get("git_commit") or "?")[:7],
        os.path.basename(path)), "", report.summary(doc) + ":", "",
        report.markdown_table(doc["results"], columns)]
    recs = {label(r): r for r in doc["results"] if not r.get("error")}
    free, dontneed, kernel = (recs.get(s) for s in LAZYFREE_STRATEGIES.split(","))
    if free and dontneed and kernel and free.get("lazy_freed_pages"):
        def out(r):
            return r["host"]["kernel_swap_out_bytes"] / 2**20
        lines += ["", "_discard=free: the kernel reclaimed %.1f %% of the pages cmma lazily freed "
                  "(%.1f of %.1f MiB, without I/O); the kernel swapped out %.1f MiB for it, %.1f MiB "
                  "for discard=dontneed, %.1f MiB for the kernel peer_" % (
                      100.0 * free["lazy_reclaimed_pages"] / free["lazy_freed_pages"],
                      free["lazy_reclaimed_pages"] * page / 2**20, free["lazy_freed_pages"] * page / 2**20,
                      out(free), out(dontneed), out(kernel))]
    return "\n".join(lines)


def _swap_mib(r, way):
    """All of a run's swap traffic one way: gphint's host swap and the kernel's."""
    return (r["host_swap_%s_bytes" % way] + r["host"]["kernel_swap_%s_bytes" % way]) / 2**20


def kernel_vs_none(k, n):
    """The sentence under the host table: the kernel peer against gphint's user-space `none`,
    every figure computed from the two records."""
    out_k, out_n, in_k, in_n = _swap_mib(k, "out"), _swap_mib(n, "out"), _swap_mib(k, "in"), _swap_mib(n, "in")
    per_k, per_n = in_k / max(out_k, 1e-9), in_n / max(out_n, 1e-9)
    return ("_Against gphint's user-space `none`, the kernel peer ran at %.2fx its ops/s and held "
            "%.2fx its footprint; it swapped out %.1f MiB against %.1f MiB and read %.1f MiB back "
            "against %.1f MiB (%.2f against %.2f MiB read back per MiB written): %s_" % (
                k["ops_per_s"] / n["ops_per_s"],
                k["host"]["footprint_mib_s"] / max(n["host"]["footprint_mib_s"], 1e-9),
                out_k, out_n, in_k, in_n, per_k, per_n,
                "the kernel's access bits picked colder pages than `none`'s oldest-resident-first"
                if per_k < per_n else
                "`none`'s oldest-resident-first picked no worse pages than the kernel's LRU here"))


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
