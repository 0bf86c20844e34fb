"""The README's time-and-memory tables from ``benchmarks/results/scale.jsonl``.

Algorithm:
  1. Read every JSON line of the results file; a line without ``phase`` is a graph run
     (written before the pipeline phase existed), without ``dicts`` a transcoder run.
  2. Keep the latest line per (model, phase, dictionaries, prompt length): reruns replace
     older figures, never average with them.
  3. Print two markdown tables: per model (load, forward, harvest and SAE training
     throughput), and per exact graph (wall time, backward passes, seconds per pass, peak
     RSS and its growth, the preflight's estimate over the measured growth, nodes, edges,
     pruning time; refusals and failures with their reason).

Usage: .venv/bin/python benchmarks/scale_table.py [benchmarks/results/scale.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["gpt2-small", "qwen3-0.6b", "llama-3.2-1b", "llama-3.2-1b-4bit", "gemma-2-2b", "mid-d512"]
LABEL = {"gpt2-small": "GPT-2 small (fp32)", "qwen3-0.6b": "Qwen3-0.6B (bf16)",
         "llama-3.2-1b": "Llama-3.2-1B (bf16)", "llama-3.2-1b-4bit": "Llama-3.2-1B (4-bit)",
         "gemma-2-2b": "Gemma-2-2B (bf16)", "mid-d512": "d=512, 8 layers (fp32; width 4,096)"}


def latest(path: Path) -> dict:
    """(model, phase, dicts, n_tokens) -> the last record (step 2)."""
    out: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            phase = r.get("phase", "graph")
            dicts = r.get("dicts", "transcoders") if phase == "graph" else "-"
            out[(r["model"], phase, dicts, r.get("n_tokens"))] = r
    return out


def _rank(key) -> tuple:
    model, _, dicts, n = key
    return (ORDER.index(model) if model in ORDER else len(ORDER), model, dicts, n or 0)


def _f(x, fmt="{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def tables(recs: dict) -> str:
    """Markdown for both tables (step 3)."""
    rows = ["| model | load s | forward tok/s | harvest tok/s | SAE train tok/s (m=16,384, k=50) | load avg |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key in sorted((k for k in recs if k[1] == "pipeline"), key=_rank):
        r = recs[key]
        if r.get("status") != "ok":
            rows.append(f"| {LABEL.get(key[0], key[0])} | {r.get('status')}: {r.get('reason', '')[:90]} | | | | |")
            continue
        rows.append(f"| {LABEL.get(key[0], key[0])} | {_f(r['load_s'], '{:.1f}')} | "
                    f"{_f(r['forward_tokens_per_s'])} | {_f(r['harvest_tokens_per_s'])} | "
                    f"{_f(r['train_steady_tokens_per_s'])} | {r.get('load_average_1m', 0):.1f} |")
    rows += ["", "| model | dictionaries | tokens | graph wall | backward passes | s / pass | "
                 "peak RSS | growth (preflight ÷ growth) | nodes | edges kept | prune | load avg |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key in sorted((k for k in recs if k[1] == "graph"), key=_rank):
        r = recs[key]
        kind = key[2] if r.get("dict_dtype", "float32") == "float32" else f"{key[2]} ({r['dict_dtype']})"
        head = f"| {LABEL.get(key[0], key[0])} | {kind} | {key[3]} |"
        if r.get("status") != "ok":
            why = (r.get("reason") or r.get("stderr") or "").replace("|", "/").splitlines()
            rows.append(f"{head} **{r.get('status')}**: {why[-1][:160] if why else ''} | | | | | | | | |")
            continue
        rows.append(
            f"{head} {r['graph_wall_s']:.0f} s | {r['backward_passes']} | "
            f"{r['graph_wall_s'] / r['backward_passes']:.2f} | {r['peak_rss_gb']:.1f} GiB | "
            f"{r['graph_rss_growth_gb']:.2f} GiB ({r['preflight_ratio']:.2f}) | {r['n_nodes']:,} | "
            f"{r['n_edges']:,} | {r['prune_s']:.1f} s | {r.get('load_average_1m', 0):.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "scale.jsonl"
    print(tables(latest(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
