#!/usr/bin/env bash
# Two hosts as network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2, no default
# route, so nothing leaves the machine), each with its own host name. One `dtrain launch` per host
# trains a 2-node job over TCP; the result must equal one host running both workers. Then a worker
# on the second host is killed with SIGKILL mid-epoch: both launchers print the same root cause,
# restart, and end with weights bit-identical to the uninterrupted run. Then two workers per host:
# each host's workers reduce in shared memory and only one per host talks to the other host; the
# run must train like four workers on one host (the sums' order differs, so to a tolerance), with
# the replicas checked bit-identical every 50 steps. Last, mpirun started on one host runs a rank
# on each and must give the same weights as the first run.
# Usage: netns_two_hosts.sh DTRAIN   (exit 77 = skipped, with the reason printed)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns_lib.sh
source "$(dirname "$0")/netns_lib.sh"
netns_hosts "$1" t 10.77.0
netns_config 4
final_step=$((4 * (20000 / 64)))  # drop_last: whole global batches of 2 x 32

final_line() { grep -o 'final: test_accuracy=[0-9.]* test_loss=[0-9.]* steps=[0-9]*' "$1" || true; }

weights() {  # the final checkpoint's parameters, exported, as a checksum ("" if it fails)
  (cd "$1" && "$dtrain" export "checkpoints/ckpt-$(printf %010d "$final_step").dtck" \
    -o model.safetensors >/dev/null) && sha256sum <"$1/model.safetensors"
}

same_weights() {
  local a b
  a=$(weights "$1") && b=$(weights "$2") && [ -n "$a" ] && [ "$a" = "$b" ]
}

# 1. Reference: both workers on one host.
mkdir -p "$work/one"
cp "$work/run.yaml" "$work/one/"
(cd "$work/one" && timeout 240 "$dtrain" launch --nproc-per-node 2 run.yaml) >"$work/one.out" 2>&1 ||
  fail "the one-host run failed"
echo "one host:  $(final_line "$work/one.out")"

# 2. Two hosts, one worker each, meeting at host a's store.
mkdir -p "$work/two"
cp "$work/run.yaml" "$work/two/"
common=(--nnodes 2 --rdzv-endpoint 10.77.0.1:29400 run.yaml)
launch_on "$ns_a" host-a "$work/two" "$work/two-a.out" --node-rank 0 "${common[@]}"
launch_on "$ns_b" host-b "$work/two" "$work/two-b.out" --node-rank 1 "${common[@]}"
wait "${pids[0]}" || fail "host a's launcher failed"
wait "${pids[1]}" || fail "host b's launcher failed"
pids=()
echo "two hosts: $(final_line "$work/two-a.out")"
grep -q "started ranks 1-1 of 2 on node 1 (host-b)" "$work/two-b.out" || fail "host b did not run rank 1"
[ "$(final_line "$work/two-a.out")" = "$(final_line "$work/one.out")" ] || fail "final lines differ"
same_weights "$work/two" "$work/one" || fail "final weights differ (or a checkpoint is missing)"

# 3. Kill host b's worker after the first checkpoint; the job restarts on both hosts.
mkdir -p "$work/kill"
cp "$work/run.yaml" "$work/kill/"
common=(--nnodes 2 --rdzv-endpoint 10.77.0.1:29401 --max-restarts 1 run.yaml)
launch_on "$ns_a" host-a "$work/kill" "$work/kill-a.out" --node-rank 0 "${common[@]}"
launch_on "$ns_b" host-b "$work/kill" "$work/kill-b.out" --node-rank 1 "${common[@]}"
for _ in $(seq 600); do
  [ -e "$work/kill/checkpoints/ckpt-0000000150.dtck" ] && break
  sleep 0.1
done
[ -e "$work/kill/checkpoints/ckpt-0000000150.dtck" ] || fail "no checkpoint at step 150 in 60 s"
victim=$(pgrep -f -n "$dtrain train run.yaml" -P "$(pgrep -P "${pids[1]}" -f "$dtrain launch" | head -1)" || true)
if [ -z "$victim" ]; then  # the worker is the launcher's child inside host b's tree
  victim=$(for p in $(pgrep -f "$dtrain train run.yaml"); do
    tr '\0' '\n' <"/proc/$p/environ" | grep -qx DTRAIN_NODE_RANK=1 && echo "$p"; done | head -1)
fi
[ -n "$victim" ] || fail "cannot find host b's worker"
kill -KILL "$victim" || fail "worker $victim was gone before the kill (the job ended too soon?)"
wait "${pids[0]}" || fail "host a's launcher failed after the kill"
wait "${pids[1]}" || fail "host b's launcher failed after the kill"
pids=()
for side in a b; do
  grep -q "rank 1 on node 1 (host host-b, pid $victim) was killed by signal 9 (SIGKILL)" \
    "$work/kill-$side.out" || fail "host $side does not name the killed worker as the root cause"
  grep -q "restarting every worker (restart 1 of 1)" "$work/kill-$side.out" ||
    fail "host $side did not restart"
done
same_weights "$work/kill" "$work/one" || fail "weights after recovery differ"
echo "recovered: $(final_line "$work/kill-a.out"), weights bit-identical"

# 4. Two workers per host: shared memory within each host, tcp between the hosts.
four=(train.epochs=2 strategy.check_parameters_every_steps=50)
mkdir -p "$work/four-one" "$work/four-two"
cp "$work/run.yaml" "$work/four-one/"
cp "$work/run.yaml" "$work/four-two/"
(cd "$work/four-one" && timeout 240 "$dtrain" launch --nproc-per-node 4 run.yaml "${four[@]}") \
  >"$work/four-one.out" 2>&1 || fail "four workers on one host failed"
common=(--nnodes 2 --nproc-per-node 2 --rdzv-endpoint 10.77.0.1:29402 run.yaml "${four[@]}")
export DTRAIN_DISTRIBUTED_DEBUG=1  # the workers say whom they share memory with
launch_on "$ns_a" host-a "$work/four-two" "$work/four-a.out" --node-rank 0 "${common[@]}"
launch_on "$ns_b" host-b "$work/four-two" "$work/four-b.out" --node-rank 1 "${common[@]}"
unset DTRAIN_DISTRIBUTED_DEBUG
wait "${pids[0]}" || fail "host a's launcher failed (2 workers per host)"
wait "${pids[1]}" || fail "host b's launcher failed (2 workers per host)"
pids=()
grep -q "shared memory with rank(s) 0, 1 of this host (2 host(s))" "$work/four-a.out" ||
  fail "host a's workers did not share memory"
grep -q "shared memory with rank(s) 2, 3 of this host (2 host(s))" "$work/four-b.out" ||
  fail "host b's workers did not share memory"
one=$(final_line "$work/four-one.out") two=$(final_line "$work/four-a.out")
echo "4 workers, one host:       $one"
echo "2 workers on each of two:  $two"
awk -v a="$one" -v b="$two" 'BEGIN {
  split(a, x, /[= ]/); split(b, y, /[= ]/);   # final: test_accuracy= A test_loss= L steps= S
  acc = x[3] - y[3]; loss = (x[5] - y[5]) / x[5];
  exit !(x[7] == y[7] && x[7] > 0 && acc < 0.01 && acc > -0.01 && loss < 0.01 && loss > -0.01) }' ||
  fail "two hosts x two workers do not train like four workers on one host"

# 5. mpirun across the two hosts, started inside host a; Open MPI reaches host b through a
#    remote-shell agent that enters b's namespace (in place of ssh) with b's host name.
if command -v mpirun >/dev/null; then
  cat >"$work/agent.sh" <<AGENT
#!/bin/sh
# Open MPI's plm_rsh_agent: AGENT HOST COMMAND (a line for a remote shell).
host=\$1; shift
case \$host in
  10.77.0.1) ns=$ns_a name=host-a ;;
  10.77.0.2) ns=$ns_b name=host-b ;;
  *) echo "agent.sh: unknown host \$host" >&2; exit 255 ;;
esac
exec nsenter --net=/run/netns/\$ns unshare --uts sh -c "hostname \$name; \$*"
AGENT
  chmod +x "$work/agent.sh"
  mkdir -p "$work/mpi"
  cp "$work/run.yaml" "$work/mpi/"
  (cd "$work/mpi" && OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
    nsenter --net="/run/netns/$ns_a" unshare --uts sh -c 'hostname host-a && exec "$@"' sh \
    mpirun --host 10.77.0.1,10.77.0.2 --map-by node -n 2 --mca plm_rsh_agent "$work/agent.sh" \
    -x OMP_NUM_THREADS "$dtrain" train run.yaml) >"$work/mpi.out" 2>&1 ||
    fail "mpirun across the two hosts failed"
  echo "mpirun:    $(final_line "$work/mpi.out")"
  same_weights "$work/mpi" "$work/one" || fail "mpirun across hosts gives other weights"
else
  echo "(mpirun is not installed: the mpirun-across-hosts part is skipped)"
fi
echo "PASS"
