"""kill -9 at random moments of a short run with frequent checkpoints, each followed by --resume.

    uv run python scripts/kill9_resume.py [--kills 20] [--steps 60] [--seed 0] [--work DIR]

First one uninterrupted reference run. Then, for each kill: start the same run,
SIGKILL it at a random moment of its training (from its first logged step to its
end: a step, an eval or an async checkpoint save; `--anytime` draws from start-up
on instead, where most kills land in imports and compilation), then
`--resume` it (or, when it left no checkpoint, say so and start it again with
`--overwrite`, as the sweep does). Every completed resume's logged train/val
losses are compared with the reference run's, step by step; leftover
`*.orbax-checkpoint-tmp-*` folders after the resume are counted. One line per
kill, then a summary; exit 1 if any resume failed without saying why, or any
completed run differs from the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "vocab_size": 300,
    "context_length": 32,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 64,
    "batch_size": 4,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "log_interval": 1,
    "eval_interval": 10,
    "checkpoint_interval": 3,
    "eval_batches": 2,
    "sample_tokens": 0,
}


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxlm.launch", "--quiet", "--no-experiment-log", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def losses(run: Path) -> dict[int, tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    return {r["step"]: (r.get("train_loss"), r.get("val_loss")) for r in rows}


def first_row_seconds(proc: subprocess.Popen, run: Path) -> float | None:
    """Seconds until `run` logged its first step (None if the process ended first)."""
    t0 = time.monotonic()
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0):
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return time.monotonic() - t0


def saving(run: Path) -> bool:
    """An Orbax save is in flight: its temporary folder exists."""
    folder = run / "checkpoints"
    return folder.is_dir() and any("tmp" in d.name for d in folder.iterdir())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    p.add_argument("--anytime", action="store_true", help="kill from start-up on, not only during training")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="jaxlm-kill9-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAXLM_CACHE_DIR", str(work / "cache"))
    config = work / "kill9.json"
    config.write_text(json.dumps({**CONFIG, "max_iterations": a.steps, "cosine_cycle_iters": a.steps}))
    t0 = time.monotonic()
    ref = launch("--config", str(config), "--name", "reference", "--output-dir", str(work))
    out, err = ref.communicate()
    if ref.returncode != 0:
        print(f"reference run failed (exit {ref.returncode}): {err.strip().splitlines()[-1:]}")
        return 1
    reference = losses(work / "reference")
    t0 = time.monotonic()  # a second, warm run (token cache and compiled steps reused) sets the kill window
    warm = launch("--config", str(config), "--name", "warm", "--output-dir", str(work))
    start_s = first_row_seconds(warm, work / "warm") or 0.0
    warm.communicate()
    ref_s = time.monotonic() - t0
    window = ref_s if a.anytime else ref_s - start_s
    print(
        f"reference run: {a.steps} steps; a warm run takes {ref_s:.1f}s (wall), {start_s:.1f}s of it start-up; "
        f"kills fall in the {'whole run' if a.anytime else 'training after start-up'}; the warm run "
        f"{'equals' if losses(work / 'warm') == reference else 'DIFFERS from'} the reference"
    )
    rng = random.Random(a.seed)
    tally = {"equal": 0, "differs": 0, "restarted": 0, "refused": 0, "unexplained": 0, "tmp_left": 0, "in_save": 0}
    for i in range(a.kills):
        name = f"k{i:02d}"
        run = work / name
        delay = rng.uniform(0.0, window * 0.95)
        proc = launch("--config", str(config), "--name", name, "--output-dir", str(work))
        started = 0.0 if a.anytime else first_row_seconds(proc, run)
        time.sleep(delay)
        finished_first = started is None or proc.poll() is not None
        in_save = False
        if not finished_first:
            in_save = saving(run)
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        tally["in_save"] += in_save
        steps_done = max(losses(run), default=0) if (run / "metrics.jsonl").is_file() else 0
        saved = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit()) if (
            run / "checkpoints"
        ).is_dir() else []  # fmt: skip
        if finished_first:
            how = "finished before the kill"
        elif not run.is_dir():
            how = "killed before the run directory existed"
        else:
            when = f"{delay:.2f}s {'after start' if a.anytime else 'into training'}"
            during = ", during a checkpoint save" if in_save else ""
            how = f"killed {when}{during} (logged step {steps_done}, checkpoints {saved[-3:]})"
        if run.is_dir() and not finished_first:
            resume = launch("--resume", str(run))
            _, err = resume.communicate()
            said = (err.strip().splitlines() or [""])[-1]
            if resume.returncode == 2 and ("no checkpoint" in said or "no config.json" in said):
                how += f"; resume refused ({said[:60]}...) -> start again with --overwrite"
                tally["restarted"] += 1
                resume = launch("--config", str(config), "--name", name, "--output-dir", str(work), "--overwrite")
                _, err = resume.communicate()
                said = (err.strip().splitlines() or [""])[-1]
            elif resume.returncode == 0:
                how += f"; resumed from step {json.loads((run / 'summary.json').read_text())['resumed_from_step']}"
            if resume.returncode != 0:
                tally["refused" if said.startswith("error:") else "unexplained"] += 1
                print(f"[{i + 1:2d}] {how}; exit {resume.returncode}: {said}")
                continue
        elif not run.is_dir():
            proc = launch("--config", str(config), "--name", name, "--output-dir", str(work))
            proc.communicate()
        tmp = [d.name for d in (run / "checkpoints").iterdir() if "tmp" in d.name]
        tally["tmp_left"] += len(tmp)
        got = losses(run)
        same = got == reference
        tally["equal" if same else "differs"] += 1
        print(f"[{i + 1:2d}] {how}; final run {'equals' if same else 'DIFFERS from'} the reference; tmp left: {tmp}")
    print(
        f"summary: {a.kills} kills ({tally['in_save']} while a checkpoint save was in flight); "
        f"{tally['equal']} completed runs equal the reference, {tally['differs']} differ; "
        f"{tally['restarted']} had no checkpoint and were restarted (said so); {tally['refused']} resumes were "
        f"refused with a one-line reason; {tally['unexplained']} failed without "
        f"a one-line reason; {tally['tmp_left']} temporary checkpoint folders left after resume; work: {work}"
    )
    return 0 if tally["differs"] == tally["unexplained"] == tally["tmp_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
