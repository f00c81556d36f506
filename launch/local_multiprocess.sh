#!/usr/bin/env bash
# Run one jaxlm command as N processes on this machine, joined by jax.distributed on 127.0.0.1.
#
# Needs: only the project (`uv sync`). On CPU the processes talk through Gloo (built into
# jaxlib); on a multi-GPU box, give each process its GPU with JAX_LOCAL_DEVICE_IDS or
# CUDA_VISIBLE_DEVICES in the command. This is what tests/train/test_multihost.py runs, and the
# quickest way to try multi-host mechanics on a laptop.
#
# Usage:
#   launch/local_multiprocess.sh N command [args...]
#   JAXLM_CPU_DEVICES=2 launch/local_multiprocess.sh 2 \
#       uv run python -m jaxlm.launch --config configs/quickstart.json --name mp2x2 --set mesh_fsdp=2
#
# Each process gets JAXLM_COORDINATOR=127.0.0.1:PORT, JAXLM_NUM_PROCESSES=N and
# JAXLM_PROCESS_ID=i (0..N-1); jaxlm then calls jax.distributed.initialize() with them.
# Options (environment):
#   JAXLM_CPU_DEVICES=D  give every process D virtual CPU devices (forces the CPU backend)
#   JAXLM_PORT=P         coordinator port (default: a free port)
#   JAXLM_LOG_DIR=DIR    where processes 1..N-1 write process_<i>.log (default: a new temp dir);
#                        process 0 prints to this terminal
# Exit status: the first failing process's status (the others are then stopped), else 0. Status 75
# (interrupted with a checkpoint, resumable) stops nothing: every process took the same decision
# to stop at the same step and ends by itself; stopping the others could cut short their last save.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
num_processes=$1
shift

port=${JAXLM_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${JAXLM_LOG_DIR:-$(mktemp -d -t jaxlm-processes.XXXXXX)}
mkdir -p "$log_dir"
if [[ -n "${JAXLM_CPU_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${JAXLM_CPU_DEVICES}"
  export JAX_PLATFORMS=cpu
fi
export JAXLM_COORDINATOR="127.0.0.1:${port}" JAXLM_NUM_PROCESSES="${num_processes}"

pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    JAXLM_PROCESS_ID=$i "$@" &
  else
    JAXLM_PROCESS_ID=$i "$@" >"${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
done
((num_processes > 1)) && echo "local_multiprocess: ${num_processes} processes on 127.0.0.1:${port}; logs of 1..$((num_processes - 1)) in ${log_dir}" >&2

status=0
for ((left = num_processes; left > 0; left--)); do
  if wait -n; then
    continue
  else
    rc=$?
    ((rc == 127)) && break  # no children left
    if ((rc == 75)); then
      ((status == 0)) && status=75
    elif ((status == 0 || status == 75)); then
      status=$rc
      echo "local_multiprocess: a process exited with status ${rc}; stopping the others" >&2
      stop_all
    fi
  fi
done
exit "$status"
