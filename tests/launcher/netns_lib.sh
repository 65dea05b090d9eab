# shellcheck shell=bash
# What the network-namespace tests share; sourced by them after `set -euo pipefail`.
# netns_hosts makes two hosts: network namespaces joined by a veth pair with no default route, so
# nothing leaves the machine, each later run with its own host name by launch_on. Everything they
# start and the namespaces themselves go when the test exits, however it exits.

skip() {
  echo "SKIP: $*"
  exit 77
}

# Prints why, then every host's output (*.out in the work directory), and fails the test.
fail() {
  echo "FAIL: $*"
  for f in "$work"/*.out; do echo "--- $f"; cat "$f"; done
  exit 1
}

netns_cleanup() {
  local pid ns
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # `timeout` cannot pass SIGKILL on: whatever still runs inside the hosts goes too.
  for ns in "$ns_a" "$ns_b"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}

# netns_hosts DTRAIN TAG SUBNET: exits 77 (skipped) without root or the tools. Otherwise sets
# dtrain (the binary, absolute), work (a new directory), pids (launchers started in the
# background, killed on exit), ns_a and ns_b (namespaces holding SUBNET.1 on link_a and SUBNET.2
# on link_b, both up) and exports a Store token and OMP_NUM_THREADS=1. TAG (one letter) and
# SUBNET keep the names and addresses apart from another such test running at the same time.
netns_hosts() {
  local tag=$2 subnet=$3 tool ns
  dtrain=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  [ "$(id -u)" = 0 ] || skip "network namespaces need root"
  for tool in ip nsenter unshare timeout; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (iproute2, util-linux, coreutils)"
  done

  ns_a=dtrain-${tag}a-$$ ns_b=dtrain-${tag}b-$$
  link_a=d${tag}a$$ link_b=d${tag}b$$
  work=$(mktemp -d "/tmp/dtrain-netns-$tag.XXXXXX")
  pids=()
  trap netns_cleanup EXIT

  ip netns add "$ns_a" || skip "cannot create network namespaces here"
  ip netns add "$ns_b"
  ip link add "$link_a" type veth peer name "$link_b"
  ip link set "$link_a" netns "$ns_a"
  ip link set "$link_b" netns "$ns_b"
  ip -n "$ns_a" addr add "$subnet.1/24" dev "$link_a"
  ip -n "$ns_b" addr add "$subnet.2/24" dev "$link_b"
  for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_a" link set "$link_a" up
  ip -n "$ns_b" link set "$link_b" up

  DTRAIN_STORE_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export DTRAIN_STORE_TOKEN OMP_NUM_THREADS=1
}

# netns_config EPOCHS: writes $work/run.yaml, a ddp job of 2 workers (20000 / 64 steps an epoch,
# a checkpoint every 150) for EPOCHS epochs.
netns_config() {
  cat >"$work/run.yaml" <<YAML
model: {type: mlp, hidden: [64]}
data: {name: synthetic, synthetic_train_size: 20000, synthetic_test_size: 1000,
       synthetic_shape: [1, 28, 28], synthetic_classes: 10}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: $1, batch_size: 32, seed: 5, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 150, keep_checkpoints: 2, resume: auto, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false, every_steps: 1000}
YAML
}

# launch_on NS NAME DIR FILE ARGS...: runs `dtrain launch ARGS` as host NAME inside namespace NS,
# in directory DIR, output to FILE, in the background (its pid appended to pids), killed after
# 240 s.
launch_on() {
  local ns=$1 name=$2 dir=$3 file=$4
  shift 4
  (cd "$dir" && exec nsenter --net="/run/netns/$ns" unshare --uts \
    sh -c 'hostname "$0" && exec timeout -s KILL 240 "$@"' "$name" "$dtrain" launch "$@") \
    >"$file" 2>&1 &
  pids+=($!)
}
