"""The scale experiment's table and plot: each metric against the number of guests.

The plot has one panel per metric, N on a log axis, one line per strategy labelled at its right
end (readable without a legend); a metric a strategy has no value for (no calls into guests
under cmma) is left out of that line, and a zero on a log axis is drawn at the axis' floor.
"""
import math

from ..units import fmt_bytes

COLUMNS = [  # (record field, heading, format)
    ("strategy", "strategy", "%s"), ("guests", "N", "%d"),
    ("time_to_target_s", "time to target s", "%.3f"),
    ("host_cpu_s_per_mib", "host CPU ms/MiB", None),
    ("guest_calls", "guest calls", "%d"), ("guest_serve_cpu_s", "guest serve CPU s", "%.3f"),
    ("guest_serve_swap_ins", "serve swap-ins", "%d"),
    ("op_latency_p50_s", "op p50 ms", None), ("op_latency_p99_s", "op p99 ms", None),
    ("host_swap_out_bytes", "host swap out MiB", None), ("integrity_errors", "integrity errors", "%d"),
]
PLOTTED = [("time_to_target_s", "time to target (s)"),
           ("host_cpu_s_per_mib", "host CPU per MiB taken back (s)"),
           ("guest_calls", "calls into guests"), ("guest_serve_cpu_s", "guest CPU serving the host (s)"),
           ("op_latency_p99_s", "guest op latency p99 (s)"),
           ("host_swap_out_bytes", "host swap out (MiB)")]


def _cell(rec, key, fmt):
    v = rec.get(key)
    if v is None:
        return "-"
    if key in ("op_latency_p50_s", "op_latency_p99_s", "host_cpu_s_per_mib"):
        return "%.3f" % (v * 1000)
    if key == "host_swap_out_bytes":
        return "%.1f" % (v / (1 << 20))
    return fmt % v


def markdown_table(records):
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in records:
        if r.get("error"):
            lines.append("| %s | %d | error: %s |" % (r["strategy"], r["guests"], r["error"])
                         + " |" * (len(COLUMNS) - 3))
            continue
        lines.append("| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def summary(doc):
    c = doc["config"]
    return ("scale: N = %s guests of %s (1 in %d busy), host takes back %.0f%% of the fleet's "
            "memory; idle guests %.0f%% host-swapped before" % (
                ",".join(str(n) for n in c["guests"]), fmt_bytes(c["guest_mem_bytes"]),
                round(1 / c["busy_share"]), 100 * c["take"], 100 * c["cold_fraction"]))


def _series(records, key):
    """{strategy: [(N, value)]} of the records that have a value for key."""
    out = {}
    for r in records:
        v = r.get(key)
        if r.get("error") or v is None:
            continue
        if key == "host_swap_out_bytes":
            v = v / (1 << 20)
        out.setdefault(r["strategy"], []).append((r["guests"], float(v)))
    return {s: sorted(p) for s, p in out.items()}


def plot(doc, path):
    """Write the plot of each metric against N; returns path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    records = doc["results"]
    cols = 3
    rows = math.ceil(len(PLOTTED) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows))
    for i, (key, title) in enumerate(PLOTTED):
        ax = fig.add_subplot(rows, cols, i + 1)
        series = _series(records, key)
        positive = [v for pts in series.values() for _, v in pts if v > 0]
        floor = min(positive) / 3 if positive else 1e-6
        for strategy, pts in sorted(series.items()):
            xs = [n for n, _ in pts]
            ys = [v if v > 0 else floor for _, v in pts]
            line, = ax.plot(xs, ys, marker="o")
            ax.annotate(strategy, (xs[-1], ys[-1]), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8, color=line.get_color())
        ax.set_xscale("log")
        if positive:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("guests (N)", fontsize=8)
        ax.margins(x=0.25)
    fig.suptitle(summary(doc), fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_figure(path, dpi=90)
    return path
