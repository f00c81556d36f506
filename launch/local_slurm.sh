#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged + slurmctld + slurmd, Debian's slurm-wlm and munge,
# no systemd), for the tests marked `slurm` (tests/test_slurm.py) and for trying the launch/*.sbatch
# recipes before a real cluster. Runs as root: slurmd starts jobs and keeps root-owned state.
#
# Usage: launch/local_slurm.sh {install|start|stop|status|env}
#   install  apt-get install --no-install-recommends slurmctld slurmd slurm-client munge (if missing)
#   start    write the config, start the daemons, wait until the node takes jobs (a probe job runs);
#            what already runs with the same config is left alone
#   stop     cancel every job of this cluster, then stop the daemons this script started (PID files
#            checked against /proc/PID/cmdline: nothing else is ever signalled)
#   status   exit 0 when all three daemons run, 3 when none does, 1 otherwise
#   env      print `export SLURM_CONF=...` for the clients: eval "$(launch/local_slurm.sh env)"
#
# The node is this host (`hostname -s`, address 127.0.0.1) with its CPUs and memory. Partitions:
# debug (default; preempted jobs are requeued after GraceTime) and urgent (preempts debug).
# No slurmdbd: finished jobs stay visible in `scontrol show job` for an hour, and a line per finished
# job goes to $JAXLM_SLURM_DIR/log/jobcomp.log (what tests read instead of sacct).
# Environment: JAXLM_SLURM_DIR (all state, default /tmp/jaxlm-slurm), JAXLM_SLURM_PORT (slurmctld port,
# default 6817; slurmd uses the next one), JAXLM_SLURM_CPUS (CPUs to advertise, default: the real count),
# JAXLM_SLURM_TIMEOUT (seconds to wait for the node, jobs and daemons, default 60).
set -euo pipefail

DIR=${JAXLM_SLURM_DIR:-/tmp/jaxlm-slurm}
CONF=$DIR/etc/slurm.conf
KEY=$DIR/munge/munge.key
SOCKET=$DIR/munge/munge.socket.2
PORT=${JAXLM_SLURM_PORT:-6817}
TIMEOUT=${JAXLM_SLURM_TIMEOUT:-60}
NODE=$(hostname -s)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH SLURM_CONF=$CONF

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: error: $*" >&2; exit 1; }

# PID of daemon $1 if this script started it and it still runs (its command line names our state).
running() {
  local pid cmd
  pid=$(cat "$DIR/run/$1.pid" 2>/dev/null | tr -dc 0-9) || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$1"* && $cmd == *"$DIR"* && $(awk '{print $3}' "/proc/$pid/stat") != Z ]] || return 1
  echo "$pid"
}

write_config() {
  local hw cpus mem
  hw=$(slurmd -C | head -1)
  cpus=${JAXLM_SLURM_CPUS:-$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")}
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [[ $cpus =~ ^[1-9][0-9]*$ && -n $mem ]] || die "cannot read CPUs/RealMemory from 'slurmd -C': $hw"
  cat >"$CONF.new" <<EOF
# written by jaxlm launch/local_slurm.sh
ClusterName=jaxlm-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2
ReturnToService=2
JobRequeue=1
EnforcePartLimits=ALL
MinJobAge=3600
KillWait=30
InactiveLimit=0
Waittime=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=10
PartitionName=urgent Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

start_daemon() {  # name, command...
  local name=$1 pid i
  shift
  if pid=$(running "$name"); then say "$name already running (pid $pid)"; return; fi
  env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 9>&- \
    || die "$name did not start: $(tail -3 "$DIR/log/$name.out" "$DIR/log/$name.log" 2>/dev/null)"
  for ((i = 0; i < 100; i++)); do pid=$(running "$name") && break; sleep 0.1; done
  pid=$(running "$name") || die "$name did not stay up (logs in $DIR/log)"
  say "started $name (pid $pid)"
}

jobs_listed() { squeue -h -o %A 2>/dev/null | sort -u; }

wait_until() {  # seconds, condition command...
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do ((SECONDS < deadline)) || return 1; sleep 0.2; done
}

node_usable() { [[ $(sinfo -h -N -o %T 2>/dev/null | head -1) =~ ^(idle|mixed|allocated)$ ]]; }
no_jobs() { [[ -z $(jobs_listed) ]]; }

cmd_start() {
  local fresh=0 jid
  for b in munged slurmctld slurmd sbatch srun scontrol; do
    command -v "$b" >/dev/null || die "$b is missing: run '$0 install'"
  done
  mkdir -p "$DIR"/{etc,munge,run,log,state,spool}
  chmod 0755 "$DIR/munge"
  write_config
  if ! cmp -s "$CONF" "$CONF.new"; then
    if running slurmctld >/dev/null || running slurmd >/dev/null; then say "config changed: restarting"; stop_slurm; fi
    mv "$CONF.new" "$CONF"
  else
    rm -f "$CONF.new"
  fi
  getent hosts "$NODE" >/dev/null || say "warning: $NODE does not resolve; jax.distributed under srun will fail"
  [[ -s $KEY ]] || { dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none; chmod 0400 "$KEY"; }
  running munged >/dev/null || rm -f "$SOCKET" "$SOCKET.lock"
  start_daemon munged munged --key-file="$KEY" --socket="$SOCKET" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
  running slurmctld >/dev/null && running slurmd >/dev/null || fresh=1
  start_daemon slurmctld slurmctld -f "$CONF"
  start_daemon slurmd slurmd -f "$CONF" -N "$NODE"
  wait_until "$TIMEOUT" node_usable || {
    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
    wait_until 10 node_usable || die "node $NODE not usable: $(sinfo -h -N -o '%T %E' | head -1) (logs in $DIR/log)"
  }
  if ((fresh)); then  # a new slurmctld takes a few seconds before it really runs jobs
    jid=$(sbatch --parsable -J probe -o /dev/null -e /dev/null --wrap 'srun -n1 true') || die "probe job refused"
    wait_until "$TIMEOUT" no_jobs || die "probe job $jid did not finish in ${TIMEOUT}s"
    scontrol show job "$jid" | grep -q 'JobState=COMPLETED' || die "probe job $jid failed: $(scontrol show job "$jid" | grep -o 'JobState=[A-Z]*')"
  fi
  say "ready: $(sinfo -h -N -o '%N %T, %c CPUs' | head -1); clients: export SLURM_CONF=$CONF"
}

stop_daemon() {
  local pid
  pid=$(running "$1") || { rm -f "$DIR/run/$1.pid"; return 0; }
  kill -TERM "$pid"
  wait_until "$TIMEOUT" eval '! running '"$1"' >/dev/null' || { kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; }
  rm -f "$DIR/run/$1.pid"
  say "stopped $1 (pid $pid)"
}

stop_slurm() {
  if running slurmctld >/dev/null && [[ -n $(jobs_listed) ]]; then
    # shellcheck disable=SC2046
    scancel --full --signal=KILL $(squeue -h -t RUNNING,SUSPENDED -o %A) 2>/dev/null || true
    # shellcheck disable=SC2046
    scancel $(jobs_listed) 2>/dev/null || true
    wait_until "$TIMEOUT" no_jobs || say "warning: jobs still listed: $(jobs_listed | tr '\n' ' ')"
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
}

case ${1:-} in
  install)
    pkgs=(slurmctld slurmd slurm-client munge)
    if dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then say "installed: ${pkgs[*]}"; exit 0; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update && apt-get install -y --no-install-recommends "${pkgs[@]}" ;;
  start | stop)
    [[ $(id -u) == 0 ]] || die "must run as root"
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w "$TIMEOUT" 9 || die "another local_slurm.sh holds $DIR/.lock"
    if [[ $1 == start ]]; then cmd_start; else stop_slurm; stop_daemon munged; fi ;;
  status)
    up=0
    for d in munged slurmctld slurmd; do running "$d" >/dev/null && up=$((up + 1)); done
    say "$up of 3 daemons running"
    ((up == 3)) && { sinfo; squeue; exit 0; }
    ((up == 0)) && exit 3
    exit 1 ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
