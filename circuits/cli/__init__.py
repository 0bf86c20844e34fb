"""The ``circuits`` command line.

Algorithm:
  1. Build one argparse parser with a sub-parser per subcommand (each in its
     own module under ``circuits.cli``, registering ``add_parser``/``run``).
  2. Parse; global flags ``--quiet``, ``--json`` and ``--debug`` apply to all.
  3. Run the subcommand. Any exception becomes one clear line on stderr and a
     non-zero exit code; ``--debug`` re-raises to show the traceback.
"""

from __future__ import annotations

import argparse
import sys

from circuits.cli import attribute as _attribute
from circuits.cli import bench as _bench
from circuits.cli import demo as _demo
from circuits.cli import doctor as _doctor
from circuits.cli import evaluate as _evaluate
from circuits.cli import features as _features
from circuits.cli import organism as _organism
from circuits.cli import prune as _prune
from circuits.cli import render as _render
from circuits.cli import report as _report
from circuits.cli import validate as _validate
from circuits.cli import train as _train
from circuits.cli._common import apply_config

_COMMANDS = {"demo": _demo, "train": _train, "evaluate": _evaluate, "attribute": _attribute,
             "prune": _prune, "validate": _validate, "features": _features, "render": _render,
             "report": _report, "bench": _bench, "organism": _organism, "doctor": _doctor}


def build_parser() -> argparse.ArgumentParser:
    """The full parser (also used by tests and the README generator)."""
    p = argparse.ArgumentParser(prog="circuits", description=__doc__.splitlines()[0])
    p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    p.add_argument("--json", action="store_true", help="print results as one JSON object")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, mod in _COMMANDS.items():
        mod.add_parser(sub, name)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``circuits`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_config(args, _subparser(parser, args.command))
        return int(_COMMANDS[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("circuits: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; traceback only with --debug
        if args.debug:
            raise
        print(f"circuits {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _subparser(parser, name):
    for action in parser._subparsers._group_actions:
        if name in action.choices:
            return action.choices[name]
    return parser


if __name__ == "__main__":
    sys.exit(main())
