"""Random-weight models at published configurations, and sparse random transcoders.

For the scale benchmark (``benchmarks/scale.py``) and the scale tests: real
architectures and sizes without downloading weights.

Algorithm:
  1. ``make_config_model``: the published config dict of a model
     (``PUBLISHED``, plus overrides) is instantiated through mlx-lm's model
     classes with seeded random weights (mlx-lm's initialisers), norm weights
     and biases get seeded noise (so norm scales are non-trivial), the
     parameters are stored in ``dtype`` (and optionally quantized with mlx-lm's
     affine ``bits``-bit quantization), and saved with ``save_model`` /
     ``save_config`` beside a word-level tokenizer whose vocabulary has exactly
     the config's ``vocab_size`` ids (words ``w4`` … after the 4 special
     tokens), so every token id decodes.
  2. ``sparse_transcoders``: one random transcoder per layer (mlp_in ->
     mlp_out, W_enc ~ N(0, 1/d), W_dec ~ N(0, 1/m)); each layer's encoder
     bias is set from a calibration prompt so that about ``l0`` latents fire
     per token: b = −quantile(x·W_enc, 1 − l0/m) over the prompt's tokens.
  3. ``sparse_clt``: one cross-layer transcoder over every layer (mlp_in of
     layer i -> mlp_out of every layer j >= i; W_dec(i→j) ~ N(0, 1/(m·(L−i))),
     so a latent's total write has the per-layer transcoders' scale), encoder
     biases calibrated per layer as in step 2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from attribution.sites import Site

PUBLISHED: dict[str, dict] = {
    "gpt2-small": {
        "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
        "n_positions": 1024, "layer_norm_epsilon": 1e-5, "vocab_size": 50257,
        "architectures": ["GPT2LMHeadModel"]},
    "qwen3-0.6b": {
        "model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "architectures": ["Qwen3ForCausalLM"]},
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "architectures": ["LlamaForCausalLM"],
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "gemma-2-2b": {
        "model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26, "intermediate_size": 9216,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
        "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True, "architectures": ["Gemma2ForCausalLM"]},
}
"""Published configs (config.json fields mlx-lm reads) of the benchmarked models."""


def published_config(name: str, **overrides) -> dict:
    """A copy of ``PUBLISHED[name]`` with bos/eos ids and ``overrides`` applied."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(PUBLISHED)}")
    cfg = copy.deepcopy(PUBLISHED[name])
    cfg.update(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    cfg.update(overrides)
    return cfg


def param_count(config: dict) -> int:
    """Number of parameters of the model ``config`` describes (built lazily, nothing evaluated)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    return sum(int(np.prod(p.shape)) for _, p in tree_flatten(model.parameters()))


def make_config_model(config: dict, out_dir: str | Path, *, seed: int = 0, dtype: str = "float32",
                      bits: int | None = None, group_size: int = 64) -> Path:
    """Build, perturb, cast (and quantize) a random model of ``config``; save it (module docstring)."""
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    from attribution.tokenizer import SPECIAL_TOKENS, save_word_level_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    n_words = int(config["vocab_size"]) - len(SPECIAL_TOKENS)
    save_word_level_tokenizer([f"w{i + len(SPECIAL_TOKENS)}" for i in range(n_words)], out)
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    flat = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed + 1), len(flat))
    model.update(tree_unflatten([(n, p + mx.random.normal(p.shape, key=keys[i]) * 0.2)
                                 for i, (n, p) in enumerate(flat) if p.ndim == 1]))
    model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    if bits is not None:
        model, config = quantize_model(model, config, group_size, bits)
    save_model(out, model)
    save_config(config, out / "config.json")
    return out


@dataclass(eq=False)
class SparseTranscoder:
    """A random per-layer transcoder (mlp_in -> mlp_out) with a ReLU of a per-layer bias."""

    in_site: Site
    out_site: Site
    W_enc: mx.array
    """[d, m] encoder."""
    b_enc: mx.array
    """[m] encoder bias (sets the sparsity)."""
    W_dec: mx.array
    """[m, d] decoder rows (write vectors)."""
    b_dec: mx.array
    """[d] decoder bias."""
    name: str = ""

    W_skip = None

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_acts(self, x):
        return x @ self.W_enc + self.b_enc

    def activation(self, pre):
        return mx.maximum(pre, 0)

    def encode(self, x):
        return self.activation(self.pre_acts(x))

    def decode(self, f):
        return f @ self.W_dec + self.b_dec

    def parameters(self) -> dict:
        """The arrays (for dictionary digests)."""
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.parameters().values())


def sparse_transcoders(model, width: int, l0: float, calib_tokens, *, seed: int = 0,
                       dtype=mx.float32) -> list[SparseTranscoder]:
    """One transcoder per layer with about ``l0`` active latents per token (module docstring)."""
    from attribution.model.run import capture

    if not 0 < l0 < width:
        raise ValueError(f"l0 must lie in (0, width={width}), got {l0}")
    toks = mx.array([list(calib_tokens)])
    acts = capture(model, toks, [Site(l, "mlp_in") for l in range(model.n_layers)])
    d = model.d_model
    out = []
    for l in range(model.n_layers):
        k = mx.random.split(mx.random.key(seed * 1000 + l), 3)
        w_enc = (mx.random.normal((d, width), key=k[0]) / d**0.5).astype(dtype)
        w_dec = (mx.random.normal((width, d), key=k[1]) / width**0.5).astype(dtype)
        b_dec = (mx.random.normal((d,), key=k[2]) * 0.01).astype(dtype)
        pre = np.asarray((acts[Site(l, "mlp_in")][0].astype(dtype) @ w_enc).astype(mx.float32))
        b_enc = mx.full((width,), _calibrated_bias(pre, l0, width), dtype=dtype)
        mx.eval(w_enc, w_dec, b_dec, b_enc)
        out.append(SparseTranscoder(Site(l, "mlp_in"), Site(l, "mlp_out"), w_enc, b_enc, w_dec, b_dec,
                                    name=f"tc_L{l}"))
    return out


def _calibrated_bias(pre: np.ndarray, l0: float, width: int) -> float:
    """The bias under which about ``l0`` of ``width`` latents exceed 0 per token (step 2)."""
    return -float(np.quantile(pre, 1.0 - l0 / width))


def sparse_clt(model, width: int, l0: float, calib_tokens, *, seed: int = 0, dtype=mx.float32):
    """A ReLU CLT over every layer with about ``l0`` active latents per layer and token.

    Returns ``attribution.testing_dicts.RandomCLT`` (the ``CrossLayerDictionary`` protocol);
    the decoders hold width·L(L+1)/2·d values, e.g. 3.9 GB for GPT-2 small at 16,384."""
    from attribution.model.run import capture
    from attribution.testing_dicts import RandomCLT

    if not 0 < l0 < width:
        raise ValueError(f"l0 must lie in (0, width={width}), got {l0}")
    n, d = model.n_layers, model.d_model
    acts = capture(model, mx.array([list(calib_tokens)]), [Site(l, "mlp_in") for l in range(n)])
    keys = mx.random.split(mx.random.key(seed * 1000 + 7), 2 * n + 1)
    w_enc, b_enc, decs = [], [], []
    for l in range(n):
        w = (mx.random.normal((d, width), key=keys[l]) / d**0.5).astype(dtype)
        pre = np.asarray((acts[Site(l, "mlp_in")][0].astype(dtype) @ w).astype(mx.float32))
        w_enc.append(w)
        b_enc.append(_calibrated_bias(pre, l0, width))
        dec = (mx.random.normal((width, n - l, d), key=keys[n + l]) / (width * (n - l)) ** 0.5)
        decs.append(dec.astype(dtype))
        mx.eval(w, decs[-1])
    W_enc = mx.stack(w_enc)
    b = mx.array(np.asarray(b_enc, np.float32))[:, None] * mx.ones((1, width))
    b_dec = (mx.random.normal((n, d), key=keys[-1]) * 0.01).astype(dtype)
    clt = RandomCLT([Site(i, "mlp_in") for i in range(n)], [Site(i, "mlp_out") for i in range(n)],
                    W_enc, b.astype(dtype), decs, b_dec, 0.0, name="clt")
    mx.eval(clt.W_enc, clt.b_enc, clt.b_dec)
    return clt


def random_prompt(vocab_size: int, n_tokens: int, seed: int = 0, bos: int = 2) -> list[int]:
    """``n_tokens`` seeded token ids (BOS first), drawn from the non-special ids."""
    ids = np.random.default_rng(seed).integers(4, vocab_size, size=n_tokens).tolist()
    ids[0] = bos
    return [int(i) for i in ids]


__all__ = ["PUBLISHED", "SparseTranscoder", "make_config_model", "param_count", "published_config",
           "random_prompt", "sparse_clt", "sparse_transcoders"]
