#!/usr/bin/env bash
# Two hosts on this machine (network namespaces with their own host names and a veth pair, as in
# tests/launcher/netns_two_hosts.sh) x 2 workers each, the MLP of configs/synthetic_mlp.yaml over
# `dtrain launch`: samples/s with each host's workers sharing memory against DTRAIN_SHARED_MEMORY=0
# (everything over tcp), interleaved. Needs root, iproute2 and util-linux.
# Usage: bench/two_hosts_bench.sh [DTRAIN] [ROUNDS]   (defaults: build/dtrain, 2)
set -euo pipefail
dtrain=$(realpath "${1:-build/dtrain}")
rounds=${2:-2}
config=$(realpath "$(dirname "$0")/../configs/synthetic_mlp.yaml")
[ "$(id -u)" = 0 ] || { echo "two_hosts_bench: network namespaces need root" >&2; exit 2; }

id=$$
ns_a=dtb-a-$id ns_b=dtb-b-$id
work=$(mktemp -d /tmp/dtrain-two-hosts.XXXXXX)
cleanup() {
  for ns in "$ns_a" "$ns_b"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "ba$id" type veth peer name "bb$id"
ip link set "ba$id" netns "$ns_a"
ip link set "bb$id" netns "$ns_b"
ip -n "$ns_a" addr add 10.78.0.1/24 dev "ba$id"
ip -n "$ns_b" addr add 10.78.0.2/24 dev "bb$id"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "ba$id" up
ip -n "$ns_b" link set "bb$id" up

export DTRAIN_STORE_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export OMP_NUM_THREADS=1
port=29700
cd "$work"
for round in $(seq "$rounds"); do
  for shared in 1 0; do
    port=$((port + 1))
    args=(--nnodes 2 --nproc-per-node 2 --rdzv-endpoint "10.78.0.1:$port" "$config"
          train.resume=never log.progress=off train.threads=1 train.checkpoint_every_steps=0
          log.tensorboard=false strategy.type=ddp train.max_steps=1500 log.dir=log
          train.checkpoint_dir=checkpoints)
    DTRAIN_SHARED_MEMORY=$shared nsenter --net="/run/netns/$ns_a" unshare --uts \
      sh -c 'hostname host-a && exec "$@"' sh "$dtrain" launch --node-rank 0 "${args[@]}" >a.out 2>&1 &
    DTRAIN_SHARED_MEMORY=$shared nsenter --net="/run/netns/$ns_b" unshare --uts \
      sh -c 'hostname host-b && exec "$@"' sh "$dtrain" launch --node-rank 1 "${args[@]}" >b.out 2>&1
    wait
    rate=$(grep -o 'samples_per_sec=[0-9.]*' a.out | cut -d= -f2)
    echo "round $round  shared memory per host: $([ "$shared" = 1 ] && echo on || echo off)  ${rate:-failed} samples/s"
  done
done
