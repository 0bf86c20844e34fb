"""Train and evaluate dictionaries on a model: the library side of ``circuits train/evaluate``.

Algorithm (``train_dictionaries``):
  1. ``DictionarySpec`` checks itself when built: counts are positive integers, k <= width
     for the TopK family, the token budget holds at least one batch, the corpus spec is
     usable (``check_corpus``); every error is one line naming the flag and the fix.
  2. Parse sites (``L*.mlp_in`` expands to every layer) and build one ``TrainConfig``
     (kind, arch, width, k, LR, token budget, seed).
  3. With ``resume``: ``check_resume`` compares the checkpoint's recorded run
     (``run_record``: the spec with sites expanded and the corpus path made absolute,
     the model's weights fingerprint, the harvest settings) with this one and refuses any
     difference, naming each flag with its checkpoint and current values.
  4. Draw the corpus (file, task, or the organism's mixture) and call
     ``sae.train_on_model``: one forward per batch feeds every site; checkpoints every
     ``checkpoint_every`` steps; the metrics log goes to ``log_path``.
  5. Return the ``TrainResult``; the caller saves with ``sae.save_dictionaries``.
With ``spec.activations`` (an activation store written by ``harvest_activations``) step 4
reads the store instead of a corpus: ``open_store`` checks it was harvested from this
model and holds every input and target site (``store_sites`` picks the default input
sites per kind), and ``sae.train.from_model.train_on_store`` streams it through its
seeded shuffle buffer; the run record then holds the store's content
fingerprint instead of the corpus.

``harvest_activations`` (``circuits harvest``) writes a store: it checks the flags, draws
the corpus lazily (a file once; the organism's mixture or a task in rounds of
``ROUND_DOCS`` documents with seeds seed+1, seed+2, ... until the token budget is met)
and streams the activations into shards (``sae.data.store.harvest_into``).

``evaluate_dictionaries`` harvests held-out activations (another seed), runs
``sae.evaluate`` (L0, FVU, cosine, bias, dead/dense) and ``sae.evaluate_spliced``
(CE recovered, KL) and joins them into one DataFrame row per dictionary, then:
  1. ``ce_note`` says why a CE recovered is above 1: CE recovered =
     (CE_baseline - CE_spliced) / (CE_baseline - CE_clean) exceeds 1 when the spliced
     model's loss is below the clean model's on this corpus (``CE_ABOVE_ONE``), or has no
     meaning at all when the baseline's loss is below the clean one (``CE_BASELINE_BELOW``:
     the denominator is negative).
  2. Every metric must be finite: a NaN/inf raises ``DictionaryEvalError`` naming the
     dictionary, the metric and the likely cause (no NaN table is ever returned).
``dead_frac`` there and in the training log follow one definition
(``sae.evaluate.dead_fraction``): latents silent over the last ``dead_window`` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

from attribution.sites import parse_sites
from circuits.errors import CircuitsError
from circuits.pipeline.corpus import check_corpus, corpus_identity, corpus_kind, corpus_texts

CONTEXT_LEN = 64
"""Tokens per harvested context (capped by the model's context)."""
HARVEST_BATCH = 16
"""Contexts per harvesting forward during training."""
K_ARCHS = ("topk", "batchtopk", "matryoshka")
"""Architectures whose ``k`` picks the active latents (so k <= width)."""
BUFFER_TOKENS = 2 ** 16
"""Rows of the shuffle buffer when training from a store (and of the harvesting mixer)."""
ROUND_DOCS = 2000
"""Documents generated per round when harvesting the organism's mixture or a task."""
FLAGS = {"sites": "--sites", "kind": "--kind", "arch": "--arch", "width": "--width", "k": "--k",
         "tokens": "--tokens", "batch_tokens": "--batch-tokens", "seed": "--seed", "lr": "--lr",
         "corpus": "--corpus", "n_docs": "n_docs", "model": "--model (weights fingerprint)",
         "context_len": "context length", "harvest_batch": "harvest batch",
         "store": "--activations (the store's contents)", "buffer_tokens": "--buffer-tokens"}
"""Names of the run-record fields in messages: the flag that sets each."""


class SpecError(CircuitsError, ValueError):
    """A ``DictionarySpec`` (or the flags that built it) is invalid."""


class DictionaryEvalError(CircuitsError, ValueError):
    """An evaluation produced a metric that is NaN or infinite."""


class TrainingError(CircuitsError, ValueError):
    """Training met NaN/inf activations or a non-finite loss (the last checkpoint is kept)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DictionarySpec:
    """What to train (checked when built: step 1 of the module docstring)."""

    sites: str = "L*.mlp_in"
    """Comma list of input sites; ``L*.kind`` expands to every layer."""
    kind: str = "transcoder"
    """sae, transcoder, skip_transcoder or clt."""
    arch: str = "batchtopk"
    """relu, topk, batchtopk, jumprelu, gated or matryoshka."""
    width: int = 1024
    """Latents per dictionary (>= 1)."""
    k: int = 16
    """Active latents per token (TopK family; >= 1 and <= width)."""
    tokens: int = 2 ** 18
    """Training token budget (>= batch_tokens: steps = tokens // batch_tokens)."""
    batch_tokens: int = 2048
    """Tokens per optimisation step (>= 1)."""
    seed: int = 0
    """Seed of initialisation and data order (>= 0)."""
    corpus: str | None = None
    """File path, ``task:NAME``, or None / ``organism`` for the organism's own mixture."""
    n_docs: int = 6000
    """Documents drawn from a generated corpus (>= 1)."""
    lr: float | None = None
    """Adam learning rate; None -> 2e-4 * sqrt(2^14 / width)."""
    activations: str | None = None
    """Activation store directory to train from (``circuits harvest``); excludes ``corpus``."""
    buffer_tokens: int = BUFFER_TOKENS
    """Rows of the shuffle buffer that mixes the activation stream (>= 1)."""

    def __post_init__(self) -> None:
        from sae.train.config import ARCHS, KINDS

        if not isinstance(self.sites, str) or not self.sites.strip():
            raise SpecError(f"--sites must name at least one site (e.g. 'L*.mlp_in'), got {self.sites!r}")
        for name, choices in (("kind", KINDS), ("arch", ARCHS)):
            if getattr(self, name) not in choices:
                raise SpecError(f"--{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        for name in ("width", "k", "tokens", "batch_tokens", "n_docs", "buffer_tokens"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise SpecError(f"{FLAGS[name]} must be a positive integer, got {v!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise SpecError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not (0 < self.lr < math.inf)):
            raise SpecError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if self.arch in K_ARCHS and self.kind != "clt" and self.k > self.width:
            raise SpecError(f"--k {self.k} exceeds --width {self.width}: a {self.arch} dictionary "
                            "cannot keep more latents than it has; lower --k or raise --width")
        if self.tokens < self.batch_tokens:
            raise SpecError(f"--tokens {self.tokens} is less than --batch-tokens {self.batch_tokens}, "
                            "which leaves no training step; raise --tokens or lower --batch-tokens")
        check_corpus(self.corpus)
        if self.activations is not None:
            if not isinstance(self.activations, str) or not self.activations.strip():
                raise SpecError(f"--activations must name a store directory, got {self.activations!r}")
            if self.corpus is not None:
                raise SpecError("--corpus and --activations exclude each other: a store holds the "
                                "activations of the corpus it was harvested from; drop --corpus")

    @property
    def steps(self) -> int:
        """Optimiser steps of the run."""
        return self.tokens // self.batch_tokens


def context_len(model) -> int:
    """Harvest context length for ``model``."""
    return min(CONTEXT_LEN, model.max_context or CONTEXT_LEN)


def train_config(spec: DictionarySpec, n_layers: int):
    """The ``sae.TrainConfig`` for ``spec``."""
    from sae import TrainConfig

    sites = tuple(parse_sites(spec.sites, n_layers))
    if not sites:
        raise SpecError(f"--sites {spec.sites!r} names no site; give e.g. 'L*.mlp_in' or 'L1.mlp_in'")
    steps = spec.steps
    return TrainConfig(kind=spec.kind, arch=spec.arch, sites=sites, width=spec.width, k=spec.k,
                       total_tokens=spec.tokens, batch_tokens=spec.batch_tokens, lr=spec.lr,
                       warmup_steps=min(1000, max(1, steps // 20)), seed=spec.seed,
                       log_every=max(1, steps // 50))


def run_record(model, spec: DictionarySpec) -> dict:
    """What decides a run's weights beyond the TrainConfig: stored in checkpoints (step 3)."""
    from attribution import model_identity

    sites = [str(s) for s in parse_sites(spec.sites, model.n_layers)]
    rec = {"sites": sites, "kind": spec.kind, "arch": spec.arch, "width": spec.width,
           "k": spec.k, "tokens": spec.tokens, "batch_tokens": spec.batch_tokens,
           "seed": spec.seed, "lr": spec.lr}
    out = {"model": model_identity(model)["fingerprint"][:16]}
    if spec.activations is not None:
        from sae.data.store import read_manifest, store_fingerprint

        # the store's contents, not its path: a moved store still resumes, another one not
        out["store"] = store_fingerprint(read_manifest(spec.activations))
    else:
        rec.update(corpus=corpus_identity(spec.corpus), n_docs=spec.n_docs)
        out.update(context_len=context_len(model), harvest_batch=HARVEST_BATCH)
    if spec.buffer_tokens != BUFFER_TOKENS:  # recorded only when set: older checkpoints resume
        out["buffer_tokens"] = spec.buffer_tokens
    return {"spec": rec, **out}


def check_resume(model, spec: DictionarySpec, checkpoint_dir) -> int:
    """Refuse to resume a checkpoint of another run (step 3); returns the checkpoint's step."""
    from sae.train.checkpoint import CKPT_NAME, differences, mismatch_message, read_state

    state = read_state(checkpoint_dir)
    if state is None:
        raise SpecError(f"--resume: no checkpoint in {checkpoint_dir} ({CKPT_NAME} is missing); "
                        "drop --resume to start a new run there")
    old = state.get("run")
    if old is None:  # written by the library without a run record: the trainer checks configs
        return int(state["step"])
    diffs = differences(_flat(old), _flat(run_record(model, spec)))
    if diffs:
        named = [FLAGS.get(d.split(":", 1)[0], d.split(":", 1)[0]) + ":" + d.split(":", 1)[1]
                 for d in diffs]
        raise SpecError(mismatch_message(checkpoint_dir, named).replace(
            "another checkpoint directory", "another --checkpoint-dir"))
    return int(state["step"])


def _flat(record: dict) -> dict:
    spec = record.get("spec", {})
    return {**spec, **{k: v for k, v in record.items() if k != "spec"}}


def train_dictionaries(model, spec: DictionarySpec, callback=None, *, checkpoint_dir=None,
                       checkpoint_every: int | None = None, resume: bool = False, log_path=None):
    """Train per-site dictionaries on ``model``; returns ``sae.TrainResult``.

    ``checkpoint_dir``/``checkpoint_every``/``resume``: see ``sae.train``; a resume of a
    run with another spec or model raises before any work (``check_resume``). With
    ``spec.activations`` the activations come from that store (module docstring)."""
    from sae import train_on_model
    from sae.errors import NonFiniteError
    from sae.train.from_model import train_on_store

    cfg = train_config(spec, model.n_layers)
    if resume and checkpoint_dir is not None:
        check_resume(model, spec, checkpoint_dir)
    kw = dict(callback=callback, log_path=log_path, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume,
              run_info=run_record(model, spec))
    try:
        if spec.activations is not None:
            store = open_store(spec.activations, model, cfg, spec.buffer_tokens)
            return train_on_store(store, [cfg], **kw)
        texts = corpus_texts(model, spec.corpus, spec.n_docs, seed=spec.seed + 1)
        return train_on_model(model, texts, [cfg], context_len=context_len(model),
                              batch_size=HARVEST_BATCH, buffer_tokens=spec.buffer_tokens, **kw)
    except NonFiniteError as e:  # a RuntimeError in sae; here it is a property of the input
        fix = "check the model and --activations" if spec.activations else "check the model and --corpus"
        raise TrainingError(f"{e}; lower --lr, or {fix}") from e


# ------------------------------------------------------------ activation stores ----
def open_store(path, model, cfg=None, buffer_tokens: int = BUFFER_TOKENS):
    """The ``ActivationStore`` at ``path``, checked against ``model`` and, given the
    ``TrainConfig``, holding every input and target site it needs (named otherwise)."""
    from sae.data.store import ActivationStore, StoreMismatchError, read_manifest
    from sae.train.from_model import needed_sites

    man = read_manifest(path)
    if cfg is None:
        return ActivationStore(path, model=model, buffer_tokens=buffer_tokens)
    have = set(man["sites"])
    need = [str(s) for s in needed_sites([cfg])]
    missing = [s for s in need if s not in have]
    if missing:
        raise StoreMismatchError(
            f"--activations {path} has no activations for {', '.join(missing)} (needed by --sites "
            f"{', '.join(map(str, cfg.sites))} with --kind {cfg.kind}; it holds "
            f"{', '.join(man['sites'])}); pass --sites among those, or harvest the missing sites")
    return ActivationStore(path, model=model, sites=need, buffer_tokens=buffer_tokens)


def store_sites(manifest: dict, kind: str, target_kind: str = "mlp_out") -> str:
    """Default ``--sites`` for training ``kind`` on a store: every site for an SAE or a
    crosscoder; for transcoders and CLTs every site whose same-layer ``target_kind`` site
    is also stored."""
    from attribution.sites import Site

    sites = [Site.parse(s) for s in manifest["sites"]]
    if kind in ("sae", "crosscoder"):
        chosen = sites
    else:
        have = set(sites)
        chosen = [s for s in sites if s.kind != target_kind and Site(s.layer, target_kind) in have]
    if not chosen:
        raise SpecError(
            f"the activation store holds no input site with its {target_kind} target for --kind "
            f"{kind} (it holds {', '.join(map(str, sites))}); harvest with --sites "
            f"'L*.mlp_in,L*.{target_kind}', or train --kind sae")
    return ",".join(str(s) for s in chosen)


def harvest_texts(model, corpus: str | None, seed: int = 0):
    """Documents for a harvest (module docstring): a file's documents once; the organism's
    mixture or a task's prompts in rounds of ``ROUND_DOCS`` without end."""
    if corpus_kind(corpus) == "file":
        return corpus_texts(model, corpus, ROUND_DOCS, seed=seed + 1)
    corpus_texts(model, corpus, 1, seed=seed + 1)  # a bad task or a non-organism fails now

    def rounds():
        r = 0
        while True:
            docs = corpus_texts(model, corpus, ROUND_DOCS, seed=seed + 1 + r)
            if not docs:
                return
            yield from docs
            r += 1
    return rounds()


def harvest_activations(model, directory, *, sites: str = "L*.mlp_in,L*.mlp_out",
                        tokens: int = 2 ** 18, corpus: str | None = None, dtype: str = "float32",
                        shard_tokens: int | None = None, context: int | None = None,
                        batch: int = HARVEST_BATCH, seed: int = 0, progress=None,
                        resume: bool = False) -> dict:
    """Harvest ``sites`` of ``model`` into the empty ``directory``; returns the manifest.

    Flags are checked first (errors name the flag); ``progress(HarvestProgress)``.
    ``resume``: journal each shard in ``directory`` and continue a journalled harvest there
    (``sae.data.store.harvest_into``)."""
    from sae.data.shards import DTYPES
    from sae.data.store import HarvestConfig, harvest_into

    check_corpus(corpus)
    if dtype not in DTYPES:
        raise SpecError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for flag, v in (("--tokens", tokens), ("--shard-tokens", shard_tokens),
                    ("--context-len", context), ("--batch", batch)):
        if v is not None and (not _is_int(v) or v < 1):
            raise SpecError(f"{flag} must be a positive integer, got {v!r}")
    if not isinstance(sites, str) or not sites.strip():
        raise SpecError(f"--sites must name at least one site (e.g. 'L*.mlp_in'), got {sites!r}")
    parsed = parse_sites(sites, model.n_layers)
    if not parsed:
        raise SpecError(f"--sites {sites!r} names no site; give e.g. 'L*.mlp_in,L*.mlp_out'")
    if len(set(parsed)) != len(parsed):
        raise SpecError(f"--sites {sites!r} names a site twice; list each site once")
    max_ctx = model.max_context
    if context is None:
        context = context_len(model)
    elif max_ctx and context > max_ctx:
        raise SpecError(f"--context-len {context} exceeds the model's context of {max_ctx} "
                        f"tokens; pass --context-len {max_ctx} or less")
    cfg = HarvestConfig(sites=tuple(parsed), tokens=tokens, dtype=dtype, shard_tokens=shard_tokens,
                        context_len=context, batch_size=batch)
    texts = harvest_texts(model, corpus, seed)
    record = {"spec": corpus_identity(corpus), "seed": seed}
    if corpus_kind(corpus) != "file":
        record["round_docs"] = ROUND_DOCS
    return harvest_into(model, texts, directory, cfg, corpus=record, progress=progress,
                        resume=resume)


METRICS = ("l0", "fvu", "mse", "cosine", "rel_bias", "dead_frac", "dense_frac", "ce_clean",
           "ce_spliced", "ce_baseline", "ce_recovered", "kl_spliced", "kl_baseline")
"""Scalar columns of ``evaluate_dictionaries`` that must be finite."""
CE_ABOVE_ONE = "spliced CE below clean CE"
"""``ce_note`` of a row whose CE recovered exceeds 1 because the spliced model's loss is
below the clean model's (CE_baseline > CE_clean > CE_spliced)."""
CE_BASELINE_BELOW = "baseline CE below clean CE"
"""``ce_note`` of a row whose baseline beats the clean model (CE_baseline < CE_clean): the
denominator is negative, so CE recovered has no meaning (it may be above 1 or negative)."""


def ce_note(ce_clean: float, ce_spliced: float, ce_baseline: float) -> str:
    """Why CE recovered is not a fraction in [0, 1] of the loss gap ("" when it is): step 1."""
    if ce_baseline < ce_clean:
        return CE_BASELINE_BELOW
    if ce_spliced < ce_clean < ce_baseline:
        return CE_ABOVE_ONE
    return ""


def evaluate_dictionaries(model, dicts: dict, corpus: str | None = None, n_docs: int = 2000,
                          seed: int = 12345, ce_baseline: str = "zero"):
    """One DataFrame row per dictionary: reconstruction metrics plus CE recovered / KL."""
    import mlx.core as mx
    import numpy as np
    import pandas as pd

    from sae import evaluate, evaluate_spliced
    from sae.data.harvest import harvest, pack_tokens

    if ce_baseline not in ("zero", "mean"):
        raise SpecError(f"--baseline must be zero or mean, got {ce_baseline!r}")
    if not dicts:
        raise SpecError("no dictionaries to evaluate")
    texts = list(corpus_texts(model, corpus, n_docs, seed=seed))
    sites = sorted({s for d in dicts.values() for s in _sites(d)}, key=lambda s: s.order)
    ctx = context_len(model)
    arrays: dict = {}
    for chunk in harvest(model, texts, sites, context_len=ctx):
        for s, a in chunk.items():
            arrays.setdefault(s, []).append(np.asarray(a))
    acts = {s: mx.array(np.concatenate(v)) for s, v in arrays.items()}
    recon = evaluate(dicts, acts, n_tokens=min(len(next(iter(acts.values()))), 2 ** 14))
    # packed exactly as harvest packs (each context starts with BOS, as in training), so
    # a corpus that harvest accepted yields at least one context here
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    tokens = mx.array(np.stack(list(islice(pack_tokens(model, texts, ctx, bos), 32))))
    spliced = evaluate_spliced(model, dicts, tokens, baseline=ce_baseline)
    recon = recon.rename_axis("name").reset_index()
    recon["name"] = [str(k) for k in dicts]
    extra = spliced.drop(columns=[c for c in spliced.columns if c in recon.columns])
    df = pd.concat([recon, extra.reset_index(drop=True)], axis=1)
    df["ce_note"] = [ce_note(r.ce_clean, r.ce_spliced, r.ce_baseline) for r in df.itertuples()]
    check_finite_metrics(df, dicts)
    return df


def check_finite_metrics(df, dicts=None) -> None:
    """Raise ``DictionaryEvalError`` on the first NaN/inf metric (step 2)."""
    for i, row in enumerate(df.to_dict("records")):
        for m in METRICS:
            v = row.get(m)
            try:
                if v is None or math.isfinite(float(v)):
                    continue
            except (TypeError, ValueError):  # not a number at all: report it like a NaN
                pass
            d = list(dicts.values())[i] if dicts is not None and i < len(dicts) else None
            raise DictionaryEvalError(f"dictionary {row.get('name', i)}: {m} is {v} "
                                      f"({_cause(m, row, d)}); no metrics were written")


def _cause(metric: str, row: dict, d) -> str:
    import numpy as np

    if d is not None:
        arrays = d.arrays() if hasattr(d, "arrays") else {}
        big = [k for k, a in arrays.items() if float(np.abs(np.asarray(a, np.float64)).max(initial=0)) > 1e18]
        if big:
            return (f"its weights {', '.join(sorted(big))} are so large that float32 overflows; "
                    "retrain it or check the file")
    if not math.isfinite(row.get("ce_clean", 0.0)):
        return "the model's own loss is not finite on this corpus; check the model and --corpus"
    if metric == "fvu":
        return "the target activations have no variance on these tokens; use a longer, varied --corpus"
    if metric == "ce_recovered":
        return ("the baseline's loss equals the clean loss, so the ratio is undefined; "
                "try --baseline mean or another --corpus")
    if metric == "rel_bias":
        return "the reconstruction is zero or orthogonal to the target on every token"
    return "the dictionary's outputs are not finite on this corpus; retrain it"


def _sites(d) -> list:
    if hasattr(d, "in_sites"):
        return [*d.in_sites, *d.out_sites]
    return [s for s in (d.in_site, d.out_site) if s is not None]
