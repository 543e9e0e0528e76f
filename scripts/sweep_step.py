#!/usr/bin/env python3
"""scripts/bench_all's `sweep` step: the batching preset (`gphint sweep --preset batching`),
its records collected into one JSON (timelines dropped: the README's table and plots do not
read them) and its report's plots written beside it.

    scripts/sweep_step.py --json OUT.json --plot-dir DIR
    GPHINT_SWEEP_REDUCED=1 scripts/sweep_step.py ...   # one seed, a third of the ops: a quick check

The JSON says which grid ran (`grid`, `reduced`), so that the README names it.
"""
import argparse
import json
import os
import sys
import tempfile

REDUCED_ENV = "GPHINT_SWEEP_REDUCED"


def reduced_grid(path, out):
    """The preset with one seed and a third of its operations: the same axes, a fraction of
    the time."""
    from gphint.sweep.grid import tomllib
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    doc["seeds"] = doc["seeds"][:1]
    doc["fixed"]["ops"] = max(1, doc["fixed"]["ops"] // 3)
    lines = ["seeds = %s" % json.dumps(doc["seeds"]), "[fixed]"]
    lines += ["%s = %s" % (k, json.dumps(v)) for k, v in doc["fixed"].items()]
    lines.append("[axes]")
    tables = {k: v for k, v in doc["axes"].items() if isinstance(v, dict)}
    lines += ["%s = %s" % (k, json.dumps(v)) for k, v in doc["axes"].items() if k not in tables]
    for name, table in tables.items():
        lines.append("[axes.%s]" % name)
        lines += ["%s = %s" % (k, json.dumps(v)) for k, v in table.items()]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot-dir", required=True)
    ap.add_argument("--preset", default="batching")
    args = ap.parse_args(argv)
    from gphint import cli
    from gphint.sweep import grid, plots, report, results
    reduced = os.environ.get(REDUCED_ENV) == "1"
    with tempfile.TemporaryDirectory(prefix="gphint-sweep-step-") as tmp:
        path = grid.preset_path(args.preset)
        if reduced:
            reduced_grid(path, os.path.join(tmp, "grid.toml"))
            path = os.path.join(tmp, "grid.toml")
        out = os.path.join(tmp, "results.jsonl")
        rc = cli.main(["sweep", path, "--results", out, "--quiet"])
        records = results.read(out)
    for r in records:
        r.pop("timeline", None)
        (r.get("node") or {}).pop("caps", None)     # the machine is named once, below
    g = grid.load(grid.preset_path(args.preset))
    ran = records[0]["sweep"]["options"] if records else {}
    doc = {"preset": args.preset, "reduced": reduced, "grid_cells": len(g.cells),
           "seeds": 1 if reduced else len(g.seeds), "ops": ran.get("ops"), "records": records}
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    plots.write_all(report.build(records), args.plot_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
