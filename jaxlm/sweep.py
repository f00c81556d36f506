"""CLI: `python -m jaxlm.sweep --config BASE.json --grid learning_rate=1e-3,3e-3,1e-2 [--grid ...]`.

Every point of the grid (cartesian product) is a normal run, `python -m jaxlm.launch
--config BASE --name <prefix>_<key>=<value>... --set ...`, in its own process, so a
crash or divergence in one point cannot take the sweep down. Each point's outcome
is read from its `summary.json`. Running the same command again skips completed
and diverged points, resumes interrupted ones (`launch --resume`) and, with
`--retry-failed`, starts failed ones afresh (`launch --overwrite`). At the end:
`<output-dir>/<prefix>_sweep.png`, `<output-dir>/<prefix>_sweep.md` and one grouped
entry in EXPERIMENT_LOG.md (see `jaxlm.tracking.sweep_report`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jaxlm.config import Config, load_config, parse_override
from jaxlm.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import saved_checkpoint_steps
from jaxlm.tracking import runlock

FINAL_STATUSES = ("completed", "diverged")  # re-running would only repeat these
RESUMABLE_STATUSES = ("interrupted", "running")  # "running" left behind = the process was killed


@dataclass(frozen=True)
class GridPoint:
    name: str
    values: tuple[tuple[str, str], ...]  # (key, value as written on the command line)
    overrides: tuple[str, ...]  # every --set for this point: base --set, grid values, step adjustments
    config: Config

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2,...` strings -> [(key, [v1, v2, ...])]; each value type-checked against the key."""
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--grid {spec!r}: expected key=value1,value2,...")
        key, raw = (part.strip() for part in spec.split("=", 1))
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise UserError(f"--grid {spec!r}: no values")
        if key in (k for k, _ in grid):
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid")
        for value in values:
            parse_override(f"{key}={value}")
        grid.append((key, values))
    return grid


def _scaled(value: int, factor: float) -> int:
    return max(0, round(value * factor))


def expand(
    base: str, grid: list[tuple[str, list[str]]], sets: list[str], prefix: str, constant_tokens: bool = False
) -> list[GridPoint]:
    """The grid's points in order, each validated as a full config (ConfigError names the point).

    With `constant_tokens`, a point whose tokens per step differ from the base config's
    gets `max_iterations` (and warmup/cosine lengths, proportionally) set so that it
    trains on the same number of tokens as the base config.
    """
    base_config = load_config(base, sets)
    total_tokens = base_config.tokens_per_step * base_config.max_iterations
    grid_keys = {k for k, _ in grid}
    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
        name = "_".join([prefix, *(f"{k}={v}" for k, v in combo)])
        overrides = [*sets, *(f"{k}={v}" for k, v in combo)]
        config = load_config(base, overrides)
        if constant_tokens and config.tokens_per_step != base_config.tokens_per_step:
            steps = max(1, round(total_tokens / config.tokens_per_step))
            factor = steps / config.max_iterations
            overrides.append(f"max_iterations={steps}")
            if "warmup_iters" not in grid_keys:
                overrides.append(f"warmup_iters={min(steps, _scaled(config.warmup_iters, factor))}")
            if config.cosine_cycle_iters is not None and "cosine_cycle_iters" not in grid_keys:
                overrides.append(f"cosine_cycle_iters={_scaled(config.cosine_cycle_iters, factor)}")
            config = load_config(base, overrides)
        from jaxlm.rundir import check_name

        check_name(name)
        points.append(GridPoint(name, tuple(combo), tuple(overrides), config))
    return points


def read_status(run_dir: Path) -> str | None:
    """The point's status from its summary.json; None when it has not been started."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return "failed" if run_dir.exists() else None


def plan(point: GridPoint, base: str, output_dir: Path, *, quiet: bool, retry_failed: bool) -> tuple[str, list[str]]:
    """(action, launch command) for a point: run, resume, retry or skip."""
    run_dir = output_dir / point.name
    status = read_status(run_dir)
    tail = ["--no-experiment-log"] + (["--quiet"] if quiet else [])
    launch = [sys.executable, "-m", "jaxlm.launch"]
    fresh = [
        *launch,
        "--config",
        base,
        "--name",
        point.name,
        "--output-dir",
        str(output_dir),
        *itertools.chain.from_iterable(("--set", o) for o in point.overrides),
        *tail,
    ]
    if status is None:
        return "run", fresh
    if status in RESUMABLE_STATUSES:
        who = runlock.holder(run_dir)
        if who is not None:
            return f"skip (in use by {who})", []
        if not saved_checkpoint_steps(run_dir):  # interrupted or killed before its first checkpoint
            return "restart", [*fresh, "--overwrite"]
        return "resume", [*launch, "--resume", str(run_dir), *tail]
    if status == "failed" and retry_failed:
        return "retry", [*fresh, "--overwrite"]
    return f"skip ({status})", []


Runner = Callable[[list[str]], int]


def run_subprocess(command: list[str]) -> int:
    """Run one point; its output goes straight to the terminal. Ctrl-C reaches it too (same
    process group), so it can save a checkpoint before the sweep stops."""
    proc = subprocess.Popen(command)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise


def run_sweep(
    points: list[GridPoint],
    base: str,
    output_dir: Path,
    *,
    runner: Runner = run_subprocess,
    quiet: bool = False,
    retry_failed: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every point in turn; {point name: status}. A point's failure never stops the sweep."""
    statuses: dict[str, str] = {}
    for i, point in enumerate(points, 1):
        action, command = plan(point, base, output_dir, quiet=quiet, retry_failed=retry_failed)
        say(f"[{i}/{len(points)}] {point.name}: {action}")
        status = read_status(output_dir / point.name)
        if command:
            code = runner(command)
            status = read_status(output_dir / point.name)
            if status == "running" and runlock.holder(output_dir / point.name) is None:
                status = runlock.KILLED
            if status is None and code != 0:
                status = "failed"  # could not start
            say(f"[{i}/{len(points)}] {point.name}: {status} (exit {code})")
        statuses[point.name] = status or "not started"
    return statuses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxlm.sweep", description="Run a grid of jaxlm runs and compare them.")
    p.add_argument("--config", required=True, help="base config JSON file")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a key and its values (repeatable; the sweep is the cartesian product)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every point (repeatable)",
    )
    p.add_argument("--name-prefix", help="run names are <prefix>_<key>=<value>... (default: the config's stem)")
    p.add_argument("--output-dir", default="runs", type=Path, help="folder of the run directories (default: runs)")
    p.add_argument(
        "--constant-tokens",
        action="store_true",
        help="when tokens per step vary (batch_size, context_length), set max_iterations to keep "
        "the base config's total tokens",
    )
    p.add_argument("--retry-failed", action="store_true", help="start failed points again (launch --overwrite)")
    p.add_argument("--dry-run", action="store_true", help="print what each point would do, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")
    p.add_argument(
        "--experiment-log",
        type=Path,
        metavar="PATH",
        help="markdown log for the sweep's entry (default: EXPERIMENT_LOG.md beside --output-dir)",
    )
    p.add_argument("--no-experiment-log", action="store_true", help="do not append to the experiment log")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, runner: Runner = run_subprocess) -> int:
    args = parse_args(argv)
    prefix = args.name_prefix or Path(args.config).stem
    try:
        if not args.grid:
            raise UserError("--grid: give at least one, e.g. --grid learning_rate=1e-3,3e-3")
        points = expand(args.config, parse_grid(args.grid), args.overrides, prefix, args.constant_tokens)
        if not args.dry_run:
            from jaxlm.data.sources import check_sources

            for point in points:
                check_sources(point.config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        for point in points:
            action, command = plan(
                point, args.config, args.output_dir, quiet=args.quiet, retry_failed=args.retry_failed
            )
            steps = f"{point.config.max_iterations} steps x {point.config.tokens_per_step} tokens"
            print(f"{point.name} [{action}; {steps}]")
            if command:
                print("  " + shlex.join(command))
        return EXIT_OK

    from jaxlm.tracking import sweep_report
    from jaxlm.tracking.explog import default_log_path

    interrupted = False
    try:
        run_sweep(points, args.config, args.output_dir, runner=runner, quiet=args.quiet, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        interrupted = True
        print("\nsweep interrupted: run the same command again to resume it", file=sys.stderr)
    command = shlex.join(["python", "-m", "jaxlm.sweep", *(sys.argv[1:] if argv is None else argv)])
    log_path = None if args.no_experiment_log else (args.experiment_log or default_log_path(args.output_dir))
    report = sweep_report.write_report(
        points, args.output_dir, prefix, command=command, base_config=args.config, experiment_log=log_path
    )
    print(f"\n{report.table}\nwrote {report.png} and {report.markdown}")
    ok = not interrupted and all(s in FINAL_STATUSES for s in report.statuses.values())
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    from jaxlm.runtime import run_command

    run_command(main)
