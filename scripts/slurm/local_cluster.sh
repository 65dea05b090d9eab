#!/usr/bin/env bash
# A real one-node Slurm (munged + slurmctld + slurmd) on localhost, all of its state under DIR, for
# tests and trying the batch script without a cluster. Needs root and Debian's slurmctld, slurmd,
# slurm-client and munge (scripts/setup.sh installs them).
#
# Usage: local_cluster.sh start DIR   prints `export SLURM_CONF=DIR/slurm.conf` on stdout, so
#                                     eval "$(scripts/slurm/local_cluster.sh start "$dir")"
#        local_cluster.sh stop DIR    cancels its jobs, stops its daemons and waits for them
#
# DIR should be a fresh, short path (mktemp -d): the munge socket's path must fit in 108 bytes.
# Every client (sinfo, sbatch, srun) must run with SLURM_CONF set: without it they read
# /etc/slurm/slurm.conf or try DNS SRV look-ups and fail, and only the conf's AuthInfo tells them
# where this cluster's munged socket is.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$2
log() { echo "local_cluster: $*" >&2; }

# Daemons whose pid files this script writes, in the order they are stopped.
daemons=(slurmd slurmctld munged)
pid_file() { echo "$dir/run/$1.pid"; }

# True while PID runs: kill -0 alone counts zombies too, and daemons that double-fork may stay
# zombies until their new parent reaps them.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# True when PID is alive and one of this cluster's daemons: each has a path under DIR on its
# command line. A stale pid file whose pid now belongs to another process is never signalled.
ours() {
  alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

# A TCP port in [16800, 16999] that nothing listens on (any address, IPv4 or IPv6), starting at
# a random offset so that two clusters started at once are unlikely to pick the same one. Listed
# ports are skipped so that the second pick differs from the first.
free_port() {
  local start=$((RANDOM % 200)) i port hex
  for ((i = 0; i < 200; i++)); do
    port=$((16800 + (start + i) % 200))
    [[ " $* " == *" $port "* ]] && continue
    hex=$(printf ':%04X ' "$port")
    # Column 2 is local address:port in hex, column 4 the state (0A = LISTEN).
    if ! awk -v p="$hex" 'NR > 1 && index($2 " ", p) && $4 == "0A" {found = 1} END {exit !found}' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  log "no free TCP port in 16800-16999"
  return 1
}

dump_logs() {
  local f
  for f in "$dir"/log/*.log; do
    [ -e "$f" ] || continue
    echo "----- $f (last 40 lines) -----" >&2
    tail -n 40 "$f" >&2
  done
}

start() {
  local cmd
  for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || { log "$cmd not found; run scripts/setup.sh"; return 1; }
  done
  [ "$(id -u)" -eq 0 ] || { log "must run as root (SlurmUser=root, jobs run as root)"; return 1; }
  local name
  for name in "${daemons[@]}"; do
    if [ -f "$(pid_file "$name")" ] && ours "$(cat "$(pid_file "$name")")"; then
      log "$name of $dir is already running; stop it first"
      return 1
    fi
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local socket=$dir/munge/munge.socket
  if [ "${#socket}" -ge 100 ]; then
    log "DIR is too long for a unix socket path ($socket); use a shorter one"
    return 1
  fi
  # munged insists that every directory above its socket is searchable by all (DIR itself is
  # made so here; its parents are the caller's), and that the key is readable by its owner only.
  chmod go+x "$dir"
  local parent=$dir
  while parent=$(dirname "$parent") && [ "$parent" != / ]; do
    if [ "$(($(stat -c %#a "$parent") & 8#001))" -eq 0 ]; then
      log "munged needs every directory above its socket searchable by all: chmod o+x $parent"
      return 1
    fi
  done
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/tmp" "$dir/log" "$dir/run"
  chmod 0755 "$dir/munge"
  if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
  fi

  # 1. munged: this cluster's own key and socket, so that it neither needs nor disturbs the
  #    system's munged (if any).
  munged --socket="$socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$(pid_file munged)" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" </dev/null >/dev/null 2>&1 ||
    { log "munged failed to start"; dump_logs; return 1; }
  local i
  for ((i = 0; i < 50; i++)); do
    [ -S "$socket" ] && break
    sleep 0.1
  done
  [ -S "$socket" ] || { log "munged did not create $socket"; dump_logs; return 1; }

  # 2. slurm.conf. The node's address and the controller's are loopback, on non-default ports
  #    picked free. Slurm binds its listening sockets (slurmctld, slurmd, srun, slurmstepd) to all
  #    addresses unless told to bind to the address the host name resolves to: that is only
  #    loopback when the host name resolves to 127.x (as /etc/hosts usually says), so the option is
  #    set only then; elsewhere binding to another address would break the loopback set-up.
  local host ctld_port slurmd_port cpus comm_params first_job_id
  host=$(hostname -s)
  comm_params="# (listening on all addresses: $host does not resolve to 127.x)"
  if [[ "$(getent ahostsv4 "$host" | awk 'NR == 1 {print $1}')" == 127.* ]]; then
    comm_params=CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
  fi
  ctld_port=$(free_port)
  slurmd_port=$(free_port "$ctld_port")
  cpus=$(nproc)
  first_job_id=$(((RANDOM * 32768 + RANDOM) % 60000000 + 1000))
  cat >"$dir/slurm.conf" <<EOF
# Generated by scripts/slurm/local_cluster.sh: a one-node cluster on $host, state under $dir.
ClusterName=dtrain-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
# Clients, slurmctld, slurmd and slurmstepd all find this cluster's munged through AuthInfo.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
# The pmix plugin makes a directory per job step under TmpFS, named by uid and job id only: under
# the default /tmp two clusters (both numbering jobs from 1) would collide.
TmpFS=$dir/tmp
# Open MPI names its shared-memory segments after the PMIx namespace, i.e. the job and step ids:
# two clusters on one machine that both start at job 1 would share them and crash. A random first
# job id (below Slurm's MaxJobId of 67043328) keeps concurrent clusters apart.
FirstJobId=$first_job_id
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups: this runs in containers and VMs whose cgroup tree Slurm may not own.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Debian's Open MPI talks to srun through PMIx only (it has no PMI-1/PMI-2 components).
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
$comm_params
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
# sbatch --wait polls every 2 s only while that is under MinJobAge/2 (then 8 s, 32 s, ...): a
# short MinJobAge keeps a test's wait for a job of 1 s at 2 s instead of 10 s.
MinJobAge=4
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf

  # 3. The daemons fork into the background and write their pid files; their output goes to their
  #    log files (a daemon that kept our stdout open would make a caller reading it hang).
  slurmctld -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.log" 2>&1 ||
    { log "slurmctld failed to start"; dump_logs; return 1; }
  slurmd -f "$SLURM_CONF" -N "$host" </dev/null >>"$dir/log/slurmd.log" 2>&1 ||
    { log "slurmd failed to start"; dump_logs; return 1; }

  # 4. Ready when the node has registered and is idle (bounded: 30 s).
  local state=""
  for ((i = 0; i < 150; i++)); do
    state=$(timeout 5 sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    log "node $host is not idle after 30 s (state: '${state:-unknown}')"
    dump_logs
    return 1
  fi
  log "cluster up: node $host ($cpus CPUs), slurmctld port $ctld_port, slurmd port $slurmd_port"
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
  [ -d "$dir" ] || { log "$dir does not exist"; return 0; }
  dir=$(cd "$dir" && pwd)
  export SLURM_CONF=$dir/slurm.conf
  local i pid name
  # Jobs first, while slurmd is there to kill their steps; otherwise their processes would outlive
  # it. Bounded: squeue returns nothing once they are gone (or when slurmctld is already down).
  local ctld_pid
  ctld_pid=$(cat "$(pid_file slurmctld)" 2>/dev/null || true)
  if [ -n "$ctld_pid" ] && ours "$ctld_pid"; then
    timeout 5 scancel --full --quiet --user=root >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null || true)" ] && break
      sleep 0.1
    done
  fi
  local status=0
  for name in "${daemons[@]}"; do
    [ -f "$(pid_file "$name")" ] || continue
    pid=$(cat "$(pid_file "$name")")
    ours "$pid" || { rm -f "$(pid_file "$name")"; continue; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    if alive "$pid"; then
      log "$name (pid $pid) is still running"
      status=1
    else
      rm -f "$(pid_file "$name")"
    fi
  done
  return "$status"
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
