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
    text = "From N = %d to N = %d guests: %s." % (lo, hi, ", ".join(parts)) + _fallbacks(rec)
    if len(calls) == 2:
        text += (" The balloon called into guests %d and %d times (cmma: never); its guests took "
                 "%d and %d swap-ins of their own struct pages before they could answer." % (
                     calls[0], calls[1], rec[("balloon", lo)]["guest_serve_swap_ins"],
                     rec[("balloon", hi)]["guest_serve_swap_ins"]))
    return text


def _fallbacks(rec):
    """A sentence per strategy whose own mechanism did not reach the target at some N: its time
    to target there is the host swap's (or a timeout's), not the mechanism's."""
    out = []
    for name in sorted({s for s, _ in rec if s != "none"}):
        swapped = [n for (s, n), r in sorted(rec.items()) if s == name and r.get("reached_by") != "strategy"
                   and "reached_by" in r]
        if not swapped:
            continue
        late = [n for n in swapped if rec[(name, n)].get("timed_out")]
        text = " At N = %s, %s did not reach the target by itself" % (", ".join(map(str, swapped)), name)
        if late:
            text += " (given up on after %gs at N = %s)" % (rec[(name, late[0])]["timeout_s"],
                                                           ", ".join(map(str, late)))
        out.append(text + ": the host swapped the rest, and its time to target is that swap's.")
    return "".join(out)


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


# --- bench/bench_fleet.py's cases in bench.json: one fault service under 4 and 512 guests ------
FLEET_LATENCY_GROUP = "fleet: "          # ... "N discard faults spread over the guests, M MiB guests"
FLEET_CREATE_GROUP = "fleet: create, register and close"
FLEET_P99_TARGET = 2.0                   # bench_fleet.P99_RATIO
FLEET_IDLE_SHARE = 16                    # bench_fleet.IDLE_SHARE


def _fleet_cases(benches):
    lat = sorted((b for b in benches if b["group"].startswith(FLEET_LATENCY_GROUP)
                  and not b["group"].startswith(FLEET_CREATE_GROUP)), key=lambda b: b["extra_info"]["guests"])
    create = [b for b in benches if b["group"].startswith(FLEET_CREATE_GROUP)]
    return lat, create


def fleet_block(bench_doc, stamp_of):
    """bench/README.md's fleet block from bench.json; a line saying how to measure it when the
    fleet cases are not in it yet.  stamp_of(measured) -> "measured at commit ... on ..."."""
    lat, create = _fleet_cases(bench_doc.get("benchmarks", []))
    if len(lat) < 2 or not create:
        return ("_not measured yet: `scripts/bench_all --only fleet` runs bench/bench_fleet.py and "
                "renders this block_")
    measured = lat[0].get("measured") or bench_doc.get("measured", {})
    us = lambda ns: "%.1f" % (ns / 1000.0)
    lines = ["_%s; %s_" % (stamp_of(measured), lat[0]["group"]), "",
             "| guests | touch p50 µs | touch p99 µs | fault thread p99 µs |", "|---|---|---|---|"]
    for b in lat:
        e = b["extra_info"]
        lines.append("| %d | %s | %s | %s |" % (e["guests"], us(e["p50_ns"]), us(e["p99_ns"]),
                                               us(e["service_p99_ns"])))
    few, many = lat[0]["extra_info"], lat[-1]["extra_info"]
    c = create[0]["extra_info"]
    per_guest = c["host_bytes_per_idle_guest"]
    text = ("The p99 discard-fault latency at %d guests is %.2f× the %d-guest figure (target ≤ %g×). "
            "Creating and registering %d guests of %d MiB took %.3f s and closing them %.3f s "
            "(fastest of %d rounds), leaving no fd, mapping or file behind; an idle registered "
            "guest costs the host %.1f KiB beyond its untouched memory (target ≤ 1/%d of its size, "
            "%d KiB)." % (many["guests"], many["p99_ns"] / few["p99_ns"], few["guests"], FLEET_P99_TARGET,
                          c["guests"], c["guest_bytes"] >> 20, c["create_register_s"], c["close_s"],
                          create[0]["stats"].get("rounds", 1), per_guest / 1024.0, FLEET_IDLE_SHARE,
                          (c["guest_bytes"] // FLEET_IDLE_SHARE) >> 10))
    import textwrap
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
