"""Tiny models of every supported architecture, built once per test session."""

from __future__ import annotations

import pytest
from model_reference import make_tokens

from attribution import load_model
from attribution.tiny import TINY_ARCHS, make_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """arch -> directory of a saved tiny random mlx-lm model (seeded)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {a: make_tiny_model(a, root / a, seed=i) for i, a in enumerate(TINY_ARCHS)}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """arch -> loaded ``Model``."""
    return {a: load_model(p) for a, p in tiny_dirs.items()}


@pytest.fixture(params=TINY_ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def model(tiny_models, arch):
    return tiny_models[arch]


@pytest.fixture
def tokens(model):
    return make_tokens(model)
