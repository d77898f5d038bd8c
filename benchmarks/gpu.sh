#!/usr/bin/env bash
# The training and generation benchmarks on one CUDA GPU (H100/H200 class), in under
# 8 minutes: bf16 autocast and TF32 for training; generation with fp32 and bf16 weights (the
# reference in the same precision), eager and with attnkit's compiled decode step, which
# on CUDA replays a CUDA graph per token (attnkit sample --compile). Run from the
# repository root:
#     bash benchmarks/gpu.sh
# Results: benchmarks/results/train-cuda.json and generate-cuda.json.
set -euo pipefail
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/train.py --device cuda --steps 5 \
    --cases tiny:256 tiny:1024 gpt2-124m:256 gpt2-124m:1024 --batch 16
python benchmarks/generate.py --device cuda --sizes tiny gpt2-124m --batches 1 8 \
    --tokens 128 --repeats 3 --compile
