# Sourced by the peer set-up scripts: create a venv and install CPU torch into it, pinned.
#   1. python -m venv "$VENV" if it has no python yet.
#   2. torch==$TORCH_VERSION from pip's configured sources (the machine's local CPU wheel);
#      never a CUDA build: the pin is written to "$CONSTRAINT" for every later install.
# Needs VENV and TORCH_VERSION; sets PIP (array) and CONSTRAINT (a temp file removed on exit).
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$CONSTRAINT"
