"""`--dequantize`: a quantized --model loads as float32 layers; its graph equals the packed one.

Independent computation: the same command without the flag (packed 4-bit weights through
MLX's quantized kernel) on the same dictionaries and prompt; the two graphs may differ only
by float32 summation order (the dequantized values are the same numbers).
"""

from __future__ import annotations

import attribution  # noqa: F401,I001  (BLAS preload before mlx)

import mlx.core as mx
import numpy as np

from attribution import load_model
from attribution.graph import Graph
from attribution.tiny import convert_tiny_model, make_tiny_model
from circuits.cli import main


def test_dequantize_flag_gives_the_packed_graph(tmp_path, capsys, monkeypatch):
    import attribution.model.wrapper as wrapper
    from attribution.sites import Site
    from sae import TopKDictionary, save_dictionaries

    src = make_tiny_model("llama", tmp_path / "fp32", seed=5)
    q4 = convert_tiny_model(src, tmp_path / "q4", bits=4, group_size=32)
    model = load_model(q4)
    dicts = []
    for l in range(model.n_layers):
        d = TopKDictionary(model.d_model, 48, k=6, in_site=Site(l, "mlp_in"), out_site=Site(l, "mlp_out"))
        d.init_weights(mx.random.key(l))
        dicts.append(d)
    save_dictionaries(dicts, tmp_path / "tc", model=model)
    prompt = " ".join(model.tokenizer.convert_ids_to_tokens(list(range(5, 17))))
    replaced = []
    real = wrapper.dequantize_layers
    monkeypatch.setattr(wrapper, "dequantize_layers", lambda m: replaced.append(real(m)) or replaced[-1])
    outs = {}
    for flag in ([], ["--dequantize"]):
        out = tmp_path / ("g" + "".join(flag))
        code = main(["--quiet", "attribute", "--model", str(q4), "--dicts", str(tmp_path / "tc"),
                     "--prompt", prompt, "--out", str(out), *flag])
        assert code == 0, capsys.readouterr().err
        outs[bool(flag)] = Graph.load(out)
    assert len(replaced) == 1 and replaced[0] >= 7 * model.n_layers  # only the flagged run
    a, b = outs[False], outs[True]
    assert a.keys == b.keys and a.n_edges > 50
    assert abs(a.adjacency - b.adjacency).max() <= 1e-4 * abs(a.adjacency).max()
    assert np.isfinite(b.adjacency.data).all()
