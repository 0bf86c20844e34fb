"""The ``circuits`` command line.

Algorithm:
  1. Build one argparse parser with a sub-parser per subcommand (each in its
     own module under ``circuits.cli``, registering ``add_parser``/``run``).
     The global flags ``--quiet``, ``--json`` and ``--debug`` are accepted before
     or after the subcommand. Usage errors print one line, not argparse's usage
     block.
  2. Parse, fill options from ``--config``, and check ``--out`` before any work
     (writable, not a file, empty unless ``--overwrite``).
  3. Run the subcommand with SIGTERM turned into an interrupt, so staging
     directories are removed on SIGINT and SIGTERM alike.
  4. Errors become one line on stderr and a non-zero exit code: bad input
     (``ValueError``/``OSError`` and their subclasses, whose messages name the
     input and the fix) prints its message; anything else is an internal error
     and says so. ``--debug`` re-raises to show the traceback. Warnings print as
     one line each. A closed stdout (``--json | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings

from circuits.cli import aggregate as _aggregate
from circuits.cli import attribute as _attribute
from circuits.cli import bench as _bench
from circuits.cli import demo as _demo
from circuits.cli import doctor as _doctor
from circuits.cli import evaluate as _evaluate
from circuits.cli import features as _features
from circuits.cli import harvest as _harvest
from circuits.cli import organism as _organism
from circuits.cli import prune as _prune
from circuits.cli import render as _render
from circuits.cli import report as _report
from circuits.cli import serve as _serve
from circuits.cli import sweep as _sweep
from circuits.cli import validate as _validate
from circuits.cli import train as _train
from circuits.cli._common import Interrupted, _one_line, apply_config, check_out, set_run

_COMMANDS = {"demo": _demo, "harvest": _harvest, "train": _train, "evaluate": _evaluate, "attribute": _attribute,
             "aggregate": _aggregate, "prune": _prune, "validate": _validate, "features": _features, "render": _render,
             "report": _report, "serve": _serve, "bench": _bench, "organism": _organism, "doctor": _doctor,
             "sweep": _sweep}

_GLOBAL = (("--quiet", "no progress bars or chatter"), ("--json", "print results as one JSON object"),
           ("--debug", "show tracebacks on errors"))


class UsageError(Exception):
    """argparse rejected the command line (message already one line)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, so ``main`` prints them)."""

    def error(self, message):
        raise UsageError(self.prog, f"{_one_line(message)} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser (also used by tests and the README generator)."""
    p = _Parser(prog="circuits", description=__doc__.splitlines()[0])
    for flag, text in _GLOBAL:
        p.add_argument(flag, action="store_true", help=text)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, mod in _COMMANDS.items():
        mod.add_parser(sub, name)
    for sp in _all_subparsers(p):
        for flag, text in _GLOBAL:
            # SUPPRESS: given after the subcommand it sets True; absent it leaves the
            # value parsed before the subcommand alone.
            sp.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    return p


def _all_subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                yield sp
                yield from _all_subparsers(sp)


def _subparser(parser, args):
    """The innermost subparser that parsed ``args`` (config keys are checked against it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sp = action.choices.get(getattr(args, action.dest, None) or "")
            if sp is not None:
                return _subparser(sp, args)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    # JSON and Unicode decode errors are ValueErrors, but their bare messages
    # ("Expecting value: line 1 column 1") do not name the file: loaders must
    # catch them and say which file; reaching here they count as internal.
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return False
    return isinstance(exc, (ValueError, OSError, UsageError))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"circuits: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def _interrupted_note(command) -> str:
    """What an interruption leaves: a command may say (``INTERRUPTED_NOTE``; a sweep keeps its
    finished runs and checkpoint), else unfinished output is removed."""
    return getattr(_COMMANDS.get(command), "INTERRUPTED_NOTE", "unfinished output removed")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``circuits`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = "--debug" in argv
    command = next((a for a in argv if a in _COMMANDS), None)
    prev_term = signal.getsignal(signal.SIGTERM)
    prev_show = warnings.showwarning
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a worker): keep the default
        prev_term = None
    warnings.showwarning = _show_warning
    try:
        args = parser.parse_args(argv)
        command = args.command
        debug = args.debug
        set_run(command, argv, args)
        apply_config(args, _subparser(parser, args))
        out = getattr(args, "out", None)
        if (out is not None and not isinstance(out, list)
                and not getattr(_COMMANDS[command], "CHECKS_OUT_ITSELF", False)):
            check_out(out, bool(getattr(args, "overwrite", False)), args)
        return int(_COMMANDS[command].run(args) or 0)
    except Interrupted as exc:
        _err(command, f"interrupted by {exc.signame}; {_interrupted_note(command)}")
        return 143 if exc.signame == "SIGTERM" else 130
    except KeyboardInterrupt:
        _err(command, f"interrupted by SIGINT; {_interrupted_note(command)}")
        return 130
    except BrokenPipeError:
        # The reader went away (``--json | head``): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not complain.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except SystemExit as exc:  # --help, or a subcommand's own exit
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except Exception as exc:  # one clear line; traceback only with --debug
        if debug:
            raise
        if isinstance(exc, UsageError):
            prog = f"circuits {command}" if exc.prog == "circuits" and command else exc.prog
            msg = str(exc).replace("`circuits --help`", f"`{prog} --help`")
            print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
            return 2
        if _is_user_error(exc):
            _err(command, _one_line(str(exc)) or type(exc).__name__)
        else:
            _err(command, f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                          "(rerun with --debug for the traceback, and please report it)")
        return 1
    finally:
        warnings.showwarning = prev_show
        if prev_term is not None:
            signal.signal(signal.SIGTERM, prev_term)


def _err(command: str | None, message: str) -> None:
    # Start on a clean line even if something (a bar, partial output) left the cursor mid-line.
    prefix = "\r\033[K" if sys.stderr.isatty() else ""
    print(f"{prefix}circuits{' ' + command if command else ''}: error: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
