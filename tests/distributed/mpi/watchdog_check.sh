#!/usr/bin/env bash
# Runs mpi_watchdog with 3 ranks and checks that the job stops within the watchdog timeout plus
# 10 s, exits non-zero, that ranks 0 and 2 both name rank 1, and that no process is left behind.
# Usage: watchdog_check.sh MPIEXEC MPI_WATCHDOG_BINARY
set -u
mpiexec=$1 binary=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export DTRAIN_STORE_TOKEN="watchdog-check-$$-$RANDOM"
output=$(mktemp)
trap 'rm -f "$output"' EXIT
start=$(date +%s)
timeout 60 "$mpiexec" --oversubscribe -n 3 "$binary" >"$output" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
fail=0
check() { if ! eval "$1"; then echo "FAILED: $2"; fail=1; else echo "ok: $2"; fi; }
check '[ "$status" -ne 0 ] && [ "$status" -ne 124 ]' "the job exits non-zero without hanging (status $status)"
check '[ "$elapsed" -le 12 ]' "it stops within the 2 s timeout + 10 s (took ${elapsed} s)"
check 'grep -q "rank 0: collective #3 all_reduce(sum) float32 x 1024 has waited" "$output"' "rank 0 reports the collective"
check 'grep -q "rank 2: collective #3 all_reduce(sum) float32 x 1024 has waited" "$output"' "rank 2 reports the collective"
check '[ "$(grep -c "ranks that have not reached it: 1$" "$output")" -ge 1 ]' "the report names rank 1"
check '! grep -q "finished, which it must not have" "$output"' "no rank completed the stalled collective"
# mpirun may return while the ranks it signalled are still exiting: poll (at most 5 s) until they
# are gone; a rank that survives (the sleeping one would for 60 s) fails the check.
for _ in $(seq 50); do
  sleep_pids=$(pgrep -x "$(basename "$binary")" || true)
  [ -z "$sleep_pids" ] && break
  sleep 0.1
done
check '[ -z "$sleep_pids" ]' "no process of the job is left (found: ${sleep_pids:-none})"
if [ "$fail" -ne 0 ]; then
  echo "--- job output ---"
  cat "$output"
  exit 1
fi
echo "1 passed, 0 failed"
