#!/usr/bin/env python3
"""README's scale headline from a `gphint scale --json` document: how the cost of taking
memory back grows with the number of guests, for the balloon and for hinting.

    scripts/scale_tables.py bench/results/scale.json        # the markdown block on stdout

scripts/bench_all renders it into README.md between `<!-- bench:scale -->` and
`<!-- /bench:scale -->` from bench/results/scale.json (its `scale` step); the sentences under
the table are computed from the same records, never typed.

Sample output (abridged):
    | strategy | N | time to target s | host CPU ms/MiB | guest calls | ...
    |---|---|---|---|---|
    | balloon | 8 | 0.172 | 1.92 | 32 | ...
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _by(doc):
    return {(r["strategy_name"], r["guests"]): r for r in doc["results"] if not r.get("error")}


def _growth(rec, name, key, lo, hi):
    a, b = rec.get((name, lo), {}).get(key), rec.get((name, hi), {}).get(key)
    if not a or b is None:
        return None
    return b / a


def findings(doc):
    """The sentence under the table: each strategy's growth from the smallest to the largest N."""
    rec = _by(doc)
    ns = sorted({n for _, n in rec})
    if len(ns) < 2:
        return ""
    lo, hi = ns[0], ns[-1]
    parts = []
    for name, key, what in (("balloon", "host_cpu_s_per_mib", "the balloon's host CPU per MiB"),
                            ("balloon", "time_to_target_s", "the balloon's time to target"),
                            ("balloon", "guest_serve_cpu_s", "the guest CPU serving it"),
                            ("cmma", "host_cpu_s_per_mib", "cmma's host CPU per MiB"),
                            ("cmma", "time_to_target_s", "cmma's time to target")):
        g = _growth(rec, name, key, lo, hi)
        if g is not None:
            parts.append("%s %.2f×" % (what, g))
    calls = [rec[("balloon", n)]["guest_calls"] for n in (lo, hi) if ("balloon", n) in rec]
    text = "From N = %d to N = %d guests: %s." % (lo, hi, ", ".join(parts))
    if len(calls) == 2:
        text += (" The balloon called into guests %d and %d times (cmma: never); its guests took "
                 "%d and %d swap-ins of their own struct pages before they could answer." % (
                     calls[0], calls[1], rec[("balloon", lo)]["guest_serve_swap_ins"],
                     rec[("balloon", hi)]["guest_serve_swap_ins"]))
    return text


def render(doc, stamp_text):
    from gphint.scale import report
    env = doc["env"]
    head = "_%s; machine: Linux %s %s, %s CPUs; gphint %s, %s_" % (
        stamp_text, env["kernel"], env["machine"], env["cpu_count"], env["gphint_version"], env["mechanism"])
    import textwrap
    lines = ["### scale", head, "", report.summary(doc) + ":", "", report.markdown_table(doc["results"])]
    text = findings(doc)
    if text:
        lines += ["", textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)]
    return "\n".join(lines)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", metavar="SCALE.json", help="a gphint scale --json document")
    args = ap.parse_args(argv)
    try:
        with open(args.json) as f:
            doc = json.load(f)
        print(render(doc, "measured %s" % (doc.get("measured") or {}).get("date", "?")))
    except (OSError, ValueError, KeyError) as e:
        print("scale_tables: %s: %s" % (args.json, e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
