"""Token strings as they read inside a text (dashboards, excerpts, top-feature tables).

Decoding one id at a time loses the spacing a tokenizer's decoder puts between tokens:
the shipped organisms' word-level tokenizer (WordLevel model, WordPiece decoder) decodes
``[old]`` and ``[man]`` to "old" and "man" but ``[old, man]`` to "old man", so per-id
strings run together ("oldmanpaintedthelamp"); SentencePiece likewise drops the "▁"
word-start space of a lone token. Byte-level BPE already keeps " man" and is unchanged.

Algorithm (``vocab_strings`` / ``token_strings``):
  1. Pick a reference id r: the tokenizer's own encoding of a plain ASCII word
     ("the", "a", "x"; the last id of the first that decodes to letters), else the first
     id that is not a special token.
  2. Every id t that is not special reads as ``decode([r, t])`` minus its prefix
     ``decode([r])``: the text t adds after a word, with the spacing the decoder
     implies (" man" for word-level and SentencePiece, "ing" for a "##ing" piece).
     When the pair's decoding does not start with ``decode([r])`` (a decoder that
     rewrites across tokens), t falls back to ``decode([t])``.
  3. The BOS and padding tokens keep their lone decoding: BOS starts a text and padding
     is never shown, so nothing precedes them. Other special tokens (``<unk>`` standing
     in for a word, EOS) are spaced like any token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_PROBES = ("the", "a", "x")
"""Plain words whose token serves as the reference id r (step 1)."""


def _tokenizer(model):
    return getattr(model, "tokenizer", model)


def _decode(tok, ids: list[int]) -> str:
    return str(tok.decode([int(i) for i in ids]))


def _decode_many(tok, seqs: list[list[int]]) -> list[str]:
    batch = getattr(tok, "batch_decode", None)
    if callable(batch):  # one call into a fast tokenizer instead of one per sequence
        return [str(s) for s in batch(seqs)]
    return [_decode(tok, s) for s in seqs]


def _special_ids(tok) -> set[int]:
    ids = getattr(tok, "all_special_ids", None) or []
    return {int(i) for i in ids}


def _unspaced_ids(tok) -> set[int]:
    """BOS and padding (step 3)."""
    ids = (getattr(tok, "bos_token_id", None), getattr(tok, "pad_token_id", None))
    return {int(i) for i in ids if isinstance(i, int)}


def _encode_plain(tok, word: str) -> list[int]:
    try:
        return [int(i) for i in tok.encode(word, add_special_tokens=False)]
    except TypeError:  # an encode without the keyword (a bare ``tokenizers`` object)
        enc = tok.encode(word)
        return [int(i) for i in getattr(enc, "ids", enc)]


def reference_id(model, vocab_size: int) -> int | None:
    """The reference id r of step 1 (None for an empty vocabulary)."""
    tok, special = _tokenizer(model), _special_ids(_tokenizer(model))
    for word in _PROBES:
        try:
            ids = _encode_plain(tok, word)
        except Exception:  # tokenizers differ; a failed probe only means "try the next"
            continue
        ids = [i for i in ids if i not in special and 0 <= i < vocab_size]
        if ids and _decode(tok, ids[-1:]).strip().isalpha():
            return ids[-1]
    return next((i for i in range(vocab_size) if i not in special), None)


def token_strings(model, ids: Iterable[int]) -> list[str]:
    """One string per id in ``ids``, each as it reads after a word (steps 2-3); joined,
    they read like the decoded text (up to the first token's leading space)."""
    ids = [int(i) for i in ids]
    tok = _tokenizer(model)
    n = int(getattr(model, "vocab_size", 0) or (max(ids) + 1 if ids else 0))
    uniq = sorted(set(ids))
    table = dict(zip(uniq, _strings(tok, uniq, reference_id(model, max(n, max(uniq, default=-1) + 1)))))
    return [table[i] for i in ids]


def vocab_strings(model) -> list[str]:
    """The string of every token id of ``model``'s tokenizer, spaced as in a text (steps 1-3)."""
    n = int(getattr(model, "vocab_size", 0) or len(_tokenizer(model)))
    return _strings(_tokenizer(model), list(range(n)), reference_id(model, n))


def _strings(tok, ids: Sequence[int], ref: int | None) -> list[str]:
    lone = _decode_many(tok, [[i] for i in ids])
    if ref is None:
        return lone
    keep = _unspaced_ids(tok)
    head = _decode(tok, [ref])
    pairs = _decode_many(tok, [[ref, i] for i in ids])
    return [s if i in keep or not p.startswith(head) else p[len(head):]
            for i, s, p in zip(ids, lone, pairs)]


__all__ = ["reference_id", "token_strings", "vocab_strings"]
