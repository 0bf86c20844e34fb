"""Component-level validation: ``faithfulness`` on component names (with the embedding's
treatment explicit) and ``circuits validate``'s new flags, records and circuit files.

The independent computation is brute-force patching with the public intervention API
(``attribution.run`` + ``Patch``): every head (``attn_z``), MLP (``mlp_out``) and, when
it is left out, the token embedding (``resid_pre`` of layer 0) outside the circuit
takes its value from the corrupted prompt's run.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import attribution  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
from attribution import Patch, Site, load_model, run
from circuits import organisms, tasks
from circuits.cli import main
from circuits.discover import MaskedModel
from circuits.errors import CircuitsError
from circuits.validate import faithfulness
from circuits_helpers import small_induction, tiny_llama

EMBED_SITE = Site(0, "resid_pre")


def brute_metric(model, data, keep: set[str]) -> float:
    """Mean logit difference with every node outside ``keep`` (names ``L0H1``, ``L0.mlp``,
    ``embed``) patched from the corrupted run, one example at a time."""
    sites = [EMBED_SITE] + [Site(l, k) for l in range(model.n_layers) for k in ("attn_z", "mlp_out")]
    total = 0.0
    for i in range(len(data)):
        clean = mx.array(data.clean[i][None])
        corr = run(model, mx.array(data.corrupted[i][None]), capture=sites).cache
        ivs = [] if "embed" in keep else [Patch(EMBED_SITE, source=corr)]
        for layer in range(model.n_layers):
            ivs += [Patch(Site(layer, "attn_z"), source=corr, head=h)
                    for h in range(model.n_heads) if f"L{layer}H{h}" not in keep]
            if f"L{layer}.mlp" not in keep:
                ivs.append(Patch(Site(layer, "mlp_out"), source=corr))
        last = run(model, clean, interventions=ivs).logits[0, -1]
        total += float(last[int(data.answer[i])] - last[int(data.wrong[i])])
    return total / len(data)


def all_nodes(model) -> set[str]:
    return {"embed"} | {f"L{l}H{h}" for l in range(model.n_layers) for h in range(model.n_heads)} | {
        f"L{l}.mlp" for l in range(model.n_layers)}


def brute_faith(model, data, keep: set[str]) -> float:
    full, empty = brute_metric(model, data, all_nodes(model)), brute_metric(model, data, set())
    return (brute_metric(model, data, keep) - empty) / (full - empty)


# ------------------------------------------------------------ Python faithfulness
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama(tmp_path_factory, seed=7)
    data = small_induction(model, 4)
    return model, data, MaskedModel(model, data, "counterfactual")


def test_component_names_match_brute_force_patching(tiny):
    model, data, mm = tiny
    f = faithfulness(mm, ["L0.H2", "L1.MLP", "l1h0"])
    assert f.level == "node" and f.include_embedding is True
    want = brute_faith(model, data, {"L0H2", "L1.mlp", "L1H0", "embed"})
    assert f.faithfulness == pytest.approx(want, abs=1e-4)
    # the complement keeps every other head/MLP clean and ablates the embedding
    comp = (all_nodes(model) - {"L0H2", "L1.mlp", "L1H0", "embed"})
    assert f.completeness == pytest.approx(brute_faith(model, data, comp), abs=1e-4)


def test_embedding_treatment_is_explicit(tiny):
    model, data, mm = tiny
    names = ["L0.H2", "L1.MLP"]
    without = faithfulness(mm, names, include_embedding=False)
    assert without.include_embedding is False
    assert without.faithfulness == pytest.approx(brute_faith(model, data, {"L0H2", "L1.mlp"}), abs=1e-4)
    named = faithfulness(mm, [*names, "EMB"], include_embedding=False)  # naming it keeps it
    assert named.include_embedding is True
    assert named.faithfulness == pytest.approx(faithfulness(mm, names).faithfulness)
    every = faithfulness(mm, [n for n in all_nodes(model) if n != "embed"])
    assert every.faithfulness == pytest.approx(1.0, abs=1e-5)  # default keeps embed: the full model
    edge = faithfulness(mm, ["L1H0->logits"])
    assert edge.level == "edge" and edge.include_embedding is None


def test_unknown_and_mixed_names_are_one_line_errors(tiny):
    _, _, mm = tiny
    with pytest.raises(CircuitsError) as e:
        faithfulness(mm, ["L0.H2", "L5.H0"])
    msg = str(e.value)
    assert "\n" not in msg and "'L5.H0'" in msg and "valid names: embed, L0.H0" in msg and "L1.MLP" in msg
    with pytest.raises(CircuitsError, match="not a mix"):
        faithfulness(mm, ["L0.H2", "L0H1->L1H0"])
    with pytest.raises(CircuitsError, match="valid names"):
        faithfulness(mm, ["head two"])


# --------------------------------------------------------------------- the CLI
IND = organisms.path("induction")
N = 6


@pytest.fixture(scope="module")
def ind():
    return load_model(IND)


def _validate(tmp_path, capsys, *flags) -> tuple[dict, dict, pd.DataFrame]:
    out = tmp_path / "val"
    code = main(["--quiet", "validate", "--model", str(IND), "--task", "induction", "--out", str(out),
                 *map(str, flags)])
    assert code == 0, capsys.readouterr().err
    rec = json.loads((out / "validation.json").read_text())
    circ = json.loads((out / "component_circuit.json").read_text())
    assert (out / "component_circuit.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    dot = (out / "component_circuit.dot").read_text()
    for n in circ["nodes"]:
        assert f'"{n["name"]}"' in dot
    return rec, circ, pd.read_csv(out / "component_scores.csv")


def test_node_level_top_n_against_brute_force(ind, tmp_path, capsys):
    rec, circ, scores = _validate(tmp_path, capsys, "--method", "exact", "--level", "node", "--top-n", 3,
                                  "--n", N, "--seed", 2)
    assert rec["n_examples"] == N and rec["settings"] == {
        "task": "induction", "method": "exact", "ablation": "counterfactual", "level": "node",
        "qkv": "joint", "n": N, "top_n": 3, "threshold": None, "acdc_threshold": None,
        "ig_steps": None, "seed": 2}
    data = tasks.get("induction").generate(N, 2, ind.tokenizer)
    nodes = sorted(all_nodes(ind))
    full = brute_metric(ind, data, set(nodes))
    effect = {n: abs(full - brute_metric(ind, data, set(nodes) - {n})) for n in nodes}
    top3 = sorted(effect, key=effect.get, reverse=True)[:3]
    figure = {"embed": "embed", **{n: n.replace("H", ".H").replace(".mlp", ".MLP") for n in nodes if n != "embed"}}
    kept = [n["name"] for n in circ["nodes"] if n["name"] != "logits"]
    assert sorted(kept) == sorted(figure[n] for n in top3)
    assert circ["level"] == "node" and circ["task"] == "induction" and circ["metric"] == "logit_diff"
    assert circ["method"] == "exact" and circ["model"] == str(IND) and circ["n_examples"] == N
    assert rec["faithfulness"] == pytest.approx(brute_faith(ind, data, set(top3)), abs=1e-4)
    assert rec["include_embedding"] == ("embed" in top3)
    for n in circ["nodes"]:
        if n["name"] != "logits":
            key = next(k for k, v in figure.items() if v == n["name"])
            assert abs(n["score"]) == pytest.approx(effect[key], rel=1e-4, abs=1e-5)


def test_eap_ig_separate_threshold_records_and_selects(tmp_path, capsys):
    rec, circ, scores = _validate(tmp_path, capsys, "--method", "eap-ig", "--ig-steps", 2, "--qkv", "separate",
                                  "--threshold", 0.05, "--n", 4)
    s = rec["settings"]
    assert (s["ig_steps"], s["qkv"], s["threshold"], s["top_n"], s["n"]) == (2, "separate", 0.05, None, 4)
    assert rec["n_examples"] == 4 and rec["selection"] == "|score| >= 0.05"
    assert (scores.in_circuit == (scores.abs_score >= 0.05)).all()
    chosen = scores[scores.in_circuit]
    assert len(circ["edges"]) == len(chosen) == rec["n_selected"]
    assert {e["port"] for e in circ["edges"]} <= {"q", "k", "v", None}
    assert sorted(e["score"] for e in circ["edges"]) == pytest.approx(sorted(chosen.score))


def test_acdc_threshold_and_user_task_file(tmp_path, capsys, ind):
    data = tasks.get("induction").generate(5, 0, ind.tokenizer)
    dec = ind.tokenizer.decode
    rows = [{"prompt": dec(data.clean[i][1:].tolist()), "corrupted_prompt": dec(data.corrupted[i][1:].tolist()),
             "answer": dec([int(data.answer[i])]), "wrong_answer": dec([int(data.wrong[i])])} for i in range(5)]
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "acdc"
    code = main(["--quiet", "validate", "--model", str(IND), "--task", str(f), "--method", "acdc",
                 "--acdc-threshold", "0.5", "--n", "100", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rec = json.loads((out / "validation.json").read_text())
    assert rec["n_examples"] == 5 and rec["settings"]["n"] == 100  # a task file keeps its rows
    assert rec["settings"]["acdc_threshold"] == 0.5 and rec["settings"]["ig_steps"] is None
    assert rec["selection"].startswith("ACDC") and "0.5" in rec["selection"]
    circ = json.loads((out / "component_circuit.json").read_text())
    assert circ["task"] == str(f) and circ["method"] == "acdc"
