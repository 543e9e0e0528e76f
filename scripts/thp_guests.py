#!/usr/bin/env python3
"""Every strategy on guests with transparent huge pages against the same runs on 4 KiB guests:
`gphint compare` of one small shape in proactive mode and under a host budget, each once on
4 KiB guests and once with --guest-thp, tabulated side by side: what each strategy gave back,
what the host had to swap, and the THP guests' own counters (4 KiB pieces freed inside huge
pages and still allocated, free huge pages on the per-cpu lists).

    scripts/thp_guests.py                          # markdown tables on stdout
    scripts/thp_guests.py --json bench/results/thp_guests.json

Sample output (one table per mode):
    | strategy | guest | saved MiB | RSS end MiB | discarded MiB | host swap out MiB | kernel swap out MiB | free->drop | ops/s | held in split huge pages MiB | on per-cpu lists MiB | integrity errors |
    |---|---|---|---|---|---|---|---|---|---|---|---|
    | cmma | 4 KiB | 12.0 | 70.5 | 12.5 | 68.6 | 13.6 | – | 1318 | – | – | 0 |
    | cmma | THP | 51.6 | 64.6 | 14.6 | 253.7 | 29.4 | – | 1278 | 33.0 | 2.0 | 0 |

Then the frees a real Linux 6.1 guest was measured with, replayed on one guest per strategy and
guest kind: a process writes 400 MiB, frees every other 4 KiB page of its first quarter, then
every other 64 KiB piece of its second, then everything left; after each free, how much the
guest's MemFree rose, how much of the freed memory the host took back (mincore of the freed
frames, once that stopped changing) and how much sits on the per-cpu lists:
    | strategy | guest | free | freed so far MiB | guest MemFree up MiB | host took MiB | on per-cpu lists MiB |
    |---|---|---|---|---|---|---|
    | reporting | THP | 64 KiB pieces | 100.0 | 0.0 | 0.0 | 0.0 |
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MIB = 1 << 20
PAGE = 4096
MODES = ("proactive", "pressure")
FREE_STRATEGIES = ("reporting", "unused", "cmma")   # the ones that act on a guest's free by themselves
FREES = ("4 KiB pieces", "64 KiB pieces", "everything left")


def run(thp, mode, args, tmp):
    out = os.path.join(tmp, "%s-%s.json" % (mode, "thp" if thp else "4k"))
    cmd = [sys.executable, "-m", "gphint", "compare", "--guests", str(args.guests), "--guest-mem",
           args.guest_mem, "--ops", str(args.ops), "--seed", str(args.seed), "--workload",
           args.workload, "--quiet", "--json", out] + (["--guest-thp"] if thp else [])
    if mode == "pressure":
        cmd += ["--host-mem", args.host_mem]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        raise RuntimeError("gphint compare (%s%s) failed: %s" % (
            mode, ", --guest-thp" if thp else "", r.stderr.strip().splitlines()[-1:]))
    with open(out) as f:
        return json.load(f)


def _mib(v):
    return "–" if v is None else "%.1f" % (v / MIB)


def _mode_table(runs):
    from gphint import report
    lines = ["_%s; each strategy on 4 KiB guests, then on THP guests_" % report.summary(runs[0]), "",
             "| strategy | guest | saved MiB | RSS end MiB | discarded MiB | host swap out MiB "
             "| kernel swap out MiB | free->drop | ops/s | held in split huge pages MiB "
             "| on per-cpu lists MiB | integrity errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_run = [{r["strategy"]: r for r in d["results"]} for d in runs]
    for name in by_run[0]:
        for d, rows in zip(runs, by_run):
            r = rows.get(name)
            if r is None or r.get("error"):
                continue
            thp = r.get("thp") or {}
            probe = dict(report.COLUMNS)["free->drop"](r) if d["config"]["mode"] == "proactive" else "–"
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %s | %s | %d |" % (
                name, "THP" if d["config"].get("guest_thp") else "4 KiB", _mib(r["host_saved_bytes"]),
                _mib(r["rss_end_bytes"]), _mib(r["discarded_bytes"]), _mib(r["host_swap_out_bytes"]),
                _mib((r.get("host") or {}).get("kernel_swap_out_bytes")), probe, r["ops_per_s"],
                _mib(thp["held_now"] * PAGE) if thp else "–",
                _mib(thp["pcp_pages"] * PAGE) if thp else "–", r["integrity_errors"]))
    return "\n".join(lines)


def _wait_for_the_host(g, frames, delay_s):
    """Pages of frames the host has taken (not resident), once the count stayed put for the
    strategy's delay and half a second more: free page reporting reports a bounded share of
    each free list per pass, a pass every `delay`, so a large free takes several."""
    t0 = time.monotonic()
    quiet, timeout = delay_s + 0.5, 3.0 + 8 * delay_s
    last, since = -1, t0
    while True:
        time.sleep(0.02)
        now = time.monotonic()
        gone = int(frames.size - g.mem.residency()[frames].sum())
        if gone != last:
            last, since = gone, now
        if now - t0 >= timeout or now - since >= quiet:
            return gone


def free_experiment(thp, strategy, args, files_dir):
    """The three frees on one guest under one strategy (proactive host thread running)."""
    import numpy as np
    from gphint.experiment import RunConfig
    from gphint.host import Host, guests as guest_api, parse_strategy
    from gphint.host.hostswap import fault_service_available
    from gphint.units import parse_size
    spec = parse_strategy(strategy)
    cfg = RunConfig(workload="idle", guests=1, guest_mem_bytes=parse_size(args.free_guest_mem),
                    files=files_dir, guest_thp=thp)
    svc = guest_api.fault_service() if fault_service_available()[0] else None
    g = guest_api.make_guest(0, cfg, spec, svc)
    host = Host([g], None, spec, fault_service=svc)
    rows = []
    try:
        a = g.allocator
        with host.lock:
            v = g.alloc(parse_size(args.free_bytes) // PAGE, pid=1)    # written: first touch
            a.flush_hints()
        host.start()
        time.sleep(0.2)
        q = v.size // 4
        plan = [v[:q][::2], v[q:2 * q][(np.arange(q) // 16) % 2 == 0]]
        freed = np.zeros(0, dtype=np.int64)
        free0 = a.free_pages
        for name, vp in zip(FREES, plan + [None]):
            with host.lock:
                if vp is None:                               # everything still allocated
                    vp = g.anon.live_pages(1)
                frames = g.frames_of(vp, pid=1)
                g.free(vp, pid=1)
                a.flush_hints()
            freed = np.concatenate([freed, frames])
            took = _wait_for_the_host(g, freed, float(spec.params.get("delay", 0.0)))
            with host.lock:
                rows.append({"strategy": strategy, "guest_thp": thp, "free": name,
                             "freed_bytes": int(freed.size * PAGE),
                             "memfree_up_bytes": int((a.free_pages - free0) * PAGE),
                             "host_took_bytes": int(took * PAGE),
                             "pcp_bytes": int(getattr(a, "pcp_pages", 0) * PAGE),
                             "held_bytes": int(getattr(a, "held_pages", 0) * PAGE)})
        host.stop()
        host.check()
        with host.lock:
            rows[-1]["verify_mismatches"] = int(g.verify())
    finally:
        host.stop()
        g.close()
        host.close()
        if svc is not None:
            svc.stop()
    return rows


def frees_table(frees):
    c = frees["config"]
    lines = ["_one %s guest per strategy and guest kind, proactive host; a process writes %s, frees every "
             "other 4 KiB page of its first quarter, then every other 64 KiB piece of its second, then "
             "everything left; the host's share measured with mincore once it stayed put for the "
             "strategy's delay and half a second more_" % (c["guest_mem"], c["free_bytes"]), "",
             "| strategy | guest | free | freed so far MiB | guest MemFree up MiB | host took MiB "
             "| on per-cpu lists MiB | verify |", "|---|---|---|---|---|---|---|---|"]
    for r in frees["rows"]:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["strategy"], "THP" if r["guest_thp"] else "4 KiB", r["free"], _mib(r["freed_bytes"]),
            _mib(r["memfree_up_bytes"]), _mib(r["host_took_bytes"]),
            _mib(r["pcp_bytes"]) if r["guest_thp"] else "–",
            r.get("verify_mismatches", "")))
    return "\n".join(lines)


def table(doc):
    """One table per mode, 4 KiB and THP rows of each strategy side by side; then the frees."""
    modes = {}
    for d in doc["runs"]:
        modes.setdefault(d["config"]["mode"], []).append(d)
    parts = [_mode_table(sorted(runs, key=lambda d: bool(d["config"].get("guest_thp"))))
             for _, runs in sorted(modes.items(), key=lambda kv: MODES.index(kv[0]))]
    if doc.get("frees"):
        parts.append(frees_table(doc["frees"]))
    return "\n\n".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", type=int, default=2)
    ap.add_argument("--guest-mem", default="64M")
    ap.add_argument("--host-mem", default="28M", help="the budget of the pressure runs")
    ap.add_argument("--ops", type=int, default=1500)
    ap.add_argument("--workload", default="churn,database",
                    help="anonymous-memory workloads: huge pages are anonymous memory")
    ap.add_argument("--modes", default=",".join(MODES), help="proactive, pressure or both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--free-guest-mem", default="512M", help="the frees' guest (0: skip the frees)")
    ap.add_argument("--free-bytes", default="400M", help="what the frees' process writes")
    ap.add_argument("--json", metavar="PATH", help="save every results document here")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        print("thp_guests: bad --modes %r (expected proactive, pressure or both)" % args.modes,
              file=sys.stderr)
        return 2
    from gphint.errors import GphintError
    from gphint.units import parse_size
    try:
        frees_on = parse_size(args.free_guest_mem, "--free-guest-mem") > 0
        if frees_on and not 0 < parse_size(args.free_bytes, "--free-bytes") <= \
                parse_size(args.free_guest_mem) * 7 // 8:
            raise GphintError("--free-bytes %s must fit in 7/8 of --free-guest-mem %s"
                              % (args.free_bytes, args.free_guest_mem))
    except GphintError as e:
        print("thp_guests: %s" % e, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gphint-thp-") as tmp:
        try:
            runs = [run(thp, mode, args, tmp) for mode in modes for thp in (False, True)]
        except RuntimeError as e:
            print("thp_guests: %s" % e, file=sys.stderr)
            return 1
        frees = None
        if frees_on:
            files = os.path.join(tmp, "files")              # the idle guest reads no file
            os.makedirs(files)
            with open(os.path.join(files, "empty"), "wb"):
                pass
            rows = [r for strategy in FREE_STRATEGIES for thp in (False, True)
                    for r in free_experiment(thp, strategy, args, files)]
            frees = {"config": {"guest_mem": args.free_guest_mem, "free_bytes": args.free_bytes},
                     "rows": rows}
    doc = {"runs": runs, "frees": frees}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(table(doc))
    lost = any(r["integrity_errors"] for d in runs for r in d["results"]) or \
        any(r.get("verify_mismatches") for r in (frees or {}).get("rows", []))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
