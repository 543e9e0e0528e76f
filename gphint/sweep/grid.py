"""A sweep's grid file: TOML naming the seeds, the fixed options and the axes.

    seeds = [1, 2]
    [fixed]                 # `gphint run` long options without their dashes
    workload = "fileserver"
    guest-mem = "32M"
    [axes]                  # every combination of these values is one cell (per seed)
    strategy = ["none", "cmma:batch=1"]
    [axes.cmma]             # strategy keys as axes: cmma at every batch x submit
    batch = [1, 32, 256, 4096]
    submit = ["per_page", "vectored"]

The strategy axis is the union of `axes.strategy` and, per `[axes.NAME]` table, NAME at every
combination of its keys.  Keys and values are checked against `gphint run`'s own parser and
strategy specs before any cell runs: a mistake is one line naming the key.
"""
import argparse
import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # the backport, same API (setup: tomli; python < 3.11)
    import tomli as tomllib

# run options a grid may not set: the sweep owns the results path and the progress display,
# and one live snapshot file shared by every cell would be overwritten cell after cell
RESERVED = {"json": "the sweep writes each cell's record to --results",
            "quiet": "cells always run quietly", "status": "cells share no live snapshot",
            "seed": "give the seeds as the top-level `seeds` list", "help": "not an option"}
TOP_KEYS = ("seeds", "fixed", "axes")


@dataclass
class Cell:
    """One run of the grid: its coordinates (axes + seed) and the full option set."""

    coords: dict
    options: dict = field(default_factory=dict)

    @property
    def key(self):
        return json.dumps(self.coords, sort_keys=True)

    def argv(self):
        """`gphint run` arguments of this cell (without --json / --quiet)."""
        return options_argv(self.options)


@dataclass
class Grid:
    path: str
    seeds: list
    fixed: dict
    axes: dict              # name -> list of values; `strategy` already expanded
    cells: list

    def digest(self):
        text = json.dumps({"seeds": self.seeds, "fixed": self.fixed, "axes": self.axes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_actions():
    """{option name without dashes: argparse action} of the real `gphint run` parser."""
    from .. import cli
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    return run, {a.option_strings[-1][2:]: a for a in run._actions
                 if a.option_strings and a.option_strings[-1].startswith("--")}


def options_argv(options):
    argv = []
    for key, value in sorted(options.items()):
        if value is True:
            argv.append("--" + key)
        elif value is not False and value is not None:
            argv += ["--" + key, str(value)]
    return argv


def _typed(where, action, value):
    """The value checked against the action's type; returns it (booleans for flags)."""
    flag = action.nargs == 0
    if flag:
        if not isinstance(value, bool):
            raise ConfigError("%s = %r: expected true or false" % (where, value))
        return value
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ConfigError("%s = %r: expected a single %s" % (where, value, _type_name(action)))
    if action.type is int and not isinstance(value, int):
        raise ConfigError("%s = %r: expected an integer" % (where, value))
    if action.type is float and not isinstance(value, (int, float)):
        raise ConfigError("%s = %r: expected a number" % (where, value))
    if action.type is None and not isinstance(value, (str, int, float)):
        raise ConfigError("%s = %r: expected a string" % (where, value))
    if action.choices is not None and value not in action.choices:
        raise ConfigError("%s = %r: expected one of %s" % (where, value, ", ".join(action.choices)))
    return value


def _type_name(action):
    return {int: "integer", float: "number"}.get(action.type, "string")


def _option(where, key, value, actions):
    if key in RESERVED:
        raise ConfigError("%s: %r cannot be set in a grid (%s)" % (where, key, RESERVED[key]))
    if key not in actions:
        raise ConfigError("%s: unknown key %r (expected one of gphint run's options: %s)"
                          % (where, key, ", ".join(sorted(k for k in actions if k not in RESERVED))))
    return _typed("%s.%s" % (where, key), actions[key], value)


def _strategy_tables(axes):
    """Strategy specs from the [axes.NAME] tables: NAME at every combination of its keys."""
    from ..host import parse_strategy
    from ..host.spec import STRATEGY_KEYS
    specs = []
    for name, table in axes.items():
        if not isinstance(table, dict):
            continue
        if name not in STRATEGY_KEYS:
            raise ConfigError("axes.%s: unknown strategy %r (expected one of %s)"
                              % (name, name, ", ".join(STRATEGY_KEYS)))
        for key, values in table.items():
            where = "axes.%s.%s" % (name, key)
            if key not in STRATEGY_KEYS[name]:
                raise ConfigError("%s: unknown key %r for strategy %s (valid keys: %s)"
                                  % (where, key, name, ", ".join(sorted(STRATEGY_KEYS[name]))))
            _check_axis(where, values)
        keys = sorted(table)
        for combo in itertools.product(*(table[k] for k in keys)):
            text = name + ":" + ",".join("%s=%s" % kv for kv in zip(keys, combo))
            specs.append(_spec("axes.%s" % name, text, parse_strategy))
    return specs


def _spec(where, text, parse):
    if not isinstance(text, str):
        raise ConfigError("%s = %r: expected a strategy spec string" % (where, text))
    try:
        return str(parse(text))
    except ConfigError as e:
        raise ConfigError("%s: %s" % (where, e)) from None


def _check_axis(where, values):
    if not isinstance(values, list):
        raise ConfigError("%s = %r: an axis is a list of values" % (where, values))
    if not values:
        raise ConfigError("%s is empty: an axis needs at least one value" % where)
    if len({json.dumps(v) for v in values}) != len(values):
        raise ConfigError("%s = %r: lists a value twice" % (where, values))


def _axes(doc, actions):
    from ..host import parse_strategy
    raw = doc.get("axes", {})
    if not isinstance(raw, dict):
        raise ConfigError("axes must be a table, got %r" % (raw,))
    axes = {}
    strategies = _strategy_tables(raw)
    for key, values in raw.items():
        if isinstance(values, dict):
            continue
        where = "axes.%s" % key
        _check_axis(where, values)
        if key == "strategy":
            strategies = [_spec(where, v, parse_strategy) for v in values] + strategies
            continue
        axes[key] = [_option("axes", key, v, actions) for v in values]
    if strategies:
        if len(set(strategies)) != len(strategies):
            dup = next(s for s in strategies if strategies.count(s) > 1)
            raise ConfigError("axes: strategy %r is listed twice" % dup)
        axes = dict(strategy=strategies, **axes)
    return axes


def _fixed(doc, actions):
    from ..host import parse_strategy
    raw = doc.get("fixed", {})
    if not isinstance(raw, dict):
        raise ConfigError("fixed must be a table, got %r" % (raw,))
    fixed = {}
    for key, value in raw.items():
        if key == "strategy":
            fixed[key] = _spec("fixed.strategy", value, parse_strategy)
        else:
            fixed[key] = _option("fixed", key, value, actions)
    return fixed


def _seeds(doc):
    seeds = doc.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or \
            any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError("seeds = %r: expected a non-empty list of integers >= 0" % (seeds,))
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds = %r: lists a seed twice" % (seeds,))
    return seeds


def parse(doc, path="<grid>"):
    """Grid from a TOML document (a dict); every cell checked as `gphint run` would."""
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise ConfigError("%s: unknown key %r (a grid has %s)" % (path, unknown[0], ", ".join(TOP_KEYS)))
    parser, actions = run_actions()
    seeds, fixed, axes = _seeds(doc), _fixed(doc, actions), _axes(doc, actions)
    both = sorted(set(fixed) & set(axes))
    if both:
        raise ConfigError("%s: %r is both fixed and an axis" % (path, both[0]))
    if "strategy" not in fixed and "strategy" not in axes:
        raise ConfigError("%s: no strategy (give fixed.strategy or an axes.strategy list)" % path)
    names = list(axes)
    cells = []
    for combo in itertools.product(*(axes[n] for n in names)):
        for seed in seeds:
            coords = dict(zip(names, combo), seed=seed)
            options = dict(fixed, **dict(zip(names, combo)), seed=seed)
            cells.append(Cell(coords, options))
    grid = Grid(path, seeds, fixed, axes, cells)
    for cell in cells:
        check_cell(parser, cell)
    return grid


def check_cell(parser, cell):
    """Parse the cell's argv with the real `gphint run` parser and build its RunConfig, so a
    bad value fails now, named, and not minutes into the sweep."""
    from .. import cli
    from ..host import parse_strategy

    def refuse(message):
        raise ConfigError("cell %s: %s" % (cell.key, message))
    parser.error = refuse           # this parser instance is ours alone
    args = parser.parse_args(cell.argv())
    parse_strategy(args.strategy)
    try:
        cli.config_from(args)
    except ConfigError as e:
        refuse(str(e))


def load(path):
    if not os.path.isfile(path):
        raise ConfigError("grid %r: no such file" % path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("grid %r is not valid TOML: %s" % (path, e)) from None
    try:
        return parse(doc, path)
    except ConfigError as e:
        raise ConfigError("grid %s: %s" % (os.path.basename(path), e)) from None


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def presets():
    return sorted(n[:-5] for n in os.listdir(PRESETS_DIR) if n.endswith(".toml"))


def preset_path(name):
    if name not in presets():
        raise ConfigError("--preset %r: no such preset (expected one of %s)" % (name, ", ".join(presets())))
    return os.path.join(PRESETS_DIR, name + ".toml")
