"""Random dictionaries satisfying ``attribution.dictionary`` (for tests and benchmarks).

They let attribution be tested without importing ``sae``. Construction:
  1. W_enc ~ N(0, 1/d_in) · enc_scale, b_enc = ``bias`` (negative -> sparse:
     only inputs with a large enough projection activate), W_dec ~ N(0, 1/m)·dec_scale,
     b_dec ~ N(0, 0.01).
  2. ``activation`` is a JumpReLU with threshold ``threshold`` (0 = ReLU),
     elementwise, so the CLT's joint nonlinearity is exact per layer.
  3. A skip transcoder adds W_skip ~ N(0, 1/d_in)·skip_scale.
Nothing is built at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from attribution.sites import Site


def _normal(key, shape, scale):
    return mx.random.normal(shape, key=key) * scale


@dataclass(eq=False)
class RandomDictionary:
    """A per-layer SAE / transcoder / skip transcoder with random weights."""

    in_site: Site
    out_site: Site
    W_enc: mx.array
    b_enc: mx.array
    W_dec_: mx.array
    b_dec: mx.array
    W_skip_: mx.array | None = None
    threshold: float = 0.0
    name: str = ""
    d_in: int = field(init=False)
    d_out: int = field(init=False)
    width: int = field(init=False)

    def __post_init__(self) -> None:
        self.d_in, self.width = (int(s) for s in self.W_enc.shape)
        self.d_out = int(self.W_dec_.shape[1])

    def pre_acts(self, x):
        return x @ self.W_enc + self.b_enc

    def activation(self, pre):
        return pre * (pre > self.threshold).astype(pre.dtype)

    def encode(self, x):
        return self.activation(self.pre_acts(x))

    def decode(self, f):
        return f @ self.W_dec_ + self.b_dec

    @property
    def W_dec(self):
        return self.W_dec_

    @property
    def W_skip(self):
        return self.W_skip_


@dataclass(eq=False)
class RandomCLT:
    """A cross-layer transcoder with random weights (ReLU / JumpReLU, elementwise)."""

    in_sites: list
    out_sites: list
    W_enc: mx.array
    b_enc: mx.array
    W_dec_layers: list
    b_dec: mx.array
    threshold: float = 0.0
    name: str = ""
    d_in: int = field(init=False)
    d_out: int = field(init=False)
    width: int = field(init=False)

    def __post_init__(self) -> None:
        _, self.d_in, self.width = (int(s) for s in self.W_enc.shape)
        self.d_out = int(self.b_dec.shape[1])

    def pre_acts_at(self, i, x):
        return x @ self.W_enc[i] + self.b_enc[i]

    def activation(self, pre):
        return pre * (pre > self.threshold).astype(pre.dtype)

    def decoder(self, i):
        return self.W_dec_layers[i]

    def decode_to(self, i, j, f):
        return f @ self.W_dec_layers[i][:, j - i, :]


def random_dictionary(d_model: int, layer: int, width: int, *, seed: int = 0,
                      kind: str = "transcoder", site: str = "resid_post", bias: float = -0.5,
                      enc_scale: float = 1.0, dec_scale: float = 1.0, skip_scale: float = 0.3,
                      threshold: float = 0.0) -> RandomDictionary:
    """kind: ``transcoder`` (mlp_in -> mlp_out), ``skip`` (with W_skip) or ``sae`` (at ``site``)."""
    k = mx.random.split(mx.random.key(seed), 4)
    if kind == "sae":
        ins = outs = Site(layer, site)  # type: ignore[arg-type]
    else:
        ins, outs = Site(layer, "mlp_in"), Site(layer, "mlp_out")
    skip = _normal(k[3], (d_model, d_model), skip_scale / d_model**0.5) if kind == "skip" else None
    d = RandomDictionary(
        ins, outs, _normal(k[0], (d_model, width), enc_scale / d_model**0.5), mx.full((width,), bias),
        _normal(k[1], (width, d_model), dec_scale / width**0.5), _normal(k[2], (d_model,), 0.01),
        skip, threshold, name=f"{kind}_L{layer}")
    mx.eval(d.W_enc, d.W_dec_, d.b_dec)
    return d


def random_transcoders(model, width: int = 64, *, seed: int = 0, kind: str = "transcoder",
                       **kw) -> list[RandomDictionary]:
    """One random dictionary per layer of ``model``."""
    return [random_dictionary(model.d_model, l, width, seed=seed + l, kind=kind, **kw)
            for l in range(model.n_layers)]


def random_clt(model, width: int = 32, *, seed: int = 0, bias: float = -0.5,
               dec_scale: float = 1.0, threshold: float = 0.0) -> RandomCLT:
    """A random CLT over every layer of ``model`` (mlp_in -> mlp_out)."""
    n, d = model.n_layers, model.d_model
    k = mx.random.split(mx.random.key(seed), n + 2)
    decs = [_normal(k[i + 2], (width, n - i, d), dec_scale / (width * (n - i)) ** 0.5) for i in range(n)]
    clt = RandomCLT([Site(i, "mlp_in") for i in range(n)], [Site(i, "mlp_out") for i in range(n)],
                    _normal(k[0], (n, d, width), 1 / d**0.5), mx.full((n, width), bias), decs,
                    _normal(k[1], (n, d), 0.01), threshold, name="clt")
    mx.eval(clt.W_enc, *decs, clt.b_dec)
    return clt


__all__ = ["RandomCLT", "RandomDictionary", "random_clt", "random_dictionary", "random_transcoders"]
