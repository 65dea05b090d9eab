#!/usr/bin/env bash
# On a real one-node Slurm (scripts/slurm/local_cluster.sh): a train.sbatch job of 2 tasks gets
# SIGUSR1 in its steps, as `#SBATCH --signal=USR1@120` sends it before the time limit (here
# `scancel --signal=USR1` sends it at once). Both tasks must stop after one agreed step with a
# checkpoint, the script must requeue the job, and the requeued job must resume from that
# checkpoint and finish with the steps of an uninterrupted run. Skips (77) without root, Slurm or
# munge.
# Usage: preempt_check.sh DTRAIN_EXECUTABLE SOURCE_DIR
set -euo pipefail
dtrain=$(realpath "$1") source_dir=$(realpath "$2")

skip() {
  echo "SKIP: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (the local Slurm runs its daemons and jobs as root)"
for cmd in munged slurmctld slurmd sbatch srun scontrol scancel; do
  command -v "$cmd" >/dev/null || skip "$cmd is not installed (scripts/setup.sh installs it)"
done

work=$(mktemp -d /tmp/dtrain-preempt.XXXXXX)
cluster=$work/cluster
job=
cleanup() {
  local status=$?
  [ -n "$job" ] && scancel "$job" 2>/dev/null
  "$source_dir/scripts/slurm/local_cluster.sh" stop "$cluster" || status=1
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod go+x "$work"
exports=$("$source_dir/scripts/slurm/local_cluster.sh" start "$cluster")
eval "$exports"

# ~9,400 steps of 2 workers (batch 32 each), a checkpoint every 150: the first one shows both
# tasks are training, long before the run would end even on a quiet machine (~90k samples/s).
mkdir -p "$work/run"
cat >"$work/run/run.yaml" <<'YAML'
model: {type: mlp, hidden: [64]}
data: {name: synthetic, synthetic_train_size: 20000, synthetic_test_size: 1000,
       synthetic_shape: [1, 28, 28], synthetic_classes: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 30, batch_size: 32, seed: 3, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 150, keep_checkpoints: 2, resume: auto, threads: 1}
log: {progress: off, tensorboard: false, every_steps: 1000}
YAML
total_steps=$((30 * (20000 / 64)))
export OMP_NUM_THREADS=1

fail=0
check() {
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fail=1; fi
}
job_field() { { scontrol show job "$job" 2>/dev/null || true; } | grep -o "$1=[^ ]*" | head -n 1 | cut -d= -f2 || true; }

job=$(cd "$work/run" && DTRAIN=$dtrain sbatch --parsable --ntasks=2 --nodes=1 \
  "$source_dir/scripts/slurm/train.sbatch" run.yaml)
job=${job%%;*}
echo "job $job"

# Bounded waits: 0.1 s polls, for the first checkpoint and then for the job's end.
for _ in $(seq 1 1200); do
  # Any checkpoint: with keep_checkpoints 2 the first may be pruned already.
  compgen -G "$work/run/checkpoints/ckpt-*.dtck" >/dev/null && break
  [ -z "$(job_field JobState)" ] && break  # the job is gone
  sleep 0.1
done
check "the job wrote a checkpoint before the signal" compgen -G "$work/run/checkpoints/ckpt-*.dtck"
scancel --signal=USR1 "$job" || true
state=
for _ in $(seq 1 1800); do
  state=$(job_field JobState)
  case $state in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | "") break ;;
  esac
  sleep 0.1
done
check "the job completed (state ${state:-unknown})" test "$state" = COMPLETED
restarts=$(job_field Restarts)
check "the job was requeued once (Restarts=${restarts:-?})" test "${restarts:-0}" -eq 1

out=$work/run/dtrain-$job.out
touch "$out"
stopped=$(grep -o 'stopped by SIGUSR1 after step [0-9]*' "$out" | grep -o '[0-9]*$' || true)
check "rank 0 reported the stop once (step ${stopped:-none})" test "$(grep -c 'stopped by SIGUSR1' "$out")" -eq 1
check "the stop came before the run's end" test "${stopped:-$total_steps}" -lt "$total_steps"
check "the script requeued the job" grep -q "requeueing job $job" "$out"
ckpt=$(printf 'checkpoints/ckpt-%010d.dtck' "${stopped:-0}")
check "the requeued run resumed from $ckpt" grep -q "resuming from $ckpt: step ${stopped:-x}," "$out"
check "one final line, with every step" grep -q "^final: .* steps=$total_steps " "$out"
check "exactly one final line" test "$(grep -c '^final: ' "$out")" -eq 1

if [ "$fail" -ne 0 ]; then
  echo "--- $out ---"
  cat "$out"
  scontrol show job "$job" || true
  for f in "$cluster"/log/*.log; do
    [ -e "$f" ] || continue
    echo "--- $f (last 30 lines) ---"
    tail -n 30 "$f"
  done
  exit 1
fi
echo "1 passed, 0 failed"
