#!/usr/bin/env bash
# One-call GPU check (needs only python with torch + einops): bf16 throughput, MFU, peak memory and
# the largest batch of spectralgpt_huge and skysense_1b with activation checkpointing; prints a
# markdown table. Fits one device call of <= 8 minutes (the python budget is 400 s of it).
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --smoke    # tiny presets on the CPU, proves it runs anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c "import torch, einops; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
exec timeout 470 "$PY" bench/gpu_check.py "$@"
