#!/usr/bin/env python3
"""What patch 7 of the guest page hinting series (no state change on minor faults and munmap)
saves: the fileserver and build workloads with their file accesses through mappings
(gphint.guest.mapped_workloads), each run with Guest(minor_fault="eager") and with
minor_fault="lazy" on the same seed, counting every state change the guest asks for.  The
counts are deterministic (no timing): each state change is an ESSA, >100 cycles on s390.

    scripts/minor_faults.py                        # markdown table on stdout
    scripts/minor_faults.py --json bench/results/minor_faults.json

Sample output:
    | workload | minor faults | major faults | state changes, eager | lazy | saved | saved per minor fault | lazy corrections | verify |
    |---|---|---|---|---|---|---|---|---|
    | fileserver-mmap | 9000 | 3000 | 24000 | 6000 | 18000 | 2.00 | 0 | 0 |
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def run_one(workload, mode, args):
    from gphint.guest.guest import Guest
    from gphint.guest.mapped_workloads import MAPPED_WORKLOADS
    t0 = time.monotonic()
    with Guest(args.guest_mem, seed=args.seed, workload=None, file_bytes=args.file_bytes,
               minor_fault=mode) as g:
        MAPPED_WORKLOADS[workload](g, seed=args.seed).step(args.ops)
        g.sync()
        h, m = g.hinter.stats, g.mappings.stats
        return {"workload": workload, "minor_fault": mode, "ops": args.ops,
                "state_changes": g.mappings.state_changes(),
                "to_stable": h["to_stable"], "to_volatile": h["to_volatile"],
                "to_pot_volatile": h["to_pot_volatile"], "unchanged": h["unchanged"],
                "minor_faults": m["minor_faults"], "major_faults": m["major_faults"],
                "mmaps": m["mmaps"], "changes_saved": m["changes_saved"],
                "corrected": m["corrected"], "correction_changes": m["correction_changes"],
                "verify_mismatches": g.verify(), "seconds": round(time.monotonic() - t0, 2)}


def table(doc):
    rows = {(r["workload"], r["minor_fault"]): r for r in doc["rows"]}
    c = doc["config"]
    lines = ["_%d operations per run, %s guest, %s of files, seed %d; counts, not timings_" % (
                 c["ops"], c["guest_mem"], c["file_bytes"], c["seed"]), "",
             "| workload | minor faults | major faults | state changes, eager | lazy (patch 7) | saved "
             "| saved per minor fault | lazy corrections | cycles saved at 100 per change | verify |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in dict.fromkeys(r["workload"] for r in doc["rows"]):
        e, lz = rows[(w, "eager")], rows[(w, "lazy")]
        saved = e["state_changes"] - lz["state_changes"]
        lines.append("| %s | %d | %d | %d | %d | %d | %.2f | %d | ≥ %d | %d |" % (
            w, lz["minor_faults"], lz["major_faults"], e["state_changes"], lz["state_changes"], saved,
            saved / max(1, lz["minor_faults"]), lz["correction_changes"], 100 * saved,
            e["verify_mismatches"] + lz["verify_mismatches"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="fileserver-mmap,build-mmap")
    ap.add_argument("--guest-mem", default="64M")
    ap.add_argument("--file-bytes", default="128M")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="save the rows here")
    args = ap.parse_args(argv)
    from gphint.guest.mapped_workloads import MAPPED_WORKLOADS
    names = [w for w in args.workloads.split(",") if w]
    bad = [w for w in names if w not in MAPPED_WORKLOADS]
    if bad or not names or args.ops < 1:
        print("minor_faults: bad --workloads %r or --ops %d (workloads: %s)"
              % (args.workloads, args.ops, ", ".join(MAPPED_WORKLOADS)), file=sys.stderr)
        return 2
    rows = [run_one(w, mode, args) for w in names for mode in ("eager", "lazy")]
    doc = {"config": {"guest_mem": args.guest_mem, "file_bytes": args.file_bytes, "ops": args.ops,
                      "seed": args.seed}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(table(doc))
    return 1 if any(r["verify_mismatches"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
