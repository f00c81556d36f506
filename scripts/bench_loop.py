"""Loop efficiency: how much of a real training run's time is the train step itself.

    uv run python scripts/bench_loop.py [--code DIR ...] [--preset tiny|tiny_eval|quickstart ...] [--repeats 1]

For each code tree (`--code`, default this checkout; pass a `git worktree` of main to get a
"before" number beside the "after" one) and each preset, two subprocesses run with that tree
first on the import path:

- the bare step: `python -m jaxlm.bench` (the same build and compiled step the Trainer runs,
  each step blocked on), its median `step_ms`;
- a real run: `python -m jaxlm.launch` of the same config (no evaluation before the last step unless the preset says,
  no checkpoints, no sample, `log_interval` as below), its steps/s read from `metrics.csv`'s
  `wallclock_s` between two logged steps (the first ones, which compile and warm up, excluded).

efficiency = loop steps/s x bare step seconds (1.0: the loop costs nothing on top of the step);
host_ms_per_step = 1000 / loop steps/s - bare step_ms. One line per point and a table.

Presets: `tiny` is quickstart shrunk to a step about as short as a GPU's (d_model=32, one
layer, context 16, batch 4, vocab 512; 3,000 steps, log_interval=100, window 500..2,900);
`tiny_eval` is `tiny` with a 2-batch evaluation every 250 steps (each refreshes metrics.json and
the plots, and saves the best checkpoint when the loss improved: the window's time includes all of
it, the same work in every tree);
`quickstart` is configs/quickstart.json itself (~300 ms step on a 2-core CPU; 150 steps,
log_interval=10, window 30..150).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["d_model=32", "num_layers=1", "num_heads=1", "d_ff=64", "context_length=16", "batch_size=4", "vocab_size=512"]
PRESETS = {  # name: (overrides, launch steps, log_interval, window start, window end, bench steps)
    "tiny": (TINY, 3000, 100, 500, 2900, 400),
    "tiny_eval": ([*TINY, "eval_interval=250", "eval_batches=2"], 3000, 100, 500, 2900, 400),
    "quickstart": ([], 150, 10, 30, 150, 10),
}
NO_EXTRAS = ["checkpoint_interval=1000000", "eval_interval=1000000", "sample_tokens=0", "warmup_iters=0"]


def run(code: Path, args: list[str], timeout: float) -> str:
    """`python ARGS` with `code` first on the import path (cwd too: `-m` puts the cwd first)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, *args], cwd=code, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"bench_loop: {' '.join(args[:3])} in {code} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def bare_step_ms(code: Path, sets: list[str], steps: int) -> float:
    args = ["-m", "jaxlm.bench", "--config", str(REPO / "configs/quickstart.json"), "--steps", str(steps)]
    args += ["--warmup", "20"] + [a for s in sets for a in ("--set", s)]
    line = [ln for ln in run(code, args, 900).splitlines() if ln.startswith("{")][-1]
    return json.loads(line)["step_ms"]


def loop_steps_per_s(code: Path, sets: list[str], steps: int, log_interval: int, start: int, end: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as out:
        sets = NO_EXTRAS + sets + [f"max_iterations={steps}", f"log_interval={log_interval}"]
        args = ["-m", "jaxlm.launch", "--config", str(REPO / "configs/quickstart.json"), "--quiet"]
        args += ["--output-dir", out, "--name", "loop", "--no-experiment-log"] + [a for s in sets for a in ("--set", s)]
        run(code, args, 1800)
        with open(Path(out) / "loop" / "metrics.csv", newline="") as f:
            wall = {int(r["step"]): float(r["wallclock_s"]) for r in csv.DictReader(f) if r.get("wallclock_s")}
    return (end - start) / (wall[end] - wall[start])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", action="append", type=Path, help="code tree to measure (repeatable; default: this one)")
    p.add_argument("--preset", action="append", choices=sorted(PRESETS), help="default: all")
    p.add_argument("--repeats", type=int, default=1, help="measure each point this many times, interleaved")
    a = p.parse_args()
    codes = [c.resolve() for c in (a.code or [REPO])]
    rows = []
    for preset in a.preset or list(PRESETS):
        sets, steps, log_interval, start, end, bench_steps = PRESETS[preset]
        for rep in range(a.repeats):
            for code in codes:
                step_ms = bare_step_ms(code, sets, bench_steps)
                rate = loop_steps_per_s(code, sets, steps, log_interval, start, end)
                row = {
                    "preset": preset,
                    "code": str(code),
                    "repeat": rep,
                    "bare_step_ms": step_ms,
                    "loop_steps_per_s": round(rate, 2),
                    "efficiency": round(rate * step_ms / 1e3, 3),
                    "host_ms_per_step": round(1e3 / rate - step_ms, 3),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| preset | code | bare step ms | loop steps/s | efficiency | host ms/step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['preset']} | {Path(r['code']).name} | {r['bare_step_ms']:.3f} | {r['loop_steps_per_s']:,.1f} "
            f"| {r['efficiency']:.2f} | {r['host_ms_per_step']:.3f} |"
        )


if __name__ == "__main__":
    main()
