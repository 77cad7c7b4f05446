#!/usr/bin/env bash
# The GPU device check: what only a GPU can show, in one script of at most 8 minutes on one
# H100/H200-class GPU, writing one JSON file.
#
#   bash benchmarks/device_check.sh [OUT.json]      (default: benchmarks/results/device_check.json)
#
# Sections (each timed, each recorded even when it fails): CuPy similarity against NumPy and
# against cuBLAS GEMM; TMA on the GPU against the CPU; MiniLM embedding in fp16; DeepSpeed bf16
# training of a ~1B-parameter LLaMA (tokens/s, MFU), its ZeRO-3 snapshot and resumable save, and
# evaluation throughput; the training collectives with two processes where the node has two GPUs.
# Without a usable GPU it stops at once with one line and exit code 2. PYTHON names the
# interpreter (default: .venv/bin/python, else python3): on a GPU node that must be a CUDA build of
# torch with hpcgen[gpu] (CuPy) installed, e.g. the GPU image's python3
# (apptainer exec --nv hpcgen.sif bash benchmarks/device_check.sh with PYTHON=python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/device_check.json}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "device check: no usable CUDA GPU here (torch.cuda.is_available() is false); run it on a GPU node" >&2
  exit 2
fi
exec timeout 480 "$python" benchmarks/device_check.py --out "$out"
