#!/usr/bin/env bash
# On a real one-node Slurm started on localhost (scripts/slurm/local_cluster.sh), trains one small
# config with 3 and 4 workers three ways: `mpirun -n N`, `srun --mpi=pmix -n N` and `dtrain launch
# --nproc-per-node N`. Their exported final parameters must be identical byte for byte: the mpi
# backend sums in the tcp backend's rank order (docs/cluster.md), which Open MPI's own order
# (DTRAIN_MPI_REDUCTION_ORDER=native) does not from 3 ranks on. sbatch_check.sh covers 2 workers.
# Skips (77) without root, Slurm or munge.
# Usage: ranks_check.sh DTRAIN_EXECUTABLE SOURCE_DIR MPIEXEC
set -euo pipefail
dtrain=$1 source_dir=$2 mpiexec=$3

skip() {
  echo "SKIP: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (the local Slurm runs its daemons and jobs as root)"
for cmd in munged slurmctld slurmd srun sinfo; do
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

chmod go+x "$work"  # munged wants every directory above its socket searchable by all
exports=$("$source_dir/scripts/slurm/local_cluster.sh" start "$cluster")
eval "$exports"

# 20 ddp steps of batch 32 per worker, checkpointed at the last one; one kernel thread each.
config='model: {type: mlp, hidden: [64]}
data: {name: synthetic, synthetic_train_size: 4000, synthetic_test_size: 500, synthetic_shape: [64]}
train: {epochs: 1, max_steps: 20, batch_size: 32, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 20, resume: never, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false}'
export OMP_NUM_THREADS=1
fail=0
for n in 3 4; do
  for run in mpirun srun launch; do
    dir=$work/$n/$run
    mkdir -p "$dir"
    printf '%s\n' "$config" >"$dir/run.yaml"
    case $run in
      mpirun) cmd=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$mpiexec" -n "$n"
        --oversubscribe "$dtrain" train run.yaml) ;;
      # --overcommit: more tasks than the node's CPUs (the development machines have 2).
      srun) cmd=(srun --mpi=pmix --overcommit -n "$n" "$dtrain" train run.yaml) ;;
      launch) cmd=("$dtrain" launch --nproc-per-node "$n" run.yaml) ;;
    esac
    status=0
    (cd "$dir" && timeout 60 "${cmd[@]}" >out.txt 2>&1 &&
      timeout 20 "$dtrain" export checkpoints/ckpt-0000000020.dtck -o model.safetensors \
        >>out.txt 2>&1) || status=$?
    if [ "$status" -ne 0 ]; then
      echo "FAILED: $run with $n workers (status $status):"
      cat "$dir/out.txt"
      fail=1
    fi
  done
  for run in srun launch; do
    if cmp "$work/$n/mpirun/model.safetensors" "$work/$n/$run/model.safetensors"; then
      echo "ok: $run's parameters with $n workers are byte-identical to mpirun's"
    else
      echo "FAILED: $run's parameters with $n workers differ from mpirun's"
      fail=1
    fi
  done
done
[ "$fail" -eq 0 ] || exit 1
echo "1 passed, 0 failed"
