#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs every test suite through ctest.
# Extra arguments go to ctest, e.g. scripts/test.sh -L autograd
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure --timeout 300 -j"$(nproc)" "$@"
