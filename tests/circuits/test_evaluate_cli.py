"""``circuits evaluate``: the printed table shows KL, the footnotes define CE recovered
against its baseline and explain values above 1, and the CSV's ce_note agrees."""

import json

import pandas as pd
import pytest

from circuits.cli import main
from circuits.cli.evaluate import footnotes
from circuits.pipeline.dictionaries import (
    CE_ABOVE_ONE,
    CE_BASELINE_BELOW,
    DictionaryEvalError,
    ce_note,
    check_finite_metrics,
)


def _recovered(clean, spliced, base):
    return (base - spliced) / (base - clean)


@pytest.mark.parametrize("clean, spliced, base, note", [
    (2.0, 2.5, 5.0, ""),                    # ordinary: 0 < recovered < 1
    (2.0, 1.9, 5.0, CE_ABOVE_ONE),          # spliced beats clean: recovered > 1
    (5.9, 6.3, 5.4, CE_BASELINE_BELOW),     # baseline beats clean: the ratio is meaningless
    (2.0, 6.0, 5.0, ""),                    # worse than the baseline: negative, self-explaining
])
def test_ce_note_explains_values_outside_the_unit_interval(clean, spliced, base, note):
    r = _recovered(clean, spliced, base)
    assert ce_note(clean, spliced, base) == note
    if note == CE_ABOVE_ONE:
        assert r > 1
    if note == "":
        assert r <= 1


def test_footnotes_name_the_rows_and_the_baseline():
    df = pd.DataFrame({"name": ["a", "b", "c"],
                       "ce_note": ["", CE_ABOVE_ONE, CE_BASELINE_BELOW]})
    lines = footnotes(df, "mean")
    assert "(CE_baseline - CE_spliced) / (CE_baseline - CE_clean)" in lines[0]
    assert "--baseline mean" in lines[0] and "its mean" in lines[0]
    above = next(ln for ln in lines if CE_ABOVE_ONE in ln)
    assert "(b)" in above and "CE_spliced < CE_clean" in above
    below = next(ln for ln in lines if CE_BASELINE_BELOW in ln)
    assert "(c)" in below and "--baseline zero" in below
    assert len(footnotes(df.iloc[:1], "zero")) == 2  # no note rows: definitions only


def test_check_finite_metrics_names_dictionary_and_metric():
    df = pd.DataFrame({"name": ["L0.mlp_in", "L1.mlp_in"], "l0": [3.0, 2.0],
                       "fvu": [0.5, float("inf")], "ce_recovered": [0.9, 0.8]})
    with pytest.raises(DictionaryEvalError, match=r"dictionary L1\.mlp_in: fvu is inf"):
        check_finite_metrics(df)
    check_finite_metrics(df.iloc[:1])  # finite rows pass


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    assert main(["--quiet", "train", "--sites", "L0.mlp_in,L2.mlp_in", "--arch", "topk",
                 "--width", "32", "--k", "4", "--tokens", "1024", "--batch-tokens", "256",
                 "--out", str(d / "run")]) == 0
    return d


def test_printed_table_has_kl_and_footnotes(dicts, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--dicts", str(dicts / "run" / "dictionaries"),
                 "--out", str(dicts / "e1")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert {"l0", "fvu", "dead_frac", "ce_recovered", "kl_spliced"} <= set(header)
    assert "ce_recovered = (CE_baseline - CE_spliced)" in out and "--baseline zero" in out
    df = pd.read_csv(dicts / "e1" / "dictionary_metrics.csv", keep_default_na=False)
    assert {"kl_spliced", "ce_note", "dead_window"} <= set(df.columns)
    for r in df.itertuples():  # the CSV's note is the rule applied to its own numbers
        assert r.ce_note == ce_note(r.ce_clean, r.ce_spliced, r.ce_baseline)
        if r.ce_recovered > 1:
            assert r.ce_note in (CE_ABOVE_ONE, CE_BASELINE_BELOW)
            assert r.ce_note in out
    assert (df.dead_window == df.tokens).all()
    # --json carries the same rows and the notes
    assert main(["--json", "evaluate", "--dicts", str(dicts / "run" / "dictionaries"),
                 "--out", str(dicts / "e2")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert "kl_spliced" in rec["rows"][0] and rec["notes"][0].startswith("ce_recovered =")
