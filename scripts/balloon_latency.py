#!/usr/bin/env python3
"""How long does a balloon request wait as idle guests are added?  Runs `gphint run
--strategy balloon` (each in a fresh process) with one busy database guest and 1, 3, 7 idle
guests under a budget of 6 MiB per guest, and tabulates the latency from the host's request
to the guest serving it (idle guests are scheduled only every --idle-sched seconds).

    scripts/balloon_latency.py                          # markdown table on stdout
    scripts/balloon_latency.py --json results/balloon_latency.json --write bench/README.md

--write replaces the block between `<!-- bench:balloon latency -->` and
`<!-- /bench:balloon latency -->` in FILE.

Sample output:
    | guests | idle | requests | served | mean latency s | max latency s | host swap out MiB |
    |---|---|---|---|---|---|---|
    | 2 | 1 | 16 | 12 | 0.178 | 0.853 | 35 |
    | 4 | 3 | 28 | 19 | 0.465 | 0.889 | 55 |
    | 8 | 7 | 48 | 27 | 0.528 | 0.949 | 97 |
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def run(n, args, tmp):
    out = os.path.join(tmp, "%d.json" % n)
    workload = ",".join(["database"] + ["idle"] * (n - 1))
    cmd = [sys.executable, "-m", "gphint", "run", "--strategy", "balloon", "--guests", str(n),
           "--guest-mem", args.guest_mem, "--host-mem", "%dM" % (args.mib_per_guest * n),
           "--workload", workload, "--ops", str(args.ops), "--duration", "120",
           "--idle-sched", repr(args.idle_sched), "--seed", str(args.seed), "--no-probe",
           "--quiet", "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("gphint run with %d guests failed: %s" % (n, r.stderr.strip().splitlines()[-1:]))
    with open(out) as f:
        return json.load(f)


def table(docs):
    lines = ["| guests | idle | requests | served | mean latency s | max latency s | host swap out MiB |",
             "|---|---|---|---|---|---|---|"]
    for d in docs:
        r, c = d["results"][0], d["config"]
        h = r["host"]
        fmt = lambda v: "-" if v is None else "%.3f" % v
        lines.append("| %d | %d | %d | %d | %s | %s | %d |" % (
            c["guests"], c["workload"].split(",").count("idle"), h["balloon_requests"],
            h["balloon_served"], fmt(h["balloon_latency_mean_s"]), fmt(h["balloon_latency_max_s"]),
            r["host_swap_out_bytes"] >> 20))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", default="2,4,8", help="guest counts (one busy, the rest idle)")
    ap.add_argument("--guest-mem", default="32M")
    ap.add_argument("--mib-per-guest", type=int, default=6, help="host budget per guest, MiB")
    ap.add_argument("--ops", type=int, default=30000, help="operations of the busy guest")
    ap.add_argument("--idle-sched", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="save the runs' results documents here")
    ap.add_argument("--write", metavar="FILE", help="replace the marked block in FILE")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.guests.split(",")]
        if min(counts) < 2:
            raise ValueError("--guests needs counts >= 2 (one busy guest plus idle ones), got %r"
                             % args.guests)
        with tempfile.TemporaryDirectory() as tmp:
            docs = [run(n, args, tmp) for n in counts]
    except (ValueError, RuntimeError) as e:
        print("balloon_latency: %s" % e, file=sys.stderr)
        return 2
    text = table(docs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(docs, f, indent=1)
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_tables import write
        try:
            write(args.write, {"balloon latency": text})
        except (OSError, ValueError) as e:
            print("balloon_latency: %s" % e, file=sys.stderr)
            return 2
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
