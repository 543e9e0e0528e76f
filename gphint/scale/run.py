"""Run the scale experiment: each (strategy, N) in a fresh child process, as `compare` does.

`run_one(config, spec, n)` builds a fleet of n guests in this process, lets the host take back
its share and returns the record; `run_scale(config)` runs every (strategy, N) in its own child
(`child_main`, on this very gphint: gphint.childproc), so that one shape's leftovers (allocator
arenas, page cache, the fault service's tables) never weigh on the next; a child that fails
gives an error record and the others still run.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

from .. import childproc, tmpfiles
from ..experiment import environment, write_json
from ..experiment.comparison import child_record, run_child
from ..host.spec import parse_strategy
from .config import ScaleConfig
from .fleet import Fleet, make_service
from .takeback import TakeBack

SCHEMA_VERSION = 1


def run_one(config, spec, n):
    """One strategy, one fleet of n guests, in this process: the results record."""
    spec = parse_strategy(spec)
    svc, why = make_service()
    rec = {"strategy": str(spec), "strategy_name": spec.name, "params": dict(spec.params),
           "guests": int(n), "busy_guests": config.busy_guests(n),
           "guest_mem_bytes": config.guest_mem_bytes}
    if svc is None:
        # host swap, cmma's VOLATILE discards and the struct pages' swap-ins all need it
        rec["error"] = "the scale run needs the discard-fault service: %s" % why
        return rec
    fleet = tb = None
    try:
        t_build = time.monotonic()
        fleet = Fleet(n, config, spec, svc)
        tb = TakeBack(fleet, spec, svc)
        rec["build_s"] = round(time.monotonic() - t_build, 3)
        rec.update(tb.run(np.random.default_rng([config.seed, n, 7])))
        rec["integrity_errors"] = int(sum(g.verify() for g in fleet.guests))
        stats = svc.stats()
        rec["discard_faults"] = int(stats.get("discard_faults", 0))
        rec["fault_latency_p99_us"] = (None if stats.get("latency_p99_ns") is None
                                       else round(stats["latency_p99_ns"] / 1000.0, 2))
        return rec
    finally:
        if fleet is not None:
            fleet.close()
        if tb is not None:
            tb.close()
        svc.stop()


def child_args(config, spec, n, out):
    return ["--strategy", str(spec), "--guests", str(n), "--guest-mem", str(config.guest_mem_bytes),
            "--take", repr(config.take), "--seed", str(config.seed), "--json", out]


def child_main(argv=None):
    """Entry of one (strategy, N) child: `--parent-pid PID --strategy S --guests N ...`."""
    import argparse
    from ..cli import die_with_parent
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="gphint-scale-child")
    ap.add_argument("--parent-pid", type=int, required=True)
    for opt in ("--strategy", "--guests", "--guest-mem", "--take", "--seed", "--json"):
        ap.add_argument(opt, required=True)
    a = ap.parse_args(argv)
    die_with_parent(a.parent_pid)
    cfg = ScaleConfig(guests=[int(a.guests)], strategies=[a.strategy], guest_mem_bytes=a.guest_mem,
                      take=float(a.take), seed=int(a.seed)).validate()
    try:
        rec = run_one(cfg, a.strategy, int(a.guests))
    except Exception as e:           # the record says why; the parent goes on
        rec = {"strategy": a.strategy, "strategy_name": parse_strategy(a.strategy).name,
               "guests": int(a.guests), "error": "%s: %s" % (type(e).__name__, e)}
    with open(a.json, "w") as f:
        json.dump({"results": [rec]}, f)     # compare's child document: one child_record reads both
    return 0 if not rec.get("error") and not rec.get("integrity_errors") else 1


def _child_record(spec, n, out, rc, err):
    rec = child_record(spec, out, rc, err)
    rec.setdefault("guests", n)
    return rec


def run_scale(config, progress=None):
    """Every (strategy, N) of config, each in a fresh child; returns the records."""
    config.validate()
    specs = [parse_strategy(s) for s in config.strategies]
    shapes = [(spec, n) for n in config.guests for spec in specs]
    records = []
    tmpfiles.sweep()
    with tempfile.TemporaryDirectory(prefix=tmpfiles.prefix("scale")) as tmp:
        for i, (spec, n) in enumerate(shapes):
            if progress:
                progress(i, len(shapes), spec, n)
            out = os.path.join(tmp, "%d.json" % i)
            cmd = childproc.command("gphint.scale.run:child_main",
                                    ["--parent-pid", str(os.getpid())] + child_args(config, spec, n, out))
            rc, err = run_child(cmd, os.path.join(tmp, "%d.err" % i))
            records.append(_child_record(spec, n, out, rc, err))
    if progress:
        progress(len(shapes), len(shapes), None, None)
    return records


def results_document(config, records, env=None):
    return {"schema_version": SCHEMA_VERSION, "kind": "scale", "config": config.to_dict(),
            "env": env or environment(), "results": records}


def save(path, doc):
    return write_json(path, doc)
