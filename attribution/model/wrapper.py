"""``Model``: a thin, typed view of an mlx-lm model, and ``load_model``.

The mlx-lm module is kept unchanged at ``model.module``; the wrapper only
reads it. Residual-stream conventions:

  resid_pre[0] = W_E[tokens] * embed_scale (+ W_pos[positions] for gpt2)
  logits       = softcap(final_norm(resid_post[-1]) @ W_U)
  softcap(z)   = c * tanh(z / c) for gemma2 (c = final_logit_softcapping),
                 identity otherwise; so ``W_U`` is linear in the norm output
                 only up to that elementwise cap.

``load_model`` reads three kinds of directory, all through mlx-lm's model
classes: mlx-lm directories (``mlx_lm.convert`` output) in float32, bfloat16
or float16; mlx-lm quantized directories (config ``quantization``: affine 4-
or 8-bit, ...); and Hugging Face ``transformers`` checkpoints (config.json +
model.safetensors or shards with an index), converted in memory (``hf``).

Algorithm (``load_model``):
  1. Check the path exists and holds config.json with a ``model_type`` that
     mlx-lm has a model class for, safetensors weights (PyTorch pickles are
     refused: never unpickled) and a tokenizer vocabulary file; else raise a
     specific error naming the fix (before any weight is read).
  2. Read the safetensors headers (``checkpoint.scan_weights``): tensor
     names and dtypes, which library wrote them, shards complete.
  3. ``hf.check_config`` refuses settings mlx-lm would compute differently;
     ``hf.config_overrides`` fills what transformers >= 5 configs nest or omit.
  4. Load with ``mlx_lm.utils.load_model`` (offline, lazily) with those
     overrides and a model factory whose ``sanitize`` first applies
     ``hf.rename_weights`` (GPT-2's ``transformer.`` names, tied heads,
     buffers), then the class's own; any error inside mlx-lm becomes one line:
     weights that do not fit the config (missing / extra / misshapen
     parameters, with a hint for quantized weights without a quantization
     config, adapters and multimodal checkpoints), an unreadable safetensors
     file, a config the model class rejects.
  5. Cast floating parameters to ``dtype`` (float32 by default; packed
     quantized weights stay packed) before they are first evaluated
     (``precision``): attribution arithmetic is float32 from here on.
  6. Check every float parameter (quantized scales and biases included) for
     NaN/inf: one reduction per tensor, evaluated together.
  6b. ``dequantize=True``: quantized layers become float32 layers of their
     dequantized weights (``dequant.dequantize_layers``; on a CPU about 30x
     faster, at float32 memory).
  7. Load the tokenizer: the class named in tokenizer_config.json when it is
     the generic fast tokenizer (transformers 5 would otherwise pick a
     model-type tokenizer class that rewrites our word-level pre-tokenizer),
     else ``mlx_lm.utils.load_tokenizer``.
  8. Wrap: locate blocks, attention/MLP/norm handles, embeddings, final norm;
     ``load_info`` records what was read and changed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mlx.core as mx

from attribution.errors import (
    ModelNotFoundError,
    NotAModelError,
    TokenizerNotFoundError,
    UnsupportedArchitectureError,
    UnsupportedModelTypeError,
    WeightsMismatchError,
)
from attribution.model import hf, integrity, precision
from attribution.model.arch import (
    SUPPORTED_MODEL_TYPES,
    LayerHandles,
    find_attr,
    inner_model,
    layer_handles,
)
from attribution.model.checkpoint import WeightFiles, scan_weights
from attribution.model.dequant import dequantize_layers
from attribution.model.tokens import as_tokens

_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


@dataclass(frozen=True)
class LoadInfo:
    """What ``load_model`` read and changed (``Model.load_info``)."""

    writer: str
    """"mlx-lm" (every safetensors file tagged by mlx) or "transformers" (anything else)."""
    stored_dtypes: tuple[str, ...]
    """Float dtypes in the files, e.g. ("bfloat16",); packed quantized weights are not floats."""
    dtype: str
    """Float dtype of the loaded parameters ("float32" unless ``load_model(dtype=...)``);
    several joined by "+" when ``dtype=None`` kept a mix."""
    quantization: dict | None
    """mlx-lm's ``quantization`` config (group_size, bits, mode, per-layer entries), or None."""
    config_fixes: tuple[str, ...]
    """Config keys filled in for mlx-lm (``hf.config_overrides``), e.g. ("rope_theta",)."""
    weight_renames: tuple[str, ...]
    """One note per kind of weight-name change (``hf.rename_weights``), before ``sanitize``."""


class Model:
    """An mlx-lm causal LM with named dimensions, weights and hook handles."""

    def __init__(self, module, config: dict, tokenizer, path: Path | None = None,
                 load_info: LoadInfo | None = None) -> None:
        self.module = module
        self.config = dict(config)
        self.tokenizer = tokenizer
        self.path = path
        self.load_info = load_info
        self.arch: str = str(config.get("model_type", type(module).__module__.rsplit(".", 1)[-1]))
        self._handles: tuple = ((), [])
        inner = inner_model(module)
        self._embedding = find_attr(
            inner, ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embed_in"))
        if self._embedding is None or not self.layers:
            raise UnsupportedArchitectureError(
                f"cannot find the token embedding or the blocks of {type(module).__module__}; "
                "add the attribute names to attribution/model/wrapper.py and arch.py"
            )
        self._pos_embedding = find_attr(inner, ("wpe", "embed_positions"))
        self.final_norm = find_attr(inner, ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm"))
        attn = self.layers[0].attn if self.layers else None
        self.n_layers = len(self.layers)
        self.n_heads = int(_first(attn, ("n_heads", "n_head", "num_heads"), config,
                                  ("num_attention_heads", "n_head")))
        self.n_kv_heads = int(_first(attn, ("n_kv_heads", "num_key_value_heads"), config,
                                     ("num_key_value_heads",)) or self.n_heads)
        self.d_model = int(config.get("hidden_size") or config.get("n_embd")
                           or _dense_weight(self._embedding).shape[1])
        self.d_head = int(_first(attn, ("head_dim",), config, ("head_dim",))
                          or self.d_model // self.n_heads)
        self.vocab_size = int(_dense_weight(self._embedding).shape[0])
        # Capped at a sliding window that mlx-lm's class ignores: beyond it the forward would
        # silently differ from the checkpoint's own (hf.context_limit).
        self.max_context: int | None = hf.context_limit(config)

    @property
    def layers(self) -> list[LayerHandles]:
        """Per-block handles (``.block``, ``.attn``, ``.mlp``, ``.norms``, ...).

        Rebuilt when a block's or attention's children are replaced (e.g. an MLP
        swapped for a transcoder), so hooks always attach to the live modules.
        """
        blocks = self.module.layers
        key = tuple(_child_ids(b) for b in blocks)
        if key != self._handles[0]:
            self._handles = (key, [layer_handles(i, b) for i, b in enumerate(blocks)])
        return self._handles[1]

    # ----------------------------------------------------------------- tokens
    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of ``text``; ``bos`` keeps/adds the BOS token, False removes it."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=True))
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if bos_id is None:
            return ids
        has = bool(ids) and ids[0] == bos_id
        if bos and not has:
            ids = [bos_id] + ids
        elif not bos and has:
            ids = ids[1:]
        return ids

    def decode(self, ids) -> str:
        """Text of a 1-D id sequence."""
        return self.tokenizer.decode([int(i) for i in _flat(ids)])

    def to_str_tokens(self, ids) -> list[str]:
        """One string per token id, spaced as it reads inside a text (" Mary", not "Mary":
        decoding ids one at a time drops the spacing of word-level and SentencePiece
        tokenizers; see ``attribution.model.token_strings``)."""
        from attribution.model.token_strings import token_strings

        return token_strings(self, [int(i) for i in _flat(ids)])

    # ---------------------------------------------------------------- forward
    def __call__(self, tokens) -> mx.array:
        """Logits [B,T,V] of int tokens [B,T] (a 1-D sequence gets a batch axis)."""
        return self.module(as_tokens(tokens, self))

    def embed(self, tokens) -> mx.array:
        """The residual-stream input resid_pre[0] [B,T,d], computed by the model itself."""
        from attribution.model.run import capture
        from attribution.sites import Site

        site = Site(0, "resid_pre")
        return capture(self, tokens, [site])[site]

    # ---------------------------------------------------------------- weights
    @property
    def W_E(self) -> mx.array:
        """Token embedding [vocab, d] (before ``embed_scale``)."""
        return _dense_weight(self._embedding)

    @property
    def dtype(self) -> mx.Dtype:
        """Float dtype of the activations: the embedding's (its scales' when quantized)."""
        emb = self._embedding
        return (emb["scales"] if "scales" in emb else emb.weight).dtype

    @property
    def quantized(self) -> bool:
        """Whether any layer holds packed quantized weights (``mx.vmap`` cannot map their
        matmuls in MLX 0.32: batched code must tile instead)."""
        return any("scales" in m for _, m in self.module.named_modules() if isinstance(m, dict))

    @property
    def W_pos(self) -> mx.array | None:
        """Learned position embedding [n_positions, d] (gpt2), else None (rotary)."""
        return None if self._pos_embedding is None else _dense_weight(self._pos_embedding)

    @cached_property
    def embed_scale(self) -> float:
        """Factor on W_E rows in resid_pre[0]: sqrt(d) for Gemma (bf16-rounded in gemma3), else 1."""
        if not self.arch.startswith("gemma"):
            return 1.0
        s = math.sqrt(self.d_model)
        return float(mx.array(s, mx.bfloat16).astype(mx.float32)) if self.arch.startswith("gemma3") else s

    @property
    def W_U(self) -> mx.array:
        """Unembedding [d, vocab]: logits = softcap(final_norm(h) @ W_U) (tied -> W_E.T)."""
        head = find_attr(self.module, ("lm_head",))
        if head is None:
            head = find_attr(inner_model(self.module), ("embed_out",))
        return (_dense_weight(head) if head is not None else self.W_E).T

    @property
    def logit_softcap(self) -> float | None:
        """Gemma2's final logit softcap c (logits = c*tanh(z/c)), else None."""
        cap = getattr(self.module, "final_logit_softcapping", None)
        return float(cap) if cap else None

    def W_O(self, layer: int) -> mx.array:
        """Per-head output projection [H, dh, d] of ``layer``: attn = sum_h z_h @ W_O[h] (+ bias).

        For Gemma2/3 the residual contribution is post_attention_layernorm of
        that sum, so head writes into the residual are not additive there.
        """
        from attribution.model.run import check_layer

        check_layer(self, layer)
        w = _dense_weight(self.layers[layer].out_proj)  # [d, H*dh] (nn.Linear layout)
        return w.T.reshape(self.n_heads, self.d_head, self.d_model)

    def __repr__(self) -> str:
        return (f"Model(arch={self.arch!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
                f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, vocab={self.vocab_size})")


def _child_ids(block) -> tuple:
    """Identity of a block's children and its attention's children (cheap fingerprint)."""
    ids = [id(block)] + [id(v) for v in block.values()]
    for name in ("self_attn", "attn", "attention", "self_attention"):
        if name in block and isinstance(block[name], dict):
            ids += [id(v) for v in block[name].values()]
    return tuple(ids)


def _first(module, attrs, config, keys):
    """The first set attribute of ``module`` among ``attrs``, else config value, else None."""
    for a in attrs:
        v = getattr(module, a, None) if module is not None else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    for k in keys:
        if config.get(k):
            return config[k]
    return None


def _flat(ids) -> list:
    if isinstance(ids, mx.array):
        ids = ids.tolist()
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise ValueError("pass one sequence of token ids, not a batch")
        ids = ids[0]
    return list(ids)


def _dense_weight(module) -> mx.array:
    """The module's weight, dequantised (in its scales' dtype) if it is a quantized layer."""
    if "scales" in module:
        kw = {"group_size": module.group_size, "bits": module.bits}
        if getattr(module, "mode", "affine") != "affine":  # mxfp4 / nvfp4 / mxfp8 have no biases
            kw["mode"] = module.mode
        return mx.dequantize(module.weight, module.scales, module.get("biases"), **kw)
    return module.weight


def _check_dir(path: Path) -> dict:
    if not path.exists():
        raise ModelNotFoundError(
            f"model path {str(path)!r} does not exist; pass a local mlx-lm or Hugging Face "
            "model directory (config.json + *.safetensors + tokenizer files), e.g. one made by "
            "attribution.tiny.make_tiny_model"
        )
    cfg_path = path / "config.json"
    if not path.is_dir() or not cfg_path.exists():
        raise NotAModelError(
            f"{str(path)!r} is not a model directory: no config.json; point load_model "
            "at the folder holding config.json, *.safetensors and the tokenizer files"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotAModelError(f"{cfg_path} is not valid JSON ({exc}); fix or regenerate it") from exc
    if not isinstance(config, dict):
        raise NotAModelError(f"{cfg_path} holds a JSON {type(config).__name__}, not an object; "
                             "restore the checkpoint's own config.json")
    if "model_type" not in config:
        raise NotAModelError(f"{cfg_path} has no 'model_type'; it is not an mlx-lm/HF model config")
    if not list(path.glob("model*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles:
            raise NotAModelError(
                f"{str(path)!r} holds only PyTorch pickle weights ({', '.join(pickles[:2])}), which "
                "are never unpickled here; re-save them as safetensors (transformers: "
                "save_pretrained(dir, safe_serialization=True)) or convert with `mlx_lm.convert`")
        raise NotAModelError(
            f"{str(path)!r} has no model*.safetensors weights; convert the checkpoint with "
            "`mlx_lm.convert` or save it with mlx_lm.utils.save_model"
        )
    return config


# A directory needs one of these vocabulary sources; tokenizer_config.json alone names a
# class but holds no vocabulary, so transformers would fail later with an obscure message.
_TOKENIZER_SOURCES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
                      ("vocab.txt",), ("spiece.model",))
# mlx-lm's messages for weights that do not fit the model class (nn.Module.load_weights).
_MISMATCH = re.compile(r"parameters not in model|Missing \d+ parameters|Expected shape")


def _one_line(text: str, names: int = 3) -> str:
    """An mlx-lm / transformers message on one line, long parameter lists cut to ``names``."""
    head, sep, rest = str(text).partition(":")
    items = [t.strip().rstrip(",") for t in rest.split("\n") if t.strip()] if "\n" in rest else []
    if sep and len(items) > names:
        rest = " " + ", ".join(items[:names]) + f", ... ({len(items) - names} more)"
    return re.sub(r"\s+", " ", f"{head}{sep}{rest}").strip()


def _check_tokenizer_files(path: Path) -> None:
    if any(all((path / f).exists() for f in group) for group in _TOKENIZER_SOURCES):
        return
    if any(path.glob("*.tiktoken")):
        return
    looked = ", ".join(" + ".join(g) for g in _TOKENIZER_SOURCES) + ", *.tiktoken"
    also = " (tokenizer_config.json is there but holds no vocabulary)" if (
        path / "tokenizer_config.json").exists() else ""
    raise TokenizerNotFoundError(
        f"{str(path)!r} has no tokenizer files{also}: looked for {looked}; copy the tokenizer "
        "files of the original checkpoint (tokenizer.json, tokenizer_config.json, ...) into it")


def _check_model_type(path: Path, config: dict) -> None:
    if config.get("model_file"):
        return  # custom code: mlx-lm decides (and refuses without trust_remote_code)
    from mlx_lm.utils import _get_classes

    try:
        _get_classes(config)
    except ValueError as exc:
        raise UnsupportedModelTypeError(
            f"mlx-lm could not load {str(path)!r}: {path / 'config.json'} has model_type "
            f"{config['model_type']!r}, which is not a supported architecture (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}, or another module of mlx_lm.models); fix "
            "model_type or convert the checkpoint with mlx_lm.convert") from exc


_MISSING_ARG = re.compile(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)")
# Quantization methods mlx-lm's loader converts (utils.load_model); others leave extra tensors.
_MLX_QUANT_METHODS = ("bitnet", "mxfp4", "mxfp8", "fp8", "compressed-tensors", "modelopt", "awq", "gptq")


def _mismatch_hint(config: dict, files: WeightFiles) -> str:
    """Why weights may not fit: the likeliest cause we can see from names and config."""
    names = files.names
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if any(n.startswith("base_model.model.") for n in names):
        return ("these are adapter (PEFT/LoRA) weights, not a model: merge the adapter into its "
                "base model and save that")
    if any(n.startswith(("language_model.", "model.language_model.", "vision_tower.",
                         "model.vision_tower.")) for n in names):
        return ("this is a multimodal checkpoint: load its text model (a config with the text "
                "model_type, e.g. gemma3_text) or convert it with mlx_lm.convert")
    if method and method not in _MLX_QUANT_METHODS:
        return (f"the checkpoint is quantized with {method!r}, which mlx-lm cannot read: use the "
                "unquantized checkpoint (quantize it with `mlx_lm.convert -q` if needed)")
    if files.quantized and "quantization" not in config and not method:
        return ("the weights are quantized (*.scales tensors) but config.json has no "
                "'quantization' entry: restore the config.json that mlx_lm.convert wrote")
    return ("the config and weights come from different checkpoints: restore the checkpoint's own "
            "config.json or re-convert it")


class _Factory:
    """mlx-lm ``get_model_classes``: the real classes, with ``hf.rename_weights`` before sanitize.

    The model instance gets an instance-level ``sanitize`` (removed again by
    ``detach``), so its class, parameters and module path stay mlx-lm's own."""

    def __init__(self) -> None:
        self.notes: tuple[str, ...] = ()

    def __call__(self, config: dict):
        from mlx_lm.utils import _get_classes

        model_cls, args_cls = _get_classes(config)

        def build(args):
            module = model_cls(args)
            own = getattr(module, "sanitize", None)

            def sanitize(weights):
                weights, self.notes = hf.rename_weights(config, weights)
                return own(weights) if own is not None else weights

            object.__setattr__(module, "sanitize", sanitize)
            return module

        return build, args_cls

    @staticmethod
    def detach(module) -> None:
        if "sanitize" in vars(module):
            object.__delattr__(module, "sanitize")


def _mlx_load(path: Path, config: dict, files: WeightFiles, overrides: dict, dtype):
    """``mlx_lm.utils.load_model`` + cast, every failure turned into one line naming the fix.

    Returns (module, config as mlx-lm read it, weight-rename notes)."""
    from mlx_lm.utils import load_model as mlx_load_model

    model_type = config.get("model_type")
    factory = _Factory()
    try:
        # lazy: the float32 cast is part of the first evaluation, so no evaluated bf16 copy
        # of the weights is kept next to the float32 one (precision.cast_floats).
        module, config = mlx_load_model(path, lazy=True, model_config=dict(overrides),
                                        get_model_classes=factory)
        factory.detach(module)
        if dtype is not None:
            precision.cast_floats(module, dtype)
        mx.eval(module.parameters())
        return module, config, factory.notes
    except MemoryError:
        raise
    except Exception as exc:
        msg = _one_line(str(exc) or type(exc).__name__)
        if isinstance(exc, ValueError) and _MISMATCH.search(str(exc)):
            raise WeightsMismatchError(
                f"mlx-lm could not load {str(path)!r}: the weights in model*.safetensors do not "
                f"fit {path / 'config.json'} (model_type {model_type!r}): {msg}; "
                f"{_mismatch_hint(config, files)} (supported architectures: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)})"
            ) from exc
        if isinstance(exc, RuntimeError) and ("safetensors" in str(exc).lower()
                                              or "[read]" in str(exc) or "[load]" in str(exc)):
            raise NotAModelError(
                f"mlx-lm could not load {str(path)!r}: a model*.safetensors file is unreadable "
                f"({msg}); re-download or re-convert the checkpoint") from exc
        if isinstance(exc, (TypeError, KeyError, AttributeError)):
            missing = _MISSING_ARG.search(str(exc)) if isinstance(exc, TypeError) else None
            what = (f"it lacks {missing.group(1)}" if missing else
                    f"missing key {msg}" if isinstance(exc, KeyError) else msg)
            raise NotAModelError(
                f"mlx-lm could not load {str(path)!r}: config.json does not describe a valid "
                f"{model_type} model ({what}); restore the checkpoint's own config.json") from exc
        raise NotAModelError(
            f"mlx-lm could not load {str(path)!r}: {msg}; check that config.json and the "
            "weights belong together, or re-convert the checkpoint with mlx_lm.convert") from exc


def _load_tokenizer(path: Path):
    try:
        return _load_tokenizer_files(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise NotAModelError(
            f"could not load the tokenizer in {str(path)!r} "
            f"({_one_line(str(exc) or type(exc).__name__)}); the tokenizer files are corrupt or "
            "of another model: copy them again from the original checkpoint") from exc


def _load_tokenizer_files(path: Path):
    tok_cfg = path / "tokenizer_config.json"
    cls_name = json.loads(tok_cfg.read_text()).get("tokenizer_class") if tok_cfg.exists() else None
    if cls_name in _GENERIC_TOKENIZERS and (path / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(path)._tokenizer


def load_model(path: str | os.PathLike, *, dtype: str | mx.Dtype | None = "float32",
               check_weights: bool = True, dequantize: bool = False) -> Model:
    """Load a local mlx-lm or Hugging Face model directory (weights, config, tokenizer).

    Accepts mlx-lm directories (float32 / bfloat16 / float16, or quantized with
    a ``quantization`` config) and transformers checkpoints (config.json +
    model.safetensors or index + shards) of every architecture mlx-lm has a
    class for; see the module docstring for the steps.

    ``dtype``: float dtype of the loaded parameters. "float32" (default) makes
    every activation, gradient and graph float32 (``precision``); packed
    quantized weights stay packed. None keeps the checkpoint's dtypes.
    ``dequantize``: turn a quantized checkpoint's layers into float32 ones at load (on a
    CPU MLX's quantized matmul is single-threaded, about 30x slower; memory then grows to
    the float32 model's). ``load_info.quantization`` still records the file's quantization.
    ``check_weights``: refuse weights holding NaN or inf (``NonFiniteError``);
    one reduction per tensor, so it costs a fraction of reading the file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = precision.resolve_dtype(dtype)
    p = Path(path).expanduser()
    config = _check_dir(p)
    _check_model_type(p, config)
    _check_tokenizer_files(p)
    files = scan_weights(p)
    where = str(p / "config.json")
    hf.check_config(config, where)
    overrides = hf.config_overrides(config, files.names, where)
    module, config, renames = _mlx_load(p, config, files, overrides, target)
    if check_weights:
        integrity.check_weights(module, where=str(p))
    quant = config.get("quantization")
    if dequantize and quant:  # float32 speed on a CPU, float32 memory (dequant module docstring)
        dequantize_layers(module)
    info = LoadInfo(
        writer=files.writer, stored_dtypes=files.float_dtypes,
        dtype="+".join(precision.float_dtypes(module)) or "none",
        quantization=dict(quant) if isinstance(quant, dict) else None,
        config_fixes=tuple(sorted(overrides)), weight_renames=renames)
    return Model(module, config, _load_tokenizer(p), path=p, load_info=info)
