#!/usr/bin/env bash
# Scorer grid on a GPU machine: ViT-B-16 and ViT-L-14 text towers at 1000 classes, bf16 and fp16,
# PyTorch SDPA attention (nn.MultiheadAttention and the prefix path both call
# F.scaled_dot_product_attention). Prints templates/s, the ratio to the paper's way, and achieved
# text-tower TFLOP/s against the card's bf16 peak. Results go under $OUT (or ./bench-gpu-out).
# Budget: under 5 minutes on an H100/H200 (random weights: nothing is downloaded).
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v .venv/bin/python || command -v python3)}  # the repo venv (install.sh), else the machine's
OUT=${OUT:-bench-gpu-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo unknown)
{ nvidia-smi || true; "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; } \
  >"$OUT/machine.txt" 2>&1
for precision in bf16 fp16; do
  timeout 140 "$PY" -m promptclimb bench scorer --device cuda --precision "$precision" \
    --backbones ViT-B-16 ViT-L-14 --classes 1000 --templates 1 64 \
    --baseline-texts 16000 --fast-texts 64000 --images 5000 --prefix both \
    --json "$OUT/rows-$precision.jsonl" 2>&1 | grep -v WARNING | tee "$OUT/grid-$precision.txt"
  "$PY" bench/gpu_flops.py "$OUT/rows-$precision.jsonl" "$GPU" | tee "$OUT/tflops-$precision.txt"
done
