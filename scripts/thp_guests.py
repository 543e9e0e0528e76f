#!/usr/bin/env python3
"""Every strategy on guests with transparent huge pages against the same run on 4 KiB guests:
two `gphint compare` runs of one small shape, the second with --guest-thp, tabulated side by
side (what each strategy gave back to the host, its footprint, and the guests' own THP
counters are in the JSON).

    scripts/thp_guests.py                          # markdown table on stdout
    scripts/thp_guests.py --json bench/results/thp_guests.json

Sample output:
    | strategy | guest | saved MiB | RSS end MiB | discarded MiB | footprint MiB*s | ops/s | free->drop | fragments | integrity errors |
    |---|---|---|---|---|---|---|---|---|---|
    | cmma | 4 KiB | 20.1 | 105.2 | 26.8 | 1077 | 91 | 0.18 s | 0.17 s | 0 |
    | cmma | THP | 20.1 | 105.0 | 25.9 | 358 | 316 | 0.10 s | never (0%) | 0 |
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

MIB = 1 << 20


def run(thp, args, tmp):
    out = os.path.join(tmp, "thp.json" if thp else "4k.json")
    cmd = [sys.executable, "-m", "gphint", "compare", "--guests", str(args.guests), "--guest-mem",
           args.guest_mem, "--ops", str(args.ops), "--seed", str(args.seed), "--workload",
           args.workload, "--quiet", "--json", out] + (["--guest-thp"] if thp else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        raise RuntimeError("gphint compare%s failed: %s" % (" --guest-thp" if thp else "",
                                                           r.stderr.strip().splitlines()[-1:]))
    with open(out) as f:
        return json.load(f)


def table(doc):
    from gphint import report
    runs = doc["runs"]
    lines = ["_%s; each strategy on 4 KiB guests, then on THP guests_" % report.summary(runs[0]).replace(
                 " 4 KiB", ""), "",
             "| strategy | guest | saved MiB | RSS end MiB | discarded MiB | footprint MiB*s | ops/s "
             "| free->drop | fragments | integrity errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    by_run = [{r["strategy"]: r for r in d["results"]} for d in runs]
    for name in by_run[0]:
        for d, rows in zip(runs, by_run):
            r = rows.get(name)
            if r is None or r.get("error"):
                continue
            foot = (r.get("host") or {}).get("footprint_mib_s")
            probe = [dict(report.COLUMNS)[c](r) for c in ("free->drop", "fragments")]
            lines.append("| %s | %s | %.1f | %.1f | %.1f | %s | %.0f | %s | %s | %d |" % (
                name, "THP" if d["config"].get("guest_thp") else "4 KiB", r["host_saved_bytes"] / MIB,
                r["rss_end_bytes"] / MIB, r["discarded_bytes"] / MIB,
                "-" if foot is None else "%.0f" % foot, r["ops_per_s"], probe[0], probe[1],
                r["integrity_errors"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", type=int, default=2)
    ap.add_argument("--guest-mem", default="64M")
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--workload", default="churn,database",
                    help="anonymous-memory workloads: huge pages are anonymous memory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="save both results documents here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gphint-thp-") as tmp:
        try:
            runs = [run(False, args, tmp), run(True, args, tmp)]
        except RuntimeError as e:
            print("thp_guests: %s" % e, file=sys.stderr)
            return 1
    doc = {"runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(table(doc))
    return 1 if any(r["integrity_errors"] for d in runs for r in d["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
