#!/usr/bin/env bash
# Runs, one after the other, every measurement of docs/performance.md that this machine can make,
# so that the document's figures come from one command: the PyTorch comparisons, fma_peak, the
# step_bench rows, thread scaling, DDP overlap, the all-reduce and comm benches, ZeRO-1, dtrain
# launch against mpirun, oneDNN primitive times, precisions, step phases and the end-to-end runs.
# About 30 minutes on a 2-core machine (the estimate is printed at the start), 2 more with
# --with-two-hosts (root only: network namespaces).
# Usage: bench/regenerate_performance.sh [--with-two-hosts] [OUT_DIR]
#        (from the repository root, after scripts/setup.sh; scripts/bench_env.sh for the current
#        PyTorch; default OUT_DIR build/perf-report/<UTC timestamp>)
# OUT_DIR gets machine.txt (CPU, commit, Open MPI, PyTorch), one NN_<section>.txt per measurement
# with its command on top, and summary.txt. A failed measurement is marked FAILED and the others
# still run; the exit status is 1 when any failed.
# The measurement functions run through `bash -c` (exported) and the INT/TERM trap:
# shellcheck disable=SC2317
set -uo pipefail

usage() { echo "usage: bench/regenerate_performance.sh [--with-two-hosts] [OUT_DIR]" >&2; exit 2; }
two_hosts=0
out=
while (($#)); do
  case "$1" in
    --with-two-hosts) two_hosts=1 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [ -z "$out" ] || usage; out=$1 ;;
  esac
  shift
done
if [ -n "$out" ]; then
  mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
fi
cd "$(dirname "$0")/.." || exit 2
if [ -z "$out" ]; then
  out=$PWD/build/perf-report/$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$out" || exit 2
fi

say() { echo "regenerate_performance: $*"; }

export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
env_line="OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
PERF_TMP=$(mktemp -d /tmp/dtrain-perf.XXXXXX) || exit 2
export PERF_TMP
trap 'rm -rf "$PERF_TMP"' EXIT

# ---- helpers the measurements run (exported: each measurement runs in its own bash) -------------

# Prints the command, then runs it; a failure is marked under its output and returned.
run_shown() {
  echo "\$ $1"
  eval "$1"
  local rc=$?
  ((rc == 0)) || echo "FAILED (exit $rc): $1"
  return "$rc"
}

# A fresh checkpoint and log folder for one dtrain run, and the overrides that point there.
new_run_dir() { mktemp -d "$PERF_TMP/run.XXXXXX"; }
run_overrides() {
  echo "train.checkpoint_dir=$1/checkpoints log.dir=$1/log train.resume=never log.progress=off" \
    "train.checkpoint_every_steps=0"
}

# One dtrain command in a fresh run folder ($1: the command before the overrides; $2: what follows
# them, e.g. a pipe), shown and run; the folder is removed afterwards.
run_fresh() {
  local d rc
  d=$(new_run_dir)
  run_shown "$1 $(run_overrides "$d")${2:+ $2}"
  rc=$?
  rm -rf "$d"
  return "$rc"
}

# The last samples_per_sec of a run's output file.
rate_of() { grep -o 'samples_per_sec=[0-9.]*' "$1" | tail -1 | cut -d= -f2; }

# Mean time per traced step of the named events (log.trace's Chrome trace), replica 0.
trace_means() {
  local trace=$1/trace.json
  shift
  python3 - "$trace" "$@" <<'EOF'
import json
import sys

events = [e for e in json.load(open(sys.argv[1]))["traceEvents"]
          if e.get("ph") == "X" and e.get("pid") == 0]
steps = sum(1 for e in events if e["name"] == "step")
print(f"{sys.argv[1]}: replica 0, {steps} traced steps, mean per step:")
for name in sys.argv[2:]:
    total = sum(e["dur"] for e in events if e["name"] == name)
    print(f"  {name}: {total / max(steps, 1) / 1000:.2f} ms")
EOF
}

# "Two kernel threads in one process": step_bench's GEMM and conv rows and the CNN config's step
# (mean of "step" over traced steps 10-29) with 1 and 2 threads, twice, alternating.
thread_scaling() {
  local rc=0 t d
  for t in 1 2 1 2; do
    run_shown "OMP_NUM_THREADS=$t build/bench/step_bench --benchmark_filter='Conv2dForwardBackward/C:32|GemmDirectDnnl/M:1024' --benchmark_min_time=0.5" || rc=1
  done
  for t in 1 2 1 2; do
    d=$(new_run_dir)
    run_shown "OMP_NUM_THREADS=$t build/dtrain train configs/fashion_mnist_cnn.yaml train.max_steps=40 train.threads=$t log.trace=true log.trace_first_step=10 log.trace_steps=20 $(run_overrides "$d")" || rc=1
    trace_means "$d/log" step || rc=1
    rm -rf "$d"
  done
  return "$rc"
}

# ZeRO-1: the optimizer state line (MLP and CNN, AdamW, 2 workers), the CNN's step phases
# unsharded and sharded (traced steps 4-11), and an interleaved MLP pair of 1,500-step runs.
zero1() {
  local rc=0 d shard notes=()
  local base="build/dtrain launch --nproc-per-node 2"
  local opts="strategy.type=ddp optimizer.type=adamw"
  d=$(new_run_dir)
  run_shown "$base configs/fashion_mnist_mlp.yaml $opts strategy.shard_optimizer=true train.max_steps=20 $(run_overrides "$d")" | tee "$d.out" || rc=1
  notes+=("MLP: $(grep 'optimizer state' "$d.out" || echo 'no optimizer state line')")
  rm -rf "$d" "$d.out"
  for shard in false true; do
    d=$(new_run_dir)
    run_shown "$base configs/fashion_mnist_cnn.yaml $opts strategy.shard_optimizer=$shard train.max_steps=12 log.trace=true log.trace_first_step=4 log.trace_steps=8 $(run_overrides "$d")" | tee "$d.out" || rc=1
    [ "$shard" = false ] || notes+=("CNN: $(grep 'optimizer state' "$d.out" || echo 'no optimizer state line')")
    trace_means "$d/log" step forward backward "wait for gradients" optimizer || rc=1
    rm -rf "$d" "$d.out"
  done
  for shard in false true; do
    d=$(new_run_dir)
    run_shown "$base configs/fashion_mnist_mlp.yaml $opts strategy.shard_optimizer=$shard train.max_steps=1500 $(run_overrides "$d")" | tee "$d.out" || rc=1
    notes+=("MLP, 1500 steps, shard_optimizer=$shard: $(rate_of "$d.out") samples/s")
    rm -rf "$d" "$d.out"
  done
  echo
  printf '%s\n' "${notes[@]}"
  return "$rc"
}

# "tcp backend": DDP with 2 workers of one thread each through dtrain launch (shared memory, then
# DTRAIN_SHARED_MEMORY=0) against mpirun (its default: buffers up to 4 MiB in shared memory; then
# DTRAIN_SHARED_MEMORY_MAX_MB=0, all through Open MPI; then 64, the CNN's bucket in shared memory
# too), the MLP and the CNN, interleaved, two rounds.
launch_vs_mpirun() {
  local rc=0 round spec config steps variant prefix d rates=()
  for round in 1 2; do
    for spec in synthetic_mlp:6000 fashion_mnist_cnn:120; do
      config=configs/${spec%%:*}.yaml steps=${spec#*:}
      for variant in launch launch-tcp mpirun mpirun-openmpi mpirun-shared; do
        case "$variant" in
          launch) prefix="build/dtrain launch --nproc-per-node 2" ;;
          launch-tcp) prefix="DTRAIN_SHARED_MEMORY=0 build/dtrain launch --nproc-per-node 2" ;;
          mpirun) prefix="mpirun --oversubscribe -n 2 build/dtrain train" ;;
          mpirun-openmpi) prefix="DTRAIN_SHARED_MEMORY_MAX_MB=0 mpirun --oversubscribe -n 2 build/dtrain train" ;;
          mpirun-shared) prefix="DTRAIN_SHARED_MEMORY_MAX_MB=64 mpirun --oversubscribe -n 2 build/dtrain train" ;;
        esac
        d=$(new_run_dir)
        run_shown "$prefix $config strategy.type=ddp train.max_steps=$steps $(run_overrides "$d")" | tee "$d.out" || rc=1
        rates+=("$(printf 'round %d  %-28s %-14s %s samples/s' "$round" "$config" "$variant" "$(rate_of "$d.out")")")
        rm -rf "$d" "$d.out"
      done
    done
  done
  echo
  printf '%s\n' "${rates[@]}"
  return "$rc"
}

# The per-primitive oneDNN times of the AVX2 section (CNN 30 steps, ResNet 20), as the doc sums them.
onednn_primitive_times() {
  local rc=0 spec sums
  sums=$(cat <<'EOF'
grep exec,cpu | grep -v mb256 | awk -F, '{k=$4","$5","$6; for (i=7; i<NF; i++) k=k","$i; t[k]+=$NF; n[k]++} END {for (k in t) printf "%9.2f ms %4d  %s\n", t[k], n[k], k}' | sort -rn
EOF
  )
  for spec in fashion_mnist_cnn:30 fashion_mnist_resnet:20; do
    run_fresh "ONEDNN_VERBOSE=1 OMP_NUM_THREADS=1 build/dtrain train configs/${spec%%:*}.yaml train.max_steps=${spec#*:} train.threads=1" "| $sums" || rc=1
  done
  return "$rc"
}

# "bfloat16 on this CPU": the MLP config end to end at each train.precision.
precision_mlp() {
  local rc=0 p
  for p in fp32 bf16 fp16; do
    run_fresh "build/dtrain train configs/fashion_mnist_mlp.yaml train.max_steps=300 train.threads=1 train.precision=$p" || rc=1
  done
  return "$rc"
}

# Where the steps go: forward, backward and optimiser per step over traced steps 10-29, one thread.
step_phases() {
  local rc=0 spec d extra
  for spec in fashion_mnist_cnn fashion_mnist_resnet char_transformer; do
    d=$(new_run_dir)
    extra=
    [ "$spec" != char_transformer ] || extra=" strategy.type=single data.cache_dir=$d/cache"
    run_shown "build/dtrain train configs/$spec.yaml train.max_steps=30 train.threads=1$extra log.trace=true log.trace_first_step=10 log.trace_steps=20 $(run_overrides "$d")" || rc=1
    trace_means "$d/log" step "data wait" forward backward optimizer || rc=1
    rm -rf "$d"
  done
  return "$rc"
}

# End to end with both cores: the MLP config's 10 epochs and the CNN config's 5.
end_to_end_two_threads() {
  local rc=0 config d
  for config in fashion_mnist_mlp fashion_mnist_cnn; do
    d=$(new_run_dir)
    run_shown "OMP_NUM_THREADS=2 build/dtrain train configs/$config.yaml $(run_overrides "$d")" || rc=1
    rm -rf "$d"
  done
  return "$rc"
}

export -f run_shown run_fresh new_run_dir run_overrides rate_of trace_means thread_scaling zero1 \
  launch_vs_mpirun onednn_primitive_times precision_mlp step_phases end_to_end_two_threads

# ---- the interpreter for the PyTorch comparisons -------------------------------------------------

venv_python=build/bench-venv/bin/python
debian_torch=$(/usr/bin/python3 -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
  debian_torch=
if [ -x "$venv_python" ] && venv_torch=$("$venv_python" -c 'import numpy, torch; print(torch.__version__)' 2>/dev/null); then
  py="$venv_python"
  py_opt=" --python $venv_python"
  kinds=mlp,cnn,resnet,transformer
  train_estimate=360
  py_note="$venv_python (scripts/bench_env.sh), torch $venv_torch"
else
  py="OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE /usr/bin/python3"
  py_opt=
  kinds=mlp,cnn,resnet  # the transformer needs PyTorch >= 2.0
  train_estimate=300
  py_note="Debian's /usr/bin/python3 with OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE, torch ${debian_torch:-not importable} ($venv_python absent or without torch; the char transformer row is left out: it needs PyTorch >= 2.0)"
fi

# ---- the plan: name, estimated seconds, command [, the line shown for it] -----------------------

names=() estimates=() commands=() shown=()
plan() {
  names+=("$1") estimates+=("$2") commands+=("$3") shown+=("${4:-$3}")
}
each_in_file="(each command above its output in the file)"

plan 01_train_vs_pytorch "$train_estimate" \
  "$py bench/train_vs_pytorch.py$py_opt --threads 1 --rounds 2 --kinds $kinds"
plan 02_ddp_vs_pytorch 180 "$py bench/ddp_vs_pytorch.py$py_opt --rounds 2 --models mlp,cnn"
plan 03_mlp_vs_pytorch 45 "$py bench/mlp_vs_pytorch.py$py_opt --threads 1 --rounds 3"
if [ -n "$py_opt" ] && [ -n "$debian_torch" ]; then
  plan 03b_mlp_vs_pytorch_debian_torch 45 \
    "OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/mlp_vs_pytorch.py --threads 1 --rounds 3"
fi
plan 04_fma_peak 10 "build/bench/fma_peak"
plan 05a_step_bench_gemm_attention 45 \
  "build/bench/step_bench --benchmark_filter='Gemm|Attention' --benchmark_min_time=0.3"
plan 05b_step_bench_conv2d 15 \
  "build/bench/step_bench --benchmark_filter='Conv2dForwardBackward' --benchmark_min_time=0.3"
plan 05c_step_bench_elementwise 10 \
  "build/bench/step_bench --benchmark_filter='Memcpy|BM_Add|BM_Relu' --benchmark_min_time=0.3"
plan 05d_step_bench_dropout_maxpool 15 \
  "build/bench/step_bench --benchmark_filter='DropoutMask|MaxPool|GemmDtrain/' --benchmark_min_time=0.3"
plan 05e_step_bench_gelu 10 \
  "build/bench/step_bench --benchmark_filter='Gelu' --benchmark_min_time=0.3"
plan 05f_step_bench_mlp_allocations 10 \
  "build/bench/step_bench --benchmark_filter='MlpTrainStep' --benchmark_min_time=0.3"
plan 06_thread_scaling 60 thread_scaling \
  "for t in 1 2 1 2: OMP_NUM_THREADS=\$t build/bench/step_bench --benchmark_filter='Conv2dForwardBackward/C:32|GemmDirectDnnl/M:1024' --benchmark_min_time=0.5; then for t in 1 2 1 2: build/dtrain train configs/fashion_mnist_cnn.yaml train.max_steps=40 train.threads=\$t log.trace=true log.trace_first_step=10 log.trace_steps=20, mean of \"step\" $each_in_file"
plan 07a_ddp_overlap_local 60 "build/bench/ddp_overlap_bench --rounds 3"
plan 07b_ddp_overlap_mpi 60 "mpirun --oversubscribe -n 2 build/bench/ddp_overlap_bench --rounds 3"
plan 07c_ddp_overlap_mpi_small_buckets 60 \
  "mpirun --oversubscribe -n 2 build/bench/ddp_overlap_bench --rounds 3 --bucket-cap-mb 0.25 --first-bucket-mb 0.25"
plan 08a_allreduce_mpi 60 "(cd build && mpirun --oversubscribe -n 2 bench/allreduce_bench)"
plan 08b_allreduce_small 15 "(cd build && mpirun --oversubscribe -n 2 bench/allreduce_bench 1)"
plan 08c_allreduce_tcp_shared_memory 40 \
  "(cd build && mpirun --oversubscribe -n 2 bench/allreduce_bench 64)"
plan 09_comm_bench 60 \
  "build/bench/comm_bench --benchmark_min_time=0.3 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true"
plan 10_zero1_optimizer_state 75 zero1 \
  "build/dtrain launch --nproc-per-node 2 configs/fashion_mnist_{mlp,cnn}.yaml strategy.type=ddp optimizer.type=adamw strategy.shard_optimizer=true|false: MLP 20 steps, CNN 12 steps traced 4-11, MLP 1500 steps $each_in_file"
plan 11_launch_vs_mpirun 300 launch_vs_mpirun \
  "2 rounds of configs/{synthetic_mlp (6000 steps),fashion_mnist_cnn (120 steps)}.yaml strategy.type=ddp through build/dtrain launch --nproc-per-node 2 [DTRAIN_SHARED_MEMORY=0] and [DTRAIN_SHARED_MEMORY_MAX_MB=0|64] mpirun --oversubscribe -n 2 build/dtrain train $each_in_file"
plan 12_onednn_primitive_times 45 onednn_primitive_times \
  "ONEDNN_VERBOSE=1 build/dtrain train configs/{fashion_mnist_cnn (30 steps),fashion_mnist_resnet (20 steps)}.yaml train.threads=1 | per-primitive sums $each_in_file"
plan 13_precision_mlp 25 precision_mlp \
  "build/dtrain train configs/fashion_mnist_mlp.yaml train.max_steps=300 train.threads=1 train.precision={fp32,bf16,fp16} $each_in_file"
plan 14_step_phases 60 step_phases \
  "build/dtrain train configs/{fashion_mnist_cnn,fashion_mnist_resnet,char_transformer}.yaml train.max_steps=30 train.threads=1 log.trace=true log.trace_first_step=10 log.trace_steps=20, phase means $each_in_file"
plan 15_end_to_end_two_threads 270 end_to_end_two_threads \
  "OMP_NUM_THREADS=2 build/dtrain train configs/{fashion_mnist_mlp,fashion_mnist_cnn}.yaml (all epochs) $each_in_file"
skipped=()
if ((two_hosts)); then
  if [ "$(id -u)" = 0 ]; then
    plan 16_two_hosts 120 "bench/two_hosts_bench.sh build/dtrain 2"
  else
    skipped+=("16_two_hosts: skipped (network namespaces need root)")
  fi
else
  skipped+=("16_two_hosts: not run (--with-two-hosts, as root)")
fi

# ---- the machine --------------------------------------------------------------------------------

{
  echo "date: $(date -u)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "vector flags: $(lscpu | sed -n 's/^Flags: *//p' | tr ' ' '\n' |
    grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_.*)$' | tr '\n' ' ')"
  echo "cpus: $(nproc --all)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit: $(git rev-parse HEAD)"
  echo "git status --short (first lines):"
  git status --short | head
  echo "build: $(grep -E '^(CMAKE_BUILD_TYPE|DTRAIN_NATIVE):' build/CMakeCache.txt 2>/dev/null | tr '\n' ' ')"
  echo "open mpi: $(mpirun --version 2>&1 | head -1)"
  echo "pytorch comparisons: $py_note"
  [ -z "$debian_torch" ] || echo "debian torch (/usr/bin/python3): $debian_torch"
  echo "environment of every command: $env_line"
} >"$out/machine.txt" 2>&1

# ---- run ----------------------------------------------------------------------------------------

total=0
for e in "${estimates[@]}"; do total=$((total + e)); done
say "writing to $out"
say "PyTorch: $py_note"
for binary in build/dtrain build/bench/step_bench build/bench/comm_bench \
  build/bench/ddp_overlap_bench build/bench/fma_peak build/bench/allreduce_bench; do
  [ -x "$binary" ] || say "$binary is missing (scripts/setup.sh builds it); what needs it will fail"
done
load=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$load" 'BEGIN { exit !(l > 0.5) }' &&
  say "load average $load: other work may be running, which makes the figures noisy"
say "${#names[@]} measurements, about $(((total + 59) / 60)) minutes (until about $(date -u -d "+$total sec" +%H:%M) UTC)"

summary=()
child=
failed=0
started=$(date +%s)

print_summary() {
  {
    echo
    echo "summary ($(($(date +%s) - started)) s in all):"
    printf '  %s\n' "${summary[@]}" "${skipped[@]}"
  } | tee "$out/summary.txt"
}

on_signal() {
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null
  wait
  summary+=("interrupted")
  print_summary
  exit 130
}
trap on_signal INT TERM

# One measurement: its line on stdout and at the top of its file, then its output, under a time
# limit well above the estimate (its own process group, so mpirun's ranks go with it).
measure() {
  local name=$1 estimate=$2 command=$3 line=$4 file=$out/$1.txt start rc seconds status limit
  line="[$(date -u +%T)] $name: $line"
  echo "$line"
  { echo "$line"; echo "# environment: $env_line"; echo; } >"$file"
  limit=$((estimate * 5 + 300))
  start=$(date +%s)
  timeout -k 30 "$limit" bash -uo pipefail -c "$command" >>"$file" 2>&1 &
  child=$!
  wait "$child"
  rc=$?
  child=
  seconds=$(($(date +%s) - start))
  if ((rc == 0)); then
    status=ok
  else
    status="FAILED (exit $rc)"
    ((rc != 124)) || status+=", stopped after $limit s"
    failed=1
  fi
  echo "# $status, $seconds s" >>"$file"
  summary+=("$(printf '%-36s %6d s  %s' "$name" "$seconds" "$status")")
}

for i in "${!names[@]}"; do
  measure "${names[i]}" "${estimates[i]}" "${commands[i]}" "${shown[i]}"
done
print_summary
say "results in $out"
exit "$failed"
