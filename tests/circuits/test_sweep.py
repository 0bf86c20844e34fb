"""Pareto sweeps (``circuits.sweep`` and ``circuits sweep``).

Independent checks: the frontier against an O(n²) brute force and a hand-worked set; the
recorded FVU and MCC recomputed in numpy/scipy from the saved dictionary and freshly
generated held-out rows; a resumed sweep against an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from circuits.cli import main
from circuits.sweep import GridError, SweepMismatchError, pareto_front, parse_grid, run_sweep
from circuits.sweep.grid import load_grid

TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "preset": "cpu", "train_rows": 2048, "eval_rows": 1024,
             "dead_rows": 12288,
             "config": {"d": 32, "n_features": 96, "mean_l0": 4.0, "n_parents": 6,
                        "children_per_parent": 2, "correlation_rank": 4}},
    "train": {"total_tokens": 256 * 80, "batch_tokens": 256, "lr": 3e-3, "log_every": 10,
              "dead_tokens": 4096},
    "axes": {"arch": ["topk", "batchtopk"], "width": [96], "k": [3, 6]},
    "output": {"checkpoint_every": 20},
}
"""2 archs × 2 k on a tiny synthetic model: 80 steps per run, well under a second each."""
TIMING = ("tokens_per_s", "train_s", "loadavg", "resumed_from_step")


def _grid(**edits):
    g = copy.deepcopy(TINY)
    for path, value in edits.items():
        table, key = path.split("__")
        g.setdefault(table, {})[key] = value
    return g


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _toml(grid: dict) -> str:
    def val(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = [f"name = {val(grid['name'])}"] if "name" in grid else []
    for table, body in grid.items():
        if table == "name":
            continue
        lines.append(f"[{table}]")
        lines += [f"{k} = {val(v)}" for k, v in body.items() if not isinstance(v, dict)]
        for k, v in body.items():
            if isinstance(v, dict):
                lines.append(f"[{table}.{k}]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ grids ----
def test_grid_expands_sparsity_per_family_and_extra_axes():
    g = parse_grid(_grid(axes__arch=["topk", "relu", "jumprelu"], axes__k=[3, 6],
                         axes__sparsity_coef=[1.0, 4.0], axes__seed=[0, 1]))
    # topk: 2 k x 2 seeds; relu: 2 coefs x 2 seeds; jumprelu likewise
    assert len(g.runs) == 12
    for r in g.runs:
        c = r.config
        if c.arch == "topk":
            assert r.sparsity_axis == "k" and c.k in (3, 6) and "sparsity_coef" not in r.axes
        else:
            assert r.sparsity_axis == "sparsity_coef" and c.sparsity_coef in (1.0, 4.0)
        assert c.seed == r.axes["seed"] and c.width == 96 and c.total_tokens == 256 * 80
    assert len({r.id for r in g.runs}) == 12
    # per-arch levels override the shared axis
    g2 = parse_grid(_grid(axes__arch=["topk", "jumprelu"], sparsity__jumprelu=[0.01]))
    assert [r.config.sparsity_coef for r in g2.runs if r.config.arch == "jumprelu"] == [0.01]
    # per-arch fixed fields: [train.<arch>] overrides [train] for that arch only
    g3 = parse_grid(_grid(axes__arch=["topk", "jumprelu"], train__jumprelu={"lr": 0.01}))
    assert {(r.config.arch, r.config.lr) for r in g3.runs} == {("topk", 3e-3), ("jumprelu", 0.01)}
    assert [r.id for r in g3.runs if r.config.arch == "topk"] == \
        [r.id for r in g2.runs if r.config.arch == "topk"]
    with pytest.raises(GridError, match=r"\[train.jumprelu\]"):
        parse_grid(_grid(axes__arch=["jumprelu"], train__jumprelu={"bogus": 1}))


def test_run_ids_are_stable_and_change_only_with_the_run():
    a = parse_grid(TINY)
    b = parse_grid(copy.deepcopy(TINY))
    assert [r.id for r in a.runs] == [r.id for r in b.runs]
    c = parse_grid(_grid(axes__k=[3, 7]))  # k=6 replaced by k=7
    ids_a = {r.axes["arch"] + str(r.axes["k"]): r.id for r in a.runs}
    ids_c = {r.axes["arch"] + str(r.axes["k"]): r.id for r in c.runs}
    assert ids_a["topk3"] == ids_c["topk3"] and ids_a["batchtopk3"] == ids_c["batchtopk3"]
    assert ids_c["topk7"] not in ids_a.values()
    # other data: every id changes
    d = parse_grid(_grid(data__eval_rows=512))
    assert not {r.id for r in d.runs} & {r.id for r in a.runs}


@pytest.mark.parametrize("edits, needle", [
    (dict(train__bogus=1), "bogus"),
    (dict(axes__bogus=[1]), "bogus"),
    (dict(axes__arch=["topk", "nosuch"]), "nosuch"),
    (dict(axes__arch=[]), "empty"),
    (dict(axes__k=[]), "empty"),
    (dict(axes__width=[0]), "width"),
    (dict(axes__width=[-4]), "width"),
    (dict(axes__k=[0, 3]), "k"),
    (dict(axes__k=[200]), "k=200"),  # k above the width
    (dict(data__source="files"), "source"),
    (dict(data__bogus=1), "bogus"),
    (dict(data__dead_rows=0), "dead_rows"),
    (dict(data__config={"bogus": 1}), "bogus"),
    (dict(data__preset="huge"), "preset"),
    (dict(sparsity__relu=[1.0]), "relu"),  # relu is not in the arch axis
    (dict(output__bogus=True), "bogus"),
    (dict(train__relu={"lr": 1e-2}), "relu"),  # per-arch table for an arch not swept
])
def test_bad_grids_raise_one_line(edits, needle):
    with pytest.raises(GridError) as e:
        parse_grid(_grid(**edits))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_grid_without_data_or_arch():
    g = copy.deepcopy(TINY)
    del g["data"]
    with pytest.raises(GridError, match=r"\[data\]"):
        parse_grid(g)
    g = copy.deepcopy(TINY)
    del g["axes"]["arch"]
    with pytest.raises(GridError, match="arch"):
        parse_grid(g)


def test_load_grid_reads_toml_and_names_the_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(_toml(TINY))
    assert [r.id for r in load_grid(p).runs] == [r.id for r in parse_grid(TINY).runs]
    p.write_text("[axes\narch = 1")
    with pytest.raises(GridError, match="not valid TOML"):
        load_grid(p)


# ----------------------------------------------------------------- pareto ----
def _brute_front(x, y, maximize=False):
    yy = -np.asarray(y, float) if maximize else np.asarray(y, float)
    x = np.asarray(x, float)
    keep = []
    for i in range(len(x)):
        if not (np.isfinite(x[i]) and np.isfinite(yy[i])):
            continue
        dominated = any(np.isfinite(x[j]) and np.isfinite(yy[j]) and x[j] <= x[i] and yy[j] <= yy[i]
                        and (x[j] < x[i] or yy[j] < yy[i]) for j in range(len(x)))
        if not dominated:
            keep.append(i)
    return sorted(keep)


def test_pareto_front_hand_worked():
    # (L0, FVU): (1, .9) (2, .5) (3, .6) (4, .2) (5, .2) (2, .5) dup
    x = [1, 2, 3, 4, 5, 2]
    y = [0.9, 0.5, 0.6, 0.2, 0.2, 0.5]
    assert sorted(pareto_front(x, y).tolist()) == [0, 1, 3, 5]
    # maximising: (1,.9) dominates everything with larger L0 and lower score
    assert pareto_front(x, y, maximize=True).tolist() == [0]
    assert pareto_front([1, np.nan, 2], [1, 0, np.nan]).tolist() == [0]


@pytest.mark.parametrize("seed", range(6))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    x = rng.integers(0, 8, n).astype(float)  # small ranges: many ties
    y = rng.integers(0, 8, n).astype(float)
    x[rng.random(n) < 0.05] = np.nan
    for maximize in (False, True):
        got = pareto_front(x, y, maximize=maximize)
        assert sorted(got.tolist()) == _brute_front(x, y, maximize)
        assert np.all(np.diff(x[got]) >= 0)  # ordered by x


# ------------------------------------------------------------ tiny sweeps ----
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    grid = parse_grid(TINY)
    res = run_sweep(grid, out)
    return grid, out, res


def test_tiny_sweep_writes_table_and_figures(tiny_sweep):
    grid, out, res = tiny_sweep
    assert len(res.rows) == 4 and res.trained == [r.id for r in grid.runs] and not res.missing
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(ln)["id"] for ln in lines] == [r.id for r in grid.runs]
    md = (out / "table.md").read_text()
    assert all(r.id in md for r in grid.runs)  and "| mcc |" in md
    csv = (out / "table.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith("id,arch,width,sparsity,front,l0,fvu")
    for name in ("l0_fvu", "l0_mcc", "l0_f1"):
        for ext in ("png", "svg"):
            f = out / "figures" / f"{name}.{ext}"
            assert f.stat().st_size > 1000
    for r in res.rows:  # checkpoints are removed once a run is recorded
        assert not (out / "runs" / r["id"] / "checkpoint").exists()
        assert r["k"] in (3, 6) and r["l0"] > 0 and 0 < r["fvu"] < 1 and 0 < r["mcc"] <= 1


def test_recorded_metrics_equal_a_recomputation_from_the_saved_dictionary(tiny_sweep):
    import mlx.core as mx

    from sae import load_dictionaries
    from sae.synthetic import cpu_preset, make_truth, sample

    grid, out, res = tiny_sweep
    cfg = cpu_preset(**TINY["data"]["config"])
    truth = make_truth(cfg)
    rows = sample(truth, TINY["data"]["eval_rows"], 10 ** 6)  # the held-out batch
    x = rows.x.astype(np.float64)
    for rec in res.rows:
        (d,) = load_dictionaries(out / "runs" / rec["id"] / "dictionary").values()
        f = d.encode(mx.array(rows.x))
        x_hat = np.array(d.decode(f), np.float64)
        fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert rec["fvu"] == pytest.approx(fvu, rel=1e-5)
        assert rec["l0"] == pytest.approx(float((np.array(f) != 0).sum(1).mean()), rel=1e-9)
        w = np.array(d.W_dec, np.float64)
        c = np.abs((truth.directions / np.linalg.norm(truth.directions, axis=1, keepdims=True))
                   @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T)
        i, j = linear_sum_assignment(-c)
        assert rec["mcc"] == pytest.approx(c[i, j].mean(), rel=1e-6)
        # dead: silent on every one of the dead-count rows (generator batches 2e6, 2e6 + 1)
        fired = np.zeros(d.width, bool)
        for b, n in ((0, 8192), (1, 4096)):
            fired |= (np.array(d.encode(mx.array(sample(truth, n, 2 * 10 ** 6 + b).x))) != 0).any(0)
        assert rec["dead_frac"] == pytest.approx(1 - fired.mean(), abs=1e-12)
        assert rec["silent_eval_frac"] == pytest.approx(1 - (np.array(f) != 0).any(0).mean(),
                                                        abs=1e-12)


class _Stop(Exception):
    pass


def test_interrupted_sweep_resumes_to_the_uninterrupted_result(tiny_sweep, tmp_path):
    grid, ref_out, ref = tiny_sweep
    out = tmp_path / "out"
    first = grid.runs[0].id

    def stop_after_first(p):
        if p.event == "done":
            raise _Stop

    with pytest.raises(_Stop):
        run_sweep(grid, out, stop_after_first)
    done_file = out / "runs" / first / "result.json"
    mtime = done_file.stat().st_mtime_ns
    assert len((out / "results.jsonl").read_text().splitlines()) == 1

    # second interruption: inside run 3's training, after its step-20 checkpoint
    def stop_mid_run(p):
        if p.event == "step" and p.index == 2 and p.step >= 30:
            raise _Stop

    with pytest.raises(_Stop):
        run_sweep(grid, out, stop_mid_run)
    assert (out / "runs" / grid.runs[2].id / "checkpoint" / "checkpoint.safetensors").is_file()

    events = []
    res = run_sweep(grid, out, lambda p: events.append((p.event, p.run_id, p.step)))
    starts = [e for e in events if e[0] == "start"]
    assert [e[1] for e in events if e[0] == "skip"] == [first, grid.runs[1].id]
    assert [s[1] for s in starts] == [grid.runs[2].id, grid.runs[3].id]
    assert starts[0][2] == 20 and starts[1][2] == 0  # resumed from the checkpoint at step 20
    assert done_file.stat().st_mtime_ns == mtime  # the first run was not retrained
    assert res.trained == [grid.runs[2].id, grid.runs[3].id]
    assert res.rows[2]["resumed_from_step"] == 20
    assert _strip(res.rows) == _strip(ref.rows)
    ref_table = [ln.split(",")[:-3] for ln in (ref_out / "table.csv").read_text().splitlines()]
    got_table = [ln.split(",")[:-3] for ln in (out / "table.csv").read_text().splitlines()]
    assert got_table == ref_table  # all but tokens_per_s, train_s, total_tokens columns


def test_edited_grid_adds_runs_and_other_data_is_refused(tiny_sweep, tmp_path):
    grid, ref_out, ref = tiny_sweep
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    grid2 = parse_grid(_grid(axes__arch=["topk"], axes__k=[3, 5]))
    events = []
    res = run_sweep(grid2, out, lambda p: events.append((p.event, p.label)))
    assert [e for e in events if e[0] != "step"] == [
        ("skip", "topk k=3 width=96"), ("start", "topk k=5 width=96"), ("done", "topk k=5 width=96")]
    assert [r["k"] for r in res.rows] == [3, 5]  # the table lists this grid's runs
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SweepMismatchError, match="other data") as e:
        run_sweep(parse_grid(_grid(data__train_rows=4096)), out)
    assert "\n" not in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_plot_only_rewrites_outputs_without_training(tiny_sweep, tmp_path):
    grid, ref_out, ref = tiny_sweep
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    shutil.rmtree(out / "figures")
    (out / "table.md").unlink()
    res = run_sweep(grid, out, lambda p: pytest.fail("plot_only trained"), plot_only=True)
    assert (out / "figures" / "l0_fvu.svg").is_file() and (out / "table.md").is_file()
    assert _strip(res.rows) == _strip(ref.rows) and res.trained == []


# -------------------------------------------------------------------- CLI ----
def test_cli_bad_grids_exit_nonzero_and_write_nothing(tmp_path, capsys):
    for edits in (dict(axes__arch=["topk", "nosuch"]), dict(axes__k=[]), dict(train__bogus=1),
                  dict(axes__width=[0]), dict(axes__k=[-1])):
        p = tmp_path / "bad.toml"
        p.write_text(_toml(_grid(**edits)))
        out = tmp_path / "out"
        assert main(["sweep", str(p), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("circuits sweep: error:") and "bad.toml" in err[0]
        assert not out.exists()
    assert main(["sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_runs_one_run_then_refuses_other_data(tmp_path, capsys):
    p = tmp_path / "g.toml"
    p.write_text(_toml(TINY))
    grid = parse_grid(TINY)
    out = tmp_path / "out"
    assert main(["sweep", str(p), "--out", str(out), "--only", "nosuchid"]) == 1
    assert "no run 'nosuchid'" in capsys.readouterr().err and not out.exists()
    rid = grid.runs[1].id
    assert main(["--json", "sweep", str(p), "--out", str(out), "--only", rid]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["trained"] == [rid] and rec["finished"] == 1 and len(rec["missing"]) == 3
    man = json.loads((out / "run.json").read_text())
    assert man["command"] == "sweep" and "results.jsonl" in man["artifacts"]
    assert main(["sweep", str(p), "--out", str(out), "--plot-only"]) == 0
    assert (out / "figures" / "l0_fvu.png").is_file()
    capsys.readouterr()
    other = tmp_path / "other.toml"
    other.write_text(_toml(_grid(data__eval_rows=512)))
    assert main(["sweep", str(other), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other data" in err[0]
    # a non-empty directory that is not a sweep is refused too
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    assert main(["sweep", str(p), "--out", str(tmp_path / "junk")]) == 1
    assert os.listdir(tmp_path / "junk") == ["x.txt"]


def test_model_sweep_records_ce_recovered_and_kl(tmp_path):
    """A model-activation sweep (the shipped ioi organism) records the library's CE
    recovered and KL (model metrics replace the synthetic ones in the figures)."""
    grid = parse_grid({
        "name": "model", "data": {"source": "model", "model": "ioi", "sites": ["L1.resid_post"],
                                  "n_docs": 60, "eval_docs": 20},
        "train": {"total_tokens": 8192, "batch_tokens": 512, "log_every": 8},
        "axes": {"arch": ["topk"], "width": [128], "k": [8]}})
    res = run_sweep(grid, tmp_path / "out")
    (rec,) = res.rows
    assert 0 < rec["ce_recovered"] <= 1.2 and rec["kl_spliced"] > 0 and rec["l0"] == pytest.approx(8)
    assert set(rec["per_site"]) == {next(iter(rec["per_site"]))}
    assert (tmp_path / "out" / "figures" / "l0_ce_recovered.svg").is_file()
    assert not (tmp_path / "out" / "figures" / "l0_mcc.svg").exists()
    # dead: silent on every harvested training token (recomputed from the saved dictionary)
    import mlx.core as mx

    from circuits.sweep.data import SweepData
    from sae import load_dictionaries

    (d,) = load_dictionaries(tmp_path / "out" / "runs" / rec["id"] / "dictionary").values()
    x = SweepData(grid.data).source.arrays[d.in_site]
    fired = (np.array(d.encode(mx.array(x))) != 0).any(0)
    assert rec["dead_frac"] == pytest.approx(1 - fired.mean(), abs=1e-12)
    assert rec["silent_eval_frac"] is not None and 0 <= rec["silent_eval_frac"] <= 1


def test_named_recipes_sweep_without_code_change(tmp_path):
    """Archs registered in ``sae.parts.RECIPES`` are axes values like the standard six: a
    top-k recipe takes the k levels, the others the coefficient levels, and they train."""
    from sae.parts import RECIPES

    recipes = [a for a in ("prolu", "deep") if a in RECIPES]
    if len(recipes) < 2:
        pytest.skip("sae.parts has no prolu / deep recipe")
    g = parse_grid(_grid(axes__arch=["prolu", "deep"], axes__k=[3, 6],
                         axes__sparsity_coef=[1.0, 2.0]))
    assert [(r.axes["arch"], r.sparsity_axis) for r in g.runs] == [
        ("prolu", "sparsity_coef"), ("prolu", "sparsity_coef"), ("deep", "k"), ("deep", "k")]
    assert len({r.id for r in g.runs}) == 4  # the k / coefficient reach the recipe and the id
    one = parse_grid(_grid(axes__arch=["prolu"], axes__sparsity_coef=[1.0]))
    res = run_sweep(one, tmp_path / "out")
    (rec,) = res.rows
    assert rec["arch"] == "prolu" and rec["sparsity_coef"] == 1.0 and 0 < rec["fvu"] < 1.5


def test_cli_ctrl_c_keeps_finished_runs_and_says_so(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second run: exit 130, the message says what is kept (not "removed"),
    the first run's row survives and the rerun trains only the rest."""
    import circuits.cli.sweep as cli_sweep

    p = tmp_path / "g.toml"
    p.write_text(_toml(TINY))
    out = tmp_path / "sw"
    real = cli_sweep._progress

    def interrupting(args):
        cb = real(args)

        def wrapped(ev):
            if ev.event == "start" and ev.index == 1:
                raise KeyboardInterrupt
            cb(ev)
        return wrapped

    monkeypatch.setattr(cli_sweep, "_progress", interrupting)
    assert main(["sweep", str(p), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err and "removed" not in err, err
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    assert len(rows) == 1
    monkeypatch.setattr(cli_sweep, "_progress", real)
    assert main(["--json", "sweep", str(p), "--out", str(out)]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(rec["skipped"]) == 1 and len(rec["trained"]) == 3 and rec["finished"] == 4


def test_dead_fraction_counts_a_latent_alive_if_it_fires_once_in_any_chunk():
    import mlx.core as mx

    from circuits.sweep.metrics import dead_fraction

    class Thresh:  # latent j fires on a row whose coordinate j exceeds 0.5
        width = 4

        def encode(self, x):
            return mx.where(x > 0.5, x, 0.0)

    rows = np.zeros((20000, 4), np.float32)
    rows[19999, 1] = 1.0  # latent 1 fires once, in the last (partial) chunk
    rows[3, 2] = 0.7      # latent 2 fires once, in the first chunk
    rows[:, 3] = 0.5      # latent 3 sits at the threshold and never fires
    assert dead_fraction(Thresh(), rows, chunk=8192) == pytest.approx(0.5)
    assert dead_fraction(Thresh(), rows[:19999], chunk=8192) == pytest.approx(0.75)
