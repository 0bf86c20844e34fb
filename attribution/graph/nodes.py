"""The node table of a ``Graph``: schema, construction and validation.

One row per node, in canonical order (see ``keys.sort_key``), with columns:

====================  =======  ==================================================
column                dtype    meaning
====================  =======  ==================================================
``key``               str      ``str(node_key)``
``type``              str      ``feature`` | ``error`` | ``token`` | ``logit``
``layer``             int64    dictionary layer; tokens -1; logits ``n_layers``
``pos``               int64    token position
``feature``           int64    feature index; -1 when not a feature
``token_id``          int64    token id of token/logit nodes; -1 otherwise
``token``             str      the token's text at ``pos`` (logits: the output token)
``activation``        float64  feature activation / error-vector norm /
                               embedding norm / logit value
``logit_prob``        float64  probability of a logit node; 0 elsewhere
``label``             str      optional human label (empty when unknown)
====================  =======  ==================================================

Steps of ``check_node_table``:
1. Require exactly these columns (``label`` may be missing and becomes empty);
   coerce dtypes; reset the index to 0..N-1.
2. Parse every key; require unique keys whose fields agree with the columns.
3. Require the rows to be in canonical order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from attribution.graph.errors import GraphValidationError
from attribution.graph.keys import (
    ErrorNode,
    FeatureNode,
    LogitNode,
    NodeKey,
    TokenNode,
    key_layer,
    parse_key,
    sort_key,
)

NODE_COLUMNS: tuple[str, ...] = (
    "key", "type", "layer", "pos", "feature", "token_id", "token", "activation", "logit_prob", "label",
)
INT_COLUMNS = ("layer", "pos", "feature", "token_id")
FLOAT_COLUMNS = ("activation", "logit_prob")
STR_COLUMNS = ("key", "type", "token", "label")


def _key_columns(keys: Sequence[NodeKey], n_layers: int) -> dict[str, list]:
    """The columns that a key determines (type, layer, pos, feature, token_id)."""
    cols: dict[str, list] = {c: [] for c in ("key", "type", "layer", "pos", "feature", "token_id")}
    for k in keys:
        cols["key"].append(str(k))
        cols["type"].append(k.kind)
        cols["layer"].append(key_layer(k, n_layers))
        cols["pos"].append(k.pos)
        cols["feature"].append(k.feature if isinstance(k, FeatureNode) else -1)
        cols["token_id"].append(k.token_id if isinstance(k, (TokenNode, LogitNode)) else -1)
    return cols


def make_node_table(
    keys: Sequence[NodeKey],
    n_layers: int,
    activation: Sequence[float] | np.ndarray,
    token: Sequence[str] | None = None,
    logit_prob: Sequence[float] | np.ndarray | None = None,
    label: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Build a node table for ``keys`` in the given order (per-node sequences align with keys).

    ``token`` defaults to empty strings, ``logit_prob`` to 0, ``label`` to empty strings.
    """
    keys = [parse_key(k) for k in keys]  # typed keys or their string forms
    n = len(keys)
    cols: dict[str, object] = _key_columns(keys, n_layers)
    cols["token"] = list(token) if token is not None else [""] * n
    cols["activation"] = np.asarray(activation, dtype=np.float64)
    cols["logit_prob"] = np.zeros(n) if logit_prob is None else np.asarray(logit_prob, dtype=np.float64)
    cols["label"] = list(label) if label is not None else [""] * n
    for name, col in cols.items():
        if len(col) != n:
            raise GraphValidationError(f"node column {name!r} has {len(col)} entries for {n} keys")
    return normalize_table(pd.DataFrame(cols))


def normalize_table(table: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with the canonical columns, dtypes and a 0..N-1 index."""
    if not isinstance(table, pd.DataFrame):
        raise GraphValidationError(f"nodes must be a pandas DataFrame, got {type(table).__name__}")
    table = table.copy()
    if "label" not in table.columns:
        table["label"] = ""
    missing = [c for c in NODE_COLUMNS if c not in table.columns]
    extra = [c for c in table.columns if c not in NODE_COLUMNS]
    if missing or extra:
        raise GraphValidationError(
            f"node table columns must be {list(NODE_COLUMNS)}; missing {missing}, unexpected {extra}")
    table = table.loc[:, list(NODE_COLUMNS)].reset_index(drop=True)
    try:
        for c in INT_COLUMNS:
            table[c] = table[c].astype(np.int64)
        for c in FLOAT_COLUMNS:
            table[c] = table[c].astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise GraphValidationError(f"node table has a non-numeric value in a numeric column: {exc}") from None
    for c in STR_COLUMNS:
        if table[c].isna().any():
            raise GraphValidationError(f"node column {c!r} has missing values; use empty strings")
        table[c] = table[c].astype(str)
    return table


def parse_table_keys(table: pd.DataFrame) -> list[NodeKey]:
    """Typed keys of every row of a (normalised) node table."""
    try:
        return [parse_key(k) for k in table["key"].tolist()]
    except ValueError as exc:
        raise GraphValidationError(f"bad node key in table: {exc}") from None


def canonical_order(keys: Sequence[NodeKey], n_layers: int) -> np.ndarray:
    """Stable permutation that puts ``keys`` in canonical order."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    sk = np.array([sort_key(k, n_layers) for k in keys], dtype=np.int64)
    # np.lexsort sorts by the last column first and is stable.
    return np.lexsort(sk.T[::-1]).astype(np.int64)


def check_node_table(table: pd.DataFrame, n_layers: int) -> tuple[pd.DataFrame, list[NodeKey]]:
    """Normalise and validate a node table; return it with its typed keys."""
    table = normalize_table(table)
    keys = parse_table_keys(table)
    if len(set(keys)) != len(keys):
        dup = table["key"][table["key"].duplicated()].tolist()[:5]
        raise GraphValidationError(f"duplicate node keys: {dup}")
    expected = _key_columns(keys, n_layers)
    for c in ("type", "layer", "pos", "feature", "token_id"):
        dtype = object if c == "type" else np.int64
        bad = np.flatnonzero(table[c].to_numpy(dtype=dtype) != np.asarray(expected[c], dtype=dtype))
        if bad.size:
            i = int(bad[0])
            raise GraphValidationError(
                f"node {expected['key'][i]!r}: column {c!r} is {table[c].iloc[i]!r}, the key implies "
                f"{expected[c][i]!r}")
    _check_values(table, keys, n_layers)
    order = canonical_order(keys, n_layers)
    if not np.array_equal(order, np.arange(len(keys))):
        raise GraphValidationError(
            "nodes are not in canonical order (tokens, then features/errors by layer, pos, then "
            "logits); build the graph with Graph.from_keys(...) to sort them")
    return table, keys


def _check_values(table: pd.DataFrame, keys: list[NodeKey], n_layers: int) -> None:
    """Layer ranges, finite floats, logit_prob only on logits."""
    for k in keys:
        if isinstance(k, (FeatureNode, ErrorNode)) and not 0 <= k.layer < n_layers:
            raise GraphValidationError(f"node {k} has layer outside [0, {n_layers}) (metadata n_layers)")
    for c in FLOAT_COLUMNS:
        if not np.isfinite(table[c].to_numpy()).all():
            raise GraphValidationError(f"node column {c!r} has non-finite values")
    not_logit = (table["type"] != "logit").to_numpy()
    if (table["logit_prob"].to_numpy()[not_logit] != 0).any():
        raise GraphValidationError("logit_prob must be 0 on non-logit nodes")


__all__ = [
    "NODE_COLUMNS",
    "canonical_order",
    "check_node_table",
    "make_node_table",
    "normalize_table",
    "parse_table_keys",
]
