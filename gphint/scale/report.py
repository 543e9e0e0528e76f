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
LABEL_GAP_PX = 11
COLORS = {"none": "tab:green", "balloon": "tab:blue", "reporting": "tab:red", "unused": "tab:purple",
          "cmma": "tab:orange"}       # one colour per strategy in every panel
PLOTTED = [("time_to_target_s", "time to target (s)"),
           ("host_cpu_s_per_mib", "host CPU per MiB taken back (s)"),
           ("guest_calls", "calls into guests"), ("guest_serve_cpu_s", "guest CPU serving the host (s)"),
           ("op_latency_p99_s", "guest op latency p99 (s)"),
           ("host_swap_out_bytes", "host swap out (MiB)")]


def _time_cell(rec):
    """Time to target, and who reached it when it was not the strategy's own mechanism: a time
    the host swap reached after the mechanism gave up is never shown as the mechanism's."""
    v, by = rec.get("time_to_target_s"), rec.get("reached_by")
    late = " after the %gs timeout" % rec["timeout_s"] if rec.get("timed_out") else ""
    if v is None:
        return "not reached" + late if "reached_by" in rec else "-"
    if by == "host swap" and rec.get("strategy_name") != "none":
        share = rec.get("mechanism_share")
        own = "" if share is None else ", %.0f%% by %s" % (100 * share, rec.get("strategy_name"))
        return "%.3f by host swap%s%s" % (v, own, late)
    return "%.3f" % v


def _cell(rec, key, fmt):
    if key == "time_to_target_s":
        return _time_cell(rec)
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


def _label_ends(ax, ends, dpi):
    """Label each line at its right end, pushed apart vertically so that no two overlap."""
    ax.autoscale_view()
    pos = sorted((ax.transData.transform((x, y))[1], name, x, y, color) for name, x, y, color in ends)
    placed = []
    for py, name, x, y, color in pos:
        py_label = max(py, placed[-1] + LABEL_GAP_PX) if placed else py
        placed.append(py_label)
        ax.annotate(name, (x, y), xytext=(5, (py_label - py) * 72.0 / dpi), textcoords="offset points",
                    va="center", fontsize=8, color=color)


def plot(doc, path):
    """Write the plot of each metric against N; returns path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    records = doc["results"]
    cols, dpi = 3, 90
    rows = math.ceil(len(PLOTTED) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    labelled = []
    for i, (key, title) in enumerate(PLOTTED):
        ax = fig.add_subplot(rows, cols, i + 1)
        series = _series(records, key)
        # a strategy whose value is 0 at every N has no point on a log axis: named under the title
        zero = sorted(s for s, pts in series.items() if all(v <= 0 for _, v in pts))
        ends = []
        for strategy, pts in sorted(series.items()):
            pts = [(n, v) for n, v in pts if v > 0]
            if strategy in zero or not pts:
                continue
            line, = ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o",
                            color=COLORS.get(strategy.split(":")[0]))
            ends.append((strategy, pts[-1][0], pts[-1][1], line.get_color()))
        ax.set_xscale("log")
        if ends:
            ax.set_yscale("log")
        ax.set_title(title + ("\n(zero for %s)" % ", ".join(zero) if zero else ""), fontsize=9)
        ax.set_xlabel("guests (N)", fontsize=8)
        ax.margins(x=0.3)
        labelled.append((ax, ends))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    for ax, ends in labelled:
        _label_ends(ax, ends, dpi)
    fig.suptitle(summary(doc), fontsize=9)
    fig.savefig(path, dpi=dpi)
    return path
