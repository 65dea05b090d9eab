#!/usr/bin/env bash
# A network partition between two hosts mid-training. Two network namespaces joined by a veth pair
# (10.79.0.1 and 10.79.0.2, no default route) run one `dtrain launch` each, one worker per host.
# After the first checkpoint host b's end of the link goes down. Then the workers must stop within
# strategy.timeout_s (plus a small margin), each side's output must name the rank or address it
# lost, both launchers must exit with status 1 in bounded time, no process may remain in either
# namespace, and the newest checkpoint must still evaluate.
# Usage: netns_partition.sh DTRAIN   (exit 77 = skipped, with the reason printed)
set -euo pipefail

timeout_s=4       # strategy.timeout_s
worker_margin=6   # process exit and the watchdog's poll on top of the timeout
launcher_limit=60 # node b's launcher waits for a Store that cannot answer (30 s request timeout)
# shellcheck source-path=SCRIPTDIR source=netns_lib.sh
source "$(dirname "$0")/netns_lib.sh"
netns_hosts "$1" p 10.79.0
# Long enough (~31,000 steps) that only the partition can end it.
netns_config 100

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The pids of `dtrain train` processes inside namespace NS.
workers_in() {
  local p
  for p in $(ip netns pids "$1" 2>/dev/null); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^$dtrain train " && echo "$p"
  done
  return 0
}

common=(--nnodes 2 --rdzv-endpoint 10.79.0.1:29400 run.yaml "strategy.timeout_s=$timeout_s"
  launcher.rdzv_timeout_s=10)
launch_on "$ns_a" host-a "$work" "$work/a.out" --node-rank 0 "${common[@]}"
launch_on "$ns_b" host-b "$work" "$work/b.out" --node-rank 1 "${common[@]}"

for _ in $(seq 1200); do
  [ -e "$work/checkpoints/ckpt-0000000150.dtck" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null || break
  sleep 0.1
done
[ -e "$work/checkpoints/ckpt-0000000150.dtck" ] || fail "no checkpoint at step 150 in 120 s"
[ -n "$(workers_in "$ns_a")" ] && [ -n "$(workers_in "$ns_b")" ] ||
  fail "a worker is missing before the partition"

ip -n "$ns_b" link set "$link_b" down
start=$(now_ms)

# 1. The workers stop by themselves (collective timeout or watchdog), on both sides.
workers_gone=
for _ in $(seq 600); do
  if [ -z "$(workers_in "$ns_a")$(workers_in "$ns_b")" ]; then
    workers_gone=$(($(now_ms) - start))
    break
  fi
  sleep 0.1
done
[ -n "$workers_gone" ] || fail "workers still running 60 s after the partition"
echo "workers gone ${workers_gone} ms after the partition (strategy.timeout_s=$timeout_s)"
[ "$workers_gone" -le $(((timeout_s + worker_margin) * 1000)) ] ||
  fail "the workers took ${workers_gone} ms to stop; strategy.timeout_s is $timeout_s"

# 2. Both launchers end with status 1, in bounded time.
for i in 0 1; do
  side=a
  [ "$i" = 1 ] && side=b
  for _ in $(seq $((launcher_limit * 10))); do
    kill -0 "${pids[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "${pids[$i]}" 2>/dev/null && fail "host $side's launcher still runs ${launcher_limit} s after the partition"
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "host $side's launcher: exit $rc after $(($(now_ms) - start)) ms"
  [ "$rc" = 1 ] || fail "host $side's launcher exited with $rc, not 1"
done
pids=()

# 3. Each side names what it lost: host a the rank or address of host b, and the other way.
grep -Eq "rank 1 \(10\.79\.0\.2|ranks that have not reached it: 1|host-b" "$work/a.out" ||
  fail "host a's output does not name rank 1 or host b"
grep -Eq "rank 0 \(10\.79\.0\.1|10\.79\.0\.1:29400|host-a" "$work/b.out" ||
  fail "host b's output does not name rank 0 or host a"

# 4. Nothing is left in either namespace.
for ns in "$ns_a" "$ns_b"; do
  left=$(ip netns pids "$ns" | tr '\n' ' ')
  [ -z "$left" ] || fail "processes left in $ns: $left"
done

# 5. What was lost is the work since the newest checkpoint, which still evaluates.
newest=$(ls "$work/checkpoints"/ckpt-*.dtck | tail -1)
ls "$work/checkpoints" | grep -q '\.tmp\.' && fail "a checkpoint temp file was left behind"
(cd "$work" && "$dtrain" eval "$newest") >"$work/eval.out" 2>&1 || fail "cannot evaluate $newest"
echo "newest checkpoint: $(basename "$newest"), $(grep -o 'eval: .*' "$work/eval.out")"
echo "--- host a"
cat "$work/a.out"
echo "--- host b"
cat "$work/b.out"
echo "PASS"
