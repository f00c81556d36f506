"""CLI: `python -m jaxlm.compare runs/a runs/b ... -o comparison.png [--names A B] [--metric val_loss]
[--x steps|tokens|wallclock] [--smooth N]`.

Writes the PNG and a markdown table beside it (`comparison.md`), and prints the
table. Globs such as `runs/lr_*` work, quoted or not. A path that is not a run
directory: one line naming it, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE
from jaxlm.tracking.compare import METRICS, X_CHOICES, compare_runs
from jaxlm.tracking.runs import NotARunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxlm.compare", description="Compare jaxlm runs.")
    p.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    p.add_argument("-o", "--output", default="comparison.png", help="PNG to write; the table goes beside it as .md")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = compare_runs(
            args.runs, args.output, args.names, args.metric, x=args.x, smooth=args.smooth, force=args.force
        )
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
    from jaxlm.runtime import run_command

    run_command(main)
