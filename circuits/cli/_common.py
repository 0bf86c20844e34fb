"""Shared pieces of the subcommands: flags, argument types, output staging, progress.

Algorithm:
  1. ``add_common`` gives every subcommand ``--model`` (default: the shipped
     ``ioi`` organism), ``--out``, ``--overwrite`` and ``--config`` (TOML or JSON).
  2. ``apply_config`` fills every option the user did not give on the command
     line from the config file; unknown keys and values of the wrong type are
     errors naming the key and what it accepts.
  3. ``check_out`` runs before any work (``main`` calls it): ``--out`` must be
     writable, must not be a file, and an existing non-empty ``--out`` is refused
     unless ``--overwrite``; an input that lives inside ``--out`` is refused with
     ``--overwrite`` (replacing the output would delete the input).
  4. ``staged(out)`` writes into a hidden sibling directory
     ``.NAME.staging-PID-XXXX``; on success it adds the run manifest
     (``run.json``) and swaps the directory into place (the old results, with
     ``--overwrite``, are moved aside first and deleted after), so old and new
     files never mix and a failure leaves nothing behind. Staging directories of
     dead processes (a ``kill -9``) are removed on the next start; SIGINT and
     SIGTERM unwind through ``staged`` and remove the staging directory.
  5. ``progress(args, ...)`` returns a callback drawing a tqdm bar on a terminal;
     when stderr is not a terminal it logs a line per 10 % instead of flooding
     logs with carriage returns; silent with ``--quiet``/``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


class CLIError(ValueError):
    """Bad command-line input; the message says what to change."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinds through ``staged`` so staging is removed."""

    def __init__(self, signame: str = "SIGINT"):
        super().__init__(signame)
        self.signame = signame


# ------------------------------------------------------------ argument types ----
def _number(kind, text, what):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text) -> int:
    """argparse type: an integer >= 1."""
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    v = _number(int, text, "an integer >= 1")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text) -> int:
    """argparse type: an integer >= 0."""
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    v = _number(int, text, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(text) -> float:
    """argparse type: a finite number > 0."""
    v = _number(float, text, "a number > 0")
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def unit_interval(text) -> float:
    """argparse type: a number in [0, 1]."""
    v = _number(float, text, "a number in [0, 1]")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


# -------------------------------------------------------------------- flags ----
def default_model() -> str:
    """Path of the shipped ``ioi`` organism."""
    from circuits.organisms import SHIPPED

    return str(SHIPPED / "ioi")


def add_common(p, out_default: str | None = "out", model: bool = True) -> None:
    """Add --model, --out, --overwrite and --config to a subparser."""
    if model:
        p.add_argument("--model", default=None,
                       help="local mlx-lm or Hugging Face model directory (default: the shipped ioi organism)")
        p.add_argument("--dequantize", action="store_true",
                       help="a quantized --model becomes float32 layers at load (on a CPU about 30x "
                            "faster; memory grows to the float32 model's)")
    if out_default is not None:
        p.add_argument("--out", type=Path, default=Path(out_default), help="output directory")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing non-empty --out (old results are removed, never mixed)")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML or JSON file whose keys fill options not given as flags")


def add_force(p) -> None:
    """Add --force: use dictionaries recorded as trained on another model (with a warning)."""
    p.add_argument("--force", action="store_true",
                   help="use dictionaries recorded as trained on another model (warns instead of failing)")


def read_config(path: Path) -> dict:
    """Read a TOML or JSON config file into a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"config file {path} does not exist; pass an existing .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"config file {path} cannot be read as text ({exc})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own types
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise CLIError(f"config file {path} is not valid {kind}: {_one_line(str(exc))}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a table/object of option = value")
    return data


def _config_value(key: str, action, value):
    """``value`` converted and checked as the flag ``action`` would check it."""
    def bad(what):
        return CLIError(f"config key {key!r} must be {what}, got {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        return [_config_value(key, _Single(action), v) for v in items]
    if isinstance(value, (dict, list)):
        raise bad("a single value")
    if action.type is not None:
        if action.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise bad("a number")
        if action.type is int and isinstance(value, float) and not value.is_integer():
            raise bad("an integer")
        try:
            value = action.type(str(int(value)) if action.type is int and isinstance(value, float) else
                                value if not isinstance(value, (int, float)) or action.type in (int, float)
                                else str(value))
        except argparse.ArgumentTypeError as exc:
            raise CLIError(f"config key {key!r}: {exc}") from None
        except (TypeError, ValueError):
            raise bad(f"a valid {getattr(action.type, '__name__', 'value')}") from None
    if action.choices is not None and value not in action.choices:
        raise bad("one of " + ", ".join(map(str, action.choices)))
    return value


class _Single:
    """An action's type/choices seen as a single-value flag (for list items)."""

    def __init__(self, action):
        self.type, self.choices, self.nargs = action.type, action.choices, None


_NOT_CONFIG = ("help", "config", "command", "quiet", "json", "debug", "action")


def apply_config(args, parser) -> None:
    """Fill options left at their defaults from ``args.config`` (flags win)."""
    path = getattr(args, "config", None)
    if path is None:
        return
    data = read_config(Path(path))
    valid = {a.dest: a for a in parser._actions if a.dest not in _NOT_CONFIG}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in valid:
            names = sorted(k.replace("_", "-") for k in valid)
            raise CLIError(f"config key {key!r} is not an option of this command; valid: {', '.join(names)}")
        action = valid[dest]
        if getattr(args, dest) == action.default:
            setattr(args, dest, _config_value(key, action, value))


def model_path(args) -> str:
    """The --model value, or the shipped ioi organism."""
    return args.model or default_model()


def load(args):
    """Load --model through attribution.load_model (errors name the directory and the fix)."""
    from attribution import load_model

    path = model_path(args)
    if not Path(path).exists():
        raise CLIError(f"--model {path} does not exist; pass a local mlx-lm or Hugging Face model directory")
    if not Path(path).is_dir():
        raise CLIError(f"--model {path} is a file; pass the model's directory (config.json, *.safetensors, tokenizer)")
    return load_model(path, dequantize=bool(getattr(args, "dequantize", False)))


def load_dicts(args, model=None):
    """Load --dicts in any format ``sae.open_dictionaries`` detects (ours, circuit-tracer
    transcoders or CLT, SAELens); with a model, refuse our own sets recorded as trained on
    another one unless --force (then a one-line warning)."""
    from sae import open_dictionaries

    path = Path(args.dicts)
    if not path.exists():
        raise CLIError(f"--dicts {path} does not exist; pass the dictionaries/ directory "
                       "written by `circuits train`, a circuit-tracer transcoder folder "
                       "(config.yaml) or a SAELens folder (cfg.json)")
    return open_dictionaries(path, model=model, force=bool(getattr(args, "force", False)))


# ------------------------------------------------------------ output staging ----
_RUN: dict = {}
"""The running command (set by ``main``): name, argv, parsed args."""
_LIVE_STAGING: set[Path] = set()
"""Staging directories of this process (removed by the signal path if unwinding fails)."""

INPUT_ARGS = ("model", "dicts", "graph", "circuit", "corpus", "task", "tasks", "run", "activations",
              "ground_truth", "checkpoint_dir")
"""Argument names recorded as inputs in the run manifest and checked against --out."""


def set_run(command: str, argv: list[str], args) -> None:
    """Record the running command for ``staged`` (called by ``main``)."""
    _RUN.clear()
    _RUN.update(command=command, argv=list(argv), args=args)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(parent: Path, name: str) -> list[Path]:
    """Remove ``.NAME.staging-PID-*`` / ``.NAME.old-PID-*`` left by processes that died."""
    removed = []
    if not parent.is_dir():
        return removed
    for kind in ("staging", "old"):
        for p in parent.glob(f".{name}.{kind}-*"):
            try:
                pid = int(p.name.split(f".{kind}-", 1)[1].split("-", 1)[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _input_paths(args) -> dict[str, Path]:
    found = {}
    for name in INPUT_ARGS:
        v = getattr(args, name, None)
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, (str, Path)) and str(item) and Path(item).exists():
                found.setdefault(name, Path(item))
    return found


def check_out(out: Path, overwrite: bool = False, args=None) -> None:
    """Refuse an unusable ``--out`` before any work (module docstring, step 3)."""
    out = Path(out)
    clean_stale(out.parent if str(out.parent) else Path("."), out.name)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"--out {out} already holds results; pass --overwrite to replace them, "
                       "or choose another --out")
    if args is not None:
        for name, p in _input_paths(args).items():
            if out.exists() and _inside(p, out):
                raise CLIError(f"--{name.replace('_', '-')} {p} lies inside --out {out}; replacing --out "
                               "would delete it: choose another --out")
    anc = out.parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise CLIError(f"--out {out}: {anc} is a file, not a directory; choose another --out")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: {anc} is not writable; choose a writable --out")


@contextmanager
def staged(out: Path, manifest: bool = True):
    """Yield a staging directory; on success swap it into ``out`` (module docstring, step 4)."""
    out = Path(out)
    args = _RUN.get("args")
    overwrite = bool(getattr(args, "overwrite", False))
    check_out(out, overwrite, args)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
        # mkdtemp makes 0700 directories; the published output gets the usual umask mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except OSError as exc:
        raise CLIError(f"--out {out} cannot be created ({exc.strerror or exc}); choose a writable --out") from None
    _LIVE_STAGING.add(tmp)
    try:
        yield tmp
        if manifest:
            _write_manifest(tmp, args)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _LIVE_STAGING.discard(tmp)


def _write_manifest(tmp: Path, args) -> None:
    from circuits.pipeline.manifest import manifest_record, write_manifest

    arts = {p.name: p.name + ("/" if p.is_dir() else "") for p in sorted(tmp.iterdir())}
    inputs = {} if args is None else {k: str(v) for k, v in _input_paths(args).items()}
    if args is not None and hasattr(args, "model"):
        inputs["model"] = model_path(args)
    write_manifest(tmp, manifest_record(_RUN.get("command", "python"), _RUN.get("argv", []), inputs, arts))


def _publish(tmp: Path, out: Path) -> None:
    """Move ``tmp`` into place as ``out``; an existing ``out`` is moved aside, then deleted."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_live_staging() -> None:
    """Remove this process's staging directories (last resort on a signal)."""
    for p in list(_LIVE_STAGING):
        shutil.rmtree(p, ignore_errors=True)
        _LIVE_STAGING.discard(p)


# ------------------------------------------------------------------ progress ----
class _Bar:
    """tqdm on a terminal; a line per 10 % otherwise; nothing with --quiet/--json."""

    def __init__(self, args, desc: str, total: int | None, unit: str = "step"):
        self.bar = None
        self.desc, self.total, self.unit = desc, total, unit
        self.quiet = bool(getattr(args, "quiet", False) or getattr(args, "json", False))
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.last_log = time.monotonic()
        if not self.quiet and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                            file=sys.stderr)

    def __call__(self, done: int, total: int | None = None, **postfix) -> None:
        if self.quiet:
            return
        if total is not None:
            self.total = total
        if self.bar is None:
            self._log(done, postfix)
            return
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                  for k, v in postfix.items()}, refresh=False)
        self.bar.refresh()

    def _log(self, done: int, postfix: dict) -> None:
        # Logs and CI capture every byte: a line per decile (or per minute when the
        # total is unknown) says the run is alive without flooding.
        now = time.monotonic()
        if self.total:
            decile = int(10 * min(done, self.total) / self.total)
            if decile <= self.last_decile:
                return
            self.last_decile = decile
            text = f"{self.desc}: {done}/{self.total} {self.unit}s ({10 * decile}%)"
        else:
            if now - self.last_log < 60:
                return
            text = f"{self.desc}: {done} {self.unit}s"
        self.last_log = now
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        print(text + (f" {extra}" if extra else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def progress(args, desc: str, total: int | None = None, unit: str = "step"):
    """A callback ``cb(done, total=None, **postfix)`` drawing progress (module docstring)."""
    bar = _Bar(args, desc, total, unit)
    try:
        yield bar
    finally:
        bar.close()


def _one_line(text: str) -> str:
    """Collapse a multi-line message into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
