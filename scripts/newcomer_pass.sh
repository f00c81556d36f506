#!/usr/bin/env bash
# A newcomer's first day, scripted, in a fresh clone: quickstart, the tests, `jaxlm runs`, the
# documented sweep, the unquoted `compare runs/lr_*`, evaluate, generate, export; then the clone's
# `git status --porcelain` must be empty and runs/ must hold only what these commands made.
#
#     scripts/newcomer_pass.sh [CLONE_DIR]              # the README's commands as written (about 30 min on 2 cores)
#     QUICK=1 scripts/newcomer_pass.sh [CLONE_DIR]      # a tiny model for a few steps, `pytest -m "not slow"` on
#                                                       # a few test files: the same path in a few minutes
# Exits non-zero at the first command that fails or when the checkout is not clean at the end.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
CLONE="${1:-$(mktemp -d)/jaxlm}"
git clone --quiet "$SRC" "$CLONE"
cd "$CLONE"
unset UV_PROJECT_ENVIRONMENT VIRTUAL_ENV  # the clone's own .venv (git-ignored), from uv's wheel cache
uv sync --quiet --locked --extra wandb
export JAXLM_CACHE_DIR="${JAXLM_CACHE_DIR:-$(mktemp -d)}"
tiny=()
tests=(tests)
if [[ "${QUICK:-0}" == 1 ]]; then
    for kv in d_model=32 num_layers=1 num_heads=2 d_ff=64 vocab_size=300 context_length=32 batch_size=4 \
        max_iterations=6 warmup_iters=1 eval_interval=3 checkpoint_interval=3 eval_batches=2 sample_tokens=8; do
        tiny+=(--set "$kv")
    done
    tests=(-m "not slow" tests/test_debris.py tests/tracking/test_listing.py tests/tracking/test_compare.py)
fi
step() { echo; echo "\$ $*"; "$@"; }

step uv run python -m jaxlm.launch --config configs/quickstart.json "${tiny[@]}" --quiet
step uv run pytest -q "${tests[@]}"
step uv run jaxlm runs
step uv run python -m jaxlm.sweep --config configs/quickstart.json --grid learning_rate=2.5e-3,5e-3 \
    --name-prefix lr "${tiny[@]}" --quiet
step uv run python -m jaxlm.sweep --config configs/quickstart.json --grid learning_rate=2.5e-3,5e-3 \
    --name-prefix lr "${tiny[@]}" --quiet                        # finished: no second log entry
step uv run python -m jaxlm.compare runs/lr_*                     # unquoted: the shell expands it
step uv run jaxlm runs --sort best
step uv run python -m jaxlm.evaluate --run runs/quickstart --quiet
step uv run python -m jaxlm.generate --run runs/quickstart --prompt "Once upon a time" --max-new-tokens 20
step uv run python -m jaxlm.export --run runs/quickstart --out runs/quickstart.safetensors  # and its .json
step uv run python -m jaxlm.export --run runs/quickstart --format hf --out runs/quickstart-hf

echo
echo "\$ git status --porcelain"
status="$(git status --porcelain)"
echo "${status:-(empty)}"
echo "\$ ls -A runs"
ls -A runs
echo "sweep entries in runs/EXPERIMENT_LOG.md: $(grep -c '· sweep lr ·' runs/EXPERIMENT_LOG.md)"
expected=".gitkeep .reports EXPERIMENT_LOG.md lr_learning_rate=2.5e-3 lr_learning_rate=5e-3 quickstart quickstart-hf quickstart.json quickstart.safetensors"
[[ -z "$status" ]] || { echo "FAIL: the checkout is not clean"; exit 1; }
[[ "$(ls -A runs | sort | tr '\n' ' ' | sed 's/ $//')" == "$(tr ' ' '\n' <<<"$expected" | sort | tr '\n' ' ' | sed 's/ $//')" ]] \
    || { echo "FAIL: runs/ holds something the user did not make"; exit 1; }
echo "OK: clean checkout; runs/ holds only what the commands above made"
