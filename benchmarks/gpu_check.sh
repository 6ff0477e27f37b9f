#!/usr/bin/env bash
# GPU check on a machine with one NVIDIA GPU, Python 3.12, JAX and/or PyTorch (CUDA) and no
# internet: installs the carried wheels (.whl/, made by benchmarks/gpu_wheels.sh), then runs
# benchmarks/gpu_check.py (parity with tests/data/parity_reference_small.npz, throughput at
# batch 1/8/32/128 under JAX and PyTorch, a 405-volume participant run with --backend jax).
# Results: $OUT/gpu_check.{json,md} (or --out DIR).  Extra arguments go to gpu_check.py
# (e.g. --dry-run on CPU).  Each stage has its own time limit; the whole check is meant
# to stay under 8 minutes on an H100/H200-class GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl keras nibabel nilearn pybids templateflow tomli-w \
        || echo "gpu_check.sh: installing the carried wheels failed; continuing with what is installed" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # measure JAX's real peak memory, share the GPU with torch
exec "$PYTHON" benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
