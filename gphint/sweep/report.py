"""A sweep's results -> per strategy and parameter value, the median over seeds and its spread
(min-max, or the central 95% of the seeds when there are >= 5) of what the question asks:
memory given back, its cost to the host and to the guests, and whether anything was lost.

Integrity errors must be 0 in every cell; a cell with any is listed first, loudly.
"""
import json
import math
import mmap

import numpy as np

MiB = float(1 << 20)
MANY_SEEDS = 5


def given_back_bytes(r):
    """Host memory given back: what the machine did not have to hold (the run without any
    reclaim would hold its baseline plus everything the guests touched; it held its cgroup's
    average) where the record has the machine-level witness, else the process view
    (`host_saved_bytes`: touched minus resident at the end, mincore)."""
    h = r.get("host") or {}
    if h.get("cgroup_avg_bytes") is not None and h.get("baseline_bytes") is not None:
        return max(0, h["baseline_bytes"] + r["guest_touched_bytes"] - h["cgroup_avg_bytes"])
    return r["host_saved_bytes"]


def taken_back_mib(r):
    """Memory the host took from the guests: discarded plus swapped out."""
    return (r.get("discarded_bytes", 0) + r.get("host_swap_out_bytes", 0)) / MiB


def _per(num, den):
    return None if not den else num / den


def _swap_io(r):
    h = r.get("host") or {}
    kernel = (h.get("kernel_swap_out_bytes") or 0) + (h.get("kernel_swap_in_bytes") or 0)
    return (r["host_swap_out_bytes"] + r["host_swap_in_bytes"] + kernel) / MiB


def refaults(r):
    """Pages the guests faulted back after the host took them: every page the fault service
    filled (zeros, file reloads, swap-ins) beyond the first touch of each page the guests used
    (`guest_touched_bytes`, itself a lower bound: so this is an upper estimate)."""
    if r.get("fault_latency_p50_us") is None and not r.get("zero_fills"):
        return None                     # no fault service in this run: nothing counted
    filled = r.get("zero_fills", 0) + r.get("file_reloads", 0) + r.get("swap_ins", 0)
    return max(0, filled - r["guest_touched_bytes"] // mmap.PAGESIZE)


def fragment_latency(r):
    """Proactive probe: seconds until freed 64 KiB fragments left the host's RSS (inf: not
    within the probe's timeout; None: no probe)."""
    p = (r.get("proactive_probe") or {}).get("fragmented")
    if not p:
        return None
    return float("inf") if p.get("latency_s") is None else p["latency_s"]


# (name, unit, function of (record, the same cell's `none` record or None) -> float or None)
METRICS = [
    ("given back", "MiB", lambda r, b: given_back_bytes(r) / MiB),
    ("footprint", "MiB*s", lambda r, b: (r.get("host") or {}).get("footprint_mib_s")),
    ("host CPU per MiB", "ms", lambda r, b: _per(1000 * r["host_cpu_s"], taken_back_mib(r))),
    ("discard syscalls per MiB", "", lambda r, b: _per(r.get("discard_syscalls", 0),
                                                       r.get("discarded_bytes", 0) / MiB)),
    ("hint ops per guest op", "", lambda r, b: _per(r.get("hint_ops", 0), r["ops"])),
    ("throughput vs none", "x", lambda r, b: _per(r["ops_per_s"], b and b["ops_per_s"])),
    ("swap I/O", "MiB", lambda r, b: _swap_io(r)),
    ("discard faults", "", lambda r, b: r.get("discard_faults", 0)),
    ("refaults (est.)", "pages", lambda r, b: refaults(r)),
    ("fragments returned", "s", lambda r, b: fragment_latency(r)),
    ("integrity errors", "", lambda r, b: r["integrity_errors"]),
]
METRIC_NAMES = [m[0] for m in METRICS]


def spread(values):
    """(median, lo, hi, how) of a list of numbers."""
    v = np.asarray(values, dtype=float)
    if len(v) >= MANY_SEEDS:
        lo, hi = np.percentile(v, [2.5, 97.5])
        return float(np.median(v)), float(lo), float(hi), "95%"
    return float(np.median(v)), float(v.min()), float(v.max()), "min-max"


def _point(rec):
    """The grid point of a record: its coordinates without the seed."""
    return {k: v for k, v in rec["cell"].items() if k != "seed"}


def _key(d):
    return json.dumps(d, sort_keys=True)


def _baselines(records):
    """{coordinates without strategy and seed + seed: the `none` record there}."""
    out = {}
    for r in records:
        if r.get("strategy_name") == "none" and not r.get("error"):
            out[_key({k: v for k, v in r["cell"].items() if k != "strategy"})] = r
    return out


def varied(records):
    """{strategy name: [parameter names whose value differs between its records]} -- strategy
    keys (from each record's `params`) and the grid's other axes."""
    out = {}
    axes = sorted({k for r in records for k in r["cell"] if k not in ("strategy", "seed")})
    for name in sorted({r["strategy_name"] for r in records}):
        mine = [r for r in records if r["strategy_name"] == name and not r.get("error")]
        keys = sorted({k for r in mine for k in (r.get("params") or {})})
        out[name] = [k for k in keys if len({_key(r["params"].get(k)) for r in mine}) > 1] + \
            [a for a in axes if len({_key(r["cell"].get(a)) for r in mine}) > 1]
    return out


def _value_of(rec, param):
    return rec["cell"][param] if param in rec["cell"] and param != "strategy" else rec["params"].get(param)


def build(records):
    """The report: rows (one per strategy and grid point), failures and integrity errors."""
    from .results import outcomes
    last = list(outcomes(records).values())
    ok = [r for r in last if not r.get("error")]
    base = _baselines(ok)
    vary = varied(ok)
    groups = {}
    for r in ok:
        groups.setdefault(_key(_point(r)), []).append(r)
    rows = []
    for recs in groups.values():
        r0 = recs[0]
        metrics = {}
        for name, _, fn in METRICS:
            vals = [fn(r, base.get(_key({k: v for k, v in r["cell"].items() if k != "strategy"})))
                    for r in recs]
            vals = [v for v in vals if v is not None]
            metrics[name] = spread(vals) if vals else None
        rows.append({"strategy": r0["strategy"], "strategy_name": r0["strategy_name"],
                     "point": _point(r0), "seeds": sorted(r["cell"]["seed"] for r in recs),
                     "params": {p: _value_of(r0, p) for p in vary.get(r0["strategy_name"], [])},
                     "metrics": metrics})
    rows.sort(key=lambda row: (row["strategy_name"], _key(row["params"]), row["strategy"], _key(row["point"])))
    lost = [r for r in ok if r["integrity_errors"]]
    return {"rows": rows, "varied": vary, "failed": [r for r in last if r.get("error")],
            "lost": lost, "cells": len(last)}


def integrity_banner(rep):
    """Loud lines for every cell that lost data ('' when none did)."""
    if not rep["lost"]:
        return ""
    lines = ["!!! INTEGRITY ERRORS in %d cell(s): pages differ from what the guests wrote !!!"
             % len(rep["lost"])]
    lines += ["!!!   %s: %d pages" % (_key(r["cell"]), r["integrity_errors"]) for r in rep["lost"]]
    return "\n".join(lines)


def _fmt(x):
    if x is None:
        return "-"
    if math.isinf(x):
        return "never"
    a = abs(x)
    return "%.0f" % x if a >= 100 or x == int(x) else "%.3g" % x


def cell_text(m):
    if m is None:
        return "-"
    med, lo, hi, _ = m
    return _fmt(med) if lo == hi else "%s [%s-%s]" % (_fmt(med), _fmt(lo), _fmt(hi))


def _point_text(row):
    others = {k: v for k, v in row["point"].items() if k != "strategy"}
    return row["strategy"] + ("".join(" %s=%s" % kv for kv in sorted(others.items())))


def table(rep):
    """Header and rows of strings; rows with integrity errors first."""
    header = ["cell", "seeds"] + ["%s%s" % (n, " (%s)" % u if u else "") for n, u, _ in METRICS]
    rows = sorted(rep["rows"], key=lambda row: -(row["metrics"]["integrity errors"] or (0,))[0])
    body = [[_point_text(row), str(len(row["seeds"]))] +
            [cell_text(row["metrics"][n]) for n in METRIC_NAMES] for row in rows]
    return header, body


def _how(rep):
    hows = {row["metrics"]["given back"][3] for row in rep["rows"] if row["metrics"]["given back"]}
    return "median [%s over seeds]" % "/".join(sorted(hows) or ["min-max"])


def text(rep):
    header, body = table(rep)
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    lines = ["%d cells; %s" % (rep["cells"], _how(rep))]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for r in rep["failed"]:
        lines.append("FAILED %s: %s" % (_key(r["cell"]), r["error"]))
    return "\n".join(lines)


def markdown(rep):
    header, body = table(rep)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    lines += ["", "%d cells; each figure the %s." % (rep["cells"], _how(rep))]
    lines += ["FAILED `%s`: %s" % (_key(r["cell"]), r["error"]) for r in rep["failed"]]
    return "\n".join(lines)
