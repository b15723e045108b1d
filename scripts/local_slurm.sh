#!/usr/bin/env bash
# A real single-node Slurm on this machine (CPU only, no systemd), for trying and testing the slurm/ scripts.
#
#   sudo bash scripts/local_slurm.sh up       # install (Debian packages), configure, start; waits until a job runs
#   sudo bash scripts/local_slurm.sh status   # daemons, nodes and queue
#   sudo bash scripts/local_slurm.sh down     # stop the daemons this script started
#
# Needs root and Debian's package index (apt-get). `up` is idempotent: a cluster that already answers is reused.
# Environment:
#   E2EREC_SLURM_DIR   state, spool, logs and pid files       (default /var/tmp/e2erec-slurm)
#   E2EREC_SLURM_CPUS  CPUs the node advertises               (default: nproc)
#   E2EREC_SLURM_WAIT  seconds to wait for the node to run jobs (default 60)
# The config goes to /etc/slurm/slurm.conf, where sbatch/srun/squeue look by default. The settings below are the ones
# measured to work in a container without cgroups or systemd (see shared/notes/local-slurm.md).
set -euo pipefail

state="${E2EREC_SLURM_DIR:-/var/tmp/e2erec-slurm}"
conf=/etc/slurm/slurm.conf
cluster=e2erec  # fixed: reusing a state dir under another ClusterName makes slurmctld refuse to start
host="$(hostname -s)"

log() { echo "[local_slurm] $*" >&2; }
die() { log "error: $*"; exit 1; }

require_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"; }

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install Slurm (slurmctld slurmd slurm-client) and munge by hand"
  log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

ensure_hostname_resolves() {
  if ! getent hosts "$host" >/dev/null 2>&1; then
    log "adding $host to /etc/hosts (slurmctld must resolve its own name)"
    echo "127.0.0.1 $host" >>/etc/hosts
  fi
}

write_config() {
  local cpus mem_mb
  cpus="${E2EREC_SLURM_CPUS:-$(nproc)}"
  # Advertise a little less than total memory so the node is not drained for "Low RealMemory".
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10240 ))
  mkdir -p "$state"/{ctld,spool,log} /etc/slurm
  chmod 755 "$state"
  local tmp="$conf.tmp.$$"
  cat >"$tmp" <<EOF
# Written by e2erec scripts/local_slurm.sh: a single-node CPU cluster for testing.
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again only after the credential lifetime (default 120 s): short, so preemption tests and
# tries finish in seconds.
AuthInfo=cred_expire=10
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobcomp.txt
PropagateResourceLimits=NONE
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Short: finished jobs leave 'scontrol show job' sooner, and 'sbatch --wait' returns seconds after the job ends.
MinJobAge=16
KillWait=10
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$tmp" "$conf"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_ok && return 0
  mkdir -p /run/munge
  chown munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { log "creating the munge key"; runuser -u munge -- mungekey --create 2>/dev/null || true; }
  runuser -u munge -- munged
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not start"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cluster_answers() { timeout 20 srun -n1 -t 1 true >/dev/null 2>&1; }

up() {
  require_root
  install_packages
  ensure_hostname_resolves
  if pid_alive "$state/slurmctld.pid" && pid_alive "$state/slurmd.pid" && cluster_answers; then
    log "already up"; status; return 0
  fi
  down_daemons
  write_config
  start_munge
  # -c: start from clean job state, so jobs of an earlier, aborted session do not come back.
  slurmctld -c
  slurmd
  local wait_s="${E2EREC_SLURM_WAIT:-60}" t0=$SECONDS
  # sinfo may say idle before slurmd registered: only a real job proves the cluster runs jobs.
  until cluster_answers; do
    if (( SECONDS - t0 > wait_s )); then
      log "cluster did not run 'srun -n1 true' within ${wait_s}s; last log lines:"
      tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
      exit 1
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  log "up in $(( SECONDS - t0 ))s"
  status
}

down_daemons() {
  # Only the daemons whose pid files this script's config names: never a broad pkill.
  local pids=()
  for f in "$state/slurmctld.pid" "$state/slurmd.pid"; do
    pid_alive "$f" && pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  scontrol shutdown >/dev/null 2>&1 || kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do
      # Stopped daemons linger as zombies for a moment here; a zombie counts as gone.
      if kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != "Z" ]; then alive=1; fi
    done
    [ $alive -eq 0 ] && return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

down() {
  require_root
  down_daemons
  rm -f "$state/slurmctld.pid" "$state/slurmd.pid"
  log "down"
}

status() {
  for d in slurmctld slurmd; do
    if pid_alive "$state/$d.pid"; then echo "$d: running (pid $(cat "$state/$d.pid"))"; else echo "$d: stopped"; fi
  done
  if munge_ok; then echo "munge: running"; else echo "munge: stopped"; fi
  if pid_alive "$state/slurmctld.pid"; then
    sinfo -N -o "%N %T %C" 2>/dev/null || true
    squeue 2>/dev/null || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
