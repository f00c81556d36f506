"""The leaderboard switches on the bundled sample at the quickstart's budget: each alone, and the recipe.

    uv run python scripts/leaderboard_sample.py [--out runs/leaderboard-sample] [--only NAME ...]

Every point is `configs/quickstart.json` (the CS336 baseline at the quickstart's vocab, context, batch
and steps) with one switch flipped, plus `configs/leaderboard_recipe_sample.json` (all of them). All
points evaluate every 40 steps (the fixed sampled validation batches; evaluation changes no training),
so the steps a point needs to reach the baseline's final validation loss can be read from
`metrics.csv`, interpolated linearly between evaluations. After training, `python -m jaxlm.evaluate`
computes each point's loss on every token of the validation file at its last step (equal tokens).

Prints a markdown table (docs/leaderboard.md holds the measured one). A point already trained in
`--out` is evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.json"
RECIPE = ROOT / "configs" / "leaderboard_recipe_sample.json"
EVAL_EVERY = 40
# name -> (config, overrides); the ReLU² FFN gets d_ff 1024 so its two matrices hold about SwiGLU's three's parameters
POINTS = {
    "baseline": (QUICKSTART, []),
    "muon": (QUICKSTART, ["optimizer=muon"]),
    "qk_norm": (QUICKSTART, ["qk_norm=true"]),
    "relu2": (QUICKSTART, ["ffn=relu2", "d_ff=1024"]),
    "softcap": (QUICKSTART, ["logit_softcap=30"]),
    "zero_init": (QUICKSTART, ["zero_init_output=true"]),
    "z_loss": (QUICKSTART, ["z_loss=1e-4"]),
    "recipe": (RECIPE, []),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def train(name: str, out: Path) -> None:
    config, overrides = POINTS[name]
    if (out / name / "summary.json").exists() and json.loads((out / name / "summary.json").read_text()).get(
        "status"
    ) == "completed":
        return
    sets = [a for o in [*overrides, f"eval_interval={EVAL_EVERY}"] for a in ("--set", o)]
    proc = cli("jaxlm.launch", "--config", str(config), "--name", name, "--output-dir", str(out), "--quiet",
               "--no-experiment-log", *sets)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{name}: launch exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")


def full_val_loss(name: str, out: Path) -> float:
    proc = cli("jaxlm.evaluate", "--run", str(out / name), "--checkpoint", "latest", "--quiet", "--no-experiment-log")
    if proc.returncode != 0:
        raise SystemExit(f"{name}: evaluate exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    evals = json.loads((out / name / "summary.json").read_text())["evals"]
    return max(evals.values(), key=lambda e: e.get("step", 0))["loss"]


def val_curve(name: str, out: Path) -> list[tuple[int, float]]:
    with open(out / name / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r.get("val_loss")]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step where the sampled validation loss reaches `target`, linear between evaluations."""
    previous = None
    for step, loss in curve:
        if loss <= target:
            if previous is None:
                return float(step)
            (s0, l0) = previous
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        previous = (step, loss)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "leaderboard-sample")
    p.add_argument("--only", nargs="*", choices=list(POINTS), help="these points (the baseline always runs)")
    args = p.parse_args()
    names = ["baseline", *[n for n in POINTS if n != "baseline" and (not args.only or n in args.only)]]
    rows = {}
    for name in names:
        train(name, args.out)
        curve = val_curve(name, args.out)
        rows[name] = {"final_val": curve[-1][1], "steps": curve[-1][0], "full_val": full_val_loss(name, args.out)}
        rows[name]["curve"] = curve
        print(f"{name}: done", file=sys.stderr, flush=True)
    base = rows["baseline"]
    print("| point | sampled val loss (last step) | full val loss (`jaxlm.evaluate`) | vs baseline | "
          "fraction of the baseline's tokens to reach its final val loss |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        reach = steps_to_reach(r["curve"], base["final_val"])
        fraction = "not reached" if reach is None else f"{reach / base['steps']:.2f}"
        print(f"| {name} | {r['final_val']:.4f} | {r['full_val']:.4f} | {r['full_val'] - base['full_val']:+.4f} | "
              f"{fraction} |")  # fmt: skip


if __name__ == "__main__":
    main()
