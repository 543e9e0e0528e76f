#!/usr/bin/env python3
"""Live per-guest view of a running experiment: residency (mincore), page states, and what the
host took, refreshed from the snapshot a run keeps with --status.

    gphint compare --host-mem 128M --status /tmp/gphint.status &
    scripts/watch.py /tmp/gphint.status            # refreshes until the run is done
    scripts/watch.py /tmp/gphint.status --follow   # compare: keep going from one strategy's
                                                   # run to the next (Ctrl-C to stop)
    scripts/watch.py /tmp/gphint.status --once     # one snapshot, then exit

Page states are the two-letter pairs of gphint.states (S/U/P/V usage, r/p/z content): e.g.
Vz = a volatile page the host discarded, Sp = a stable page in host swap.

Sample output:
    cmma  pressure  t=6.5/16.0 s  process RSS 143.2 MiB  budget 128.0 MiB  host swap 0.0 MiB
    guest  workload     resident MiB   of MiB  Sr     Sp   Ur    Uz    Vr    Vz    Pr  discarded  swapped
    g0     fileserver           31.2     64.0  2311   0    410   1960  5321  6382  0   8342       0
    g1     build                29.7     64.0  5120   0    980   3410  1492  5382  0   8792       0
"""
import argparse
import json
import os
import sys
import time

PAIRS = ["Sr", "Sp", "Sz", "Ur", "Uz", "Vr", "Vz", "Pr"]
MiB = float(1 << 20)


def render(status):
    pairs = [p for p in PAIRS if any(g["census"].get(p) for g in status["guests"])]
    budget = status.get("budget_bytes")
    head = "%s  %s  t=%.1f/%.1f s  process RSS %.1f MiB  %s  host swap %.1f MiB%s" % (
        status["strategy"], status["mode"], status["t_s"], status["duration_s"],
        status["rss_bytes"] / MiB, "budget %.1f MiB" % (budget / MiB) if budget else "no budget",
        status["host_swap_bytes"] / MiB, "  (done)" if status.get("done") else "")
    cols = ["guest", "workload", "resident MiB", "of MiB"] + pairs + ["discarded", "swapped"]
    rows = []
    for g in status["guests"]:
        rows.append([g["name"], str(g["workload"]), "%.1f" % (g["resident_bytes"] / MiB),
                     "%.1f" % (g["size_bytes"] / MiB)] + [str(g["census"].get(p, 0)) for p in pairs]
                    + [str(sum(g["discarded_pages"].values())), str(sum(g["swapped_pages"].values()))])
    total = sum(g["resident_bytes"] for g in status["guests"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("all guests resident %.1f MiB" % (total / MiB))
    return "\n".join(lines)


def read(path):
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("status", help="the file given to gphint run/compare --status")
    ap.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ap.add_argument("--interval", type=float, default=0.5, help="refresh period in seconds")
    ap.add_argument("--follow", action="store_true",
                    help="do not stop when a run is done (compare runs one strategy after another)")
    ap.add_argument("--wait", type=float, default=10.0,
                    help="seconds to wait for the status file to appear")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while not os.path.exists(args.status):
        if time.monotonic() > deadline:
            print("watch: no status file %r (start a run with --status %s)" % (args.status, args.status),
                  file=sys.stderr)
            return 2
        time.sleep(0.1)
    tty = sys.stdout.isatty()
    while True:
        try:
            status = read(args.status)
        except (OSError, ValueError):        # replaced between our open and read: next round
            time.sleep(0.05)
            continue
        text = render(status)
        if tty and not args.once:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if args.once or (status.get("done") and not args.follow):
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
