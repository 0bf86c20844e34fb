"""``circuits train``: train per-layer dictionaries on a model and save them.

Algorithm:
  1. Build a ``DictionarySpec`` from flags (or ``--config``; the same keys): counts must
     be positive integers, k <= width (TopK family), --tokens >= --batch-tokens, and the
     corpus must be ``organism``, ``task:NAME`` or an existing file. Each bad value is one
     line naming the flag, before the model is loaded.
  2. Checkpoint flags: ``--checkpoint-every`` and ``--resume`` need ``--checkpoint-dir``,
     which must lie outside ``--out``. A new run refuses a directory that already holds a
     checkpoint (pass --resume, or choose another directory); ``--resume`` refuses one that
     holds none. ``--checkpoint-every`` defaults to a tenth of the run.
  3. Load the model, expand the sites; with ``--resume`` compare the checkpoint's recorded
     run with this one (spec, model fingerprint, corpus) and refuse any difference, naming
     each flag with its checkpoint and current values.
  4. Train with a progress bar (``circuits.pipeline.dictionaries``), writing a checkpoint
     every N steps and the metrics log (into the checkpoint directory when there is one,
     so a resumed run's log is complete); the resumed run continues bit-identically.
  5. Save with ``sae.save_dictionaries`` into the staged output directory, plus
     ``train_log.jsonl``; print final metrics.
With ``--activations STORE`` (written by ``circuits harvest``) the activations come from
the store, not from a corpus: its manifest is checked before the model loads (``--corpus``
is refused with it, and a store inside ``--out`` too), ``--sites`` defaults to the store's
input sites for ``--kind`` and any site (input or target) it lacks is refused, the store
must have been harvested from ``--model``, and a token budget beyond the store's size
warns that training cycles through it. ``--buffer-tokens`` sizes the shuffle buffer.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from circuits.cli._common import (
    CLIError,
    add_common,
    load,
    nonneg_int,
    positive_float,
    positive_int,
    progress,
    staged,
)
from circuits.cli._out import emit

ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]
KINDS = ["sae", "transcoder", "skip_transcoder", "clt", "crosscoder"]


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="train SAEs / transcoders / CLTs on a model's activations")
    add_common(p, out_default="out/dictionaries")
    p.add_argument("--sites", default=None,
                   help="input sites, e.g. 'L*.mlp_in' or 'L1.resid_post,L2.resid_post' (default "
                        "L*.mlp_in; with --activations, the store's input sites for --kind)")
    p.add_argument("--kind", default="transcoder", choices=KINDS)
    p.add_argument("--arch", default="batchtopk", choices=ARCHS)
    p.add_argument("--width", type=positive_int, default=1024, help="latents per dictionary")
    p.add_argument("--k", type=positive_int, default=16,
                   help="active latents per token (topk, batchtopk, matryoshka; <= --width)")
    p.add_argument("--tokens", type=positive_int, default=2 ** 18,
                   help="training token budget (>= --batch-tokens)")
    p.add_argument("--batch-tokens", type=positive_int, default=2048, help="tokens per step")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 2e-4 * sqrt(2^14 / width))")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--corpus", default=None,
                   help="organism (default), task:NAME, or a file path: .jsonl/.parquet read as "
                        "a table with a text column, any other file as text, one document per line")
    p.add_argument("--activations", type=Path, default=None,
                   help="train from this activation store (written by `circuits harvest`) "
                        "instead of harvesting a corpus; sites and widths come from the store")
    p.add_argument("--buffer-tokens", type=positive_int, default=2 ** 16,
                   help="rows of the shuffle buffer that mixes the activations (default 65536)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="write resumable checkpoints here (outside --out)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="steps between checkpoints (default: a tenth of the run; needs --checkpoint-dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --checkpoint-dir (same flags required)")


def spec_from_args(args, manifest: dict | None = None):
    """The ``DictionarySpec`` of the flags; ``manifest``: the --activations store's."""
    from circuits.pipeline.dictionaries import DictionarySpec, store_sites

    sites = args.sites
    if sites is None:
        sites = "L*.mlp_in" if manifest is None else store_sites(manifest, args.kind)
    store = getattr(args, "activations", None)
    return DictionarySpec(sites=sites, kind=args.kind, arch=args.arch, width=args.width,
                          k=args.k, tokens=args.tokens, batch_tokens=args.batch_tokens,
                          seed=args.seed, corpus=args.corpus, lr=args.lr,
                          activations=None if store is None else str(store),
                          buffer_tokens=getattr(args, "buffer_tokens", 2 ** 16))


def check_store_args(args) -> dict | None:
    """The --activations store's manifest, checked before the model loads (module docstring)."""
    if getattr(args, "activations", None) is None:
        return None
    from sae.data.store import ActivationStore

    store = Path(args.activations)
    if args.corpus is not None:
        raise CLIError("--corpus and --activations exclude each other: a store holds the "
                       "activations of the corpus it was harvested from; drop --corpus")
    out = getattr(args, "out", None)
    if out is not None and store.exists() and _inside(store, Path(out)):
        raise CLIError(f"--activations {store} lies inside --out {out}, which is replaced when "
                       "the run succeeds; choose another --out")
    try:  # the manifest and every shard's presence and size: cheap, before the model loads
        return ActivationStore(store).manifest
    except OSError as e:  # FormatError: one line naming the store and the fix
        raise CLIError(f"--activations: {e}") from None


def check_checkpoint_args(args, steps: int) -> int | None:
    """Step 2 of the module docstring; returns the checkpoint interval (None: no checkpoints)."""
    from sae.train.checkpoint import CKPT_NAME

    ckpt = args.checkpoint_dir
    if ckpt is None:
        if args.resume:
            raise CLIError("--resume needs --checkpoint-dir DIR (the directory of the run to continue)")
        if args.checkpoint_every is not None:
            raise CLIError("--checkpoint-every needs --checkpoint-dir DIR (where to write checkpoints)")
        return None
    ckpt = Path(ckpt)
    if ckpt.exists() and not ckpt.is_dir():
        raise CLIError(f"--checkpoint-dir {ckpt} is a file; pass a directory")
    out = getattr(args, "out", None)
    if out is not None and _inside(ckpt, Path(out)):
        raise CLIError(f"--checkpoint-dir {ckpt} lies inside --out {out}, which is replaced when "
                       "the run succeeds; put checkpoints elsewhere (e.g. beside --out)")
    has = (ckpt / CKPT_NAME).exists()
    if args.resume and not has:
        raise CLIError(f"--resume: no checkpoint in {ckpt} ({CKPT_NAME} is missing); "
                       "drop --resume to start a new run there")
    if not args.resume and has:
        raise CLIError(f"--checkpoint-dir {ckpt} already holds a checkpoint; pass --resume to "
                       "continue it, or choose another --checkpoint-dir")
    return args.checkpoint_every or max(1, steps // 10)


def _drop_unused_checkpoint_dir(ckpt: Path | None, made: bool, keep: bool) -> None:
    """A new run that failed before its first checkpoint leaves nothing behind; once a
    checkpoint exists, it and its log stay (that is what --resume continues). ``keep``:
    the log predates this run (a resume, or a file that was already there)."""
    from sae.train.checkpoint import CKPT_NAME

    if ckpt is None or keep or (ckpt / CKPT_NAME).exists():
        return
    if made:
        shutil.rmtree(ckpt, ignore_errors=True)
    else:
        (ckpt / "train_log.jsonl").unlink(missing_ok=True)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def run(args) -> int:
    from sae import save_dictionaries

    from circuits.pipeline.dictionaries import check_resume, train_config, train_dictionaries

    manifest = check_store_args(args)
    spec = spec_from_args(args, manifest)  # step 1: every flag checked before the model loads
    every = check_checkpoint_args(args, spec.steps)
    model = load(args)
    cfg = train_config(spec, model.n_layers)  # validate sites/arch before any work or output
    if manifest is not None:
        from circuits.pipeline.dictionaries import open_store

        store = open_store(args.activations, model, cfg, spec.buffer_tokens)
        if spec.tokens > store.n_tokens:
            warnings.warn(f"--tokens {spec.tokens} exceeds the {store.n_tokens} tokens of "
                          f"--activations {args.activations}: training reads the store "
                          f"{spec.tokens / store.n_tokens:.2f} times")
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir is not None else None
    if args.resume:
        check_resume(model, spec, ckpt)
    with staged(args.out) as tmp, progress(args, "train dictionaries") as bar:
        def cb(p):
            fvu = [m.get("fvu") for m in p.metrics.values() if m.get("fvu") is not None]
            bar(p.step, p.total_steps, fvu=max(fvu) if fvu else float("nan"))

        log = (ckpt if ckpt is not None else tmp) / "train_log.jsonl"
        made = ckpt is not None and not ckpt.exists()
        had_log = log.exists()
        try:
            if ckpt is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
            result = train_dictionaries(model, spec, callback=cb, checkpoint_dir=ckpt,
                                        checkpoint_every=every, resume=args.resume, log_path=log)
        except BaseException:
            _drop_unused_checkpoint_dir(ckpt, made, args.resume or had_log)
            raise
        save_dictionaries(dict(zip(result.names, result.dictionaries)), tmp / "dictionaries",
                          metadata={"model": str(model.path), "spec": vars(spec)}, model=model)
        if ckpt is not None:
            shutil.copyfile(log, tmp / "train_log.jsonl")
        rows = [json.loads(ln) for ln in (tmp / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    last = {}
    for row in rows:  # the log file holds the whole run, also across a resume
        last[row.get("name")] = row
    rec = {"out": str(args.out / "dictionaries"), "steps": result.steps, "final": last}
    lines = [f"trained {len(result.dictionaries)} dictionaries in {result.steps} steps -> {args.out / 'dictionaries'}"]
    lines += [f"  {n}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()
                                    if isinstance(v, float)) for n, r in last.items()]
    emit(args, rec, lines)
    return 0
