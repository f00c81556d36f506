"""CLI: `python -m jaxlm.sweep --config BASE.json --grid learning_rate=1e-3,3e-3,1e-2 [--grid ...]`.

Every point of the grid (cartesian product) is a normal run, `python -m jaxlm.launch
--config BASE --name <prefix>_<key>=<value>... --set ...`, in its own process, so a
crash or divergence in one point cannot take the sweep down. Each point's outcome
is read from its `summary.json`. Running the same command again skips completed
and diverged points, resumes interrupted ones (`launch --resume`) and, with
`--retry-failed`, starts failed ones afresh (`launch --overwrite`). At the end:
`<output-dir>/.reports/<prefix>_sweep.png`, `<prefix>_by_value.png`, `<prefix>_sweep.md` (hidden from
run-directory globs) and one grouped entry in `<output-dir>/EXPERIMENT_LOG.md`, which a finished sweep run
again does not repeat (see `jaxlm.tracking.sweep_report`). `--report PREFIX --output-dir DIR`
writes the figures and the table again from the run directories already there, running nothing.

With `--slurm` the points run on a SLURM cluster instead, all at once as one job array
(`jaxlm.train.slurm_array`; `--max-parallel N` caps how many run together): the command writes
`<output-dir>/.reports/<prefix>_sweep.sbatch`, submits it, prints the job id and returns. Each element is
a normal `jaxlm.launch ... --resume-if-exists` run, so preempted elements requeue and resume.
Running the same command again while the job is queued says so (exit 75); once it is done it
writes the report from the run directories (and submits again only points left unfinished).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from jaxlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError
from jaxlm.runtime import ChildStops, CommandParser, run_command
from jaxlm.tracking import runlock, sweep_report
from jaxlm.tracking.fmt import write_json, write_text
from jaxlm.tracking.outputs import OutputError
from jaxlm.tracking.runs import saved_checkpoint_steps
from jaxlm.train.grid import GridPoint, expand, find_points, parse_grid

FINAL_STATUSES = ("completed", "diverged")  # re-running would only repeat these
RESUMABLE_STATUSES = ("interrupted", "running")  # "running" left behind = the process was killed


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


def run_sweep(
    points: list[GridPoint],
    base: str,
    output_dir: Path,
    *,
    runner: Runner,
    quiet: bool = False,
    retry_failed: bool = False,
    say: Callable[[str], None] = print,
    stop: ChildStops | None = None,
) -> dict[str, str]:
    """Run every point in turn; {point name: status}. A point's failure never stops the sweep; a stop
    signal does (`stop.received`): the running point saves and stops, and no later point starts."""
    statuses: dict[str, str] = {}
    for i, point in enumerate(points, 1):
        if stop is not None and stop.received:
            break
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
    p = CommandParser(prog="python -m jaxlm.sweep", description="Run a grid of jaxlm runs and compare them.")
    p.add_argument("--config", help="base config JSON file (required unless --report)")
    p.add_argument(
        "--report",
        metavar="PREFIX",
        help="run nothing: write the figures and table of the runs <PREFIX>_* already in --output-dir",
    )
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
    p.add_argument(
        "--force", action="store_true", help="replace report files (<prefix>_sweep.md/.png) this sweep did not write"
    )
    p.add_argument("--dry-run", action="store_true", help="print what each point would do, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")
    p.add_argument(
        "--experiment-log",
        type=Path,
        metavar="PATH",
        help="markdown log for the sweep's entry (default: EXPERIMENT_LOG.md in --output-dir)",
    )
    p.add_argument("--no-experiment-log", action="store_true", help="do not append to the experiment log")
    p.add_argument("--slurm", action="store_true", help="submit the points as one SLURM job array and return")
    p.add_argument("--slurm-args", default="", metavar="ARGS", help='extra sbatch options, e.g. "--time=2:00:00"')
    p.add_argument("--max-parallel", type=int, metavar="N", help="with --slurm: at most N points run at once")
    args = p.parse_args(join_slurm_args(sys.argv[1:] if argv is None else argv))
    if (args.slurm_args or args.max_parallel is not None) and not args.slurm:
        p.error("--slurm-args and --max-parallel go with --slurm")
    if args.max_parallel is not None and args.max_parallel < 1:
        p.error("--max-parallel: expected a positive number")
    return args


def join_slurm_args(argv: list[str]) -> list[str]:
    """`--slurm-args "--cpus-per-task=1"` as `--slurm-args=--cpus-per-task=1`: argparse would read a value
    that starts with a dash as an option of its own."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word == "--slurm-args":
            out[i : i + 2] = [f"--slurm-args={out[i + 1]}"]
            break
    return out


def submit_to_slurm(args: argparse.Namespace, points: list[GridPoint], prefix: str) -> int | None:
    """--slurm: submit the unfinished points as one job array (exit code), or None when every point is
    done and the report is due. Exit 75 while an earlier submission of this sweep is still queued."""
    from jaxlm.train import slurm_array

    output_dir = args.output_dir.absolute()
    record = sweep_report.report_dir(output_dir) / f"{prefix}_sweep.slurm.json"
    job = slurm_array.read_job(record)
    if job is not None and (left := slurm_array.queued(job)):
        print(f"sweep {prefix}: SLURM job {job} still has {len(left)} element(s) queued or running:")
        print("\n".join(left) + "\nrun this command again when they are done, for the report")
        return EXIT_INTERRUPTED
    done = (*FINAL_STATUSES, *(() if args.retry_failed else ("failed",)))  # a failed point resumes or starts over
    todo = {i: point for i, point in enumerate(points) if read_status(output_dir / point.name) not in done}
    if not todo:
        return None
    launch = [sys.executable, "-m", "jaxlm.launch", "--config", str(Path(args.config).absolute())]
    commands = {
        i: [
            *launch,
            *("--name", point.name, "--output-dir", str(output_dir)),
            *itertools.chain.from_iterable(("--set", o) for o in point.overrides),
            *("--no-experiment-log", "--quiet", "--resume-if-exists"),
        ]
        for i, point in todo.items()
    }
    logs = sweep_report.report_dir(output_dir) / f"{prefix}_sweep.slurm"
    script = sweep_report.report_dir(output_dir) / f"{prefix}_sweep.sbatch"
    logs.mkdir(parents=True, exist_ok=True)
    write_text(script, slurm_array.array_script(prefix, commands, logs, Path.cwd(), args.max_parallel))
    job = slurm_array.submit(script, shlex.split(args.slurm_args))
    write_json(record, {"job": job, "script": str(script), "points": {str(i): p.name for i, p in todo.items()}})
    print(f"submitted SLURM job array {job}: {len(todo)} of {len(points)} points ({script}; logs in {logs})")
    print(f"when it is done, run the same command again for the report (squeue -r -j {job} shows it)")
    return EXIT_OK


def report_only(args: argparse.Namespace, command: str) -> int:
    """`--report PREFIX`: the figures and the table again, from the run directories alone."""
    try:
        points = find_points(args.output_dir, args.report)
        sweep_report.check_report_outputs(args.output_dir, args.report, args.force)
    except (UserError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    config_file = json.loads((args.output_dir / points[0].name / "config.json").read_text()).get("config_file")
    report = sweep_report.write_report(
        points, args.output_dir, args.report, command=command, base_config=str(config_file), experiment_log=None
    )
    figures = ", ".join(str(p) for p in (report.png, report.by_value) if p is not None)
    print(f"{report.table}\nwrote {figures} and {report.markdown}")
    return EXIT_OK


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report_only(args, shlex.join(["python", "-m", "jaxlm.sweep", *(sys.argv[1:] if argv is None else argv)]))
    if args.config is None:
        print("error: --config: required (or --report PREFIX to report on existing runs)", file=sys.stderr)
        return EXIT_USAGE
    prefix = args.name_prefix or Path(args.config).stem
    try:
        if not args.grid:
            raise UserError("--grid: give at least one, e.g. --grid learning_rate=1e-3,3e-3")
        points = expand(args.config, parse_grid(args.grid), args.overrides, prefix, args.constant_tokens)
        sweep_report.check_report_outputs(args.output_dir, prefix, args.force)
        if not args.dry_run:
            from jaxlm.data.sources import check_sources

            for point in points:
                check_sources(point.config)
    except (UserError, OutputError) as e:
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
    if args.slurm:
        try:
            if (code := submit_to_slurm(args, points, prefix)) is not None:
                return code
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    with ChildStops() as stop:  # to the end: a signal while the report is written waits for it
        outcomes = {}
        if not args.slurm:
            outcomes = run_sweep(
                points,
                args.config,
                args.output_dir,
                runner=runner or stop.run,
                quiet=args.quiet,
                retry_failed=args.retry_failed,
                stop=stop,
            )
        return finish_sweep(args, argv, points, prefix, outcomes, stop.received)


def finish_sweep(args, argv, points, prefix: str, outcomes: dict[str, str], stopped_by: str | None) -> int:
    """The report, the log entry and the exit code: 0 when every point finished, 75 when a stop signal
    ended the sweep (the same command resumes it), else 1."""
    from jaxlm.tracking.explog import default_log_path

    if stopped_by:
        print(f"\nsweep stopped by {stopped_by}: run the same command again to resume it", file=sys.stderr)
    command = shlex.join(["python", "-m", "jaxlm.sweep", *(sys.argv[1:] if argv is None else argv)])
    log_path = None if args.no_experiment_log else (args.experiment_log or default_log_path(args.output_dir))
    report = sweep_report.write_report(
        points,
        args.output_dir,
        prefix,
        command=command,
        base_config=args.config,
        experiment_log=log_path,
        outcomes=outcomes,
    )
    figures = ", ".join(str(p) for p in (report.png, report.by_value) if p is not None)
    print(f"\n{report.table}\nwrote {figures + ' and ' if figures else ''}{report.markdown}")
    if stopped_by:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(s in FINAL_STATUSES for s in report.statuses.values()) else EXIT_FAILED


if __name__ == "__main__":
    run_command(main)
