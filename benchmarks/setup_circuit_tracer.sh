#!/usr/bin/env bash
# circuit-tracer + TransformerLens in their own venv (.venv-ct, gitignored), for
# benchmarks/circuit_tracer_compare.py. Peers are never runtime dependencies of mlx-circuits.
#
# Why a separate venv (not .venv-peers, not pip install -e . here):
#   circuit-tracer 0.5.0 pins transformers<=4.57.3, while mlx-circuits needs transformers>=5
#   and transformer-lens>=3 needs transformers>=5.9. So this venv holds circuit-tracer,
#   transformer-lens 2.x (numpy<2) and transformers 4.57 only; the comparison runs our side in
#   .venv and circuit-tracer's side here, in two processes exchanging safetensors + JSON.
# Steps:
#   1. python -m venv .venv-ct (PYTHON, default python3).
#   2. torch==2.13.0 first, CPU build only (the local "+cpu" wheel pip finds here), pinned by a constraint so pip never pulls a CUDA build.
#   3. circuit-tracer==0.5.0, transformer-lens 2.x, transformers 4.56-4.57.3, and a pyarrow
#      that still supports numpy<2 (transformer-lens 2.x caps numpy<2; pyarrow>=22 needs 2.x).
#   4. Import check.
# Usage: bash benchmarks/setup_circuit_tracer.sh    (from anywhere; re-running is cheap)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CT_VENV:-$ROOT/.venv-ct}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

cd "$ROOT"
# shellcheck source=benchmarks/_torch_venv.sh
source "$ROOT/benchmarks/_torch_venv.sh"

"${PIP[@]}" -c "$CONSTRAINT" "circuit-tracer==0.5.0" "transformer-lens>=2.16,<3" \
    "transformers>=4.56,<=4.57.3" "numpy<2" "pyarrow>=21,<22" "safetensors>=0.5"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformer_lens, circuit_tracer, transformers  # noqa: F401
from circuit_tracer import attribute  # noqa: F401
print("circuit-tracer venv ok: " + ", ".join(
    f"{p} {md.version(p)}" for p in ("circuit-tracer", "transformer-lens", "transformers", "torch", "numpy")))
EOF
