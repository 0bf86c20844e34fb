"""Throughput of the on-disk activation store: harvest (model -> shards) and read (shards ->
shuffled float32 batches), float32 and bfloat16 storage.

Algorithm:
  1. Build a random GPT-2-small-shaped model (d=768, 12 layers, 12 heads, context 1024;
     ``attribution.tiny.make_tiny_model("gpt2", ...)`` with a word-level vocabulary) in a
     temporary directory and load it; the corpus is random words.
  2. Forward only: consume ``sae.data.harvest`` (the same capture the store runs) and time
     it: the model's cost, which bounds any harvest.
  3. Harvest ``--tokens`` tokens at ``--sites`` with ``sae.data.store.harvest_store`` in each
     dtype; steps 2 and 3 alternate within each of ``--repeats`` rounds, their order rotated
     from round to round, so machine noise and order effects hit them alike; tokens/s
     (min / median / max over repeats) and the store's size.
     3b. The store's own cost: the chunks of one forward-only pass, kept in memory,
     written through ``StoreWriter`` (rounding, norms, hashing, file writes).
  4. Read: ``ActivationStore.batches`` (shuffle buffer ``--buffer-tokens``, batches of
     ``--batch-tokens``), every batch materialised, ``--read-epochs`` epochs per repeat;
     and ``chunks()`` (sequential, no shuffle). Tokens/s and MB/s of float32 delivered.
     The store was just written, so reads come from the page cache (a warm read; a cold
     read from disk is bounded by the disk instead); ``os.sync()`` first, so the kernel's
     write-back of the fresh shards does not run during the reads. The heap keeps freed
     blocks (``attribution.allocator.keep_freed_memory``, as ``sae.train`` sets it), so
     batch-sized arrays are not page-faulted in afresh each time.
  5. Append one JSON line (settings, results, 1-minute load average before each phase,
     ``attribution.perf.environment_record()``) to ``--out`` and print it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# isort: off
import attribution  # noqa: E402,F401  (must come first: loads the optimised BLAS before mlx)
import numpy as np  # noqa: E402
from attribution import load_model  # noqa: E402
from attribution.allocator import keep_freed_memory  # noqa: E402
from attribution.perf import environment_record  # noqa: E402
from attribution.sites import parse_sites  # noqa: E402
from attribution.tiny import make_tiny_model  # noqa: E402
from sae.data.harvest import harvest  # noqa: E402
from sae.data.store import ActivationStore, HarvestConfig, StoreWriter, harvest_store  # noqa: E402
# isort: on

RESULTS = Path(__file__).resolve().parent / "results" / "activation_store.jsonl"


def _stats(xs: list[float]) -> dict:
    return {"min": round(min(xs), 1), "median": round(statistics.median(xs), 1),
            "max": round(max(xs), 1), "n": len(xs)}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", default="L2.mlp_in,L5.mlp_in,L8.mlp_in,L11.mlp_out")
    ap.add_argument("--tokens", type=int, default=2 ** 13, help="tokens per harvest")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="contexts per forward")
    ap.add_argument("--shard-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--buffer-tokens", type=int, default=2 ** 14)
    ap.add_argument("--read-epochs", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        words = [f"w{i}" for i in range(args.vocab)]
        model = load_model(make_tiny_model(
            "gpt2", root / "gpt2", seed=0, vocab_words=words, n_embd=768, n_layer=12, n_head=12,
            n_ctx=1024, n_positions=1024))
        rng = np.random.default_rng(0)
        n_words = int(args.tokens * 1.2) + 1000
        texts = [" ".join(rng.choice(words, 500)) for _ in range(n_words // 500 + 1)]
        sites = parse_sites(args.sites, model.n_layers)
        record = {"benchmark": "activation_store", "model": "gpt2-small-shaped random",
                  "d_model": model.d_model, "n_layers": model.n_layers, "sites": [str(s) for s in sites],
                  "tokens": args.tokens, "context_len": args.context, "contexts_per_forward": args.batch,
                  "shard_tokens": args.shard_tokens, "repeats": args.repeats,
                  "batch_tokens": args.batch_tokens, "buffer_tokens": args.buffer_tokens,
                  "read_epochs": args.read_epochs, "loadavg_1m": {}}

        # steps 2-3, interleaved per repeat so machine noise hits them alike
        kw = dict(context_len=args.context, batch_size=args.batch)
        next(iter(harvest(model, texts, sites, **kw)))  # warm-up forward
        record["loadavg_1m"]["harvest"] = _load()
        fwd: list[float] = []
        rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        sizes = {}
        chunks: list[dict] = []

        def forward_only(keep: bool) -> None:
            t0, n = time.perf_counter(), 0
            for chunk in harvest(model, texts, sites, **kw):
                n += next(iter(chunk.values())).shape[0]
                if keep:
                    chunks.append(chunk)  # kept for the write-only timing (step 3b)
                if n >= args.tokens:
                    break
            # the same tokens a harvest stores: it runs these forwards and keeps --tokens rows
            fwd.append(min(n, args.tokens) / (time.perf_counter() - t0))

        def harvest_one(dtype: str) -> None:
            cfg = HarvestConfig(sites=tuple(sites), tokens=args.tokens, dtype=dtype,
                                shard_tokens=args.shard_tokens, **kw)
            t0 = time.perf_counter()
            man = harvest_store(model, texts, root / dtype, cfg)
            rates[dtype].append(man["n_tokens"] / (time.perf_counter() - t0))
            sizes[dtype] = sum(s["bytes"] for s in man["shards"])

        variants = [lambda r: forward_only(r == 0), lambda r: harvest_one("float32"),
                    lambda r: harvest_one("bfloat16")]
        for r in range(args.repeats):  # rotated: each variant runs first, second, third
            for j in range(len(variants)):
                variants[(j + r) % len(variants)](r)
        record["forward_tokens_per_s"] = _stats(fwd)

        # step 3b: the store's own cost: the same chunks written from memory
        record["loadavg_1m"]["write"] = _load()
        writes: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        dims = {s: model.d_model for s in sites}
        for _ in range(args.repeats):
            for dtype in writes:
                d = root / f"w-{dtype}"
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
                t0, n = time.perf_counter(), 0
                w = StoreWriter(d, sites, dims, dtype, args.shard_tokens)
                for chunk in chunks:
                    rows = next(iter(chunk.values())).shape[0]
                    o = 0
                    while o < rows:
                        take = min(rows - o, w.space)
                        w.put({s: chunk[s][o:o + take] for s in sites})
                        o += take
                        if w.space == 0:
                            w.flush()
                    n += rows
                w.finish(model={})
                writes[dtype].append(n / (time.perf_counter() - t0))

        # step 4: read back
        if hasattr(os, "sync"):
            os.sync()
        keep_freed_memory()
        record["loadavg_1m"]["read"] = _load()
        results = []
        for dtype in rates:
            shuffled, sequential = [], []
            for _ in range(args.repeats):
                store = ActivationStore(root / dtype, buffer_tokens=args.buffer_tokens)
                want = args.read_epochs * store.n_tokens
                t0, n = time.perf_counter(), 0
                for batch in store.batches(args.batch_tokens, seed=0):
                    batch.arrays()
                    n += args.batch_tokens
                    if n >= want:
                        break
                shuffled.append(n / (time.perf_counter() - t0))
                t0, n = time.perf_counter(), 0
                for chunk in store.chunks():
                    n += next(iter(chunk.values())).shape[0]
                sequential.append(n / (time.perf_counter() - t0))
            row_mb = sum(store.dims.values()) * 4 / 1e6  # float32 delivered per token
            results.append({
                "dtype": dtype, "store_bytes": sizes[dtype],
                "bytes_per_token": round(sizes[dtype] / args.tokens, 1),
                "harvest_tokens_per_s": _stats(rates[dtype]),
                "harvest_vs_forward_median": round(statistics.median(rates[dtype])
                                                   / statistics.median(fwd), 3),
                "write_only_tokens_per_s": _stats(writes[dtype]),
                "write_only_mb_per_s_median": round(statistics.median(writes[dtype])
                                                    * sizes[dtype] / args.tokens / 1e6, 1),
                "read_shuffled_tokens_per_s": _stats(shuffled),
                "read_shuffled_mb_per_s_median": round(statistics.median(shuffled) * row_mb, 1),
                "read_sequential_tokens_per_s": _stats(sequential),
                "read_sequential_mb_per_s_median": round(statistics.median(sequential) * row_mb, 1),
            })
        record["results"] = results
        record["environment"] = environment_record()
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line = json.dumps(record, sort_keys=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
