#!/usr/bin/env bash
# jaxlm on a Cloud TPU pod slice (v4, v5e, v5p, v6e): the same command on every worker VM.
#
# Needs: the gcloud CLI, logged in, and a TPU VM slice already created, e.g.
#   gcloud compute tpus tpu-vm create my-v4-16 --zone us-central2-b --accelerator-type v4-16 \
#       --version tpu-ubuntu2204-base
# Each worker gets this repository at $JAXLM_REMOTE_DIR (default ~/jaxlm) with JAX's TPU plugin
# (the `setup` step below). Put --output-dir on storage worker 0 keeps (only worker 0 writes the
# run directory); checkpoints need a path every worker sees (e.g. a gcsfuse mount or gs:// path).
#
# How to run (from the repository root):
#   launch/tpu_pod.sh my-v4-16 us-central2-b setup        # copy the repo, uv sync --extra tpu
#   launch/tpu_pod.sh my-v4-16 us-central2-b run configs/tinystories_17m.json --name ts17m-v4-16
#   launch/tpu_pod.sh my-v4-16 us-central2-b run configs/tinystories_17m.json --name fsdp --set mesh_fsdp=4
#
# `run` starts one process per worker with JAXLM_DISTRIBUTED=auto: jax.distributed.initialize()
# finds the other workers from the TPU metadata; every chip of the slice joins one mesh.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
tpu=$1 zone=$2 action=$3
shift 3
remote_dir=${JAXLM_REMOTE_DIR:-'~/jaxlm'}
on_all_workers() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }

case "$action" in
  setup)
    archive=$(mktemp -t jaxlm.XXXXXX.tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$tpu":jaxlm.tar.gz --zone "$zone" --worker=all
    rm -f "$archive"
    on_all_workers "set -e; mkdir -p $remote_dir; tar -xzf ~/jaxlm.tar.gz -C $remote_dir; cd $remote_dir; \
      export PATH=\$HOME/.local/bin:\$PATH; command -v uv >/dev/null || python3 -m pip install --user -q uv; \
      uv sync --frozen --extra tpu"
    ;;
  run)
    [[ $# -ge 1 ]] || { echo "usage: $0 TPU ZONE run CONFIG [jaxlm.launch arguments...]" >&2; exit 2; }
    config=$1
    shift
    on_all_workers "cd $remote_dir && JAXLM_DISTRIBUTED=auto .venv/bin/python -m jaxlm.launch \
      --config $(printf '%q' "$config") --quiet $(printf '%q ' "$@")"
    ;;
  *)
    echo "$0: unknown action '$action' (setup or run)" >&2
    exit 2
    ;;
esac
