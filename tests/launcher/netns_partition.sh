#!/usr/bin/env bash
# A network partition between two hosts mid-training. Two network namespaces joined by a veth pair
# (10.79.0.1 and 10.79.0.2, no default route) run one `dtrain launch` each, one worker per host.
# After the first checkpoint host b's end of the link goes down. Then the workers must stop within
# strategy.timeout_s (plus a small margin), each side's output must name the rank or address it
# lost, both launchers must exit with status 1 in bounded time, no process may remain in either
# namespace, and the newest checkpoint must still evaluate.
# Usage: netns_partition.sh DTRAIN   (exit 77 = skipped, with the reason printed)
set -euo pipefail

dtrain=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
timeout_s=4       # strategy.timeout_s
worker_margin=6   # process exit and the watchdog's poll on top of the timeout
launcher_limit=60 # node b's launcher waits for a Store that cannot answer (30 s request timeout)
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "network namespaces need root"
for tool in ip nsenter unshare timeout; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (iproute2, util-linux, coreutils)"
done

id=$$
ns_a=dtrain-pa-$id ns_b=dtrain-pb-$id
work=$(mktemp -d /tmp/dtrain-partition.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for ns in "$ns_a" "$ns_b"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_a" || skip "cannot create network namespaces here"
ip netns add "$ns_b"
ip link add "dpa$id" type veth peer name "dpb$id"
ip link set "dpa$id" netns "$ns_a"
ip link set "dpb$id" netns "$ns_b"
ip -n "$ns_a" addr add 10.79.0.1/24 dev "dpa$id"
ip -n "$ns_b" addr add 10.79.0.2/24 dev "dpb$id"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "dpa$id" up
ip -n "$ns_b" link set "dpb$id" up

# Long enough (~31,000 steps) that only the partition can end it.
cat >"$work/run.yaml" <<'YAML'
model: {type: mlp, hidden: [64]}
data: {name: synthetic, synthetic_train_size: 20000, synthetic_test_size: 1000,
       synthetic_shape: [1, 28, 28], synthetic_classes: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 100, batch_size: 32, seed: 5, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 150, keep_checkpoints: 2, resume: auto, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false, every_steps: 1000}
YAML

fail() {
  echo "FAIL: $*"
  for f in "$work"/*.out; do echo "--- $f"; cat "$f"; done
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The pids of `dtrain train` processes inside namespace NS.
workers_in() {
  local p
  for p in $(ip netns pids "$1" 2>/dev/null); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^$dtrain train " && echo "$p"
  done
  return 0
}

export DTRAIN_STORE_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export OMP_NUM_THREADS=1
common=(--nnodes 2 --rdzv-endpoint 10.79.0.1:29400 run.yaml "strategy.timeout_s=$timeout_s"
  launcher.rdzv_timeout_s=10)
for side in a b; do
  ns=$ns_a rank=0
  [ "$side" = b ] && ns=$ns_b rank=1
  (cd "$work" && exec nsenter --net="/run/netns/$ns" unshare --uts \
    sh -c 'hostname "$0" && exec timeout -s KILL 240 "$@"' "host-$side" "$dtrain" launch \
    --node-rank "$rank" "${common[@]}") >"$work/$side.out" 2>&1 &
  pids+=($!)
done

for _ in $(seq 1200); do
  [ -e "$work/checkpoints/ckpt-0000000150.dtck" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null || break
  sleep 0.1
done
[ -e "$work/checkpoints/ckpt-0000000150.dtck" ] || fail "no checkpoint at step 150 in 120 s"
[ -n "$(workers_in "$ns_a")" ] && [ -n "$(workers_in "$ns_b")" ] ||
  fail "a worker is missing before the partition"

ip -n "$ns_b" link set "dpb$id" down
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
