#!/usr/bin/env bash
# Creates a Python venv with the reference readers of dtrain's output files (tensorboard,
# safetensors, numpy, and onnx with onnxruntime for ONNX exports) for tests/train/readers_test.cpp
# and onnx_test.cpp, and prints the venv's python on stdout.
# Idempotent: pip runs only when a package is missing. Usage: scripts/python_readers.sh [VENV_DIR]
# (default build/pyreaders); then export DTRAIN_PYREADERS=<printed path>.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-build/pyreaders}"
python="${PYTHON:-python3}"
readers_import="import tensorboard.backend.event_processing.event_accumulator, safetensors.numpy, numpy, onnx, onnxruntime"

if [ ! -x "$venv/bin/python" ]; then
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >&2; then
    echo "python_readers: '$python -m venv $venv' failed; install python3-venv (Debian/Ubuntu)" >&2
    exit 1
  fi
fi

if ! "$venv/bin/python" -c "$readers_import" >/dev/null 2>&1; then
  echo "python_readers: installing tensorboard safetensors numpy onnx onnxruntime into $venv" >&2
  if ! "$venv/bin/python" -m pip install --quiet --retries 1 --timeout 60 tensorboard safetensors numpy onnx onnxruntime >&2; then
    echo "python_readers: pip could not install tensorboard/safetensors/numpy/onnx/onnxruntime into $venv" \
      "(no network or no package index?); the reader tests will be skipped" >&2
    exit 1
  fi
  "$venv/bin/python" -c "$readers_import"
fi

echo "$(cd "$venv" && pwd)/bin/python"
