"""Integrity checks: NaN/inf detection, and a cheap identity of a model.

Algorithm (``check_finite`` / ``check_all_finite``):
  1. One reduction per tensor, ``all(isfinite(x))``; integer and bool tensors
     (quantized weights, token ids) cannot hold NaN and are skipped.
  2. The flags of all tensors are evaluated together (one synchronisation for a
     whole model, and nothing is materialised beyond one bool per tensor).
  3. Only when a flag is false are NaN and inf counted, on the first bad tensor
     in the order given (the forward order, for activations: NaN propagates, so
     the first one is the cause); the error names it, gives both counts and how
     many other tensors are bad, and says what to do.

Algorithm (``model_identity``):
  1. Shape facts: architecture (``model_type``), d_model, n_layers, vocab size,
     and whether the model is quantized.
  2. ``norms_fingerprint``: sha256 over every block's norm parameters (weights
     and biases, in definition order) and the final norm's, each with its name
     and shape, values cast to bfloat16.
  3. ``fingerprint``: the same digest continued with the first
     ``_EMBED_ROWS`` rows of the token embedding (dequantised when quantized),
     also cast to bfloat16.
  4. ``identity_mismatch`` compares the shape facts, then ``fingerprint`` when
     both sides are unquantized, else ``norms_fingerprint`` (a quantized copy
     keeps its norms in float but its embedding only approximately).

What the fingerprint detects: another checkpoint of the same shape (a base
model vs its instruction-tuned variant, another seed, another size), and a
config/weights pairing that changed the norms or the first embedding rows.
What it does not: changes confined to attention/MLP matrices and later
embedding rows (a LoRA merge that leaves norms untouched); the bfloat16 cast
makes a float32 and a bfloat16 copy agree (bf16 = round-to-nearest of fp32),
but a float16 copy usually does not (fp32 -> fp16 -> bf16 rounds twice).
Cost: a few thousand values per layer plus 16 embedding rows, independent of
the vocabulary and MLP sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import mlx.core as mx
import numpy as np

from attribution.errors import NonFiniteError

IDENTITY_VERSION = 1
"""Version of the ``model_identity`` dict (bump when the fingerprint recipe changes)."""

_EMBED_ROWS = 16
# Fields whose disagreement alone means another model; compared before the digests.
_SHAPE_FIELDS = ("architecture", "d_model", "n_layers", "vocab_size")
_DEFAULT_FIX = ("find where they come from (a corrupt checkpoint or dictionary file, or an "
                "overflow in low precision: try float32)")


def _is_float(a) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype.kind in "fc"
    return mx.issubdtype(a.dtype, mx.floating)


def nonfinite_counts(array) -> tuple[int, int]:
    """(number of NaN, number of +-inf) values in an MLX or numpy array."""
    if not _is_float(array):
        return 0, 0
    if isinstance(array, np.ndarray):
        return int(np.isnan(array).sum()), int(np.isinf(array).sum())
    n_nan, n_inf = mx.isnan(array).sum(), mx.isinf(array).sum()
    mx.eval(n_nan, n_inf)
    return int(n_nan.item()), int(n_inf.item())


def _message(name: str, n_nan: int, n_inf: int, others: int, fix: str) -> str:
    more = f" ({others} more tensor{'s' if others != 1 else ''} also non-finite)" if others else ""
    return f"{name} has {n_nan} NaN and {n_inf} inf values{more}: {fix}"


def nonfinite_names(named: Mapping | Iterable[tuple[str, object]]) -> list[str]:
    """Names of the tensors holding NaN or inf, in the order given (one evaluation)."""
    items = list(named.items() if isinstance(named, Mapping) else named)
    bad: list[str] = []
    flags, flag_names = [], []
    for name, a in items:
        if not _is_float(a):
            continue
        if isinstance(a, np.ndarray):
            if not np.isfinite(a).all():
                bad.append(name)
        else:
            flags.append(mx.isfinite(a).all())
            flag_names.append(name)
    if flags:
        ok = mx.stack(flags).tolist()  # one evaluation of every reduction
        bad_mx = {n for n, f in zip(flag_names, ok) if not f}
        bad = [n for n, _ in items if n in bad_mx or n in bad]
    return bad


def check_all_finite(named: Mapping | Iterable[tuple[str, object]], *, fix: str | None = None,
                     prefix: str = "") -> None:
    """Raise ``NonFiniteError`` naming the first tensor (in the order given) with NaN or inf.

    ``named``: name -> array (MLX or numpy); ``prefix`` goes before the name in
    the message (e.g. "model weight "); ``fix`` says what to do."""
    items = list(named.items() if isinstance(named, Mapping) else named)
    bad = nonfinite_names(items)
    if not bad:
        return
    first = bad[0]
    array = next(a for n, a in items if n == first)
    n_nan, n_inf = nonfinite_counts(array)
    raise NonFiniteError(_message(f"{prefix}{first}", n_nan, n_inf, len(bad) - 1,
                                  fix or _DEFAULT_FIX), first, n_nan, n_inf)


def check_finite(name: str, array, *, fix: str | None = None) -> None:
    """Raise ``NonFiniteError`` when ``array`` holds NaN or inf; the message names ``name``.

    One reduction (``all(isfinite)``); the NaN/inf counts are computed only on failure."""
    check_all_finite([(name, array)], fix=fix)


def check_weights(module, *, where: str = "") -> None:
    """Raise ``NonFiniteError`` when a float parameter of an mlx ``module`` holds NaN or inf.

    Quantized layers keep packed integer weights (skipped) and float scales and
    biases (checked), so a quantized model is covered too. ``where``: the
    checkpoint's location, for the message."""
    from mlx.utils import tree_flatten

    loc = f" in {where}" if where else ""
    check_all_finite(tree_flatten(module.parameters()), prefix="model weight ",
                     fix=f"the checkpoint{loc} is corrupt; re-download or re-convert it "
                         "(mlx_lm.convert)")


# ------------------------------------------------------------------ identity
def _bf16_bytes(a: mx.array) -> bytes:
    b = a.astype(mx.float32).astype(mx.bfloat16)  # via fp32 so every source dtype rounds once
    return bytes(np.array(b.view(mx.uint16)).tobytes())


def _feed(h, name: str, a: mx.array) -> None:
    h.update(f"{name}:{tuple(a.shape)};".encode())
    h.update(_bf16_bytes(a))


def _norm_params(module) -> list[tuple[str, mx.array]]:
    out = []
    for key in ("weight", "bias"):
        v = module.get(key) if isinstance(module, dict) else None
        if isinstance(v, mx.array):
            out.append((key, v))
    return out


def _embedding_rows(emb, n: int) -> mx.array:
    """The first ``n`` rows of a (possibly quantized) embedding, dequantising only those."""
    if "scales" in emb:
        biases = emb.get("biases")
        kw = {"group_size": emb.group_size, "bits": emb.bits}
        if getattr(emb, "mode", "affine") != "affine":
            kw["mode"] = emb.mode
        return mx.dequantize(emb.weight[:n], emb.scales[:n],
                             None if biases is None else biases[:n], **kw)
    return emb.weight[:n]


def _is_quantized(model) -> bool:
    from mlx.utils import tree_flatten

    return any(name.endswith(".scales") for name, _ in tree_flatten(model.module.parameters()))


def model_identity(model) -> dict:
    """Identity of a loaded ``Model``: shape facts and two digests (module docstring).

    Keys: version, name (directory name, not compared), architecture, d_model,
    n_layers, vocab_size, quantized, norms_fingerprint, fingerprint (hex sha256)."""
    norms = hashlib.sha256()
    for layer in model.layers:
        for norm_name, norm in layer.norms.items():
            for key, v in _norm_params(norm):
                _feed(norms, f"L{layer.index}.{norm_name}.{key}", v)
    if model.final_norm is not None:
        for key, v in _norm_params(model.final_norm):
            _feed(norms, f"final_norm.{key}", v)
    full = norms.copy()
    _feed(full, "embed", _embedding_rows(model._embedding, _EMBED_ROWS))
    return {
        "version": IDENTITY_VERSION,
        "name": model.path.name if model.path is not None else None,
        "architecture": model.arch,
        "d_model": int(model.d_model),
        "n_layers": int(model.n_layers),
        "vocab_size": int(model.vocab_size),
        "quantized": _is_quantized(model),
        "norms_fingerprint": norms.hexdigest(),
        "fingerprint": full.hexdigest(),
    }


def describe_identity(identity: Mapping) -> str:
    """Short text of an identity: ``name (arch, d=64, 2 layers, fingerprint 1a2b3c4d5e6f)``."""
    digest = str(identity.get("fingerprint") or identity.get("norms_fingerprint") or "?")[:12]
    facts = [str(identity.get("architecture", "?")), f"d={identity.get('d_model', '?')}",
             f"{identity.get('n_layers', '?')} layers"]
    if identity.get("quantized"):
        facts.append("quantized")
    facts.append(f"fingerprint {digest}")
    name = identity.get("name") or "unnamed model"
    return f"{name} ({', '.join(facts)})"


def identity_mismatch(recorded: Mapping, current: Mapping) -> str | None:
    """Why two identities are different models, or None when they agree (module docstring).

    A field missing on either side is not compared, so partial identities load."""
    for key in _SHAPE_FIELDS:
        a, b = recorded.get(key), current.get(key)
        if a is not None and b is not None and a != b:
            return f"{key.replace('_', ' ')} {a} vs {b}"
    if recorded.get("version") != current.get("version"):
        return None  # another fingerprint recipe: the digests are not comparable
    either_quantized = bool(recorded.get("quantized")) or bool(current.get("quantized"))
    key = "norms_fingerprint" if either_quantized else "fingerprint"
    a, b = recorded.get(key), current.get(key)
    if a is not None and b is not None and a != b:
        return "different weights (fingerprint)"
    return None


__all__ = [
    "IDENTITY_VERSION", "check_all_finite", "check_finite", "check_weights", "describe_identity",
    "identity_mismatch", "model_identity", "nonfinite_counts", "nonfinite_names",
]
