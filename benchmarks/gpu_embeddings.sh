#!/usr/bin/env bash
# The embeddings benchmark on a GPU machine, with the KIND_GPU model configuration
# (deploy/triton/gpu/text_encoder/config.pbtxt: 2 instances, max_batch_size 256, torch runtime
# on CUDA). The in-process baseline runs on the same GPU. Not run on the CPU-only dev machines.
#
#   benchmarks/gpu_embeddings.sh [extra flags for python -m benchmarks.embeddings]
#
# Needs: the project venv (make setup) with a CUDA build of torch, and an NVIDIA driver. The
# tritonserver binary from nvidia-pytriton is CUDA-enabled; the launcher runs it as on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: this benchmark needs a GPU (and a CUDA torch build)")
print("GPU:", torch.cuda.get_device_name(0))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

mkdir -p out
exec "$PYTHON" -m benchmarks.embeddings --variant gpu --batch-size 64 --texts 4096 \
  --out out/gpu_embeddings.md "$@"
