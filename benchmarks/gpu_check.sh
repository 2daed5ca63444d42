#!/usr/bin/env bash
# The one-GPU performance check (docs/PERFORMANCE.md, "GPU check"): engine vs plain loop, eager vs compiled,
# LGI-Former-B vs ViT-B, pretraining batch 128 and finetuning batch 32, bf16; MFU per row. At most 8 minutes:
# rows that would not fit the budget are skipped and listed. Prints the table; the JSON goes to
# $OUT_DIR/gpu_check.json (default output/gpu_check/). Extra arguments go to benchmarks/gpu_check.py, e.g.
#   bash benchmarks/gpu_check.sh --peak-tflops 989      # a GPU missing from the peak table
#   bash benchmarks/gpu_check.sh --dry-run              # the plan only
# Run it whenever a GPU is lent, and put the table in docs/PERFORMANCE.md with the date and the GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-output/gpu_check}
mkdir -p "$OUT_DIR"
# 450 s for the rows leaves the rest of the 8 minutes to start-up and to the row in progress.
exec timeout --signal=INT 480 env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" benchmarks/gpu_check.py --budget-s 450 --out "$OUT_DIR/gpu_check.json" "$@"
