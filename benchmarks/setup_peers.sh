#!/usr/bin/env bash
# Peer libraries for the comparison benchmarks, in their own venv (.venv-peers, gitignored).
#
# Peers are never runtime dependencies of mlx-circuits: this venv exists only so that
# benchmarks/sae_train.py --peers, benchmarks/sae_quality.py and
# tests/sae/test_saelens_crosscheck.py can run SAELens beside our package.
#
# Steps:
#   1. python -m venv .venv-peers (PYTHON, default python3).
#   2. torch==2.13.0 first, CPU build only (the local wheel pip finds here) so that sae-lens's torch requirement is already met and pip never
#      pulls a multi-GB CUDA build.
#   3. sae-lens (pulls transformer-lens<4, transformers<6), then this package editable
#      (pip install -e .) plus pytest.
#   4. Check both import side by side.
# Usage: bash benchmarks/setup_peers.sh        (from anywhere; re-running is cheap)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

cd "$ROOT"
# shellcheck source=benchmarks/_torch_venv.sh
source "$ROOT/benchmarks/_torch_venv.sh"

# 3. SAELens against that torch (a constraint keeps pip from replacing it), then us.
"${PIP[@]}" -c "$CONSTRAINT" sae-lens
"${PIP[@]}" -c "$CONSTRAINT" -e ".[test]"

# 4. Both import in one process (our package first: it preloads the BLAS before mlx).
"$VENV/bin/python" - <<'EOF'
import sae, attribution, circuits  # noqa: F401
import mlx.core as mx
import torch, sae_lens, transformers
print(f"peers ok: sae_lens {sae_lens.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, mlx {mx.__version__}")
EOF
