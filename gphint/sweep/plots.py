"""A sweep's report as plots, each readable without a legend: per strategy, one figure of
small multiples (a row per varied parameter, a column per metric; one line per value of the
other parameters, named at its right end, with its spread over seeds as a band), and for a
strategy with two or more varied parameters a heatmap per metric of the two with the most
values (batch x submit), the median written in every square.
"""
import json
import math
import os

from .. import outputs
from .report import METRICS, _fmt

# the metrics a figure shows (all of them make the figure unreadable)
PLOTTED = ["given back", "host CPU per MiB", "discard syscalls per MiB", "throughput vs none",
           "refaults (est.)"]
UNITS = {n: u for n, u, _ in METRICS}
MAX_LINES = 8


def _label(name):
    return name + (" (%s)" % UNITS[name] if UNITS[name] else "")


def _positions(values):
    """x positions: the values themselves when numeric (log scale when they span > 20x), else
    evenly spaced categories."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        vs = sorted(values)
        log = vs[0] > 0 and vs[-1] / vs[0] > 20
        return {v: v for v in vs}, log
    return {v: i for i, v in enumerate(sorted(values, key=str))}, False


def _series(rows, param, others):
    """{label of the other parameters' values: [(value of param, metrics)]}."""
    out = {}
    for row in rows:
        rest = {k: row["params"][k] for k in others}
        label = ",".join("%s=%s" % kv for kv in sorted(rest.items())) or row["strategy_name"]
        out.setdefault(label, []).append((row["params"][param], row["metrics"]))
    return out


def _panel(ax, rows, param, others, metric, colors):
    series = _series(rows, param, others)
    if len(series) > MAX_LINES:                 # too many to read: keep the first few
        series = dict(list(series.items())[:MAX_LINES])
    pos, log = _positions({v for pts in series.values() for v, _ in pts})
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts = sorted((pos[v], m[metric]) for v, m in pts if m.get(metric) and math.isfinite(m[metric][2]))
        if not pts:
            continue
        c = colors[i % len(colors)]
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1][0] for p in pts], "o-", color=c, lw=1.6, ms=4)
        ax.fill_between(xs, [p[1][1] for p in pts], [p[1][2] for p in pts], color=c, alpha=0.18, lw=0)
        if len(series) > 1:
            ax.annotate(label, (xs[-1], pts[-1][1][0]), xytext=(4, 0), textcoords="offset points",
                        color=c, fontsize=7, va="center")
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(pos.values()))
    ax.set_xticklabels([str(v) for v in sorted(pos, key=lambda v: pos[v])], fontsize=7)
    ax.set_xlabel(param, fontsize=8)
    ax.set_title(_label(metric), fontsize=8)
    ax.margins(x=0.25)
    ax.grid(alpha=0.3)


def _save(fig, path):
    import matplotlib.pyplot as plt
    try:
        outputs.write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100), "--plot",
                                 binary=True)
    finally:
        plt.close(fig)
    return path


def small_multiples(rep, name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    params = rep["varied"][name]
    rows = [r for r in rep["rows"] if r["strategy_name"] == name]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(params), len(PLOTTED), figsize=(3.1 * len(PLOTTED), 2.6 * len(params)),
                             squeeze=False, constrained_layout=True)
    for i, param in enumerate(params):
        for j, metric in enumerate(PLOTTED):
            _panel(axes[i][j], rows, param, [p for p in params if p != param], metric, colors)
    fig.suptitle("%s: each parameter's effect (median over seeds, band = spread)" % name, fontsize=10)
    return _save(fig, path)


def _mode(values):
    values = list(values)
    return max(values, key=values.count)


def heatmap_axes(params, rows):
    """The pair of parameters with the most value combinations in the rows (batch x submit),
    and one row per combination: where several differ in another parameter (host_batch), the
    one with that parameter's most common value in its row of the grid; returns (p, q, rows)."""
    dumps = lambda r, k: json.dumps(r["params"][k])
    best = None
    for i, p in enumerate(params):
        for q in params[i + 1:]:
            rest = [k for k in params if k not in (p, q)]
            usual = {(dumps(r, p), k): _mode(dumps(o, k) for o in rows if dumps(o, p) == dumps(r, p))
                     for r in rows for k in rest}
            cells = {}
            for r in sorted(rows, key=lambda r: sum(dumps(r, k) != usual[dumps(r, p), k] for k in rest)):
                cells.setdefault((dumps(r, p), dumps(r, q)), r)
            if best is None or len(cells) > len(best[2]):
                best = (p, q, list(cells.values()))
    return best


def heatmap(rep, name, path):
    """Two varied parameters: a grid of squares per metric, the median written in each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    rows = [r for r in rep["rows"] if r["strategy_name"] == name]
    p, q, rows = heatmap_axes(rep["varied"][name], rows)
    ys = sorted({r["params"][p] for r in rows}, key=lambda v: (str(type(v)), v))
    xs = sorted({r["params"][q] for r in rows}, key=lambda v: (str(type(v)), v))
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.4 * len(PLOTTED), 0.5 * len(ys) + 2),
                             squeeze=False, constrained_layout=True)
    for ax, metric in zip(axes[0], PLOTTED):
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in rows:
            m = r["metrics"].get(metric)
            if m and math.isfinite(m[0]):
                grid[ys.index(r["params"][p]), xs.index(r["params"][q])] = m[0]
        ax.imshow(grid, cmap="viridis", aspect="auto")
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=8,
                        color="black" if v > mid else "white")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7, rotation=20)
        ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
        ax.set_xlabel(q, fontsize=8)
        ax.set_ylabel(p, fontsize=8)
        ax.set_title(_label(metric), fontsize=8)
    fig.suptitle("%s: %s x %s (median over seeds)" % (name, p, q), fontsize=10)
    return _save(fig, path)


def write_all(rep, directory):
    """Every plot the report has; returns their paths (a strategy with nothing varied has none)."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, params in sorted(rep["varied"].items()):
        if not params:
            continue
        written.append(small_multiples(rep, name, os.path.join(directory, "sweep-%s.png" % name)))
        if len(params) >= 2:
            written.append(heatmap(rep, name, os.path.join(directory, "sweep-%s-heatmap.png" % name)))
    if not written:
        written.append(_overview(rep, os.path.join(directory, "sweep.png")))
    return written


def _overview(rep, path):
    """No strategy varies a parameter (a list of strategies): one bar per grid point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rep["rows"]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.1 * len(PLOTTED), 3.4),
                             squeeze=False, constrained_layout=True)
    names = [r["strategy"] + "".join(" %s" % json.dumps(v) for k, v in sorted(r["point"].items())
                                     if k != "strategy") for r in rows]
    for ax, metric in zip(axes[0], PLOTTED):
        meds = [(r["metrics"].get(metric) or (0, 0, 0))for r in rows]
        ax.bar(range(len(rows)), [m[0] for m in meds],
               yerr=[[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]], capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(_label(metric), fontsize=8)
    fig.suptitle("median over seeds, whiskers = spread", fontsize=10)
    return _save(fig, path)
