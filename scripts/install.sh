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
# DeepSpeed JIT-compiles its shared-memory collective op the first time a process initialises it (about 35 s on
# CPU). Build it once here, in one process, rather than in the first run (or two torchrun ranks racing for the lock).
"$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" 2>&1 | grep -v WARNING || true
"$VENV/bin/python" -c "import lgiformer, timm, torch; print('installed lgiformer', lgiformer.__version__, 'torch', torch.__version__, 'timm', timm.__version__)"
