"""The feature browser and steering playground API (``circuits.explore.feature_routes``,
``features_api``, ``steer_api``) over real sockets, on a tiny run directory: a tiny
random llama, saved ReLU transcoders on every layer, a ``run.json`` naming the model and
dashboards for two features.

Independent computations: activations from ``attribution.capture`` of each dictionary's
input site + ``dictionary.encode`` of the dictionaries loaded separately; logit effects
from W_dec · RMSNorm gain · W_U in numpy; the unmodified continuation from a plain
greedy loop over ``model(tokens)``; the steered one from ``steering.generate`` called
directly and its logits from ``steering.steer`` at every step. Bad input of every kind
gets a one-line JSON 4xx."""

from __future__ import annotations

import attribution  # noqa: F401,I001  (BLAS preload before mlx)

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import mlx.core as mx
import numpy as np
import pytest

from attribution import capture, load_model
from attribution.sites import Site
from attribution.tiny import make_tiny_model
from circuits.explore import features_api as fa
from circuits.explore.api import ExploreError
from circuits.explore.feature_routes import ROUTES
from circuits.explore.server import _ROUTES
from circuits.explore.server import ServeConfig, make_server

WIDTH = 32
TEXT = "the cat sat on the mat and the dog ran"


def make_feature_run(root: Path, model_dir: Path, dashboards: bool = True) -> Path:
    """A run directory as ``circuits demo`` leaves it, in miniature (seconds, not minutes)."""
    from sae import ReLUDictionary, save_dictionaries
    from viz import write_dashboards

    from circuits.pipeline.manifest import manifest_record, write_manifest

    model = load_model(model_dir)
    ds = []
    for layer in range(model.n_layers):
        d = ReLUDictionary(model.d_model, WIDTH, in_site=Site(layer, "mlp_in"), out_site=Site(layer, "mlp_out"))
        d.init_weights(mx.random.key(10 + layer))
        # A positive encoder bias makes many features fire on any text (a non-trivial heatmap).
        d.b_enc = mx.array(np.random.default_rng(layer).uniform(-0.05, 0.1, WIDTH).astype(np.float32))
        ds.append(d)
    root.mkdir(parents=True, exist_ok=True)
    save_dictionaries(ds, root / "dictionaries", model=model)
    write_manifest(root, manifest_record("demo", ["demo"], {"model": model_dir}, {"dictionaries": "dictionaries/"}))
    if dashboards:
        ex = {"tokens": ["The", " cat"], "activations": [0.1, 2.0]}
        recs = [{"feature": f, "site": "L0.mlp_in", "density": 0.01 * (f + 1), "mean_activation": 1.0,
                 "max_activation": 2.0, "label": label, "top_examples": [ex],
                 "histogram": {"counts": [2, 1], "edges": [0, 1, 2]}}
                for f, label in ((1, "feline things"), (2, "cats and dogs"))]
        write_dashboards(recs, root / "dashboards")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("features")
    model_dir = make_tiny_model("llama", base / "model", seed=3)
    run = make_feature_run(base / "run", model_dir)
    return base, model_dir, run


def serve(run: Path):
    """A running explorer of ``run`` (``make_server`` merges the feature routes)."""
    server = make_server(run, ServeConfig(port=0, svg=False))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return server


@pytest.fixture(scope="module")
def served(tiny):
    server = serve(tiny[2])
    yield server
    server.shutdown()
    server.server_close()


def call(server, path, body=None, raw: bytes | None = None, headers=None):
    """(status, parsed JSON) of one request; a POST when ``body`` or ``raw`` is given."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data,
                                 method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode()
            return r.status, json.loads(text)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        assert "Traceback" not in text and "\n" not in text.strip(), text
        return e.code, json.loads(text)


@pytest.fixture(scope="module")
def reference(tiny):
    """The model and dictionaries loaded separately from the server's copies."""
    from sae import load_dictionaries

    model = load_model(tiny[1])
    dicts = {s.layer: d for s, d in load_dictionaries(tiny[2] / "dictionaries", model=model).items()}
    return model, dicts


# ------------------------------------------------------------------ pure parts ----
def test_feature_ids_parse_and_check():
    widths = {0: 32, 2: 8}
    assert fa.parse_id("L3/120") == (3, 120) and fa.parse_id("3:120") == (3, 120)
    assert fa.parse_id(" l0 / 7 ") == (0, 7) and fa.parse_id("cat") is None and fa.parse_id("L3/") is None
    assert fa.parse_feature(widths, "L2/7") == (2, 7)
    assert fa.parse_feature(widths, {"layer": 0, "feature": 31}) == (0, 31)
    for spec, status in (("L1/0", 404), ("L2/8", 404), ("L0/-1", 400), ("x", 400), ({"layer": "0", "feature": 1}, 400),
                         ({"layer": 0, "feature": True}, 400), ({"layer": 0, "feature": 1.5}, 400)):
        with pytest.raises(ExploreError) as e:
            fa.parse_feature(widths, spec)
        assert e.value.status == status, spec
    with pytest.raises(ExploreError) as e:
        fa.parse_features(widths, ["L0/1"] * (fa.MAX_FEATURES + 1))
    assert e.value.status == 400 and "too many" in str(e.value)
    assert fa.parse_features(widths, ["L0/1", "0:1", "L2/3"]) == [(0, 1), (2, 3)]  # duplicates dropped


def test_dashboard_index_is_read(tiny):
    rows = fa.read_dashboard_index(tiny[2] / "dashboards")
    assert set(rows) == {(0, 1), (0, 2)}
    assert rows[(0, 1)]["label"] == "feline things" and rows[(0, 1)]["page"] == "feature_L0.mlp_in_1.html"
    assert rows[(0, 2)]["density"] == pytest.approx(0.03)
    assert fa.read_dashboard_index(tiny[0] / "nowhere") == {}


# ---------------------------------------------------------------- activations ----
def test_activations_equal_capture_and_encode(served, reference):
    model, dicts = reference
    feats = ["L0/1", "L1/5", "L0/2", "L1/30"]
    status, d = call(served, "/api/features/activations", {"text": TEXT, "features": feats})
    assert status == 200, d
    ids = model.encode(TEXT)
    assert d["ids"] == ids and len(d["tokens"]) == len(ids) and "".join(d["tokens"][1:]).strip() == TEXT
    cache = capture(model, mx.array([ids]), [Site(l, "mlp_in") for l in dicts])
    want = {l: np.asarray(dicts[l].encode(cache[Site(l, "mlp_in")][0]), dtype=np.float64) for l in dicts}
    assert [r["id"] for r in d["features"]] == feats
    n_active = 0
    for row in d["features"]:
        ref = want[row["layer"]][:, row["feature"]]
        got = np.asarray(row["activations"])
        assert got.shape == (len(ids),)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert row["max"] == pytest.approx(ref.max(), abs=1e-5)
        n_active += int((ref > 0).sum())
    assert n_active > 0  # the comparison is not all zeros


def test_concurrent_requests_agree(served):
    out = [None] * 4

    def work(k):
        out[k] = call(served, "/api/features/activations", {"text": TEXT, "features": ["L1/5"]})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None and o[0] == 200 for o in out), out
    assert all(o[1] == out[0][1] for o in out)


# ------------------------------------------------------------- search + cards ----
def _effects(model, dicts, layer):
    """[width, vocab] direct logit effects: W_dec · RMSNorm gain · W_U (numpy)."""
    g = np.asarray(model.final_norm.weight, dtype=np.float64)
    return (np.asarray(dicts[layer].W_dec, np.float64) * g) @ np.asarray(model.W_U, np.float64)


def test_search_by_id_label_and_top_token(served, reference):
    model, dicts = reference
    status, d = call(served, "/api/features/search?q=" + quote("L1/7"))
    assert status == 200 and d["total"] == 1 and d["items"][0]["id"] == "L1/7" and d["items"][0]["match"] == "id"
    status, d = call(served, "/api/features/search?q=3:9")
    assert d["items"][0]["id"] == "L3/9" if 3 in dicts else d["total"] == 0
    status, d = call(served, "/api/features/search?q=feline")
    assert status == 200 and [i["id"] for i in d["items"]] == ["L0/1"] and d["items"][0]["label"] == "feline things"
    status, d = call(served, "/api/features/search?q=" + quote("cats and"))
    assert d["items"][0]["id"] == "L0/2"
    # Top tokens: the best hit for a token has it as its #1 promoted token (numpy ranking).
    eff = {l: _effects(model, dicts, l) for l in dicts}
    l0_top = int(np.argmax(eff[0][3]))
    tok = model.to_str_tokens([l0_top])[0].strip()
    status, d = call(served, "/api/features/search?q=" + quote(tok) + "&limit=100")
    assert status == 200 and d["total"] >= 1
    firsts = {f"L{l}/{f}" for l in eff for f in range(WIDTH)
              if model.to_str_tokens([int(np.argmax(eff[l][f]))])[0].strip().lower() == tok.lower()}
    assert "L0/3" in firsts
    got = [i["id"] for i in d["items"]]
    assert set(got[:len(firsts)]) == firsts, (got, firsts)
    for item in d["items"]:
        l, f = fa.parse_id(item["id"])
        top10 = [model.to_str_tokens([int(t)])[0].strip().lower() for t in np.argsort(-eff[l][f])[:10]]
        assert any(tok.lower() in t for t in top10), (item, top10)
    # Paging: disjoint consecutive pages covering the total.
    _, p1 = call(served, "/api/features/search?q=&limit=7&offset=0")
    _, p2 = call(served, "/api/features/search?q=&limit=7&offset=7")
    assert p1["total"] == WIDTH * len(dicts) and len(p1["items"]) == len(p2["items"]) == 7
    assert p1["items"][0]["id"] == "L0/0" and p2["items"][0]["id"] == "L0/7"
    _, last = call(served, f"/api/features/search?limit=5&offset={WIDTH * len(dicts) - 2}")
    assert [i["id"] for i in last["items"]] == [f"L{max(dicts)}/{WIDTH - 2}", f"L{max(dicts)}/{WIDTH - 1}"]


def test_one_feature_and_all_features_effects_agree(reference):
    """A card's single-row logit effects equal the chunked all-features pass and numpy."""
    from attribution.replacement import ReplacementModel

    model, dicts = reference
    cat = fa.build_catalogue(model, ReplacementModel(model, list(dicts.values())).units)
    one = cat.effects(1, 6)
    e = _effects(model, dicts, 1)[6]
    assert list(one[0]) == list(np.argsort(-e)[:10]) and list(one[2]) == list(np.argsort(e)[:10])
    np.testing.assert_allclose(one[1], np.sort(e)[::-1][:10], rtol=1e-4, atol=1e-6)
    cat.top.clear()
    index = cat.tokens_index()
    assert len(cat.top) == WIDTH * len(dicts)
    for a, b in zip(cat.top[(1, 6)], one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sum(len(v) for v in index.values()) <= WIDTH * len(dicts) * 10


def test_feature_card(served, reference):
    model, dicts = reference
    status, c = call(served, "/api/features/feature?id=" + quote("L0/1"))
    assert status == 200 and c["label"] == "feline things" and c["site"] == "L0.mlp_in" and c["width"] == WIDTH
    assert c["dashboard"] == "/run/dashboards/feature_L0.mlp_in_1.html" and c["stats"]["density"] == pytest.approx(0.02)
    with urllib.request.urlopen(served.url.rstrip("/") + c["dashboard"], timeout=30) as r:
        assert r.status == 200 and b"feline things" in r.read()
    e = _effects(model, dicts, 0)[1]
    want = [model.to_str_tokens([int(t)])[0] for t in np.argsort(-e)[:10]]
    assert [t for t, _ in c["logit_effects"]["promoted"]] == want
    np.testing.assert_allclose([v for _, v in c["logit_effects"]["promoted"]], np.sort(e)[::-1][:10],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([v for _, v in c["logit_effects"]["suppressed"]], np.sort(e)[:10], rtol=1e-4, atol=1e-6)
    status, c = call(served, "/api/features/feature?id=L1/4")
    assert status == 200 and c["dashboard"] is None and c["label"] == ""


# ------------------------------------------------------------------- steering ----
def test_steering_matches_plain_greedy_and_generate(served, reference):
    from attribution.replacement import FeatureIntervention, ReplacementModel, generate, steer

    model, dicts = reference
    prompt, n = "the cat sat on", 6
    ids = model.encode(prompt)
    body = {"prompt": prompt, "max_new_tokens": n,
            "interventions": [{"feature": "L0/3", "mode": "clamp", "strength": 40.0, "positions": "all"},
                              {"layer": 1, "feature": 5, "mode": "scale", "strength": 3.0, "positions": [1, 2]}]}
    status, d = call(served, "/api/steer", body)
    assert status == 200, d
    # Unmodified side: a plain greedy loop over the real model.
    seq = list(ids)
    for _ in range(n):
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    assert d["clean"]["ids"] == seq[len(ids):] and d["clean"]["text"] == model.decode(seq[len(ids):])
    # Steered side: steering.generate called directly, and the logits each step saw.
    rm = ReplacementModel(model, list(dicts.values()))
    ivs = [FeatureIntervention(0, 3, "set", 40.0, None), FeatureIntervention(1, 5, "scale", 3.0, [1, 2])]
    gen = generate(rm, None, ids, ivs, n_tokens=n)
    assert d["steered"]["ids"] == gen.new_tokens and d["steered"]["text"] == gen.text
    assert d["steered"]["ids"] != d["clean"]["ids"]  # the clamp changes the continuation
    for j, step in enumerate(d["steered"]["steps"]):
        logits = np.asarray(steer(rm, None, gen.tokens[:len(ids) + j], ivs, mode="iterative").logits[-1])
        assert step["id"] == int(np.argmax(logits))
        assert step["logit"] == pytest.approx(float(logits[step["id"]]), abs=1e-4)
        assert [t[0] for t in step["top"]][0] == step["id"]
        np.testing.assert_allclose([t[2] for t in step["top"]], np.sort(logits)[::-1][:5], atol=1e-4)
    for j, step in enumerate(d["clean"]["steps"]):
        logits = np.asarray(model(mx.array([seq[:len(ids) + j]]))[0, -1])
        assert step["logit"] == pytest.approx(float(logits[step["id"]]), abs=1e-4)
    assert d["interventions"][0] == {"feature": "L0/3", "mode": "set", "value": 40.0, "positions": "all"}


def test_ablating_a_silent_feature_changes_nothing(served, reference):
    model, dicts = reference
    prompt = "the dog ran"
    ids = model.encode(prompt)
    cache = capture(model, mx.array([ids]), [Site(1, "mlp_in")])
    acts = np.asarray(dicts[1].encode(cache[Site(1, "mlp_in")][0]))
    silent = int(np.flatnonzero((acts <= 0).all(axis=0))[0])
    status, d = call(served, "/api/steer", {"prompt": prompt, "max_new_tokens": 3,
                                            "interventions": [{"feature": f"L1/{silent}", "mode": "ablate"}]})
    assert status == 200 and d["steered"]["ids"] == d["clean"]["ids"]


def test_no_interventions_gives_the_unmodified_text_twice(served):
    status, d = call(served, "/api/steer", {"prompt": "a dog", "max_new_tokens": 2})
    assert status == 200 and d["interventions"] == [] and d["steered"] == d["clean"] and len(d["clean"]["ids"]) == 2


# ------------------------------------------------------------------ bad input ----
@pytest.mark.parametrize("path,body,status,words", [
    ("/api/features/feature?id=L0/999", None, 404, "out of range"),
    ("/api/features/feature?id=L7/1", None, 404, "no dictionary on layer 7"),
    ("/api/features/feature?id=cat", None, 400, "L3/120"),
    ("/api/features/feature", None, 400, "missing ?id="),
    ("/api/features/search?limit=abc", None, 400, "limit"),
    ("/api/features/search?limit=100000", None, 400, "limit"),
    ("/api/features/search?offset=-1", None, 400, "offset"),
    ("/api/features/search?q=" + "x" * 300, None, 400, "at most"),
    ("/api/features/activations", {"text": TEXT, "features": ["L0/1"] * 17}, 400, "too many features"),
    ("/api/features/activations", {"text": "cat " * 1000, "features": ["L0/1"]}, 400, "characters"),
    ("/api/features/activations", {"text": "cat " * 400, "features": ["L0/1"]}, 400, "tokens"),
    ("/api/features/activations", {"text": "", "features": ["L0/1"]}, 400, "non-empty"),
    ("/api/features/activations", {"text": TEXT, "features": []}, 400, "non-empty list"),
    ("/api/features/activations", {"text": TEXT, "features": ["L0/40"]}, 404, "out of range"),
    ("/api/features/activations", [1, 2], 400, "JSON object"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "mode": "boost", "strength": 1}]},
     400, "mode must be one of"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "mode": "clamp", "strength": "nan"}]},
     400, "finite"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "mode": "clamp", "strength": "big"}]},
     400, "must be a number"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "strength": 1e9}]}, 400, "finite"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "positions": [0, 99]}]},
     400, "positions"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "positions": "some"}]},
     400, "positions"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L9/1"}]}, 404, "no dictionary"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1", "colour": 1}]}, 400, "unknown keys"),
    ("/api/steer", {"prompt": "a cat", "interventions": [{"feature": "L0/1"}] * 17}, 400, "too many"),
    ("/api/steer", {"prompt": "a cat", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ("/api/steer", {"prompt": "a cat", "max_new_tokens": 33}, 400, "max_new_tokens"),
    ("/api/steer", {"prompt": "a cat", "max_new_tokens": "3"}, 400, "max_new_tokens"),
    ("/api/steer", {"prompt": "x" * 3000}, 400, "characters"),
    ("/api/steer", {"prompt": 5}, 400, "prompt"),
    ("/api/steer", {"prompt": "a", "extra": 1}, 400, "unknown keys"),
])
def test_bad_requests_get_one_line_json_errors(served, path, body, status, words):
    got, d = call(served, path, body)
    assert got == status, d
    assert words in d["error"] and "\n" not in d["error"], d


def test_malformed_and_oversized_bodies(served):
    got, d = call(served, "/api/steer", raw=b"{not json")
    assert got == 400 and "JSON" in d["error"]
    got, d = call(served, "/api/features/activations", raw=b"\xff\xfe")
    assert got == 400
    big = json.dumps({"text": "a" * (2 << 20), "features": ["L0/1"]}).encode()
    got, d = call(served, "/api/features/activations", raw=big)
    assert got == 413 and "limit" in d["error"]
    got, d = call(served, "/api/features/activations")  # GET on a POST route
    assert got == 405


def test_run_without_model_or_dictionaries(tmp_path, tiny):
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve(empty)
    try:
        for path, body in (("/api/features/info", None), ("/api/features/search?q=cat", None),
                           ("/api/steer", {"prompt": "a cat"})):
            got, d = call(server, path, body)
            assert got == 409 and "dictionaries/" in d["error"] and "circuits demo" in d["error"], d
    finally:
        server.shutdown()
        server.server_close()
    # Dictionaries but a run.json naming no model (and an index without one).
    nomodel = tmp_path / "nomodel"
    nomodel.mkdir()
    from sae import ReLUDictionary, save_dictionaries

    save_dictionaries([ReLUDictionary(8, 4, in_site=Site(0, "mlp_in"), out_site=Site(0, "mlp_out"))],
                      nomodel / "dictionaries")
    server = serve(nomodel)
    try:
        got, d = call(server, "/api/features/info")
        assert got == 409 and "names no model" in d["error"] and "circuits demo" in d["error"], d
    finally:
        server.shutdown()
        server.server_close()


def test_routes_are_merged_into_the_server(served):
    assert all(_ROUTES.get(k) is h for k, h in ROUTES.items())


def test_info(served, reference):
    model, dicts = reference
    got, d = call(served, "/api/features/info")
    assert got == 200 and d["layers"] == [{"layer": l, "width": WIDTH, "site": f"L{l}.mlp_in"} for l in sorted(dicts)]
    assert d["features"] == WIDTH * len(dicts) and d["dashboards"] == 2 and d["modes"] == ["ablate", "scale", "clamp"]
