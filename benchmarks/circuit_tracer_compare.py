"""Benchmark: our exact attribution graph against circuit-tracer's, same weights, same prompt.

Two processes, because circuit-tracer 0.5 pins transformers<=4.57.3 and we need >=5:
our side runs in ``.venv`` (orchestrator), circuit-tracer's in ``.venv-ct``
(``benchmarks/setup_circuit_tracer.sh``), exchanging safetensors + JSON in a work folder.
Each side times itself, and measures its own memory, inside its own process.

Algorithm:
  1. Ours (.venv): the model is
     - ``--config tiny`` (default): a tiny random mlx-lm GPT-2 (``make_tiny_model("gpt2")``,
       d_model 128, 4 layers, 4 heads, our word tokenizer); prompt BOS + seeded random words;
     - ``--config gpt2-small``: random weights at the published GPT-2 small config
       (``synthetic.make_config_model(published_config("gpt2-small"), seed=0)``: d 768,
       12 layers, 12 heads, vocab 50,257, word-level tokenizer of exactly that many ids);
       prompt ``random_prompt(V, n_tokens, seed=n_tokens)`` (BOS first).
     ``--model-cache DIR`` builds the model there once (a spec marker written last) and
     reuses it. Transcoders (per layer ``mlp_in -> mlp_out``): ``random_transcoders`` with
     encoder bias ``--bias`` (ReLU or JumpReLU), or with ``--l0 L``
     ``synthetic.sparse_transcoders(model, width, L, random_prompt(V, 64, seed=99))`` (ReLU,
     per-layer bias calibrated so that about L latents fire per token and layer).
     Logit targets: our top logits (95%, at most 10), passed as explicit token ids to both.
     One warm-up build (which also fixes the targets); write the transcoder weights, tokens,
     targets and our logits to ``ours.safetensors`` and the settings to ``spec.json``.
  2. circuit-tracer (.venv-ct, ``--ct-side DIR``): a TransformerLens ``HookedTransformerConfig``
     built by hand (GPT-2: act_fn gelu_new = mlx-lm's ``nn.gelu_approx``, LN with weights,
     standard learned positions, no LN folding / centering, as circuit-tracer's own loader
     uses), wrapped by ``TransformerLensReplacementModel.from_config`` with a ``TranscoderSet``
     (hooks ``mlp.hook_in`` -> ``mlp.hook_out``, ReLU or JumpReLU); the mlx safetensors
     (``model.safetensors``, ``config.json`` n_embd / n_layer / n_head / n_positions /
     layer_norm_epsilon / vocab_size, ``tokenizer.json``) are mapped onto the state dict.
     Check logits against ours; then ``attribute(tokens, model, attribution_targets=ids,
     batch_size=CT_B)``, with ``--max-feature-nodes N`` also ``max_feature_nodes=N,
     update_interval=U_ct``: one warm-up, ``--repeats`` timed runs.
     Only for the tiny unbudgeted comparison (as before) or ``--convention ours``: one extra
     untimed run adds W_pos to circuit-tracer's token vectors (see conventions).
  3. Ours: ``build_graph(method="exact")`` with ``GraphConfig(convention, batch_size=B,
     max_feature_nodes=N, update_interval=U, edges_per_target=None, max_edges=None)``: full
     rows, so every edge can be compared. With ``--edges-per-target K`` (as
     ``GraphConfig.large_model()``: 1,024; full rows at 128 tokens would hold ~300M edges)
     ours keeps the top K per target: then our kept edges are compared with circuit-tracer's
     value at the same entry, no entry we dropped may exceed the smallest we kept in its row
     (``dropped_larger_than_kept``), and pruning masks and scores are not compared. ``--repeats`` timed builds, half before and half
     after the circuit-tracer process (the CPU is shared); ``--repeats 1``: one timed build
     before it.
     Warm-ups: without a budget the full build (as before); with one, one re-ranking chunk
     (``max_feature_nodes = min(N, --update-targets)``) on each side: the same code paths
     and batch shapes at a fraction of the cost.
  4. Map nodes (features by (layer, pos, feature), errors by (layer, pos), tokens by pos,
     logits by token id), compare the adjacency A[target, source] on the common nodes (max
     |dA| against 1e-4 · max |A|), the selected feature sets (ours-only / ct-only counts,
     classified by ``_feature_set_diff``), the pruning masks (0.8 / 0.98) and graph scores;
     print ONE JSON line with those, the settings, timings (median of the repeats, and the
     ratio ct / ours), peak RSS of each side and ``attribution.perf.environment_record()``.

Budget (``--max-feature-nodes N``), both sides: the logit rows first, then the features by
partial influence on the logits (w · Σ_k A_nᵏ, A_n = |A| row-normalised by each computed
row's full mass) over the rows computed so far, re-ranked every T = ``--update-targets``
targets (default 1,024): circuit-tracer's ``update_interval`` counts batches of CT_B, ours
passes of B, so U_ct = T / CT_B and U = T / B (e.g. 1,024 = 256 × 4 = 64 × 16; both are
recorded). ``--ct-batch-size`` defaults to ``--batch-size``.

Peak RSS: ``process_peak`` is each process's ru_maxrss (ours taken before the comparison
step, and including the model build when not cached); ``attribution_peak`` is VmHWM reset
(``/proc/self/clear_refs``) after the warm-up, i.e. over the timed builds only.

Conventions that differ (handled explicitly):
  - Position 0 (BOS): circuit-tracer zeroes every transcoder activation and error vector at
    position 0 (``zero_positions``), so it has no features there and zero error columns;
    with ``--convention ours`` we keep them (compared on positions >= 1, pos-0 nodes
    counted); with ``--convention circuit-tracer`` (default) we zero them too.
  - Token nodes: circuit-tracer's token vector is W_E[token] only (``hook_embed``); ours
    (``--convention ours``) is resid_pre[0] = W_E[token] + W_pos[pos] for GPT-2. Token
    columns then differ by the position-embedding contribution; the extra run with
    W_E + W_pos checks that this explains the whole difference. ``--convention
    circuit-tracer`` uses W_E[token] as well.
  - Both: A[target, source]; logit directions W_U[:, t] - mean_t W_U (demeaned); LN scales
    and attention patterns frozen; feature targets at their pre-activation.
  - Budget ties: a last-layer feature before the last position reaches no target, so its
    influence is exactly 0 on both sides. If the budget exceeds the active features that
    have a path, the remainder is filled from these exact ties, and the sides pick
    different ones: ours the lowest node indices (``np.lexsort``, deterministic),
    circuit-tracer the order of ``torch.argsort(descending=True)``, which is not stable.
    (Measured on the tiny model, 16 tokens, budget 1,500 of 2,028: 602 such features,
    1,426 with a path, all 1,426 selected by both, 74 of the 602 picked differently; the
    influences of all features agreed to 8e-9 absolute at every re-ranking, the same top
    256 each time. Pruning masks were still equal, since zero-influence nodes are pruned.)
    ``feature_set_difference`` counts differing features with and without a path; any with
    a path would mean a ranking difference (near-ties: circuit-tracer ranks in float32,
    ours in float64). Below that count (e.g. GPT-2 small, 32 tokens, 7,500 of ~18,600)
    ties at zero are never reached.

Usage: .venv/bin/python benchmarks/circuit_tracer_compare.py [--n-tokens 16] [--repeats 3]
       [--width 512] [--bias -1.5] [--batch-size 64] [--out FILE]
       [--config gpt2-small --l0 50 --max-feature-nodes 7500 [--ct-batch-size 64]
        [--update-targets 1024] --model-cache /tmp/ct-gpt2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
ROOT = Path(_HERE).parent
CT_PYTHON = ROOT / ".venv-ct" / "bin" / "python"


# --------------------------------------------------------------------------- memory (both sides)
_PEAK_RESET = {"ok": False, "maxrss_kib": 0}


def _maxrss_gb() -> float:
    """Peak resident set of this process so far (ru_maxrss, KiB on Linux), GB; a
    ``_reset_peak_rss`` resets ru_maxrss too, so the peak before it is kept aside."""
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _PEAK_RESET["maxrss_kib"],
              _status_kib("VmHWM") or 0)  # ru_maxrss can lag VmHWM by a few pages
    return kib * 1024 / 1e9


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_gb() -> float | None:
    """Current resident set (VmRSS), GB."""
    v = _status_kib("VmRSS")
    return None if v is None else v * 1024 / 1e9


def _reset_peak_rss() -> None:
    """Reset the peak-RSS mark (VmHWM) to the current RSS (Linux ``clear_refs`` 5), so that
    ``_peak_rss_gb`` measures the attribution phase alone."""
    _PEAK_RESET["maxrss_kib"] = max(_PEAK_RESET["maxrss_kib"],
                                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _PEAK_RESET["ok"] = True
    except OSError:
        _PEAK_RESET["ok"] = False


def _peak_rss_gb() -> float | None:
    """VmHWM since ``_reset_peak_rss`` (None when the reset was not possible)."""
    v = _status_kib("VmHWM")
    return None if v is None or not _PEAK_RESET["ok"] else v * 1024 / 1e9


# --------------------------------------------------------------------------- circuit-tracer side
def _tl_state_dict(w: dict, cfg: dict):
    """TransformerLens GPT-2 state dict from mlx-lm gpt2 weights (nn.Linear: [out, in])."""
    import torch

    d, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    dh = d // H
    t = {k: torch.from_numpy(v).float() for k, v in w.items()}
    sd = {"embed.W_E": t["model.wte.weight"], "pos_embed.W_pos": t["model.wpe.weight"],
          "ln_final.w": t["model.ln_f.weight"], "ln_final.b": t["model.ln_f.bias"],
          "unembed.old_unembed.W_U": t["model.wte.weight"].T.contiguous(),
          "unembed.old_unembed.b_U": torch.zeros(t["model.wte.weight"].shape[0])}
    for i in range(L):
        p, b = f"model.h.{i}.", f"blocks.{i}."
        sd[b + "ln1.w"], sd[b + "ln1.b"] = t[p + "ln_1.weight"], t[p + "ln_1.bias"]
        sd[b + "ln2.w"], sd[b + "ln2.b"] = t[p + "ln_2.weight"], t[p + "ln_2.bias"]
        qkv_w, qkv_b = t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"]  # [3d, d], [3d]
        for j, n in enumerate("QKV"):
            Wn = qkv_w[j * d:(j + 1) * d]  # [d_out, d_in]
            sd[b + f"attn.W_{n}"] = Wn.T.reshape(d, H, dh).permute(1, 0, 2).contiguous()
            sd[b + f"attn.b_{n}"] = qkv_b[j * d:(j + 1) * d].reshape(H, dh)
        sd[b + "attn.W_O"] = t[p + "attn.c_proj.weight"].T.reshape(H, dh, d).contiguous()
        sd[b + "attn.b_O"] = t[p + "attn.c_proj.bias"]
        sd[b + "mlp.old_mlp.W_in"] = t[p + "mlp.c_fc.weight"].T.contiguous()
        sd[b + "mlp.old_mlp.b_in"] = t[p + "mlp.c_fc.bias"]
        sd[b + "mlp.old_mlp.W_out"] = t[p + "mlp.c_proj.weight"].T.contiguous()
        sd[b + "mlp.old_mlp.b_out"] = t[p + "mlp.c_proj.bias"]
    return sd


def ct_side(work: Path) -> None:
    """Build circuit-tracer's graph from the files in ``work``; write ``ct.safetensors`` + JSON."""
    import importlib.metadata as md

    import numpy as np
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
    from safetensors.numpy import load_file, save_file
    from transformer_lens import HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((work / "spec.json").read_text())
    rss_start = _rss_gb()
    mcfg = json.loads((Path(spec["model_dir"]) / "config.json").read_text())
    ours = load_file(str(work / "ours.safetensors"))
    weights = load_file(str(Path(spec["model_dir"]) / "model.safetensors"))
    d, L, H, V = mcfg["n_embd"], mcfg["n_layer"], mcfg["n_head"], mcfg["vocab_size"]
    torch.manual_seed(0)
    dev = torch.device("cpu")

    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    tcs = {}
    for i in range(L):
        W_enc = torch.from_numpy(ours[f"tc{i}.W_enc"]).float()  # ours [d, width]
        width = W_enc.shape[1]
        act = (torch.nn.ReLU() if spec["activation"] == "relu"
               else JumpReLU(torch.full((width,), float(spec["threshold"])), bandwidth=2.0))
        tc = SingleLayerTranscoder(d, width, act, layer_idx=i, device=dev, dtype=torch.float32)
        with torch.no_grad():
            tc.W_enc.copy_(W_enc.T)  # circuit-tracer: [width, d]
            tc.W_dec.copy_(torch.from_numpy(ours[f"tc{i}.W_dec"]))
            tc.b_enc.copy_(torch.from_numpy(ours[f"tc{i}.b_enc"]))
            tc.b_dec.copy_(torch.from_numpy(ours[f"tc{i}.b_dec"]))
        tcs[i] = tc
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            del ours[f"tc{i}.{name}"]  # the copies now live in the transcoder
    tset = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")

    cfg = HookedTransformerConfig(
        n_layers=L, d_model=d, n_ctx=mcfg["n_positions"], d_head=d // H, n_heads=H, d_mlp=4 * d,
        d_vocab=V, act_fn="gelu_new", normalization_type="LN", eps=mcfg["layer_norm_epsilon"],
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        model_name=spec.get("model_name", "tiny-gpt2-mlx"), default_prepend_bos=False, device="cpu",
        dtype=torch.float32, seed=0)
    # Attached after construction: TransformerLens' set_tokenizer reloads a tokenizer through
    # AutoTokenizer, which cannot read the transformers-5 tokenizer_config of our word tokenizer.
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["model_dir"]) / "tokenizer.json"),
                                  bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                  pad_token="<pad>")
    model = TransformerLensReplacementModel.from_config(cfg, tset)
    model.tokenizer = tok
    sd = _tl_state_dict(weights, mcfg)
    res = model.load_state_dict(sd, strict=False)
    bad_missing = [k for k in res.missing_keys
                   if not (k.startswith("transcoders.") or k.endswith((".mask", ".IGNORE")))]
    if res.unexpected_keys or bad_missing:
        raise RuntimeError(f"state dict mismatch: unexpected {res.unexpected_keys}, missing {bad_missing}")
    del sd, weights  # copied into the model
    model.eval()

    tokens = torch.from_numpy(ours["tokens"].astype(np.int64))
    targets = torch.from_numpy(ours["targets"].astype(np.int64))
    with torch.no_grad():
        logits = model(tokens[None]).float()[0].numpy()
    logit_diff = float(np.abs(logits - ours["logits"]).max())

    bs = spec["ct_batch_size"]
    budget = spec["max_feature_nodes"]

    def run(max_feature_nodes=budget):
        if max_feature_nodes is None:  # unbudgeted: circuit-tracer's own defaults otherwise
            return attribute(tokens, model, attribution_targets=targets, batch_size=bs, verbose=False)
        return attribute(tokens, model, attribution_targets=targets, batch_size=bs,
                         max_feature_nodes=max_feature_nodes,
                         update_interval=spec["ct_update_interval"], verbose=False)

    g = run(spec["warmup_feature_nodes"])  # warm-up
    del g
    gc.collect()
    rss_before = _rss_gb()
    _reset_peak_rss()
    times, g = [], None
    for _ in range(spec["repeats"]):
        g = None
        gc.collect()
        t0 = time.perf_counter()
        g = run()
        times.append(time.perf_counter() - t0)
    attribution_peak = _peak_rss_gb()

    # Untimed: token vectors W_E[tok] + W_pos[pos] (our token-node convention).
    orig = model.setup_attribution

    def setup_with_pos(inputs):
        ctx = orig(inputs)
        n = ctx.token_vectors.shape[0]
        ctx.token_vectors = ctx.token_vectors + model.W_pos[:n].detach()
        return ctx

    g_pos = None
    if spec["pos_check"]:
        model.setup_attribution = setup_with_pos
        g_pos = run()
        model.setup_attribution = orig

    pr = prune_graph(g, node_threshold=0.8, edge_threshold=0.98)
    replacement, completeness = compute_graph_scores(g)
    out = {"adjacency": g.adjacency_matrix.float(),
           **({} if g_pos is None else {"adjacency_pos": g_pos.adjacency_matrix.float()}),
           "node_mask": pr.node_mask.to(torch.uint8), "edge_mask": pr.edge_mask.to(torch.uint8),
           "logit_probabilities": g.logit_probabilities.float(),
           "active_features": g.active_features.long(), "selected_features": g.selected_features.long(),
           "activation_values": g.activation_values.float(), "input_tokens": g.input_tokens.long()}
    # C order: safetensors writes a transposed view's raw buffer (active_features is indices().T)
    out = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in out.items()}
    save_file({**out, "logits": np.ascontiguousarray(logits)}, str(work / "ct.safetensors"))
    (work / "ct.json").write_text(json.dumps({
        "times_s": times, "logit_max_abs_diff": logit_diff,
        "rss_gb": {"start": rss_start, "before_timed": rss_before, "attribution_peak": attribution_peak,
                   "process_peak": _maxrss_gb()},
        "n_active_features": int(g.active_features.shape[0]),
        "replacement": replacement, "completeness": completeness,
        "logit_targets": [int(t.vocab_idx) for t in g.logit_targets],
        "torch_threads": torch.get_num_threads(),
        "versions": {p: md.version(p) for p in ("circuit-tracer", "transformer-lens", "transformers",
                                                "torch", "numpy")}}))


# --------------------------------------------------------------------------- our side
def _prompt(model, n: int, seed: int) -> list[int]:
    import numpy as np

    from attribution.tiny import DEFAULT_WORDS

    rng = np.random.default_rng(seed)
    ids = rng.integers(4, min(model.vocab_size, 4 + len(DEFAULT_WORDS)), size=n).tolist()
    ids[0] = int(model.tokenizer.bos_token_id)
    return ids


def _ct_index(ct: dict, n_layers: int, n_pos: int, keys) -> tuple[list, list, dict]:
    """Index pairs (ours, circuit-tracer) of the common nodes, and node-set bookkeeping."""
    from attribution.graph.keys import ErrorNode, FeatureNode, LogitNode, TokenNode

    feats = ct["active_features"][ct["selected_features"]]
    n_feat = len(feats)
    ct_feat = {(int(l), int(p), int(f)): i for i, (l, p, f) in enumerate(feats)}
    logit_off = n_feat + (n_layers + 1) * n_pos
    ct_logit = {t: logit_off + k for k, t in enumerate(ct["logit_targets"])}
    io, ic, types = [], [], []
    ours_only = {"feature_pos0": 0, "feature_other": 0, "error_pos0": 0}
    ours_only_keys = []
    for i, k in enumerate(keys):
        j = None
        if isinstance(k, FeatureNode):
            j = ct_feat.pop((k.layer, k.pos, k.feature), None)
            if j is None:
                ours_only["feature_pos0" if k.pos == 0 else "feature_other"] += 1
                ours_only_keys.append((k.layer, k.pos, k.feature))
        elif isinstance(k, ErrorNode):
            if k.pos == 0:
                ours_only["error_pos0"] += 1
            else:
                j = n_feat + k.layer * n_pos + k.pos
        elif isinstance(k, TokenNode):
            j = n_feat + n_layers * n_pos + k.pos
        elif isinstance(k, LogitNode):
            j = ct_logit.get(k.token_id)
        if j is not None:
            io.append(i)
            ic.append(j)
            types.append(type(k).__name__.replace("Node", "").lower())
    return io, ic, {"ours_only": ours_only, "ct_only_features": len(ct_feat), "types": types,
                    "ours_only_keys": ours_only_keys, "ct_only_keys": sorted(ct_feat)}


def _feature_set_diff(info: dict, ct: dict, n_layers: int, n_pos: int, budget) -> dict:
    """Classify the features only one side selected.

    A feature of the last layer at a position before the last writes only to the residual
    stream at its own position after the last attention layer, so it reaches no target:
    its influence is exactly 0 on both sides at every re-ranking. When the budget exceeds
    the number of active features with a path, the rest of the budget is filled from these
    exact ties: ours takes the lowest node indices (``np.lexsort``), circuit-tracer whatever
    ``torch.argsort(descending=True)`` (not stable) puts first. Features with a path that
    differ would point at a ranking difference (near-ties in float32 vs float64 influence)."""
    af = ct["active_features"]
    no_path = lambda k: k[0] == n_layers - 1 and k[1] < n_pos - 1  # noqa: E731
    n_no_path = int(((af[:, 0] == n_layers - 1) & (af[:, 1] < n_pos - 1)).sum())
    o, c = info["ours_only_keys"], info["ct_only_keys"]
    return {"active_without_path": n_no_path, "active_with_path": int(len(af)) - n_no_path,
            "budget_exceeds_active_with_path": budget is not None and budget > len(af) - n_no_path,
            "ours_only_without_path": sum(map(no_path, o)), "ct_only_without_path": sum(map(no_path, c)),
            "ours_only_with_path": [list(map(int, k)) for k in o if not no_path(k)][:20],
            "ct_only_with_path": [list(map(int, k)) for k in c if not no_path(k)][:20]}


def _compare(A_o, A_c, types, kept_only: bool = False) -> dict:
    """max |A_o - A_c| overall and per edge type; ``kept_only``: over our stored edges only
    (ours sparsified to the top-k of each row), plus how many circuit-tracer entries we did
    not keep are larger than the smallest edge we kept in that row (0 when our top-k is
    circuit-tracer's top-k on these nodes)."""
    import numpy as np

    D = np.abs(A_o - A_c)
    extra = {}
    if kept_only:
        kept = A_o != 0
        D = np.where(kept, D, 0.0)
        floor = np.where(kept, np.abs(A_o), np.inf).min(axis=1, keepdims=True)
        bigger = (~kept) & (np.abs(A_c) > floor * (1 + 1e-4) + 1e-7)
        extra = {"compared": "our kept edges only", "kept_edges": int(kept.sum()),
                 "dropped_larger_than_kept": int(bigger.sum())}
    t = np.asarray(types)
    by = {}
    for tt in ("feature", "logit"):
        for st in ("feature", "error", "token"):
            m = D[np.ix_(t == tt, t == st)]
            if m.size:
                by[f"{st}->{tt}"] = float(m.max())
    return {"max_abs_diff": float(D.max()), "max_abs_diff_by_edge_type": by,
            "max_abs_weight": float(np.abs(A_o).max()), **extra}


def _compare_pruning(g, ct: dict, io: list, ic: list) -> dict:
    """Our influence pruning (0.8 / 0.98) and graph scores against circuit-tracer's, on the
    common nodes: node masks, edge masks (A[target, source] orientation) and logit weights."""
    import numpy as np

    from circuits.prune import prune
    from circuits.prune.scores import graph_scores

    res = prune(g, 0.8, 0.98)
    node_o = np.asarray(res.node_mask, bool)[io]
    node_c = ct["node_mask"].astype(bool)[ic]
    kept = res.graph
    edge_o = np.zeros((g.n_nodes, g.n_nodes), bool)
    coo = kept.adjacency.tocoo()
    full_idx = np.asarray([g.index(k) for k in kept.keys])
    edge_o[full_idx[coo.row], full_idx[coo.col]] = coo.data != 0
    edge_o = edge_o[np.ix_(io, io)]
    edge_c = ct["edge_mask"].astype(bool)[np.ix_(ic, ic)] & node_c[:, None] & node_c[None, :]
    sc = graph_scores(g)
    w_o = np.asarray(g.logit_weights, np.float64)
    w_c = ct["logit_probabilities"].astype(np.float64)
    return {"node_masks_equal": bool((node_o == node_c).all()),
            "node_mask_mismatches": int((node_o != node_c).sum()),
            "nodes_kept": {"ours": int(node_o.sum()), "ct": int(node_c.sum())},
            "edge_masks_equal": bool((edge_o == edge_c).all()),
            "edge_mask_mismatches": int((edge_o != edge_c).sum()),
            "edges_kept": {"ours": int(edge_o.sum()), "ct": int(edge_c.sum())},
            "logit_weights_max_abs_diff": float(np.abs(w_o - w_c).max()) if len(w_o) == len(w_c) else None,
            "replacement": sc.replacement, "completeness": sc.completeness}


def _model_dir(args, work: Path) -> tuple[Path, str, dict]:
    """Build (or reuse from ``--model-cache``) the model; returns (dir, description, build spec)."""
    if args.config == "gpt2-small":
        from attribution.attribute.synthetic import make_config_model, published_config

        spec = {"config": "gpt2-small", "seed": 0, "builder": "make_config_model"}
        cfg = published_config("gpt2-small")
        desc = (f"random-weight gpt2-small (published config d={cfg['n_embd']}, L={cfg['n_layer']}, "
                f"H={cfg['n_head']}, V={cfg['vocab_size']}; make_config_model seed 0)")
        build = lambda d: make_config_model(cfg, d, seed=0)  # noqa: E731
    else:
        from attribution.tiny import make_tiny_model

        n_ctx = max(64, args.n_tokens)
        spec = {"config": "tiny", "seed": 0, "builder": "make_tiny_model", "d_model": args.d_model,
                "n_layers": args.n_layers, "n_ctx": n_ctx}
        desc = f"tiny-random-gpt2(d={args.d_model},L={args.n_layers},H=4,V={{V}})"
        build = lambda d: make_tiny_model("gpt2", d, seed=0, n_embd=args.d_model,  # noqa: E731
                                          n_layer=args.n_layers, n_head=4, n_ctx=n_ctx,
                                          n_positions=n_ctx)
    if args.model_cache is None:
        return build(work / "gpt2"), desc, {**spec, "cached": False}
    mdir = args.model_cache
    marker = mdir / "benchmark_model_spec.json"
    files = ("config.json", "model.safetensors", "tokenizer.json")
    if marker.exists() and json.loads(marker.read_text()) == spec and all((mdir / f).exists() for f in files):
        return mdir, desc, {**spec, "cached": True}
    if marker.exists():
        marker.unlink()
    build(mdir)
    marker.write_text(json.dumps(spec))  # written last: a half-built folder is rebuilt
    return mdir, desc, {**spec, "cached": False}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct-side", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", choices=["tiny", "gpt2-small"], default="tiny",
                    help="tiny: make_tiny_model (--d-model, --n-layers); gpt2-small: random weights at "
                         "the published GPT-2 small config (make_config_model)")
    ap.add_argument("--model-cache", type=Path, default=None,
                    help="build the model here once and reuse it on later runs")
    ap.add_argument("--n-tokens", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=128, help="tiny config only")
    ap.add_argument("--n-layers", type=int, default=4, help="tiny config only")
    ap.add_argument("--width", type=int, default=512, help="latents per transcoder")
    ap.add_argument("--l0", type=float, default=None,
                    help="sparse_transcoders with about this many active latents per token and layer "
                         "(ReLU, calibrated biases) instead of random_transcoders with --bias")
    ap.add_argument("--bias", type=float, default=-1.5, help="encoder bias (sparsity; without --l0)")
    ap.add_argument("--activation", choices=["relu", "jumprelu"], default="relu",
                    help="transcoder activation (jumprelu: f = pre * (pre > --threshold); without --l0)")
    ap.add_argument("--threshold", type=float, default=0.3, help="JumpReLU threshold")
    ap.add_argument("--convention", choices=["circuit-tracer", "ours"], default="circuit-tracer",
                    help="our graph's convention (circuit-tracer: identical graphs expected)")
    ap.add_argument("--max-feature-nodes", type=int, default=None,
                    help="feature budget on both sides (default: every active feature)")
    ap.add_argument("--update-targets", type=int, default=1024,
                    help="with a budget: targets between influence re-rankings on both sides; "
                         "update_interval = this / batch size (ours: --batch-size, ct: --ct-batch-size)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--edges-per-target", type=int, default=None,
                    help="ours keeps the top-k edges per target (GraphConfig.large_model: 1024); the "
                         "comparison then covers our kept edges only; default: full rows")
    ap.add_argument("--ct-batch-size", type=int, default=None, help="circuit-tracer's (default --batch-size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ct-python", type=Path, default=CT_PYTHON)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the exchange files here")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON line here too")
    args = ap.parse_args(argv)
    if args.ct_side is not None:
        ct_side(args.ct_side)
        return 0
    ct_bs = args.batch_size if args.ct_batch_size is None else args.ct_batch_size
    budget = args.max_feature_nodes
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.l0 is not None and args.activation != "relu":
        ap.error("--l0 builds ReLU transcoders; drop --activation jumprelu")
    if budget is not None:
        for name, b in (("--batch-size", args.batch_size), ("--ct-batch-size", ct_bs)):
            if args.update_targets % b:
                ap.error(f"--update-targets {args.update_targets} must be a multiple of {name} {b}")
    ours_ui = max(1, args.update_targets // args.batch_size)
    ct_ui = max(1, args.update_targets // ct_bs)
    # The extra circuit-tracer run with W_E + W_pos token vectors checks the token-node
    # convention; under a budget it would also change the selection, so it runs only where
    # it is meaningful (our convention, or the tiny unbudgeted comparison as before).
    pos_check = args.convention == "ours" or (args.config == "tiny" and budget is None)

    import attribution  # noqa: I001,F401  (BLAS preload: before mlx)
    import mlx.core as mx
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from attribution import GraphConfig, build_graph, load_model
    from attribution.perf import environment_record
    from attribution.replacement.model import ReplacementModel
    from attribution.testing_dicts import random_transcoders

    if not args.ct_python.exists():
        print(json.dumps({"benchmark": "circuit_tracer_compare", "skipped":
                          f"{args.ct_python} missing; run benchmarks/setup_circuit_tracer.sh"}))
        return 0
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(tmp.name) if tmp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    env = environment_record()

    mdir, model_desc, model_spec = _model_dir(args, work)
    model = load_model(mdir)
    mx.clear_cache()
    V = int(model.vocab_size)
    thr = args.threshold if args.activation == "jumprelu" else 0.0
    if args.l0 is not None:
        from attribution.attribute.synthetic import random_prompt, sparse_transcoders

        dicts = sparse_transcoders(model, args.width, args.l0, random_prompt(V, 64, seed=99))
        dict_desc = (f"sparse random relu per-layer transcoders mlp_in->mlp_out width={args.width} "
                     f"l0={args.l0:g} (sparse_transcoders seed 0, biases calibrated on "
                     f"random_prompt(V, 64, seed=99))")
    else:
        # JumpReLU needs pre-activations around the threshold: lift the bias by it.
        dicts = random_transcoders(model, args.width, seed=0, bias=args.bias + thr, threshold=thr)
        dict_desc = (f"random {args.activation} per-layer transcoders mlp_in->mlp_out width={args.width} "
                     f"bias={args.bias + thr} threshold={thr}")
    if args.config == "gpt2-small":
        from attribution.attribute.synthetic import random_prompt

        ids = random_prompt(V, args.n_tokens, seed=args.n_tokens)
    else:
        ids = _prompt(model, args.n_tokens, seed=args.n_tokens)
    # Every edge is compared, so full rows and no cap on kept edges (a 64-token graph keeps ~14M);
    # with --edges-per-target our rows are sparsified as GraphConfig.large_model() does and the
    # kept edges are compared (full rows at 128 tokens would hold ~300M edges).
    cfg = GraphConfig(batch_size=args.batch_size, convention=args.convention, max_edges=None,
                      edges_per_target=args.edges_per_target, max_feature_nodes=budget,
                      update_interval=ours_ui)
    # Warm-up (also fixes the targets): the full build without a budget (as before); with a
    # budget one re-ranking chunk of features on each side (the same code paths and batch
    # shapes, at a fraction of the cost).
    warm_n = None if budget is None else min(budget, args.update_targets)
    warm_cfg = cfg if warm_n is None else GraphConfig(**{**cfg.to_dict(), "max_feature_nodes": warm_n})

    g = build_graph(model, dicts, ids, config=warm_cfg)
    from attribution.graph.keys import LogitNode
    targets = [k.token_id for k in g.keys if isinstance(k, LogitNode)]
    del g
    state = ReplacementModel(model, dicts).clean(ids)
    logits = np.asarray(state.logits.astype(mx.float32)).reshape(len(ids), -1)
    del state
    arrays = {"tokens": np.asarray(ids, np.int64), "targets": np.asarray(targets, np.int64),
              "logits": logits}
    for i, dct in enumerate(dicts):
        for name, v in (("W_enc", dct.W_enc), ("W_dec", dct.W_dec), ("b_enc", dct.b_enc),
                        ("b_dec", dct.b_dec)):
            arrays[f"tc{i}.{name}"] = np.asarray(v, np.float32)
    save_file(arrays, str(work / "ours.safetensors"))
    del arrays
    (work / "spec.json").write_text(json.dumps({
        "model_dir": str(mdir), "model_name": f"{args.config}-random-mlx", "batch_size": args.batch_size,
        "ct_batch_size": ct_bs, "max_feature_nodes": budget, "ct_update_interval": ct_ui,
        "warmup_feature_nodes": warm_n, "pos_check": pos_check,
        "repeats": args.repeats, "activation": args.activation, "threshold": thr}))
    gc.collect()
    mx.clear_cache()
    rss_before = _rss_gb()
    _reset_peak_rss()

    def time_ours(n, gg=None):
        out = []
        for _ in range(n):
            gg = None  # the previous graph is not held during the next build
            gc.collect()
            t0 = time.perf_counter()
            gg = build_graph(model, dicts, ids, targets=targets, config=cfg)
            out.append(time.perf_counter() - t0)
        return out, gg

    ours_t, g = time_ours((args.repeats + 1) // 2)
    load_before_ct = os.getloadavg()[0]
    proc = subprocess.run([str(args.ct_python), os.path.abspath(__file__), "--ct-side", str(work)],
                          capture_output=True, text=True, cwd=str(ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"circuit-tracer side failed:\n{proc.stderr[-4000:]}")
    load_after_ct = os.getloadavg()[0]
    more, g = time_ours(args.repeats // 2, g)
    ours_t += more
    ours_rss = {"start_of_timing": rss_before, "attribution_peak": _peak_rss_gb(),
                "process_peak": _maxrss_gb()}

    ctj = json.loads((work / "ct.json").read_text())
    ct = {**load_file(str(work / "ct.safetensors")), "logit_targets": ctj["logit_targets"]}
    n_pos = len(ids)
    if ct["input_tokens"].tolist() != ids:
        raise RuntimeError(f"token mismatch: ours {ids}, circuit-tracer {ct['input_tokens'].tolist()}")
    keys = list(g.keys)
    io, ic, info = _ct_index(ct, model.n_layers, n_pos, keys)
    A_o = g.adjacency[io][:, io].toarray().astype(np.float64)
    sparse = args.edges_per_target is not None
    res = _compare(A_o, ct["adjacency"][np.ix_(ic, ic)].astype(np.float64), info["types"], sparse)
    res_pos = (_compare(A_o, ct["adjacency_pos"][np.ix_(ic, ic)].astype(np.float64), info["types"])
               if "adjacency_pos" in ct else None)
    del A_o
    prune_cmp = (_compare_pruning(g, ct, io, ic) if not sparse else
                 {"skipped": "ours keeps the top-k edges per target, circuit-tracer every edge: "
                             "pruning masks and scores are compared with full rows only",
                  "replacement": None, "completeness": None})
    scale = res["max_abs_weight"]
    tol = 1e-4 * scale
    # activations of the common features
    act_o = g.nodes["activation"].to_numpy()[io]
    t = np.asarray(info["types"])
    act_c = ct["activation_values"][ct["selected_features"]][np.asarray(ic)[t == "feature"]]
    n_feat_o = int(g.type_mask("feature").sum())
    ours_only = info["ours_only"]["feature_pos0"] + info["ours_only"]["feature_other"]
    check = res if args.convention == "circuit-tracer" else res_pos
    n_active_o = int(g.metadata["n_active_features"])
    t_o, t_c = statistics.median(ours_t), statistics.median(ctj["times_s"])
    warm = "full" if warm_n is None else f"max_feature_nodes={warm_n}"
    timing_note = (f"each side: one warm-up build ({warm}), then {args.repeats} timed build(s); "
                   f"ours {len(ours_t) - len(more)} before and {len(more)} after the circuit-tracer process")

    rec = {
        "benchmark": "circuit_tracer_compare",
        "config": args.config,
        "model": model_desc.replace("{V}", str(V)), "model_build": model_spec,
        "dictionaries": dict_desc,
        "settings": {"config": args.config, "l0": args.l0, "width": args.width,
                     "bias": None if args.l0 is not None else args.bias + thr,
                     "max_feature_nodes": budget, "batch_size": {"ours": args.batch_size, "ct": ct_bs},
                     "update_interval": ({"ours": ours_ui, "ct": ct_ui} if budget is not None else None),
                     "targets_per_reranking": ({"ours": ours_ui * args.batch_size, "ct": ct_ui * ct_bs}
                                               if budget is not None else None),
                     "edges_per_target": args.edges_per_target, "max_edges": None,
                     "warmup_feature_nodes": warm_n},
        "convention": args.convention,
        "n_tokens": n_pos, "batch_size": args.batch_size, "ct_batch_size": ct_bs,
        "max_feature_nodes": budget, "repeats": args.repeats, "timing": timing_note,
        "targets": targets,
        "logit_max_abs_diff": ctj["logit_max_abs_diff"],
        "n_nodes": {"ours": g.n_nodes, "ct": int(ct["adjacency"].shape[0]), "common": len(io)},
        "n_active_features": {"ours": n_active_o, "ct": ctj["n_active_features"],
                              "per_token_layer_ours": n_active_o / max(1, n_pos - 1) / model.n_layers},
        "n_features": {"ours": n_feat_o,
                       "ct": len(ct["selected_features"]), **info["ours_only"],
                       "ct_only": info["ct_only_features"]},
        "feature_set_difference": _feature_set_diff(info, ct, model.n_layers, n_pos, budget),
        "feature_sets_identical": ours_only == 0 and info["ct_only_features"] == 0
                                  and n_feat_o == len(ct["selected_features"]),
        "feature_activation_max_abs_diff": float(np.abs(act_o[t == "feature"] - act_c).max()),
        "adjacency": res,
        "adjacency_ct_tokens_with_pos_embed": (res_pos if res_pos is not None else
                                               "not run (budget or gpt2-small config: see docstring)"),
        "wall_s": {"ours_median": t_o, "ct_median": t_c, "ours": ours_t, "ct": ctj["times_s"]},
        "speedup_ct_over_ours": t_c / t_o,
        "equal_graphs_1e-4": check["max_abs_diff"] <= 1e-4,
        "tolerance_1e-4_max_abs_A": tol,
        "adjacency_within_1e-4_max_abs_A": check["max_abs_diff"] <= tol,
        "pruning_0.8_0.98": prune_cmp,
        "scores": {"ours": {"replacement": prune_cmp.pop("replacement"),
                            "completeness": prune_cmp.pop("completeness")},
                   "ct": {"replacement": ctj["replacement"], "completeness": ctj["completeness"]}},
        "peak_rss_gb": {"ours": ours_rss["process_peak"], "ct": ctj["rss_gb"]["process_peak"]},
        "rss_gb": {"ours": ours_rss, "ct": ctj["rss_gb"],
                   "note": "process_peak: ru_maxrss of the whole process (ours: before the comparison; "
                           "includes building the model unless cached); attribution_peak: VmHWM reset "
                           "after the warm-up, over the timed builds"},
        "conventions": {
            "orientation": "both A[target, source]",
            "bos": ("both zero features and errors at pos 0 (convention circuit-tracer)"
                    if args.convention == "circuit-tracer" else
                    "circuit-tracer zeroes features and errors at pos 0; compared on pos >= 1"),
            "token_nodes": ("both W_E[tok]" if args.convention == "circuit-tracer" else
                            "circuit-tracer W_E[tok]; ours W_E[tok] + W_pos[pos] (gpt2 resid_pre[0])"),
            "logits": "both demeaned W_U[:, t] - mean_t W_U; targets passed as the same token ids",
            "budget": ("none: every active feature" if budget is None else
                       f"logit rows, then features by partial influence re-ranked every "
                       f"{args.update_targets} targets (ours float64, ties by index; circuit-tracer "
                       f"float32 torch.argsort); ours keeps full rows")},
        "ct_torch_threads": ctj["torch_threads"], "peer_versions": ctj["versions"],
        "load_average_1m": os.getloadavg()[0],
        "load_average_1m_at": {"start": load_start, "before_ct": load_before_ct, "after_ct": load_after_ct},
        "environment": env,
    }
    line = json.dumps(rec, sort_keys=True)
    print(line, flush=True)
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
