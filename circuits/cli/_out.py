"""Shared output helpers for subcommands: the only place the CLI prints results."""

from __future__ import annotations

import json
import sys


def emit(args, record: dict, lines: list[str]) -> None:
    """Print ``record`` as JSON with ``--json``, else the human ``lines`` (unless ``--quiet``)."""
    if getattr(args, "json", False):
        print(json.dumps(record, sort_keys=True, default=str))
    elif not getattr(args, "quiet", False):
        for line in lines:
            print(line)
    sys.stdout.flush()
