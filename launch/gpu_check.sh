#!/usr/bin/env bash
# One run on a lent NVIDIA GPU machine with no internet: is jaxlm right there, how fast is it, does a run finish.
#
# Runs jaxlm from this source tree (PYTHONPATH=.) with the machine's own python3 (there: jax + CUDA plugin,
# flax, optax, orbax, tokenizers, matplotlib, tensorboard, torch), installs the modules jaxlm trains with that
# are missing (tensorboardX, on the lent machines) from a folder of wheels, and within a time budget (default
# 480 s) prints ONE markdown table; logs, the table (report.md) and the quickstart's summary.json go to --out.
#
# Usage (from anywhere; it works in the repository root):
#   launch/gpu_wheels.sh .whl                                  # HERE, with internet: the missing wheels
#   launch/gpu_check.sh --wheels .whl --out "$OUT"             # THERE, on the GPU machine
#   launch/gpu_check.sh --rehearse [--out DIR]                 # anywhere: every part shrunk, on the CPU
# With this workplace's device tool, one call (the .whl folder must be git-ignored, and is carried):
#   run(command="launch/gpu_check.sh --wheels .whl --out $OUT", carry=[".whl"], timeout_s=540)
#
# Options:
#   --out DIR       logs and report.md (default: a new temporary folder); at most 8 files, so that all of them
#                   come back through the device tool: env.log correct.log bench.log torch.log quickstart.log
#                   parts.jsonl quickstart_summary.json report.md
#   --wheels DIR    wheels to install first (pip --no-index --find-links DIR --no-deps, into a temporary folder
#                   ahead of the machine's packages): the modules it lacks, or newer versions of some it has
#   --python PY     the interpreter (default: python3; with --rehearse, .venv/bin/python when it exists)
#   --budget S      seconds for everything (default 480; 900 with --rehearse); each part's timeout is cut to
#                   what is left of it
#   --rehearse      the same parts, shrunk (tiny shapes, few steps), the "GPU" side on the CPU backend, torch
#                   on the CPU when it imports (else one line: torch: not installed, skipped)
# Parts, in order, each under its own timeout (a hang costs its part, not the run):
#   env         versions and the devices JAX sees (the check stops here if JAX sees no GPU);
#   correct     scripts/gpu_check.py correct: float32 train losses on the GPU against the CPU's (20 steps,
#               1e-4 relative), bfloat16 within the CPU precision test's tolerance, cuDNN attention against
#               jaxlm's kernel (forward and gradients), KV-cache generation against the full forward;
#   bench       python -m jaxlm.bench on configs/tinystories_17m.json at batch 32, 64, 128 in bfloat16 and
#               float32: tokens/s, MFU against the datasheet peak, compile time;
#   quickstart  python -m jaxlm.launch --config configs/quickstart.json, 300 steps in bfloat16;
#   torch       scripts/torch_reference.py, the same model and step with torch.compile, same batches/dtypes
#               (last: its compile times are the least known; each batch's line is kept as it finishes).
# Exit status: 0 when every check passed; 1 when one failed or a part failed or timed out; 2 when it cannot
# start (a bad option, no GPU without --rehearse, a module jaxlm needs that neither the machine nor --wheels
# has). One line on stderr; nothing in --out is touched before these checks pass.
set -uo pipefail

die() {
  echo "gpu_check: $*" >&2
  exit 2
}

out="" wheels="" py="" budget="" rehearse=0
while (($#)); do
  case $1 in
    --out | --wheels | --python | --budget)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in --out) out=$2 ;; --wheels) wheels=$2 ;; --python) py=$2 ;; --budget) budget=$2 ;; esac
      shift 2
      ;;
    --rehearse) rehearse=1 && shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ -n "$budget" ]] || { ((rehearse)) && budget=900 || budget=480; }  # a loaded 2-core CPU is slower than a GPU
[[ "$budget" =~ ^[0-9]+$ ]] && ((budget >= 10)) || die "--budget: '$budget' is not a whole number of seconds >= 10"
[[ -z "$wheels" || -d "$wheels" ]] || die "--wheels: '$wheels' is not a folder (launch/gpu_wheels.sh DIR makes one)"
[[ -z "$wheels" ]] || wheels=$(cd "$wheels" && pwd)
if [[ -n "$out" ]]; then
  mkdir -p "$out" 2> /dev/null && [[ -w "$out" ]] || die "--out: cannot write to '$out'"
  out=$(cd "$out" && pwd)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || die "cannot enter the repository root"
if [[ -z "$py" ]]; then
  py=python3
  ((rehearse)) && [[ -x .venv/bin/python ]] && py=$PWD/.venv/bin/python
fi
command -v "$py" > /dev/null 2>&1 || die "--python: '$py' is not a program here"
if ((!rehearse)); then
  gpus=$(nvidia-smi -L 2> /dev/null | grep '^GPU ' || true)
  [[ -n "$gpus" ]] || die "no NVIDIA GPU found (nvidia-smi -L lists none); --rehearse runs every part on the CPU"
fi
work=$(mktemp -d -t jaxlm-gpu-work.XXXXXX) || die "cannot make a temporary folder"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD:$work/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export JAXLM_CACHE_DIR=$work/cache MPLBACKEND=Agg

# Every wheel in --wheels goes into $work/site (ahead of the machine's own packages on PYTHONPATH); then each
# module jaxlm trains with must import (before anything is written to --out).
installed=""
if [[ -n "$wheels" ]] && compgen -G "$wheels/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --find-links "$wheels" --no-deps --no-compile --target "$work/site" \
    "$wheels"/*.whl > "$work/pip.log" 2>&1 || die "pip could not install the wheels in $wheels: $(tail -n 1 "$work/pip.log")"
  installed="installed from $wheels: $(cd "$wheels" && echo *.whl)"
fi
missing=$("$py" scripts/gpu_check.py env --missing 2> /dev/null) || die "'$py' cannot run scripts/gpu_check.py"
if [[ -n "$missing" ]]; then
  [[ -z "$wheels" ]] || die "$py lacks $(echo $missing), which $wheels has no wheel for (launch/gpu_wheels.sh DIR NAME)"
  die "$py lacks $(echo $missing): give --wheels DIR (launch/gpu_wheels.sh DIR downloads them)"
fi
[[ -n "$out" ]] || out=$(mktemp -d -t jaxlm-gpu-check.XXXXXX)
rm -f "$out"/{env,correct,bench,torch,quickstart}.log "$out"/{parts.jsonl,quickstart_summary.json,report.md}

# The sizes of each part: the real ones, or the rehearsal's.
if ((rehearse)); then
  export JAX_PLATFORMS=cpu
  device=cpu mode="rehearsal (CPU)" check_args=(--rehearse) batches=(4) torch_device=cpu steps=2 warmup=1
  qs_steps=6
  tiny=(--set vocab_size=256 --set d_model=32 --set num_layers=1 --set num_heads=2 --set d_ff=64 --set context_length=16)
  qs_sets=(--set vocab_size=300 --set d_model=32 --set num_layers=1 --set num_heads=2 --set d_ff=64
    --set context_length=32 --set batch_size=4 --set warmup_iters=1 --set eval_interval=6 --set eval_batches=2
    --set sample_tokens=0)
  limits=(env=120 correct=300 bench=120 torch=300 quickstart=300)
else
  device=gpu mode="GPU" check_args=() batches=(32 64 128) torch_device=cuda steps=20 warmup=3 qs_steps=300
  tiny=() qs_sets=()
  limits=(env=90 correct=150 bench=60 torch=150 quickstart=180)
fi
limit_of() { for kv in "${limits[@]}"; do [[ ${kv%%=*} == "$1" ]] && echo "${kv#*=}"; done; }

t_start=$SECONDS
failed=0
# record PART LOG RC SECONDS LIMIT STATE [NOTE]: one line of parts.jsonl
record() {
  "$py" -c 'import json, sys; k = ("part", "log", "rc", "seconds", "limit", "state", "note")
print(json.dumps(dict(zip(k, [*sys.argv[1:3], *map(int, sys.argv[3:6]), *sys.argv[6:]]))))' "$@" >> "$out/parts.jsonl"
}
# run_part NAME LOG-NAME COMMAND...: under min(its limit, what is left of the budget), output to the log
run_part() {
  local name=$1 log=$2 t0=$SECONDS rc state limit left
  shift 2
  limit=$(limit_of "${name%% *}")
  left=$((budget - (SECONDS - t_start)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    record "$name" "$log.log" 0 0 "$limit" skipped "not started: the ${budget} s budget is spent"
    echo "== $name: skipped (budget spent)"
    failed=1
    return 1
  fi
  echo "== $name (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$log.log"
  rc=${PIPESTATUS[0]}
  state=ok
  ((rc == 124 || rc == 137)) && state=timeout
  ((rc != 0 && rc != 124 && rc != 137)) && state=failed
  [[ $state == ok ]] || failed=1
  record "$name" "$log.log" "$rc" $((SECONDS - t0)) "$limit" "$state"
  echo "-- $name: $state, $((SECONDS - t0))s"
  [[ $state == ok ]]
}

echo "gpu_check: $(date -u +%FT%TZ), $mode, commit $(git rev-parse --short HEAD 2> /dev/null || echo unknown), out $out"
((rehearse)) || echo "$gpus"

[[ -z "$installed" ]] || echo "$installed" | tee -a "$out/env.log"

if run_part env env "$py" scripts/gpu_check.py env "${check_args[@]}"; then
  run_part correct correct "$py" scripts/gpu_check.py correct "${check_args[@]}"
  for dtype in bfloat16 float32; do
    for b in "${batches[@]}"; do
      run_part "bench batch $b $dtype" bench "$py" -m jaxlm.bench --config configs/tinystories_17m.json \
        --batch-size "$b" --dtype "$dtype" --steps "$steps" --warmup "$warmup" --set "device=$device" "${tiny[@]}"
    done
  done
  run_part quickstart quickstart "$py" -m jaxlm.launch --config configs/quickstart.json --set dtype=bfloat16 \
    --set "max_iterations=$qs_steps" --set "device=$device" "${qs_sets[@]}" --name quickstart \
    --output-dir "$work/runs" --overwrite --no-experiment-log --quiet
  # its summary.json, with the config's dtype and batch beside it (the run folder itself stays in $work)
  "$py" -c 'import json, sys; from pathlib import Path; run, dest = Path(sys.argv[1]), Path(sys.argv[2])
c = json.loads((run / "config.json").read_text())
s = {k: c[k] for k in ("dtype", "batch_size", "context_length")} | json.loads((run / "summary.json").read_text())
(dest.parent / (dest.name + ".tmp")).write_text(json.dumps(s, indent=1)); (dest.parent / (dest.name + ".tmp")).rename(dest)
' "$work/runs/quickstart" "$out/quickstart_summary.json" 2> /dev/null || echo "quickstart: no summary.json" >> "$out/quickstart.log"
  if "$py" -c "import torch" > /dev/null 2>&1; then
    csv=$(IFS=,; echo "${batches[*]}")
    for dtype in bfloat16 float32; do
      run_part "torch $dtype" torch "$py" scripts/torch_reference.py --config configs/tinystories_17m.json \
        --batch-sizes "$csv" --dtype "$dtype" --device "$torch_device" --compile --steps "$steps" --warmup "$warmup" \
        "${tiny[@]}"
    done
  elif ((rehearse)); then
    echo "torch: not installed, skipped" | tee -a "$out/torch.log"
    record torch torch.log 0 0 0 skipped "torch: not installed, skipped"
  else
    echo "torch: not installed" | tee -a "$out/torch.log"
    record torch torch.log 1 0 0 failed "torch: not installed on this machine"
    failed=1
  fi
fi

"$py" -c 'import json, sys; print(json.dumps({"part": "gpu_check", "mode": sys.argv[1], "seconds": int(sys.argv[2]),
"budget": int(sys.argv[3]), "quickstart_steps": int(sys.argv[4])}))' "$mode" $((SECONDS - t_start)) "$budget" \
  "$qs_steps" >> "$out/parts.jsonl"
echo
"$py" scripts/gpu_report.py "$out" || failed=1
if ((failed)); then
  echo "gpu_check: FAILED (logs in $out)" >&2
  exit 1
fi
echo "gpu_check: all parts passed (logs and report.md in $out)"
