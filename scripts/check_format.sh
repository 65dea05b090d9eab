#!/usr/bin/env bash
# Fails when a C++/CUDA source differs from .clang-format's layout; lists the files to fix with
# `clang-format -i`. Exit 77 (ctest: skipped) when clang-format is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "clang-format not installed (scripts/setup.sh installs it); skipping the format check"
  exit 77
fi
mapfile -t files < <(git ls-files '*.h' '*.cpp' '*.cu' 2>/dev/null || find . -path ./build -prune -o \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' \) -print)
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  echo "not formatted with .clang-format (run: clang-format -i FILE):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "${#files[@]} files formatted"
