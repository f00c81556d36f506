"""CLI: `python -m jaxlm.launch --config configs/x.json [--set key=value ...]`.

Parses arguments, builds and validates the Config, checks the data and the run
directory (all before any compile or write), then hands over to `train.run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

from jaxlm.config import Config, load_config, parse_override
from jaxlm.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UserError
from jaxlm.flops import flops_per_token, param_counts

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._=-]+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxlm.launch", description="Train a jaxlm transformer.")
    p.add_argument("--config", required=True, help="config JSON file")
    p.add_argument("--name", help="run name (default: the config file's stem)")
    p.add_argument("--description", help="what this run tests (overrides the config's description)")
    p.add_argument("--output-dir", default="runs", help="folder that holds run directories (default: runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model size, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Config, str]:
    """Config and run name from the arguments; UserError on anything invalid."""
    overrides = list(args.overrides)
    if args.description is not None:
        overrides.append(f"description={args.description}")
    config = load_config(args.config, overrides)
    name = args.name or Path(args.config).stem
    check_name(name)
    return config, name


def check_name(name: str) -> None:
    if name in (".", "..") or not NAME_PATTERN.match(name):
        raise UserError(f"--name '{name}': use only letters, digits and . _ = - (no path separators or '..')")


def describe(config: Config, name: str) -> str:
    counts = param_counts(config)
    lines = [f"run: {name}", json.dumps(dataclasses.asdict(config), indent=2),
             f"parameters: {counts['total']:,} total, {counts['non_embedding']:,} non-embedding "
             f"({counts['embedding']:,} in the token embedding)",
             f"FLOPs per token (train): {flops_per_token(config):,}",
             f"tokens per step: {config.tokens_per_step:,}; total: {config.tokens_per_step * config.max_iterations:,}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, name = resolve(args)
        if args.dry_run:
            print(describe(config, name))
            return EXIT_OK
        from jaxlm.data.sources import check_sources

        check_sources(config)
        run_dir = Path(args.output_dir) / name
        if run_dir.exists():
            raise UserError(f"run directory '{run_dir}' already exists: choose another --name")
        from jaxlm import distributed, sharding

        distributed.initialize_from_env()  # multi-process runs: waits for every process (all checked, none wrote)
        sharding.check_mesh(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from jaxlm import train

    primary = distributed.is_primary()
    tracker = distributed.make_tracker(name, {"name": name, **config.to_dict()}, args.output_dir)
    try:
        result = train.run(config, tracker, progress=primary and not args.quiet)
    except UserError as e:
        tracker.finalize(status="failed", error=str(e))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        tracker.finalize(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    s = result.summary
    if not primary:
        return EXIT_OK if s["status"] == "completed" else EXIT_FAILED
    print(f"\n{name}: {s['status']} after {s['steps']} steps, {s['tokens']:,} tokens, "
          f"{s['wallclock_s']:.1f}s training + {s['compile_s']:.1f}s compile")
    if s.get("final_val_loss") is not None:
        bpb = f", {s['final_val_bpb']:.3f} bits/byte" if s.get("final_val_bpb") is not None else ""
        print(f"validation loss: {s['final_val_loss']:.4f} nats/token{bpb} "
              f"(best {s['best_val_loss']:.4f} at step {s['best_val_step']})")
    if result.sample:
        print(f"\nsample:\n{result.sample}\n")
    print(f"run directory: {tracker.run_dir}")
    return EXIT_OK if s["status"] == "completed" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
