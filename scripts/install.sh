#!/usr/bin/env bash
# Installs the project and its test extras into ./.venv (or $VENV).
# On a machine without an NVIDIA GPU it pins the CPU build of torch first and keeps every later install on it
# through constraints.txt, so nothing pulls the multi-GB CUDA build (see README, "Installing").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -c constraints.txt -e ".[test]"
# The folder for any C++ op torch or DeepSpeed JIT-builds, one per environment (torch's default is shared by all of
# the user's environments); lgiformer sets TORCH_EXTENSIONS_DIR to it unless it is set. Our runs build no op: the one
# DeepSpeed would build on CPU (its shared-memory all-reduce) only serves its tensor-parallel inference, and
# lgiformer/engine/ds.py switches it off.
mkdir -p "$VENV/torch_extensions"
"$VENV/bin/python" -c "import lgiformer, timm, torch; print('installed lgiformer', lgiformer.__version__, 'torch', torch.__version__, 'timm', timm.__version__)"
