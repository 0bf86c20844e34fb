"""A hand-compiled GPT-2 organism whose circuit is known at the level of MLP neurons.

Every other organism has a component-level ground truth (heads, MLPs). Here the weights
are written by hand, so the *features* (MLP hidden units) and the edges between them are
known by construction, and feature-circuit recovery (node/edge AUC, pruned-circuit
precision and recall, ``circuits.bench.feature_recovery``) can be scored.

The task ("class match"): a prompt ``<bos> x f_1 .. f_n y`` with x, y drawn from two word
classes (A, B) and f_i filler words; the answer is ``same`` when x and y share a class,
else ``diff``. The counterfactual prompt swaps x for a word of the other class, which flips
the answer.

Construction (``build_weights``; d_model 64, so 32 orthonormal, zero-mean directions
D_k = (e_2k - e_2k+1)/sqrt2, which LayerNorm's mean subtraction leaves alone):
  1. Embeddings: every token writes M·D_bias (M = 40) plus 2·D_token; position 1 adds
     4·D_pos1. The large constant D_bias keeps every LayerNorm scale within about 1% of a
     constant, so ablating one unit barely moves the others' normalisation. (Weights that
     read normalised activations scale with M/20; the numbers below are for M = 20.)
  2. Layer 0 attention is zero. Layer 0 MLP plants five units: ``A`` and ``B`` (fire on
     the words of one class, write D_cA / D_cB), and three distractors that are active
     but read by nothing that reaches the answer: ``content`` (any class word, writes
     D_cont), ``filler`` (filler words) and ``always0`` (every token, reads D_bias).
  3. Layer 1, head 0 attends from every position to position 1 (query bias · key on
     D_pos1, score about 25) and copies D_cA -> D_pA, D_cB -> D_pB, D_cont -> D_pC.
  4. Layer 1 MLP plants four combiners ``AA``, ``AB``, ``BA``, ``BB`` (``XY`` fires when
     D_pX and D_cY are both present: bias cancels one of them but not both) writing
     D_token(same) (AA, BB) or D_token(diff) (AB, BA), and three distractors: ``cont1``
     (D_pC and D_cont; writes a junk direction), ``any1`` (reads D_cA + D_cB, the *true*
     layer-0 outputs, writes junk) and ``always1`` (reads D_always). Junk directions are
     orthogonal to every embedding, and the head is tied (GPT-2), so distractors have no
     direct effect on any logit.
  5. All other MLP units are dead (bias -30; GELU(-30) = 0 in float32); LayerNorm gains are
     1 and biases 0. Active units sit at pre-activations >= ~7 and inactive ones <= ~-7,
     where GELU equals ReLU to float32 precision, so the MLP *is* a ReLU transcoder
     (``true_transcoders``) and error nodes are ~0.

Ground truth of one prompt (``feature_truth``), with cx, cy the classes of x and y and
``last`` the final position: true feature nodes (0, 1, cx), (0, last, cy), (1, last, cxcy);
true edges token(1) -> (0, 1, cx), token(last) -> (0, last, cy), (0, 1, cx) -> (1, last,
cxcy) (through the head), (0, last, cy) -> (1, last, cxcy) (residual) and (1, last, cxcy)
-> every logit node. Every other active unit is a distractor. Tests verify this by brute
force ablation: zeroing a true unit flips the answer, zeroing a distractor does not move
the logit difference.

Trained dictionaries (``match_features``): a learned latent is matched to the planted unit
of its layer with the largest mean of encoder and decoder cosine (if that mean reaches
``threshold``); ``truth_for_dictionaries`` then maps the truth onto learned feature ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import attribution  # noqa: F401  (optimised BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from attribution.graph import FeatureNode, LogitNode, NodeKey, TokenNode
from attribution.sites import Site
from circuits.errors import OrganismError
from circuits.tasks.base import TaskData

FEATURE_TRUTH_SCHEMA = "mlx-circuits/feature-truth"
"""Schema name of ``feature_truth.json``."""


@dataclass(frozen=True)
class FeatureOrganismConfig:
    """Shape of the hand-compiled organism and its task."""

    class_a: tuple[str, ...] = ("cat", "dog", "cow", "pig")
    """Words of class A."""
    class_b: tuple[str, ...] = ("red", "blue", "green", "pink")
    """Words of class B."""
    fillers: tuple[str, ...] = ("the", "of", "and", "so")
    """Filler words between x and y (read only by the ``filler`` distractor)."""
    n_fillers: int = 2
    """Filler words per prompt; prompts have n_fillers + 3 tokens (BOS included)."""
    answers: tuple[str, str] = ("same", "diff")
    """Answer words: classes match, classes differ."""
    d_model: int = 64
    """Residual width (GPT-2 ``n_embd``; the MLP has 4x as many units). Needs 2 dims per
    direction: 14 fixed ones + one per vocabulary word."""
    n_head: int = 4
    """Attention heads per layer (only layer 1's head 0 is used)."""
    bias_scale: float = 40.0
    """M: the constant D_bias component of every embedding. It steadies the LayerNorm scales
    (ablating a unit changes them by O(1/M^2)); the weights that read normalised activations
    are scaled by M/20, so pre-activations do not depend on it."""

    def __post_init__(self) -> None:
        words = (*self.class_a, *self.class_b, *self.fillers, *self.answers)
        if len(set(words)) != len(words):
            raise OrganismError("feature organism: class, filler and answer words must be distinct")
        if not self.class_a or not self.class_b or not self.fillers:
            raise OrganismError("feature organism: classes and fillers need at least one word each")
        if self.n_fillers < 0:
            raise OrganismError(f"feature organism: n_fillers must be >= 0, got {self.n_fillers}")
        if self.d_model % self.n_head or self.d_model // self.n_head < 3:
            raise OrganismError(f"feature organism: d_model {self.d_model} must be a multiple of "
                                f"n_head {self.n_head} with head_dim >= 3")
        n_dirs = len(_FIXED_DIRS) + len(words)
        if 2 * n_dirs > self.d_model:
            raise OrganismError(
                f"feature organism: {n_dirs} directions need d_model >= {2 * n_dirs}, got "
                f"{self.d_model}; raise d_model or use fewer words")

    @property
    def words(self) -> tuple[str, ...]:
        """Vocabulary words in tokenizer order (after the special tokens)."""
        return (*self.class_a, *self.class_b, *self.fillers, *self.answers)

    @property
    def prompt_len(self) -> int:
        """Tokens per prompt, BOS included."""
        return self.n_fillers + 3


@dataclass(frozen=True)
class PlantedUnit:
    """One planted MLP unit (a ground-truth feature)."""

    layer: int
    """MLP layer (0 or 1)."""
    index: int
    """Hidden-unit index in the MLP (= feature id in the true transcoder)."""
    name: str
    """Role name: A, B, content, filler, always0 (layer 0); AA, AB, BA, BB, cont1, any1,
    always1 (layer 1)."""
    role: str
    """``circuit`` (on some prompt's answer path) or ``distractor`` (never is)."""


# Direction slots before the per-word token directions (index into the D_k basis).
_FIXED_DIRS = ("bias", "pos1", "bos", "cA", "cB", "cont", "fill", "always0", "pA", "pB", "pC",
               "junk_cont", "junk_any", "junk_always")
_L0 = ("A", "B", "content", "filler", "always0")
_L1 = ("AA", "AB", "BA", "BB", "cont1", "any1", "always1")
_CIRCUIT = {"A", "B", "AA", "AB", "BA", "BB"}
_STRIDE = 37  # planted units are spread over the MLP (index = (stride*i + offset) mod width)


def planted_units(config: FeatureOrganismConfig = FeatureOrganismConfig()) -> tuple[PlantedUnit, ...]:
    """The planted units of both layers (layer 0 first)."""
    width = 4 * config.d_model
    out = []
    for layer, names, offset in ((0, _L0, 5), (1, _L1, 11)):
        for i, name in enumerate(names):
            out.append(PlantedUnit(layer, (_STRIDE * i + offset) % width, name,
                                   "circuit" if name in _CIRCUIT else "distractor"))
    return tuple(out)


def unit(name: str, config: FeatureOrganismConfig = FeatureOrganismConfig()) -> PlantedUnit:
    """The planted unit called ``name``."""
    for u in planted_units(config):
        if u.name == name:
            return u
    raise OrganismError(f"no planted unit {name!r}; known: {', '.join(_L0 + _L1)}")


def _basis(config: FeatureOrganismConfig) -> dict[str, np.ndarray]:
    """Named orthonormal zero-mean directions: D_k = (e_2k - e_2k+1)/sqrt2."""
    names = [*_FIXED_DIRS, *(f"tok:{w}" for w in config.words)]
    eye = np.eye(config.d_model)
    return {n: (eye[2 * k] - eye[2 * k + 1]) / np.sqrt(2) for k, n in enumerate(names)}


def token_ids(config: FeatureOrganismConfig = FeatureOrganismConfig()) -> dict[str, int]:
    """Word -> token id (the word-level tokenizer puts 4 special tokens first)."""
    from attribution.tokenizer import SPECIAL_TOKENS

    return {w: len(SPECIAL_TOKENS) + i for i, w in enumerate(config.words)}


def build_weights(config: FeatureOrganismConfig = FeatureOrganismConfig()) -> dict[str, np.ndarray]:
    """float32 weights under mlx-lm's GPT-2 names (module docstring, steps 1-5)."""
    from attribution.tokenizer import SPECIAL_TOKENS

    d, width, dh = config.d_model, 4 * config.d_model, config.d_model // config.n_head
    D = _basis(config)
    ids = token_ids(config)
    vocab = len(SPECIAL_TOKENS) + len(config.words)
    m = config.bias_scale
    r = m / 20.0  # LayerNorm divides by ~M/8: reads scale with M so pre-activations do not
    w: dict[str, np.ndarray] = {}
    # 1. embeddings: constant bias direction + one direction per word (BOS has its own).
    wte = np.tile(m * D["bias"], (vocab, 1))
    wte[SPECIAL_TOKENS.index("<bos>")] += 2.0 * D["bos"]
    for word, t in ids.items():
        wte[t] += 2.0 * D[f"tok:{word}"]
    wpe = np.zeros((config.prompt_len + 8, d))
    wpe[1] = 4.0 * D["pos1"]
    w["model.wte.weight"], w["model.wpe.weight"] = wte, wpe
    for layer in range(2):
        p = f"model.h.{layer}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = np.ones(d), np.zeros(d)
        c_attn, b_attn = np.zeros((3 * d, d)), np.zeros(3 * d)
        c_proj, b_proj = np.zeros((d, d)), np.zeros(d)
        if layer == 1:  # 3. head 0: every query attends to position 1, copies class outputs
            b_attn[0] = 8.0                       # query (bias only)
            c_attn[d + 0] = 8.0 * r * D["pos1"]   # key reads D_pos1
            for j, (src, dst) in enumerate((("cA", "pA"), ("cB", "pB"), ("cont", "pC"))):
                c_attn[2 * d + j] = r * D[src]    # value dim j of head 0
                c_proj[:, j] = 2.5 * D[dst]       # output projection of that value dim
        assert dh > 2
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = c_attn, b_attn
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = c_proj, b_proj
        fc, b_fc = np.zeros((width, d)), np.full(width, -30.0)  # 5. dead units
        proj = np.zeros((d, width))
        for u in planted_units(config):
            if u.layer != layer:
                continue
            read, bias, write, scale = _unit_weights(u.name, config, D)
            read = read if u.name == "always0" else r * read  # always0 reads M * D_bias itself
            scale = scale * r if u.name in ("AA", "AB", "BA", "BB") else scale  # logit size
            fc[u.index], b_fc[u.index], proj[:, u.index] = read, bias, scale * write
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = fc, b_fc
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = proj, np.zeros(d)
    w["model.ln_f.weight"], w["model.ln_f.bias"] = np.ones(d), np.zeros(d)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _unit_weights(name: str, config: FeatureOrganismConfig, D: dict):
    """(read vector, bias, write direction, write scale) of one planted unit."""
    tok = lambda words: sum(D[f"tok:{x}"] for x in words)  # noqa: E731
    same, diff = D[f"tok:{config.answers[0]}"], D[f"tok:{config.answers[1]}"]
    table = {
        # layer 0: LayerNorm scales a token component of 2 to ~0.78, so 20 * 0.78 - 8 ~ +7.6.
        "A": (20 * tok(config.class_a), -8.0, D["cA"], 0.25),
        "B": (20 * tok(config.class_b), -8.0, D["cB"], 0.25),
        "content": (20 * tok(config.class_a + config.class_b), -8.0, D["cont"], 0.25),
        "filler": (20 * tok(config.fillers), -8.0, D["fill"], 0.25),
        "always0": (1.0 * D["bias"], 0.0, D["always0"], 0.25),
        # layer 1: each input contributes ~+14.7; the bias -22 needs both of them.
        "AA": (20 * (D["pA"] + D["cA"]), -22.0, same, 0.5),
        "AB": (20 * (D["pA"] + D["cB"]), -22.0, diff, 0.5),
        "BA": (20 * (D["pB"] + D["cA"]), -22.0, diff, 0.5),
        "BB": (20 * (D["pB"] + D["cB"]), -22.0, same, 0.5),
        "cont1": (20 * (D["pC"] + D["cont"]), -22.0, D["junk_cont"], 0.25),
        "any1": (20 * (D["cA"] + D["cB"]), -7.5, D["junk_any"], 0.25),
        "always1": (20 * D["always0"], -7.5, D["junk_always"], 0.25),
    }
    return table[name]


def model_config(config: FeatureOrganismConfig = FeatureOrganismConfig()) -> dict:
    """The GPT-2 config.json of the organism."""
    from attribution.tokenizer import SPECIAL_TOKENS

    n_pos = config.prompt_len + 8
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_ctx": n_pos,
            "n_embd": config.d_model, "n_head": config.n_head, "n_layer": 2, "n_positions": n_pos,
            "layer_norm_epsilon": 1e-5, "vocab_size": len(SPECIAL_TOKENS) + len(config.words),
            "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, "torch_dtype": "float32"}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_feature_organism(out_dir: str | Path,
                           config: FeatureOrganismConfig = FeatureOrganismConfig()) -> Path:
    """Write the organism as an mlx-lm GPT-2 directory (config.json, model.safetensors,
    tokenizer files, feature_truth.json describing the planted units); returns the path."""
    from attribution.tokenizer import save_word_level_tokenizer

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OrganismError(f"{out} exists and is not a directory; pass a directory path")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tok.") as tmp:
        save_word_level_tokenizer(list(config.words), tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, out / f.name)
    weights = {k: mx.array(v) for k, v in build_weights(config).items()}
    _atomic_write(out / "model.safetensors",
                  lambda p: mx.save_safetensors(p, weights, metadata={"format": "mlx"}))
    text = json.dumps(model_config(config), indent=2, sort_keys=True)
    _atomic_write(out / "config.json", lambda p: Path(p).write_text(text))
    card = {"schema": FEATURE_TRUTH_SCHEMA, "version": 1, "config": _config_dict(config),
            "units": [u.__dict__ for u in planted_units(config)], "token_ids": token_ids(config)}
    text2 = json.dumps(card, indent=2, sort_keys=True)
    _atomic_write(out / "feature_truth.json", lambda p: Path(p).write_text(text2))
    return out


def _config_dict(config: FeatureOrganismConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}


def read_config(model_dir: str | Path) -> FeatureOrganismConfig:
    """The ``FeatureOrganismConfig`` recorded in ``model_dir/feature_truth.json``."""
    path = Path(model_dir) / "feature_truth.json"
    if not path.is_file():
        raise OrganismError(f"{path} does not exist; build the organism with "
                            "circuits.organisms.feature_truth.build_feature_organism(dir)")
    card = json.loads(path.read_text())
    if card.get("schema") != FEATURE_TRUTH_SCHEMA:
        raise OrganismError(f"{path}: schema {card.get('schema')!r} is not {FEATURE_TRUTH_SCHEMA!r}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}
    return FeatureOrganismConfig(**cfg)


# ------------------------------------------------------------------ task ----
def class_of(word_id: int, config: FeatureOrganismConfig = FeatureOrganismConfig()) -> str:
    """"A" or "B" for a class word's token id."""
    ids = token_ids(config)
    if word_id in {ids[w] for w in config.class_a}:
        return "A"
    if word_id in {ids[w] for w in config.class_b}:
        return "B"
    raise OrganismError(f"token id {word_id} is not a class word of the feature organism")


def feature_task(n: int, seed: int = 0,
                 config: FeatureOrganismConfig = FeatureOrganismConfig()) -> TaskData:
    """``n`` class-match examples (module docstring) as ``TaskData`` (seeded)."""
    if n < 1:
        raise OrganismError(f"feature task: ask for n >= 1 examples, got {n}")
    from attribution.tokenizer import SPECIAL_TOKENS

    ids = token_ids(config)
    bos = SPECIAL_TOKENS.index("<bos>")
    rng = np.random.default_rng([seed, 15])
    classes = {"A": config.class_a, "B": config.class_b}
    clean, corrupted, answer, wrong, texts, ctexts = [], [], [], [], [], []

    def draw():
        cx, cy = rng.choice(["A", "B"], 2)
        x, y = rng.choice(classes[cx]), rng.choice(classes[cy])
        fill = list(rng.choice(config.fillers, config.n_fillers))
        return str(cx), str(cy), str(x), str(y), [str(f) for f in fill]

    for _ in range(n):
        cx, cy, x, y, fill = draw()
        x2 = str(rng.choice(classes["B" if cx == "A" else "A"]))
        words, cwords = [x, *fill, y], [x2, *fill, y]
        clean.append([bos] + [ids[t] for t in words])
        corrupted.append([bos] + [ids[t] for t in cwords])
        good, bad = (0, 1) if cx == cy else (1, 0)
        answer.append(ids[config.answers[good]])
        wrong.append(ids[config.answers[bad]])
        texts.append(" ".join(words))
        ctexts.append(" ".join(cwords))
    reference = []
    for _ in range(32):  # independent draws, for mean ablation
        _, _, x, y, fill = draw()
        reference.append([bos] + [ids[t] for t in (x, *fill, y)])
    return TaskData(task="class_match", clean=clean, corrupted=corrupted, answer=answer, wrong=wrong,
                    reference=reference, clean_text=tuple(texts), corrupted_text=tuple(ctexts),
                    info={"seed": seed, "n": n, "config": _config_dict(config)})


# ------------------------------------------------------------- dictionaries ----
def true_transcoders(model) -> dict[str, Any]:
    """Each MLP written as a ReLU transcoder L{l}.mlp_in -> L{l}.mlp_out (encoder = c_fc,
    decoder = c_proj), the ground-truth dictionary; keyed ``L{l}``."""
    from sae import ReLUDictionary

    out = {}
    for layer, block in enumerate(model.module.layers):
        mlp = block.mlp
        if not hasattr(mlp, "c_fc"):
            raise OrganismError(f"true_transcoders needs a GPT-2 MLP (c_fc, c_proj); layer {layer} "
                                f"has {type(mlp).__name__}; load the feature organism")
        d, width = mlp.c_fc.weight.shape[1], mlp.c_fc.weight.shape[0]
        tc = ReLUDictionary(d, width, d_out=d, in_site=Site(layer, "mlp_in"),
                            out_site=Site(layer, "mlp_out"))
        tc.W_enc, tc.b_enc = mx.array(mlp.c_fc.weight.T), mx.array(mlp.c_fc.bias)
        tc.W_dec, tc.b_dec = mx.array(mlp.c_proj.weight.T), mx.array(mlp.c_proj.bias)
        mx.eval(tc.parameters())
        out[f"L{layer}"] = tc
    return out


def unit_activations(model, tokens, layer: int) -> np.ndarray:
    """[T, width] MLP hidden activations GELU(c_fc(mlp_in)) of one prompt at ``layer``."""
    from attribution import capture

    site = Site(layer, "mlp_in")
    x = capture(model, mx.array(np.asarray(tokens, dtype=np.int32).reshape(1, -1)), [site])[site][0]
    mlp = model.module.layers[layer].mlp
    h = nn.gelu_approx(mlp.c_fc(x))  # GPT-2's MLP nonlinearity in mlx-lm
    return np.asarray(h, dtype=np.float64)


def ablated_logit_diff(model, tokens, layer: int, pos: int, index: int, answer: int,
                       wrong: int) -> tuple[float, float]:
    """(clean, ablated) logit[answer] - logit[wrong] at the last position when MLP unit
    ``index`` of ``layer`` is zeroed at position ``pos`` only (its write is subtracted from
    mlp_out there; everything downstream is recomputed)."""
    from attribution import Add, run

    toks = mx.array(np.asarray(tokens, dtype=np.int32).reshape(1, -1))
    act = float(unit_activations(model, tokens, layer)[pos, index])
    mlp = model.module.layers[layer].mlp
    delta = -act * mlp.c_proj.weight[:, index]
    clean = model(toks)[0, -1]
    abl = run(model, toks, interventions=[Add(Site(layer, "mlp_out"), delta, positions=[pos])]).logits[0, -1]
    return float(clean[answer] - clean[wrong]), float(abl[answer] - abl[wrong])


@dataclass(frozen=True)
class TranscoderSpec:
    """Transcoders trained on the organism's task activations (``train_task_transcoders``)."""

    arch: str = "topk"
    """Architecture (``sae.TrainConfig.arch``)."""
    width: int = 64
    """Latents per layer."""
    k: int = 4
    """Active latents per token (topk family); the organism has 1-4 active units per token."""
    tokens: int = 2 ** 21
    """Training tokens (epochs over the harvested prompts)."""
    n_prompts: int = 2000
    """Task prompts harvested (every position is a training token)."""
    seed: int = 0
    """Seed of the prompts (offset from the evaluation prompts') and of training."""


class TrainedTranscoders(NamedTuple):
    """Result of ``train_task_transcoders``."""

    dictionaries: dict
    """``L{l}`` -> transcoder L{l}.mlp_in -> L{l}.mlp_out, raw units."""
    inputs: dict
    """layer -> [N, d] mlp_in activations they were trained on (for ``match_features``)."""


def train_task_transcoders(model, spec: TranscoderSpec = TranscoderSpec(),
                           config: FeatureOrganismConfig = FeatureOrganismConfig()) -> TrainedTranscoders:
    """Train one transcoder per layer on the mlp_in / mlp_out activations of ``spec.n_prompts``
    task prompts (seed ``1000 + spec.seed``, disjoint from evaluation seeds below 1000)."""
    from sae import TrainConfig, train

    data = feature_task(spec.n_prompts, 1000 + spec.seed, config)
    sites = [Site(l, k) for l in range(2) for k in ("mlp_in", "mlp_out")]
    acts = task_activations(model, data, sites)
    cfg = TrainConfig(kind="transcoder", arch=spec.arch, width=spec.width, k=spec.k,
                      total_tokens=spec.tokens, batch_tokens=1024, warmup_steps=50, seed=spec.seed,
                      sites=(Site(0, "mlp_in"), Site(1, "mlp_in")))
    res = train(acts, cfg)
    dicts = {f"L{l}": d for l, d in enumerate(res.dictionaries)}
    return TrainedTranscoders(dicts, {l: acts[Site(l, "mlp_in")] for l in range(2)})


# ---------------------------------------------------------------- truth ----
@dataclass(frozen=True)
class FeatureTruth:
    """Ground-truth feature circuit of one prompt, in graph node keys.

    A ``LogitNode`` target is written ``LogitNode(pos, -1, "any")`` and stands for every
    logit node at that position (``canonical_edge``)."""

    nodes: frozenset
    """True ``FeatureNode`` keys."""
    edges: frozenset
    """True (source key, target key) pairs, logit targets canonical."""
    node_groups: tuple
    """One frozenset of graph keys per true unit (a singleton for the true transcoders;
    every latent matched to the unit for a trained dictionary, possibly empty)."""
    edge_groups: tuple
    """One frozenset of (source, target) pairs per true edge, grouped the same way."""
    distractors: frozenset = field(default_factory=frozenset)
    """Active planted distractor ``FeatureNode`` keys (for the ablation checks)."""

    @staticmethod
    def canonical_edge(source: NodeKey, target: NodeKey) -> tuple:
        """(source, target) with a logit target replaced by its position's ``any`` logit."""
        if isinstance(target, LogitNode):
            target = LogitNode(target.pos, -1, "any")
        return source, target

    def is_true_node(self, key: NodeKey) -> bool:
        """Whether ``key`` is a true feature node."""
        return key in self.nodes

    def is_true_edge(self, source: NodeKey, target: NodeKey) -> bool:
        """Whether source -> target is a true edge (logit targets match on position)."""
        return self.canonical_edge(source, target) in self.edges


def feature_truth(tokens, config: FeatureOrganismConfig = FeatureOrganismConfig()) -> FeatureTruth:
    """Truth of one clean prompt (module docstring), keyed by the planted units' ids."""
    toks = [int(t) for t in np.asarray(tokens).reshape(-1)]
    if len(toks) != config.prompt_len:
        raise OrganismError(f"feature truth: prompt has {len(toks)} tokens, the organism's task has "
                            f"{config.prompt_len}; pass a clean prompt from feature_task")
    last = len(toks) - 1
    cx, cy = class_of(toks[1], config), class_of(toks[last], config)
    u = {p.name: p for p in planted_units(config)}
    x0 = FeatureNode(0, 1, u[cx].index)
    y0 = FeatureNode(0, last, u[cy].index)
    xy1 = FeatureNode(1, last, u[cx + cy].index)
    logit = LogitNode(last, -1, "any")
    edges = {(TokenNode(1, toks[1]), x0), (TokenNode(last, toks[last]), y0),
             (x0, xy1), (y0, xy1), (xy1, logit)}
    fill_ids = set(token_ids(config)[f] for f in config.fillers)
    distract = set()
    for pos, t in enumerate(toks):
        distract.add(FeatureNode(0, pos, u["always0"].index))
        distract.add(FeatureNode(1, pos, u["always1"].index))
        if t in fill_ids:
            distract.add(FeatureNode(0, pos, u["filler"].index))
        if pos in (1, last):
            distract.add(FeatureNode(0, pos, u["content"].index))
            distract.add(FeatureNode(1, pos, u["cont1"].index))
            distract.add(FeatureNode(1, pos, u["any1"].index))
    # Position 1 attends to itself, so the combiner of (cx, cx) also fires there; it writes
    # at a position no logit reads.
    distract.add(FeatureNode(1, 1, u[cx + cx].index))
    nodes = (x0, y0, xy1)
    return FeatureTruth(frozenset(nodes), frozenset(edges), tuple(frozenset({n}) for n in nodes),
                        tuple(frozenset({e}) for e in sorted(edges, key=str)), frozenset(distract))


@dataclass(frozen=True)
class FeatureMatch:
    """Learned latents of one layer matched to planted units."""

    layer: int
    """Layer of the dictionary."""
    unit: np.ndarray
    """[width] planted unit index of each latent's best match, -1 when below threshold."""
    score: np.ndarray
    """[width] match score with the best unit (see ``match_features``)."""
    matched: np.ndarray
    """[width, n_units] bool: the pair's score reaches the threshold (a latent that merges
    two units, e.g. one "same" latent for AA and BB, stands for both)."""
    enc_cos: np.ndarray
    """[width, n_units] encoder cosine of each latent with each planted unit."""
    dec_cos: np.ndarray
    """[width, n_units] decoder cosine."""
    act_corr: np.ndarray | None
    """[width, n_units] Pearson correlation of activations over the given inputs (None
    when matched by weights only)."""
    units: tuple
    """The layer's planted units, in the columns' order."""

    def scores(self) -> np.ndarray:
        """[width, n_units] the match score of every (latent, unit) pair."""
        second = self.enc_cos if self.act_corr is None else self.act_corr
        return (self.dec_cos + second) / 2

    def best_latent(self) -> dict[str, tuple[int, float]]:
        """Planted unit name -> (latent with the highest match score for it, that score)."""
        s = self.scores()
        return {u.name: (int(np.argmax(s[:, j])), float(s[:, j].max())) for j, u in enumerate(self.units)}


def _unit_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_a, n_b] cosine of the rows of a with the rows of b (0 for zero rows)."""
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_a, n_b] Pearson correlation of the columns of a [N, n_a] and b [N, n_b] (0 for
    constant columns)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    return _unit_cos(a.T, b.T)


def match_features(dictionary, true_dictionary, layer: int, threshold: float = 0.5,
                   inputs=None,
                   config: FeatureOrganismConfig = FeatureOrganismConfig()) -> FeatureMatch:
    """Match each latent of ``dictionary`` (layer ``layer``) to a planted unit of
    ``true_dictionary``.

    Score of a (latent, unit) pair: the mean of the decoder cosine and, when ``inputs``
    ([N, d] mlp_in activations of that layer) are given, the Pearson correlation of the two
    activations over them, else the encoder cosine. Why activations: two combiners (AA, BB)
    share a decoder direction, and a learned conjunction's encoder need not resemble the
    planted one, so weights alone cannot tell them apart. A latent stands for every unit
    whose score reaches ``threshold`` in (0, 1]."""
    if not 0 < threshold <= 1:
        raise OrganismError(f"match threshold must lie in (0, 1], got {threshold}")
    units = tuple(u for u in planted_units(config) if u.layer == layer)
    idx = [u.index for u in units]
    te = np.asarray(true_dictionary.W_enc, dtype=np.float64)[:, idx].T
    td = np.asarray(true_dictionary.W_dec, dtype=np.float64)[idx]
    le = np.asarray(dictionary.W_enc, dtype=np.float64).T
    ld = np.asarray(dictionary.W_dec, dtype=np.float64)
    if le.shape[1] != te.shape[1] or ld.shape[1] != td.shape[1]:
        raise OrganismError(f"dictionary widths {le.shape[1]}/{ld.shape[1]} do not match the "
                            f"organism's d_model {te.shape[1]}; train it on this organism")
    corr = None
    if inputs is not None:
        x = mx.array(np.asarray(inputs, dtype=np.float32).reshape(-1, te.shape[1]))
        f = np.asarray(dictionary.encode(x), dtype=np.float64)
        h = np.asarray(true_dictionary.encode(x), dtype=np.float64)[:, idx]
        corr = _corr(f, h)
    m = FeatureMatch(layer, np.zeros(0), np.zeros(0), np.zeros((0, 0), dtype=bool),
                     _unit_cos(le, te), _unit_cos(ld, td), corr, units)
    s = m.scores()
    best = np.argmax(s, axis=1)
    score = s[np.arange(len(best)), best]
    unit_of = np.where(score >= threshold, np.asarray(idx)[best], -1)
    return FeatureMatch(layer, unit_of, score, s >= threshold, m.enc_cos, m.dec_cos, corr, units)


def task_activations(model, data: TaskData, sites) -> dict:
    """{Site: [N * T, d]} activations of ``data``'s clean prompts (all positions) at ``sites``."""
    from attribution import capture

    sites = [Site.parse(s) if isinstance(s, str) else s for s in sites]
    out: dict = {s: [] for s in sites}
    for b in data.batches(512):
        acts = capture(model, b.clean, sites)
        for s in sites:
            out[s].append(np.asarray(acts[s], dtype=np.float32).reshape(-1, acts[s].shape[-1]))
    return {s: np.concatenate(v) for s, v in out.items()}


def truth_for_dictionaries(truth: FeatureTruth, matches: dict[int, FeatureMatch]) -> FeatureTruth:
    """The truth re-keyed onto learned latents: a learned node (l, p, j) is true when latent
    j is matched (``FeatureMatch.matched``) to a true unit at (l, p); edges likewise, node
    by node. Several latents may stand for one unit and one latent for several units."""
    def expand(key):
        if not isinstance(key, FeatureNode):
            return [key]
        m = matches.get(key.layer)
        cols = [c for c, u in enumerate(m.units) if u.index == key.feature] if m is not None else []
        if not cols:
            return []
        return [FeatureNode(key.layer, key.pos, int(j)) for j in np.flatnonzero(m.matched[:, cols[0]])]

    node_groups = tuple(frozenset(k for n in g for k in expand(n)) for g in truth.node_groups)
    edge_groups = tuple(frozenset((s, t) for a, b in g for s in expand(a) for t in expand(b))
                        for g in truth.edge_groups)
    distract = {k for n in truth.distractors for k in expand(n)}
    return FeatureTruth(frozenset().union(*node_groups), frozenset().union(*edge_groups),
                        node_groups, edge_groups, frozenset(distract))


__all__ = [
    "FEATURE_TRUTH_SCHEMA",
    "FeatureMatch",
    "FeatureOrganismConfig",
    "FeatureTruth",
    "PlantedUnit",
    "build_feature_organism",
    "ablated_logit_diff",
    "build_weights",
    "class_of",
    "feature_task",
    "feature_truth",
    "match_features",
    "model_config",
    "planted_units",
    "read_config",
    "task_activations",
    "token_ids",
    "TranscoderSpec",
    "TrainedTranscoders",
    "train_task_transcoders",
    "true_transcoders",
    "truth_for_dictionaries",
    "unit",
    "unit_activations",
]
