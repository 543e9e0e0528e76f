#!/usr/bin/env python3
"""What the discarded page list (patch 8 of the guest page hinting series) closes, in both
discard modes.  Two measurements per mode, each with the list retiring frames at free (today)
and without it (the drain alone, as before: `Reclaim._retire_listed` made a no-op):

  window   the race held open, --rounds times: discard faults served on file A's frames, A
           truncated (frames freed), file B read into the reused frames, then the drain.  Counts
           the window's hits (listed frames freed before the drain) and B's pages the drain
           dropped although the host never discarded them (re-read misses).
  workload the mixed workload for --ops operations with a host thread discarding the guest's
           VOLATILE frames and touching them (discard faults) between steps: pages dropped per
           drain, the list's high-water mark, and the free path's cost (seconds in the retire
           step per free call, and as a share of the run).

    scripts/discard_list.py                       # markdown table on stdout
    scripts/discard_list.py --json bench/results/discard_list.json

Sample output (one row of four):
    | mode | list retires at free | window: reused frames | stale entries at drain | wrongly dropped | ...
    |---|---|---|---|---|...
    | guest | no (drain only) | 400 | 400 | 400 | ...
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

PAGE = 4096


def _file_bytes(g, path, npages):
    with open(os.path.join(g.files.root, path), "rb") as f:
        return f.read(npages * PAGE)


def window(mode, retire, args):
    from gphint.faults import FaultService
    from gphint.guest.guest import Guest
    svc = FaultService()
    hits = stale = wrong = bad = 0
    try:
        with _retiring(retire), Guest(args.guest_mem, seed=args.seed, workload=None,
                                      file_bytes=args.file_bytes, discard_mode=mode, fault_service=svc) as g:
            paths = [g.files.paths[i] for i in np.flatnonzero(g.files.size_bytes >= 8 * PAGE)]
            for k in range(args.rounds):
                a, b = paths[(2 * k) % len(paths)], paths[(2 * k + 1) % len(paths)]
                g.read(a, 0, 8 * PAGE)
                fa = g.cache.page_frame[g.files.lookup(a)][:8].copy()
                g.allocator.flush_hints()
                g.mem.discard(fa)
                bytes(g.mem.frames[fa])                      # the discard faults: listed
                g.cache.drop(fa)                             # the guest frees A's pages
                g.read(b, 0, 8 * PAGE)
                fb = g.cache.page_frame[g.files.lookup(b)][:8]
                hits += int(np.intersect1d(fa, fb).size)
                stale += int(np.isin(g.listed_frames(), fb).sum())    # what the drain acts on
                g.drain_discarded()
                m0 = g.cache.stats["misses"]
                bad += g.read(b, 0, 8 * PAGE) != _file_bytes(g, b, 8)
                wrong += g.cache.stats["misses"] - m0
                g.cache.drop(g.cache.page_frame[g.files.lookup(b)][:8].copy())
            st = g.stats
            out = {"test": "window", "mode": mode, "retire": retire, "rounds": args.rounds,
                   "reused_frames": hits, "stale_at_drain": stale, "wrongly_dropped": wrong, "content_mismatches": int(bad),
                   "retired_by_free": st["dlist_retired_by_free"], "drained": st["drained_discarded"],
                   "dropped": st["dropped_drained"], "verify_mismatches": g.verify()}
        out["ring_stale"] = svc.stats()["ring_stale"]
        return out
    finally:
        svc.stop()


class _retiring:
    """retire=False: the drain alone, as before the list retired frames at free."""
    def __init__(self, retire):
        self.retire = retire

    def __enter__(self):
        from gphint.guest import guest_reclaim
        self.cls, self.orig = guest_reclaim.Reclaim, guest_reclaim.Reclaim._retire_listed
        timed = {"s": 0.0, "calls": 0}
        orig = self.orig

        def measured(g, frames):
            t = time.perf_counter()
            orig(g, frames)
            timed["s"] += time.perf_counter() - t
            timed["calls"] += 1
        self.cls._retire_listed = measured if self.retire else (lambda g, frames: None)
        self.timed = timed
        return self

    def __exit__(self, *exc):
        self.cls._retire_listed = self.orig


def workload(mode, retire, args):
    from gphint.faults import FaultService
    from gphint.guest.guest import Guest
    svc = FaultService()
    try:
        with _retiring(retire) as r, Guest(args.guest_mem, seed=args.seed, workload="mixed",
                                           file_bytes=args.file_bytes, discard_mode=mode,
                                           fault_service=svc) as g:
            stop, rng = threading.Event(), np.random.default_rng(args.seed)

            def host():   # discards exactly the guest's volatile resident frames, then touches some
                while not stop.is_set():
                    s = g.mem._states
                    pick = np.flatnonzero(s == 0x0c)               # Vr, no hold
                    if pick.size:
                        pick = rng.choice(pick, min(64, pick.size), replace=False)
                        try:
                            g.mem.discard(pick)
                            bytes(g.mem.frames[pick[: pick.size // 2]])
                        except Exception:                           # the guest changed them meanwhile
                            pass
                    time.sleep(0.001)
            t = threading.Thread(target=host, daemon=True)
            t0 = time.perf_counter()
            t.start()
            done = 0
            while done < args.ops:
                done += g.step(min(50, args.ops - done))
            stop.set()
            t.join()
            g.drain_discarded()
            seconds = time.perf_counter() - t0
            st = g.stats
            out = {"test": "workload", "mode": mode, "retire": retire, "ops": args.ops,
                   "drained": st["drained_discarded"], "dropped": st["dropped_drained"],
                   "drains": st["dlist_drains"], "high_water": st["dlist_high_water"],
                   "retired_by_free": st["dlist_retired_by_free"],
                   "dropped_per_drain": round(st["dropped_drained"] / max(1, st["dlist_drains"]), 2),
                   "retire_calls": r.timed["calls"], "retire_seconds": round(r.timed["s"], 4),
                   "seconds": round(seconds, 3), "verify_mismatches": g.verify()}
        out["ring_stale"] = svc.stats()["ring_stale"]
        return out
    finally:
        svc.stop()


SECTION = """## The discarded page list (patch 8)

`scripts/discard_list.py` (step `discard_list` of `scripts/bench_all`). The list closes a race
between freeing a page and a discard fault on it: a frame listed as a served discard fault, then
freed and reused for another page before the drain. Guest mode's drain then dropped the new page
(the host never discarded it: a wasted re-read); transparent mode counted it as a discard. With
the list, every free is a drain point that retires the freed frames (`Guest.stats`
`dlist_retired_by_free`), and the fault thread lists a page only while its backing record still
names the page it served (`ring_stale` in the service's stats: faults that finished after the
free). `step()` drops the list in batches of `Guest(discard_list_batch=)` (default
`DISCARD_LIST_BATCH` = {batch}); `reclaim` and `verify` drop all of it. "no (drain only)" is the
code before: the same run with the retire step switched off."""


def section(doc, stamp):
    """The whole bench/README.md section, heading and prose included (the heading names the
    patch by number, and the README's prose holds no typed figure)."""
    from gphint.guest.guest_reclaim import DISCARD_LIST_BATCH
    return "%s\n\n_%s_\n\n%s" % (SECTION.format(batch=DISCARD_LIST_BATCH), stamp, table(doc))


def table(doc):
    c = doc["config"]
    lines = ["_window: %d rounds of discard faults on 8 pages of a file, the file truncated and another "
             "read into the freed frames before the drain; workload: mixed, %d operations with a host "
             "thread discarding and touching the guest's volatile pages; %s guest, %s of files, seed %d_"
             % (c["rounds"], c["ops"], c["guest_mem"], c["file_bytes"], c["seed"]), "",
             "| mode | list retires at free | window: reused frames | stale entries at drain | wrongly dropped "
             "| retired by free "
             "| workload: drained | dropped | drains | dropped per drain | high-water | retired by free "
             "| ring stale | retire cost per free | share of run | verify |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {(r["test"], r["mode"], r["retire"]): r for r in doc["rows"]}
    for mode in ("guest", "transparent"):
        for retire in (True, False):
            w, k = rows[("window", mode, retire)], rows[("workload", mode, retire)]
            cost = ("%.1f µs" % (1e6 * k["retire_seconds"] / k["retire_calls"]) if retire and k["retire_calls"]
                    else "–")
            share = "%.2f%%" % (100 * k["retire_seconds"] / k["seconds"]) if retire else "–"
            lines.append("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %.2f | %d | %d | %d | %s | %s | %d |" % (
                mode, "yes" if retire else "no (drain only)", w["reused_frames"], w["stale_at_drain"],
                w["wrongly_dropped"],
                w["retired_by_free"], k["drained"], k["dropped"], k["drains"], k["dropped_per_drain"],
                k["high_water"], k["retired_by_free"], k["ring_stale"], cost, share,
                w["verify_mismatches"] + k["verify_mismatches"] + w["content_mismatches"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest-mem", default="32M")
    ap.add_argument("--file-bytes", default="64M")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--ops", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="save the rows here")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.ops < 1:
        print("discard_list: --rounds and --ops must be >= 1, got %d and %d" % (args.rounds, args.ops),
              file=sys.stderr)
        return 2
    rows = [fn(mode, retire, args) for mode in ("guest", "transparent") for retire in (True, False)
            for fn in (window, workload)]
    doc = {"config": {"guest_mem": args.guest_mem, "file_bytes": args.file_bytes, "rounds": args.rounds,
                      "ops": args.ops, "seed": args.seed}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(table(doc))
    bad = [r for r in rows if r["verify_mismatches"] or r.get("content_mismatches")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
