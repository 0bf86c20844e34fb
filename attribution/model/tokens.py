"""Token batches: coerce to int32 [B,T] and validate against the model.

Algorithm (``as_tokens``):
  1. Accept an mx.array, numpy array, list of ints or list of equal-length
     lists; a 1-D sequence gets a batch axis.
  2. Reject non-integer dtypes, rank > 2, and batches with no tokens.
  3. Reject T > the model's context (when it declares one) and ids outside
     [0, vocab_size); the id check evaluates only the batch's min and max.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from attribution.errors import (
    AttributionError,
    ContextLengthError,
    EmptySequenceError,
    TokenRangeError,
)


def as_tokens(tokens, model=None) -> mx.array:
    """``tokens`` as int32 [B,T], validated against ``model`` (context, vocabulary)."""
    if not isinstance(tokens, mx.array):
        arr = np.asarray(tokens)
        if arr.size == 0:
            raise EmptySequenceError(
                "empty token sequence: pass at least one token id (encode a non-empty text, "
                "e.g. model.encode('hello'), which also adds BOS)"
            )
        if arr.dtype.kind not in "iu":
            raise AttributionError(f"token ids must be integers, got dtype {arr.dtype}; "
                                   "encode text with model.encode first")
        tokens = mx.array(arr.astype(np.int32))
    elif not mx.issubdtype(tokens.dtype, mx.integer):
        raise AttributionError(f"token ids must be integers, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise AttributionError(f"tokens must be [batch, seq] or [seq], got shape {tokens.shape}")
    if tokens.size == 0:
        raise EmptySequenceError(
            f"empty token batch of shape {tokens.shape}: pass at least one token per sequence"
        )
    if tokens.dtype != mx.int32:
        tokens = tokens.astype(mx.int32)
    if model is not None:
        _check_against(tokens, model)
    return tokens


def _check_against(tokens: mx.array, model) -> None:
    t = tokens.shape[1]
    if model.max_context is not None and t > model.max_context:
        raise ContextLengthError(
            f"sequence length {t} exceeds the model's context of {model.max_context} tokens; "
            f"truncate or split the input to at most {model.max_context} tokens"
        )
    lo, hi = mx.stack([mx.min(tokens), mx.max(tokens)]).tolist()  # one sync
    if lo < 0 or hi >= model.vocab_size:
        bad = lo if lo < 0 else hi
        raise TokenRangeError(
            f"token id {bad} is outside the vocabulary [0, {model.vocab_size}); encode text with "
            "this model's tokenizer (model.encode) rather than another model's"
        )
