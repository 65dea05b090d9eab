#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan+UBSan, in build-asan/ next to the ASan tests)
# and runs each for a bounded time, starting from its committed seeds in fuzz/corpus/<target>/.
# Usage: scripts/fuzz.sh [TARGET...]   (default: every target; e.g. scripts/fuzz.sh store_fuzz)
# Environment: DTRAIN_FUZZ_SECONDS per target (default 60), DTRAIN_FUZZ_JOBS targets at once
# (default: the number of cores).
# New inputs go to build-asan/fuzz-corpus/<target>/ (the committed seeds stay as they are). A
# crash, leak or timeout fails the script and leaves the input in build-asan/fuzz-artifacts/;
# reproduce it with `build-asan/fuzz/<target> <that file>`, then add it to fuzz/corpus/<target>/
# and a regression test to tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${DTRAIN_FUZZ_SECONDS:-60}
parallel=${DTRAIN_FUZZ_JOBS:-$(nproc)}
all_targets=(config_fuzz checkpoint_fuzz idx_fuzz npy_fuzz safetensors_fuzz store_fuzz tcp_fuzz)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

symbolizer=$(command -v llvm-symbolizer || true)
export ASAN_SYMBOLIZER_PATH="$symbolizer"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$root/scripts/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

t0=$(date +%s)
mkdir -p build-asan
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DDTRAIN_SANITIZE=address,undefined -DDTRAIN_FUZZ=ON -DDTRAIN_CUDA=OFF -DDTRAIN_BUILD_BENCH=OFF \
  "${launcher[@]}" >build-asan/configure.log 2>&1 || { cat build-asan/configure.log; exit 1; }
t1=$(date +%s)
nice -n 5 ninja -C build-asan "${targets[@]}" >build-asan/fuzz-build.log 2>&1 ||
  { tail -50 build-asan/fuzz-build.log; exit 1; }
t2=$(date +%s)
echo "fuzz: configure $((t1 - t0)) s, build $((t2 - t1)) s; ${seconds} s per target, $parallel at once"

mkdir -p build-asan/fuzz-artifacts build-asan/fuzz-logs
# One target: fuzz for `seconds`; exit status and the last lines of its log tell how it ended.
run_one() {
  local target=$1
  local log=build-asan/fuzz-logs/$target.log
  mkdir -p "build-asan/fuzz-corpus/$target"
  # -timeout: one input taking this long is a finding (the network targets bound theirs at 20 s).
  if build-asan/fuzz/"$target" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2560 \
    -max_len=4096 -print_final_stats=1 -artifact_prefix="build-asan/fuzz-artifacts/$target-" \
    "build-asan/fuzz-corpus/$target" "fuzz/corpus/$target" >"$log" 2>&1; then
    echo "fuzz: $target: ok, $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" |
      grep -o '[0-9]*$') inputs"
  else
    echo "fuzz: $target: FAILED; the input is in build-asan/fuzz-artifacts/; end of $log:"
    tail -60 "$log"
    return 1
  fi
}
export -f run_one
export seconds
status=0
printf '%s\n' "${targets[@]}" | xargs -P "$parallel" -I{} bash -c 'run_one {}' || status=1
echo "fuzz: run $(($(date +%s) - t2)) s"
exit $status
