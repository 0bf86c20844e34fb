"""Benchmark: our exact attribution graph against circuit-tracer's, same weights, same prompt.

Two processes, because circuit-tracer 0.5 pins transformers<=4.57.3 and we need >=5:
our side runs in ``.venv`` (orchestrator), circuit-tracer's in ``.venv-ct``
(``benchmarks/setup_circuit_tracer.sh``), exchanging safetensors + JSON in a work folder.
Each side times itself inside its own process.

Algorithm:
  1. Ours (.venv): a tiny random mlx-lm GPT-2 (``make_tiny_model("gpt2")``, d_model 128,
     4 layers, 4 heads, our word tokenizer) and random ReLU per-layer transcoders
     ``mlp_in -> mlp_out`` (``random_transcoders``). Prompt: BOS + seeded random words.
     Logit targets: our top logits (95%, at most 10), passed as explicit token ids to both.
     Write the transcoder weights, tokens, targets and our logits to ``ours.safetensors``.
  2. circuit-tracer (.venv-ct, ``--ct-side DIR``): a TransformerLens ``HookedTransformerConfig``
     built by hand (GPT-2: act_fn gelu_new = mlx-lm's ``nn.gelu_approx``, LN with weights,
     standard learned positions, no LN folding / centering, as circuit-tracer's own loader
     uses), wrapped by ``TransformerLensReplacementModel.from_config`` with a ``TranscoderSet``
     (hooks ``mlp.hook_in`` -> ``mlp.hook_out``, ReLU); the mlx safetensors are mapped onto
     the state dict. Check logits against ours; then ``attribute(tokens, model,
     attribution_targets=ids, batch_size=B)``: one warm-up, ``--repeats`` timed runs.
     One extra untimed run adds W_pos to circuit-tracer's token vectors (see conventions).
  3. Ours: ``build_graph(method="exact")`` with the same batch size: one warm-up, repeats
     timed (half before, half after the circuit-tracer process; the CPU is shared).
  4. Map nodes (features by (layer, pos, feature), errors by (layer, pos), tokens by pos,
     logits by token id), compare the adjacency A[target, source] on the common nodes, print
     ONE JSON line with the max |dA| (overall and per target/source type), timings (median
     of the repeats) and ``attribution.perf.environment_record()``.

Conventions that differ (handled explicitly):
  - Position 0 (BOS): circuit-tracer zeroes every transcoder activation and error vector at
    position 0 (``zero_positions``), so it has no features there and zero error columns;
    we keep them. Compared on positions >= 1 for features/errors; pos-0 nodes are counted.
  - Token nodes: circuit-tracer's token vector is W_E[token] only (``hook_embed``); ours is
    resid_pre[0] = W_E[token] + W_pos[pos] for GPT-2. Token columns therefore differ by the
    position-embedding contribution; the extra run with W_E + W_pos checks that this
    explains the whole difference.
  - Both: A[target, source]; logit directions W_U[:, t] - mean_t W_U (demeaned); LN scales
    and attention patterns frozen; feature targets at their pre-activation.

Usage: .venv/bin/python benchmarks/circuit_tracer_compare.py [--n-tokens 16] [--repeats 3]
       [--width 512] [--bias -1.5] [--batch-size 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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
    tset = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")

    cfg = HookedTransformerConfig(
        n_layers=L, d_model=d, n_ctx=mcfg["n_positions"], d_head=d // H, n_heads=H, d_mlp=4 * d,
        d_vocab=V, act_fn="gelu_new", normalization_type="LN", eps=mcfg["layer_norm_epsilon"],
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        model_name="tiny-gpt2-mlx", default_prepend_bos=False, device="cpu", dtype=torch.float32,
        seed=0)
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
    model.eval()

    tokens = torch.from_numpy(ours["tokens"].astype(np.int64))
    targets = torch.from_numpy(ours["targets"].astype(np.int64))
    with torch.no_grad():
        logits = model(tokens[None]).float()[0].numpy()
    logit_diff = float(np.abs(logits - ours["logits"]).max())

    bs = spec["batch_size"]

    def run():
        return attribute(tokens, model, attribution_targets=targets, batch_size=bs, verbose=False)

    g = run()  # warm-up
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        g = run()
        times.append(time.perf_counter() - t0)

    # Untimed: token vectors W_E[tok] + W_pos[pos] (our token-node convention).
    orig = model.setup_attribution

    def setup_with_pos(inputs):
        ctx = orig(inputs)
        n = ctx.token_vectors.shape[0]
        ctx.token_vectors = ctx.token_vectors + model.W_pos[:n].detach()
        return ctx

    model.setup_attribution = setup_with_pos
    g_pos = run()
    model.setup_attribution = orig

    pr = prune_graph(g, node_threshold=0.8, edge_threshold=0.98)
    replacement, completeness = compute_graph_scores(g)
    out = {"adjacency": g.adjacency_matrix.float(), "adjacency_pos": g_pos.adjacency_matrix.float(),
           "node_mask": pr.node_mask.to(torch.uint8), "edge_mask": pr.edge_mask.to(torch.uint8),
           "logit_probabilities": g.logit_probabilities.float(),
           "active_features": g.active_features.long(), "selected_features": g.selected_features.long(),
           "activation_values": g.activation_values.float(), "input_tokens": g.input_tokens.long()}
    # C order: safetensors writes a transposed view's raw buffer (active_features is indices().T)
    out = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in out.items()}
    save_file({**out, "logits": np.ascontiguousarray(logits)}, str(work / "ct.safetensors"))
    (work / "ct.json").write_text(json.dumps({
        "times_s": times, "logit_max_abs_diff": logit_diff,
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
    for i, k in enumerate(keys):
        j = None
        if isinstance(k, FeatureNode):
            j = ct_feat.pop((k.layer, k.pos, k.feature), None)
            if j is None:
                ours_only["feature_pos0" if k.pos == 0 else "feature_other"] += 1
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
    return io, ic, {"ours_only": ours_only, "ct_only_features": len(ct_feat), "types": types}


def _compare(A_o, A_c, types) -> dict:
    import numpy as np

    D = np.abs(A_o - A_c)
    t = np.asarray(types)
    by = {}
    for tt in ("feature", "logit"):
        for st in ("feature", "error", "token"):
            m = D[np.ix_(t == tt, t == st)]
            if m.size:
                by[f"{st}->{tt}"] = float(m.max())
    return {"max_abs_diff": float(D.max()), "max_abs_diff_by_edge_type": by,
            "max_abs_weight": float(np.abs(A_o).max())}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct-side", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-tokens", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=512, help="latents per transcoder")
    ap.add_argument("--bias", type=float, default=-1.5, help="encoder bias (sparsity)")
    ap.add_argument("--activation", choices=["relu", "jumprelu"], default="relu",
                    help="transcoder activation (jumprelu: f = pre * (pre > --threshold))")
    ap.add_argument("--threshold", type=float, default=0.3, help="JumpReLU threshold")
    ap.add_argument("--convention", choices=["circuit-tracer", "ours"], default="circuit-tracer",
                    help="our graph's convention (circuit-tracer: identical graphs expected)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ct-python", type=Path, default=CT_PYTHON)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the exchange files here")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON line here too")
    args = ap.parse_args(argv)
    if args.ct_side is not None:
        ct_side(args.ct_side)
        return 0

    import attribution  # noqa: I001,F401  (BLAS preload: before mlx)
    import mlx.core as mx
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from attribution import GraphConfig, build_graph, load_model
    from attribution.perf import environment_record
    from attribution.replacement.model import ReplacementModel
    from attribution.testing_dicts import random_transcoders
    from attribution.tiny import make_tiny_model

    if not args.ct_python.exists():
        print(json.dumps({"benchmark": "circuit_tracer_compare", "skipped":
                          f"{args.ct_python} missing; run benchmarks/setup_circuit_tracer.sh"}))
        return 0
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(tmp.name) if tmp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    env = environment_record()

    mdir = make_tiny_model("gpt2", work / "gpt2", seed=0, n_embd=args.d_model, n_layer=args.n_layers,
                           n_head=4, n_ctx=max(64, args.n_tokens), n_positions=max(64, args.n_tokens))
    model = load_model(mdir)
    thr = args.threshold if args.activation == "jumprelu" else 0.0
    # JumpReLU needs pre-activations around the threshold: lift the bias by it.
    dicts = random_transcoders(model, args.width, seed=0, bias=args.bias + thr, threshold=thr)
    ids = _prompt(model, args.n_tokens, seed=args.n_tokens)
    # Every edge is compared, so no cap on kept edges (a 64-token graph keeps ~14M).
    cfg = GraphConfig(batch_size=args.batch_size, convention=args.convention, max_edges=None)

    g = build_graph(model, dicts, ids, config=cfg)  # warm-up; fixes the targets
    from attribution.graph.keys import LogitNode
    targets = [k.token_id for k in g.keys if isinstance(k, LogitNode)]
    state = ReplacementModel(model, dicts).clean(ids)
    logits = np.asarray(state.logits.astype(mx.float32)).reshape(len(ids), -1)
    arrays = {"tokens": np.asarray(ids, np.int64), "targets": np.asarray(targets, np.int64),
              "logits": logits}
    for i, dct in enumerate(dicts):
        for name, v in (("W_enc", dct.W_enc), ("W_dec", dct.W_dec), ("b_enc", dct.b_enc),
                        ("b_dec", dct.b_dec)):
            arrays[f"tc{i}.{name}"] = np.asarray(v, np.float32)
    save_file(arrays, str(work / "ours.safetensors"))
    (work / "spec.json").write_text(json.dumps({"model_dir": str(mdir), "batch_size": args.batch_size,
                                                "repeats": args.repeats, "activation": args.activation,
                                                "threshold": thr}))

    def time_ours(n, gg=None):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            gg = build_graph(model, dicts, ids, targets=targets, config=cfg)
            out.append(time.perf_counter() - t0)
        return out, gg

    ours_t, g = time_ours((args.repeats + 1) // 2)
    proc = subprocess.run([str(args.ct_python), os.path.abspath(__file__), "--ct-side", str(work)],
                          capture_output=True, text=True, cwd=str(ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"circuit-tracer side failed:\n{proc.stderr[-4000:]}")
    more, g = time_ours(args.repeats // 2, g)
    ours_t += more

    ctj = json.loads((work / "ct.json").read_text())
    ct = {**load_file(str(work / "ct.safetensors")), "logit_targets": ctj["logit_targets"]}
    n_pos = len(ids)
    if ct["input_tokens"].tolist() != ids:
        raise RuntimeError(f"token mismatch: ours {ids}, circuit-tracer {ct['input_tokens'].tolist()}")
    keys = list(g.keys)
    io, ic, info = _ct_index(ct, model.n_layers, n_pos, keys)
    A_o = g.adjacency[io][:, io].toarray().astype(np.float64)
    res = _compare(A_o, ct["adjacency"][np.ix_(ic, ic)].astype(np.float64), info["types"])
    res_pos = _compare(A_o, ct["adjacency_pos"][np.ix_(ic, ic)].astype(np.float64), info["types"])
    prune_cmp = _compare_pruning(g, ct, io, ic)
    scale = float(np.abs(A_o).max())
    tol = 1e-4 * scale
    # activations of the common features
    act_o = g.nodes["activation"].to_numpy()[io]
    t = np.asarray(info["types"])
    act_c = ct["activation_values"][ct["selected_features"]][np.asarray(ic)[t == "feature"]]

    rec = {
        "benchmark": "circuit_tracer_compare",
        "model": f"tiny-random-gpt2(d={args.d_model},L={args.n_layers},H=4,V={model.vocab_size})",
        "dictionaries": f"random {args.activation} per-layer transcoders mlp_in->mlp_out width={args.width} "
                        f"bias={args.bias + thr} threshold={thr}",
        "convention": args.convention,
        "n_tokens": n_pos, "batch_size": args.batch_size, "repeats": args.repeats,
        "targets": targets,
        "logit_max_abs_diff": ctj["logit_max_abs_diff"],
        "n_nodes": {"ours": g.n_nodes, "ct": int(ct["adjacency"].shape[0]), "common": len(io)},
        "n_features": {"ours": int(g.type_mask("feature").sum()),
                       "ct": len(ct["selected_features"]), **info["ours_only"],
                       "ct_only": info["ct_only_features"]},
        "feature_activation_max_abs_diff": float(np.abs(act_o[t == "feature"] - act_c).max()),
        "adjacency": res,
        "adjacency_ct_tokens_with_pos_embed": res_pos,
        "wall_s": {"ours_median": statistics.median(ours_t), "ct_median": statistics.median(ctj["times_s"]),
                   "ours": ours_t, "ct": ctj["times_s"]},
        "speedup_ct_over_ours": statistics.median(ctj["times_s"]) / statistics.median(ours_t),
        "equal_graphs_1e-4": (res if args.convention == "circuit-tracer" else res_pos)["max_abs_diff"] <= 1e-4,
        "tolerance_1e-4_max_abs_A": tol,
        "adjacency_within_1e-4_max_abs_A": (res if args.convention == "circuit-tracer"
                                            else res_pos)["max_abs_diff"] <= tol,
        "pruning_0.8_0.98": prune_cmp,
        "scores": {"ours": {"replacement": prune_cmp.pop("replacement"),
                            "completeness": prune_cmp.pop("completeness")},
                   "ct": {"replacement": ctj["replacement"], "completeness": ctj["completeness"]}},
        "conventions": {
            "orientation": "both A[target, source]",
            "bos": ("both zero features and errors at pos 0 (convention circuit-tracer)"
                    if args.convention == "circuit-tracer" else
                    "circuit-tracer zeroes features and errors at pos 0; compared on pos >= 1"),
            "token_nodes": ("both W_E[tok]" if args.convention == "circuit-tracer" else
                            "circuit-tracer W_E[tok]; ours W_E[tok] + W_pos[pos] (gpt2 resid_pre[0])"),
            "logits": "both demeaned W_U[:, t] - mean_t W_U; targets passed as the same token ids"},
        "ct_torch_threads": ctj["torch_threads"], "peer_versions": ctj["versions"],
        "load_average_1m": os.getloadavg()[0], "environment": env,
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
