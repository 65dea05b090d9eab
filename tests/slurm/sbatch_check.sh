#!/usr/bin/env bash
# On a real one-node Slurm started on localhost (scripts/slurm/local_cluster.sh), trains one small
# config five ways with 2 workers: `mpirun -n 2`, `srun --mpi=pmix -n 2` (no launcher),
# `dtrain launch --nproc-per-node 2`, and `sbatch --ntasks=2 scripts/slurm/train.sbatch` with srun
# tasks as workers and with DTRAIN_LAUNCHER=dtrain. All must succeed, print exactly one final line
# with the same test_accuracy, test_loss and steps, and leave final checkpoints whose exported
# parameters are identical byte for byte. Skips (77) without root, Slurm or munge.
# Usage: sbatch_check.sh DTRAIN_EXECUTABLE SOURCE_DIR MPIEXEC
set -euo pipefail
dtrain=$1 source_dir=$2 mpiexec=$3

skip() {
  echo "SKIP: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (the local Slurm runs its daemons and jobs as root)"
for cmd in munged slurmctld slurmd sbatch srun sinfo; do
  command -v "$cmd" >/dev/null || skip "$cmd is not installed (scripts/setup.sh installs it)"
done
[ -x "$mpiexec" ] || skip "$mpiexec is not installed"

# A short path: the munge socket under it must fit in a unix socket address.
work=$(mktemp -d /tmp/dtrain-slurm.XXXXXX)
cluster=$work/cluster
cleanup() {
  local status=$?
  "$source_dir/scripts/slurm/local_cluster.sh" stop "$cluster" || status=1
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # runs cleanup through the EXIT trap

# munged wants every directory above its socket searchable by all.
chmod go+x "$work"
# Not eval "$(...)" directly: that would ignore a failed start.
exports=$("$source_dir/scripts/slurm/local_cluster.sh" start "$cluster")
eval "$exports"
echo "SLURM_CONF=$SLURM_CONF"

# A config that trains in well under a second: 2048 samples, batch 32 per worker, 2 epochs, so
# 64 steps with 2 workers (128 with one: the step count proves both workers took part). The final
# checkpoint goes to checkpoints/ under each run's own directory.
config='model:
  type: mlp
  hidden: [32]
data:
  name: synthetic
  synthetic_train_size: 2048
  synthetic_test_size: 512
  synthetic_shape: [32]
train:
  epochs: 2
  batch_size: 32
  resume: never
  checkpoint_dir: checkpoints
log:
  progress: off
  tensorboard: false'
expected_steps=64
runs=(mpirun srun sbatch launch sbatch-launch)
for run in "${runs[@]}"; do
  mkdir -p "$work/$run"
  printf '%s\n' "$config" >"$work/$run/run.yaml"
done

# The same kernel thread count everywhere (train.sbatch sets it from --cpus-per-task, default 1).
export OMP_NUM_THREADS=1
fail=0
# check DESCRIPTION COMMAND...: runs the command, prints ok/FAILED and remembers a failure.
check() {
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fail=1; fi
}
equal_nonempty() { [ -n "$1" ] && [ "$1" = "$2" ]; }

echo "--- mpirun -n 2 --oversubscribe dtrain train run.yaml strategy.type=ddp"
status=0
(cd "$work/mpirun" &&
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 45 \
    "$mpiexec" -n 2 --oversubscribe "$dtrain" train run.yaml strategy.type=ddp) \
  >"$work/mpirun/out.txt" 2>&1 || status=$?
check "mpirun exits 0 (status $status)" test "$status" -eq 0

echo "--- srun --mpi=pmix -n 2 dtrain train run.yaml strategy.type=ddp"
status=0
(cd "$work/srun" && timeout 45 srun --mpi=pmix -n 2 "$dtrain" train run.yaml strategy.type=ddp) \
  >"$work/srun/out.txt" 2>&1 || status=$?
check "srun exits 0 (status $status)" test "$status" -eq 0

echo "--- dtrain launch --nproc-per-node 2 run.yaml strategy.type=ddp"
# The launcher prefixes worker lines with [rank N]; rank 0's lines are compared like the others.
status=0
(cd "$work/launch" && timeout 45 "$dtrain" launch --nproc-per-node 2 run.yaml strategy.type=ddp) \
  >"$work/launch/launch.txt" 2>&1 || status=$?
sed -n 's/^\[rank 0\] //p' "$work/launch/launch.txt" >"$work/launch/out.txt"
check "dtrain launch exits 0 (status $status)" test "$status" -eq 0

echo "--- sbatch --wait --ntasks=2 --nodes=1 scripts/slurm/train.sbatch run.yaml"
# No strategy override: train.sbatch must turn the config's default `single` into ddp. sbatch
# --wait exits with the job's exit status.
status=0
job=$(cd "$work/sbatch" && DTRAIN=$dtrain timeout 60 sbatch --wait --parsable --ntasks=2 \
  --nodes=1 "$source_dir/scripts/slurm/train.sbatch" run.yaml 2>"$work/sbatch/sbatch.err") ||
  status=$?
job=${job%%;*}  # --parsable prints JOBID[;CLUSTER]
check "sbatch job ${job:-?} exits 0 (status $status)" test "$status" -eq 0
# The job's output file (--output=dtrain-%j.out in the submit directory) is what we compare.
if [ -n "$job" ] && [ -f "$work/sbatch/dtrain-$job.out" ]; then
  cp "$work/sbatch/dtrain-$job.out" "$work/sbatch/out.txt"
else
  echo "no output file dtrain-${job:-?}.out" >"$work/sbatch/out.txt"
fi
check "the batch job ran 2 tasks on 1 node" \
  grep -q "^train.sbatch: job $job: 2 tasks on 1 node" "$work/sbatch/out.txt"

echo "--- DTRAIN_LAUNCHER=dtrain sbatch --wait --ntasks=2 --nodes=1 scripts/slurm/train.sbatch run.yaml"
# The batch script's launcher mode: one dtrain launch per node (here one), its store on a port
# unlikely to be taken.
status=0
job=$(cd "$work/sbatch-launch" && DTRAIN=$dtrain DTRAIN_LAUNCHER=dtrain \
  DTRAIN_RDZV_PORT=$((20000 + RANDOM % 9000)) timeout 60 sbatch --wait --parsable --ntasks=2 \
  --nodes=1 "$source_dir/scripts/slurm/train.sbatch" run.yaml 2>"$work/sbatch-launch/sbatch.err") ||
  status=$?
job=${job%%;*}
check "sbatch job ${job:-?} in launcher mode exits 0 (status $status)" test "$status" -eq 0
if [ -n "$job" ] && [ -f "$work/sbatch-launch/dtrain-$job.out" ]; then
  sed 's/^\[rank 0\] //' "$work/sbatch-launch/dtrain-$job.out" >"$work/sbatch-launch/out.txt"
else
  echo "no output file dtrain-${job:-?}.out" >"$work/sbatch-launch/out.txt"
fi
check "the batch job ran one dtrain launch with 2 workers" \
  grep -q "^train.sbatch: dtrain launch on 1 node(s), 2 worker(s) each" "$work/sbatch-launch/out.txt"

# "final: test_accuracy=A test_loss=L steps=S samples_per_sec=... wall_s=..." minus the timings.
declare -A fields_of  # run -> its final line's fields
final_fields() { grep '^final: ' "$1" | grep -o 'test_accuracy=[^ ]* test_loss=[^ ]* steps=[^ ]*'; }
for run in "${runs[@]}"; do
  out=$work/$run/out.txt
  count=$(grep -c '^final: ' "$out" || true)
  check "$run prints exactly one final line (found ${count:-none})" test "${count:-0}" -eq 1
  fields=$(final_fields "$out" | head -n 1 || true)
  echo "   $run: ${fields:-no final line}"
  fields_of[$run]=$fields
  check "$run ran $expected_steps steps, i.e. 2 workers (batch 32 each)" \
    grep -q " steps=$expected_steps\$" <<<"$fields"
done
check "srun's test_accuracy, test_loss and steps equal mpirun's" \
  equal_nonempty "${fields_of[mpirun]}" "${fields_of[srun]}"
check "sbatch's test_accuracy, test_loss and steps equal mpirun's" \
  equal_nonempty "${fields_of[mpirun]}" "${fields_of[sbatch]}"
check "sbatch's test_accuracy, test_loss and steps equal dtrain launch's" \
  equal_nonempty "${fields_of[launch]}" "${fields_of[sbatch]}"
check "sbatch in launcher mode gives the same test_accuracy, test_loss and steps" \
  equal_nonempty "${fields_of[launch]}" "${fields_of[sbatch-launch]}"

# Training state: export the last checkpoint of each run (same relative path, since the export's
# metadata names it) and compare the files.
for run in "${runs[@]}"; do
  status=0
  (cd "$work/$run" && ckpt=$(find checkpoints -name '*.dtck' 2>/dev/null | sort | tail -n 1) &&
    [ -n "$ckpt" ] && echo "   $run: $ckpt" &&
    timeout 20 "$dtrain" export "$ckpt" -o model.safetensors >export.txt 2>&1) || status=$?
  check "$run's final checkpoint exports to safetensors" test "$status" -eq 0
done
check "srun's exported parameters are byte-identical to mpirun's" \
  cmp "$work/mpirun/model.safetensors" "$work/srun/model.safetensors"
check "sbatch's exported parameters are byte-identical to mpirun's" \
  cmp "$work/mpirun/model.safetensors" "$work/sbatch/model.safetensors"
check "sbatch's exported parameters are byte-identical to dtrain launch's" \
  cmp "$work/launch/model.safetensors" "$work/sbatch/model.safetensors"
check "sbatch in launcher mode exports the same parameters byte for byte" \
  cmp "$work/launch/model.safetensors" "$work/sbatch-launch/model.safetensors"

# Stop the cluster here (the trap would too) to check that nothing of it is left: every daemon
# was started with a path under $cluster on its command line.
stop_status=0
"$source_dir/scripts/slurm/local_cluster.sh" stop "$cluster" || stop_status=$?
check "local_cluster.sh stop succeeds" test "$stop_status" -eq 0
left=$(pgrep -a -f -- "$cluster" || true)
check "no munged, slurmctld or slurmd of this cluster is left (found: ${left:-none})" \
  test -z "$left"

if [ "$fail" -ne 0 ]; then
  for run in "${runs[@]}"; do
    echo "--- $run output ---"
    cat "$work/$run/out.txt"
  done
  echo "--- sbatch stderr ---"
  cat "$work/sbatch/sbatch.err" 2>/dev/null || true
  for f in "$cluster"/log/*.log; do
    [ -e "$f" ] || continue
    echo "--- $f (last 30 lines) ---"
    tail -n 30 "$f"
  done
  exit 1
fi
echo "1 passed, 0 failed"
