#!/usr/bin/env bash
# Download, HERE (with internet), the wheels launch/gpu_check.sh installs on a lent GPU machine (no internet).
#
# The lent machines' python3 (3.12, x86-64) has jax + CUDA, flax, optax, orbax, tokenizers, matplotlib,
# tensorboard and torch, but not tensorboardX, which jaxlm's run records need (jaxlm/tracking/tensorboard.py).
# Its own needs (numpy, packaging, protobuf) are there. So by default this fetches tensorboardX at the
# version uv.lock holds; name other distributions (NAME or NAME==VERSION) to fetch those instead.
# No dependencies are followed (--no-deps) and nothing large (no jax, no torch): the device tool carries at
# most 64 MiB of ignored paths, and the folder must be git-ignored to travel (`.whl/` is, in .gitignore).
#
# Usage:  launch/gpu_wheels.sh DIR [NAME[==VERSION] ...]      e.g. launch/gpu_wheels.sh .whl
# Then:   launch/gpu_check.sh --wheels DIR --out OUT          (there)
# Exit status: 0 with the wheels in DIR; 2 on a bad argument or when pip cannot fetch one (pip says why).
set -euo pipefail

(($# >= 1)) || { echo "usage: launch/gpu_wheels.sh DIR [NAME[==VERSION] ...]" >&2; exit 2; }
dir=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
locked() {  # the version of distribution $1 in uv.lock (the first one listed)
  awk -v n="$1" 'tolower($0) == "name = \"" tolower(n) "\"" { getline; gsub(/version = |"/, ""); print; exit }' uv.lock
}
if (($# == 0)); then
  v=$(locked tensorboardx)
  [[ -n "$v" ]] || { echo "gpu_wheels: uv.lock names no tensorboardx version" >&2; exit 2; }
  set -- "tensorboardX==$v"
fi
mkdir -p "$dir" || { echo "gpu_wheels: cannot make '$dir'" >&2; exit 2; }
pip=(python3 -m pip)  # any pip will do: it downloads for 3.12 / x86-64 whatever it runs on
python3 -m pip --version > /dev/null 2>&1 || pip=(uv run --no-sync --with pip python -m pip)
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" "$@" || { echo "gpu_wheels: pip could not download $*" >&2; exit 2; }
ls -l "$dir"
du -sh "$dir"
