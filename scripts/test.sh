#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs every test suite through ctest.
# Extra arguments go to ctest, e.g. scripts/test.sh -L autograd
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Reference Python readers (tensorboard, safetensors) for tests/train/readers_test.cpp; those
# tests skip when the venv cannot be made (e.g. no network).
if pyreaders=$(scripts/python_readers.sh); then
  export DTRAIN_PYREADERS="$pyreaders"
else
  echo "test: Python readers unavailable; the PythonReaders tests will be skipped" >&2
fi
ctest --test-dir build --output-on-failure --timeout 300 -j"$(nproc)" "$@"
