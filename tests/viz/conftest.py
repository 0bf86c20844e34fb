"""Fixtures of the viz tests: the default synthetic circuit."""

from __future__ import annotations

import pytest
from viz_synthetic import make_circuit

from attribution.graph import Graph


@pytest.fixture(scope="session")
def circuit() -> Graph:
    """The default ~30-node synthetic circuit."""
    return make_circuit()
