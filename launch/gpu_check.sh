#!/usr/bin/env bash
# Check jaxlm on an NVIDIA GPU machine with no internet: devices, the speed suite, a short real run.
#
# Needs: an environment prepared beforehand (e.g. `uv sync --extra cuda`, the .venv carried along).
# Nothing is downloaded: it runs .venv/bin/python if present, else `uv run --offline --no-sync python`;
# the quickstart trains on the bundled TinyStories sample.
#
# Usage (from anywhere; it works in the repository root):
#   launch/gpu_check.sh
# Parts, each bounded by a timeout, run in order:
#   1. `nvidia-smi -L` and the devices JAX sees (the check stops here if JAX sees no GPU);
#   2. python -m jaxlm.bench --suite --dtype bfloat16 (quickstart at batch 16/64, 17M at 8/32);
#   3. python -m jaxlm.launch --config configs/quickstart.json with 200 steps in bfloat16;
# then a markdown table: the bench rows, and the run's final val loss/bpb, tokens/s and wall time
# (from its summary.json). Exit status: 0 when every part passed, 1 when one failed or timed out,
# 2 when there is no GPU.
# Options (environment):
#   JAXLM_GPU_CHECK_ALLOW_CPU=1    run anyway without a GPU (a CPU smoke test of this script)
#   JAXLM_GPU_CHECK_STEPS=N        timed steps per bench point (default 20); _WARMUP=N warm-up (default 3)
#   JAXLM_GPU_CHECK_TRAIN_STEPS=N  quickstart steps (default 200)
#   JAXLM_GPU_CHECK_DTYPE=D        float32 or bfloat16 (default bfloat16)
#   JAXLM_GPU_CHECK_SETS="K=V ..." extra config overrides for every bench point and the run
#   JAXLM_GPU_CHECK_TIMEOUT=S      seconds each part may take (default 600)
#   JAXLM_GPU_CHECK_OUT=DIR        where logs, the run and report.md go (default: a new temp dir)
#   JAXLM_GPU_CHECK_KEEP_CHECKPOINTS=1  keep the run's checkpoints (deleted by default: ~50 MB)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps=${JAXLM_GPU_CHECK_STEPS:-20}
warmup=${JAXLM_GPU_CHECK_WARMUP:-3}
train_steps=${JAXLM_GPU_CHECK_TRAIN_STEPS:-200}
dtype=${JAXLM_GPU_CHECK_DTYPE:-bfloat16}
part_timeout=${JAXLM_GPU_CHECK_TIMEOUT:-600}
read -r -a extra_sets <<< "${JAXLM_GPU_CHECK_SETS:-}"
for n in "$steps" "$warmup" "$train_steps" "$part_timeout"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "gpu_check: '$n' is not a whole number (JAXLM_GPU_CHECK_* settings)" >&2; exit 2; }
done

gpus=""
if command -v nvidia-smi > /dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2> /dev/null | grep '^GPU ' || true)
fi
if [[ -z "$gpus" ]]; then
  if [[ "${JAXLM_GPU_CHECK_ALLOW_CPU:-0}" != 1 ]]; then
    echo "gpu_check: no NVIDIA GPU found (nvidia-smi -L lists none); set JAXLM_GPU_CHECK_ALLOW_CPU=1 for a CPU smoke run" >&2
    exit 2
  fi
  echo "gpu_check: no NVIDIA GPU: CPU smoke run (JAXLM_GPU_CHECK_ALLOW_CPU=1)"
  export JAX_PLATFORMS=cpu
  require_gpu=0
else
  require_gpu=1
fi

if [[ -x .venv/bin/python ]]; then
  py=(.venv/bin/python)
else
  py=(uv run --offline --no-sync python)
fi
export UV_OFFLINE=1 HF_HUB_OFFLINE=1
out=${JAXLM_GPU_CHECK_OUT:-$(mktemp -d -t jaxlm-gpu-check.XXXXXX)}
mkdir -p "$out"
sets=()
for kv in "${extra_sets[@]}"; do sets+=(--set "$kv"); done

failures=()
part_s=0
# run_part NAME LOG COMMAND...: run COMMAND under the timeout, stdout to the terminal and LOG; record a failure.
run_part() {
  local name=$1 log=$2 t0=$SECONDS rc
  shift 2
  echo
  echo "== $name"
  set +e
  timeout --kill-after=30 "$part_timeout" "$@" | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  part_s=$((SECONDS - t0))
  if ((rc != 0)); then
    if ((rc == 124 || rc == 137)); then
      echo "gpu_check: part '$name' timed out after ${part_timeout}s" >&2
    else
      echo "gpu_check: part '$name' failed (exit $rc)" >&2
    fi
    failures+=("$name")
  fi
  echo "-- $name: ${part_s}s"
}

echo "gpu_check: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2> /dev/null || echo unknown), output in $out"
[[ -n "$gpus" ]] && echo "$gpus"
run_part devices "$out/devices.log" env JAXLM_GPU_CHECK_REQUIRE_GPU="$require_gpu" "${py[@]}" -c '
import os, sys, jax
print("jax", jax.__version__, "backend", jax.default_backend())
for d in jax.devices():
    print(" ", d.id, d.platform, d.device_kind)
if os.environ["JAXLM_GPU_CHECK_REQUIRE_GPU"] == "1" and jax.default_backend() != "gpu":
    sys.exit("gpu_check: JAX sees no GPU (backend %s): was the environment prepared with `uv sync --extra cuda`?"
             % jax.default_backend())
'
if ((${#failures[@]})); then
  echo "gpu_check: FAILED: devices (the other parts need them)" >&2
  exit 1
fi

run_part bench "$out/bench.log" "${py[@]}" -m jaxlm.bench --suite --dtype "$dtype" --steps "$steps" \
  --warmup "$warmup" "${sets[@]}"

train_sets=(--set "max_iterations=$train_steps" --set "dtype=$dtype")
if ((train_steps < 30)); then  # quickstart warms up for 30 steps; a shorter smoke run needs fewer
  train_sets+=(--set "warmup_iters=$((train_steps / 10))")
fi
run_part quickstart "$out/quickstart.log" "${py[@]}" -m jaxlm.launch --config configs/quickstart.json \
  --name quickstart --output-dir "$out/runs" --overwrite --no-experiment-log --quiet "${train_sets[@]}" "${sets[@]}"
quickstart_s=$part_s
if [[ "${JAXLM_GPU_CHECK_KEEP_CHECKPOINTS:-0}" != 1 ]]; then
  rm -rf "$out/runs/quickstart/checkpoints"
fi

echo
"${py[@]}" - "$out" "$quickstart_s" "$train_steps" << 'EOF' | tee "$out/report.md"
"""The report: bench rows, then the quickstart run's row (from its summary.json)."""
import json
import sys
from pathlib import Path

out, wall_s, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def num(value, fmt):
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


print("| run | batch | dtype | compile_s | step_ms | tokens/s | MFU | val loss | val bpb | wall_s |")
print("|---|---|---|---|---|---|---|---|---|---|")
bench = out / "bench.log"
lines = bench.read_text().splitlines() if bench.is_file() else []
for r in (json.loads(ln) for ln in lines if ln.startswith("{")):
    mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
    print(f"| bench {Path(r['config']).stem} | {r['batch_size']} | {r['dtype']} | {num(r['compile_s'], '.2f')} | "
          f"{num(r['step_ms'], '.2f')} | {num(r['tokens_per_sec'], ',.0f')} | {mfu} |  |  |  |")
run = out / "runs" / "quickstart"
if (run / "summary.json").is_file():
    s = {**json.loads((run / "config.json").read_text()), **json.loads((run / "summary.json").read_text())}
    mfu = "n/a" if s.get("mfu") is None else f"{100 * s['mfu']:.1f}%"
    print(f"| quickstart {s.get('steps')} of {steps} steps ({s.get('status')}) | {s.get('batch_size')} | "
          f"{s.get('dtype')} | {num(s.get('compile_s'), '.2f')} |  | {num(s.get('mean_tokens_per_sec'), ',.0f')} | "
          f"{mfu} | {num(s.get('final_val_loss'), '.4f')} | {num(s.get('final_val_bpb'), '.3f')} | {wall_s} |")
else:
    print(f"| quickstart: no summary.json |  |  |  |  |  |  |  |  | {wall_s} |")
EOF

if ((${#failures[@]})); then
  echo "gpu_check: FAILED: ${failures[*]} (logs in $out)" >&2
  exit 1
fi
echo "gpu_check: all parts passed (logs and report.md in $out)"
