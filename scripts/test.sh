#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), runs every test suite through ctest, then the ASan+UBSan
# and TSan runs (scripts/sanitize.sh) and the fuzzers (scripts/fuzz.sh).
# Extra arguments go to ctest, e.g. scripts/test.sh -L autograd (and skip the sanitizer runs);
# DTRAIN_SANITIZERS=0 skips them too, except in CI (CI=true).
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

# Then the sanitizer builds and the fuzzers (docs/testing.md): always in CI; locally too, unless
# DTRAIN_SANITIZERS=0 or ctest arguments select a part of the suite.
if [ "${CI:-}" = true ] || { [ "${DTRAIN_SANITIZERS:-1}" != 0 ] && (($# == 0)); }; then
  scripts/sanitize.sh asan tsan
  scripts/fuzz.sh
fi
