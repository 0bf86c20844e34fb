"""The steering playground's JSON API as pure functions: (replacement model, request) -> dict.

Algorithm:
  1. ``parse_steer_request`` checks the body ``{"prompt": str, "interventions": [...],
     "max_new_tokens": int}``: the prompt within ``features_api``'s text bounds; at most
     ``MAX_INTERVENTIONS`` interventions, each ``{"feature": "L3/120"}`` (or ``layer`` +
     ``feature``), ``mode`` ablate | scale | clamp, a finite ``strength`` (|s| <=
     ``MAX_STRENGTH``; ignored for ablate), ``positions`` "all" (default) or a list of
     prompt positions; ``max_new_tokens`` in [1, ``MAX_NEW_TOKENS``]. Anything else is an
     ``ExploreError(400)`` naming the field; an unknown feature 404.
  2. Modes map onto ``attribution.replacement.steering.FeatureIntervention``: ablate ->
     ``ablate``, scale -> ``scale`` (activation *= strength), clamp -> ``set``
     (activation := strength). Positions "all" -> None (every position, generated ones too).
  3. ``steer_generate`` runs ``steering.generate`` (greedy, ``iterative`` mode: the real
     model with live errors, so edits propagate and no intervention reproduces the
     model) twice, without and with the interventions (once when there are none).
  4. The logits behind each generated token come from one more ``steering.steer`` call
     on the final sequence minus its last token: the model is causal and an
     intervention at position p changes nothing before p, so position t's logits there
     are those the generation step that chose token t+1 saw. Each step reports the
     chosen token's logit and the top ``TOP_K`` alternatives; non-finite logits (an
     enormous strength) are a 422, never a NaN in the answer.
"""

from __future__ import annotations

import math

import numpy as np

from circuits.explore.api import ExploreError
from circuits.explore.features_api import feature_id, parse_feature, tokenize

MAX_NEW_TOKENS = 32
"""Most tokens one steering request may generate (each costs a full forward per side)."""
MAX_INTERVENTIONS = 16
"""Most interventions one request may carry."""
MAX_STRENGTH = 1e4
"""Largest |strength| accepted (larger values only overflow the residual stream)."""
TOP_K = 5
"""Alternatives reported per generated token."""
MODES = {"ablate": "ablate", "scale": "scale", "clamp": "set"}
"""Playground mode -> ``FeatureIntervention.mode``."""


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(str(v))
        except ValueError:
            raise ExploreError(400, f"{what} must be a number, got {str(v)[:40]!r}") from None
    v = float(v)
    if not math.isfinite(v) or abs(v) > MAX_STRENGTH:
        raise ExploreError(400, f"{what} must be a finite number with |value| <= {MAX_STRENGTH:g}, got {v!r}")
    return v


def parse_intervention(widths: dict[int, int], spec, n_prompt: int, k: int):
    """One checked ``FeatureIntervention`` from its JSON form (steps 1-2)."""
    from attribution.replacement.steering import FeatureIntervention

    where = f"interventions[{k}]"
    if not isinstance(spec, dict):
        raise ExploreError(400, f"{where} must be an object such as {{\"feature\": \"L0/3\", \"mode\": \"clamp\", "
                                "\"strength\": 5}")
    unknown = set(spec) - {"feature", "layer", "mode", "strength", "positions"}
    if unknown:
        raise ExploreError(400, f"{where} has unknown keys {sorted(unknown)[:5]}")
    fspec = spec["feature"] if isinstance(spec.get("feature"), str) else \
        {"layer": spec.get("layer"), "feature": spec.get("feature")}
    layer, f = parse_feature(widths, fspec)
    mode = spec.get("mode", "clamp")
    if mode not in MODES:
        raise ExploreError(400, f"{where}.mode must be one of {', '.join(MODES)}, got {str(mode)[:40]!r}")
    value = 0.0 if mode == "ablate" else _number(spec.get("strength", 1.0 if mode == "scale" else 0.0),
                                                 f"{where}.strength")
    pos = spec.get("positions", "all")
    if pos is None or pos == "all":
        positions = None
    else:
        if not isinstance(pos, list) or not pos or len(pos) > n_prompt:
            raise ExploreError(400, f"{where}.positions must be \"all\" or a non-empty list of prompt positions")
        if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n_prompt for p in pos):
            raise ExploreError(400, f"{where}.positions must be integers in [0, {n_prompt - 1}] "
                                    f"(the prompt has {n_prompt} tokens)")
        positions = sorted(set(pos))
    return FeatureIntervention(layer, f, MODES[mode], value, positions)


def parse_steer_request(model, widths: dict[int, int], body) -> tuple[list[int], list, int]:
    """(prompt ids, interventions, max_new_tokens) from a request body (step 1)."""
    if not isinstance(body, dict):
        raise ExploreError(400, "the body must be a JSON object {\"prompt\": ..., \"interventions\": [...]}")
    unknown = set(body) - {"prompt", "interventions", "max_new_tokens"}
    if unknown:
        raise ExploreError(400, f"unknown keys {sorted(unknown)[:5]}; use prompt, interventions, max_new_tokens")
    ids = tokenize(model, body.get("prompt"), "prompt")
    n = body.get("max_new_tokens", 8)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
        raise ExploreError(400, f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {str(n)[:40]!r}")
    specs = body.get("interventions", [])
    if not isinstance(specs, list):
        raise ExploreError(400, "'interventions' must be a list")
    if len(specs) > MAX_INTERVENTIONS:
        raise ExploreError(400, f"too many interventions: {len(specs)} (at most {MAX_INTERVENTIONS})")
    ivs = [parse_intervention(widths, s, len(ids), k) for k, s in enumerate(specs)]
    return ids, ivs, n


def _side(rm, ids: list[int], ivs: list, n: int) -> dict:
    """Steps 3-4 for one side (no interventions: the unmodified model)."""
    from attribution.replacement.steering import generate, steer

    gen = generate(rm, None, ids, ivs, n_tokens=n, mode="iterative")
    logits = np.asarray(steer(rm, None, gen.tokens[:-1], ivs, mode="iterative").logits, dtype=np.float64)
    if not np.isfinite(logits[len(ids) - 1:]).all():
        raise ExploreError(422, "the logits are not finite with these interventions; use a smaller strength")
    vocab_strs = rm.model.to_str_tokens(gen.new_tokens)
    steps = []
    for j, tok in enumerate(gen.new_tokens):
        row = logits[len(ids) - 1 + j]
        top = np.argsort(-row, kind="stable")[:TOP_K]
        steps.append({"id": int(tok), "token": vocab_strs[j], "logit": float(row[tok]),
                      "top": [[int(t), rm.model.to_str_tokens([int(t)])[0], float(row[t])] for t in top]})
    return {"text": gen.text, "ids": [int(t) for t in gen.new_tokens], "steps": steps}


def steer_generate(rm, ids: list[int], ivs: list, n: int) -> dict:
    """Greedy generation without and with ``ivs``, side by side (steps 3-4)."""
    clean = _side(rm, ids, [], n)
    return {"prompt_tokens": rm.model.to_str_tokens(ids), "prompt_ids": list(ids), "max_new_tokens": n,
            "interventions": [{"feature": feature_id(iv.layer, iv.feature), "mode": iv.mode, "value": iv.value,
                               "positions": "all" if iv.positions is None else list(iv.positions)} for iv in ivs],
            "clean": clean, "steered": _side(rm, ids, ivs, n) if ivs else clean}


__all__ = ["MAX_INTERVENTIONS", "MAX_NEW_TOKENS", "MAX_STRENGTH", "MODES", "parse_intervention",
           "parse_steer_request", "steer_generate"]
