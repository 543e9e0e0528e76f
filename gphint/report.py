"""Results -> what people read: a comparison table (text or markdown) and one PNG.

The plot is meant to be read without its legend: each RSS line is labelled with its strategy
at its right end, bars carry strategy names on the axis and their values on top.  The lines are
the guests' resident memory as the kernel reports it (mincore over the guest regions) -- the
part of the process RSS the host's strategy controls; the table gives process RSS too (it
adds the interpreter and the guest model's own tables and file mappings).
"""
import os
import textwrap

from . import outputs
from .units import fmt_bytes

MiB = float(1 << 20)

def _mib(key):
    return lambda r: "%.1f" % (r[key] / MiB) if r.get(key) is not None else "-"


def _probe(pattern):
    def cell(r):
        p = (r.get("proactive_probe") or {}).get(pattern)
        if not p:
            return "-"
        if p["latency_s"] is None:
            return "never (%d%%)" % round(100 * p["dropped_fraction"])
        return "%.2f s" % p["latency_s"]
    return cell


def _host(key):
    """A machine-level witness from the record's `host` object (gphint.host.witness)."""
    return lambda r: "%.1f" % ((r.get("host") or {})[key] / MiB) \
        if (r.get("host") or {}).get(key) is not None else "-"


def _machine_saved(r):
    """What the machine did not have to hold: the run without any reclaim would hold its
    baseline plus everything the guests touched; it held its cgroup's average usage."""
    h = r.get("host") or {}
    if h.get("cgroup_avg_bytes") is None or h.get("baseline_bytes") is None:
        return "-"
    return "%.1f" % (max(0, h["baseline_bytes"] + r["guest_touched_bytes"] - h["cgroup_avg_bytes"]) / MiB)


def _host_cache(r):
    h = r.get("host") or {}
    if h.get("swap_file_cached_peak_bytes") is None:
        return "-"
    return "%.1f" % ((h["swap_file_cached_peak_bytes"] + h["backing_cached_peak_bytes"]) / MiB)


# (header, function of a record) -- the columns of the comparison table
COLUMNS = [
    ("strategy", lambda r: r["strategy"]),
    ("RSS peak MiB", _mib("rss_peak_bytes")),
    ("RSS end MiB", _mib("rss_end_bytes")),
    ("anon RSS peak MiB", _mib("rss_anon_peak_bytes")),
    ("touched MiB", _mib("guest_touched_bytes")),
    ("saved MiB", _mib("host_saved_bytes")),
    ("machine saved MiB", _machine_saved),
    ("cgroup avg MiB", _host("cgroup_avg_bytes")),
    ("footprint MiB*s", lambda r: "%.0f" % r["host"]["footprint_mib_s"]
     if (r.get("host") or {}).get("footprint_mib_s") is not None else "-"),
    ("host cache MiB", _host_cache),
    ("discarded MiB", _mib("discarded_bytes")),
    ("swap out MiB", _mib("host_swap_out_bytes")),
    ("swap in MiB", _mib("host_swap_in_bytes")),
    ("kernel swap out MiB", _host("kernel_swap_out_bytes")),
    ("kernel swap in MiB", _host("kernel_swap_in_bytes")),
    ("discard faults", lambda r: str(r.get("discard_faults", 0))),
    ("guest CPU s", lambda r: "%.2f" % r["guest_cpu_s"]),
    ("host CPU s", lambda r: "%.2f" % r["host_cpu_s"]),
    ("ops/s", lambda r: "%.0f" % r["ops_per_s"]),
    ("free->drop", _probe("contiguous")),
    ("fragments", _probe("fragmented")),
    ("integrity errors", lambda r: str(r["integrity_errors"])),
]


# the machine-level view on its own (README's host table): per-process saving beside what the
# machine saw, and the real swap I/O of gphint's host swap and of the kernel
HOST_COLUMNS = [COLUMNS[0], ("touched MiB", _mib("guest_touched_bytes")),
                ("saved MiB (process)", _mib("host_saved_bytes")),
                ("machine saved MiB", _machine_saved), ("cgroup avg MiB", _host("cgroup_avg_bytes")),
                ("cgroup peak MiB", _host("cgroup_peak_bytes")),
                ("footprint MiB*s", dict(COLUMNS)["footprint MiB*s"]),
                ("host cache MiB", _host_cache),
                ("gphint swap out MiB", _mib("host_swap_out_bytes")),
                ("gphint swap in MiB", _mib("host_swap_in_bytes")),
                ("kernel swap out MiB", _host("kernel_swap_out_bytes")),
                ("kernel swap in MiB", _host("kernel_swap_in_bytes")),
                ("cgroup swap peak MiB", _host("cgroup_swap_peak_bytes")),
                ("ops/s", dict(COLUMNS)["ops/s"]),
                ("integrity errors", dict(COLUMNS)["integrity errors"])]


def rows(records, columns=None):
    """Header + one row of strings per record; a failed strategy shows its error."""
    columns = COLUMNS if columns is None else columns
    header = [c[0] for c in columns]
    out = []
    for r in records:
        if r.get("error"):
            out.append([r["strategy"], "error: " + r["error"]] + [""] * (len(columns) - 2))
        else:
            out.append([f(r) for _, f in columns])
    return header, out


def _drop_empty(header, body):
    """Columns that say nothing in this run (all '-') are left out."""
    keep = [i for i in range(len(header)) if i < 2 or any(row[i] not in ("-", "") for row in body)]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in body]


def text_table(records):
    header, body = _drop_empty(*rows(records))
    errors = [r for r in body if r[1].startswith("error: ")]
    ok = [r for r in body if r not in errors]
    widths = [max([len(header[i])] + [len(r[i]) for r in ok]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in ok:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for r in errors:
        lines.append("%s  %s" % (r[0].ljust(widths[0]), r[1]))
    return "\n".join(lines)


def markdown_table(records, columns=None):
    header, body = _drop_empty(*rows(records, columns))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    return "\n".join(lines)


def summary(doc):
    """One line about the run: mode, guests, memory."""
    c = doc["config"]
    work = ("%d ops per busy guest" % c["ops_per_guest"]) if c.get("ops_per_guest") else \
        "%g s" % c["duration_s"]
    text = "%s mode, %d x %s %sguests, workload %s, %s" % (
        c["mode"], c["guests"], fmt_bytes(c["guest_mem_bytes"]), "THP " if c.get("guest_thp") else "",
        c["workload"], work)
    if c.get("host_mem_bytes"):
        text += ", host budget %s (%.1fx guest memory" % (
            fmt_bytes(c["host_mem_bytes"]), c["guests"] * c["guest_mem_bytes"] / c["host_mem_bytes"])
        touched = max((r.get("guest_touched_bytes", 0) for r in doc["results"]), default=0)
        if touched:
            text += ", %.1fx what the guests touched" % (touched / c["host_mem_bytes"])
        text += ")"
    # the non-default protocol choices, so a table never hides which variant ran
    if c.get("locking", "holdbits") != "holdbits":
        text += ", %s lock" % c["locking"]
    if c.get("minor_fault", "lazy") != "lazy":
        text += ", %s minor faults" % c["minor_fault"]
    return text


def plot(doc, path):
    """Write a PNG: RSS over time per strategy (top), swap I/O and CPU bars (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in doc["results"] if not r.get("error")]
    fig = plt.figure(figsize=(11, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.4, 1])
    ax = fig.add_subplot(grid[0, :])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    budget = doc["config"].get("host_mem_bytes")
    ends = []
    for i, r in enumerate(records):
        t = [s[0] for s in r["timeline"]]
        rss = [s[2] / MiB for s in r["timeline"]]
        c = colors[i % len(colors)]
        ax.plot(t, rss, color=c, lw=1.8)
        if t:
            ends.append((rss[-1], t[-1], r["strategy"], c))
    # label each line at its end (readable without a legend), spread apart where ends crowd
    lo, hi = ax.get_ylim()
    hi = hi + (hi - lo) * 0.05
    ax.set_ylim(lo, hi)
    gap = (hi - lo) * 0.06
    ends.sort()
    placed = []
    for y, *_ in ends:
        placed.append(max([y] + [p + gap for p in placed[-1:]]))
    excess = max(placed, default=hi) - hi
    if excess > 0:               # the stack ran above the axes: move it down, keep the gaps
        placed = [max(lo, p - excess) for p in placed]
    x_label = max((e[1] for e in ends), default=0) * 1.03
    for (y, t_end, name, c), y_label in zip(ends, placed):
        ax.annotate(name, (t_end, y), xytext=(x_label, y_label),
                    textcoords="data", color=c, va="center", fontsize=9, fontweight="bold",
                    arrowprops=dict(arrowstyle="-", color=c, lw=0.6, alpha=0.6))
    if budget:
        ax.axhline(budget / MiB, color="0.3", ls="--", lw=1)
        ax.annotate("host budget", (0, budget / MiB), xytext=(2, 3),
                    textcoords="offset points", fontsize=8, color="0.3")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("guests' RSS (MiB, mincore)")
    ax.set_title(textwrap.fill(summary(doc), 110), fontsize=10)
    ax.margins(x=0.15)
    ax.grid(alpha=0.3)

    names = [r["strategy"] for r in records]
    x = range(len(records))

    def bars(axis, series, ylabel, title):
        width = 0.8 / len(series)
        for j, (label, values, hatch) in enumerate(series):
            pos = [k + (j - (len(series) - 1) / 2) * width for k in x]
            b = axis.bar(pos, values, width, color=[colors[k % len(colors)] for k in x],
                         hatch=hatch, edgecolor="black", lw=0.5)
            axis.bar_label(b, labels=["%s\n%.3g" % (label, v) for v in values], fontsize=7)
        axis.set_xticks(list(x))
        axis.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        axis.set_ylabel(ylabel)
        axis.set_title(title, fontsize=10)
        axis.margins(y=0.25)

    bars(fig.add_subplot(grid[1, 0]),
         [("out", [r["host_swap_out_bytes"] / MiB for r in records], ""),
          ("in", [r["host_swap_in_bytes"] / MiB for r in records], "//"),
          ("kernel", [(r.get("host") or {}).get("kernel_swap_out_bytes", 0) / MiB for r in records], "..")],
         "MiB", "swap I/O (gphint out | in | kernel out)")
    bars(fig.add_subplot(grid[1, 1]),
         [("guest", [r["guest_cpu_s"] for r in records], ""),
          ("host", [r["host_cpu_s"] for r in records], "//")],
         "CPU seconds", "CPU (guest | host)")
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        outputs.write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=110), "--plot",
                                 binary=True)
    finally:
        plt.close(fig)
    return path
