"""CLI: `python -m jaxlm.launch --config configs/x.json [--set key=value ...]`.

Parses arguments, builds and validates the Config, checks the data and the run
directory (all before any compile or write), then hands over to the Trainer. `main` reads as its
phases: resolve, preflight, build_trainer, open_tracker, train.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jaxlm.config import Config, load_config
from jaxlm.errors import EXIT_ABORTED, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import (
    NO_CHECKPOINT,
    RunClaim,
    RunDir,
    check_name,
    check_new_run_dir,
    check_writable,
    claim_run,
    resume_config,
)
from jaxlm.runtime import CommandParser, describe_process, exit_on_signal, run_command
from jaxlm.tracking.fmt import number
from jaxlm.tracking.runs import read_summary, saved_checkpoint_steps

EXIT_BY_STATUS = {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(prog="python -m jaxlm.launch", description="Train a jaxlm transformer.")
    p.add_argument("--config", help="config JSON file (required unless --resume)")
    p.add_argument("--name", help="run name (default: the config file's stem)")
    p.add_argument("--description", help="what this run tests (overrides the config's description)")
    p.add_argument("--output-dir", default="runs", help="folder that holds run directories (default: runs)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the config, model size and data files, then exit")
    p.add_argument("--estimate", action="store_true", help="with --dry-run: time a few steps, estimate the run's time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its latest checkpoint "
        "(config from RUN_DIR/config.json; --set only for keys safe to change)",
    )
    p.add_argument("--resume-step", type=int, metavar="N", help="with --resume: continue from checkpoint N instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory of the same name")
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="start the run if OUTPUT_DIR/NAME does not exist, else continue it from its latest checkpoint "
        "(one command line for the first start and every restart, e.g. a requeued SLURM job)",
    )
    p.add_argument(
        "--experiment-log",
        metavar="PATH",
        help="markdown log to append this run's entry to (default: EXPERIMENT_LOG.md in --output-dir)",
    )
    p.add_argument("--no-experiment-log", action="store_true", help="do not append to the experiment log")
    args = p.parse_args(argv)
    if args.resume is None and args.config is None:
        p.error("--config is required (or --resume RUN_DIR)")
    if args.resume is not None and (args.config or args.name or args.overwrite):
        p.error("--resume takes the config and name from the run directory: drop --config/--name/--overwrite")
    if args.resume_step is not None and args.resume is None:
        p.error("--resume-step needs --resume RUN_DIR")
    if args.resume_if_exists and (args.resume is not None or args.overwrite):
        p.error("--resume-if-exists decides between starting and resuming itself: drop --resume/--overwrite")
    return args


def resume_if_exists(args: argparse.Namespace) -> int | None:
    """--resume-if-exists: turn `args` into a --resume of OUTPUT_DIR/NAME when that run exists (and into a
    fresh start over it when it exists but never saved a checkpoint). Returns an exit code when there is
    nothing left to do (the run already completed or diverged), else None."""
    if not args.resume_if_exists:
        return None
    run_dir = Path(args.output_dir) / (args.name or Path(args.config).stem)
    if not run_dir.exists():
        return None
    raw = RunDir(run_dir, "--resume-if-exists").raw_config()  # UserError unless a jaxlm run directory
    summary = read_summary(run_dir)
    status = summary.get("status")
    if status == "diverged" or (
        status == "completed" and summary.get("steps", 0) >= resume_config(run_dir, args.overrides).max_iterations
    ):
        print(f"{run_dir}: already {status} at step {summary.get('steps')}; nothing to do", file=sys.stderr)
        return EXIT_BY_STATUS[status]
    checkpoints = run_dir / "checkpoints"
    if not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        if raw.get("name") != run_dir.name:
            raise UserError(f"--resume-if-exists '{run_dir}': its config.json names another run; not replacing it")
        print(f"{run_dir}: no checkpoint saved yet; starting it again", file=sys.stderr)
        args.overwrite = True
        return None
    args.resume, args.config, args.name = str(run_dir), None, None
    return None


def resolve(args: argparse.Namespace) -> tuple[Config, str]:
    """Config and run name from the arguments; UserError on anything invalid."""
    overrides = list(args.overrides)
    if args.description is not None:
        overrides.append(f"description={args.description}")
    if args.resume is not None:
        return resume_config(args.resume, overrides), Path(args.resume).resolve().name
    config = load_config(args.config, overrides)
    name = Path(args.config).stem if args.name is None else args.name
    check_name(name)
    return config, name


def describe_devices(config: Config) -> str:
    """The devices the run will use and who chose them; ConfigError (exit 2) when the config names a
    platform JAX does not have here."""
    from jaxlm.train.devices import describe_choice, run_devices

    return describe_choice(config, run_devices(config))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    claim: RunClaim | None = None
    try:
        if (done := resume_if_exists(args)) is not None:
            return done
        config, name = resolve(args)
        if args.dry_run:
            devices = describe_devices(config)  # a device the config names and JAX lacks: exit 2 here too
            from jaxlm.train.dry_run import describe

            print(describe(config, name))
            print(devices)
            print(describe_process())
            if args.estimate:
                from jaxlm.train.probe import describe_estimate

                print(describe_estimate(config))
            return EXIT_OK
        if args.estimate:
            raise UserError("--estimate: only with --dry-run")
        run_dir, claim = start_together(args, config, name)
        outcome = f"the run is as it was (--resume {run_dir} again)" if args.resume else "nothing was written"
        with exit_on_signal("data preparation and compilation", claim.abandon if claim else None, outcome=outcome):
            trainer = build_trainer(args, config, run_dir)
            tracker = open_tracker(args, config, name, run_dir, trainer, claim)
    except UserError as e:
        if claim is not None:
            claim.abandon()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return train(trainer, tracker, name, run_dir)
    finally:
        if claim is not None:
            claim.lock.release()


def preflight(args: argparse.Namespace, config: Config, name: str, owner: bool = True) -> Path:
    """Every check that needs no devices: data files, W&B, the run directory (by its `owner`, process 0:
    the others would find the directory it has just claimed). Returns the run directory; nothing has
    been written."""
    from jaxlm.data.sources import check_sources

    check_sources(config)
    check_wandb(config)
    run_dir = Path(args.resume).resolve() if args.resume else Path(args.output_dir) / name
    if args.resume is None and owner:
        check_new_run_dir(run_dir, args.overwrite)
    check_writable(run_dir.parent)
    return run_dir


def check_wandb(config: Config) -> None:
    """A config that asks for W&B needs the optional package: a one-line error before anything is written."""
    from jaxlm.errors import ConfigError
    from jaxlm.tracking.wandb_log import missing_package

    if config.wandb_project is not None and (why := missing_package()):
        raise ConfigError(f"config key 'wandb_project': {why}")


def start_together(args: argparse.Namespace, config: Config, name: str) -> tuple[Path, RunClaim | None]:
    """Join the other processes, run the pre-flight checks, then (process 0) own the run directory for
    this process's life: created atomically and locked, so a second launch, resume or overwrite of it
    is refused. A multi-process run agrees on the outcome: when any process's checks or process 0's
    claim fail, every process stops with one line instead of waiting for the failed one."""
    from jaxlm.train import distributed

    distributed.initialize_from_env()  # multi-process runs: before anything touches JAX or Orbax
    claim, error = None, None
    try:
        run_dir = preflight(args, config, name, owner=distributed.is_primary())
        if distributed.is_primary():
            claim = claim_run(run_dir, resume=args.resume is not None, overwrite=args.overwrite)
    except UserError as e:
        error = e
    try:
        distributed.raise_if_any_failed(error)
    except UserError:
        if claim is not None:
            claim.abandon()
        raise
    return run_dir, claim


def build_trainer(args: argparse.Namespace, config: Config, run_dir: Path):
    """Prepare data, compile and (on resume) restore; the run directory holds only its lock (a new run)."""
    from jaxlm.train import distributed, sharding
    from jaxlm.train.trainer import Trainer

    which = args.resume_step if args.resume_step is not None else "latest"
    if args.resume is not None:
        from jaxlm.train.checkpoint import check_resumable

        step = check_resumable(run_dir, which, config)
        if step >= config.max_iterations:
            unfinished = read_summary(run_dir).get("status") not in ("completed", "diverged")
            why = " (the run was stopped after its last checkpoint, while finishing its records)" if unfinished else ""
            raise UserError(
                f"--resume '{run_dir}': checkpoint step {step} is already at max_iterations="
                f"{config.max_iterations}{why}; continue further with --set max_iterations=N, or evaluate it "
                f"with python -m jaxlm.evaluate --run {run_dir}"
            )
    sharding.check_mesh(config)
    if distributed.is_primary():
        print(describe_devices(config), flush=True)
    import jax

    from jaxlm.train.memory import check_fits

    check_fits(config, jax.device_count())  # before data preparation, the tokenizer trainer or any array
    trainer = Trainer(config, progress=not args.quiet and distributed.is_primary())
    if args.resume is not None:
        trainer.restore(run_dir, which)
    return trainer


def open_tracker(args: argparse.Namespace, config: Config, name: str, run_dir: Path, trainer, claim):
    """The run's records: written by process 0 only (a new run directory, or the resumed one reopened)."""
    from jaxlm.tracking import ExperimentTracker
    from jaxlm.tracking.explog import default_log_path
    from jaxlm.tracking.killed import record_killed, record_killed_runs
    from jaxlm.tracking.protocol import NullTracker
    from jaxlm.train.distributed import is_primary

    if not is_primary():
        return NullTracker(name, run_dir)
    # runs killed before they could write their own log entry get it now, once: the one this command
    # owns (a --resume or --overwrite of it), and the others beside it
    record_killed(run_dir)
    record_killed_runs(run_dir.parent)
    log_path = None if args.no_experiment_log else (args.experiment_log or default_log_path(run_dir.parent))
    tracking = {"experiment_log": log_path, "overrides": args.overrides, "background": True}
    record = {"name": name, **config.to_dict()}  # what config.json holds
    if args.resume is not None:
        RunDir(run_dir).save_config(config)
        return ExperimentTracker.resume(
            run_dir, trainer.step, config=record, wallclock_s=trainer.resumed.get("wallclock_s", 0.0), **tracking
        )
    claim.replace_old()  # --overwrite: only now, with every check passed
    return ExperimentTracker(name, record, args.output_dir, config_file=args.config, **tracking)


def train(trainer, tracker, name: str, run_dir: Path) -> int:
    """Run the trainer; map its outcome (or a second signal, or a failure) to the run's status and exit code."""
    from jaxlm.train.distributed import is_primary
    from jaxlm.train.stopping import StopSignals

    try:
        with StopSignals() as stop:  # installed from here on: no gap between compilation and the loop's own
            result = trainer.run(tracker, stop)
            if is_primary():
                report(result, name, tracker.run_dir)  # still finishing: a signal waits for it
    except KeyboardInterrupt:
        saved = saved_checkpoint_steps(run_dir)
        resume = {} if saved else {"resume": NO_CHECKPOINT}
        tracker.finalize(
            status="interrupted", steps=trainer.step, interrupted_by="second stop signal (aborted)", **resume
        )
        then = (
            f"resume from step {saved[-1]} with --resume {run_dir}"
            if saved
            else f"{NO_CHECKPOINT}: nothing to resume; start it again with --overwrite"
        )
        print(f"\nerror: aborted at step {trainer.step}; {then}", file=sys.stderr)
        return EXIT_ABORTED
    except UserError as e:
        tracker.finalize(status="failed", error=str(e))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, a vanished folder: the run's fault line, not a traceback
        what = f"{e.strerror or e} ({e.filename})" if getattr(e, "filename", None) else str(e.strerror or e)
        try:
            tracker.finalize(status="failed", error=f"OSError: {what}")
        except Exception:  # noqa: BLE001 - the same disk may refuse the summary too
            pass
        saved = saved_checkpoint_steps(run_dir)
        then = f"resume from step {saved[-1]} with --resume {run_dir}" if saved else "no checkpoint was saved"
        print(f"error: stopped at step {trainer.step}: {what}; {then}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        tracker.finalize(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    return EXIT_BY_STATUS.get(result.status, EXIT_FAILED)


def report(result, name: str, run_dir: Path) -> None:
    s = result.summary
    print(
        f"\n{name}: {s['status']} after {s['steps']} steps, {s['tokens']:,} tokens, "
        f"{s['wallclock_s']:.1f}s training + {s['compile_s']:.1f}s compile"
    )
    if s["status"] == "diverged":
        best = s.get("best_checkpoint_step")
        kept = f"best checkpoint: step {best}" if best is not None else "no earlier checkpoint was saved"
        print(
            f"diverged at step {s['diverged_step']}: {s['divergence_reason']} (no checkpoint of it was written; {kept})"
        )
    if s["status"] == "interrupted":
        print(
            f"interrupted by {s['interrupted_by']}: checkpoint saved at step {s['steps']}; "
            f"continue with --resume {run_dir}"
        )
    if s.get("final_val_loss") is not None:
        bpb = f", {number(s['final_val_bpb'], '.3f')} bits/byte" if s.get("final_val_bpb") is not None else ""
        print(
            f"validation loss: {number(s['final_val_loss'])} nats/token{bpb} "
            f"(best {number(s['best_val_loss'])} at step {s['best_val_step']})"
        )
    if result.sample:
        print(f"\nsample:\n{result.sample}\n")
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    run_command(main)
