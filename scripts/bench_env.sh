#!/usr/bin/env bash
# Creates the virtual environment the PyTorch comparisons run with (bench/*_vs_pytorch.py
# --python): the current torch from the Python package index, used on the CPU, and numpy. It is
# large (about 5 GB with the CUDA libraries PyPI's torch depends on), so it never runs in CI or
# scripts/setup.sh. Idempotent: pip runs only when torch is missing. Prints the venv's python.
# Usage: scripts/bench_env.sh [VENV_DIR] (default build/bench-venv). Debian's python3-torch 1.13
# (/usr/bin/python3, with OPENBLAS_NUM_THREADS and OMP_WAIT_POLICY=PASSIVE) is the fallback.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-build/bench-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2 || {
    echo "bench_env: '$python -m venv $venv' failed; install python3-venv" >&2
    exit 1
  }
fi
if ! "$venv/bin/python" -c "import torch, numpy" >/dev/null 2>&1; then
  echo "bench_env: installing torch and numpy from the package index into $venv (about 5 GB)" >&2
  "$venv/bin/python" -m pip install --quiet --retries 2 --timeout 120 torch numpy >&2 || {
    echo "bench_env: pip could not install torch into $venv (no network or no package index?)" >&2
    exit 1
  }
fi
"$venv/bin/python" -c "import re, torch; m = re.search(r'MKL-DNN v([0-9.]+)', torch.__config__.show()); \
print('bench_env: torch', torch.__version__, 'oneDNN', m.group(1) if m else 'absent')" >&2
echo "$venv/bin/python"
