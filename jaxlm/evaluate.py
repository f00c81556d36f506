"""CLI: `python -m jaxlm.evaluate --run RUN_DIR [--checkpoint best|latest|N] [--data FILE]
[--context-length N] [--batch-size N]`: a checkpoint's loss on every token of a file.

The data is the run's validation file unless `--data` names a `.npy` token file or a
`.txt`/`.txt.gz` text file (tokenized with the run's own tokenizer, once, into the token cache).
A file of N tokens is N - 1 predictions in non-overlapping windows of the context length, the
last one partial (padded and masked; `jaxlm.train.full_eval`). Prints loss (nats/token),
perplexity, bits/byte (when the file's byte count is known), tokens and tokens/s; writes
`RUN_DIR/evals/<data>-<step>.json`, the same numbers under `summary.json["evals"]`, and an
EXPERIMENT_LOG.md entry (`jaxlm.tracking.evals`). Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import parse_checkpoint
from jaxlm.runtime import CommandParser, run_command
from jaxlm.tracking.fmt import number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(
        prog="python -m jaxlm.evaluate", description="Evaluate a run's checkpoint on every token of a file."
    )
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/quickstart")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default best)")
    p.add_argument(
        "--data", type=Path, help=".npy token file or .txt/.txt.gz text (default: the run's validation file)"
    )
    p.add_argument("--context-length", type=int, help="window length (default: the run's context_length)")
    p.add_argument("--batch-size", type=int, help="windows per batch, a multiple of the devices (default: the run's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--experiment-log",
        type=Path,
        metavar="PATH",
        help="markdown log for the entry (default: EXPERIMENT_LOG.md in the folder that holds the run)",
    )
    p.add_argument("--no-experiment-log", action="store_true", help="do not append to the experiment log")
    return p.parse_args(argv)


def report(record: dict) -> str:
    return "\n".join(
        [
            f"checkpoint {record['checkpoint']} (step {record['step']}) on {record['data']}",
            f"  loss        {record['loss']:.4f} nats/token",
            f"  perplexity  {record['perplexity']:.3f}",
            f"  bits/byte   {number(record.get('bpb'), '.4f')}",
            f"  tokens      {record['tokens']:,} predictions ({record['file_tokens']:,} tokens in the file, "
            f"{record['windows']:,} windows of {record['context_length']})",
            f"  time        {record['seconds']:.1f} s ({record['tokens_per_sec']:,.0f} tokens/s; "
            f"compile {record['compile_s']:.1f} s; {record['device_count']} x {record['device_kind']})",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        from jaxlm.train import distributed

        distributed.initialize_from_env()  # several processes: before anything touches JAX
        from jaxlm.train.run_eval import plan_eval

        plan = plan_eval(
            args.run,
            parse_checkpoint(args.checkpoint),
            args.data,
            context_length=args.context_length,
            batch_size=args.batch_size,
            progress=progress,
        )
        from jaxlm.train.run_eval import run_eval

        record = run_eval(plan, progress=progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from jaxlm.tracking.evals import append_eval_log, record_eval
    from jaxlm.tracking.explog import default_log_path
    from jaxlm.train.distributed import is_primary

    print(report(record))
    if is_primary():
        out = record_eval(args.run, record)
        print(f"wrote {out} and summary.json[evals][{out.stem}]")
        if not args.no_experiment_log:
            log_path = args.experiment_log or default_log_path(args.run.resolve().parent)
            append_eval_log(log_path, args.run.resolve().name, record, args.run)
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
