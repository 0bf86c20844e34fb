"""Shared pieces of the subcommands: model/out/config flags, staging, progress.

Algorithm:
  1. ``add_common`` gives every subcommand ``--model`` (default: the shipped
     ``ioi`` organism), ``--out`` and ``--config`` (TOML or JSON).
  2. ``apply_config`` fills every option the user did not give on the command
     line from the config file; unknown keys are an error naming the valid ones.
  3. ``staged(out)`` writes into a hidden sibling directory and moves each file
     into ``out`` only when the command succeeds, so a failure leaves no partial
     output behind.
  4. ``progress(args, ...)`` returns a tqdm-backed callback, silent with
     ``--quiet``/``--json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class CLIError(ValueError):
    """Bad command-line input; the message says what to change."""


def default_model() -> str:
    """Path of the shipped ``ioi`` organism."""
    from circuits.organisms import SHIPPED

    return str(SHIPPED / "ioi")


def add_common(p, out_default: str | None = "out", model: bool = True) -> None:
    """Add --model, --out and --config to a subparser."""
    if model:
        p.add_argument("--model", default=None,
                       help="local mlx-lm model directory (default: the shipped ioi organism)")
    if out_default is not None:
        p.add_argument("--out", type=Path, default=Path(out_default), help="output directory")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML or JSON file whose keys fill options not given as flags")


def read_config(path: Path) -> dict:
    """Read a TOML or JSON config file into a flat dict."""
    if not path.is_file():
        raise CLIError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own types
        raise CLIError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}")
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a table/object of option = value")
    return data


def apply_config(args, parser) -> None:
    """Fill options left at their defaults from ``args.config`` (flags win)."""
    path = getattr(args, "config", None)
    if path is None:
        return
    data = read_config(Path(path))
    valid = {a.dest: a for a in parser._actions}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in valid or dest in ("help", "config", "command"):
            names = sorted(k for k in valid if k not in ("help", "config", "command"))
            raise CLIError(f"config key {key!r} is not an option of this command; valid: {', '.join(names)}")
        if getattr(args, dest) == valid[dest].default:
            action = valid[dest]
            setattr(args, dest, action.type(value) if action.type and isinstance(value, str) else value)


def model_path(args) -> str:
    """The --model value, or the shipped ioi organism."""
    return args.model or default_model()


@contextmanager
def staged(out: Path):
    """Yield a staging directory; on success move its contents into ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(tmp.iterdir()):
        dest = out / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        item.rename(dest)
    tmp.rmdir()


class _Bar:
    def __init__(self, args, desc: str, total: int | None, unit: str = "step"):
        self.bar = None
        if not (getattr(args, "quiet", False) or getattr(args, "json", False)):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def __call__(self, done: int, total: int | None = None, **postfix) -> None:
        if self.bar is None:
            return
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                  for k, v in postfix.items()}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress(args, desc: str, total: int | None = None, unit: str = "step"):
    """A callback ``cb(done, total=None, **postfix)`` drawing a tqdm bar."""
    bar = _Bar(args, desc, total, unit)
    try:
        yield bar
    finally:
        bar.close()


def load(args):
    """Load --model through attribution.load_model."""
    from attribution import load_model

    return load_model(model_path(args))
