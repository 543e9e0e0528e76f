"""gphint's command line: `gphint caps | run | compare | demo | sweep | report` (also
`python -m gphint`).

User mistakes (bad sizes, options, strategy specs, paths) print one line naming the value and
exit 2; --debug shows the traceback.
"""
import argparse
import ctypes
import json
import os
import signal
import sys

from . import caps as caps_mod
from . import outputs
from .errors import ConfigError, GphintError
from .units import parse_size

ALL_STRATEGIES = "none,balloon,reporting,unused,cmma"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


def cmd_caps(args):
    c = caps_mod.probe()
    if args.json:
        json.dump(c.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    print("gphint %s  mechanism: %s  kernel: %s (%s)  page size: %d  euid: %d  THP: %s"
          % (c.gphint_version, c.mechanism, c.kernel, c.machine, c.page_size, c.euid, c.thp_mode))
    width = max(len(n) for n in c.features)
    for name, f in c.features.items():
        mark = "yes" if f.available else "NO "
        text = f.detail if f.available else "%s%s" % (f.reason, ("  -> " + f.remedy) if f.remedy else "")
        print("  %-*s  %s  %s" % (width, name, mark, text))
    if c.uffd_features:
        print("  userfaultfd features: %s" % " ".join(c.uffd_features))
    return 0


def check_outputs(args):
    """Refuse a results path that is not a regular file before the run, not after it."""
    for option, path in (("--json", getattr(args, "json", None)), ("--plot", getattr(args, "plot", None)),
                         ("--status", getattr(args, "status", None))):
        if path:
            outputs.target_of(path, option)
    if getattr(args, "plot", None):
        plot_format_supported(args.plot, "--plot")
    if getattr(args, "out_dir", None) is not None:
        for name in ("demo.json", "demo.png"):
            outputs.target_of(os.path.join(args.out_dir, name), "--out-dir")


def plot_format_supported(path, option):
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if ext not in kinds:
        raise ConfigError("%s %r: matplotlib cannot write .%s files (it writes %s)"
                          % (option, path, ext, ", ".join(sorted(kinds))))


def config_from(args):
    from .experiment import RunConfig
    if args.nops < 1:
        raise ConfigError("--nops must be >= 1, got %d" % args.nops)
    if args.idle_sched < 0:
        raise ConfigError("--idle-sched must be >= 0 seconds, got %r" % args.idle_sched)
    check_outputs(args)
    cfg = RunConfig(
        workload=args.workload, guests=args.guests,
        guest_mem_bytes=parse_size(args.guest_mem, "--guest-mem"),
        host_mem_bytes=None if args.host_mem is None else parse_size(args.host_mem, "--host-mem"),
        duration_s=args.duration, ops_per_guest=args.ops, seed=args.seed, files=args.files, nops=args.nops,
        idle_sched_s=args.idle_sched, discard_mode=args.discard_mode,
        probe=not args.no_probe, probe_bytes=parse_size(args.probe_mem, "--probe-mem"),
        probe_timeout_s=args.probe_timeout, status_path=args.status, cache=args.cache,
        cgroup=not args.no_cgroup, guest_thp=args.guest_thp, locking=args.locking,
        minor_fault=args.minor_fault, discard_list_batch=args.discard_list_batch).validate()
    from .guest.guest_stores import check_fd_limit
    check_fd_limit(cfg.guests)          # the open-file limit, before anything runs
    return cfg


def _print_results(doc, out=sys.stdout):
    from .report import summary, text_table
    print(summary(doc), file=out)
    print(text_table(doc["results"]), file=out)


def cmd_run(args):
    from . import experiment
    from .host import parse_strategy
    from .progress import Bar
    spec = parse_strategy(args.strategy)
    cfg = config_from(args)
    contained = _contained_run(args, cfg, spec)
    if contained is not None:
        return contained
    with Bar("run %s" % spec, args.quiet) as bar:
        rec = experiment.run_one(cfg, spec, progress=lambda f: bar.update_to(100 * f))
    doc = experiment.results_document(cfg, [rec])
    if args.json:
        experiment.write_json(args.json, doc)
    _print_results(doc)
    return 0 if rec["integrity_errors"] == 0 else 1


def _contained_run(args, cfg, spec):
    """Under --host-mem, the run itself happens in a child inside a memory cgroup at the
    budget (gphint.host.sandbox); returns its exit status, or None to run here."""
    from .host import sandbox
    if not cfg.cgroup or not sandbox.wanted(cfg, spec):
        return None
    argv = (["--debug"] if args.debug else []) + ["run", "--strategy", str(spec)] + cfg.cli_args()
    argv += (["--json", args.json] if args.json else []) + (["--quiet"] if args.quiet else [])
    return sandbox.run_contained(cfg, spec, argv)


def _compare(args, cfg, strategies, json_path, plot_path):
    """Returns (exit status, paths written)."""
    from . import experiment, report
    from .host import parse_strategies
    from .progress import Bar
    specs = parse_strategies(strategies)
    with Bar("compare", args.quiet) as bar:
        def progress(i, spec, fraction):
            if spec is not None:
                bar.describe("%d/%d %s" % (i + 1, len(specs), spec))
            bar.update_to(100.0 * (i + fraction) / len(specs))
        records = experiment.compare(cfg, specs, progress=progress, debug=args.debug)
    doc = experiment.results_document(cfg, records)
    written = []
    if json_path:
        experiment.write_json(json_path, doc)
        written.append(json_path)
    failed = [r for r in records if r.get("error")]
    if len(failed) == len(records):
        # nothing ran: one line for the reason, not a table of errors and a plot of nothing
        def reason(r):      # the same failure, told apart only by the strategy's name
            return r["error"].replace(" (strategy %s)" % r["strategy_name"], "")
        if len({reason(r) for r in records}) == 1:
            print("gphint: error: every strategy failed (%s): %s"
                  % (", ".join(r["strategy"] for r in records), reason(records[0])), file=sys.stderr)
        else:
            print("gphint: error: every strategy failed:", file=sys.stderr)
            for r in records:
                print("  %s: %s" % (r["strategy"], r["error"]), file=sys.stderr)
        return 1, written
    if plot_path:
        written.append(report.plot(doc, plot_path))  # returns the path it was given
    _print_results(doc)
    lost = [r for r in records if r.get("integrity_errors")]
    for r in lost:
        print("gphint: %s: %d pages differ from what the guests wrote (integrity errors)"
              % (r["strategy"], r["integrity_errors"]), file=sys.stderr)
    return (1 if failed or lost else 0), written


def cmd_compare(args):
    return _compare(args, config_from(args), args.strategies, args.json, args.plot)[0]


DEMO_SCALE_ENV = "GPHINT_DEMO_SCALE"


def scale_demo(args, environ=os.environ):
    """GPHINT_DEMO_SCALE=F (0 < F <= 1) shrinks the demo -- guest memory, host budget, probe
    memory and operations -- by F, for a quick check of the README's command (its test runs
    it from a fresh clone); the results JSON records the sizes actually run."""
    text = environ.get(DEMO_SCALE_ENV)
    if not text:
        return
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not 0 < scale <= 1:
        raise ConfigError("%s must be a number in (0, 1], got %r" % (DEMO_SCALE_ENV, text))
    import mmap

    def scaled(size, option):         # whole pages: a guest region is a page multiple
        return str(max(1, int(parse_size(size, option) * scale) // mmap.PAGESIZE) * mmap.PAGESIZE)
    args.guest_mem = scaled(args.guest_mem, "--guest-mem")
    if args.host_mem:
        args.host_mem = scaled(args.host_mem, "--host-mem")
    args.probe_mem = scaled(args.probe_mem, "--probe-mem")
    if args.ops:
        args.ops = max(1, int(args.ops * scale))


def cmd_demo(args):
    """The headline comparison: all five strategies, mixed workload, ~2x overcommit."""
    from .host.hostswap import fault_service_available
    scale_demo(args)
    check_outputs(args)             # before anything is said about the run
    ok, why = fault_service_available()
    if not ok and args.host_mem:
        print("gphint demo: pressure mode needs the discard-fault service (%s); "
              "running proactive mode instead" % why, file=sys.stderr)
        args.host_mem = None
    if args.strategies is None:
        args.strategies = _demo_strategies(args)
    json_path = os.path.join(args.out_dir, "demo.json")
    plot_path = os.path.join(args.out_dir, "demo.png")
    rc, written = _compare(args, config_from(args), args.strategies, json_path, plot_path)
    if written:
        print("wrote %s" % " and ".join(written))
    return rc


def _demo_strategies(args):
    """The five gphint strategies, and the kernel peer beside them where this machine can run
    it (a memory cgroup and a swap area: `gphint caps`); say so when it cannot."""
    if not args.host_mem or args.no_cgroup:
        return ALL_STRATEGIES
    missing = [n for n in ("memory_cgroup", "swap_area") if not caps_mod.has(n)]
    if missing:
        print("gphint demo: the kernel peer is left out: %s (see gphint caps)"
              % "; ".join(caps_mod.probe().features[n].reason for n in missing), file=sys.stderr)
        return ALL_STRATEGIES
    return ALL_STRATEGIES + ",kernel"


def _run_options(sp, duration, guests, guest_mem, host_mem=None, ops=None):
    sp.add_argument("--workload", default="mixed",
                    help="guest workload, or a comma-separated list dealt out to the guests in turn "
                         "(default: mixed = fileserver,build,database,idle,churn)")
    sp.add_argument("--guests", type=int, default=guests, help="number of guests (default: %(default)s)")
    sp.add_argument("--guest-mem", default=guest_mem, metavar="SIZE",
                    help="memory of each guest (default: %(default)s)")
    sp.add_argument("--host-mem", default=host_mem, metavar="SIZE",
                    help="host budget for the guests' resident memory; omit for proactive mode")
    sp.add_argument("--duration", type=float, default=duration, metavar="SECONDS",
                    help="workload time per strategy (default: %(default)s)")
    sp.add_argument("--ops", type=int, default=ops, metavar="N",
                    help="each busy guest runs N operations (identical work for every strategy); "
                         "--duration is then only a cap")
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--files", default=None, metavar="DIR",
                    help="a real directory tree as the guests' files (never modified)")
    sp.add_argument("--nops", type=int, default=64, help="guest operations per scheduling")
    sp.add_argument("--idle-sched", type=float, default=1.0, metavar="SECONDS",
                    help="an idle guest is scheduled at most this often (default: 1.0)")
    sp.add_argument("--discard-mode", default="transparent", choices=("transparent", "guest"),
                    help="how guests take discard faults")
    sp.add_argument("--probe-mem", default="16M", metavar="SIZE",
                    help="proactive mode: memory freed to time free -> host RSS drop")
    sp.add_argument("--probe-timeout", type=float, default=None, metavar="SECONDS",
                    help="how long the probe waits for the drop (default: 3 s or 1.5 x delay + 1.5 s)")
    sp.add_argument("--no-probe", action="store_true", help="skip the free -> RSS drop probe")
    sp.add_argument("--status", metavar="PATH", default=None,
                    help="keep a live per-guest snapshot here (watch it with scripts/watch.py PATH)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar (the table is still printed)")
    sp.add_argument("--guest-thp", action="store_true",
                    help="guests with transparent huge pages: anonymous memory in 2 MiB huge "
                         "pages, split on partial free, bounded per-cpu lists (recorded as "
                         "config.guest_thp)")
    sp.add_argument("--locking", default="holdbits", choices=("holdbits", "hashed"),
                    help="how the fault service holds a page: hold bits in its state byte, or a "
                         "hashed lock on the page index (docs/state-protocol.md; recorded as "
                         "config.locking; default: %(default)s)")
    sp.add_argument("--minor-fault", default="lazy", choices=("lazy", "eager"),
                    help="lazy: no state change on a minor fault or munmap, corrected at writeback "
                         "(the series' patch 7); eager: both paths change state.  Counted in the "
                         "results' mappings field on the -mmap workloads (default: %(default)s)")
    sp.add_argument("--discard-list-batch", type=int, default=None, metavar="N",
                    help="the discarded page list (the series' patch 8): a guest's step() drops it "
                         "once it holds N entries; every free, reclaim and verify is a drain point "
                         "too (recorded as config.discard_list_batch; default: %d)" % _dlist_batch())
    _realhost_options(sp)


def _dlist_batch():
    from .guest.guest_reclaim import DISCARD_LIST_BATCH
    return DISCARD_LIST_BATCH


def _realhost_options(sp):
    sp.add_argument("--cache", default="none", choices=("none", "host"),
                    help="guest disks: none = O_DIRECT reads, the host keeps no second copy (like "
                         "QEMU cache=none); host = through the host page cache (default: none)")
    sp.add_argument("--no-cgroup", action="store_true",
                    help="under --host-mem, do not run in a memory cgroup at the budget")


def build_parser():
    p = OneLineParser(prog="gphint", description="Guest page hinting on a real Linux host.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sp = sub.add_parser("caps", help="what this kernel and user offer, with remedies for what is missing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_caps)

    sp = sub.add_parser("run", help="run guests under one host strategy")
    sp.add_argument("--strategy", required=True, metavar="SPEC",
                    help="NAME[:key=value,...], NAME one of %s,kernel" % ALL_STRATEGIES)
    _run_options(sp, 10.0, 4, "64M")
    sp.add_argument("--json", metavar="PATH", help="write the results JSON here")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("compare", help="the same guests and seed under several strategies")
    sp.add_argument("--strategies", default=ALL_STRATEGIES, metavar="S1,S2,...",
                    help="strategy specs (default: %(default)s)")
    _run_options(sp, 10.0, 4, "64M")
    sp.add_argument("--json", metavar="PATH", help="write the results JSON here")
    sp.add_argument("--plot", metavar="PATH", help="write the comparison plot (PNG) here")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("demo", help="the headline comparison (~2 minutes): writes results/demo.json and .png")
    sp.add_argument("--strategies", default=None, metavar="S1,S2,...",
                    help="default: %s, and kernel where a memory cgroup and a swap area can be had"
                    % ALL_STRATEGIES)
    # sized for ~2 minutes on 2 cores: guests large enough that free page reporting's
    # watermark (1% + 32 x 2 MiB free) can be met, a budget of half what the guests touch
    _run_options(sp, 60.0, 4, "192M", host_mem="192M", ops=6000)
    sp.add_argument("--out-dir", default="results", metavar="DIR")
    sp.set_defaults(func=cmd_demo)
    _scale_parser(sub)

    # grids of runs and their report (gphint.sweep)
    from .sweep.command import add_subcommands as add_sweep_subcommands
    add_sweep_subcommands(sub)
    return p


# --- gphint scale: the cost of taking memory back as the number of guests grows ------------
def cmd_scale(args):
    from .scale import report as scale_report
    from .scale.config import ScaleConfig
    from .scale.run import results_document, run_scale, save
    from .progress import Bar
    check_outputs(args)
    cfg = ScaleConfig(guests=args.guests, strategies=args.strategies, guest_mem_bytes=args.guest_mem,
                      take=args.take, seed=args.seed).validate()
    with Bar("scale", args.quiet) as bar:
        def progress(i, total, spec, n):
            if spec is not None:
                bar.describe("%d/%d %s N=%d" % (i + 1, total, spec, n))
            bar.update_to(100.0 * i / total)
        records = run_scale(cfg, progress=progress)
    doc = results_document(cfg, records)
    if args.json:
        save(args.json, doc)
    if args.plot and any(not r.get("error") for r in records):
        scale_report.plot(doc, args.plot)
    print(scale_report.summary(doc))
    print(scale_report.markdown_table(records))
    bad = [r for r in records if r.get("error") or r.get("integrity_errors")]
    for r in bad:
        print("gphint scale: %s N=%d: %s" % (r["strategy"], r["guests"], r.get("error") or
              "%d pages differ from what the guests wrote" % r["integrity_errors"]), file=sys.stderr)
    return 1 if bad else 0


def _scale_parser(sub):
    from .scale.config import DEFAULT_GUESTS, SCALE_STRATEGIES
    sp = sub.add_parser("scale", help="take memory back from fleets of N guests: balloon vs hinting")
    sp.add_argument("--guests", default=",".join(map(str, DEFAULT_GUESTS)), metavar="N1,N2,...",
                    help="fleet sizes (default: %(default)s)")
    sp.add_argument("--strategies", default=",".join(SCALE_STRATEGIES), metavar="S1,S2,...",
                    help="strategy specs (default: %(default)s)")
    sp.add_argument("--guest-mem", default="16M", metavar="SIZE", help="memory of each guest (default: 16M)")
    sp.add_argument("--take", default="0.25", metavar="FRACTION",
                    help="fraction of the fleet's memory the host takes back, in (0, 1) (default: 0.25)")
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--json", metavar="PATH", help="write the results JSON here")
    sp.add_argument("--plot", metavar="PATH", help="write the plot of each metric against N here")
    sp.add_argument("--quiet", action="store_true", help="no progress bar (the table is still printed)")
    sp.set_defaults(func=cmd_scale)


TERM_GRACE_S = 20.0


def _on_sigterm(signum, frame):
    """SIGTERM (also what a compare child gets when its parent dies): ask the run to stop at
    its next step, so that it stops the host and removes its temporary files; if it has not
    exited TERM_GRACE_S later, leave at once (a later run's sweep removes what is left).
    A repeated SIGTERM changes nothing: the parent-death signal comes once per thread of the
    dying parent (the kernel reparents to its other threads first, kernel/exit.c), and numpy's
    BLAS threads make that several."""
    import threading
    from . import experiment
    if experiment.STOP.is_set():
        return
    experiment.STOP.set()
    t = threading.Timer(TERM_GRACE_S, os._exit, [128 + signal.SIGTERM])
    t.daemon = True
    t.start()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    from .experiment import STOP, Stopped
    STOP.clear()
    try:
        return args.func(args) or 0
    except Stopped:
        return 128 + signal.SIGTERM
    except (GphintError, OSError, MemoryError) as e:
        if args.debug:
            raise
        print("gphint: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


PR_SET_PDEATHSIG = 1        # <linux/prctl.h>


def die_with_parent(parent_pid):
    """Have the kernel send SIGTERM when the parent dies (prctl(PR_SET_PDEATHSIG)), so that a
    killed `gphint compare` does not leave its strategy child running to the end.  The parent
    may have died before the prctl: then this process was reparented already, and it leaves.
    The signal follows the parent *thread* that forked (prctl(2)): compare forks from the main
    thread, which outlives every child."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        raise SystemExit(128 + signal.SIGTERM)


def child_main(argv=None):
    """Entry point of a `compare` child (experiment.child_command): `--parent-pid PID ARGS`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["--parent-pid"] or len(argv) < 2:
        raise SystemExit("gphint: error: child_main expects --parent-pid PID first")
    die_with_parent(int(argv[1]))
    return main(argv[2:])


if __name__ == "__main__":
    sys.exit(main())
