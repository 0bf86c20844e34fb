"""Model cards of the organisms: ``card.json`` (machine-readable) and ``README.md``.

Algorithm:
  1. ``write_card`` renders the card dict as JSON and as a Markdown summary.
  2. Each file is written to a temporary file in the same directory and renamed
     over the target (atomic on POSIX).
  3. ``update_card`` reads the card, merges new top-level keys and rewrites both.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped files must be readable by all
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_card(directory: str | Path) -> dict[str, Any]:
    """The ``card.json`` of an organism directory (empty dict when absent)."""
    p = Path(directory) / "card.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def _fmt_heads(heads: list[dict]) -> str:
    return ", ".join(f"L{h['layer']}H{h['head']} ({h['score']:.2f})" for h in heads) or "none"


def render_readme(card: dict[str, Any]) -> str:
    """Markdown model card from the card dict."""
    r, cfg = card.get("recipe", {}), card.get("model_config", {})
    lines = [
        f"# Model organism `{card.get('name')}`", "",
        ("A small llama-architecture mlx-lm model trained offline by "
         "`circuits.organisms.train` on a generated corpus. Load it like any model: "
         "`attribution.load_model(circuits.organisms.path(name))`."), "",
        "## Config", "",
        (f"- layers {cfg.get('num_hidden_layers')}, d_model {cfg.get('hidden_size')}, heads "
         f"{cfg.get('num_attention_heads')} (d_head {cfg.get('head_dim')}), MLP "
         f"{cfg.get('intermediate_size')}, vocab {cfg.get('vocab_size')} (word-level), tied "
         f"embeddings, float32; {card.get('n_parameters')} parameters"),
        "", "## Training", "",
        "- data mixture (document kind: weight): "
        + ", ".join(f"{k}: {w}" for k, w in r.get("mixture", [])),
        (f"- {card.get('steps')} AdamW steps, batch {r.get('batch_size')}, lr {r.get('lr')} "
         f"(warm-up {r.get('warmup')}, cosine), weight decay {r.get('weight_decay')}"),
        (f"- seed {card.get('seed')}; training time {card.get('train_seconds')} s on "
         f"{card.get('hardware', 'a 2-core CPU')}; final loss {card.get('final_loss', 0):.4f}"),
        "", f"## Held-out scores (eval seed {card.get('eval_seed')})", "",
        "| task | accuracy | mean metric | metric | n |", "|---|---|---|---|---|",
    ]
    for t, s in card.get("tasks", {}).items():
        lines.append(f"| {t} | {s['accuracy']:.3f} | {s['mean_metric']:.3f} | {s['metric']} "
                     f"| {s['n']} |")
    note = r.get("extra", {}).get("note")
    if note:
        lines[2:2] = [f"{note}.", ""]
    heads = card.get("heads")
    if heads:
        lines += ["", "## Attention heads (attention-pattern scores)", ""]
        for kind, hs in heads.get("identified", {}).items():
            lines.append(f"- {kind}: {_fmt_heads(hs)}")
        lines.append(f"- threshold {heads.get('threshold')}; method: {heads.get('method')}")
        ident = heads.get("identified", {})
        if not ident.get("induction") and ident.get("induction_shifted"):
            lines.append(
                "- note: no head passes the canonical induction score (attention to the token "
                "after the earlier occurrence of the current token). The layer-1 heads listed "
                "as induction_shifted attend one position further on, matching the query "
                "against the two-back heads' output there and copying the answer from the "
                "previous-token heads' output at that position; they predict the same token "
                "and are this model's induction heads.")
    gt = card.get("ground_truth")
    if gt:
        lines += ["", "## Ground truth (exact patching, see ground_truth.json)", ""]
        for t, g in gt.items():
            lines.append(f"- {t}: circuit {', '.join(g['circuit'])} "
                         f"(faithfulness {g['faithfulness']:.3f}, {g['search']} search)")
    return "\n".join(lines) + "\n"


def write_card(directory: str | Path, card: dict[str, Any]) -> None:
    """Write ``card.json`` and ``README.md`` into ``directory`` atomically."""
    atomic_write_text(Path(directory) / "card.json", json.dumps(card, indent=2, sort_keys=False))
    atomic_write_text(Path(directory) / "README.md", render_readme(card))


def update_card(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the card and rewrite it; returns the new card."""
    card = {**read_card(directory), **fields}
    write_card(directory, card)
    return card
