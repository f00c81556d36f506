"""CLI: `python -m jaxlm.compare runs/a runs/b ... -o comparison.png [--names A B] [--metric val_loss]
[--x steps|tokens|wallclock] [--smooth N]`.

Writes the PNG and a markdown table beside it (`comparison.md`), and prints the
table. Without `-o` they go to `<the first run's folder>/.reports/comparison.png`
(replaced each time), never into the current directory. Globs such as `runs/lr_*`
work, quoted or not: a path that is not a run directory (a sweep report or the
experiment log the shell's glob also matched) is skipped with one warning line on
stderr; when no run is left, that is one error line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE
from jaxlm.runtime import CommandParser, run_command
from jaxlm.tracking.compare import METRICS, X_CHOICES, compare_runs, expand_run_paths
from jaxlm.tracking.runs import NotARunError, is_run_dir, report_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(prog="python -m jaxlm.compare", description="Compare jaxlm runs.")
    p.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="PNG to write; the table goes beside it as .md "
        "(default: .reports/comparison.png in the first run's folder, replaced each time)",
    )
    p.add_argument("--names", nargs="+", help="labels for the runs, in order")
    p.add_argument("--force", action="store_true", help="replace -o and its .md if they exist")
    p.add_argument("--metric", choices=METRICS, default="val_loss", help="what to plot (default: val_loss)")
    p.add_argument(
        "--x",
        choices=X_CHOICES,
        help="plot against this alone (default: steps and wall-clock side by side; leaderboards use wallclock)",
    )
    p.add_argument("--smooth", type=int, default=1, metavar="N", help="draw train loss as a running mean of N rows")
    return p.parse_args(argv)


def split_runs(patterns: list[str]) -> tuple[list[Path], list[Path]]:
    """The run directories among the (glob-expanded) paths, and the paths that are not runs."""
    paths = expand_run_paths(patterns, keep_unmatched=True)
    return [p for p in paths if is_run_dir(p)], [p for p in paths if not is_run_dir(p)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs, skipped = split_runs(args.runs)
    shown = ", ".join(f"'{p}'" for p in skipped)
    if not runs:
        print(f"error: no run directory given: {shown} (no metrics.jsonl or metrics.csv)", file=sys.stderr)
        return EXIT_USAGE
    if skipped:
        print(f"warning: skipped {len(skipped)} path(s) that are not run directories: {shown}", file=sys.stderr)
    force = args.force or args.output is None  # the default output is compare's own, replaced each time
    if args.output is None:
        args.output = report_dir(runs[0].parent) / "comparison.png"
    try:
        table = compare_runs(runs, args.output, args.names, args.metric, x=args.x, smooth=args.smooth, force=force)
    except (NotARunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"error: -o '{args.output}': cannot write it ({e.strerror or e})", file=sys.stderr)
        return EXIT_USAGE
    print(table)
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.md')}")
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
