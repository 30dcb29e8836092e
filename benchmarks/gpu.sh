#!/usr/bin/env bash
# fmstack on one NVIDIA GPU (bf16, NCCL): pretraining tokens/s and MFU of a ~125M Llama-style
# causal LM with ZeRO-2, and full vs distilled classifier throughput. Under 8 minutes; writes
# benchmarks/results/gpu-<date>.json. Install your CUDA build of torch into .venv, then
# `make setup`, then:
#   benchmarks/gpu.sh [--steps 40] [--peak-tflops 989]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "gpu.sh: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }
"$PY" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} has no CUDA; install your CUDA build into .venv first")
PY
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} RAY_DEDUP_LOGS=0
exec timeout 480 "$PY" -m benchmarks.gpu "$@"
