"""Integrated gradients against exact patching on the shipped organisms (issue: IG r >= 0.95).

Transcoders (ReLU + L1, continuous activations) are trained on each organism; node
scores of every feature and error node under the task's counterfactual ablation are
computed by IG and by attribution patching, and compared with one-node-at-a-time
exact patching. Attribution patching's agreement is asserted to be computed and
reported (it is lower: a single gradient at the clean point)."""

from __future__ import annotations

import numpy as np
import pytest

from attribution import load_model
from circuits import tasks
from circuits.organisms import SHIPPED
from circuits.pipeline.dictionaries import DictionarySpec, train_dictionaries
from circuits.validate.node_scores import node_score_agreement

@pytest.mark.slow
@pytest.mark.parametrize("organism", ["ioi", "induction"])
def test_ig_agrees_with_patching_on_organism(organism):
    model = load_model(SHIPPED / organism)
    spec = DictionarySpec(kind="transcoder", arch="relu", width=512, tokens=2 ** 17,
                          batch_tokens=1024, seed=0)
    dicts = train_dictionaries(model, spec).dictionaries
    data = tasks.get(organism).generate(4, 11, model.tokenizer)
    res = node_score_agreement(model, dicts, data, n_prompts=4, ig_steps=16)
    assert res.ablation == "counterfactual"
    t = res.table
    assert set(t["kind"]) == {"feature", "error"} and t["prompt"].nunique() == 4
    assert (t["patching"].abs() > 1e-3).sum() >= 20  # enough nodes with a measurable effect
    assert res.pearson["ig"] >= 0.95, res.by_kind
    assert np.isfinite(res.pearson["atp"]) and -1 <= res.pearson["atp"] <= 1
    by = res.by_kind.set_index(["method", "kind"])
    assert by.loc[("ig", "all"), "n"] == len(t)
    # IG integrates the path; it must beat a single gradient at the clean point.
    assert res.pearson["ig"] > res.pearson["atp"]


def test_bad_arguments_are_named():
    from circuits.errors import ValidationError

    model = load_model(SHIPPED / "induction")
    data = tasks.get("induction").generate(2, 0, model.tokenizer)
    with pytest.raises(ValidationError, match="n_prompts must lie in 1..2"):
        node_score_agreement(model, [], data, n_prompts=3)
    with pytest.raises(ValidationError, match="unknown gradient method"):
        node_score_agreement(model, [], data, n_prompts=1, methods=("ig", "exact"))
