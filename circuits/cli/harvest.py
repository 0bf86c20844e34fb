"""``circuits harvest``: write a model's activations to an on-disk store bigger than RAM.

Algorithm:
  1. Check the flags before the model loads: counts are positive integers (argparse),
     ``--dtype`` is float32 or bfloat16, the corpus spec is usable.
  2. Load the model; expand ``--sites`` (``L*.kind`` is every layer; a site past the last
     layer, or a site named twice, is an error) and check ``--context-len`` against the
     model's context.
  3. Harvest into the hidden sibling ``.NAME.partial`` (``circuits.pipeline.dictionaries.
     harvest_activations``: shards of ``--shard-tokens`` rows written as they fill, each
     journalled, the manifest last), with a progress bar in tokens; then add ``run.json``
     and move it into place as ``--out`` (an old ``--out`` is replaced whole with
     ``--overwrite``). A failure or Ctrl-C leaves no store: a partial directory without a
     finished shard is removed; one with finished shards is kept and a warning says so, and
     the same command with ``--resume`` continues it (the forwards of finished shards are
     not run again; other flags are refused naming the setting). Without ``--resume`` an
     old partial harvest is discarded.
  4. Print the store's size and throughput; warn when the corpus ran out before
     ``--tokens``. ``circuits train --activations OUT`` trains from the store.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from circuits.cli._common import (
    CLIError,
    _publish,
    _write_manifest,
    add_common,
    load,
    nonneg_int,
    positive_int,
    progress,
)
from circuits.cli._out import emit

DTYPES = ["float32", "bfloat16"]


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="harvest a model's activations into an on-disk store "
                                  "(sharded safetensors) for `circuits train --activations`")
    add_common(p, out_default="out/activations")
    p.add_argument("--sites", default="L*.mlp_in,L*.mlp_out",
                   help="sites to store, e.g. 'L*.mlp_in,L*.mlp_out' (the default: what "
                        "transcoders need) or 'L3.resid_post'")
    p.add_argument("--tokens", type=positive_int, default=2 ** 18,
                   help="tokens to store (fewer when a --corpus file runs out first)")
    p.add_argument("--corpus", default=None,
                   help="organism (default), task:NAME, or a file path: .jsonl/.parquet read as "
                        "a table with a text column, any other file as text, one document per line")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="storage dtype (bfloat16 halves the disk; read back as float32)")
    p.add_argument("--shard-tokens", type=positive_int, default=None,
                   help="tokens per shard file (default: about 128 MiB per shard)")
    p.add_argument("--context-len", type=positive_int, default=None,
                   help="tokens per context (default 64, or the model's context when shorter)")
    p.add_argument("--batch", type=positive_int, default=16, help="contexts per forward")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the generated corpus (organism, task)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted harvest of this --out (same flags required)")


def partial_dir(out: Path) -> Path:
    """Where the harvest of ``out`` is written until it is complete (step 3)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def run(args) -> int:
    from sae.data.store import STATE

    from circuits.pipeline.corpus import check_corpus
    from circuits.pipeline.dictionaries import harvest_activations

    check_corpus(args.corpus)  # step 1 (argparse checked the counts and --dtype)
    out = Path(args.out)
    part = partial_dir(out)
    if args.resume and not (part / STATE).is_file():
        raise CLIError(f"--resume: no interrupted harvest of --out {out} (no journal in {part}); "
                       "drop --resume to start one")
    model = load(args)
    if not args.resume and part.exists():
        shutil.rmtree(part)  # an old unfinished harvest: this run starts over
    part.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with progress(args, "harvest activations", total=args.tokens, unit="token") as bar:
            man = harvest_activations(
                model, part, sites=args.sites, tokens=args.tokens, corpus=args.corpus,
                dtype=args.dtype, shard_tokens=args.shard_tokens, context=args.context_len,
                batch=args.batch, seed=args.seed, resume=True,
                progress=lambda p: bar(p.tokens, p.total_tokens))
        _write_manifest(part, args)
        _publish(part, out)
    except BaseException:
        if (part / STATE).is_file():
            n = len(list(part.glob("shard_*.safetensors")))
            warnings.warn(f"{n} finished shard(s) of this harvest are kept in {part}; rerun the "
                          "same command with --resume to continue it")
        else:
            shutil.rmtree(part, ignore_errors=True)
        raise
    secs = time.perf_counter() - t0
    n, size = man["n_tokens"], sum(s["bytes"] for s in man["shards"])
    if man["corpus"].get("exhausted") and n < args.tokens:
        warnings.warn(f"the corpus ran out after {n} tokens (--tokens {args.tokens}); the store "
                      "holds them all: give a longer --corpus for more")
    rec = {"out": str(out), "tokens": n, "shards": len(man["shards"]), "bytes": size,
           "dtype": man["dtype"], "sites": man["sites"], "seconds": round(secs, 3),
           "tokens_per_s": round(n / secs, 1) if secs > 0 else None}
    lines = [f"harvested {n} tokens at {len(man['sites'])} sites ({man['dtype']}) into "
             f"{len(man['shards'])} shards, {size / 2 ** 20:.1f} MiB -> {out}",
             f"  {n / secs:.0f} tokens/s; train with: circuits train --activations {out}"]
    emit(args, rec, lines)
    return 0
