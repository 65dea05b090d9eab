#!/usr/bin/env bash
# On a real one-node Slurm started on localhost (scripts/slurm/local_cluster.sh): a 2-task
# `srun --mpi=pmix --kill-on-bad-exit=1 dtrain train` job whose rank 1 is stopped with SIGSTOP
# while it trains. The job must end within strategy.timeout_s + 10 s with exit status 3, rank 0's
# watchdog report must name rank 1 (from the Store rank 0 hosts for the watchdogs), and no process
# of the job may be left. Skips (77) without root, Slurm or munge.
# Usage: hang_check.sh DTRAIN_EXECUTABLE SOURCE_DIR
set -euo pipefail
dtrain=$1 source_dir=$2
timeout_s=4

skip() {
  echo "SKIP: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (the local Slurm runs its daemons and jobs as root)"
for cmd in munged slurmctld slurmd srun sinfo; do
  command -v "$cmd" >/dev/null || skip "$cmd is not installed (scripts/setup.sh installs it)"
done

work=$(mktemp -d /tmp/dtrain-slurm.XXXXXX)
cluster=$work/cluster
marker="hang-check-$$-$RANDOM"
# Every process of the job carries DTRAIN_TEST_JOB=$marker in its environment (srun passes the
# environment on).
job_pids() {
  grep -lzx "DTRAIN_TEST_JOB=$marker" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
}
cleanup() {
  local status=$? p
  for p in $(job_pids); do kill -CONT "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  "$source_dir/scripts/slurm/local_cluster.sh" stop "$cluster" || status=1
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # runs cleanup through the EXIT trap

chmod go+x "$work"  # munged wants every directory above its socket searchable by all
exports=$("$source_dir/scripts/slurm/local_cluster.sh" start "$cluster")
eval "$exports"

mkdir -p "$work/run"
cat >"$work/run/run.yaml" <<'EOF'
model: {type: mlp, hidden: [64]}
data: {name: synthetic, synthetic_train_size: 20000, synthetic_test_size: 1000,
       synthetic_shape: [1, 28, 28], synthetic_classes: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1000, batch_size: 32, seed: 3, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 150, keep_checkpoints: 2, resume: never, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false, every_steps: 1000}
EOF

fail=0
check() {
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fail=1; fi
}

echo "--- srun --mpi=pmix -n 2 --kill-on-bad-exit=1 dtrain train run.yaml strategy.timeout_s=$timeout_s"
# srun's status goes to a file once it has ended (|| keeps set -e from ending the subshell first).
(
  status=0
  cd "$work/run" && DTRAIN_TEST_JOB=$marker OMP_NUM_THREADS=1 timeout -s KILL 120 \
    srun --mpi=pmix -n 2 --kill-on-bad-exit=1 "$dtrain" train run.yaml \
    strategy.timeout_s=$timeout_s >"$work/run/out.txt" 2>&1 || status=$?
  echo "$status" >"$work/run/status"
) &
# The first checkpoint (step 150) shows both ranks train; bounded to 120 s.
victim=
for _ in $(seq 1200); do
  if [ -e "$work/run/checkpoints" ] && [ -n "$(ls "$work/run/checkpoints")" ]; then
    for p in $(job_pids); do
      if grep -qzx "SLURM_PROCID=1" "/proc/$p/environ" 2>/dev/null &&
        [ "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | cut -d' ' -f2)" = train ]; then
        victim=$p
      fi
    done
  fi
  [ -n "$victim" ] && break
  [ -e "$work/run/status" ] && break
  sleep 0.1
done
if [ -z "$victim" ]; then
  echo "FAILED: the job did not start training, or rank 1 was not found"
  cat "$work/run/out.txt"
  exit 1
fi
kill -STOP "$victim"
stopped_at=$(date +%s%N)
# Bounded: the job must end by itself well within this.
for _ in $(seq $(((timeout_s + 40) * 10))); do
  [ -e "$work/run/status" ] && break
  sleep 0.1
done
ended_at=$(date +%s%N)
status=$(cat "$work/run/status" 2>/dev/null || echo "none (still running)")
elapsed_ms=$(((ended_at - stopped_at) / 1000000))
echo "srun ended $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s after the stop, status $status"

check "srun exits with status 3 (status $status)" test "$status" = 3
check "within strategy.timeout_s + 10 s (${elapsed_ms} ms)" test "$elapsed_ms" -le $(((timeout_s + 10) * 1000))
check "rank 0's watchdog reports" grep -q "watchdog timeout (.*): rank 0: collective #" "$work/run/out.txt"
check "the report names rank 1" grep -Eq \
  "ranks that have not reached it: 1$|stopped responding before finishing it \(stopped, hung or cut off\): 1$" \
  "$work/run/out.txt"
check "the report knows rank 1's progress (the Store rank 0 hosts)" \
  grep -Eq "^  rank 1: (last started|no progress report)" "$work/run/out.txt"
check "not the collective's own anonymous timeout" \
  bash -c "! grep -q 'did not complete within' '$work/run/out.txt'"
left=
for _ in $(seq 100); do
  left=$(job_pids | tr '\n' ' ')
  [ -z "$left" ] && break
  sleep 0.1
done
check "no process of the job is left (found: ${left:-none})" test -z "$left"

if [ "$fail" -ne 0 ]; then
  echo "--- srun output ---"
  cat "$work/run/out.txt"
  exit 1
fi
echo "1 passed, 0 failed"
