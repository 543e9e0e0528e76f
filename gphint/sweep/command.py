"""`gphint sweep GRID --results PATH` and `gphint report RESULTS` (wired into gphint.cli)."""
import os
import sys
import tempfile
import time

from .. import outputs, tmpfiles
from ..errors import ConfigError

NO_ADDRESS = ""         # `--ray` without an address: a local Ray instance


def add_subcommands(sub):
    from . import grid
    sp = sub.add_parser("sweep", help="run a grid of `gphint run` cells (axes x seeds), resumable, "
                                      "locally or on a Ray cluster; see docs/sweep.md")
    sp.add_argument("grid", nargs="?", metavar="GRID", help="the grid file (TOML)")
    sp.add_argument("--preset", choices=grid.presets(), help="a grid shipped with gphint instead of GRID")
    sp.add_argument("--results", required=True, metavar="PATH",
                    help="results file (JSON lines); an existing one is resumed")
    sp.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="cells at a time on this host (default 1: runs on one host disturb each "
                         "other's measurements)")
    sp.add_argument("--ray", nargs="?", const=NO_ADDRESS, default=None, metavar="ADDRESS",
                    help="run the cells as Ray tasks, one per node at a time; without ADDRESS on a "
                         "local Ray instance (needs pip install 'gphint[ray]')")
    sp.add_argument("--plot", metavar="DIR", help="write the report's plots into DIR at the end")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("report", help="medians and spread over seeds of a sweep's results")
    sp.add_argument("results", metavar="RESULTS", help="a sweep's results file (JSON lines)")
    sp.add_argument("--plot", metavar="DIR", help="write the plots (PNG) into DIR")
    sp.add_argument("--markdown", action="store_true", help="the table as markdown")
    sp.set_defaults(func=cmd_report)


def _grid_of(args):
    from . import grid
    if (args.grid is None) == (args.preset is None):
        raise ConfigError("give a GRID file or --preset NAME (one of %s), not %s"
                          % (", ".join(grid.presets()), "both" if args.grid else "neither"))
    return grid.load(args.grid if args.grid is not None else grid.preset_path(args.preset))


def _plot_dir(path, option="--plot"):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("%s %r is not a directory" % (option, path))
    return path


def _backend(args, tmp):
    if args.ray is not None:
        if args.jobs != 1:
            raise ConfigError("--jobs is for this host; with --ray, Ray runs one cell per node")
        from . import raycells
        return raycells.RayCells(args.ray or None, debug=args.debug)
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1, got %d" % args.jobs)
    if args.jobs > 1:
        print("gphint sweep: --jobs %d runs %d cells at once on this host: they share its CPUs, "
              "memory bandwidth and page cache, so their timings and memory figures disturb each "
              "other (use --jobs 1 for numbers you publish)" % (args.jobs, args.jobs), file=sys.stderr)
    from .local import LocalCells
    return LocalCells(tmp, args.jobs, debug=args.debug)


def cmd_sweep(args):
    from . import runner
    g = _grid_of(args)
    outputs.target_of(args.results, "--results")
    if args.plot:
        _plot_dir(args.plot)
    started = time.monotonic()
    tmpfiles.sweep()
    with tempfile.TemporaryDirectory(prefix=tmpfiles.prefix("sweep")) as tmp:
        backend = _backend(args, tmp)
        try:
            written = runner.run(g, args.results, backend, quiet=args.quiet)
        finally:
            close = getattr(backend, "close", None)
            if close:
                close()
    print(runner.summary_line(g, args.results, written, started), file=sys.stderr)
    status = _show_report(args.results, args.plot)
    return 1 if runner.todo_after(g, args.results) else status


def _show_report(path, plot_dir, markdown=False):
    from . import report
    from . import results as results_mod
    records = results_mod.read(path)
    if not records:
        raise ConfigError("%s has no records" % path)
    rep = report.build(records)
    loud = report.integrity_banner(rep)
    if loud:
        print(loud, file=sys.stderr)
    print(report.markdown(rep) if markdown else report.text(rep))
    if plot_dir:
        from . import plots
        for p in plots.write_all(rep, plot_dir):
            print("wrote %s" % p, file=sys.stderr)
    return 1 if loud else 0


def cmd_report(args):
    if not os.path.isfile(args.results):
        raise ConfigError("RESULTS %r: no such file" % args.results)
    if args.plot:
        _plot_dir(args.plot)
    return _show_report(args.results, args.plot, args.markdown)
