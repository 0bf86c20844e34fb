"""Exception classes for the ``circuits`` package.

Each class names one kind of bad input, so callers can catch exactly what they
can handle; messages say what was wrong and how to fix it.
"""

from __future__ import annotations


class CircuitsError(Exception):
    """Base class for errors raised by the ``circuits`` package."""


class TaskError(CircuitsError, ValueError):
    """A task or task dataset is invalid: unknown name, empty dataset, a malformed
    user file line, clean/corrupted prompts of different token lengths, or an
    answer that is not a single token."""


class OrganismError(CircuitsError, ValueError):
    """A model organism name, directory or training request is invalid."""
