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


class DiscoveryError(CircuitsError, ValueError):
    """A circuit-discovery request is invalid: unknown method, level or ablation, a bad
    mask shape, a batch too small to resample from, or a missing reference sample."""


class UnsupportedModelError(CircuitsError, ValueError):
    """The model's architecture is not covered by the component masking core
    (it needs sequential pre-norm blocks with additive head and MLP writes)."""


class ValidationError(CircuitsError, ValueError):
    """A circuit validation request is invalid: a threshold outside (0, 1], an empty
    ranking, or a metric identical on the full and the ablated model (F(M) = F(empty))."""


class BenchmarkError(CircuitsError, ValueError):
    """A benchmark request names an unknown organism, task, method or ablation, or an
    organism has no ground truth for the requested task."""
