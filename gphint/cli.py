"""gphint's command line: `gphint caps | demo | ...` (also `python -m gphint`).

User mistakes (bad sizes, options, paths) print one line naming the value and exit 2;
--debug shows the traceback.
"""
import argparse
import json
import sys

from . import caps as caps_mod
from .errors import GphintError


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


def cmd_demo(args):
    from .demo import run_demo
    return run_demo(args)


def build_parser():
    p = argparse.ArgumentParser(prog="gphint", description="Guest page hinting on a real Linux host.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("caps", help="what this kernel and user offer, with remedies for what is missing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_caps)
    sp = sub.add_parser("demo", help="allocate guests, hint, discard, and show real RSS before and after")
    sp.add_argument("--guests", type=int, default=4)
    sp.add_argument("--guest-mem", default="128M")
    sp.set_defaults(func=cmd_demo)
    return p



def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (GphintError, OSError) as e:
        if args.debug:
            raise
        print("gphint: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
